"""What the benchmark scripts share (run as `python bench/NAME.py`: this folder is on sys.path)."""

from __future__ import annotations

import argparse


def parse_sizes(text: str) -> list[int]:
    """`--sizes 1000,10_000,100000` -> sorted positive ints, or an argparse error."""
    try:
        sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes wants comma-separated integers, got {text!r}"
        ) from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"--sizes wants positive integers, got {text!r}")
    return sizes

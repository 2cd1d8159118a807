"""Names that come from the other side (resource names, file ids, upload keys), checked once.

A name becomes a file name on both roles, so the rule is strict and shared: a name that could
leave its folder or confuse a file system is refused before anything is written.
"""

from __future__ import annotations

import unicodedata

MAX_NAME_LENGTH = 64
"""Tencent's limit for resource names; file ids and upload keys share it."""


def check_name(name: str, what: str = "file id") -> str:
    """Refuse a name that could leave its folder or confuse a file system; return it unchanged.

    Names arrive from devices (upload names) and from URLs, so the rule is strict and the same on
    the Python API (ValueError) and over HTTP (400).
    """
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(
            f"{what} {name[:80]!r} is refused: {problem}; use 1-{MAX_NAME_LENGTH} characters "
            "without '/', '\\\\', '..', control characters or a leading dot"
        )
    return name


def name_problem(name: str) -> str | None:
    if not name:
        return "it is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"it has {len(name)} characters"
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        return "it is longer than 255 bytes in UTF-8"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if ".." in name:
        return "it contains '..'"
    if name.startswith("."):
        return "it starts with a dot"
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        return "it contains a control character"
    return None

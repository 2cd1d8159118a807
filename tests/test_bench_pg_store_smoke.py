"""The store benchmark still runs and reports (figures are not checked: a shared machine says
nothing reliable about throughput; the issue-17 report records a real run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from iotfsm.testing.postgres import PostgreSQL

BENCH = Path(__file__).resolve().parents[1] / "bench" / "pg_store.py"


def test_pg_store_bench_quick_prints_both_stores_and_the_row_size(
    postgres_cluster: PostgreSQL,  # the same skip-or-fail rule when PostgreSQL is missing
) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    for label in (
        "SQLite (WAL, synchronous=NORMAL)",
        "PostgreSQL, synchronous_commit=on",
        "PostgreSQL, synchronous_commit=off",
        "PostgreSQL bytes per idle session row:",
    ):
        assert label in proc.stdout, proc.stdout

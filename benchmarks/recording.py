"""Appending a benchmark's table to benchmarks/RESULTS.md with the date, machine, command and commit."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def record(title: str, machine: str, table: str) -> None:
    """Append ``### <date> -- <title>, commit <git describe>`` with the machine, the exact command that
    ran (this script and its arguments) and the table."""
    commit = (
        subprocess.run(
            ["git", "-C", str(HERE), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        or os.environ.get("BENCH_COMMIT", "unknown")  # a copy of the tree without .git (a lent GPU machine)
    )
    command = f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    stamp = datetime.date.today().isoformat()
    with open(HERE / "RESULTS.md", "a") as handle:
        handle.write(
            f"\n### {stamp} — {title}, commit {commit}\n\nMachine: {machine} ({platform.node()}); "
            f"command: `{command.strip()}`\n\n{table}\n"
        )

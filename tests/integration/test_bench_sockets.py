"""The idle-socket generator (bench/sockets.py), small, so that it keeps working: it opens its
sockets on two gateways of a private system, holds them, and reports what they cost. Its figures
are recorded in docs/benchmarks.md, never asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_idle_socket_generator_holds_its_sockets_and_reports_their_cost():
    run = subprocess.run(
        [sys.executable, "-m", "bench.sockets", "--sockets", "400", "--gateways", "2", "--per-process", "250"]
        + ["--hold", "2", "--settle", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "# 400 idle sockets (0 failed) of distinct users on 2 gateway(s)" in run.stdout, run.stdout
    rows = [line.split() for line in run.stdout.splitlines() if line[:1].isdigit()]
    assert [int(row[1]) for row in rows] == [200, 200]  # each gateway's sockets, with its RSS and CPU
    assert "0 closed by the server, 0 lost" in run.stdout and "commands/s" in run.stdout

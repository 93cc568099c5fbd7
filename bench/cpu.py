"""CPU time per process group, read from /proc, for the benchmarks' per-service report.

A group is a named set of root pids; each sample sums user+system time of the roots and all
their descendants (RabbitMQ's beam.smp under its start script, Postgres' backends under the
postmaster). A backend that exits between two samples takes its time with it, which is why the
benchmark keeps its connection pools open across a step.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of ``pid``, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def processes() -> dict[int, tuple[int, float]]:
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                out[int(entry.name)] = stat
    return out


def sample(groups: Mapping[str, Iterable[int]]) -> dict[str, float]:
    """CPU seconds used so far by each group (its roots and every descendant)."""
    table = processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out = {}
    for name, roots in groups.items():
        total, todo, seen = 0.0, list(roots), set()
        while todo:
            pid = todo.pop()
            if pid in seen or pid not in table:
                continue
            seen.add(pid)
            total += table[pid][1]
            todo.extend(children.get(pid, ()))
        out[name] = total
    return out


def machine() -> list[int]:
    """The machine's CPU counters so far (/proc/stat's first line, in ticks): user, nice,
    system, idle, iowait, irq, softirq, steal."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def machine_shares(before: list[int], after: list[int]) -> dict[str, float]:
    """% of the machine's time between two :func:`machine` samples: busy (neither idle nor
    waiting for the disk), iowait (idle with a disk request pending) and steal (taken by the host)."""
    d = [a - b for a, b in zip(after, before)]
    total = sum(d) or 1
    return {"busy": 100 * (total - d[3] - d[4]) / total, "iowait": 100 * d[4] / total, "steal": 100 * d[7] / total}


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split()[0])

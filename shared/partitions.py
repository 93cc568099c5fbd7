"""Which replica consumes which partition: a pure function of the live members. No I/O.

Every writer (and every notifier) computes the same answer from the same member list, so no
coordinator is needed: :func:`assign` is rendezvous hashing with exact quotas. Each member gets
``P // N`` partitions, the first ``P % N`` members (by name) one more, so the split is P/N give
or take one. Within those quotas every (member, partition) pair is taken in order of a hash
score, highest first, so a partition stays with the member that likes it most while that
member has room: a join or a leave moves few partitions, not all of them.

The broker's single-active-consumer setting is the safety net beneath this: when two replicas
briefly disagree (they read the member list a moment apart), both subscribe and RabbitMQ keeps
exactly one of them active on the queue.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def score(member: str, partition: int) -> int:
    """A stable pseudo-random preference of ``member`` for ``partition`` (same in every process)."""
    digest = hashlib.blake2b(f"{member}\x00{partition}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(members: Iterable[str], partitions: int) -> dict[str, frozenset[int]]:
    """Partitions ``0..partitions-1`` spread over ``members``; every member appears, maybe with none."""
    names = sorted(set(members))
    if not names:
        return {}
    base, extra = divmod(partitions, len(names))
    room = {name: base + (1 if i < extra else 0) for i, name in enumerate(names)}
    owner: dict[int, str] = {}
    pairs = sorted(((score(m, p), m, p) for m in names for p in range(partitions)), reverse=True)
    for _, name, p in pairs:
        if p not in owner and room[name] > 0:
            owner[p] = name
            room[name] -= 1
    out: dict[str, set[int]] = {name: set() for name in names}
    for p, name in owner.items():
        out[name].add(p)
    return {name: frozenset(ps) for name, ps in out.items()}


def owned(members: Iterable[str], me: str, partitions: int) -> frozenset[int]:
    """The partitions ``me`` should consume, given the live ``members`` (``me`` counts as live)."""
    return assign({*members, me}, partitions)[me]

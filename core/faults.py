"""Named fault points: where the tests make a process crash or freeze at an exact, repeatable moment
instead of racing the clock from outside. Inert unless PT_TEST_FAULT is set:

    PT_TEST_FAULT="POINT:AT[:RANK[:ACTION]]"     e.g. "decodes:7", "tracks:2:1", "step:2.5:1:stop"

When product code passes point POINT with position AT on rank RANK (default 0), the process
SIGKILLs itself (ACTION kill, the default) or SIGSTOPs itself (stop). AT is the position's numbers
joined by dots. Only the first attempt of an elastic job strikes (TORCHELASTIC_RESTART_COUNT 0), so
a restarted job runs through. The points:

    decodes   make_shards: N files decoded
    shards    make_shards: N tars finished, while writing the next (after its .partial tar, before its index)
    uploads   make_shards to object storage: N files uploaded
    tracks    predict --out: N tracks written by this rank
    step      train.py: EPOCH.STEP, after STEP steps of EPOCH
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Callable

VAR = "PT_TEST_FAULT"
POINTS = ("decodes", "shards", "uploads", "tracks", "step")


def fault_point(point: str, at: int | tuple[int, ...] | Callable[[], int], rank: int = 0) -> None:
    """Strike here if PT_TEST_FAULT names this point, position and rank (`at` may be a callable,
    evaluated only when the point is armed)."""
    spec = os.environ.get(VAR)
    if not spec or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return
    name, where, *rest = spec.split(":")
    if name != point:
        return
    want_rank = int(rest[0]) if rest and rest[0] else 0
    action = rest[1] if len(rest) > 1 else "kill"
    pos = at() if callable(at) else at
    pos = ".".join(map(str, pos)) if isinstance(pos, tuple) else str(pos)
    if pos == where and rank == want_rank:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)


def fault_env(point: str, at: int | str, rank: int = 0, action: str = "kill") -> dict[str, str]:
    """The environment that arms one point (for the tests)."""
    if point not in POINTS:
        raise ValueError(f"unknown fault point {point!r}; one of {POINTS}")
    return {VAR: f"{point}:{at}:{rank}:{action}"}

"""Atomic file writes: a temp file in the same folder, flushed and fsynced, then renamed over the
target. A reader sees the old file or the new one, never half of one; a failed write leaves the
old file and no temp file behind. Used for checkpoints, manifests, reports, PNGs and generated audio.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", fsync: bool = True, **kw) -> Iterator[IO]:
    """`with atomic_open(p) as f: f.write(...)`: `p` appears, complete, when the block ends."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, **kw) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # e.g. disk full or an exception in the block
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write(path: str, data: bytes, fsync: bool = True) -> None:
    with atomic_open(path, "wb", fsync) as f:
        f.write(data)


def atomic_copy(src: str, dst: str) -> None:
    with open(src, "rb") as s, atomic_open(dst, "wb") as d:
        shutil.copyfileobj(s, d, 1 << 20)

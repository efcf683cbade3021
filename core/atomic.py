"""Atomic file writes: a temp file in the same folder, flushed and fsynced, then renamed over the
target. A reader sees the old file or the new one, never half of one; a failed write leaves the
old file and no temp file behind. Used for checkpoints, manifests, reports, PNGs and generated audio.

The temp file is created by mkstemp (a random name, O_EXCL): in a folder other users can write to
(/tmp, a group scratch folder) nobody can plant a symlink at a name we are about to open. It gets
the permissions a plain open() would have given (0666 less the umask), not mkstemp's 0600.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import IO, Iterator

_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", fsync: bool = True, **kw) -> Iterator[IO]:
    """`with atomic_open(p) as f: f.write(...)`: `p` appears, complete, when the block ends."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=os.path.basename(path) + ".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode, **kw) as f:
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

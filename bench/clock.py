"""Timing windows of device work with one host-device synchronisation per window.

A benchmark that synchronises after every batch or step times the host's launches and the device's
work one after the other, never overlapped, and under-reports a GPU. `WindowClock` marks the start
and the end of a whole window instead: CUDA events on the current stream on a GPU, perf_counter on
the CPU (one code path: only `_mark` and `_seconds` differ), and `stop()` waits once, for the end
mark. Every wait goes through `sync()`, which counts them (`syncs`), so a test can check that a
window waited exactly once.
"""
from __future__ import annotations

import time
from typing import Any


class WindowClock:
    """start() -> the window's work, unsynchronised -> stop() -> (device seconds, host seconds).

    The device must be idle at start() (a previous stop() or a sync() leaves it so): the start event
    then runs as soon as it is recorded, and the events' elapsed time is the window's wall time on
    the device's own clock."""

    def __init__(self, dev: Any):
        import torch
        self.torch, self.dev = torch, dev
        self.cuda = dev.type == "cuda"
        self.syncs = 0
        self._start: Any = None
        self._host0 = 0.0

    @property
    def kind(self) -> str:
        return "cuda events" if self.cuda else "perf_counter"

    def _mark(self) -> Any:
        if self.cuda:
            ev = self.torch.cuda.Event(enable_timing=True)
            ev.record(self.torch.cuda.current_stream(self.dev))
            return ev
        return time.perf_counter()

    def _seconds(self, a: Any, b: Any) -> float:
        return a.elapsed_time(b) / 1000.0 if self.cuda else b - a

    def sync(self) -> None:
        """Wait for all work queued on the device (a no-op on the CPU, counted either way)."""
        self.syncs += 1
        if self.cuda:
            self.torch.cuda.synchronize(self.dev)

    def start(self) -> None:
        self._host0 = time.perf_counter()
        self._start = self._mark()

    def stop(self) -> tuple[float, float]:
        """Mark the end, wait for it (the window's one sync): (seconds by the marks, host seconds)."""
        end = self._mark()
        self.sync()
        host = time.perf_counter() - self._host0
        return self._seconds(self._start, end), host

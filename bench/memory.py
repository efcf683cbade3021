"""Peak memory of a benchmark process: host (this process and its workers, Linux /proc) and GPU."""
from __future__ import annotations

import os
import threading


def _proc_kb(pid: int, fname: str, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/{fname}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


class MemSampler(threading.Thread):
    """Samples this process and its worker processes (Linux /proc).

    rss_hwm: sum over processes of each one's RSS high-water mark (VmHWM, kept by the kernel, so
    sampling only has to catch a worker before it exits); pages that forked workers share with
    the parent count once per process. pss_peak: highest sampled total proportional set size,
    which counts shared pages once: the honest total for worker pools. Reading smaps_rollup costs
    ~2 ms per process, so PSS is sampled every 0.5 s only (< 2 % of a core).
    """

    def __init__(self, interval: float = 0.25, pss_every: int = 2):
        super().__init__(daemon=True)
        self.interval, self.pss_every, self.stop_flag = interval, pss_every, threading.Event()
        self.hwm: dict[int, int] = {}
        self.pss_peak_kb = 0
        self.lock = threading.Lock()

    def sample(self, pss: bool = True) -> None:
        me = os.getpid()
        with self.lock:
            total = 0
            for pid in [me] + _descendants(me):
                hwm = _proc_kb(pid, "status", "VmHWM")
                if hwm is not None:
                    self.hwm[pid] = max(self.hwm.get(pid, 0), hwm)
                if pss:
                    total += _proc_kb(pid, "smaps_rollup", "Pss") or 0
            self.pss_peak_kb = max(self.pss_peak_kb, total)

    def run(self) -> None:
        k = 0
        while not self.stop_flag.is_set():
            self.sample(pss=k % self.pss_every == 0)
            k += 1
            self.stop_flag.wait(self.interval)

    def finish(self) -> dict[str, float | None]:
        import resource
        self.stop_flag.set()
        self.join()
        me = os.getpid()
        own = max(self.hwm.get(me, 0), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        workers = sum(v for pid, v in self.hwm.items() if pid != me)
        return {"peak_rss_mb": (own + workers) / 1024, "peak_rss_self_mb": own / 1024,
                "peak_rss_workers_mb": workers / 1024,
                "peak_pss_mb": self.pss_peak_kb / 1024 if self.pss_peak_kb else None}


class GpuMemory:
    """Peak device memory a method uses above the CUDA context: sampled cudaMemGetInfo (covers
    DALI's own pools, which torch's allocator statistics do not see) and torch's peak reserve."""

    def __init__(self):
        self.base = None
        self.peak = 0

    def start(self) -> None:
        import torch
        torch.zeros(1, device="cuda")  # create the context first: it is not the method's memory
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        free, total = torch.cuda.mem_get_info()
        self.base = total - free

    def sample(self) -> None:
        import torch
        free, total = torch.cuda.mem_get_info()
        self.peak = max(self.peak, total - free - self.base)

    def result(self) -> dict[str, float]:
        import torch
        self.sample()
        return {"peak_gpu_mb": self.peak / 2**20,
                "peak_gpu_torch_reserved_mb": torch.cuda.max_memory_reserved() / 2**20}

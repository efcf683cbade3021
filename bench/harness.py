"""How every benchmark runs a method: in a fresh interpreter, on a quiet machine, again if disturbed.

A parent script writes a job (JSON) per method and calls `run_fresh`, which runs
`python -m <script module> --_child JOB` from the repository root and reads the result the child
wrote; the child's `main` hands the job to `child_main`, which samples its memory (bench.memory)
and writes the result, an error or a skip reason. `run_quietest` reruns a method while other
processes used more than LOAD_LIMIT cores during it (a shared machine), `wait_idle` waits for
quiet first. Timings on a shared 2-core machine are meaningless while something else runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from bench import ROOT

LOAD_LIMIT = 0.2  # cores used by other processes during a method's run above which it is rerun/flagged


class SkipMethod(Exception):
    """The method cannot run on this machine (missing package or device); not a failure."""


def add_window_options(p, defaults: dict[str, tuple[int, int, int]]) -> None:
    """--warmup, --steps, --repeats of a timed-window bench; `defaults`: per device (warmup, steps, repeats)."""
    for i, (flag, what) in enumerate((("--warmup", "untimed steps first"), ("--steps", "timed steps per window"),
                                      ("--repeats", "timed windows"))):
        p.add_argument(flag, type=int, help=f"{what} (default: cpu {defaults['cpu'][i]}, cuda {defaults['cuda'][i]})")


def add_run_options(p, unit: str, output: str) -> None:
    """The options every measuring bench shares: quiet-machine waits, reruns, a time cap per `unit`
    (a method, a loader, a point), the output names (`output`, e.g. "train") and folders."""
    import argparse

    from bench import CACHE, RESULTS
    p.add_argument("--wait-idle", type=float, default=60.0,
                   help=f"before each {unit}, wait up to this many seconds for other processes to go quiet")
    p.add_argument("--retries", type=int, default=1, help=f"reruns of a {unit} that other processes disturbed")
    p.add_argument("--method-timeout", type=float, default=900.0, help=f"seconds per {unit} at most")
    p.add_argument("--tag", help=f"suffix for the output names ({output}-<host>-<date>-<tag>.json), e.g. for tuning runs")
    p.add_argument("--cache", default=CACHE, help="generated data and shards")
    p.add_argument("--out", default=RESULTS, help="where the JSON and PNG go")
    p.add_argument("--_child", help=argparse.SUPPRESS)


def logger(tag: str) -> Callable[[str], None]:
    """log(msg) to stderr with a [tag] prefix: stdout carries only the result table."""
    def log(msg: str) -> None:
        print(f"[{tag}] {msg}", file=sys.stderr, flush=True)
    return log


log = logger("bench")


# ============================================================== other load on the machine

def cpu_busy_s() -> float:
    """CPU-seconds all cores spent busy since boot (/proc/stat; 0 where there is none)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return 0.0
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def children_cpu_s() -> float:
    """CPU-seconds of this process's waited-for children (and theirs)."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_idle(max_wait: float, threshold: float = 0.25) -> tuple[float, float]:
    """Wait (at most max_wait s) until other processes use < threshold cores, measured over 2 s.

    Returns (seconds waited, last measured load in cores); (0, 0) at once when max_wait <= 0.
    """
    if max_wait <= 0:
        return 0.0, 0.0
    t0 = time.perf_counter()
    while True:
        b0, t = cpu_busy_s(), time.perf_counter()
        time.sleep(2.0)
        load = (cpu_busy_s() - b0) / (time.perf_counter() - t)
        waited = time.perf_counter() - t0
        if load < threshold or waited >= max_wait:
            return waited, load


class OtherLoad:
    """CPU the rest of the machine uses while this process waits for a child: start(), then cores()."""

    def start(self) -> "OtherLoad":
        self.t, self.busy0, self.own0 = time.perf_counter(), cpu_busy_s(), children_cpu_s()
        return self

    def measure(self) -> dict[str, float]:
        """wall seconds, the children's CPU in cores, and the other processes' CPU in cores."""
        wall = time.perf_counter() - self.t
        own = children_cpu_s() - self.own0  # includes a child's waited-for DataLoader workers
        return {"process_wall_s": wall, "process_cpu_cores": own / wall,
                "other_load_cores": max(0.0, (cpu_busy_s() - self.busy0) - own) / wall}


# ============================================================== the fresh-process runner

def run_fresh(module: str, name: str, job: dict, *, cache: str, prefix: str = "", wait_idle_s: float = 0.0,
              timeout: float = 900.0, single_thread_blas: bool = False, log: Callable[[str], None] = log) -> dict:
    """Run `python -m MODULE --_child JOB` in a fresh interpreter; returns its result plus the machine's
    other load during it ("error" if it timed out or died without a result).

    single_thread_blas: OMP/OPENBLAS/MKL_NUM_THREADS=1, for one single-threaded DataLoader worker per core.
    """
    cache = os.path.abspath(cache)  # the child runs in the repository root
    out_path = os.path.join(cache, f"{prefix}result-{name}.json")
    job_path = os.path.join(cache, f"{prefix}job-{name}.json")
    os.makedirs(cache, exist_ok=True)
    with open(job_path, "w", encoding="utf-8") as f:
        json.dump(dict(job, out_path=out_path), f)
    if os.path.exists(out_path):
        os.remove(out_path)
    env = dict(os.environ)
    if single_thread_blas:
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    res: dict[str, Any] = {"method": name}
    if wait_idle_s > 0:
        res["waited_for_idle_s"], res["load_before_cores"] = wait_idle(wait_idle_s)
    log(f"running {name} in a fresh process ...")
    load = OtherLoad().start()
    try:  # -m from the root: the root is on the child's sys.path, installed or not
        subprocess.run([sys.executable, "-m", module, "--_child", job_path], env=env, cwd=ROOT,
                       stdout=sys.stderr, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return dict(res, error=f"timed out after {timeout:.0f} s")
    if not os.path.exists(out_path):
        return dict(res, error="the method's process died without a result")
    with open(out_path, encoding="utf-8") as f:
        res.update(json.load(f))
    res.update(load.measure())
    state = "skipped" if "skipped" in res else "FAILED" if "error" in res else "done"
    log(f"  {name}: {state} in {res['process_wall_s']:.0f} s (other load {res['other_load_cores']:.2f} cores)")
    return res


def run_quietest(run_once: Callable[[], dict], retries: int, done_key: str, name: str,
                 log: Callable[[str], None] = log) -> dict:
    """Run a method up to 1 + retries times, again only while other processes disturbed it (more
    than LOAD_LIMIT cores); returns the quietest run, with "attempts". done_key: the key a finished
    timing has (a skipped or failed run is not repeated)."""
    best = None
    for attempt in range(1 + retries):
        r = run_once()
        if best is None or r.get("other_load_cores", 0) < best.get("other_load_cores", 0):
            best = r
        if done_key not in r or r["other_load_cores"] <= LOAD_LIMIT or attempt == retries:
            break
        log(f"  other processes used {r['other_load_cores']:.2f} cores meanwhile: running {name} again")
    best["attempts"] = attempt + 1
    return best


def child_main(job_path: str, run: Callable[[dict, Any], dict]) -> None:
    """The child's side: run(job, sampler) under a MemSampler; writes {method, ...result or skipped or
    error, peak memory} to job["out_path"] and exits at once (DALI's and DataLoader's threads can make
    interpreter exit slow or noisy; the result is written)."""
    from bench.memory import MemSampler
    from training.report import write_json  # atomic
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    sampler = MemSampler()
    sampler.start()
    res: dict[str, Any] = {"method": job["method"]}
    try:
        res.update(run(job, sampler))
    except SkipMethod as e:
        res["skipped"] = str(e)
    except Exception as e:  # noqa: BLE001 - reported in the table; the other methods still run
        res["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    res.update(sampler.finish())
    write_json(job["out_path"], res)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def load_note(results: list[dict], label: str = "method") -> list[str]:
    """The table note naming the rows that other processes disturbed (empty when none)."""
    busy = [f"{r.get(label, r['method'])} {r['other_load_cores']:.2f}" for r in results
            if r.get("other_load_cores", 0) > LOAD_LIMIT]
    return ["OTHER PROCESSES used CPU during: " + ", ".join(busy) + " cores on average: those timings are low"
            ] if busy else []


def require_cuda() -> None:
    import torch
    if not torch.cuda.is_available():
        raise SkipMethod("torch.cuda.is_available() is False")


def require_dali() -> None:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:
        raise SkipMethod(f"nvidia.dali not importable ({e})") from None


# ============================================================== the opening every main shares

@dataclass
class Opening:
    """What a benchmark's main starts from: its arguments, when it started, the host, the device."""
    args: Any
    t_start: float
    host: dict
    device: str     # "cuda" or "cpu": --device, with "auto" resolved


def opening(argv: list[str] | None, parse_args: Callable[[list[str] | None], Any],
            run_method: Callable[[dict, Any], dict]) -> Opening:
    """Parse the arguments; in a method's child process (--_child JOB) run the method and exit;
    else describe the host and resolve --device auto."""
    from bench.host import host_info

    args = parse_args(argv)
    if getattr(args, "_child", None):
        child_main(args._child, run_method)
    t_start = time.perf_counter()
    host = host_info()
    device = getattr(args, "device", "auto")
    return Opening(args, t_start, host, device if device != "auto" else ("cuda" if host["gpu"] else "cpu"))

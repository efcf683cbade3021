"""Benchmark: how training throughput scales with the number of ranks (DDP), at batch 64 and 128 per rank.

    .venv/bin/python -m bench.scaling [--ranks 1,2,4] [--batches 64,128] [--device cpu|cuda]
                     [--model resnet] [--clips 200] [--warmup W] [--steps S] [--repeats R]

The original project's headline: the speed-up from 1, 2 and 4 GPUs at batch 64 and 128, with memory.
Each point (batch per rank, ranks) runs in a fresh process (bench.harness.run_fresh). One rank trains
as `train.py` does in one process (no DDP); N ranks are started as `train.py --nproc N` starts them
(training.distributed.launch_local: torch's elastic launcher; gloo on the CPU, NCCL and one GPU per
rank with CUDA) and step DistributedDataParallel(model) on their rank share of the shards
(DaliLoader rank / world_size, train.py's --crops-per-track 4 by default). The model, AdamW, AMP step
and data source are bench.train_throughput's (setup_training, make_source); every rank runs W
untimed warm-up steps, then R windows of S timed steps (its warm_up and timed_window: each window
timed as a whole with one device synchronisation at its end, CUDA events on a GPU; data wait = the
host's time in next(loader) as a share of the window's host time).

Per point: samples/s = ranks x batch x S / the slowest rank's window time (median over windows,
min-max), speed-up = samples/s / the one-rank samples/s at the same batch, efficiency = speed-up /
ranks, data wait = mean over ranks of its share of step time, and peak memory per rank: device
memory above the CUDA context (cudaMemGetInfo, DALI's pools included) on a GPU, the rank process's
peak RSS (VmHWM) on the CPU. Weak scaling: the batch per rank is fixed, so N ranks take N times the
samples per step. On the CPU the cores are shared: each of N ranks gets cores / N torch and DALI threads.

Output: a markdown table on stdout, bench/results/scaling-<host>-<date>[-<tag>].json and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

from bench.data import prepare
from bench.harness import (SkipMethod, add_run_options, add_window_options, load_note, logger, opening,
                           require_dali, run_fresh, run_quietest)
from bench.host import describe, today
from bench.tables import Bars, Col, num, publish, rng, text

DEFAULTS = {  # (warm-up steps, timed steps per window, windows) per device type
    "cpu": (2, 4, 2),     # resnet at batch 128 x 2 ranks on 2 busy cores: about 6 s a step
    "cuda": (10, 30, 2),
}
log = logger("scaling")


# ============================================================== one rank (a launched process)

def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (VmHWM): its own memory, DALI's threads included."""
    from bench.memory import _proc_kb
    return (_proc_kb(os.getpid(), "status", "VmHWM") or 0) / 1024


def train_rank(job: dict) -> list[dict]:
    """This rank's timed training; every rank's result, in rank order (all_gather)."""
    import torch

    from bench.memory import GpuMemory
    from bench.train_throughput import make_source, setup_training, timed_window, warm_up
    from training import distributed

    cuda = job["device"] == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SkipMethod("torch.cuda.is_available() is False")
    env = distributed.setup(force_cpu=not cuda)
    try:
        gpu = None
        if cuda:
            gpu = GpuMemory()
            gpu.start()
        tr = setup_training(job, require_dali, env)
        it, _ = make_source(dict(job, method="dali", rank=env.rank, world_size=env.world_size), tr.spec, tr.dev)
        res: dict[str, Any] = {"rank": env.rank, **tr.info, **warm_up(it, job["warmup"], tr)}
        res["windows"], res["last_losses"] = [], []
        for _ in range(job["repeats"]):
            window, loss = timed_window(it, job["steps"], tr)
            res["windows"].append(window)
            res["last_losses"].append(loss)
            if gpu is not None:
                gpu.sample()
        res.update(gpu.result() if gpu is not None else {})
        res["peak_rss_mb"] = peak_rss_mb()
        return distributed.all_gather_object(res, env)
    finally:
        distributed.teardown(env)


def rank_main(job_path: str) -> int:
    """`python -m bench.scaling --_rank JOB`, one of N ranks: rank 0 writes every rank's result."""
    from training.distributed import launch
    from training.report import write_json
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    ranks = train_rank(job)
    if launch().is_main:
        write_json(job["ranks_path"], ranks)
    sys.stdout.flush()
    os._exit(0)  # as bench.harness.child_main: DALI's threads can make interpreter exit slow


def run_method(job: dict, sampler: Any) -> dict:
    """The point's child process: one rank here, or N launched ranks; their results."""
    from training import distributed
    from training.report import write_json

    os.environ["OMP_NUM_THREADS"] = str(job["torch_threads"])  # what launch_local would set for N ranks
    if job["ranks"] == 1:
        ranks = train_rank(job)
    else:
        if job["device"] == "cuda":
            distributed.check_placement(job["ranks"])  # raises PlacementError: more ranks than GPUs
        job_path = job["out_path"] + ".rank-job.json"
        write_json(job_path, dict(job, ranks_path=job["out_path"] + ".ranks.json"))
        if os.path.exists(job["out_path"] + ".ranks.json"):
            os.remove(job["out_path"] + ".ranks.json")
        # as `train.py --nproc N`: torch's elastic launcher, one process per rank, `-m` from the root
        if distributed.launch_local(job["ranks"], "-m", ["bench.scaling", "--_rank", job_path]) != 0:
            raise RuntimeError(f"{job['ranks']} ranks: a rank failed (its error is above)")
        with open(job["out_path"] + ".ranks.json", encoding="utf-8") as f:
            ranks = json.load(f)
    sampler.sample()
    for r in ranks:
        if not all(v == v and abs(v) != float("inf") for v in r["last_losses"]):
            raise FloatingPointError(f"rank {r['rank']}: non-finite loss {r['last_losses']}")
    return {"per_rank": ranks, "precision": ranks[0]["precision"], "torch_threads": ranks[0]["torch_threads"]}


# ============================================================== figures

def summarise(r: dict) -> None:
    """Per window over the ranks: samples/s (the slowest rank's time), data wait (mean), step ms;
    then median/min/max over windows, and the peak memory per rank."""
    ranks = r.get("per_rank")
    if not ranks:
        return
    n, batch = len(ranks), r["batch"]
    per = []
    for w in range(len(ranks[0]["windows"])):
        wins = [rk["windows"][w] for rk in ranks]
        slowest = max(x["window_s"] for x in wins)
        steps = wins[0]["steps"]
        per.append({"samples_per_s": n * batch * steps / slowest,
                    "data_wait": statistics.mean(sum(x["wait_s"]) / x["host_s"] for x in wins),
                    "step_ms": 1000 * slowest / steps})
    r["per_window"] = per
    for k in ("samples_per_s", "data_wait", "step_ms"):
        vals = [p[k] for p in per]
        r[k] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    r["samples_per_s_per_rank"] = r["samples_per_s"]["median"] / n
    gpu = all("peak_gpu_mb" in rk for rk in ranks)
    r["memory"] = "GPU memory" if gpu else "RSS"
    r["peak_mem_mb"] = [rk["peak_gpu_mb"] if gpu else rk["peak_rss_mb"] for rk in ranks]


def add_speedup(results: list[dict]) -> None:
    """speed-up and efficiency of each point against the one-rank point of the same batch."""
    one = {r["batch"]: r["samples_per_s"]["median"] for r in results if r["ranks"] == 1 and "samples_per_s" in r}
    for r in results:
        if "samples_per_s" in r and r["batch"] in one:
            r["speedup"] = r["samples_per_s"]["median"] / one[r["batch"]]
            r["efficiency"] = r["speedup"] / r["ranks"]


def mem_cell(r: dict) -> str:
    return " / ".join(f"{v:.0f}" for v in r["peak_mem_mb"]) + f" ({r['memory']})"


COLUMNS = [
    Col("batch / rank", text("batch")),
    Col("ranks", text("ranks")),
    Col("samples/s median (min–max)", rng("samples_per_s", ".1f")),
    Col("per rank", num("samples_per_s_per_rank", ".1f")),
    Col("speed-up", num("speedup", ".2f")),
    Col("efficiency", num("efficiency", ".0%")),
    Col("data wait % of step", rng("data_wait", ".1f", 100)),
    Col("step ms", num("step_ms", ".0f")),
    Col("peak memory per rank, MB", mem_cell),
    Col("other load, cores", num("other_load_cores", ".2f")),
]
CHART = [
    Bars(("samples_per_s",), "training samples/s, all ranks (median, bars: min–max over windows)"),
    Bars(("speedup",), "speed-up over 1 rank, same batch per rank", fmt=".2f", colors=("tab:purple",)),
    Bars(("data_wait",), "data wait, % of step time", scale=100.0, colors=("tab:red",)),
    Bars(("peak_mem_max_mb",), "peak memory of the largest rank, MB", fmt=".0f", colors=("tab:green",)),
]


# ============================================================== driver (parent process)

def int_list(s: str, flag: str, p: argparse.ArgumentParser) -> list[int]:
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        p.error(f"{flag}: comma-separated integers, not {s!r}")
    if not v or min(v) < 1:
        p.error(f"{flag}: each must be >= 1")
    return v


def default_ranks(device: str) -> list[int]:
    """1, 2, 4, ... up to the GPUs (and their count); 1 and 2 CPU ranks without CUDA."""
    if device != "cuda":
        return [1, 2]
    import torch
    n = torch.cuda.device_count()
    return sorted({2 ** k for k in range(n.bit_length()) if 2 ** k <= n} | {n})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", help="folder of class folders of audio (default: synthetic clips in bench/.cache)")
    p.add_argument("--clips", type=int, default=200, help="tracks to train on, shared out among the ranks (default 200)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda if available")
    p.add_argument("--model", default="resnet")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision (training.amp.Amp.create; default on: bf16 on CPU and recent GPUs)")
    p.add_argument("--ranks", help="comma-separated rank counts (default: 1, 2, 4, ... up to the GPUs; 1,2 on a CPU)")
    p.add_argument("--batches", default="64,128", help="batch sizes per rank, in crops (default 64,128)")
    p.add_argument("--crops", type=int, default=4, help="crops per decoded track (train.py's --crops-per-track; 4)")
    add_window_options(p, DEFAULTS)
    p.add_argument("--prefetch", type=int, default=2, help="DaliLoader prefetch queue depth (default 2)")
    add_run_options(p, "point", "scaling")
    p.add_argument("--_rank", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.batches = int_list(a.batches, "--batches", p)
    a.ranks = None if a.ranks is None else int_list(a.ranks, "--ranks", p)
    if a.clips < 1 or a.crops < 1 or a.prefetch < 1:
        p.error("--clips, --crops and --prefetch must be >= 1")
    if any(b % a.crops for b in a.batches):
        p.error(f"--crops {a.crops} must divide every batch in --batches {a.batches}")
    if a.steps is not None and a.steps < 1 or a.repeats is not None and a.repeats < 1 or (a.warmup or 0) < 0:
        p.error("--steps and --repeats must be >= 1, --warmup >= 0")
    return a


def main(argv: list[str] | None = None) -> int:
    if argv is None and "--_rank" in sys.argv:  # a launched rank: before opening(), which describes the host
        return rank_main(sys.argv[sys.argv.index("--_rank") + 1])
    run = opening(argv, parse_args, run_method)
    a, t_start, host, device = run.args, run.t_start, run.host, run.device
    from core.spec import FeatureSpec
    from training.report import write_json

    warmup, steps, repeats = (d if v is None else v for d, v in zip(DEFAULTS["cuda" if device == "cuda" else "cpu"],
                                                                   (a.warmup, a.steps, a.repeats)))
    ranks = a.ranks or default_ranks(device)
    if 1 not in ranks:
        ranks = [1] + ranks  # the speed-up's reference
    spec = FeatureSpec()
    ds = prepare(a.src, a.clips, a.cache, spec, log=log)
    if not ds.shard_dir:
        log(f"error: no shards to train on ({ds.shard_error})")
        return 2
    cores = os.cpu_count() or 1
    date = today()
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"scaling-{host['kind']}-{date}" + (f"-{a.tag}" if a.tag else ""))
    points = [(b, n) for b in a.batches for n in ranks]
    log(f"device {device}, model {a.model}, batches {a.batches} per rank, ranks {ranks}: {len(points)} points of "
        f"{warmup} warm-up + {repeats} x {steps} timed steps, {len(ds.items)} tracks")

    def report(results: list[dict], complete: bool) -> dict:
        """The JSON as it stands; written after every point, so a run cut short keeps what finished."""
        r = {
            "benchmark": "scaling", "date": date, "host": host, "complete": complete,
            "points_wanted": [{"batch": b, "ranks": n} for b, n in points],
            "data": {"src": ds.src, "synthetic": ds.synthetic, "tracks": len(ds.items),
                     "total_seconds": ds.total_seconds, "shard_dir": ds.shard_dir, "classes": ds.classes},
            "settings": {"device": device, "model": a.model, "amp": a.amp, "batches": a.batches, "ranks": ranks,
                         "crops": a.crops, "warmup": warmup, "steps": steps, "repeats": repeats,
                         "prefetch": a.prefetch, "cores": cores, "method_timeout_s": a.method_timeout,
                         "spec": spec.to_dict()},
            "points": results, "notes": notes(results), "total_wall_s": time.perf_counter() - t_start,
        }
        write_json(stem + ".json", r)
        return r

    def notes(results: list[dict]) -> list[str]:
        return list(ds.notes) + load_note(results, "label") + [
            f"Each point in a fresh process: {warmup} untimed warm-up steps, then {repeats} windows of {steps} timed "
            f"steps on every rank; batch counts crops ({a.crops} crops per decoded track; train.py's default: 4). "
            "samples/s = ranks x batch x steps / the slowest rank's window time; speed-up against 1 rank at the "
            "same batch per rank (weak scaling), efficiency = speed-up / ranks.",
            "1 rank: one process without DDP, as train.py --nproc 1; N ranks: torch's elastic launcher (train.py "
            "--nproc N), DistributedDataParallel, " + ("NCCL, one GPU per rank." if device == "cuda" else
                                                       f"gloo; the {cores} cores shared: {cores} // N torch "
                                                       "threads and DALI threads per rank."),
            "Peak memory per rank: " + ("device memory above the CUDA context (cudaMemGetInfo, DALI's pools "
                                        "included)." if device == "cuda" else
                                        "the rank process's peak RSS (VmHWM; torch, DALI and their threads)."),
        ]

    results: list[dict] = []
    for batch, n in points:
        name = f"b{batch}-r{n}"
        threads = max(1, cores // n)  # train.py's share: the machine's cores over its ranks
        job = {"method": name, "device": device, "model": a.model, "amp": a.amp, "batch": batch, "crops": a.crops,
               "ranks": n, "n_classes": len(ds.classes), "spec": spec.to_dict(), "shard_dir": ds.shard_dir,
               "warmup": warmup, "steps": steps, "repeats": repeats, "num_threads": threads, "prefetch": a.prefetch,
               "torch_threads": threads}
        best = run_quietest(lambda: run_fresh("bench.scaling", name, job, cache=a.cache, prefix="scaling-",
                                              wait_idle_s=a.wait_idle, timeout=a.method_timeout, log=log),
                            a.retries, "per_rank", name, log=log)
        best.update(method=name, batch=batch, ranks=n, label=f"batch {batch} x {n} rank{'s' if n > 1 else ''}")
        summarise(best)
        if "peak_mem_mb" in best:
            best["peak_mem_max_mb"] = max(best["peak_mem_mb"])
        results.append(best)
        add_speedup(results)
        report(results, complete=False)

    rep = report(results, complete=True)
    precision = next((r["precision"] for r in results if "precision" in r), "?")
    publish(f"Scaling: {a.model}, {precision}, {device}, batch per rank {a.batches}, ranks {ranks}; "
            f"{len(ds.items)} tracks, {spec.clip_seconds:g} s crops; host {describe(host)}, {date}",
            results, COLUMNS, "samples_per_s", stem=stem, keep=2, notes=rep["notes"], chart=CHART, name="label",
            t_start=t_start, title=f"scaling: {a.model}, {precision}, {device} — {describe(host)}, {date}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

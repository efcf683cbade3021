"""Benchmark: training throughput and time spent waiting for data, DALI loader vs librosa DataLoader.

    .venv/bin/pip install -r bench/requirements.txt     # librosa, for the librosa loader
    .venv/bin/python -m bench.train_throughput [--device cpu|cuda] [--steps N] [--repeats R] [--batch 32]
                     [--model resnet|baseline|...] [--crops 4,1]   # crops: one dali run per count

Both loaders feed the same model (model.build_model('resnet', n_classes), AdamW, label smoothing
0.1) through train.py's own step (training.step.train_step) with the same batch size and the same
AMP setting (training.amp.Amp.create(device, --amp)), one process, no DDP:

  dali      loading.loader.DaliLoader(train=True): WebDataset shards -> decode -> a random
            FeatureSpec.clip_seconds (3 s) crop -> log-mel (on the GPU when --device cuda);
            with --crops k, k crops per decoded track and --batch / k tracks per step (train.py's
            --crops-per-track; its default is 4)
  librosa   a torch DataLoader (num_workers = cores, persistent, pinned memory on CUDA) whose items
            are the librosa reference log-mel (bench.reference) of a random 3 s crop of the source
            file, normalised with FeatureSpec.normalise
  synthetic no loader: one random batch on the device, reused every step (the model's own step
            time; what the loaders' CPU work costs the training steps shows against it)

Each loader runs in a fresh process: build the model and loader, --warmup untimed steps, then
--repeats windows of --steps timed steps. A window is timed as a whole (bench.clock: CUDA events on a
GPU, perf_counter on the CPU) and synchronised with the device once, at its end, so the host queues
steps while the GPU runs earlier ones, as in train.py. Data wait is the host's time in
next(iterator) (+ queuing the copy to the device for librosa) as a fraction of the window's host
time; samples/s is batch * steps / the window's time; step ms is the window's time / steps. The
loader iterates across epochs inside a window (no reset of the timing at an epoch's end). The table
gives the median over the windows and the min-max in brackets.

Data: without --src, the 200 synthetic 30 s clips of bench.features (bench/.cache/, generated
once) and their shards (make_shards, cached; bench.data). Output: a markdown table on stdout, JSON
and PNG in bench/results/train-<host>-<date>[-<tag>].json/.png.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from bench.data import SPLIT, prepare
from bench.harness import (SkipMethod, add_run_options, add_window_options, load_note, logger, opening,
                           require_dali, run_fresh, run_quietest)
from bench.clock import WindowClock
from bench.host import describe, today
from bench.reference import librosa_db
from bench.reference import require as require_librosa
from bench.tables import Bars, Col, num, publish, rng, text

METHODS = ["dali", "librosa", "synthetic"]
DEFAULTS = {  # (warm-up steps, timed steps per window, windows) per device type
    "cpu": (5, 20, 5),   # resnet, batch 32, bf16 on 2 idle cores: about 0.5 s a step
    "cuda": (30, 100, 3),
}
LABEL_SMOOTHING = 0.1  # train.py's default
log = logger("train-bench")


# ============================================================== the two loaders (child process)

class CropDataset:
    """Map-style: item i -> (normalised log-mel of a random crop of track i (1, mels, frames), label)."""

    def __init__(self, items: list[dict], spec: Any, seed: int):
        self.items, self.spec, self.seed = items, spec, seed
        self.rng = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import numpy as np
        import torch
        if self.rng is None:  # worker_init_fn sets it; this covers num_workers=0
            self.rng = np.random.default_rng(self.seed)
        it, spec = self.items[i], self.spec
        start = int(self.rng.integers(0, max(it["n_samples"] - spec.clip_samples, 0) + 1))
        return torch.from_numpy(spec.normalise(librosa_db(it["path"], spec, start))).unsqueeze(0), it["label"]


def _worker_init(worker_id: int) -> None:
    import numpy as np
    import torch
    info = torch.utils.data.get_worker_info()
    info.dataset.rng = np.random.default_rng([info.dataset.seed, worker_id])
    torch.set_num_threads(1)


class EndlessShuffle:
    """A fresh permutation of the tracks per epoch, forever: no epoch-end stall in the DataLoader."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed

    def __iter__(self):
        import torch
        g = torch.Generator().manual_seed(self.seed)
        while True:
            yield from torch.randperm(self.n, generator=g).tolist()


def make_source(job: dict, spec: Any, dev: Any):
    """An endless iterator of (x, y, weight) on the device, and a description of the loader."""
    import torch
    batch = job["batch"]
    if job["method"] == "dali":
        from loading.loader import DaliLoader
        crops = job.get("crops", 1)  # batch counts rows, as train.py's --batch-size: batch // crops tracks
        loader = DaliLoader(job["shard_dir"], SPLIT, spec, batch // crops, train=True, device=dev, seed=0,
                            num_threads=job["num_threads"], prefetch=job["prefetch"], crops=crops,
                            rank=job.get("rank", 0), world_size=job.get("world_size", 1))  # bench.scaling's ranks

        def gen():
            while True:  # epochs back to back, as train.py's loop does
                for b in loader:
                    yield b.x, b.y, b.weight
        return gen(), {"num_threads": job["num_threads"], "prefetch": job["prefetch"], "crops": crops,
                       "tracks_per_batch": batch // crops, "batches_per_epoch": len(loader)}
    if job["method"] == "synthetic":  # no loader: one fixed random batch already on the device
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 1, spec.n_mels, spec.clip_frames, generator=g).to(dev)
        y = torch.randint(0, job["n_classes"], (batch,), generator=g).to(dev)
        w = torch.ones(batch, device=dev)

        def gen():
            while True:
                yield x, y, w
        return gen(), {"note": "one random batch reused: the model's step time without any loader"}
    from torch.utils.data import DataLoader
    require_librosa()  # imports librosa.feature before forking, so workers inherit it
    on_cuda = dev.type == "cuda"
    items = [dict(it, n_samples=round(it["seconds"] * spec.sample_rate)) for it in job["items"]]
    loader = DataLoader(CropDataset(items, spec, seed=0), batch_size=batch,
                        sampler=EndlessShuffle(len(items), seed=0), num_workers=job["workers"],
                        persistent_workers=job["workers"] > 0, pin_memory=on_cuda, worker_init_fn=_worker_init,
                        prefetch_factor=2 if job["workers"] > 0 else None)
    ones = torch.ones(batch, device=dev)

    def gen():
        for x, y in loader:
            yield x.to(dev, non_blocking=True), y.to(dev, non_blocking=True), ones
    return gen(), {"workers": job["workers"], "prefetch_factor": 2, "pin_memory": on_cuda}


@dataclass
class Training:
    """train.py's model and optimizer step on a device, for the benchmarks that time training steps
    (this script, bench/scaling.py and bench/object_store.py): step(x, y, w) -> loss (not waited for),
    clock: the window clock whose sync() waits for the device."""
    spec: Any
    dev: Any
    step: Callable[[Any, Any, Any], Any]
    clock: WindowClock
    info: dict                       # torch_threads, precision: the start of the method's result


def setup_training(job: dict, check: Callable[[], None] | None = None, env: Any = None) -> Training:
    """The device (SkipMethod without CUDA where cuda is asked), then `check()` (the method's own
    requirements), torch's threads and seed, the model (job["model"], job["n_classes"]), AdamW and AMP.

    env: a training.distributed.DistEnv of several ranks (bench.scaling): its device, and the model
    stepped through DistributedDataParallel as train.py does."""
    import torch

    from model import build_model
    from core.spec import FeatureSpec
    from training.amp import Amp
    from training.step import train_step

    spec = FeatureSpec.from_dict(job["spec"])
    if env is not None:
        dev = env.device
    else:
        dev = torch.device(job["device"], 0) if job["device"] == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SkipMethod("torch.cuda.is_available() is False")
        torch.cuda.set_device(dev)
    if check is not None:
        check()
    torch.set_num_threads(job["torch_threads"])  # the librosa child runs with OMP_NUM_THREADS=1 for its workers
    torch.manual_seed(0)
    info: dict[str, Any] = {"torch_threads": torch.get_num_threads()}

    model = build_model(job["model"], job["n_classes"]).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # as train.py
    model.train()
    net = model
    if env is not None and env.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    amp = Amp.create(dev, job["amp"])
    info["precision"] = amp.name

    def step(x, y, w) -> torch.Tensor:
        return train_step(net, x, y, w, opt, amp, n_classes=job["n_classes"],
                          label_smoothing=LABEL_SMOOTHING).loss.detach()

    return Training(spec, dev, step, WindowClock(dev), info)


def warm_up(it: Iterator, n: int, tr: Training) -> dict:
    """n untimed steps: first_batch_s (the first next(), which builds a lazily built loader), warmup_s,
    and the batch's shape and device."""
    res: dict[str, Any] = {}
    t = time.perf_counter()
    first_batch_s = None
    for i in range(n):
        x, y, w = next(it)
        if first_batch_s is None:
            first_batch_s = time.perf_counter() - t
        tr.step(x, y, w)
        tr.clock.sync()  # untimed: each warm-up step waited for, so first_batch_s and warmup_s are whole
    res["first_batch_s"] = first_batch_s
    res["warmup_s"] = time.perf_counter() - t
    if n:
        res["shape"] = list(x.shape)
        res["x_device"] = str(x.device)
    return res


def timed_window(it: Iterator, steps: int, tr: Training) -> tuple[dict, float]:
    """`steps` training steps timed as one window, with one wait for the device, at its end:
    ({"steps", "window_s" (the clock's: CUDA events or perf_counter), "host_s", "wait_s" (per step,
    the host's time in next(it)), "syncs", "clock"}, the last loss, read after the window).
    The device must be idle at the start (warm_up and the previous window leave it so)."""
    clock, syncs0, waits = tr.clock, tr.clock.syncs, []
    clock.start()
    for _ in range(steps):
        t0 = time.perf_counter()
        x, y, w = next(it)
        waits.append(time.perf_counter() - t0)
        loss = tr.step(x, y, w)
    window_s, host_s = clock.stop()
    return {"steps": steps, "window_s": window_s, "host_s": host_s, "wait_s": waits,
            "syncs": clock.syncs - syncs0, "clock": clock.kind}, float(loss)


def check_losses(losses: list[float]) -> None:
    if not all(map(lambda v: v == v and abs(v) != float("inf"), losses)):
        raise FloatingPointError(f"non-finite loss: {losses}")


def run_method(job: dict, sampler: Any) -> dict:
    import torch

    def check() -> None:
        if job["method"] == "dali":
            if not job["shard_dir"]:
                raise SkipMethod("no shards")
            require_dali()

    tr = setup_training(job, check)
    res: dict[str, Any] = dict(tr.info)

    t = time.perf_counter()
    it, res["loader"] = make_source(job, tr.spec, tr.dev)
    res["loader_build_s"] = time.perf_counter() - t

    res.update(warm_up(it, job["warmup"], tr))

    windows = []
    losses = []
    for _ in range(job["repeats"]):
        window, loss = timed_window(it, job["steps"], tr)
        losses.append(loss)
        windows.append(window)
    res["windows"] = windows
    res["last_losses"] = losses
    if tr.dev.type == "cuda":
        res["peak_gpu_torch_mb"] = torch.cuda.max_memory_allocated(tr.dev) / 2**20
    sampler.sample()  # the workers' high-water marks, while they are alive
    check_losses(losses)
    return res


# ============================================================== report

def summarise(r: dict, batch: int) -> None:
    """Per window: samples/s, data-wait fraction (of the host's time), mean step (window / steps);
    then median/min/max over windows."""
    if "windows" not in r:
        return
    per = []
    for w in r["windows"]:
        per.append({"samples_per_s": batch * w["steps"] / w["window_s"],
                    "data_wait": sum(w["wait_s"]) / w["host_s"],
                    "step_ms": 1000 * w["window_s"] / w["steps"],
                    "max_wait_ms": 1000 * max(w["wait_s"])})
    r["per_window"] = per
    for k in ("samples_per_s", "data_wait", "step_ms", "max_wait_ms"):
        vals = [p[k] for p in per]
        r[k] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


COLUMNS = [
    Col("loader", text("label")),
    Col("samples/s median (min–max)", rng("samples_per_s", ".1f")),
    Col("data wait % of step time", rng("data_wait", ".1f", 100)),
    Col("step ms (window / steps) median (min–max)", rng("step_ms", ".1f")),
    Col("longest wait ms", lambda r: f"{r['max_wait_ms']['max']:.0f}"),
    Col("precision", text("precision")),
    Col("windows × steps", lambda r: f"{len(r['windows'])} × {r['windows'][0]['steps']}"),
    Col("peak RSS / PSS MB", lambda r: f"{r['peak_rss_mb']:.0f} / {r['peak_pss_mb']:.0f}" if r.get("peak_pss_mb")
        else f"{r['peak_rss_mb']:.0f}"),
    Col("other load, cores", num("other_load_cores", ".2f")),
]
CHART = [
    Bars(("samples_per_s",), "training samples/s (median, bars: min–max over windows)"),
    Bars(("data_wait",), "data wait, % of step time", scale=100.0, colors=("tab:red",)),
    Bars(("step_ms",), "step time, ms (window time / steps)", fmt=".1f", colors=("tab:green",)),
]


# ============================================================== driver (parent process)

def training_args(p: argparse.ArgumentParser, batch_help: str = "batch size (default 32, train.py's)") -> None:
    """The arguments of the benchmarks that train (this one and bench.object_store)."""
    p.add_argument("--src", help="folder of class folders of audio (default: synthetic clips in bench/.cache)")
    p.add_argument("--clips", type=int, default=200, help="tracks to train on (default 200)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="default: cuda if available, else cpu")
    p.add_argument("--model", default="resnet")
    p.add_argument("--batch", type=int, default=32, help=batch_help)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision via training.amp.Amp.create (default on: bf16 on CPU and recent GPUs)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    training_args(p)
    add_window_options(p, DEFAULTS)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    p.add_argument("--crops", default="1",
                   help="dali: crops per decoded track, comma-separated for one dali run each (e.g. 4,1; "
                        "train.py's --crops-per-track); --batch counts crops, as train.py's --batch-size")
    p.add_argument("--num-threads", type=int, default=cores, help=f"DaliLoader num_threads (default cores: {cores})")
    p.add_argument("--prefetch", type=int, default=2, help="DaliLoader prefetch queue depth (default 2)")
    p.add_argument("--workers", type=int, default=cores, help=f"librosa DataLoader workers (default cores: {cores})")
    p.add_argument("--torch-threads", type=int, default=cores, help=f"torch intra-op threads (default {cores})")
    add_run_options(p, "loader", "train")
    a = p.parse_args(argv)
    for k in ("clips", "batch", "num_threads", "prefetch", "torch_threads"):
        if getattr(a, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1")
    if a.workers < 0:
        p.error("--workers must be >= 0")
    try:
        a.crops = [int(c) for c in str(a.crops).split(",") if c.strip()]
    except ValueError:
        p.error(f"--crops: comma-separated integers, not {a.crops!r}")
    if not a.crops or any(c < 1 or a.batch % c for c in a.crops):
        p.error(f"--crops {a.crops}: each must be >= 1 and divide --batch {a.batch}")
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in a.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {METHODS}")
    if a.steps is not None and a.steps < 1 or a.repeats is not None and a.repeats < 1 or (a.warmup or 0) < 0:
        p.error("--steps and --repeats must be >= 1, --warmup >= 0")
    return a


def main(argv: list[str] | None = None) -> int:
    run = opening(argv, parse_args, run_method)
    a, t_start = run.args, run.t_start
    from core.spec import FeatureSpec
    from training.report import write_json  # atomic; imported here to keep the top level light

    host, device = run.host, run.device
    warmup, steps, repeats = (d if v is None else v for d, v in zip(DEFAULTS["cuda" if device == "cuda" else "cpu"],
                                                                   (a.warmup, a.steps, a.repeats)))
    spec = FeatureSpec()
    ds = prepare(a.src, a.clips, a.cache, spec, log=log)
    notes = list(ds.notes)
    if ds.other_rate:
        notes.append(f"{ds.other_rate} tracks are not at {spec.sample_rate} Hz: the librosa loader resamples "
                     "their crops in every step (soxr_hq), DALI reads shards resampled once offline")
    log(f"device {device}, batch {a.batch}, {warmup} warm-up + {repeats} x {steps} timed steps per loader")

    date = today()
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"train-{host['kind']}-{date}" + (f"-{a.tag}" if a.tag else ""))
    # One run per method, and per crop count for dali (--crops 4,1): (run name, method, crops).
    runs = [(f"dali-c{c}" if len(a.crops) > 1 else "dali", "dali", c) if m == "dali" else (m, m, 1)
            for m in a.methods for c in (a.crops if m == "dali" else [1])]

    def report(results: list[dict], complete: bool) -> dict:
        """The JSON as it stands; written after every loader, so a run cut short keeps what finished."""
        precision = next((r["precision"] for r in results if "precision" in r), "fp32" if not a.amp else "amp")
        more = load_note(results, "label") + [
            f"Each loader in a fresh process: {warmup} untimed warm-up steps, then {repeats} windows of {steps} timed "
            "steps; samples/s counts batch × steps (DALI's last batch of an epoch is filled with repeated tracks, "
            "weight 0 in the loss; they are counted too, as their compute is the same).",
            "Each window is timed as a whole (CUDA events on a GPU, perf_counter on the CPU) with one device "
            "synchronisation, at its end; data wait: the host's time in next(iterator) (+ queuing the copy to the "
            "device for librosa) as a fraction of the window's host time; step ms: window time / steps.",
            f"dali: DaliLoader(train=True, num_threads={a.num_threads}, prefetch={a.prefetch}) decodes the whole "
            "track from the shard and crops it; with crops k, one step takes batch / k tracks and k crops of each "
            "(samples/s counts crops); librosa: librosa.load reads only the 3 s crop from the source "
            f"file (soundfile seek); {a.workers} workers, OMP/OPENBLAS/MKL_NUM_THREADS=1 in them; torch in the "
            f"training process uses {a.torch_threads} threads in both runs.",
        ]
        r = {
            "benchmark": "train_throughput", "date": date, "host": host, "complete": complete,
            "runs_wanted": [n for n, _, _ in runs],
            "data": {"src": ds.src, "synthetic": ds.synthetic, "tracks": len(ds.items),
                     "total_seconds": ds.total_seconds, "shard_dir": ds.shard_dir, "classes": ds.classes},
            "settings": {"device": device, "model": a.model, "batch": a.batch, "amp": a.amp, "precision": precision,
                         "warmup": warmup, "steps": steps, "repeats": repeats, "num_threads": a.num_threads,
                         "prefetch": a.prefetch, "crops": a.crops, "workers": a.workers,
                         "torch_threads": a.torch_threads, "method_timeout_s": a.method_timeout,
                         "label_smoothing": LABEL_SMOOTHING, "spec": spec.to_dict()},
            "methods": results, "notes": notes + more, "total_wall_s": time.perf_counter() - t_start,
        }
        write_json(stem + ".json", r)
        return r

    results: list[dict] = []
    for run, name, crops in runs:
        label = {"dali": f"dali-{device} (threads {a.num_threads}, prefetch {a.prefetch}"
                         + (f", crops {crops})" if crops > 1 or len(a.crops) > 1 else ")"),
                 "librosa": f"librosa DataLoader ({a.workers} workers)",
                 "synthetic": "no loader (one random batch, reused)"}[name]
        if name == "dali" and not ds.shard_dir:
            results.append({"method": name, "crops": crops, "label": label, "skipped": f"no shards ({ds.shard_error})"})
            report(results, complete=False)
            continue
        job = {"method": name, "device": device, "items": ds.items, "shard_dir": ds.shard_dir, "batch": a.batch,
               "amp": a.amp, "model": a.model, "n_classes": len(ds.classes), "spec": spec.to_dict(),
               "warmup": warmup, "steps": steps, "repeats": repeats, "num_threads": a.num_threads,
               "prefetch": a.prefetch, "workers": a.workers, "torch_threads": a.torch_threads, "crops": crops}
        # librosa: one single-threaded worker per core; the training process sets torch's threads itself.
        best = run_quietest(lambda: run_fresh("bench.train_throughput", run, job, cache=a.cache, prefix="train-",
                                              wait_idle_s=a.wait_idle, timeout=a.method_timeout,
                                              single_thread_blas=name == "librosa", log=log),
                            a.retries, "windows", run, log=log)
        best.update(method=name, crops=crops, label=label)
        summarise(best, a.batch)
        results.append(best)
        report(results, complete=False)

    rep = report(results, complete=True)
    precision = rep["settings"]["precision"]
    publish(f"Training throughput: {a.model}, batch {a.batch}, {precision}, {device}; {len(ds.items)} tracks, "
            f"{spec.clip_seconds:g} s crops; host {describe(host)}, {date}", results, COLUMNS, "samples_per_s",
            stem=stem, notes=rep["notes"], chart=CHART, name="label", t_start=t_start,
            title=f"training throughput: {a.model}, batch {a.batch}, {precision}, {device} — "
                  f"{describe(host)}, {date}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

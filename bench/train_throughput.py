#!/usr/bin/env python
"""Benchmark: training throughput and time spent waiting for data, DALI loader vs librosa DataLoader.

    .venv/bin/pip install -r bench/requirements.txt     # librosa, for the librosa loader
    .venv/bin/python bench/train_throughput.py [--device cpu|cuda] [--steps N] [--repeats R] [--batch 32]
                     [--model resnet|baseline|...] [--crops 4,1]   # crops: one dali run per count

Both loaders feed the same model (model.build_model('resnet', n_classes), AdamW, label smoothing
0.1, train.py's loss and step) with the same batch size and the same AMP setting
(training.amp.Amp.create(device, --amp)), one process, no DDP:

  dali      pipeline.loader.DaliLoader(train=True): WebDataset shards -> decode -> a random
            FeatureSpec.clip_seconds (3 s) crop -> log-mel (on the GPU when --device cuda);
            with --crops k, k crops per decoded track and --batch / k tracks per step (train.py's
            --crops-per-track; its default is 4)
  librosa   a torch DataLoader (num_workers = cores, persistent, pinned memory on CUDA) whose items
            are librosa.load of a random 3 s crop of the source file + melspectrogram + power_to_db
            with the same FeatureSpec and normalisation (db - norm_mean) / norm_std
  synthetic no loader: one random batch on the device, reused every step (the model's own step
            time; what the loaders' CPU work costs the training steps shows against it)

Each loader runs in a fresh process: build the model and loader, --warmup untimed steps, then
--repeats windows of --steps timed steps. Per step: t0, next(iterator) (+ copy to the device for
librosa; CUDA synchronised), t1, forward/backward/optimizer step (CUDA synchronised), t2. Data wait
is sum(t1 - t0) / sum(t2 - t0); samples/s is batch * steps / sum(t2 - t0). The table gives the
median over the windows and the min-max in brackets.

Data: without --src, the 200 synthetic 30 s clips of bench/features.py (bench/.cache/, generated
once) and their shards (make_shards, cached). Output: a markdown table on stdout, JSON and PNG in
bench/results/train-<host>-<date>[-<tag>].json/.png.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any

# Keep the top level light: make_shards' spawn pool and the method subprocesses re-import this file.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
for _p in (ROOT, BENCH):
    if _p not in sys.path:
        sys.path.insert(0, _p)

METHODS = ["dali", "librosa", "synthetic"]
SPLIT = "train"
DEFAULTS = {  # (warm-up steps, timed steps per window, windows) per device type
    "cpu": (5, 20, 5),   # resnet, batch 32, bf16 on 2 idle cores: about 0.5 s a step
    "cuda": (30, 100, 3),
}


def log(msg: str) -> None:
    print(f"[train-bench] {msg}", file=sys.stderr, flush=True)


# ============================================================== the two loaders (child process)

def librosa_crop_db(path: str, start: int, spec: Any) -> Any:
    """dB log-mel (mels, clip_frames) of spec.clip_samples samples of PATH from sample START.

    As bench/features.py's librosa_db, on a crop: librosa.load reads only the crop (soundfile
    seeks), zero-padded at the end when the track is shorter than the crop, as the DALI graph does.
    """
    import librosa
    import numpy as np
    n = spec.clip_samples
    y, _ = librosa.load(path, sr=spec.sample_rate, offset=start / spec.sample_rate, duration=n / spec.sample_rate)
    y = y[:n]
    if len(y) < n:
        y = np.pad(y, (0, n - len(y)))
    mel = librosa.feature.melspectrogram(
        y=y, sr=spec.sample_rate, n_fft=spec.n_fft, hop_length=spec.hop_length, win_length=spec.n_fft,
        window="hann", center=True, pad_mode="reflect", power=2.0, n_mels=spec.n_mels, fmin=spec.f_min,
        fmax=spec.f_max, htk=spec.mel_scale == "htk", norm="slaney" if spec.mel_norm == "slaney" else None)
    return librosa.power_to_db(mel, ref=1.0, amin=10.0 ** (spec.db_floor / 10.0), top_db=None)


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
        db = librosa_crop_db(it["path"], start, spec)
        x = torch.from_numpy((db - spec.norm_mean) / spec.norm_std).unsqueeze(0)
        return x, it["label"]


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
        from pipeline.loader import DaliLoader
        crops = job.get("crops", 1)  # batch counts rows, as train.py's --batch-size: batch // crops tracks
        loader = DaliLoader(job["shard_dir"], SPLIT, spec, batch // crops, train=True, device=dev, seed=0,
                            num_threads=job["num_threads"], prefetch=job["prefetch"], crops=crops)

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
    try:
        import librosa.feature  # noqa: F401  - import before forking, so workers inherit it
    except ImportError as e:
        raise SkipMethod(f"librosa not installed ({e}); pip install -r bench/requirements.txt") from None
    on_cuda = dev.type == "cuda"
    loader = DataLoader(CropDataset(job["items"], spec, seed=0), batch_size=batch,
                        sampler=EndlessShuffle(len(job["items"]), seed=0), num_workers=job["workers"],
                        persistent_workers=job["workers"] > 0, pin_memory=on_cuda, worker_init_fn=_worker_init,
                        prefetch_factor=2 if job["workers"] > 0 else None)
    ones = torch.ones(batch, device=dev)

    def gen():
        for x, y in loader:
            yield x.to(dev, non_blocking=True), y.to(dev, non_blocking=True), ones
    return gen(), {"workers": job["workers"], "prefetch_factor": 2, "pin_memory": on_cuda}


class SkipMethod(Exception):
    """The method cannot run here (missing package or device); not a failure."""


def run_method(job: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from model import build_model
    from pipeline.spec import FeatureSpec
    from training.amp import Amp

    spec = FeatureSpec.from_dict(job["spec"])
    dev = torch.device(job["device"], 0) if job["device"] == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SkipMethod("torch.cuda.is_available() is False")
        torch.cuda.set_device(dev)
    if job["method"] == "dali":
        if not job["shard_dir"]:
            raise SkipMethod("no shards")
        try:
            import nvidia.dali  # noqa: F401
        except ImportError as e:
            raise SkipMethod(f"nvidia.dali not importable ({e})") from None
    torch.set_num_threads(job["torch_threads"])  # the librosa child runs with OMP_NUM_THREADS=1 for its workers
    torch.manual_seed(0)
    res: dict[str, Any] = {"torch_threads": torch.get_num_threads()}

    model = build_model(job["model"], job["n_classes"]).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    amp = Amp.create(dev, job["amp"])
    res["precision"] = amp.name

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def train_step(x, y, w) -> torch.Tensor:  # train.py's step, without DDP
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with amp.autocast():
            logits = model(x)
        per_sample = F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=0.1)
        loss = (per_sample * w).sum() / w.sum().clamp(min=1.0)
        amp.step(loss, opt)
        return loss.detach()

    t = time.perf_counter()
    it, res["loader"] = make_source(job, spec, dev)
    res["loader_build_s"] = time.perf_counter() - t

    t = time.perf_counter()
    first_batch_s = None
    for i in range(job["warmup"]):
        x, y, w = next(it)
        if first_batch_s is None:
            first_batch_s = time.perf_counter() - t
        loss = train_step(x, y, w)
        sync()
    res["first_batch_s"] = first_batch_s
    res["warmup_s"] = time.perf_counter() - t
    if job["warmup"]:
        res["shape"] = list(x.shape)
        res["x_device"] = str(x.device)

    windows = []
    losses = []
    for _ in range(job["repeats"]):
        waits, steps = [], []
        for _ in range(job["steps"]):
            t0 = time.perf_counter()
            x, y, w = next(it)
            sync()  # the copy to the device (librosa) or DALI's output belongs to the data time
            t1 = time.perf_counter()
            loss = train_step(x, y, w)
            sync()
            t2 = time.perf_counter()
            waits.append(t1 - t0)
            steps.append(t2 - t0)
        losses.append(float(loss))
        windows.append({"wait_s": waits, "step_s": steps})
    res["windows"] = windows
    res["last_losses"] = losses
    if dev.type == "cuda":
        res["peak_gpu_torch_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    if not all(map(lambda v: v == v and abs(v) != float("inf"), losses)):
        raise FloatingPointError(f"non-finite loss: {losses}")
    return res


def child_main(job_path: str) -> int:
    import features as fb  # bench/features.py: MemSampler (this process + DataLoader workers)
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    sampler = fb.MemSampler()
    sampler.start()
    res: dict[str, Any] = {"method": job["method"]}
    try:
        res.update(run_method(job))
        sampler.sample()  # the workers' high-water marks, while they are alive
    except SkipMethod as e:
        res["skipped"] = str(e)
    except Exception as e:  # noqa: BLE001 - reported in the table; the other methods still run
        res["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    res.update(sampler.finish())
    from training.report import write_json  # atomic; imported here to keep the top level light
    write_json(job["out_path"], res)
    # DALI's and DataLoader's threads can make interpreter exit slow or noisy: the result is written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ============================================================== driver (parent process)

def run_in_subprocess(name: str, job: dict, a: argparse.Namespace) -> dict:
    import features as fb  # bench/features.py: the shared fresh-process driver
    # librosa: one single-threaded worker per core; the training process sets torch's threads
    # back to --torch-threads itself.
    return fb.run_method_process(__file__, name, job, cache=a.cache, prefix="train-", wait_idle_s=a.wait_idle,
                                 timeout=a.method_timeout, single_thread_blas=name == "librosa")


def summarise(r: dict, batch: int) -> None:
    """Per window: samples/s, data-wait fraction, median step; then median/min/max over windows."""
    if "windows" not in r:
        return
    per = []
    for w in r["windows"]:
        total = sum(w["step_s"])
        per.append({"samples_per_s": batch * len(w["step_s"]) / total, "data_wait": sum(w["wait_s"]) / total,
                    "step_ms": 1000 * statistics.median(w["step_s"]),
                    "max_wait_ms": 1000 * max(w["wait_s"])})
    r["per_window"] = per
    for k in ("samples_per_s", "data_wait", "step_ms", "max_wait_ms"):
        vals = [p[k] for p in per]
        r[k] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    steps = [s for w in r["windows"] for s in w["step_s"]]
    steps.sort()
    r["step_ms_p90"] = 1000 * steps[min(len(steps) - 1, int(0.9 * len(steps)))]


def _rng(d: dict, fmt: str, scale: float = 1.0) -> str:
    return f"{format(d['median'] * scale, fmt)} ({format(d['min'] * scale, fmt)}–{format(d['max'] * scale, fmt)})"


def markdown_table(results: list[dict]) -> str:
    head = ("| loader | samples/s median (min–max) | data wait % of step time | step ms median (min–max) "
            "| step ms p90 | longest wait ms | precision | windows × steps | peak RSS / PSS MB "
            "| other load, cores |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if "samples_per_s" not in r:
            why = r.get("skipped") or r.get("error") or "not run"
            lines.append(f"| {r['label']} | {'skipped' if 'skipped' in r else 'FAILED'}: {why} |" + " |" * 8)
            continue
        rss = f"{r['peak_rss_mb']:.0f} / {r['peak_pss_mb']:.0f}" if r.get("peak_pss_mb") else f"{r['peak_rss_mb']:.0f}"
        lines.append(
            f"| {r['label']} | {_rng(r['samples_per_s'], '.1f')} | {_rng(r['data_wait'], '.1f', 100)} "
            f"| {_rng(r['step_ms'], '.0f')} | {r['step_ms_p90']:.0f} | {r['max_wait_ms']['max']:.0f} "
            f"| {r['precision']} | {len(r['windows'])} × {len(r['windows'][0]['step_s'])} | {rss} "
            f"| {r['other_load_cores']:.2f} |")
    return "\n".join(lines)


def bar_chart(report: dict, path: str) -> None:
    from training.report import pyplot, save_figure
    plt = pyplot()
    rows = [r for r in report["methods"] if "samples_per_s" in r]
    if not rows:
        return
    names = [r["label"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 0.7 * len(rows) + 2.2), sharey=True)
    y = list(range(len(rows)))
    for ax, key, scale, xlabel, color in (
            (axes[0], "samples_per_s", 1.0, "training samples/s (median, bars: min–max over windows)", "tab:blue"),
            (axes[1], "data_wait", 100.0, "data wait, % of step time", "tab:red"),
            (axes[2], "step_ms", 1.0, "step time, ms (median per window)", "tab:green")):
        med = [r[key]["median"] * scale for r in rows]
        err = [[m - r[key]["min"] * scale for m, r in zip(med, rows)],
               [r[key]["max"] * scale - m for m, r in zip(med, rows)]]
        ax.barh(y, med, xerr=err, color=color, capsize=4)
        for yi, m, r in zip(y, med, rows):
            ax.text(r[key]["max"] * scale, yi, f"  {m:.1f}" if key != "step_ms" else f"  {m:.0f}", va="center",
                    fontsize=9)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_xlim(0, max(max(r[key]["max"] * scale for r in rows) * 1.35, 1e-9))
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    h, s = report["host"], report["settings"]
    fig.suptitle(f"training throughput: {s['model']}, batch {s['batch']}, {s['precision']}, {s['device']} — "
                 f"{h['kind']} ({h['cpu_model'] or '?'}{', ' + h['gpu'] if h['gpu'] else ''}), {report['date']}",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", help="folder of class folders of audio (default: synthetic clips in bench/.cache)")
    p.add_argument("--clips", type=int, default=200, help="tracks to train on (default 200)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="default: cuda if available, else cpu")
    p.add_argument("--model", default="resnet")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32, train.py's)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision via training.amp.Amp.create (default on: bf16 on CPU and recent GPUs)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: cpu %d, cuda %d)"
                   % (DEFAULTS["cpu"][0], DEFAULTS["cuda"][0]))
    p.add_argument("--steps", type=int, help="timed steps per window (default: cpu %d, cuda %d)"
                   % (DEFAULTS["cpu"][1], DEFAULTS["cuda"][1]))
    p.add_argument("--repeats", type=int, help="timed windows (default: cpu %d, cuda %d)"
                   % (DEFAULTS["cpu"][2], DEFAULTS["cuda"][2]))
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    p.add_argument("--crops", default="1",
                   help="dali: crops per decoded track, comma-separated for one dali run each (e.g. 4,1; "
                        "train.py's --crops-per-track); --batch counts crops, as train.py's --batch-size")
    p.add_argument("--num-threads", type=int, default=cores, help=f"DaliLoader num_threads (default cores: {cores})")
    p.add_argument("--prefetch", type=int, default=2, help="DaliLoader prefetch queue depth (default 2)")
    p.add_argument("--workers", type=int, default=cores, help=f"librosa DataLoader workers (default cores: {cores})")
    p.add_argument("--torch-threads", type=int, default=cores, help=f"torch intra-op threads (default {cores})")
    p.add_argument("--wait-idle", type=float, default=60.0,
                   help="before each loader, wait up to this many seconds for other processes to go quiet")
    p.add_argument("--retries", type=int, default=1, help="reruns of a loader whose run others disturbed")
    p.add_argument("--method-timeout", type=float, default=900.0, help="seconds per loader process at most")
    p.add_argument("--tag", help="suffix for the output names (train-<host>-<date>-<tag>.json), e.g. for tuning runs")
    p.add_argument("--cache", default=os.path.join(BENCH, ".cache"), help="generated data and shards")
    p.add_argument("--out", default=os.path.join(BENCH, "results"), help="where the JSON and PNG go")
    p.add_argument("--_child", help=argparse.SUPPRESS)
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
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a._child:
        return child_main(a._child)
    t_start = time.perf_counter()
    import features as fb  # bench/features.py: data generation, shard cache, host description

    from pipeline.spec import FeatureSpec

    host = fb.host_info()
    device = a.device if a.device != "auto" else ("cuda" if host["gpu"] else "cpu")
    warmup, steps, repeats = DEFAULTS["cuda" if device == "cuda" else "cpu"]
    warmup = warmup if a.warmup is None else a.warmup
    steps = steps if a.steps is None else a.steps
    repeats = repeats if a.repeats is None else a.repeats
    if steps < 1 or repeats < 1 or warmup < 0:
        print("train_throughput.py: error: --steps and --repeats must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    wanted = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in METHODS]
    if unknown:
        print(f"train_throughput.py: error: unknown methods {unknown}; choose from {METHODS}", file=sys.stderr)
        return 2

    spec = FeatureSpec()
    os.makedirs(a.cache, exist_ok=True)
    src = os.path.abspath(a.src) if a.src else fb.synth_source(a.cache, a.clips)
    chosen = fb.select_clips(src, a.clips)
    if not chosen:
        print(f"train_throughput.py: error: no audio files in class folders under {src}", file=sys.stderr)
        return 2
    notes: list[str] = []
    shard_dir, manifest, shard_error = None, None, None
    try:
        shard_dir, manifest = fb.build_shards(src, chosen, a.cache, spec)
    except Exception as e:  # noqa: BLE001 - no DALI/webdataset: the librosa loader can still run
        shard_error = f"{type(e).__name__}: {e}"
        log(f"make_shards failed: {shard_error}")
    if manifest is None:
        classes = sorted({it.label for it in chosen})
        import soundfile as sf
        items = []
        for it in chosen:
            try:
                info = sf.info(it.path)
            except Exception:  # noqa: BLE001
                continue
            items.append({"path": it.path, "n_samples": round(info.frames * spec.sample_rate / info.samplerate),
                          "label": classes.index(it.label)})
    else:
        classes = manifest["classes"]
        by_rel = {it.rel: it for it in chosen}
        items = [{"path": by_rel[s["source"]].path, "n_samples": round(s["duration"] * spec.sample_rate),
                  "label": classes.index(s["label"])} for s in sorted(manifest["samples"], key=lambda s: s["source"])]
        other_rate = sum(s["source_rate"] != manifest["sample_rate"] for s in manifest["samples"])
        if other_rate:
            notes.append(f"{other_rate} tracks are not at {manifest['sample_rate']} Hz: the librosa loader resamples "
                         "their crops in every step (soxr_hq), DALI reads shards resampled once offline")
    total_s = sum(it["n_samples"] for it in items) / spec.sample_rate
    log(f"{len(items)} tracks ({total_s / 60:.1f} min of audio, {len(classes)} classes) from {src}; "
        f"device {device}, batch {a.batch}, {warmup} warm-up + {repeats} x {steps} timed steps per loader")
    fb.warm_page_cache([it["path"] for it in items] +
                       ([os.path.join(shard_dir, f) for f in os.listdir(shard_dir)] if shard_dir else []))

    date = datetime.date.today().strftime("%Y%m%d")
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"train-{host['kind']}-{date}" + (f"-{a.tag}" if a.tag else ""))
    from training.report import write_json  # atomic; imported here to keep the top level light
    # One run per method, and per crop count for dali (--crops 4,1): (run name, method, crops).
    runs = [(f"dali-c{c}" if len(a.crops) > 1 else "dali", "dali", c) if m == "dali" else (m, m, 1)
            for m in wanted for c in (a.crops if m == "dali" else [1])]

    def report(results: list[dict], complete: bool) -> dict:
        """The JSON as it stands; written after every loader, so a run cut short keeps what finished."""
        precision = next((r["precision"] for r in results if "precision" in r), "fp32" if not a.amp else "amp")
        busy = [f"{r['label']} {r['other_load_cores']:.2f}" for r in results
                if r.get("other_load_cores", 0) > fb.LOAD_LIMIT]
        more = ["OTHER PROCESSES used CPU during: " + ", ".join(busy) + " cores on average: those timings are low"
                ] if busy else []
        more += [
            f"Each loader in a fresh process: {warmup} untimed warm-up steps, then {repeats} windows of {steps} timed "
            "steps; samples/s counts batch × steps (DALI's last batch of an epoch is filled with repeated tracks, "
            "weight 0 in the loss; they are counted too, as their compute is the same).",
            "Data wait: time in next(iterator) (+ the copy to the device for librosa), CUDA synchronised before and "
            "after each step, as a fraction of the whole step time.",
            f"dali: DaliLoader(train=True, num_threads={a.num_threads}, prefetch={a.prefetch}) decodes the whole "
            "track from the shard and crops it; with crops k, one step takes batch / k tracks and k crops of each "
            "(samples/s counts crops); librosa: librosa.load reads only the 3 s crop from the source "
            f"file (soundfile seek); {a.workers} workers, OMP/OPENBLAS/MKL_NUM_THREADS=1 in them; torch in the "
            f"training process uses {a.torch_threads} threads in both runs.",
        ]
        r = {
            "benchmark": "train_throughput", "date": date, "host": host, "complete": complete,
            "runs_wanted": [n for n, _, _ in runs],
            "data": {"src": src, "synthetic": a.src is None, "tracks": len(items), "total_seconds": total_s,
                     "shard_dir": shard_dir, "classes": classes},
            "settings": {"device": device, "model": a.model, "batch": a.batch, "amp": a.amp, "precision": precision,
                         "warmup": warmup, "steps": steps, "repeats": repeats, "num_threads": a.num_threads,
                         "prefetch": a.prefetch, "crops": a.crops, "workers": a.workers,
                         "torch_threads": a.torch_threads, "method_timeout_s": a.method_timeout,
                         "spec": spec.to_dict()},
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
        if name == "dali" and not shard_dir:
            results.append({"method": name, "crops": crops, "label": label, "skipped": f"no shards ({shard_error})"})
            report(results, complete=False)
            continue
        job = {"method": name, "device": device, "items": items, "shard_dir": shard_dir, "batch": a.batch,
               "amp": a.amp, "model": a.model, "n_classes": len(classes), "spec": spec.to_dict(),
               "warmup": warmup, "steps": steps, "repeats": repeats, "num_threads": a.num_threads,
               "prefetch": a.prefetch, "workers": a.workers, "torch_threads": a.torch_threads, "crops": crops}
        best = fb.run_quietest(lambda: run_in_subprocess(run, job, a), a.retries, "windows", run)
        best.update(method=name, crops=crops, label=label)
        summarise(best, a.batch)
        results.append(best)
        report(results, complete=False)

    rep = report(results, complete=True)
    precision, notes = rep["settings"]["precision"], rep["notes"]
    try:
        bar_chart(rep, stem + ".png")
        png = os.path.relpath(stem + ".png", ROOT)
    except ImportError as e:
        png = f"none ({e})"

    print(f"## Training throughput: {a.model}, batch {a.batch}, {precision}, {device}; {len(items)} tracks, "
          f"{spec.clip_seconds:g} s crops; host {host['kind']} ({host['cpu_model'] or '?'}"
          f"{', ' + host['gpu'] if host['gpu'] else ''}), {date}\n")
    print(markdown_table(results))
    print()
    for n in notes:
        print(f"- {n}")
    print(f"\nJSON: {os.path.relpath(stem + '.json', ROOT)}  PNG: {png}  (total {time.perf_counter() - t_start:.0f} s)")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the same audio clips from files to log-mel tensors, by each feature method.

    .venv/bin/pip install -r bench/requirements.txt     # librosa, for the baseline and parity
    .venv/bin/python -m bench.features [--src DIR] [--clips 200] [--repeats 3]

Methods (all with the project's FeatureSpec: sr 22,050, n_fft 2048, hop 512, 128 slaney mels,
power 2, dB with ref 1.0 and amin 1e-10):

  librosa-1proc       librosa.load + melspectrogram + power_to_db, one file at a time, one process
  librosa-dataloader  the same inside a torch DataLoader, one worker per core
  torchaudio-cpu      soundfile decode (features.audio) + features.torch_logmel.LogMel, batch 32
  torchaudio-cpu-b1   the same, one clip at a time (extra: shows what batch 32 costs on a CPU)
  dali-cpu            loading.loader.DaliLoader over WebDataset shards, CPU mode, threads = cores
  torchaudio-cuda     as torchaudio-cpu, LogMel on the GPU            (only if CUDA is available)
  dali-cuda           DaliLoader with device cuda:0 (GPU stages)      (only if CUDA is available)

Without --src, 200 synthetic 30 s clips (preprocess.synth) are generated once into bench/.cache/.
The chosen clips are packed into shards with preprocess.make_shards (cached), so every method
reads the same clips (bench.data). Each method runs in a fresh subprocess (bench.harness), so its
peak memory is its own; it does one untimed warm-up pass (imports, JIT, DALI build, FFT plans; it
also saves its output for the parity check against librosa (bench.reference), all clips by
default), then --repeats timed windows. A window is enough whole passes over the clips to hold
--window-steps batches (or clips, for the one-clip-at-a-time methods; fewer if --budget says so),
timed as a whole (bench.clock: CUDA events on a GPU, perf_counter on the CPU) and synchronised with
the device once, at its end: no batch is read back in a timed pass, so the host decodes and queues
the next batch while the GPU works. The page cache is warmed first. Output: a markdown table on
stdout, JSON and PNG in bench/results/.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import time
from typing import Any

from bench import CACHE, RESULTS
from bench.data import SPLIT, prepare
from bench.clock import WindowClock
from bench.harness import (SkipMethod, load_note, logger, opening, require_cuda, require_dali, run_fresh,
                           run_quietest)
from bench.host import describe, today
from bench.memory import GpuMemory
from bench.reference import librosa_db
from bench.reference import require as require_librosa
from bench.tables import DASH, Bars, Col, num, publish, rng, text

CPU_METHODS = ["librosa-1proc", "librosa-dataloader", "torchaudio-cpu", "torchaudio-cpu-b1", "dali-cpu"]
GPU_METHODS = ["torchaudio-cuda", "dali-cuda"]
BASELINE = "librosa-1proc"
log = logger("bench")


# ============================================================== the feature methods

class _LibrosaDataset:
    """Map-style dataset for torch's DataLoader: one clip's normalised log-mel per item."""

    def __init__(self, paths: list[str], spec: Any):
        self.paths, self.spec = paths, spec

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        import torch
        return i, torch.from_numpy(self.spec.normalise(librosa_db(self.paths[i], self.spec)))


class Method:
    """One way from clips to feature tensors. epoch() processes every clip once."""

    gpu = False

    def __init__(self, job: dict, spec: Any):
        self.job, self.spec = job, spec
        self.items = job["items"]
        self.paths = [it["path"] for it in self.items]
        self.gpu_peak = GpuMemory() if self.gpu else None
        self.parity_idx = set(job["parity_idx"])
        self.parity_dir = job["parity_dir"]

    def open(self) -> None:
        pass

    def steps_per_pass(self) -> int:
        """Batches in one pass (clips, for the methods that take one clip at a time)."""
        return len(self.paths)

    def epoch(self, save: bool) -> Any:
        """Process every clip once; returns the number of clips (a tensor on the device where
        reading it would wait for the device). save=True (warm-up pass only) writes the parity
        clips' dB (mels, valid frames) to disk, so that they neither stay in memory (peak RSS) nor
        cost time in the timed passes; save=False reads nothing back."""
        raise NotImplementedError

    def keep(self, i: int, db: Any) -> None:
        import numpy as np
        np.save(os.path.join(self.parity_dir, f"{i}.npy"), np.asarray(db, dtype=np.float32))

    def close(self) -> None:
        pass


class LibrosaOneProcess(Method):
    def open(self) -> None:
        require_librosa()
        import torch  # noqa: F401  - the output is a torch tensor, as for the other methods

    def epoch(self, save: bool) -> int:
        import torch
        for i, p in enumerate(self.paths):
            db = librosa_db(p, self.spec)
            x = torch.from_numpy(self.spec.normalise(db))  # noqa: F841 - the product
            if save and i in self.parity_idx:
                self.keep(i, db)
        return len(self.paths)


class LibrosaDataLoader(LibrosaOneProcess):
    def open(self) -> None:
        super().open()  # imports librosa.feature before forking, so workers inherit it
        from torch.utils.data import DataLoader
        # batch_size=None: one clip per item, as in the one-process loop. Persistent workers: the
        # warm-up pass starts them; the timed passes measure steady-state throughput.
        self.loader = DataLoader(_LibrosaDataset(self.paths, self.spec), batch_size=None, shuffle=False,
                                 num_workers=os.cpu_count() or 1, persistent_workers=True)

    def epoch(self, save: bool) -> int:
        n = 0
        for i, x in self.loader:
            n += 1
            if save and i in self.parity_idx:  # dB back from the product (float32 round trip: ~1e-5 dB)
                self.keep(i, self.spec.denormalise(x).numpy())
        return n

    def close(self) -> None:
        del self.loader  # joins the workers (their memory high-water was sampled while they lived)


class TorchaudioMethod(Method):
    device = "cpu"

    def open(self) -> None:
        import torch

        from features.torch_logmel import LogMel
        self.torch = torch
        self.dev = torch.device(self.device)
        self.logmel = LogMel(self.spec).to(self.dev)
        self.batch = self.job["batch"]

    def steps_per_pass(self) -> int:
        return math.ceil(len(self.paths) / self.batch)

    def epoch(self, save: bool) -> Any:
        from features.audio import decode
        torch, spec = self.torch, self.spec
        for b0 in range(0, len(self.paths), self.batch):
            waves = [decode(p, spec.sample_rate).samples for p in self.paths[b0:b0 + self.batch]]
            # Zero-pad to the longest clip in the batch, as the DALI graph does in train=False mode.
            x = torch.zeros(len(waves), max(len(w) for w in waves))
            for j, w in enumerate(waves):
                x[j, :len(w)] = torch.from_numpy(w)
            if self.dev.type == "cuda":
                x = x.pin_memory().to(self.dev, non_blocking=True)
            with torch.inference_mode():
                feats = self.logmel(x)  # (B, mels, frames) normalised: the product
            if not save:
                continue
            if self.gpu_peak:
                self.gpu_peak.sample()
            for j, w in enumerate(waves):
                if b0 + j in self.parity_idx:
                    valid = spec.valid_frames(len(w))
                    self.keep(b0 + j, spec.denormalise(feats[j, :, :valid].float().cpu()).numpy())
        return len(self.paths)


class TorchaudioCpuPerClip(TorchaudioMethod):
    """Extra, not one of the asked-for methods: batch 1. On CPU, batch 32 x 30 s makes ~340 MB
    intermediates that are page-faulted in afresh every batch; one clip at a time reuses memory."""

    def open(self) -> None:
        super().open()
        self.batch = 1


class TorchaudioCuda(TorchaudioMethod):
    device, gpu = "cuda", True

    def open(self) -> None:
        require_cuda()
        super().open()


class DaliMethod(Method):
    device = "cpu"

    def open(self) -> None:
        if not self.job.get("shard_dir"):
            raise SkipMethod("no shards (make_shards could not run: " + self.job.get("shard_error", "?") + ")")
        require_dali()
        import torch

        from loading.loader import DaliLoader
        self.torch = torch
        self.dev = torch.device(self.device, 0) if self.device == "cuda" else torch.device("cpu")
        self.uid_to_idx = {it["uid"]: it["idx"] for it in self.items}
        t = time.perf_counter()
        self.loader = DaliLoader(self.job["shard_dir"], SPLIT, self.spec, batch_size=self.job["batch"], train=False,
                                 num_threads=os.cpu_count() or 1, device=self.dev)
        self.build_s = time.perf_counter() - t

    def steps_per_pass(self) -> int:
        return len(self.loader)

    def epoch(self, save: bool) -> Any:
        spec, n = self.spec, 0
        for b in self.loader:
            n = n + b.weight.sum()  # on the device; repeats that fill the last batch carry weight 0
            if not save:
                continue
            if self.gpu_peak:
                self.gpu_peak.sample()
            for j, (u, w) in enumerate(zip(b.uid.tolist(), b.weight.tolist())):
                i = self.uid_to_idx.get(u)
                if w and i in self.parity_idx:
                    valid = spec.valid_frames(int(b.n_samples[j]))
                    self.keep(i, spec.denormalise(b.x[j, 0, :, :valid].float().cpu()).numpy())
        return n


class DaliCuda(DaliMethod):
    device, gpu = "cuda", True

    def open(self) -> None:
        require_cuda()
        super().open()


METHODS: dict[str, type[Method]] = {
    "librosa-1proc": LibrosaOneProcess, "librosa-dataloader": LibrosaDataLoader,
    "torchaudio-cpu": TorchaudioMethod, "torchaudio-cpu-b1": TorchaudioCpuPerClip, "dali-cpu": DaliMethod,
    "torchaudio-cuda": TorchaudioCuda, "dali-cuda": DaliCuda,
}


# ============================================================== one method, in its own process

def run_method(job: dict, sampler: Any) -> dict:
    """Open, warm up (one untimed pass that also saves the parity clips), then timed windows of whole
    passes, each waited for once, at its end."""
    import resource

    import torch

    from core.spec import FeatureSpec
    spec = FeatureSpec.from_dict(job["spec"])
    method = METHODS[job["method"]](job, spec)
    if method.gpu:
        require_cuda()
        method.gpu_peak.start()
    res: dict[str, Any] = {}
    t = time.perf_counter()
    method.open()
    res["open_s"] = time.perf_counter() - t
    if hasattr(method, "build_s"):
        res["dali_build_s"] = method.build_s
    clock = WindowClock(torch.device("cuda", 0) if method.gpu else torch.device("cpu"))
    n_clips = len(job["items"])
    t = time.perf_counter()
    n = int(method.epoch(save=True))
    clock.sync()
    res["warmup_s"] = time.perf_counter() - t
    if n != n_clips:
        raise RuntimeError(f"warm-up pass processed {n} clips, expected {n_clips}")
    # Whole passes per window to hold --window-steps batches, and windows, within the time budget
    # (slow methods on big --clips); reported when it bites.
    per_pass = method.steps_per_pass()
    budget_passes = int(job["budget_s"] // max(res["warmup_s"], 1e-9))
    passes = max(1, min(math.ceil(job["window_steps"] / per_pass), budget_passes))
    repeats = max(1, min(job["repeats"], budget_passes // passes))
    res.update(repeats=repeats, passes_per_window=passes, steps_per_pass=per_pass,
               clips_per_window=passes * n_clips, clock=clock.kind)
    times, hosts, syncs = [], [], []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        syncs0 = clock.syncs
        clock.start()
        counts = [method.epoch(save=False) for _ in range(passes)]
        window_s, host_s = clock.stop()
        syncs.append(clock.syncs - syncs0)
        times.append(window_s)
        hosts.append(host_s)
        done = int(sum(counts))  # read after the window's wait
        if done != passes * n_clips:
            raise RuntimeError(f"a window processed {done} clips, expected {passes * n_clips}")
        if method.gpu_peak:
            method.gpu_peak.sample()
    res.update(times_s=times, host_s=hosts, syncs_per_window=syncs)
    # Page faults of this process (not of DataLoader workers) per clip: fresh big buffers cost.
    res["minor_faults_per_clip"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / (
        repeats * passes * n_clips)
    sampler.sample()  # catch the workers' high-water marks before they exit
    method.close()
    if method.gpu_peak:
        res.update(method.gpu_peak.result())
    return res


def compare_parity(ref_dir: str, got_dir: str, items: list[dict], parity_idx: list[int]) -> dict:
    """max |dB - librosa dB| over the valid frames of each parity clip, and where the worst one is."""
    import numpy as np
    per_clip, worst = [], None
    for i in parity_idx:
        path = os.path.join(got_dir, f"{i}.npy")
        if not os.path.exists(path):
            return {"parity_error": f"clip {items[i]['rel']} was not produced"}
        a, r = np.load(path), np.load(os.path.join(ref_dir, f"{i}.npy"))
        f = min(a.shape[-1], r.shape[-1])  # equal unless resampling changed the length
        d = np.abs(a[:, :f].astype(np.float64) - r[:, :f])
        m, t = np.unravel_index(int(d.argmax()), d.shape)
        per_clip.append(float(d[m, t]))
        if worst is None or per_clip[-1] > worst["abs_db"]:
            worst = {"clip": items[i]["rel"], "abs_db": per_clip[-1], "mel": int(m), "frame": int(t),
                     "librosa_db": float(r[m, t]), "frame_peak_db": float(r[:, t].max())}
    return {"max_abs_db": max(per_clip), "median_clip_max_abs_db": float(np.median(per_clip)),
            "clips_over_0.01db": int(sum(v > 0.01 for v in per_clip)), "parity_clips": len(per_clip),
            "worst": worst}


# ============================================================== report

def summarise(results: list[dict], total_seconds: float, n_clips: int) -> None:
    """Adds clips/s and audio-seconds/s (median, min, max) and the ratio to one-process librosa."""
    for r in results:
        if "times_s" in r:
            rates = [r.get("clips_per_window", n_clips) / t for t in r["times_s"]]
            r["clips_per_s"] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
            r["audio_s_per_s"] = {k: v * total_seconds / n_clips for k, v in r["clips_per_s"].items()}
    base = next((r for r in results if r["method"] == BASELINE and "clips_per_s" in r), None)
    for r in results:
        if base and "clips_per_s" in r:
            r["ratio_to_librosa"] = r["clips_per_s"]["median"] / base["clips_per_s"]["median"]


def report_notes(results: list[dict], a: argparse.Namespace, parity_idx: list[int]) -> list[str]:
    """The notes under the table that depend on the results so far (summarise() has run)."""
    notes = load_note(results)
    for r in results:
        w = r.get("worst")
        if w and w["abs_db"] > 0.01:
            notes.append(f"{r['method']}: {r['clips_over_0.01db']} of {r['parity_clips']} clips differ from librosa "
                         f"by > 0.01 dB somewhere; worst {w['abs_db']:.3f} dB in {w['clip']} (mel {w['mel']}, "
                         f"frame {w['frame']}), a band at {w['librosa_db']:.1f} dB, "
                         f"{w['frame_peak_db'] - w['librosa_db']:.0f} dB below that frame's loudest band")
        if r.get("parity_error"):
            notes.append(f"{r['method']}: parity not computed: {r['parity_error']}")
    for r in results:
        if "repeats" in r and r["repeats"] < a.repeats:
            notes.append(f"{r['method']}: {r['repeats']} timed window(s) instead of {a.repeats} "
                         f"(--budget {a.budget:g} s)")
        if "steps_per_pass" in r and r["passes_per_window"] * r["steps_per_pass"] < a.window_steps:
            notes.append(f"{r['method']}: windows of {r['passes_per_window']} pass(es), "
                         f"{r['passes_per_window'] * r['steps_per_pass']} steps instead of {a.window_steps} "
                         f"(--budget {a.budget:g} s)")
    notes += [
        "Every method processes the same clips; clips/s counts each clip once per pass. A timed window is whole "
        "passes (enough to hold --window-steps batches, or clips for the one-clip methods, within --budget), "
        "timed as a whole (CUDA events on a GPU, perf_counter on the CPU) and synchronised with the device "
        "once, at its end; nothing is read back during it.",
        "dali-*: read shards that make_shards wrote beforehand (validation, downmix, resampling and packing "
        "are offline and not timed; DALI still decodes the WAV bytes in every pass); the file methods decode "
        "the source files in every pass. DALI's last batch is filled with repeated clips "
        "(LastBatchPolicy.FILL): their work is in the time, not in the count.",
        "librosa-1proc runs with the default BLAS threads; librosa-dataloader with one worker per core and "
        "OMP/OPENBLAS/MKL_NUM_THREADS=1; torchaudio-cpu* with torch's default threads "
        f"({os.cpu_count()}); DALI with num_threads={os.cpu_count()}.",
        "Warm: page cache read first; each method does one untimed pass before the timed ones "
        "(persistent DataLoader workers, built DALI pipeline).",
        "max abs ΔdB: librosa dB vs the method's output (normalisation undone) over the valid frames "
        f"(1 + n_samples // hop) of {len(parity_idx)} clips; in brackets the median over clips of each "
        "clip's max.",
    ]
    return notes


COLUMNS = [
    Col("method", text("method")),
    Col("clips/s median (min–max)", rng("clips_per_s", ".1f")),
    Col("audio s/s", num("audio_s_per_s", ".0f")),
    Col("× librosa 1-proc", num("ratio_to_librosa", ".2f")),
    Col("peak RSS MB", num("peak_rss_mb", ".0f")),
    Col("peak PSS MB", num("peak_pss_mb", ".0f")),
    Col("peak GPU MB", num("peak_gpu_mb", ".0f")),
    Col("max abs ΔdB vs librosa (median clip)",
        lambda r: f"{num('max_abs_db', '.4f')(r)} ({num('median_clip_max_abs_db', '.4f')(r)})"),
    Col("windows × passes", lambda r: f"{r['repeats']} × {r['passes_per_window']}" if "repeats" in r else DASH),
    Col("other load, cores", num("other_load_cores", ".2f")),
]
CHART = [
    Bars(("clips_per_s",), "clips/s (median, bars: min–max)", pad=1.4,
         note=lambda r, m: f"{m:.0f}" + (f" (×{r['ratio_to_librosa']:.2f})" if r.get("ratio_to_librosa") else "")),
    Bars(("peak_rss_mb", "peak_pss_mb"), "peak host memory, MB", pad=1.15, colors=("tab:orange", "tab:green"),
         labels=("peak RSS (sum of high-water marks)", "peak PSS (shared pages once)")),
]


# ============================================================== driver

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", help="folder of class folders of audio (default: synthetic clips in bench/.cache)")
    p.add_argument("--clips", type=int, default=200, help="clips to use (default 200)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per method (default 3)")
    p.add_argument("--batch", type=int, default=32, help="batch size for torchaudio and DALI (default 32)")
    p.add_argument("--parity-clips", type=int, default=0,
                   help="clips compared with librosa, spread over the set (default 0: all; ~50 clips/s)")
    p.add_argument("--budget", type=float, default=90.0,
                   help="seconds of timed passes per method at most; fewer passes and windows if the warm-up "
                        "says so")
    p.add_argument("--window-steps", type=int, default=50,
                   help="batches (clips for one-clip methods) a timed window holds at least: whole passes "
                        "(default 50)")
    p.add_argument("--wait-idle", type=float, default=60.0,
                   help="before each method, wait up to this many seconds for other processes to go quiet")
    p.add_argument("--retries", type=int, default=1,
                   help="reruns of a method whose run other processes disturbed (default 1)")
    p.add_argument("--methods", help="comma-separated subset of: " + ", ".join(METHODS) + " (run in that order)")
    p.add_argument("--method-timeout", type=float, default=0.0,
                   help="seconds per method process at most, warm-up included (default: max(600, 10 x --budget))")
    p.add_argument("--cache", default=CACHE, help="generated data and shards")
    p.add_argument("--out", default=RESULTS, help="where the JSON and PNG go")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.clips < 1 or a.repeats < 1 or a.batch < 1 or a.window_steps < 1:
        p.error("--clips, --repeats, --batch and --window-steps must be >= 1")
    wanted = [m.strip() for m in a.methods.split(",") if m.strip()] if a.methods else CPU_METHODS + GPU_METHODS
    unknown = [m for m in wanted if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    a.methods = wanted
    return a


def main(argv: list[str] | None = None) -> int:
    run = opening(argv, parse_args, run_method)
    a, t_start = run.args, run.t_start
    from core.spec import FeatureSpec
    from training.report import write_json  # atomic; imported here to keep the top level light
    spec = FeatureSpec()
    ds = prepare(a.src, a.clips, a.cache, spec, log=log)
    items, notes = ds.items, list(ds.notes)
    if ds.other_rate:
        notes.append(f"{ds.other_rate} clips are not at {spec.sample_rate} Hz: the file methods resample them in "
                     "every pass (librosa: soxr_hq; torchaudio: features.audio's Kaiser sinc), DALI reads shards "
                     "resampled once offline; ΔdB then includes the two resamplers' difference")

    k = len(items) if a.parity_clips <= 0 else min(a.parity_clips, len(items))
    parity_idx = sorted({round(j * (len(items) - 1) / max(k - 1, 1)) for j in range(k)})
    parity_root = os.path.join(os.path.abspath(a.cache), "parity")  # children run in the repository root
    ref_dir = os.path.join(parity_root, "librosa-reference")
    shutil.rmtree(parity_root, ignore_errors=True)
    os.makedirs(ref_dir)
    try:
        import numpy as np
        t = time.perf_counter()
        for i in parity_idx:
            np.save(os.path.join(ref_dir, f"{i}.npy"), librosa_db(items[i]["path"], spec))
        log(f"librosa reference for {len(parity_idx)} parity clips in {time.perf_counter() - t:.0f} s")
    except SkipMethod as e:
        ref_dir = None
        notes.append(f"{e}: no parity reference and no ratio to librosa")

    host, date = run.host, today()
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"features-{host['kind']}-{date}")

    def report(results: list[dict], complete: bool) -> dict:
        """The JSON as it stands; written after every method, so a run cut short keeps what finished."""
        summarise(results, ds.total_seconds, len(items))
        r = {
            "benchmark": "features", "date": date, "host": host, "complete": complete, "methods_wanted": a.methods,
            "data": {"src": ds.src, "synthetic": ds.synthetic, "clips": len(items), "total_seconds": ds.total_seconds,
                     "shard_dir": ds.shard_dir, "parity_clips": len(parity_idx)},
            "settings": {"repeats": a.repeats, "batch": a.batch, "budget_s": a.budget, "window_steps": a.window_steps,
                         "method_timeout_s": a.method_timeout or None, "spec": spec.to_dict()},
            "methods": results, "notes": notes + report_notes(results, a, parity_idx),
            "total_wall_s": time.perf_counter() - t_start,
        }
        write_json(stem + ".json", r)
        return r

    timeout = a.method_timeout if a.method_timeout else max(600.0, 10 * a.budget)
    results: list[dict] = []
    for name in a.methods:
        if name in GPU_METHODS and not host["gpu"]:
            results.append({"method": name, "skipped": "no CUDA device (torch.cuda.is_available() is False)"})
            report(results, complete=False)
            continue
        job = {"method": name, "items": items, "shard_dir": ds.shard_dir, "shard_error": ds.shard_error,
               "batch": a.batch, "repeats": a.repeats, "budget_s": a.budget, "window_steps": a.window_steps,
               "spec": spec.to_dict(),
               "parity_idx": parity_idx, "parity_dir": os.path.join(parity_root, name)}

        def run_once(name: str = name, job: dict = job) -> dict:
            shutil.rmtree(job["parity_dir"], ignore_errors=True)  # parity output of this attempt only
            os.makedirs(job["parity_dir"])
            return run_fresh("bench.features", name, job, cache=a.cache, wait_idle_s=a.wait_idle, timeout=timeout,
                             single_thread_blas=name == "librosa-dataloader", log=log)
        best = run_quietest(run_once, a.retries, "times_s", name, log=log)
        if ref_dir and "times_s" in best:
            best.update(compare_parity(ref_dir, job["parity_dir"], items, parity_idx))
        shutil.rmtree(job["parity_dir"], ignore_errors=True)
        results.append(best)
        report(results, complete=False)

    shutil.rmtree(parity_root, ignore_errors=True)  # ~0.7 MB per clip; rebuilt every run anyway
    rep = report(results, complete=True)
    d = rep["data"]
    publish(f"Log-mel features: {len(items)} clips ({ds.total_seconds / 60:.1f} min of audio), host {describe(host)}, "
            f"{date}", results, COLUMNS, "clips_per_s", stem=stem, notes=rep["notes"], chart=CHART, name="method",
            title=f"log-mel features: {d['clips']} clips, {d['total_seconds'] / d['clips']:.0f} s each on average — "
                  f"{describe(host)}, {date}", t_start=t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())

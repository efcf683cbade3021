#!/usr/bin/env python
"""Benchmark: the same audio clips from files to log-mel tensors, by each feature method.

    .venv/bin/pip install -r bench/requirements.txt     # librosa, for the baseline and parity
    .venv/bin/python bench/features.py [--src DIR] [--clips 200] [--repeats 3]

Methods (all with the project's FeatureSpec: sr 22,050, n_fft 2048, hop 512, 128 slaney mels,
power 2, dB with ref 1.0 and amin 1e-10):

  librosa-1proc       librosa.load + melspectrogram + power_to_db, one file at a time, one process
  librosa-dataloader  the same inside a torch DataLoader, one worker per core
  torchaudio-cpu      soundfile decode (pipeline.audio) + pipeline.features_torch.LogMel, batch 32
  torchaudio-cpu-b1   the same, one clip at a time (extra: shows what batch 32 costs on a CPU)
  dali-cpu            pipeline.loader.DaliLoader over WebDataset shards, CPU mode, threads = cores
  torchaudio-cuda     as torchaudio-cpu, LogMel on the GPU            (only if CUDA is available)
  dali-cuda           DaliLoader with device cuda:0 (GPU stages)      (only if CUDA is available)

Without --src, 200 synthetic 30 s clips (preprocess.synth) are generated once into bench/.cache/.
The chosen clips are packed into shards with preprocess.make_shards (cached), so every method
reads the same clips. Each method runs in a fresh subprocess, so its peak memory is its own; it
does one untimed warm-up pass (imports, JIT, DALI build, FFT plans; it also saves its output for
the parity check against librosa, all clips by default), then --repeats timed passes over all
clips. The page cache is warmed first. Output: a markdown table on stdout, JSON and PNG in bench/results/.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from importlib import metadata
from typing import Any, Callable

# Keep the top level light: make_shards' spawn pool and the method subprocesses re-import this file.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CPU_METHODS = ["librosa-1proc", "librosa-dataloader", "torchaudio-cpu", "torchaudio-cpu-b1", "dali-cpu"]
GPU_METHODS = ["torchaudio-cuda", "dali-cuda"]
BASELINE = "librosa-1proc"
LOAD_LIMIT = 0.2  # cores used by other processes during a method's run above which it is rerun/flagged
SPLIT = "train"  # make_shards(val=0, test=0) puts every clip in 'train'


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout carries only the result table."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ============================================================== data: clips and shards

def synth_source(cache: str, clips: int) -> str:
    """Generate (once) the default data: 30 s synthetic clips, at least 20 per class."""
    from preprocess.synth import GENRES, generate
    per_class = max(20, math.ceil(clips / len(GENRES)))
    out = os.path.join(cache, f"synth-pc{per_class}-30s")
    done = os.path.join(out, ".done")
    if not os.path.exists(done):
        log(f"generating {per_class * len(GENRES)} synthetic clips of 30 s into {out} (once)")
        t = time.perf_counter()
        generate(out, per_class=per_class, seconds=30.0, progress=False)
        with open(done, "w") as f:
            f.write("ok\n")
        log(f"  generated in {time.perf_counter() - t:.0f} s")
    return out


def select_clips(src: str, n: int) -> list[Any]:
    """Up to n input files of SRC, taken round-robin across classes so a subset stays balanced."""
    from preprocess.make_shards import find_inputs
    items, _, _ = find_inputs(src)
    by_class: dict[str, list[Any]] = {}
    for it in items:
        by_class.setdefault(it.label, []).append(it)
    queues = [by_class[c] for c in sorted(by_class)]
    chosen: list[Any] = []
    i = 0
    while len(chosen) < n and any(i < len(q) for q in queues):
        chosen.extend(q[i] for q in queues if i < len(q))
        i += 1
    return sorted(chosen[:n], key=lambda it: it.rel)


def build_shards(src: str, chosen: list[Any], cache: str, spec: Any) -> tuple[str, dict]:
    """Pack exactly the chosen files into shards (cached by their names, sizes, mtimes and spec).

    make_shards takes a folder, so the chosen files are linked into a selection folder first.
    """
    from preprocess.make_shards import make_shards
    sig = [(it.rel, os.path.getsize(it.path), os.stat(it.path).st_mtime_ns) for it in chosen]
    key = hashlib.sha1(json.dumps([os.path.abspath(src), sig, spec.to_dict()]).encode()).hexdigest()[:12]
    shard_dir = os.path.join(cache, f"shards-{key}")
    manifest_path = os.path.join(shard_dir, "manifest.json")
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as f:
            return shard_dir, json.load(f)
    sel = os.path.join(cache, f"sel-{key}")
    for it in chosen:
        link = os.path.join(sel, it.rel)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(it.path), link)
    log(f"packing {len(chosen)} clips into shards in {shard_dir} (once)")
    t = time.perf_counter()
    manifest = make_shards(sel, shard_dir, val=0, test=0, seed=0, workers=os.cpu_count(), spec=spec,
                           progress=False)
    log(f"  packed in {time.perf_counter() - t:.0f} s")
    return shard_dir, manifest


def clip_table(chosen: list[Any], manifest: dict | None) -> tuple[list[dict], list[str]]:
    """Per clip: file path, DALI uid, seconds. Clips make_shards rejected are dropped everywhere."""
    notes = []
    if manifest is None:
        import soundfile as sf
        rows = []
        for it in chosen:
            try:
                info = sf.info(it.path)
            except Exception:  # noqa: BLE001 - unreadable input: leave it out of every method
                continue
            rows.append({"path": it.path, "rel": it.rel, "uid": None, "seconds": info.frames / info.samplerate})
        return [dict(r, idx=i) for i, r in enumerate(rows)], notes
    by_rel = {it.rel: it for it in chosen}
    rows = [{"path": by_rel[s["source"]].path, "rel": s["source"], "uid": s["uid"], "seconds": s["duration"]}
            for s in sorted(manifest["samples"], key=lambda s: s["source"])]
    if manifest["rejects"]:
        notes.append(f"{len(manifest['rejects'])} input files rejected by make_shards and left out of every method")
    other_rate = sum(s["source_rate"] != manifest["sample_rate"] for s in manifest["samples"])
    if other_rate:
        notes.append(f"{other_rate} clips are not at {manifest['sample_rate']} Hz: the file methods resample them in "
                     "every pass (librosa: soxr_hq; torchaudio: pipeline.audio's Kaiser sinc), DALI reads shards "
                     "resampled once offline; ΔdB then includes the two resamplers' difference")
    return [dict(r, idx=i) for i, r in enumerate(rows)], notes


def warm_page_cache(paths: list[str]) -> float:
    """Read every input once, so no method pays the first disk read. Returns MB read."""
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                total += len(chunk)
    return total / 1e6


# ============================================================== the feature methods

def librosa_db(path: str, spec: Any) -> Any:
    """The original project's features: float32 (mels, frames) in dB."""
    import librosa
    y, _ = librosa.load(path, sr=spec.sample_rate)  # mono; soxr_hq resampling only if the rate differs
    mel = librosa.feature.melspectrogram(
        y=y, sr=spec.sample_rate, n_fft=spec.n_fft, hop_length=spec.hop_length, win_length=spec.n_fft,
        window="hann", center=True, pad_mode="reflect", power=2.0, n_mels=spec.n_mels, fmin=spec.f_min,
        fmax=spec.f_max, htk=spec.mel_scale == "htk", norm="slaney" if spec.mel_norm == "slaney" else None)
    return librosa.power_to_db(mel, ref=1.0, amin=10.0 ** (spec.db_floor / 10.0), top_db=None)


class SkipMethod(Exception):
    """The method cannot run on this machine (missing package or device); not a failure."""


class _LibrosaDataset:
    """Map-style dataset for torch's DataLoader: one clip's normalised log-mel per item."""

    def __init__(self, paths: list[str], spec: Any):
        self.paths, self.spec = paths, spec

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        import torch
        db = librosa_db(self.paths[i], self.spec)
        return i, torch.from_numpy((db - self.spec.norm_mean) / self.spec.norm_std)


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

    def epoch(self, save: bool) -> int:
        """Process every clip once; returns the number of clips. save=True (warm-up pass only)
        writes the parity clips' dB (mels, valid frames) to disk, so that they neither stay in
        memory (peak RSS) nor cost time in the timed passes."""
        raise NotImplementedError

    def keep(self, i: int, db: Any) -> None:
        import numpy as np
        np.save(os.path.join(self.parity_dir, f"{i}.npy"), np.asarray(db, dtype=np.float32))

    def close(self) -> None:
        pass

    def sync(self) -> None:
        pass


class LibrosaOneProcess(Method):
    def open(self) -> None:
        try:
            import librosa  # noqa: F401
        except ImportError as e:
            raise SkipMethod(f"librosa not installed ({e}); pip install -r bench/requirements.txt") from None
        import torch  # noqa: F401  - the output is a torch tensor, as for the other methods

    def epoch(self, save: bool) -> int:
        import torch
        spec = self.spec
        for i, p in enumerate(self.paths):
            db = librosa_db(p, spec)
            x = torch.from_numpy((db - spec.norm_mean) / spec.norm_std)  # noqa: F841 - the product
            if save and i in self.parity_idx:
                self.keep(i, db)
        return len(self.paths)


class LibrosaDataLoader(LibrosaOneProcess):
    def open(self) -> None:
        super().open()
        import librosa.feature  # noqa: F401  - import before forking, so workers inherit it
        from torch.utils.data import DataLoader
        # batch_size=None: one clip per item, as in the one-process loop. Persistent workers: the
        # warm-up pass starts them; the timed passes measure steady-state throughput.
        self.loader = DataLoader(_LibrosaDataset(self.paths, self.spec), batch_size=None, shuffle=False,
                                 num_workers=os.cpu_count() or 1, persistent_workers=True)

    def epoch(self, save: bool) -> int:
        n, spec = 0, self.spec
        for i, x in self.loader:
            n += 1
            if save and i in self.parity_idx:  # dB back from the product (float32 round trip: ~1e-5 dB)
                self.keep(i, (x * spec.norm_std + spec.norm_mean).numpy())
        return n

    def close(self) -> None:
        del self.loader  # joins the workers (their memory high-water was sampled while they lived)


class TorchaudioMethod(Method):
    device = "cpu"

    def open(self) -> None:
        import torch
        from pipeline.features_torch import LogMel
        self.torch = torch
        self.dev = torch.device(self.device)
        self.logmel = LogMel(self.spec).to(self.dev)
        self.batch = self.job["batch"]

    def epoch(self, save: bool) -> int:
        from pipeline.audio import decode
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
            if self.gpu_peak:
                self.gpu_peak.sample()
            for j, w in enumerate(waves):
                if save and b0 + j in self.parity_idx:
                    valid = spec.valid_frames(len(w))
                    self.keep(b0 + j, (feats[j, :, :valid].float().cpu() * spec.norm_std + spec.norm_mean).numpy())
        self.sync()
        return len(self.paths)

    def sync(self) -> None:
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize(self.dev)


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
        try:
            import nvidia.dali  # noqa: F401
        except ImportError as e:
            raise SkipMethod(f"nvidia.dali not importable ({e})") from None
        import torch
        from pipeline.loader import DaliLoader
        self.torch = torch
        self.dev = torch.device(self.device, 0) if self.device == "cuda" else torch.device("cpu")
        self.uid_to_idx = {it["uid"]: it["idx"] for it in self.items}
        t = time.perf_counter()
        self.loader = DaliLoader(self.job["shard_dir"], SPLIT, self.spec, batch_size=self.job["batch"], train=False,
                                 num_threads=os.cpu_count() or 1, device=self.dev)
        self.build_s = time.perf_counter() - t

    def epoch(self, save: bool) -> int:
        spec, n = self.spec, 0.0
        for b in self.loader:
            if self.gpu_peak:
                self.gpu_peak.sample()
            n += float(b.weight.sum())  # repeats that fill the last batch carry weight 0
            for j, (u, w) in enumerate(zip(b.uid.tolist(), b.weight.tolist())):
                i = self.uid_to_idx.get(u)
                if save and w and i in self.parity_idx:
                    valid = spec.valid_frames(int(b.n_samples[j]))
                    self.keep(i, (b.x[j, 0, :, :valid].float().cpu() * spec.norm_std + spec.norm_mean).numpy())
        self.sync()
        return int(n)

    def sync(self) -> None:
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize(self.dev)


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


def require_cuda() -> None:
    import torch
    if not torch.cuda.is_available():
        raise SkipMethod("torch.cuda.is_available() is False")


# ============================================================== memory measurement

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


# ============================================================== one method, in its own process

def run_method(job: dict, sampler: MemSampler) -> dict:
    """Open, warm up (one untimed pass that also saves the parity clips), then timed passes."""
    import resource

    from pipeline.spec import FeatureSpec
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
    t = time.perf_counter()
    n = method.epoch(save=True)
    res["warmup_s"] = time.perf_counter() - t
    if n != len(job["items"]):
        raise RuntimeError(f"warm-up pass processed {n} clips, expected {len(job['items'])}")
    # Fit the repeats into the time budget (slow methods on big --clips); reported when it bites.
    repeats = max(1, min(job["repeats"], int(job["budget_s"] // max(res["warmup_s"], 1e-9))))
    res["repeats"] = repeats
    times = []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        t = time.perf_counter()
        method.epoch(save=False)
        method.sync()
        times.append(time.perf_counter() - t)
    res["times_s"] = times
    # Page faults of this process (not of DataLoader workers) per clip: fresh big buffers cost.
    res["minor_faults_per_clip"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / (
        repeats * len(job["items"]))
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


def child_main(job_path: str) -> int:
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    sampler = MemSampler()
    sampler.start()
    res: dict[str, Any] = {"method": job["method"]}
    try:
        res.update(run_method(job, sampler))
    except SkipMethod as e:
        res["skipped"] = str(e)
    except Exception as e:  # noqa: BLE001 - reported in the table; the other methods still run
        res["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    res.update(sampler.finish())
    from training.report import write_json  # atomic; imported here to keep the top level light
    write_json(job["out_path"], res)
    return 0


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
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_idle(max_wait: float, threshold: float = 0.25) -> tuple[float, float]:
    """Wait (at most max_wait s) until other processes use < threshold cores, measured over 2 s.

    Timings on a shared 2-core machine are meaningless while something else runs.
    Returns (seconds waited, last measured load in cores).
    """
    t0 = time.perf_counter()
    while True:
        b0, t = cpu_busy_s(), time.perf_counter()
        time.sleep(2.0)
        load = (cpu_busy_s() - b0) / (time.perf_counter() - t)
        waited = time.perf_counter() - t0
        if load < threshold or waited >= max_wait:
            return waited, load


# ============================================================== host description

def host_info() -> dict:
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(), "cpu_model": None, "gpu": None}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    try:
        import torch
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    gpu_slug = ""
    if info["gpu"]:
        # "NVIDIA H100 80GB HBM3" -> "h100"; "NVIDIA GeForce RTX 4090" -> "rtx4090"
        words = [w.lower() for w in re.split(r"[\s_]+", info["gpu"]) if w.lower() not in ("nvidia", "geforce", "tesla")]
        words = words[:2] if words and words[0] in ("rtx", "gtx") else words[:1]
        gpu_slug = "-" + re.sub(r"[^a-z0-9]+", "", "".join(words))
    info["kind"] = f"cpu{os.cpu_count()}{gpu_slug}"
    versions = {}
    for dist in ("torch", "torchaudio", "nvidia-dali-cuda130", "nvidia-dali-cuda120", "librosa", "numpy",
                 "soundfile", "numba", "soxr"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    info["versions"] = versions
    return info


# ============================================================== report

def summarise(results: list[dict], total_seconds: float, n_clips: int) -> None:
    """Adds clips/s and audio-seconds/s (median, min, max) and the ratio to one-process librosa."""
    for r in results:
        if "times_s" in r:
            rates = [n_clips / t for t in r["times_s"]]
            r["clips_per_s"] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
            r["audio_s_per_s"] = {k: v * total_seconds / n_clips for k, v in r["clips_per_s"].items()}
    base = next((r for r in results if r["method"] == BASELINE and "clips_per_s" in r), None)
    for r in results:
        if base and "clips_per_s" in r:
            r["ratio_to_librosa"] = r["clips_per_s"]["median"] / base["clips_per_s"]["median"]


def _f(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def markdown_table(results: list[dict]) -> str:
    head = ("| method | clips/s median (min–max) | audio s/s | × librosa 1-proc | peak RSS MB | peak PSS MB "
            "| peak GPU MB | max abs ΔdB vs librosa (median clip) | timed passes | other load, cores |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if "clips_per_s" not in r:
            why = r.get("skipped") or r.get("error") or "not run"
            lines.append(f"| {r['method']} | {'skipped' if 'skipped' in r else 'FAILED'}: {why} |" + " |" * 8)
            continue
        c, a = r["clips_per_s"], r["audio_s_per_s"]
        lines.append(
            f"| {r['method']} | {c['median']:.1f} ({c['min']:.1f}–{c['max']:.1f}) | {a['median']:.0f} "
            f"| {_f(r.get('ratio_to_librosa'), '.2f')} | {_f(r.get('peak_rss_mb'), '.0f')} "
            f"| {_f(r.get('peak_pss_mb'), '.0f')} | {_f(r.get('peak_gpu_mb'), '.0f')} "
            f"| {_f(r.get('max_abs_db'), '.4f')} ({_f(r.get('median_clip_max_abs_db'), '.4f')}) | {r['repeats']} "
            f"| {_f(r.get('other_load_cores'), '.2f')} |")
    return "\n".join(lines)


def bar_chart(report: dict, path: str) -> None:
    from training.report import pyplot, save_figure
    plt = pyplot()
    rows = [r for r in report["methods"] if "clips_per_s" in r]
    if not rows:
        return
    names = [r["method"] for r in rows]
    med = [r["clips_per_s"]["median"] for r in rows]
    err = [[m - r["clips_per_s"]["min"] for m, r in zip(med, rows)],
           [r["clips_per_s"]["max"] - m for m, r in zip(med, rows)]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.6 * len(rows) + 2.2), sharey=True)
    y = range(len(rows))
    ax1.barh(y, med, xerr=err, color="tab:blue", capsize=4)
    for yi, m, r in zip(y, med, rows):
        ratio = r.get("ratio_to_librosa")
        ax1.text(r["clips_per_s"]["max"], yi, f"  {m:.0f}" + (f" (×{ratio:.2f})" if ratio else ""), va="center",
                 fontsize=9)
    ax1.set_yticks(list(y), names)
    ax1.invert_yaxis()
    ax1.set_xlabel("clips/s (median, bars: min–max)")
    ax1.set_xlim(0, max(r["clips_per_s"]["max"] for r in rows) * 1.4)
    rss = [r.get("peak_rss_mb") or 0 for r in rows]
    pss = [r.get("peak_pss_mb") or 0 for r in rows]
    ax2.barh([v - 0.2 for v in y], rss, height=0.4, color="tab:orange", label="peak RSS (sum of high-water marks)")
    ax2.barh([v + 0.2 for v in y], pss, height=0.4, color="tab:green", label="peak PSS (shared pages once)")
    ax2.set_xlabel("peak host memory, MB")
    ax2.set_xlim(0, max(rss + pss) * 1.15)
    ax2.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    d, h = report["data"], report["host"]
    fig.suptitle(f"log-mel features: {d['clips']} clips, {d['total_seconds'] / d['clips']:.0f} s each on average — "
                 f"{h['kind']} ({h['cpu_model'] or '?'}{', ' + h['gpu'] if h['gpu'] else ''}), {report['date']}",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


# ============================================================== driver

def run_method_process(script: str, name: str, job: dict, *, cache: str, prefix: str, wait_idle_s: float,
                       timeout: float, single_thread_blas: bool) -> dict:
    """Run `script --_child JOB` in a fresh interpreter; returns its result plus the machine's other load.

    Shared by features.py and train_throughput.py. single_thread_blas: one single-threaded worker per
    core, for DataLoader methods (BLAS threads inside workers would oversubscribe).
    """
    out_path = os.path.join(cache, f"{prefix}result-{name}.json")
    job_path = os.path.join(cache, f"{prefix}job-{name}.json")
    with open(job_path, "w", encoding="utf-8") as f:
        json.dump(dict(job, out_path=out_path), f)
    if os.path.exists(out_path):
        os.remove(out_path)
    env = dict(os.environ)
    if single_thread_blas:
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    res: dict[str, Any] = {"method": name}
    if wait_idle_s > 0:
        waited, load = wait_idle(wait_idle_s)
        res["waited_for_idle_s"], res["load_before_cores"] = waited, load
    log(f"running {name} in a fresh process ...")
    t, busy0, own0 = time.perf_counter(), cpu_busy_s(), children_cpu_s()
    try:
        subprocess.run([sys.executable, os.path.abspath(script), "--_child", job_path], env=env, cwd=ROOT,
                       stdout=sys.stderr, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return dict(res, error=f"timed out after {timeout:.0f} s")
    if not os.path.exists(out_path):
        return dict(res, error="the method's process died without a result")
    with open(out_path, encoding="utf-8") as f:
        res.update(json.load(f))
    res["process_wall_s"] = time.perf_counter() - t
    # CPU time the rest of the machine used meanwhile, in cores: above LOAD_LIMIT the timings are
    # contended (the child's own CPU includes its waited-for DataLoader workers).
    own_cpu = children_cpu_s() - own0
    res["process_cpu_cores"] = own_cpu / res["process_wall_s"]
    res["other_load_cores"] = max(0.0, (cpu_busy_s() - busy0) - own_cpu) / res["process_wall_s"]
    state = "skipped" if "skipped" in res else "FAILED" if "error" in res else "done"
    log(f"  {name}: {state} in {res['process_wall_s']:.0f} s (other load {res['other_load_cores']:.2f} cores)")
    return res


def run_quietest(run_once: Callable[[], dict], retries: int, done_key: str, name: str) -> dict:
    """Run a method up to 1 + retries times, again only while other processes disturbed it (more
    than LOAD_LIMIT cores: a shared machine); returns the quietest run, with "attempts".

    Shared by features.py and train_throughput.py. done_key: the key a finished timing has.
    """
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


def report_notes(results: list[dict], a: argparse.Namespace, parity_idx: list[int]) -> list[str]:
    """The notes under the table that depend on the results so far (summarise() has run)."""
    notes = []
    busy = [f"{r['method']} {r['other_load_cores']:.2f}" for r in results
            if r.get("other_load_cores", 0) > LOAD_LIMIT]
    if busy:
        notes.append("OTHER PROCESSES used CPU during: " + ", ".join(busy) + " cores on average: those timings are low")
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
            notes.append(f"{r['method']}: {r['repeats']} timed pass(es) instead of {a.repeats} "
                         f"(--budget {a.budget:g} s)")
    notes += [
        "Every method processes the same clips; clips/s counts each clip once per pass.",
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


def run_in_subprocess(name: str, job: dict, a: argparse.Namespace) -> dict:
    timeout = a.method_timeout if a.method_timeout else max(600.0, 10 * a.budget)
    return run_method_process(__file__, name, job, cache=a.cache, prefix="", wait_idle_s=a.wait_idle,
                              timeout=timeout, single_thread_blas=name == "librosa-dataloader")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", help="folder of class folders of audio (default: synthetic clips in bench/.cache)")
    p.add_argument("--clips", type=int, default=200, help="clips to use (default 200)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per method (default 3)")
    p.add_argument("--batch", type=int, default=32, help="batch size for torchaudio and DALI (default 32)")
    p.add_argument("--parity-clips", type=int, default=0,
                   help="clips compared with librosa, spread over the set (default 0: all; ~50 clips/s)")
    p.add_argument("--budget", type=float, default=90.0,
                   help="seconds of timed passes per method at most; fewer repeats if the warm-up says so")
    p.add_argument("--wait-idle", type=float, default=60.0,
                   help="before each method, wait up to this many seconds for other processes to go quiet")
    p.add_argument("--retries", type=int, default=1,
                   help="reruns of a method whose run other processes disturbed (default 1)")
    p.add_argument("--methods", help="comma-separated subset of: " + ", ".join(METHODS) + " (run in that order)")
    p.add_argument("--method-timeout", type=float, default=0.0,
                   help="seconds per method process at most, warm-up included (default: max(600, 10 x --budget))")
    p.add_argument("--cache", default=os.path.join(BENCH, ".cache"), help="generated data and shards")
    p.add_argument("--out", default=os.path.join(BENCH, "results"), help="where the JSON and PNG go")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.clips < 1 or a.repeats < 1 or a.batch < 1:
        p.error("--clips, --repeats and --batch must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a._child:
        return child_main(a._child)
    t_start = time.perf_counter()
    from pipeline.spec import FeatureSpec
    spec = FeatureSpec()
    os.makedirs(a.cache, exist_ok=True)
    notes: list[str] = []

    src = os.path.abspath(a.src) if a.src else synth_source(a.cache, a.clips)
    chosen = select_clips(src, a.clips)
    if not chosen:
        print(f"features.py: error: no audio files in class folders under {src}", file=sys.stderr)
        return 2
    if len(chosen) < a.clips:
        notes.append(f"--clips {a.clips} asked, {len(chosen)} available in {src}")
    shard_dir, manifest, shard_error = None, None, None
    try:
        shard_dir, manifest = build_shards(src, chosen, a.cache, spec)
    except Exception as e:  # noqa: BLE001 - e.g. no DALI (wds2idx) or webdataset: the file methods still run
        shard_error = f"{type(e).__name__}: {e}"
        log(f"make_shards failed, DALI methods will be skipped: {shard_error}")
    items, more = clip_table(chosen, manifest)
    notes += more
    total_seconds = sum(it["seconds"] for it in items)
    log(f"{len(items)} clips, {total_seconds / 60:.1f} min of audio, from {src}")

    shard_files = [os.path.join(shard_dir, f) for f in os.listdir(shard_dir)] if shard_dir else []
    t = time.perf_counter()
    mb = warm_page_cache([it["path"] for it in items] + [f for f in shard_files if os.path.isfile(f)])
    log(f"page cache warmed: {mb:.0f} MB read in {time.perf_counter() - t:.1f} s")

    k = len(items) if a.parity_clips <= 0 else min(a.parity_clips, len(items))
    parity_idx = sorted({round(j * (len(items) - 1) / max(k - 1, 1)) for j in range(k)})
    parity_root = os.path.join(a.cache, "parity")
    ref_dir = os.path.join(parity_root, "librosa-reference")
    shutil.rmtree(parity_root, ignore_errors=True)
    os.makedirs(ref_dir)
    try:
        import numpy as np
        t = time.perf_counter()
        for i in parity_idx:
            np.save(os.path.join(ref_dir, f"{i}.npy"), librosa_db(items[i]["path"], spec))
        log(f"librosa reference for {len(parity_idx)} parity clips in {time.perf_counter() - t:.0f} s")
    except ImportError as e:
        ref_dir = None
        notes.append(f"librosa not installed ({e}): no parity reference and no ratio to librosa")

    host = host_info()
    wanted = [m.strip() for m in a.methods.split(",")] if a.methods else CPU_METHODS + GPU_METHODS
    unknown = [m for m in wanted if m not in METHODS]
    if unknown:
        print(f"features.py: error: unknown methods {unknown}; choose from {list(METHODS)}", file=sys.stderr)
        return 2
    date = datetime.date.today().strftime("%Y%m%d")
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"features-{host['kind']}-{date}")
    from training.report import write_json  # atomic; imported here to keep the top level light

    def report(results: list[dict], complete: bool) -> dict:
        """The JSON as it stands; written after every method, so a run cut short keeps what finished."""
        summarise(results, total_seconds, len(items))
        r = {
            "benchmark": "features", "date": date, "host": host, "complete": complete,
            "methods_wanted": wanted,
            "data": {"src": src, "synthetic": a.src is None, "clips": len(items), "total_seconds": total_seconds,
                     "shard_dir": shard_dir, "parity_clips": len(parity_idx)},
            "settings": {"repeats": a.repeats, "batch": a.batch, "budget_s": a.budget,
                         "method_timeout_s": a.method_timeout or None, "spec": spec.to_dict()},
            "methods": results, "notes": notes + report_notes(results, a, parity_idx),
            "total_wall_s": time.perf_counter() - t_start,
        }
        write_json(stem + ".json", r)
        return r

    results: list[dict] = []
    for name in wanted:
        if name in GPU_METHODS and not host["gpu"]:
            results.append({"method": name, "skipped": "no CUDA device (torch.cuda.is_available() is False)"})
            report(results, complete=False)
            continue
        job = {"method": name, "items": items, "shard_dir": shard_dir, "shard_error": shard_error,
               "batch": a.batch, "repeats": a.repeats, "budget_s": a.budget, "spec": spec.to_dict(),
               "parity_idx": parity_idx, "parity_dir": os.path.join(parity_root, name)}

        def run_once(name: str = name, job: dict = job) -> dict:
            shutil.rmtree(job["parity_dir"], ignore_errors=True)  # parity output of this attempt only
            os.makedirs(job["parity_dir"])
            return run_in_subprocess(name, job, a)
        best = run_quietest(run_once, a.retries, "times_s", name)
        if ref_dir and "times_s" in best:
            best.update(compare_parity(ref_dir, job["parity_dir"], items, parity_idx))
        shutil.rmtree(job["parity_dir"], ignore_errors=True)
        results.append(best)
        report(results, complete=False)

    shutil.rmtree(parity_root, ignore_errors=True)  # ~0.7 MB per clip; rebuilt every run anyway
    rep = report(results, complete=True)
    notes = rep["notes"]
    bar_chart(rep, stem + ".png")

    print(f"## Log-mel features: {len(items)} clips ({total_seconds / 60:.1f} min of audio), "
          f"host {host['kind']} ({host['cpu_model'] or '?'}{', ' + host['gpu'] if host['gpu'] else ''}), {date}\n")
    print(markdown_table(results))
    print()
    for n in notes:
        print(f"- {n}")
    print(f"\nJSON: {os.path.relpath(stem + '.json', ROOT)}  PNG: {os.path.relpath(stem + '.png', ROOT)}  "
          f"(total {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

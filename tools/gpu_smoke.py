"""A 20-second smoke test of the GPU machine: what the long checks rely on, each part timed.

    python3 -m tools.gpu_smoke [--out smoke.json] [--allow-cpu] [--parts torch,loader]   # from the repo root

Parts (each recorded as ok / FAILED / skipped with its seconds; the JSON is rewritten after each):
  versions   python, torch (+ CUDA, cuDNN), torchaudio, numpy, DALI if importable, cores, memory
  driver     nvidia-smi: GPU name, driver, memory
  image      the image's packages that the brought wheels rely on (numba, scipy, ...), by version,
             and `import numba` (librosa's baseline needs it with the image's numpy)
  torch      a bf16 matrix product on the GPU; LogMel (features.torch_logmel) on cuda vs cpu;
             one AMP training step of the baseline model (training.step.train_step, train.py's)
  dali-gpu   one DALI pipeline with fn.spectrogram + fn.mel_filter_bank on the GPU vs the same
             on the CPU (needs nvidia.dali: skipped until the pieces are unpacked)
  loader     tiny shards (preprocess/synth.py + preprocess/make_shards.py, 8 clips of 4 s, into
             --tmp, /tmp/gpu_smoke) and one batch of loading.loader.DaliLoader on cuda:0, crops 4

Without CUDA the GPU parts are skipped; --allow-cpu runs them on the CPU instead, to rehearse
the script on a machine without a GPU. Exit status 0 when nothing FAILED.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from importlib import metadata

# On the image (device KINDS.md); the packed wheels need them: tools/gpu_wheels.py ON_IMAGE.
IMAGE_PACKAGES = ["numpy", "scipy", "numba", "llvmlite", "scikit-learn", "joblib", "msgpack", "lazy-loader",
                  "pyyaml", "six", "packaging", "requests", "typing-extensions", "threadpoolctl", "tqdm",
                  "matplotlib", "pytest", "pytest-timeout", "fsspec", "tensorboard"]
TMP = "/tmp/gpu_smoke"  # --tmp


class Skip(Exception):
    pass


class Smoke:
    def __init__(self, out: str | None, allow_cpu: bool):
        self.out, self.allow_cpu = out, allow_cpu
        self.report: dict = {"t0": time.strftime("%Y-%m-%d %H:%M:%S"), "parts": {}}
        self.t0 = time.perf_counter()

    def part(self, name: str, fn) -> None:
        t = time.perf_counter()
        try:
            detail = fn()
            rec = {"state": "ok", **(detail or {})}
        except Skip as e:
            rec = {"state": "skipped", "why": str(e)}
        except Exception as e:  # noqa: BLE001 - recorded; the other parts still run
            rec = {"state": "FAILED", "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
        rec["seconds"] = round(time.perf_counter() - t, 2)
        self.report["parts"][name] = rec
        shown = {k: v for k, v in rec.items() if k not in ("trace", "state", "seconds")}
        print(f"[smoke] {name:9s} {rec['state']:7s} {rec['seconds']:6.2f} s  {json.dumps(shown, default=str)}",
              flush=True)
        if rec["state"] == "FAILED":
            print(rec["trace"], file=sys.stderr, flush=True)
        self.write()

    def write(self) -> None:
        self.report["seconds"] = round(time.perf_counter() - self.t0, 2)
        if self.out:
            os.makedirs(os.path.dirname(os.path.abspath(self.out)), exist_ok=True)
            tmp = self.out + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.report, f, indent=1, default=str)
            os.replace(tmp, self.out)


def device():
    import torch
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    return None


def need_device(allow_cpu: bool):
    import torch
    dev = device()
    if dev is None:
        if not allow_cpu:
            raise Skip("no CUDA device (torch.cuda.is_available() is False)")
        return torch.device("cpu")
    return dev


def versions() -> dict:
    import numpy
    import torch
    v = {"python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
         "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "numpy": numpy.__version__,
         "cores": os.cpu_count()}
    try:
        import torchaudio
        v["torchaudio"] = torchaudio.__version__
    except Exception as e:  # noqa: BLE001
        v["torchaudio"] = f"import failed: {e}"
    try:
        import nvidia.dali
        v["dali"] = nvidia.dali.__version__
        v["dali_from"] = os.path.dirname(nvidia.dali.__file__)
    except ImportError:
        v["dali"] = None
    try:
        with open("/proc/meminfo") as f:
            v["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    v["disk_free_gib_tmp"] = round(shutil.disk_usage("/tmp").free / 2**30, 1)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        v.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                 gpu_mem_gib=round(p.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())
    return v


def driver() -> dict:
    smi = shutil.which("nvidia-smi")
    if not smi:
        if device() is None:
            raise Skip("no nvidia-smi and no CUDA device")
        raise RuntimeError("CUDA works but there is no nvidia-smi on PATH")
    q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,memory.used,temperature.gpu",
                        "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    if q.returncode:
        raise RuntimeError(f"nvidia-smi exit {q.returncode}: {q.stderr.strip()[:300]}")
    head = subprocess.run([smi], capture_output=True, text=True, timeout=20).stdout
    cuda = next((ln.split("CUDA Version:")[1].split("|")[0].strip() for ln in head.splitlines()
                 if "CUDA Version:" in ln), None)
    return {"gpus": [ln.strip() for ln in q.stdout.strip().splitlines()], "driver_cuda": cuda}


def image_packages() -> dict:
    have, missing = {}, []
    for name in IMAGE_PACKAGES:
        try:
            have[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise RuntimeError(f"not on this image: {missing} (have {have}); add their wheels to KEEP in "
                           "tools/gpu_wheels.py")
    # librosa (the baseline the features stage measures against) needs numba to work with the
    # image's numpy: known in call 1, not when the long stage reaches it
    import numba  # noqa: F401 - raises if this numba cannot run with this numpy
    return {"versions": have, "numba_imports": True}


def torch_part(allow_cpu: bool) -> dict:
    import torch

    from model import build_model
    from features.torch_logmel import LogMel
    from core.spec import FeatureSpec
    from training.amp import Amp
    from training.step import train_step
    dev = need_device(allow_cpu)
    res: dict = {"device": str(dev)}
    n = 4096 if dev.type == "cuda" else 512
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    (a @ a).float().sum().item()  # warm-up (cuBLAS handle)
    t = time.perf_counter()
    for _ in range(10):
        c = a @ a
    c.float().sum().item()
    res["bf16_matmul_tflops"] = round(10 * 2 * n**3 / (time.perf_counter() - t) / 1e12, 1)

    spec = FeatureSpec()
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(4, spec.sample_rate * 3, generator=g)
    ref = LogMel(spec)(x)
    got = LogMel(spec).to(dev)(x.to(dev)).float().cpu()
    res["logmel_max_abs_db_vs_cpu"] = round(float((spec.denormalise(got) - spec.denormalise(ref)).abs().max()), 5)
    if res["logmel_max_abs_db_vs_cpu"] > 0.05:
        raise RuntimeError(f"LogMel on {dev} differs from CPU by {res['logmel_max_abs_db_vs_cpu']} dB")

    torch.manual_seed(0)
    model = build_model("baseline", 10).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    amp = Amp.create(dev, True)
    xb = torch.randn(8, 1, spec.n_mels, spec.clip_frames, device=dev)
    yb = torch.randint(0, 10, (8,), device=dev)
    loss = train_step(model, xb, yb, torch.ones(8, device=dev), opt, amp, n_classes=10, label_smoothing=0.1).loss
    res.update(amp=amp.name, loss=round(float(loss.detach()), 4))
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss}")
    return res


def dali_gpu(allow_cpu: bool) -> dict:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:
        raise Skip(f"nvidia.dali not importable yet ({e}): it arrives with the last piece") from None
    import numpy as np
    from nvidia.dali import fn, pipeline_def, types

    from features.dali_graph import mel_db, preload_cufft
    from core.spec import FeatureSpec
    dev = need_device(allow_cpu)
    cufft_libs = preload_cufft() if dev.type == "cuda" else []
    spec = FeatureSpec()
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(spec.sample_rate * 3)).astype(np.float32) for _ in range(4)]

    def build(on_gpu: bool):
        @pipeline_def(batch_size=4, num_threads=2, device_id=0 if on_gpu else None)
        def p():
            a = fn.external_source(source=lambda: clips, batch=True, dtype=types.FLOAT)
            if on_gpu:
                a = a.gpu()
            return mel_db(a, spec, spec.db_floor)  # the training graph's spectrogram, mel bank and dB
        pipe = p()
        pipe.build()
        (out,) = pipe.run()
        return [np.array(out.as_cpu().at(i) if on_gpu else out.at(i)) for i in range(4)]

    cpu = build(False)
    res = {"dali": nvidia.dali.__version__, "shape": list(cpu[0].shape)}
    if dev.type != "cuda":
        res.update(note="no GPU: CPU pipeline only (stand-in)", libs=loaded_libs())
        return res
    gpu = build(True)
    res["libs"] = loaded_libs()
    res["cufft_preloaded"] = cufft_libs
    try:
        from nvidia.dali.backend import GetCufftVersion
        res["cufft_version"] = GetCufftVersion()
    except Exception as e:  # noqa: BLE001 - recorded, not fatal
        res["cufft_version"] = f"unavailable: {e}"
    res["gpu_vs_cpu_max_abs_db"] = round(max(float(np.abs(g - c).max()) for g, c in zip(gpu, cpu)), 5)
    if res["gpu_vs_cpu_max_abs_db"] > 0.05:
        raise RuntimeError(f"GPU spectrogram differs from CPU by {res['gpu_vs_cpu_max_abs_db']} dB")
    return res


def loaded_libs() -> list[str]:
    """NVIDIA/CUDA libraries mapped into this process (shows whether an image codec was ever loaded)."""
    import re
    names = set()
    with open("/proc/self/maps") as f:
        for ln in f:
            base = os.path.basename(ln.split()[-1])
            if re.match(r"lib(nv|cu|dali)", base):
                names.add(base)
    return sorted(names)


def loader(allow_cpu: bool, tmp: str = TMP) -> dict:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:
        raise Skip(f"nvidia.dali not importable yet ({e})") from None
    import torch

    from loading.loader import DaliLoader
    from core.spec import FeatureSpec
    from preprocess.make_shards import make_shards
    from preprocess.synth import generate
    dev = need_device(allow_cpu)
    src, shards = os.path.join(tmp, "src"), os.path.join(tmp, "shards")
    t = time.perf_counter()
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        shutil.rmtree(tmp, ignore_errors=True)
        generate(src, per_class=2, seconds=4.0, genres=["classical", "disco", "metal", "reggae"], progress=False)
        make_shards(src, shards, val=0, test=0, seed=0, workers=2, progress=False)
    res = {"shards_s": round(time.perf_counter() - t, 2), "device": str(dev)}
    spec = FeatureSpec()
    t = time.perf_counter()
    ld = DaliLoader(shards, "train", spec, 4, train=True, device=dev, num_threads=2, crops=4)
    b = next(iter(ld))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    res.update(first_batch_s=round(time.perf_counter() - t, 2), x=list(b.x.shape), x_device=str(b.x.device),
               y_device=str(b.y.device))
    if b.x.device.type != dev.type or tuple(b.x.shape) != (16, 1, spec.n_mels, spec.clip_frames):
        raise RuntimeError(f"batch {tuple(b.x.shape)} on {b.x.device}, expected (16, 1, {spec.n_mels}, "
                           f"{spec.clip_frames}) on {dev}")
    if not torch.isfinite(b.x).all():
        raise RuntimeError("non-finite features")
    return res


# ============================================================== summary of a gpu_check.sh run

def _unmeasured(m: dict, label: str) -> str:
    """A result row without figures: why (skipped, or the error)."""
    return f"- {label}: {'skipped' if 'skipped' in m else 'FAILED'}: {m.get('skipped') or m.get('error')}"


def summary(res: str) -> str:
    """Markdown: gpu_check.sh's stage table and the key numbers of every result found in RES so far."""
    import glob
    import re
    out = [f"## gpu_check: {platform.node()}, {time.strftime('%Y-%m-%d %H:%M')}", ""]
    stages = os.path.join(res, "stages.tsv")
    if os.path.exists(stages):
        out += ["| stage | result | seconds | limit s |", "|---|---|---|---|"]
        for ln in open(stages, encoding="utf-8").read().splitlines():
            f = ln.split("\t")
            if len(f) >= 4:
                out.append(f"| {f[0]} | {f[1]} | {f[2]} | {f[3]} |")
        out.append("")
    for name in ("smoke-call1.json", "smoke.json"):
        path = os.path.join(res, name)
        if not os.path.exists(path):
            continue
        r = json.load(open(path, encoding="utf-8"))
        out.append(f"**{name}** ({r.get('seconds', '?')} s):")
        for k, v in r.get("parts", {}).items():
            keep = {x: y for x, y in v.items() if x not in ("trace", "state", "seconds", "versions", "executable",
                                                              "dali_from")}
            out.append(f"- {k}: {v['state']} ({v.get('seconds')} s) {json.dumps(keep, default=str)[:400]}")
        out.append("")
    def incomplete(r: dict) -> str:
        return "" if r.get("complete", True) else ", INCOMPLETE"

    def features_head(r: dict) -> str:
        d = r["data"]
        return (f"**features** ({d['clips']} clips of {d['total_seconds'] / max(d['clips'], 1):.0f} s{incomplete(r)}): "
                "clips/s median, x librosa-1proc, max abs dB vs librosa, peak GPU MB")

    def features_row(m: dict) -> str:
        return (f"- {m['method']}: {m['clips_per_s']['median']:.1f} clips/s"
                + (f", x{m['ratio_to_librosa']:.2f}" if m.get("ratio_to_librosa") else "")
                + (f", {m['max_abs_db']:.4f} dB" if m.get("max_abs_db") is not None else "")
                + (f", {m['peak_gpu_mb']:.0f} MB GPU" if m.get("peak_gpu_mb") is not None else ""))

    def train_head(r: dict) -> str:
        st = r["settings"]
        return f"**training** {st['model']}, batch {st['batch']} rows, {st['precision']}, {st['device']}{incomplete(r)}:"

    def train_row(m: dict) -> str:
        return (f"- {m['label']}: {m['samples_per_s']['median']:.0f} samples/s, data wait "
                f"{100 * m['data_wait']['median']:.1f} %, step {m['step_ms']['median']:.1f} ms")

    def scaling_head(r: dict) -> str:
        st = r["settings"]
        return f"**scaling** {st['model']}, {st['device']}, ranks {st['ranks']}{incomplete(r)}:"

    def scaling_row(m: dict) -> str:
        return (f"- {m['label']}: {m['samples_per_s']['median']:.0f} samples/s, speed-up "
                f"{m.get('speedup', float('nan')):.2f}, data wait {100 * m['data_wait']['median']:.1f} %, "
                f"peak {m['memory']} {max(m['peak_mem_mb']):.0f} MB per rank")

    # result file prefix, heading, the list of rows, the figure a measured row has, its line
    for prefix, head, rows, figure, row in (("features", features_head, "methods", "clips_per_s", features_row),
                                            ("train", train_head, "methods", "samples_per_s", train_row),
                                            ("scaling", scaling_head, "points", "samples_per_s", scaling_row)):
        for path in sorted(glob.glob(os.path.join(res, f"{prefix}-*.json"))):
            r = json.load(open(path, encoding="utf-8"))
            out += [head(r), ""]
            for m in r[rows]:
                out.append(row(m) if figure in m else _unmeasured(m, m.get("label", m["method"])))
            out.append("")
    log = os.path.join(res, "pytest-gpu.log")
    if os.path.exists(log):
        lines = [ln for ln in open(log, encoding="utf-8", errors="replace").read().splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if re.search(r"\b(passed|failed|skipped|error|no tests ran)", ln)),
                    "?")
        parity = next((ln for ln in lines if "DALI cuda vs cpu" in ln), None)
        out += [f"**pytest -m gpu**: {last.strip('= ')}" + (f"; {parity.strip()}" if parity else ""), ""]
    log = os.path.join(res, "train-py.log")
    if os.path.exists(log):
        lines = [ln.rstrip() for ln in open(log, encoding="utf-8", errors="replace").read().splitlines() if ln.strip()]
        out += ["**train.py --amp --epochs 1** (last lines):", "", "```"] + lines[-6:] + ["```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="JSON report, rewritten after each part")
    p.add_argument("--allow-cpu", action="store_true", help="without CUDA, run the GPU parts on the CPU")
    p.add_argument("--summary", metavar="RES", help="print the markdown summary of a gpu_check.sh results folder")
    p.add_argument("--tmp", default=TMP, help=f"the loader part's shards (default {TMP})")
    p.add_argument("--parts", help="comma-separated subset of the parts (default: all, in order)")
    a = p.parse_args(argv)
    if a.summary:
        print(summary(a.summary))
        return 0
    parts = {"versions": versions, "driver": driver, "image": image_packages,
             "torch": lambda: torch_part(a.allow_cpu), "dali-gpu": lambda: dali_gpu(a.allow_cpu),
             "loader": lambda: loader(a.allow_cpu, a.tmp)}
    wanted = [x.strip() for x in a.parts.split(",") if x.strip()] if a.parts else list(parts)
    if set(wanted) - set(parts):
        p.error(f"--parts: unknown {sorted(set(wanted) - set(parts))}; choose from {', '.join(parts)}")
    s = Smoke(a.out, a.allow_cpu)
    for name in wanted:
        s.part(name, parts[name])
    failed = [k for k, v in s.report["parts"].items() if v["state"] == "FAILED"]
    s.report["failed"] = failed
    s.write()
    print(f"[smoke] {'FAILED: ' + ', '.join(failed) if failed else 'ok'} in {s.report['seconds']:.1f} s", flush=True)
    sys.stdout.flush()
    os._exit(1 if failed else 0)  # DALI's threads can make interpreter exit slow: the report is written


if __name__ == "__main__":
    sys.exit(main())

"""The packages the GPU machine lacks, packed for an offline machine that takes 64 MiB per call.

    python3 -m tools.gpu_wheels pack WHEEL_DIR [--whl .whl]    # here: wheels -> .whl/p01 .. .whl/pNN
    python3 -m tools.gpu_wheels check [--whl .whl] [--need N]  # there: which pieces are here, sha256
    python3 -m tools.gpu_wheels unpack [--whl .whl]           # there: pieces -> .whl/site (PYTHONPATH)

(from the repository root; standard library only, apart from `packaging` for pack)

`pack` takes the wheels that `tools/gpu_check.sh fetch` downloaded, keeps those the audio path
needs and the GPU image lacks (KEEP), checks that every dependency of a kept wheel is kept, on the
image (ON_IMAGE) or not needed (LEFT_OUT, with the reason), and writes the kept wheels' contents as
ONE tar (the files as they would lie in site-packages, .dist-info included) compressed with
single-threaded xz, x86 BCJ filter then LZMA2 -9e, cut into the fewest equal pieces of at most
60 MiB: .whl/pNN/site.tar.xz.NN, each folder with the same PARTS (JSON: sizes and sha256 of the
whole and of every piece, the wheels inside). A wheel's deflate is about 2.4:1 on DALI's libraries,
this xz about 3.4:1 (126.0 MiB for 424 MiB of tar; bench/NOTES.md): 199 MB of DALI wheel would need
four 64 MiB calls, the xz tar of everything needs three.

`unpack` needs only the standard library (lzma, tarfile): it joins the pieces as one stream,
checks the sha256 of each piece, and extracts straight into .whl/site, which gpu_check.sh puts on
PYTHONPATH (no pip: a wheel is a zip laid into site-packages; this is that, done ahead).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile

PIECE_MAX = 60 * 2**20   # one call carries 64 MiB with the working tree (~0.6 MB): leave room
PIECE_NAME = "site.tar.xz"
TARGET_PY = (3, 12)      # the GPU image's python3 (3.12.3)

# Needed there, missing from the 'cuda' image (device KINDS.md, "Python packages already there").
KEEP = {
    # DALI and what `import nvidia.dali` + nvidia.dali.plugin.pytorch import (checked: nothing else)
    "nvidia-dali-cuda130": "DALI 2.4.0 (decoders.audio, spectrogram, mel_filter_bank, readers.webdataset)",
    "optree": "imported by nvidia.dali.ops",
    "gast": "imported by DALI's autograph (pipeline_def)",
    "astunparse": "imported by DALI's autograph",
    # make_shards, features.audio, tests
    "webdataset": "make_shards' ShardWriter",
    "braceexpand": "webdataset",
    "soundfile": "decoding in make_shards, features.audio, synth",
    "cffi": "soundfile",
    "pycparser": "cffi",
    # benchmarks only (features.py librosa-1proc, parity reference)
    "librosa": "bench/features.py baseline",
    "audioread": "librosa",
    "decorator": "librosa",
    "pooch": "librosa",
    "platformdirs": "pooch",
    "soxr": "librosa",
}
# Required by a kept wheel's metadata, never loaded by the audio path: left out (~64 MB of wheels).
# `pack --with-image-codecs` (fetch with GPU_CHECK_IMAGE_CODECS=1) keeps the five image-codec wheels
# anyway: 160.8 MiB of xz in all, still three pieces (of 53.6 MiB), should DALI's GPU side want one.
IMAGE_CODECS = ["nvidia-nvimgcodec-cu13", "nvidia-libnvcomp-cu13", "nvidia-nvjpeg", "nvidia-nvjpeg2k-cu13",
                "nvidia-nvtiff-cu13"]
LEFT_OUT = {
    "nvidia-nvimgcodec-cu13": "image codecs: DALI dlopens libnvimgcodec only in its image decoders",
    "nvidia-libnvcomp-cu13": "DALI dlopens libnvcomp only for fn.experimental.inflate",
    "nvidia-nvjpeg": "image decoding (nvimgcodec[all])",
    "nvidia-nvjpeg2k-cu13": "image decoding (nvimgcodec[all])",
    "nvidia-nvtiff-cu13": "image decoding (nvimgcodec[all])",
    "nvtx": "imported only by nvidia.dali.experimental.dynamic",
    "makefun": "imported only by nvidia.dali.experimental.dynamic",
    "libcst": "imported only by nvidia.dali.experimental.dynamic",
}
# On the image already (KINDS.md list of 2026-11-17); gpu_smoke.py checks them there.
ON_IMAGE = {"numpy", "scipy", "numba", "llvmlite", "scikit-learn", "joblib", "msgpack", "lazy-loader", "pyyaml",
            "six", "packaging", "requests", "urllib3", "idna", "certifi", "charset-normalizer",
            "typing-extensions", "threadpoolctl", "cloudpickle", "narwhals", "wheel",
            # also there, and in requirements.txt: never brought, whatever a kept wheel asks for
            "tqdm", "matplotlib", "fsspec", "tensorboard"}
# Files of kept wheels that Python 3.12 never opens: DALI's extension modules for other Pythons and
# its C++ headers (for building DALI plugins). About 60 MB unpacked, 4.4 MB of xz.
OTHER_ABI = re.compile(r"\.cpython-3(?!12-)\d+t?-x86_64-linux-gnu\.so$")
SKIP_PREFIX = ("nvidia/dali/include/",)
# The folder goes FIRST on PYTHONPATH, and `nvidia` is shared with the image's nvidia-* packages. With
# no nvidia/__init__.py here, an nvidia/__init__.py in the image's site-packages would make `nvidia` a
# regular package there and hide nvidia.dali; so the pack brings its own, which extends nvidia's path
# over every sys.path entry (pkgutil), and drops the wheels' own (the codec wheels ship two that differ).
NVIDIA_INIT = ("# Written by tools/gpu_wheels.py: nvidia.* from this folder and from every other sys.path entry.\n"
               "__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n").encode()


def say(msg: str) -> None:
    print(f"[gpu_wheels] {msg}", file=sys.stderr, flush=True)


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 22):
            h.update(b)
    return h.hexdigest()


# ============================================================== pack (here)

def wheel_meta(path: str) -> tuple[str, str, list[str]]:
    with zipfile.ZipFile(path) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    name = next(ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Name:"))
    ver = next(ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Version:"))
    reqs = [ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]
    return canon(name), ver, reqs


def check_closure(wheels: dict[str, tuple[str, str, list[str]]], keep: dict[str, str]) -> list[str]:
    """Every requirement of a kept wheel (for CPython 3.12 on Linux x86_64) is kept, on the image or left out."""
    from packaging.requirements import Requirement
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    bad = []
    for name, (_, ver, reqs) in sorted(wheels.items()):
        if name not in keep:
            continue
        for line in reqs:
            r = Requirement(line)
            if r.marker is not None and not r.marker.evaluate(env):
                continue
            dep = canon(r.name)
            if dep in ON_IMAGE or (dep in LEFT_OUT and dep not in keep):
                continue
            if dep not in keep:
                bad.append(f"{name} {ver} needs {r}: neither kept, on the image nor left out on purpose")
            elif dep not in wheels:
                bad.append(f"{name} {ver} needs {r}: no wheel downloaded")
            elif not r.specifier.contains(wheels[dep][1], prereleases=True):
                bad.append(f"{name} {ver} needs {r}: downloaded {wheels[dep][1]}")
    return bad


def site_path(member: str) -> str | None:
    """Where a wheel member lands in site-packages (None: not installed there, or not wanted)."""
    parts = member.split("/")
    if parts[0].endswith(".data"):
        if len(parts) > 2 and parts[1] in ("purelib", "platlib"):
            member = "/".join(parts[2:])
        else:
            return None  # scripts (DALI's tfrecord2idx), headers, data: not needed
    if member.endswith("/") or OTHER_ABI.search(member) or member.startswith(SKIP_PREFIX) \
            or member == "nvidia/__init__.py":
        return None
    return member


def write_tar(wheel_paths: list[str], fileobj) -> tuple[int, int]:
    """The kept wheels' site-packages files as one tar stream, in a fixed order. Returns (files, bytes)."""
    seen: dict[str, tuple[str, str]] = {}  # site path -> (wheel, member)
    n = size = 0
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for wp in wheel_paths:
            with zipfile.ZipFile(wp) as z:
                for info in sorted(z.infolist(), key=lambda i: i.filename):
                    dest = site_path(info.filename)
                    if dest is None:
                        continue
                    if dest in seen:  # e.g. a shared licence folder: fine if the bytes are the same
                        with zipfile.ZipFile(seen[dest][0]) as z0:
                            if z0.read(seen[dest][1]) != z.read(info):
                                raise SystemExit(f"{dest}: in {seen[dest][0]} and {wp} with different contents")
                        continue
                    seen[dest] = (wp, info.filename)
                    ti = tarfile.TarInfo(dest)
                    ti.size = info.file_size
                    mode = (info.external_attr >> 16) & 0o777
                    ti.mode = mode if mode else 0o644
                    ti.mtime = 1_700_000_000
                    with z.open(info) as src:
                        tar.addfile(ti, src)
                    n += 1
                    size += info.file_size
        if any(d.startswith("nvidia/") for d in seen):
            ti = tarfile.TarInfo("nvidia/__init__.py")
            ti.size, ti.mode, ti.mtime = len(NVIDIA_INIT), 0o644, 1_700_000_000
            tar.addfile(ti, io.BytesIO(NVIDIA_INIT))
            n += 1
            size += len(NVIDIA_INIT)
    return n, size


def pack(a: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    wheels: dict[str, tuple[str, str, list[str]]] = {}
    for f in sorted(os.listdir(a.wheel_dir)):
        if f.endswith(".whl"):
            p = os.path.join(a.wheel_dir, f)
            name, ver, reqs = wheel_meta(p)
            if name in wheels:
                raise SystemExit(f"two versions of {name} in {a.wheel_dir}: {wheels[name][0]} and {p}")
            wheels[name] = (p, ver, reqs)
    keep = dict(KEEP)
    left_out = dict(LEFT_OUT)
    if a.with_image_codecs:
        keep.update({n: "kept on request (--with-image-codecs): " + left_out.pop(n) for n in IMAGE_CODECS})
    missing = sorted(set(keep) - set(wheels))
    if missing:
        raise SystemExit(f"no wheel for {missing} in {a.wheel_dir}")
    bad = check_closure(wheels, keep)
    if bad:
        raise SystemExit("unresolved dependencies:\n  " + "\n  ".join(bad))
    extra = sorted(set(wheels) - set(keep) - set(left_out) - ON_IMAGE)
    if extra:
        say(f"downloaded but neither kept nor known: {extra} (left out; add them to KEEP if needed)")
    kept = sorted(keep, key=lambda n: (n != "nvidia-dali-cuda130", n))
    kept_files = [wheels[n][0] for n in kept]
    signature = {n: {"file": os.path.basename(wheels[n][0]), "sha256": sha256_file(wheels[n][0])} for n in kept}
    signature = {"wheels": signature, "xz": ["x86", a.xz_level, a.extreme, a.xz_dict], "piece_max": PIECE_MAX,
                 "rules": [OTHER_ABI.pattern, list(SKIP_PREFIX), hashlib.sha1(NVIDIA_INIT).hexdigest()]}

    old = sorted(d for d in os.listdir(a.whl) if re.fullmatch(r"p\d\d", d)) if os.path.isdir(a.whl) else []
    if old and not a.force:
        try:
            with open(os.path.join(a.whl, old[0], "PARTS"), encoding="utf-8") as f:
                prev = json.load(f)
            if prev.get("signature") == signature and all(
                    os.path.exists(os.path.join(a.whl, p["dir"], p["file"])) for p in prev["pieces"]):
                say(f"pieces in {a.whl} already hold these wheels: nothing to do (--force repacks)")
                print_pieces(a.whl, prev)
                return 0
        except (OSError, ValueError, KeyError):
            pass

    for n in kept:
        say(f"keep  {n:24s} {wheels[n][1]:12s} {os.path.getsize(wheels[n][0]) / 1e6:7.1f} MB  ({keep[n]})")
    for n in sorted(set(wheels) & set(left_out)):
        say(f"leave {n:24s} {wheels[n][1]:12s} {os.path.getsize(wheels[n][0]) / 1e6:7.1f} MB  ({left_out[n]})")
    image = sorted(set(wheels) & ON_IMAGE)
    say(f"on the image, left out: {', '.join(image)}")

    whole = os.path.join(a.whl, PIECE_NAME + ".tmp")
    os.makedirs(a.whl, exist_ok=True)
    t = time.perf_counter()
    xz = shutil.which("xz")
    proc = None
    try:
        # One thread: xz's threads cut the stream into independent blocks, which costs ratio. The x86
        # BCJ filter turns relative call addresses into absolute ones so that repeated calls match
        # (most of the bytes are DALI's x86-64 libraries). Python's lzma decodes either.
        preset = f"{a.xz_level}e" if a.extreme else str(a.xz_level)
        lzma2 = f"preset={preset}" + (f",dict={a.xz_dict}MiB" if a.xz_dict else "")
        if xz and not a.python_xz:
            with open(whole, "wb") as out:
                cmd = [xz, "--x86", f"--lzma2={lzma2}", "-T1", "-c"]
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out)
                files, raw = write_tar(kept_files, proc.stdin)
                proc.stdin.close()
                if proc.wait():
                    raise SystemExit(f"xz failed with exit {proc.returncode}")
            how = " ".join(["xz"] + cmd[1:-1])
        else:
            filters = [{"id": lzma.FILTER_X86},
                       {"id": lzma.FILTER_LZMA2, "preset": a.xz_level | (lzma.PRESET_EXTREME if a.extreme else 0)}]
            if a.xz_dict:
                filters[1]["dict_size"] = a.xz_dict * 2**20
            with lzma.open(whole, "wb", format=lzma.FORMAT_XZ, filters=filters) as out:
                files, raw = write_tar(kept_files, out)
            how = f"python lzma x86 + lzma2 {lzma2}"
    except BaseException:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        os.remove(whole)
        raise
    size = os.path.getsize(whole)
    say(f"tar of {files} files, {raw / 1e6:.1f} MB -> {size / 2**20:.1f} MiB with {how} in {time.perf_counter() - t:.0f} s")

    for d in old:
        shutil.rmtree(os.path.join(a.whl, d))
    count = max(1, math.ceil(size / PIECE_MAX))
    step = math.ceil(size / count)
    pieces = []
    with open(whole, "rb") as f:
        for i in range(count):
            d = f"p{i + 1:02d}"
            os.makedirs(os.path.join(a.whl, d))
            name = f"{PIECE_NAME}.{i + 1:02d}"
            data = f.read(step)
            with open(os.path.join(a.whl, d, name), "wb") as out:
                out.write(data)
            pieces.append({"dir": d, "file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    parts = {"format": "one xz-compressed tar of site-packages files, cut in pieces; join in order",
             "pieces": pieces, "bytes": size, "sha256": sha256_file(whole), "files": files, "raw_bytes": raw,
             "python": "%d.%d" % TARGET_PY, "kept": {n: wheels[n][1] for n in kept},
             "left_out": {n: left_out[n] for n in sorted(set(wheels) & set(left_out))},
             "on_image": image, "signature": signature}
    for p in pieces:
        with open(os.path.join(a.whl, p["dir"], "PARTS"), "w", encoding="utf-8") as f:
            json.dump(parts, f, indent=1)
    os.remove(whole)
    print_pieces(a.whl, parts)
    say(f"packed in {time.perf_counter() - t0:.0f} s")
    if count > 3:
        say(f"WARNING: {count} pieces: the three-call procedure in bench/NOTES.md needs a fourth call")
    return 0


def print_pieces(whl: str, parts: dict) -> None:
    for p in parts["pieces"]:
        print(f"  {os.path.join(whl, p['dir'], p['file'])}  {p['bytes'] / 2**20:6.2f} MiB  sha256 {p['sha256'][:16]}")
    print(f"  {len(parts['pieces'])} pieces, {parts['bytes'] / 2**20:.1f} MiB in all, "
          f"{parts['files']} files ({parts['raw_bytes'] / 1e6:.0f} MB) unpacked")


# ============================================================== check / unpack (there)

def read_parts(whl: str) -> dict:
    dirs = sorted(d for d in os.listdir(whl) if re.fullmatch(r"p\d\d", d)) if os.path.isdir(whl) else []
    for d in dirs:
        try:
            with open(os.path.join(whl, d, "PARTS"), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            continue
    raise SystemExit(f"no pieces here: no {whl}/pNN/PARTS. Bring them over (bench/NOTES.md, 'GPU checks').")


def check_pieces(whl: str, need: int | None, verify: bool = True) -> tuple[dict, list[str]]:
    """Returns PARTS and the problems with the first `need` pieces (all when None)."""
    parts = read_parts(whl)
    problems = []
    for p in parts["pieces"][:need]:
        path = os.path.join(whl, p["dir"], p["file"])
        other = os.path.join(whl, p["dir"], "PARTS")
        if not os.path.exists(path):
            problems.append(f"{path}: missing (carry [\".whl/{p['dir']}\"] in a call on this warm machine)")
            continue
        try:
            with open(other, encoding="utf-8") as f:
                if json.load(f)["sha256"] != parts["sha256"]:
                    problems.append(f"{path}: a piece of another pack (its PARTS differs)")
                    continue
        except (OSError, ValueError, KeyError):
            problems.append(f"{other}: unreadable")
        if os.path.getsize(path) != p["bytes"]:
            problems.append(f"{path}: {os.path.getsize(path)} bytes, expected {p['bytes']}")
        elif verify and sha256_file(path) != p["sha256"]:
            problems.append(f"{path}: sha256 mismatch (damaged in transfer?)")
    return parts, problems


class Joined(io.RawIOBase):
    """The pieces read back to back as one file."""

    def __init__(self, paths: list[str]):
        self.paths, self.i, self.f = list(paths), 0, None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self.i < len(self.paths):
            if self.f is None:
                self.f = open(self.paths[self.i], "rb")
            n = self.f.readinto(b)
            if n:
                return n
            self.f.close()
            self.f, self.i = None, self.i + 1
        return 0


def unpack(a: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    parts, problems = check_pieces(a.whl, None)
    if problems:
        print("pieces missing or damaged:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 3
    t_check = time.perf_counter() - t0
    site = os.path.abspath(a.site)
    stamp = os.path.join(site, ".unpacked")
    if os.path.exists(stamp) and open(stamp, encoding="utf-8").read().strip() == parts["sha256"]:
        say(f"{site} already holds this pack: nothing to do")
        return 0
    tmp = site + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    t = time.perf_counter()
    paths = [os.path.join(a.whl, p["dir"], p["file"]) for p in parts["pieces"]]
    n = 0
    with lzma.open(io.BufferedReader(Joined(paths), 1 << 20)) as xz, tarfile.open(fileobj=xz, mode="r|") as tar:
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        for m in tar:
            tar.extract(m, tmp, **kw)
            n += m.isfile()
    if n != parts["files"]:
        print(f"unpacked {n} files, PARTS says {parts['files']}", file=sys.stderr)
        return 3
    shutil.rmtree(site, ignore_errors=True)
    os.rename(tmp, site)
    with open(stamp, "w", encoding="utf-8") as f:
        f.write(parts["sha256"] + "\n")
    say(f"{len(paths)} pieces checked in {t_check:.1f} s, {n} files ({parts['raw_bytes'] / 1e6:.0f} MB) "
        f"unpacked into {site} in {time.perf_counter() - t:.1f} s")
    return 0


def check(a: argparse.Namespace) -> int:
    parts, problems = check_pieces(a.whl, a.need)
    have = [p["dir"] for p in parts["pieces"] if os.path.exists(os.path.join(a.whl, p["dir"], p["file"]))]
    want = parts["pieces"][:a.need] if a.need else parts["pieces"]
    print(f"pieces here: {', '.join(have) or 'none'} of {len(parts['pieces'])}; "
          f"checked {', '.join(p['dir'] for p in want)}: {'ok' if not problems else 'PROBLEMS'}")
    for p in problems:
        print("  " + p)
    return 3 if problems else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="here: wheels -> pieces")
    pk.add_argument("wheel_dir")
    pk.add_argument("--xz-level", type=int, default=9)
    pk.add_argument("--no-extreme", dest="extreme", action="store_false", help="xz preset N, not Ne")
    pk.add_argument("--xz-dict", type=int, help="LZMA2 dictionary in MiB (default: the preset's, 64 at 9); "
                                                "unpacking needs that much memory")
    pk.add_argument("--python-xz", action="store_true", help="python's lzma even where the xz command exists")
    pk.add_argument("--force", action="store_true", help="repack even if the pieces hold these wheels")
    pk.add_argument("--with-image-codecs", action="store_true",
                    help="keep DALI's image-codec wheels too (nvimgcodec, nvcomp, nvjpeg, nvjpeg2k, nvtiff)")
    ck = sub.add_parser("check", help="there: are the pieces here and whole?")
    ck.add_argument("--need", type=int, help="check only the first N pieces")
    up = sub.add_parser("unpack", help="there: pieces -> site folder")
    up.add_argument("--site", default=".whl/site")
    for s in (pk, ck, up):
        s.add_argument("--whl", default=".whl")
    a = p.parse_args(argv)
    return {"pack": pack, "check": check, "unpack": unpack}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())

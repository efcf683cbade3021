#!/usr/bin/env bash
# bench/gpu_check.sh — the GPU checks of ParallelTunes, for a GPU machine that has only torch and
# torchaudio (the 'cuda' image: Python 3.12, torch 2.11.0+cu130, torchaudio 2.11.0) and NO network.
#
# Two halves: `fetch` runs HERE (a machine with PyPI access, repo root), the default runs THERE.
#
# 1. HERE:  bash bench/gpu_check.sh fetch
#    Downloads every wheel the project needs for CPython 3.12 on x86_64 Linux, with its dependencies:
#      python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#          --abi cp312 --abi abi3 --abi none \
#          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#          (... every manylinux_2_N_x86_64 for N = 17..39: pip takes each tag literally) \
#          -d .whl/all  nvidia-dali-cuda130==2.4.0 webdataset==1.0.2 soundfile==0.14.0 librosa==0.11.0
#    (DALI brings nvidia-nvimgcodec-cu13, nvidia-libnvcomp-cu13, nvidia-nvjpeg, nvidia-nvjpeg2k-cu13,
#    nvidia-nvtiff-cu13, nvtx, libcst, optree, ...; webdataset brings braceexpand and pyyaml; librosa
#    brings soxr, audioread, pooch, ...). It checks that every dependency of the wheels it keeps is
#    either kept or on the image, leaves out the big ones the image already has (numpy, scipy,
#    numba, llvmlite, scikit-learn; FULL=1 keeps them), tars the rest and splits the tar into
#    pieces of at most 60 MiB, one folder per piece:
#      tar cf .whl/wheels.tar -C .whl/pack .  &&  split -b 60m -d -a 2 .whl/wheels.tar .whl/wheels.tar.part-
#      -> .whl/p01/wheels.tar.part-00, .whl/p02/wheels.tar.part-01, ... (+ a PARTS file in each folder)
#    .whl/ is git-ignored (/.whl/ in .gitignore). About 260 MB in 5 pieces (2026-11-25).
#
# 2. Bring the pieces over, one per transfer (each transfer carries at most 64 MiB): with the device
#    tool, call run with carry [".whl/p01"] (command: `ls .whl`), then [".whl/p02"], ... while the
#    machine stays warm (it keeps earlier carried folders between calls, not after it goes back).
#    With the last piece, run this script.
#
# 3. THERE: bash bench/gpu_check.sh
#    Joins the pieces (cat .whl/p*/wheels.tar.part-* > .whl/wheels.tar), checks the tar's sha256,
#    unpacks it into .whl/wheels/ and installs from it, offline, into the python3 that holds torch:
#      python3 -m pip install --no-index --find-links .whl/wheels nvidia-dali-cuda130==2.4.0 \
#          webdataset==1.0.2 soundfile==0.14.0 [librosa==0.11.0]
#    (a folder .whl/wheels/ of loose wheels brought another way is used as it is). Then, each under
#    a time limit, so that the whole script ends within about 8 minutes on a 16-core H100 machine:
#      pytest -m gpu tests/test_gpu.py                                 (T_PYTEST, default 120 s)
#      bench/features.py (CPU and GPU methods, 200 clips, 2 passes)   (T_FEATURES, default 150 s)
#      bench/train_throughput.py (dali-cuda, librosa, no loader)       (T_TRAIN, default 100 s)
#    (with the install, T_INSTALL default 90 s, at most 460 s in all; about 4-5 minutes expected)
#    and prints a short result table last. Logs, JSON and PNG go to bench/results/ and, when $OUT is
#    set (the device tool's output folder), are copied there too.
#
# Environment: PYTHON (default python3), T_INSTALL/T_PYTEST/T_FEATURES/T_TRAIN (seconds),
# FEATURES_ARGS / TRAIN_ARGS (replace the default arguments), GPU_CHECK_ALLOW_CPU=1 (run without a
# GPU: only to test this script), FULL=1 (fetch: keep every wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHL=.whl
PINS=(nvidia-dali-cuda130==2.4.0 webdataset==1.0.2 soundfile==0.14.0)
BENCH_PINS=(librosa==0.11.0)
PIECE=60m
# The closure's big wheels that the 'cuda' image already holds (.library/device/KINDS.md, 2026-11-17).
ON_IMAGE="numpy scipy numba llvmlite scikit-learn"

say() { printf '\n[gpu_check] %s\n' "$*" >&2; }
die() { printf '\n[gpu_check] ERROR: %s\n' "$*" >&2; exit 2; }

platforms() {
  local p="--platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64" n
  for n in $(seq 17 39); do p="$p --platform manylinux_2_${n}_x86_64"; done
  echo "$p"
}

# ---------------------------------------------------------------------------------------- fetch (here)
fetch() {
  command -v split >/dev/null && command -v sha256sum >/dev/null || die "fetch needs split and sha256sum"
  "$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip"
  rm -rf "$WHL/all" "$WHL/pack" "$WHL"/p[0-9][0-9] "$WHL/wheels.tar"
  mkdir -p "$WHL/all" "$WHL/pack"
  say "downloading wheels for CPython 3.12 manylinux x86_64 into $WHL/all (needs network)"
  # shellcheck disable=SC2046
  "$PY" -m pip download --disable-pip-version-check --only-binary=:all: --python-version 3.12 \
      --implementation cp --abi cp312 --abi abi3 --abi none $(platforms) -d "$WHL/all" \
      "${PINS[@]}" "${BENCH_PINS[@]}" \
    || die "pip download failed: a package has no wheel for CPython 3.12 manylinux x86_64 (see above)"
  local f name keep=0 skip=0
  for f in "$WHL"/all/*.whl; do
    name=$(basename "$f" | cut -d- -f1 | tr '[:upper:]' '[:lower:]' | tr '_.' '--')
    if [ "${FULL:-0}" != 1 ] && [[ " $ON_IMAGE " == *" $name "* ]]; then
      skip=$((skip + 1)); continue
    fi
    ln "$f" "$WHL/pack/" 2>/dev/null || cp "$f" "$WHL/pack/"
    keep=$((keep + 1))
  done
  say "checking that every dependency of the kept wheels is kept or on the image"
  "$PY" - "$WHL/pack" "$ON_IMAGE" <<'EOF'
import glob, os, re, sys, zipfile
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
have = {}
for w in glob.glob(os.path.join(sys.argv[1], "*.whl")):
    name, ver = os.path.basename(w).split("-")[:2]
    with zipfile.ZipFile(w) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    have[canonicalize_name(name)] = (Version(ver), [Requirement(l.split(":", 1)[1].strip())
                                                    for l in meta.splitlines() if l.startswith("Requires-Dist:")])
image = {canonicalize_name(n) for n in sys.argv[2].split()}
bad = []
for name, (ver, reqs) in sorted(have.items()):
    for r in reqs:
        if r.marker is not None and not r.marker.evaluate(env):
            continue
        dep = canonicalize_name(r.name)
        if dep in image:
            continue
        if dep not in have:
            bad.append(f"{name} needs {r}: no wheel kept")
        elif not r.specifier.contains(have[dep][0], prereleases=True):
            bad.append(f"{name} needs {r}: kept {have[dep][0]}")
if bad:
    sys.exit("unresolved:\n  " + "\n  ".join(bad))
print(f"ok: {len(have)} wheels, every dependency kept or on the image ({', '.join(sorted(image))})")
EOF
  say "pip resolving the install offline for Python 3.12 (dry run; the left-out wheels stand in for the image's)"
  mkdir -p "$WHL/image"
  for f in "$WHL"/all/*.whl; do [ -e "$WHL/pack/$(basename "$f")" ] || cp "$f" "$WHL/image/"; done
  # shellcheck disable=SC2046
  "$PY" -m pip install --disable-pip-version-check --dry-run --ignore-installed --ignore-requires-python \
      --no-index --find-links "$WHL/pack" --find-links "$WHL/image" --only-binary=:all: --python-version 3.12 \
      --implementation cp --abi cp312 --abi abi3 --abi none $(platforms) --target "$WHL/dry-run" \
      "${PINS[@]}" "${BENCH_PINS[@]}" | tail -1 \
    || die "the kept wheels do not resolve offline (above)"
  rm -rf "$WHL/image" "$WHL/dry-run"
  say "kept $keep wheels, left out $skip that the image holds ($ON_IMAGE)"
  ls -l "$WHL/pack" | awk 'NR > 1 {printf "  %8.1f MB  %s\n", $5 / 1e6, $9}' | sort -n
  tar cf "$WHL/wheels.tar" -C "$WHL/pack" .
  local sum size parts i part dir
  sum=$(sha256sum "$WHL/wheels.tar" | cut -d' ' -f1)
  size=$(stat -c %s "$WHL/wheels.tar")
  split -b "$PIECE" -d -a 2 "$WHL/wheels.tar" "$WHL/wheels.tar.part-"
  parts=$(ls "$WHL"/wheels.tar.part-* | wc -l)
  i=0
  for part in "$WHL"/wheels.tar.part-*; do
    i=$((i + 1))
    dir=$(printf '%s/p%02d' "$WHL" "$i")
    mkdir -p "$dir"
    mv "$part" "$dir/"
    printf 'parts=%s\nsha256=%s\nbytes=%s\n' "$parts" "$sum" "$size" > "$dir/PARTS"
  done
  rm -rf "$WHL/wheels.tar" "$WHL/pack"
  say "$(awk -v b="$size" 'BEGIN {printf "%.1f MB", b / 1e6}') of wheels in $parts pieces of at most $PIECE:"
  du -sh "$WHL"/p[0-9][0-9] >&2
  cat >&2 <<EOF

Next: bring each of $WHL/p01 .. $(printf 'p%02d' "$parts") in its own transfer (device tool: carry
[".whl/pNN"], one call each, back to back), then run there:  bash bench/gpu_check.sh
EOF
}

# ---------------------------------------------------------------------------------------- install (there)
join_pieces() {
  local dirs=("$WHL"/p[0-9][0-9]) parts sum d i missing=()
  [ -e "${dirs[0]}" ] || die "no wheels: neither $WHL/wheels/*.whl nor pieces $WHL/p01, $WHL/p02, ... here. Run
  'bash bench/gpu_check.sh fetch' on a machine with network and bring the pieces over (see the top of this script)."
  parts=$(sed -n 's/^parts=//p' "${dirs[0]}/PARTS")
  sum=$(sed -n 's/^sha256=//p' "${dirs[0]}/PARTS")
  for i in $(seq 1 "$parts"); do
    d=$(printf '%s/p%02d' "$WHL" "$i")
    if ! ls "$d"/wheels.tar.part-* >/dev/null 2>&1; then missing+=("$d"); continue; fi
    grep -qx "sha256=$sum" "$d/PARTS" || die "$d is a piece of another fetch (its PARTS differs from ${dirs[0]}'s)"
  done
  [ ${#missing[@]} -eq 0 ] || die "pieces missing: ${missing[*]} (of $parts). Bring them over (the machine keeps
  carried folders only while it stays warm) and run again."
  say "joining $parts pieces"
  cat "$WHL"/p[0-9][0-9]/wheels.tar.part-* > "$WHL/wheels.tar"
  echo "$sum  $WHL/wheels.tar" | sha256sum -c --quiet - || die "$WHL/wheels.tar: sha256 mismatch (a piece is damaged or stale)"
  rm -rf "$WHL/wheels.tmp" && mkdir -p "$WHL/wheels.tmp"
  tar xf "$WHL/wheels.tar" -C "$WHL/wheels.tmp"
  rm -rf "$WHL/wheels" && mv "$WHL/wheels.tmp" "$WHL/wheels" && rm -f "$WHL/wheels.tar"
}

install_deps() {
  if "$PY" -c 'import nvidia.dali, webdataset, soundfile, librosa' 2>/dev/null; then
    say "nvidia.dali, webdataset, soundfile and librosa import already: nothing to install"
    return 0
  fi
  ls "$WHL"/wheels/*.whl >/dev/null 2>&1 || join_pieces
  local pins=("${PINS[@]}")
  ls "$WHL"/wheels/librosa-*.whl >/dev/null 2>&1 && pins+=("${BENCH_PINS[@]}") \
    || say "no librosa wheel: features.py and train_throughput.py will skip their librosa rows"
  say "installing offline from $WHL/wheels into $("$PY" -c 'import sys; print(sys.prefix)'): ${pins[*]}"
  timeout "${T_INSTALL:-90}" "$PY" -m pip install --disable-pip-version-check --no-index --find-links "$WHL/wheels" \
      --no-cache-dir -q "${pins[@]}" \
    || die "pip install failed (above). 'No matching distribution' names a wheel that is not in $WHL/wheels:
  add it on the fetching side (FULL=1 keeps every dependency) and bring the pieces again."
}

# ---------------------------------------------------------------------------------------- checks (there)
STAGES=()
stage() {  # stage NAME SECONDS CMD...: run with a time limit, log, record; never stops the script
  local name=$1 limit=$2 t0 rc=0 log
  shift 2
  log="$LOGDIR/$name.log"
  say "[$name] (limit ${limit} s) $*"
  t0=$(date +%s)
  set +e
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  local took=$(( $(date +%s) - t0 )) state=ok
  if [ "$rc" -eq 5 ] && [ "$name" = pytest-gpu ] && [ "$HAVE_GPU" = 0 ]; then
    state="ok (skipped: no GPU)"  # pytest's exit 5: the module skipped itself, no test ran
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    state="TIMED OUT after ${limit} s"
  elif [ "$rc" -ne 0 ]; then
    state="FAILED (exit $rc)"
  fi
  STAGES+=("$name|$state|$took")
}

main() {
  local t_start
  t_start=$(date +%s)
  command -v "$PY" >/dev/null || die "no $PY (set PYTHON=/path/to/python)"
  "$PY" -c 'import torch, torchaudio' 2>/dev/null || die "$PY cannot import torch and torchaudio"
  HAVE_GPU=1
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    HAVE_GPU=0
    [ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ] || die "torch.cuda.is_available() is False: this script is for a GPU
  machine (GPU_CHECK_ALLOW_CPU=1 runs it anyway, to test the script)"
    say "no GPU: running anyway (GPU_CHECK_ALLOW_CPU=1); the gpu tests and GPU rows will be skipped"
  fi
  "$PY" -c 'import torch; print("torch", torch.__version__, "| cuda", torch.version.cuda, "|",
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU", "|", __import__("os").cpu_count(), "cores")'

  local t0
  t0=$(date +%s)
  install_deps
  "$PY" -c 'import nvidia.dali, webdataset, soundfile; print("dali", nvidia.dali.__version__, "| webdataset ok | soundfile", soundfile.__version__)' \
    || die "the installed packages do not import (above)"
  STAGES+=("install|ok|$(( $(date +%s) - t0 ))")

  LOGDIR="bench/results/gpu_check-$(date +%Y%m%d-%H%M%S)"
  mkdir -p "$LOGDIR"
  local stamp="$LOGDIR/.start"
  touch "$stamp"
  export PYTHONUNBUFFERED=1
  # shellcheck disable=SC2206
  local feat_args=(${FEATURES_ARGS:---clips 200 --repeats 2 --budget 15 --parity-clips 50 --wait-idle 0 --retries 0})
  # shellcheck disable=SC2206
  local train_args=(${TRAIN_ARGS:---clips 200 --warmup 20 --steps 60 --repeats 3 --wait-idle 0 --retries 0 --method-timeout 30})
  stage pytest-gpu "${T_PYTEST:-120}" "$PY" -m pytest -q -m gpu tests/test_gpu.py -rs -p no:cacheprovider
  stage features "${T_FEATURES:-150}" "$PY" bench/features.py "${feat_args[@]}"
  stage train_throughput "${T_TRAIN:-100}" "$PY" bench/train_throughput.py "${train_args[@]}"

  # Results: this run's JSON/PNG files next to the logs, and to $OUT for the device tool.
  find bench/results -maxdepth 1 -newer "$stamp" \( -name 'features-*' -o -name 'train-*' \) -exec cp {} "$LOGDIR/" \;
  if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    find "$LOGDIR" -maxdepth 1 -type f ! -name '.start' -exec cp {} "$OUT/" \;
  fi

  echo
  echo "## gpu_check: ${HOSTNAME:-?}, $(date '+%Y-%m-%d %H:%M'), total $(( $(date +%s) - t_start )) s"
  echo
  echo "| stage | result | seconds |"
  echo "|---|---|---|"
  local s fail=0
  for s in "${STAGES[@]}"; do
    IFS='|' read -r n st took <<<"$s"
    echo "| $n | $st | $took |"
    [[ "$st" == ok* ]] || fail=1
  done
  echo
  "$PY" - "$LOGDIR" <<'EOF' || true
import glob, json, os, re, sys
d = sys.argv[1]
log = os.path.join(d, "pytest-gpu.log")
if os.path.exists(log):
    tail = [l for l in open(log, encoding="utf-8", errors="replace").read().splitlines() if l.strip()]
    summary = next((l for l in reversed(tail) if re.search(r"\b(passed|failed|skipped|error)", l)), "?")
    parity = next((l for l in tail if "DALI cuda vs cpu" in l), None)
    print(f"pytest -m gpu: {summary.strip('= ')}" + (f" | {parity.strip()}" if parity else ""))
for path in sorted(glob.glob(os.path.join(d, "features-*.json"))):
    r = json.load(open(path))
    print(f"\nfeatures ({r['data']['clips']} clips x {r['data']['total_seconds'] / r['data']['clips']:.0f} s), clips/s median:")
    for m in r["methods"]:
        if "clips_per_s" in m:
            extra = f", max ΔdB vs librosa {m['max_abs_db']:.4f}" if m.get("max_abs_db") is not None else ""
            print(f"  {m['method']:<20} {m['clips_per_s']['median']:8.1f}{extra}")
        else:
            print(f"  {m['method']:<20} {'skipped' if 'skipped' in m else 'FAILED'}: {m.get('skipped') or m.get('error')}")
for path in sorted(glob.glob(os.path.join(d, "train-*.json"))):
    r = json.load(open(path))
    s = r["settings"]
    print(f"\ntraining ({s['model']}, batch {s['batch']}, {s['precision']}, {s['device']}):")
    for m in r["methods"]:
        if "samples_per_s" in m:
            print(f"  {m['label']:<40} {m['samples_per_s']['median']:8.1f} samples/s, data wait "
                  f"{100 * m['data_wait']['median']:.1f} %, step {m['step_ms']['median']:.1f} ms")
        else:
            print(f"  {m['label']:<40} {'skipped' if 'skipped' in m else 'FAILED'}: {m.get('skipped') or m.get('error')}")
print(f"\nlogs and results: {d}" + (f" (and {os.environ['OUT']})" if os.environ.get("OUT") else ""))
EOF
  return $fail
}

case "${1:-run}" in
  fetch) fetch ;;
  run) main ;;
  -h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d' ;;
  *) die "unknown command '$1' (fetch: here, with network; no argument: there, on the GPU machine)" ;;
esac

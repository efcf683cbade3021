#!/usr/bin/env bash
# tools/gpu_check.sh — ParallelTunes' GPU checks on an offline GPU machine whose image has Python 3.12,
# torch 2.11.0+cu130 and torchaudio 2.11.0 but no DALI, webdataset, soundfile or librosa, and that
# takes at most 64 MiB per call (working tree + carried folders).
#
#   here:  bash tools/gpu_check.sh fetch    wheels -> .whl/p01, .whl/p02 (one tar, xz with the x86 BCJ
#                                           filter and LZMA2 -9e, cut in pieces of at most 62 MiB; fetch
#                                           prints the device calls for the number of pieces)
#   there: bash tools/gpu_check.sh smoke    call 1, carry .whl/p01: versions, driver, image packages
#                                           (import numba), torch on the GPU (~20 s)
#          bash tools/gpu_check.sh pieces   only with more than two pieces: each middle one, checked (~1 s)
#          bash tools/gpu_check.sh          last call, carry the last piece: unpack, DALI smoke, features,
#                                           training throughput at batch 32 and 128, pytest -m gpu, train.py
#                                           --amp --epochs 1, scaling, resnet (deadline 285 s; timeout_s 300)
#
# bench/NOTES.md ("GPU checks without network") gives the device-tool calls exactly (command, carry,
# timeout_s), what each does and how long each took in the rehearsal. Results (summary.md,
# console.log, results.tgz, smoke JSON) go to .whl/run/results/ and, after EVERY stage, to $OUT.
#
# Environment: PYTHON (python3), GPU_CHECK_ALLOW_CPU=1 (rehearse without a GPU), GPU_CHECK_TOTAL_S
# (deadline of the last call, default 285), GPU_CHECK_CLIPS (200), GPU_CHECK_WORK (.whl/run),
# GPU_CHECK_STEPS / GPU_CHECK_WARMUP / GPU_CHECK_REPEATS (train_throughput; 60 / 10 / 2: a timed
# window holds at least 50 steps), GPU_CHECK_SCALE (1; multiplies every limit, reserve, timeout and the
# deadline: a CPU rehearsal with 3 runs every stage to its end); for fetch: XZ_LEVEL (9), GPU_CHECK_IMAGE_CODECS=1 (also bring
# DALI's image-codec wheels: more pieces, so more calls).
set -uo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
# From the repo root, every Python tool as `"$PY" -m bench.X` / `-m preprocess.X`: there is no
# `pip install -e .` there, and -m puts the current folder (the root) first on sys.path.
cd "$(dirname "$SELF")/.."
PY=${PYTHON:-python3}
WHL=.whl
WORK=${GPU_CHECK_WORK:-$WHL/run}
RES=$WORK/results
SITE=$WHL/site
SCALE=${GPU_CHECK_SCALE:-1}

say() { printf '[gpu_check] %s\n' "$*" >&2; }
die() { printf '[gpu_check] ERROR: %s\n' "$*" >&2; exit 2; }

# ------------------------------------------------------------------------------------ fetch (here)
fetch() {
  set -e
  "$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip"
  local p="--platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64" n
  for n in $(seq 17 39); do p="$p --platform manylinux_2_${n}_x86_64"; done  # pip takes each tag literally
  mkdir -p "$WHL/all"
  say "pip download for CPython 3.12 manylinux x86_64 into $WHL/all (with dependencies, to check them)"
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version 3.12 \
      --implementation cp --abi cp312 --abi abi3 --abi none $p -d "$WHL/all" \
      nvidia-dali-cuda130==2.4.0 webdataset==1.0.2 soundfile==0.14.0 librosa==0.11.0 > "$WHL/download.log" 2>&1 \
    || { grep -v "^WARNING: Location" "$WHL/download.log" >&2; die "pip download failed (above)"; }
  local codecs=()
  [ "${GPU_CHECK_IMAGE_CODECS:-0}" = 1 ] && codecs=(--with-image-codecs)
  "$PY" -m tools.gpu_wheels pack "$WHL/all" --whl "$WHL" --xz-level "${XZ_LEVEL:-9}" "${codecs[@]}"
  local n i
  n=$(ls -d "$WHL"/p[0-9][0-9] | wc -l)
  {
    echo
    echo "Next, with the device tool, back to back (the machine goes back after ~30 s idle):"
    echo '  1. carry [".whl/p01"]  command: bash tools/gpu_check.sh smoke   timeout_s 90'
    for (( i = 2; i < n; i++ )); do
      printf '  %d. carry [".whl/p%02d"]  command: bash tools/gpu_check.sh pieces   timeout_s 60\n' "$i" "$i"
    done
    if [ "$n" -lt 2 ]; then echo '  2. carry []  command: bash tools/gpu_check.sh   timeout_s 300'
    else printf '  %d. carry [".whl/p%02d"]  command: bash tools/gpu_check.sh   timeout_s 300\n' "$n" "$n"; fi
    echo '(bench/NOTES.md, "GPU checks without network".)'
  } >&2
}

# ------------------------------------------------------------------------------------ there
preflight() {
  command -v "$PY" >/dev/null || die "no $PY (set PYTHON=/path/to/python)"
  local rc=0
  "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' || rc=$?
  [ "$rc" = 0 ] || [ "$rc" = 3 ] || die "$PY cannot import torch (above)"
  SMOKE_ARGS=()
  if [ "$rc" = 0 ]; then
    HAVE_GPU=1
  else
    HAVE_GPU=0
    [ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ] || die "torch.cuda.is_available() is False: this is for a GPU machine
  (GPU_CHECK_ALLOW_CPU=1 runs it anyway, on the CPU, to rehearse the script)"
    say "no GPU: rehearsal on the CPU (GPU_CHECK_ALLOW_CPU=1); GPU rows and gpu tests are skipped"
    SMOKE_ARGS=(--allow-cpu)
  fi
  mkdir -p "$RES"
  if [ -f "$SITE/.unpacked" ]; then export PYTHONPATH="$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"; fi
  export PYTHONUNBUFFERED=1 TQDM_DISABLE=1  # no progress bars in the logs
}

publish() {  # results so far -> summary.md, and to $OUT (at most 8 flat files there)
  "$PY" -m tools.gpu_smoke --summary "$RES" > "$RES/summary.md.tmp" 2>/dev/null && mv "$RES/summary.md.tmp" "$RES/summary.md"
  [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] || return 0
  local f
  for f in summary.md console.log smoke-call1.json smoke.json; do
    [ -f "$RES/$f" ] && cp "$RES/$f" "$OUT/$f.tmp" && mv "$OUT/$f.tmp" "$OUT/$f"
  done
  tar czf "$OUT/results.tgz.tmp" -C "$WORK" results 2>/dev/null && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz"
  return 0
}

# stage NAME LIMIT RESERVE CMD...: run CMD under min(LIMIT, time left before the deadline less RESERVE
# seconds kept for the later stages), log it, record it, publish. Never stops the script.
stage() {
  local name=$1 limit=$(( $2 * SCALE )) reserve=$(( $3 * SCALE )) t0 rc state left
  shift 3
  left=$(( DEADLINE - $(date +%s) - reserve ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    printf '%s\tSKIPPED (no time left before the deadline)\t0\t%s\n' "$name" "$limit" >> "$RES/stages.tsv"
    say "[$name] skipped: no time left"; publish; return 0
  fi
  say "[$name] (limit ${limit} s) $*"
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" 2>&1 | tee "$RES/$name.log"
  rc=${PIPESTATUS[0]}
  state=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then state="TIMED OUT after ${limit} s"
  elif [ "$rc" -eq 5 ] && [ "$name" = pytest-gpu ] && [ "$HAVE_GPU" = 0 ]; then state="ok (skipped: no GPU)"
  elif [ "$rc" -ne 0 ]; then state="FAILED (exit $rc)"; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$state" "$(( $(date +%s) - t0 ))" "$limit" >> "$RES/stages.tsv"
  say "[$name] $state in $(( $(date +%s) - t0 )) s"
  publish
  [[ "$state" == ok* ]]
}

smoke() {  # call 1: the machine itself, before any DALI (it arrives with the last piece)
  preflight
  : > "$RES/stages.tsv"
  DEADLINE=$(( $(date +%s) + 100 * SCALE ))
  "$PY" -m tools.gpu_wheels check --need 1 --whl "$WHL" || say "piece 1 is not here or damaged (above)"
  stage smoke-call1 60 0 "$PY" -m tools.gpu_smoke --out "$RES/smoke-call1.json" "${SMOKE_ARGS[@]}"
}

pieces() {  # call 2: nothing to run but the check
  "$PY" -m tools.gpu_wheels check --need "$(ls -d "$WHL"/p[0-9][0-9] 2>/dev/null | wc -l)" --whl "$WHL"
}

train_py() {  # shards with val/test splits from features.py's clips, then one epoch as train.py does it
  # (python -m: the repo root is on sys.path; train.py, a file in the root, has it anyway)
  local src shards=$WORK/train-shards
  src=$(ls -d "$WORK"/cache/synth-pc*-30s 2>/dev/null | head -1)
  if [ -z "$src" ] || [ ! -f "$src/.done" ]; then
    src=$WORK/cache/synth-train
    [ -f "$src/.done" ] || { "$PY" -m preprocess.synth "$src" --per-class 10 --seconds 30 && touch "$src/.done"; } || return 1
  fi
  [ -f "$shards/manifest.json" ] || "$PY" -m preprocess.make_shards "$src" "$shards" || return 1
  rm -rf "$WORK/train-run"
  "$PY" train.py --amp --epochs 1 --shards "$shards" --run-dir "$WORK/train-run"
}

run() {  # the last call
  local t_start
  t_start=$(date +%s)
  DEADLINE=$(( t_start + ${GPU_CHECK_TOTAL_S:-285} * SCALE ))
  preflight
  : > "$RES/stages.tsv"
  "$PY" -c 'import torch; print("torch", torch.__version__, "| cuda", torch.version.cuda, "|",
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU", "|", __import__("os").cpu_count(), "cores")'

  # Limits and reserves (s). A stage runs at most LIMIT, and never into the RESERVE kept for the stages
  # after it up to scaling: the sum of their floors (smoke 15, features 40, each training 25, pytest 30,
  # train.py 30, scaling 20). The numbers most worth having come first; resnet and the pair run on what is left.
  stage unpack 45 185 "$PY" -m tools.gpu_wheels unpack --whl "$WHL" --site "$SITE" \
    || { say "cannot go on without the packages: bring the pieces named above and run again"; publish; return 2; }
  export PYTHONPATH="$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"

  local clips=${GPU_CHECK_CLIPS:-200} steps=${GPU_CHECK_STEPS:-60} warm=${GPU_CHECK_WARMUP:-10}
  local reps=${GPU_CHECK_REPEATS:-2} common=(--wait-idle 0 --retries 0 --cache "$WORK/cache" --out "$RES")
  local methods=dali-cuda,librosa-1proc,torchaudio-cuda  # the headline ratio first: DALI GPU vs librosa
  local tp=(--crops 4,1 --methods dali,synthetic --clips "$clips" --warmup "$warm" --steps "$steps"
            --repeats "$reps" --method-timeout $(( 30 * SCALE )) "${common[@]}")
  local pt=(-q -m gpu tests/test_gpu.py -rs -p no:cacheprovider)
  "$PY" -c 'import pytest_timeout' 2>/dev/null && pt+=(--timeout $(( 40 * SCALE )))

  stage smoke 25 170 "$PY" -m tools.gpu_smoke --parts versions,dali-gpu,loader --out "$RES/smoke.json" \
    "${SMOKE_ARGS[@]}"
  stage features 90 130 "$PY" -m bench.features --methods "$methods" --clips "$clips" --repeats 3 --budget 10 \
    --window-steps 50 --parity-clips 32 --method-timeout $(( 40 * SCALE )) "${common[@]}"
  stage train-b32 50 105 "$PY" -m bench.train_throughput --model baseline --batch 32 --tag baseline-b32 "${tp[@]}"
  stage train-b128 50 80 "$PY" -m bench.train_throughput --model baseline --batch 128 --tag baseline-b128 "${tp[@]}"
  stage pytest-gpu 50 50 "$PY" -m pytest "${pt[@]}"
  stage train-py 45 20 bash "$SELF" train-py
  # ranks 1..GPUs (one GPU: the batch-size half of the study), two points of 10 + 2 x 60 steps each
  stage scaling 40 0 "$PY" -m bench.scaling --clips "$clips" --warmup "$warm" --steps "$steps" --repeats 2 --method-timeout $(( 25 * SCALE )) \
    "${common[@]}"
  stage train-resnet 60 0 "$PY" -m bench.train_throughput --model resnet --batch 32 --tag resnet-b32 "${tp[@]}"
  # the real-music recipe (bandnorm + resnet, trained in one run): what its crops/s costs against the baseline's
  stage train-pair 60 0 "$PY" -m bench.train_throughput --model baseline-bandnorm+resnet --batch 32 \
    --tag pair-b32 "${tp[@]}"

  echo
  cat "$RES/summary.md"
  echo
  echo "total $(( $(date +%s) - t_start )) s; logs, JSON, PNG: $RES${OUT:+ (and \$OUT: summary.md, console.log, results.tgz, smoke.json)}"
  ! grep -qv $'\tok' "$RES/stages.tsv"
}

case "${1:-run}" in
  fetch) fetch ;;
  pieces) pieces ;;
  train-py) train_py ;;
  smoke|run)
    mkdir -p "$RES"
    if [ "${1:-run}" = run ]; then  # a fresh results folder (a second try keeps the cache and the unpacked site)
      for f in "$RES"/*; do case "$(basename "$f")" in smoke-call1*) ;; *) rm -rf "$f" ;; esac; done
    fi
    : > "$RES/console.log"
    "${1:-run}" 2>&1 | tee -a "$RES/console.log"
    rc=${PIPESTATUS[0]}
    publish
    exit "$rc" ;;
  -h|--help|help) sed -n '2,/^set -uo/p' "$0" | sed '$d' ;;
  *) die "unknown command '$1' (fetch: here; smoke, pieces, or none: there; see bench/NOTES.md)" ;;
esac

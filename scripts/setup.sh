#!/usr/bin/env bash
# Creates .venv and installs ParallelTunes' dependencies. Idempotent: a finished venv is reused.
#   CPU machine (no nvidia-smi): torch 2.13.0 CPU build + torchaudio 2.11.0 without its compiled
#   extension (every torchaudio wheel is a CUDA build; its Python transforms need no extension).
#   GPU machine whose python3 already holds a working CUDA torch >= 2.6 + torchaudio (e.g. an NGC or
#   cloud image; an older torch is not reused: scripts/system_torch.py): the venv sees them
#   (--system-site-packages) and installs neither torch nor numpy, so the
#   image's builds and numpy stay in use. PT_SETUP=system|index forces either way.
#   Other GPU machine: torch 2.11.0 + torchaudio 2.11.0 CUDA builds from PyPI, used as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.parallel-tunes-ok"
want="$(cat requirements.txt requirements-dev.txt scripts/setup.sh pyproject.toml | sha1sum | cut -c1-12)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi

mode=${PT_SETUP:-}
if [ "$mode" != index ]; then  # a system CUDA torch >= 2.6 only (scripts/system_torch.py says why)
  mode=$(PT_SETUP="$mode" "$PY" scripts/system_torch.py) || exit 2
fi
if [ "$mode" = system ]; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -c 'import torch, torchaudio' \
    || { echo "setup: $VENV cannot see $PY's torch: remove $VENV (made without --system-site-packages?) and rerun" >&2; exit 2; }
else
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if [ "$mode" = system ]; then
  echo "setup: using $PY's torch and torchaudio (CUDA) and its numpy"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  pip install torch==2.11.0 torchaudio==2.11.0 numpy==2.4.6
else
  pip install torch==2.13.0 numpy==2.4.6
  pip install --no-deps torchaudio==2.11.0
  # The wheel's compiled extension links libc10_cuda.so, absent from CPU torch, and would make
  # `import torchaudio` fail. torchaudio treats a missing extension as optional; the parts we
  # use (MelSpectrogram, resample) are pure PyTorch.
  rm -f "$("$VENV/bin/python" -c 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("torchaudio").origin))')"/lib/*.so
fi
pip install -r requirements.txt -r requirements-dev.txt
pip install --no-deps -e .  # the project's packages and commands (pyproject.toml)
"$VENV/bin/python" -c "import torch, torchaudio, nvidia.dali, webdataset, soundfile; print('venv ready: torch', torch.__version__, '| torchaudio', torchaudio.__version__, '| dali', nvidia.dali.__version__)"
echo "$want" > "$stamp"

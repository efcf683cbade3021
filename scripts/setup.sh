#!/usr/bin/env bash
# Creates .venv and installs ParallelTunes' dependencies. Idempotent: a finished venv is reused.
#   CPU machine (no nvidia-smi): torch 2.13.0 CPU build + torchaudio 2.11.0 without its compiled
#   extension (every torchaudio wheel is a CUDA build; its Python transforms need no extension).
#   GPU machine: torch 2.11.0 + torchaudio 2.11.0 CUDA builds from PyPI, used as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.parallel-tunes-ok"
want="$(cat requirements.txt requirements-dev.txt scripts/setup.sh | sha1sum | cut -c1-12)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  pip install torch==2.11.0 torchaudio==2.11.0
else
  pip install torch==2.13.0
  pip install --no-deps torchaudio==2.11.0
  # The wheel's compiled extension links libc10_cuda.so, absent from CPU torch, and would make
  # `import torchaudio` fail. torchaudio treats a missing extension as optional; the parts we
  # use (MelSpectrogram, resample) are pure PyTorch.
  rm -f "$("$VENV/bin/python" -c 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("torchaudio").origin))')"/lib/*.so
fi
pip install -r requirements.txt -r requirements-dev.txt
"$VENV/bin/python" -c "import torch, torchaudio, nvidia.dali, webdataset, soundfile; print('venv ready: torch', torch.__version__, '| torchaudio', torchaudio.__version__, '| dali', nvidia.dali.__version__)"
echo "$want" > "$stamp"

"""The checkpoint format: one dict of plain containers and tensors, saved atomically. Version 2:

    {"format": "parallel-tunes", "version": 2,
     "model_name": str, "model": state_dict, "classes": [str], "feature_spec": {FeatureSpec fields},
     "args": {train.py's arguments; URLs without credentials},
     "epoch": int, "step": int (steps done in that epoch), "steps": int (steps per epoch),
     "best_metric": float (best validation track accuracy so far), "history": [{one dict per epoch}],
     "optimizer": state_dict, "scheduler": state_dict, "scaler": state_dict (GradScaler; {} without),
     "rank_states": [{"loader": {"dali": str, "seen": [int], "epoch0": int} or None,
                      "torch_rng": tensor, "cuda_rng": tensor (GPU runs),
                      "progress": [loss*n, correct, n, data-wait s, step s] (the epoch's running sums)},
                     ... one per rank, in rank order],
     "ema": {"module": state_dict, "updates": int, "decay": float} (only with train.py --ema)}

With "ema", the averaged weights are the ones evaluation chose by and predictions use
(`inference_weights`); "model" stays the weights training continues from.

A checkpoint with step < steps was written inside an epoch: each rank's sample stream, DALI and RNG
state continue that epoch at the next batch, so no batch is trained twice or skipped. A rank's
"loader" is None when the checkpoint holds no usable stream position (then that epoch restarts).

Version 1 (before 2026-12-06) is read with a warning and upgraded on load: its args may lack
crops_per_track (it was 1), and a loader state without "epoch0" is a position of DALI's own
reader, which the sample stream cannot continue (None).

Loaded with torch.load(weights_only=True): a crafted pickle cannot run code, it is refused (safe
from torch 2.6 on). The fields readers size things by (classes, FeatureSpec, positions) are checked
for type and range on load. Who writes, rotates and resumes: training/checkpointing.py.
"""
from __future__ import annotations

import os
import pickle
from typing import Any

import torch

from core.atomic import atomic_open
from core.spec import FeatureSpec

FORMAT, VERSION = "parallel-tunes", 2
READABLE = (1, 2)


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, unsafe or does not fit the request."""


def save(path: str, state: dict[str, Any]) -> None:
    """Write to a temp file in the same folder, fsync, then rename: never a half checkpoint."""
    state = {"format": FORMAT, "version": VERSION, **state}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_open(path) as f:  # e.g. disk full: the old checkpoint stays, no temp file is left
        torch.save(state, f)


def load(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused to load, not a plain-weights checkpoint ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({msg})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a ParallelTunes checkpoint")
    if state.get("version") not in READABLE:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')!r:.20} is not supported "
                              f"(want one of {READABLE})")
    _check(state, path)
    return _upgrade(state) if state["version"] == 1 else state


def _check(state: dict[str, Any], path: str) -> None:
    """The fields a reader sizes things by: CheckpointError (one line) if any is off."""
    classes = state.get("classes")
    if (not isinstance(classes, list) or not 0 < len(classes) <= 100_000
            or not all(isinstance(c, str) and 0 < len(c) <= 256 for c in classes)):
        raise CheckpointError(f"{path}: its class list is not a list of 1 to 100,000 names")
    try:
        FeatureSpec.from_dict(state.get("feature_spec"))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    if not isinstance(state.get("model_name"), str) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path}: holds no model name and weights")
    for k in ("epoch", "step", "steps"):
        if k in state and (type(state[k]) is not int or not 0 <= state[k] < 1 << 40):
            raise CheckpointError(f"{path}: {k} {state[k]!r:.20} is not a count")
    ema = state.get("ema")
    if ema is not None and (not isinstance(ema, dict) or not isinstance(ema.get("module"), dict)
                            or type(ema.get("updates")) is not int):
        raise CheckpointError(f"{path}: its ema entry is not an averaged state dict with an update count")


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A version-1 checkpoint in version 2's layout (module docstring); "upgraded_from" says it was."""
    state = dict(state, version=VERSION, upgraded_from=1)
    if isinstance(state.get("args"), dict):
        state["args"] = {"crops_per_track": 1, **state["args"]}
    ranks = []
    for r in state.get("rank_states") or []:
        loader = r.get("loader")
        ranks.append({**r, "loader": loader if isinstance(loader, dict) and "epoch0" in loader else None})
    if "rank_states" in state:
        state["rank_states"] = ranks
    return state


def newest_run(filename: str, runs: str = "runs") -> str | None:
    """The folder under `runs` whose `filename` (e.g. last.pt, best.pt) was written last, or None."""
    dirs = [os.path.join(runs, d) for d in os.listdir(runs)] if os.path.isdir(runs) else []
    dirs = [d for d in dirs if os.path.isfile(os.path.join(d, filename))]
    return max(dirs, key=lambda d: os.path.getmtime(os.path.join(d, filename))) if dirs else None


def inference_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The weights to evaluate and predict with: the averaged ones if the run kept an EMA."""
    return state["ema"]["module"] if state.get("ema") else state["model"]


def load_model_weights(model: torch.nn.Module, state: dict[str, Any], path: str, for_inference: bool = False) -> None:
    """Load weights (`for_inference`: inference_weights), turning a shape mismatch into one line."""
    own = model.state_dict()
    theirs = inference_weights(state) if for_inference else state["model"]
    missing = sorted(set(own) - set(theirs))
    bad = [k for k in own if k in theirs and own[k].shape != theirs[k].shape]
    if missing or bad:
        what = (f"shape of {bad[0]} is {tuple(theirs[bad[0]].shape)}, model needs {tuple(own[bad[0]].shape)}"
                if bad else f"missing {missing[0]}")
        raise CheckpointError(f"{path}: weights do not fit model '{state.get('model_name')}' ({what})")
    model.load_state_dict(theirs)

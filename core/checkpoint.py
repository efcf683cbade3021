"""The checkpoint format: one dict of plain containers and tensors, saved atomically.

    {"format": "parallel-tunes", "version": 1,
     "model_name": str, "model": state_dict, "classes": [str], "feature_spec": {...},
     "args": {...}, "epoch": int, "step": int (done in that epoch), "steps": int (per epoch),
     "best_metric": float, "history": [{...}], "optimizer": ..., "scheduler": ..., "scaler": ...,
     "rank_states": [{"loader": {"dali": str, "seen": [int]}, "torch_rng": tensor,
                      "progress": [float]}, ...one per rank]}

A checkpoint with step < steps was written inside an epoch: each rank's DALI reader and RNG state
continue that epoch at the next batch, so no batch is trained twice or skipped.

Loaded with torch.load(weights_only=True): a crafted pickle cannot run code, it is refused.
"""
from __future__ import annotations

import os
import pickle
from typing import Any

import torch

from core.atomic import atomic_open

FORMAT, VERSION = "parallel-tunes", 1


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, unsafe or does not fit the request."""


def save(path: str, state: dict[str, Any]) -> None:
    """Write to a temp file in the same folder, fsync, then rename: never a half checkpoint."""
    state = {"format": FORMAT, "version": VERSION, **state}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_open(path) as f:  # e.g. disk full: the old checkpoint stays, no temp file is left
        torch.save(state, f)


def save_rotating(run_dir: str, state: dict[str, Any]) -> None:
    """Write RUN_DIR/last.pt, keeping the one it replaces as prev.pt (the fallback if last.pt is damaged)."""
    last = os.path.join(run_dir, "last.pt")
    if os.path.exists(last):
        os.replace(last, os.path.join(run_dir, "prev.pt"))
    save(last, state)


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
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')} is not supported (want {VERSION})")
    return state


def newest_run(filename: str, runs: str = "runs") -> str | None:
    """The folder under `runs` whose `filename` (e.g. last.pt, best.pt) was written last, or None."""
    dirs = [os.path.join(runs, d) for d in os.listdir(runs)] if os.path.isdir(runs) else []
    dirs = [d for d in dirs if os.path.isfile(os.path.join(d, filename))]
    return max(dirs, key=lambda d: os.path.getmtime(os.path.join(d, filename))) if dirs else None


def load_model_weights(model: torch.nn.Module, state: dict[str, Any], path: str) -> None:
    """Load weights, turning a shape mismatch into one readable line."""
    own = model.state_dict()
    theirs = state["model"]
    missing = sorted(set(own) - set(theirs))
    bad = [k for k in own if k in theirs and own[k].shape != theirs[k].shape]
    if missing or bad:
        what = (f"shape of {bad[0]} is {tuple(theirs[bad[0]].shape)}, model needs {tuple(own[bad[0]].shape)}"
                if bad else f"missing {missing[0]}")
        raise CheckpointError(f"{path}: weights do not fit model '{state.get('model_name')}' ({what})")
    model.load_state_dict(theirs)

"""Who writes, rotates and resumes a run's checkpoints (the format itself: core/checkpoint.py).

    saver = CheckpointSaver(run_dir, env)
    start = saver.resume(want=args.resume, model=..., amp=..., classes=..., spec=..., args=...)
    ... saver.save(state, best=improved)           # rank 0 writes; the others pass

Files in the run folder: last.pt (the newest), prev.pt (the one last.pt replaced: the fallback when
last.pt is damaged) and best.pt (a copy of last.pt made when validation accuracy improved); with --compare-raw also
best-raw.pt (last.pt's state without the EMA, written when the raw weights' validation accuracy
improved, so predict.py and evaluation use the raw weights from it).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from core import checkpoint
from core.atomic import atomic_copy
from core.checkpoint import CheckpointError
from core.spec import FeatureSpec
from training.distributed import DistEnv

LAST, PREV, BEST, BEST_RAW = "last.pt", "prev.pt", "best.pt", "best-raw.pt"


@dataclass
class Start:
    """Where the loop begins: epoch 1 step 0, or a checkpoint's position and what it restores."""
    epoch: int = 1
    step: int = 0
    sums: list[float] | None = None       # this rank's running epoch sums at `step` (mid-epoch resume)
    path: str | None = None               # the checkpoint resumed from
    loader: dict | None = None            # this rank's sample-stream state (continues at the next batch)
    optimizer: dict | None = None         # load after the scheduler is built (it resets the learning rate)
    scheduler: dict | None = None
    history: list[dict] = field(default_factory=list)
    best: float = -1.0

    def load_into(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        if self.optimizer is not None:
            optimizer.load_state_dict(self.optimizer)
            scheduler.load_state_dict(self.scheduler)


class CheckpointSaver:
    def __init__(self, run_dir: str, env: DistEnv):
        self.run_dir, self.env = run_dir, env

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def save(self, state: dict[str, Any], best: bool = False, best_raw: bool = False) -> None:
        """Rank 0: last.pt (the one it replaces becomes prev.pt); best.pt a copy of it if `best`, best-raw.pt if `best_raw`."""
        if not self.env.is_main:
            return
        if os.path.exists(self.path(LAST)):
            os.replace(self.path(LAST), self.path(PREV))
        checkpoint.save(self.path(LAST), state)
        if best:
            atomic_copy(self.path(LAST), self.path(BEST))
        if best_raw:
            checkpoint.save(self.path(BEST_RAW), {k: v for k, v in state.items() if k != "ema"})

    def resume(self, *, want: bool, model: torch.nn.Module, amp, classes: list[str], spec: FeatureSpec,
               args: argparse.Namespace, ema=None) -> Start:
        """Where to start: a fresh Start, or the newest readable checkpoint (last.pt, else prev.pt)
        checked against this run, its weights, GradScaler and this rank's RNG restored.

        Resumes with --resume (`want`) or automatically after torchrun restarted the job. Raises
        CheckpointError (one line) for a checkpoint that cannot or must not be continued."""
        restarted = self.env.restart > 0
        if not (want or restarted):
            return Start()
        state, path = self._newest()
        if state is None:
            if restarted:  # the first attempt died before its first checkpoint: start over
                return Start()
            raise CheckpointError(f"{self.run_dir}: no valid checkpoint to resume from")
        check_compatible(state, classes, spec, args, path)
        checkpoint.load_model_weights(model, state, path)
        if ema is not None:  # check_compatible made sure the checkpoint has one of the same decay
            ema.load_state_dict(state["ema"])
        amp.load_state_dict(state["scaler"])
        mine = self._rank_state(state, path)
        start = Start(path=path, optimizer=state["optimizer"], scheduler=state["scheduler"],
                      history=state["history"], best=state["best_metric"])
        if state["step"] >= state["steps"] or mine is None:
            start.epoch, start.step = state["epoch"] + (state["step"] >= state["steps"]), 0
        else:
            start.epoch, start.step = state["epoch"], state["step"]
            start.sums = mine["progress"] if state["step"] else None
        if mine is not None:
            start.loader = mine["loader"]
        return start

    def _newest(self) -> tuple[dict | None, str | None]:
        for name in (LAST, PREV):  # damaged ones are skipped, named
            candidate = self.path(name)
            if os.path.exists(candidate):
                try:
                    state = checkpoint.load(candidate)
                except CheckpointError as e:
                    self._warn(f"skipping {e}")
                    continue
                if state.get("upgraded_from"):
                    self._warn(f"{candidate} is a version-{state['upgraded_from']} checkpoint: read as version "
                               f"{checkpoint.VERSION}")
                return state, candidate
        return None, None

    def _rank_state(self, state: dict, path: str) -> dict | None:
        """This rank's saved state with its RNG restored, or None when the checkpoint's world size
        differs or it holds no stream position (then a mid-epoch position restarts its epoch)."""
        ranks = state["rank_states"]
        usable = len(ranks) == self.env.world_size and all(r["loader"] is not None for r in ranks)
        if usable:
            mine = ranks[self.env.rank]
            torch.set_rng_state(mine["torch_rng"].cpu())
            if self.env.device.type == "cuda" and "cuda_rng" in mine:
                torch.cuda.set_rng_state(mine["cuda_rng"].cpu())
            return mine
        if state["step"] < state["steps"]:
            why = (f"was written by {len(ranks)} ranks, this run has {self.env.world_size}"
                   if all(r["loader"] is not None for r in ranks) else
                   "holds a data position from before the sample stream (loading/stream.py)")
            self._warn(f"{path} {why}: epoch {state['epoch']} restarts from its first step")
        return None

    def _warn(self, line: str) -> None:
        if self.env.is_main:
            print(f"warning: {line}", file=sys.stderr)

    def load_best(self, model: torch.nn.Module, raw: bool = False) -> dict | None:
        """best.pt's (`raw`: best-raw.pt's) inference weights into `model` (on the model's device);
        its state, or None if there is none."""
        path = self.path(BEST_RAW if raw else BEST)
        if not os.path.exists(path):
            return None
        state = checkpoint.load(path, map_location=self.env.device)
        checkpoint.load_model_weights(model, state, path, for_inference=True)
        return state


def check_compatible(state: dict, classes: list[str], spec: FeatureSpec, args: argparse.Namespace, path: str) -> None:
    """A checkpoint continues this run only with the same classes, features, model, steps per epoch and --ema."""
    if state["classes"] != classes:
        raise CheckpointError(f"{path}: classes {state['classes']} differ from the shards' {classes}")
    saved = FeatureSpec.from_dict(state["feature_spec"]).to_dict()
    if saved != spec.to_dict():
        diff = [k for k, v in spec.to_dict().items() if saved.get(k) != v]
        raise CheckpointError(f"{path}: FeatureSpec differs from this run's in {', '.join(diff)}")
    if state["model_name"] != args.model:
        raise CheckpointError(f"{path}: holds model '{state['model_name']}', this run asks for '{args.model}'; "
                              f"resume with --model {state['model_name']}")
    for k in ("batch_size", "crops_per_track"):  # they set the steps per epoch, so the schedule and data position
        if state["args"].get(k) != getattr(args, k):
            flag = "--" + k.replace("_", "-")
            raise CheckpointError(f"{path}: was trained with {flag} {state['args'].get(k)}; resume with the same value")
    had = state["ema"]["decay"] if state.get("ema") else 0.0  # --ema 0: no average
    if had != args.ema:
        raise CheckpointError(f"{path}: was trained with --ema {had}; resume with it" if had else
                              f"{path}: was trained without --ema; resume with --ema 0, or start afresh")

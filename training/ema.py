"""An exponential moving average of the model's weights, for evaluation and checkpoint selection.

Validation accuracy of a small music classifier swings from epoch to epoch (the weights a step
lands on are noisy); an average of the recent weights is steadier and usually better (Polyak
averaging; timm's ModelEmaV2 is the model for this one). Updated after every optimizer step on
the device without reading anything back: the decay is computed on the host from a step count.

The average is kept in float32 whatever autocast does; buffers (BatchNorm statistics) are copied
from the model, not averaged.
"""
from __future__ import annotations

import copy

import torch


# train.py's --ema default: chosen with its default model on real music (bench/NOTES.md, issue #21)
DEFAULT_EMA = 0.999


class ModelEMA:
    """`module`: the averaged copy of `model` (eval mode, no gradients). `decay`: the weight kept per
    step once warmed up; early steps use (1 + n) / (10 + n) when that is smaller, so the average is
    not dominated by the random initial weights."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay {decay}: must lie in (0, 1)")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """After an optimizer step of `model` (the plain module, not a DDP or compiled wrapper)."""
        self.updates += 1
        d = self.current_decay()
        ema = [p for p in self.module.parameters()]
        src = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema, src, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

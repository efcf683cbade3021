"""Automatic mixed precision: which dtype, and the optimizer step with or without GradScaler.

--amp gives bfloat16 autocast on CPUs and on GPUs that support it (no scaler needed: bf16 has
fp32's range), float16 + GradScaler on older GPUs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass
class Amp:
    device_type: str
    dtype: torch.dtype | None      # None: full precision
    scaler: torch.amp.GradScaler | None

    @classmethod
    def create(cls, device: torch.device, enabled: bool) -> "Amp":
        if not enabled:
            return cls(device.type, None, None)
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return cls("cuda", torch.float16, torch.amp.GradScaler("cuda"))
        return cls(device.type, torch.bfloat16, None)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16+GradScaler"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, clip_norm: float | None = None
             ) -> torch.Tensor | bool:
        """Backward + optimizer step. Returns True, or with the fp16 GradScaler a 0-dim bool tensor on the
        device: False when overflow made the scaler skip the step. The step reads nothing back from the
        device (GradScaler.get_scale() would, twice a step); reading the result is the caller's choice."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            if clip_norm:
                torch.nn.utils.clip_grad_norm_(_params(optimizer), clip_norm)
            optimizer.step()
            return True
        self.scaler.scale(loss).backward()
        if clip_norm:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(_params(optimizer), clip_norm)
        before = self.scaler._scale.clone()  # the scale tensor itself (get_scale() is its .item())
        self.scaler.step(optimizer)
        self.scaler.update()  # backs the scale off, in place, after an overflow
        return self.scaler._scale >= before

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, d: dict) -> None:
        if self.scaler is not None and d:
            self.scaler.load_state_dict(d)


def _params(optimizer: torch.optim.Optimizer):
    return [p for g in optimizer.param_groups for p in g["params"]]

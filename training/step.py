"""One optimisation step: forward under autocast, weighted loss, backward and optimizer step.

train.py's loop and bench/train_throughput.py both call `train_step`, so the benchmark times the
step that trains. Nothing here reads a value back from the device (see training/stats.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.amp import Amp
from training.mixup import mixup


@dataclass
class StepResult:
    loss: torch.Tensor        # () weighted mean loss of the step, on the device
    per_sample: torch.Tensor  # (B,) cross-entropy of each row (against the mixed target with mixup)
    logits: torch.Tensor      # (B, classes); an ensemble's: its members' mean log-softmax


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
               optimizer: torch.optim.Optimizer, amp: Amp, *, n_classes: int, label_smoothing: float = 0.0,
               mixup_alpha: float = 0.0) -> StepResult:
    """Rows with weight 0 (repeats that fill a batch) add nothing to the loss or the gradients."""
    if x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)  # the model is channels_last on GPUs
    target = y
    if mixup_alpha > 0:
        x, target = mixup(x, y, n_classes, mixup_alpha)
    with amp.autocast():
        logits = model(x)
    if logits.dim() == 3:  # an ensemble's members (model/ensemble.py): each its own loss, so each learns alone
        per_sample = torch.stack([F.cross_entropy(m.float(), target, reduction="none", label_smoothing=label_smoothing)
                                  for m in logits]).mean(0)
        logits = logits.float().log_softmax(-1).mean(0)
    else:
        per_sample = F.cross_entropy(logits.float(), target, reduction="none", label_smoothing=label_smoothing)
    loss = (per_sample * weight).sum() / weight.sum().clamp(min=1.0)
    amp.step(loss, optimizer)
    return StepResult(loss, per_sample, logits)

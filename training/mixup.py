"""Mixup (Zhang et al. 2018) on a batch of features, on the features' device."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mixup(x: torch.Tensor, y: torch.Tensor, n_classes: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each sample with a random partner: returns mixed inputs and soft targets (rows sum to 1)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    lam = max(lam, 1.0 - lam)  # keep the sample's own label dominant, so train accuracy stays meaningful
    perm = torch.randperm(x.shape[0], device=x.device)
    target = F.one_hot(y, n_classes).float()
    return lam * x + (1.0 - lam) * x[perm], lam * target + (1.0 - lam) * target[perm]

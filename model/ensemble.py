"""Several classifiers as one model: trained together in one run (`train.py --model baseline+resnet`)
or joined from separately trained checkpoints (`predict.py --checkpoint A --checkpoint B`).

In eval mode, forward returns the members' mean log-softmax: the normalised geometric mean of their
probabilities. Unlike averaging probabilities, this commutes with how a track is scored (its windows'
logits averaged, then softmax), so an ensemble is a model like any other for every window path, the
timeline and the collection mode's batching.

In training mode, forward returns every member's logits stacked, (members, batch, classes), and
training/step.py gives each member its own cross-entropy: each member's update is the one it would get
training alone on the same batches (the members do not learn to complement each other), and one run
shares the data path, the schedule, the checkpoints and the reports among them. bench/NOTES.md's
ensemble tables combine separately trained runs; a trio run is measured as its own recipe.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

SEP = "+"  # between the member architectures in a model name: "baseline+baseline-bandnorm+resnet"


class Ensemble(nn.Module):
    """forward(x): eval mode, the members' mean log-softmax in float32 (its softmax is the ensemble's
    probability); training mode, the members' logits stacked (members, batch, classes)."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return torch.stack([m(x) for m in self.members])
        return torch.stack([m(x).float().log_softmax(-1) for m in self.members]).mean(0)

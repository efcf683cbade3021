"""Several trained classifiers as one: the rule predict.py applies and the folds bench measures.

Members are combined by averaging their log-probabilities (the normalised geometric mean of their
probabilities). Unlike averaging probabilities, this commutes with how a track is scored (its windows'
logits averaged, then softmax), so an ensemble is a model like any other: every window path, the
timeline and the collection mode's batching need nothing new.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class Ensemble(torch.nn.Module):
    """forward(x): the members' mean log-softmax, in float32. Its softmax is the ensemble's probability;
    its mean over windows, softmaxed, equals combine_probabilities of each member's track probabilities."""

    def __init__(self, members: Sequence[torch.nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).float().log_softmax(-1) for m in self.members]).mean(0)


def combine_probabilities(members: Sequence[Sequence[float]]) -> list[float]:
    """One excerpt's class probabilities from each member's, by Ensemble's rule (normalised geometric mean)."""
    n = len(members[0])
    logs = [math.fsum(math.log(max(p[c], 1e-300)) for p in members) / len(members) for c in range(n)]
    top = max(logs)
    e = [math.exp(v - top) for v in logs]
    s = math.fsum(e)
    return [v / s for v in e]

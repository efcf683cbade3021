"""The ensemble rule on probabilities: what model.ensemble.Ensemble computes, for one excerpt's
class probabilities from each member (the folds bench combines saved predictions with it).

Members are combined by averaging their log-probabilities (the normalised geometric mean of their
probabilities); model/ensemble.py says why.
"""
from __future__ import annotations

import math
from collections.abc import Sequence


def combine_probabilities(members: Sequence[Sequence[float]]) -> list[float]:
    """One excerpt's class probabilities from each member's, by Ensemble's rule (normalised geometric mean)."""
    n = len(members[0])
    logs = [math.fsum(math.log(max(p[c], 1e-300)) for p in members) / len(members) for c in range(n)]
    top = max(logs)
    e = [math.exp(v - top) for v in logs]
    s = math.fsum(e)
    return [v / s for v in e]

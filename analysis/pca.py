"""Standardisation fitted on one set of rows (the training split) and PCA by SVD."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Standardiser:
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "Standardiser":
        """Column means and standard deviations of `x`; a constant column keeps scale 1 (it stays 0)."""
        std = x.std(0)
        return cls(x.mean(0), np.where(std > 1e-12, std, 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


@dataclass
class PCA:
    """Principal axes of the rows it was fitted on (centred on their mean)."""
    mean: np.ndarray
    components: np.ndarray          # (k, features), unit rows
    explained_ratio: np.ndarray     # (k,) share of the fitted rows' total variance per component

    @classmethod
    def fit(cls, x: np.ndarray, k: int = 10) -> "PCA":
        """SVD of the centred rows. Signs are fixed (each component's largest loading positive),
        so the same data gives the same picture."""
        mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        flip = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])
        vt = vt * flip[:, None]
        var = s ** 2
        k = min(k, len(vt))
        return cls(mean, vt[:k], var[:k] / max(var.sum(), 1e-300))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(N, features) -> (N, k) scores."""
        return (x - self.mean) @ self.components.T

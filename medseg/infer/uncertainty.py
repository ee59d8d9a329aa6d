"""Predictive entropy: how unsure the (TTA- and fold-averaged) probabilities are, voxel by voxel, in [0, 1]."""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def predictive_entropy(probabilities: np.ndarray, multilabel: bool = False) -> np.ndarray:
    """Normalised entropy of the mean probabilities (C, ...): of the softmax over C classes (/ log C), or of each
    sigmoid channel (a binary entropy, / log 2; averaged over region channels)."""
    p = np.clip(probabilities.astype(np.float32), EPS, 1.0 - EPS)
    if p.shape[0] == 1 or multilabel:
        binary = -(p * np.log(p) + (1.0 - p) * np.log1p(-p)) / np.log(2.0)
        return binary.mean(axis=0)
    return -(p * np.log(p)).sum(axis=0) / np.log(p.shape[0])


def entropy_summary(entropy: np.ndarray, foreground: np.ndarray) -> dict[str, float | str]:
    """``mean_entropy`` over the image and ``mean_entropy_foreground`` over the predicted structures (blank when
    nothing was found): the columns a reviewer sorts ``summary.csv`` by."""
    inside = entropy[foreground]
    return {
        "mean_entropy": round(float(entropy.mean()), 6),
        "mean_entropy_foreground": round(float(inside.mean()), 6) if inside.size else "",
    }

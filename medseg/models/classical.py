"""Classical baselines as models: Otsu thresholding, marker-based watershed and k-means colour clustering
(scikit-image and numpy; no network). They take the preprocessed image batch like a network and return logits
(+/-10), so evaluation, prediction, overlays, tracking and ``medseg predict`` treat them as any model; their few
parameters are buffers of the module, saved in the checkpoint. The train stage fits them by a small grid search on
the training split (:meth:`ClassicalSegmenter.fit`).

Each method: a colour channel (grey, the blue channel, or L* of CIE L*a*b*, the lesion being darker than skin),
Gaussian smoothing, the method's foreground, then opening, the largest component and hole filling.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

CHANNELS = ("grey", "blue", "lightness")
METHODS = ("otsu", "watershed", "kmeans")
#: the grid the train stage searches, per method (channel x smoothing sigma x method parameter)
GRID: dict[str, dict[str, tuple]] = {
    "otsu": {"channel": CHANNELS, "sigma": (0.0, 1.0, 2.0), "opening": (0, 2)},
    "watershed": {"channel": CHANNELS, "sigma": (1.0, 2.0), "opening": (0, 2), "marker_erosion": (3, 8)},
    "kmeans": {"channel": CHANNELS, "sigma": (0.0, 1.0), "opening": (0, 2), "clusters": (2, 3)},
}


def _channel(image: np.ndarray, channel: str) -> np.ndarray:
    """One (H, W) channel in [0, 1] of a (C, H, W) [0, 1] image where the lesion is dark."""
    if image.shape[0] == 1:
        return image[0]
    rgb = np.moveaxis(image[:3], 0, -1)
    if channel == "blue":
        return rgb[..., 2]
    if channel == "lightness":
        from skimage.color import rgb2lab

        return rgb2lab(np.clip(rgb, 0, 1))[..., 0] / 100.0
    from skimage.color import rgb2gray

    return rgb2gray(np.clip(rgb, 0, 1))


def _kmeans_dark(values: np.ndarray, clusters: int, iterations: int = 20) -> np.ndarray:
    """Pixels of the darkest of ``clusters`` 1-D k-means clusters (initialised at quantiles: deterministic)."""
    flat = values.ravel()
    centres = np.quantile(flat, np.linspace(0.1, 0.9, clusters))
    for _ in range(iterations):
        assignment = np.abs(flat[:, None] - centres[None]).argmin(axis=1)
        moved = np.array(
            [flat[assignment == k].mean() if (assignment == k).any() else centres[k] for k in range(clusters)]
        )
        if np.allclose(moved, centres):
            break
        centres = moved
    return (assignment == int(np.argmin(centres))).reshape(values.shape)


def segment(image: np.ndarray, method: str, params: dict[str, Any]) -> np.ndarray:
    """The boolean lesion mask of one (C, H, W) image in [0, 1]."""
    from scipy import ndimage
    from skimage import filters, morphology, segmentation

    values = _channel(image, params["channel"])
    if params["sigma"] > 0:
        values = filters.gaussian(values, sigma=params["sigma"])
    if values.max() - values.min() < 1e-6:
        return np.zeros(values.shape, dtype=bool)
    if method == "otsu":
        mask = values < filters.threshold_otsu(values)
    elif method == "watershed":
        rough = values < filters.threshold_otsu(values)
        radius = int(params["marker_erosion"])
        markers = np.zeros(values.shape, dtype=np.int32)
        markers[~morphology.dilation(rough, morphology.disk(radius)).astype(bool, copy=False)] = 1  # surely skin
        markers[morphology.erosion(rough, morphology.disk(radius)).astype(bool, copy=False)] = 2  # surely lesion
        mask = segmentation.watershed(filters.sobel(values), markers) == 2
    else:
        mask = _kmeans_dark(values, int(params["clusters"]))
    if params["opening"]:
        mask = morphology.opening(mask, morphology.disk(int(params["opening"]))).astype(bool, copy=False)
    labelled, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(labelled.ravel())
        sizes[0] = 0
        mask = labelled == sizes.argmax()
    return ndimage.binary_fill_holes(mask)


class ClassicalSegmenter(nn.Module):
    """A classical method behind the network interface: (B, C, H, W) in [0, 1] -> (B, 1, H, W) logits."""

    def __init__(self, method: str, **params: Any) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown classical method {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method
        defaults = {name: values[0] for name, values in GRID[method].items()}
        unknown = set(params) - set(defaults)
        if unknown:
            raise ValueError(f"{method} takes {', '.join(defaults)}; not {', '.join(sorted(unknown))}")
        chosen = {**defaults, **params}
        if chosen["channel"] not in CHANNELS:
            raise ValueError(f"channel must be one of {', '.join(CHANNELS)}")
        self.register_buffer("channel_index", torch.tensor(CHANNELS.index(chosen["channel"])))
        for name, value in chosen.items():
            if name != "channel":
                self.register_buffer(name, torch.tensor(float(value)))
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # a parameter: tools expect one

    @property
    def params(self) -> dict[str, Any]:
        values = {name: float(getattr(self, name)) for name in GRID[self.method] if name != "channel"}
        return {"channel": CHANNELS[int(self.channel_index)], **values}

    def set_params(self, params: dict[str, Any]) -> None:
        self.channel_index.fill_(CHANNELS.index(params["channel"]))
        for name, value in params.items():
            if name != "channel":
                getattr(self, name).fill_(float(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = x.as_tensor() if hasattr(x, "as_tensor") else x  # a MONAI MetaTensor: its plain tensor
        images = plain.detach().float().cpu().numpy()
        masks = np.stack([segment(image, self.method, self.params) for image in images])[:, None]
        return torch.as_tensor(np.where(masks, 10.0, -10.0), dtype=torch.float32, device=x.device)

    def fit(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[dict[str, Any], list[tuple[dict, float]]]:
        """Fit on the training ``batches`` of (images, masks): the grid's parameters with the best mean Dice are set
        on this model (what the train stage calls instead of optimiser steps). Returns the best parameters and every
        (parameters, Dice) tried."""
        from medseg.evaluation.metrics import dice_score

        tried = []
        for params in grid(self.method):
            scores = [
                dice_score(segment(image, self.method, params), mask > 0)
                for images, masks in batches
                for image, mask in zip(images, masks, strict=True)
            ]
            tried.append((params, float(np.mean(scores))))
        best = max(tried, key=lambda item: item[1])
        self.set_params(best[0])
        log.info("%s: best of %d parameter sets %s (train Dice %.4f)", self.method, len(tried), best[0], best[1])
        return best[0], tried


def grid(method: str) -> Iterable[dict[str, Any]]:
    """Every parameter combination the train stage tries."""
    names = list(GRID[method])
    for values in itertools.product(*(GRID[method][n] for n in names)):
        yield dict(zip(names, values, strict=True))


def fit_classical(model: ClassicalSegmenter, batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[dict, list]:
    """``model.fit(batches)``: the grid's best parameters on ``batches`` of (images, masks), set on ``model``."""
    return model.fit(batches)

"""Pictures people would rather look at: contour overlays and training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.segmentation import find_boundaries

from medseg.atomic import atomic_path

TRUTH_COLOUR = (0, 220, 0)
PREDICTION_COLOUR = (255, 40, 40)


def overlay(image: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """RGB image with the ground-truth contour in green and the predicted contour in red (2 px)."""
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
    rgb = rgb.copy()
    layers = [(truth, TRUTH_COLOUR)] if truth is not None else []
    for mask, colour in [*layers, (prediction, PREDICTION_COLOUR)]:
        edge = find_boundaries(mask > 0, mode="thick")
        rgb[edge] = colour
    return rgb


def plot_training_curves(history: list[dict[str, float]], path: Path) -> None:
    """Training loss, validation Dice and learning rate per epoch, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [row["train_loss"] for row in history], marker=".")
    axes[0].set_title("training loss")
    val = [(row["epoch"], row["val_dice"]) for row in history if "val_dice" in row]
    if val:
        axes[1].plot(*zip(*val, strict=True), marker=".", color="tab:green")
        best = max(val, key=lambda item: item[1])
        axes[1].axhline(best[1], color="grey", lw=0.8, ls="--")
        axes[1].set_title(f"validation Dice (best {best[1]:.3f} @ {best[0]})")
    axes[2].plot(epochs, [row["lr"] for row in history], color="tab:orange")
    axes[2].set_title("learning rate")
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

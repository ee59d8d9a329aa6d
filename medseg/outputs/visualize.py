"""Pictures people would rather look at: contour overlays and training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.segmentation import find_boundaries

from medseg.core.atomic import atomic_path
from medseg.labels import Label

TRUTH_COLOUR = (0, 220, 0)
PREDICTION_COLOUR = (255, 40, 40)


def overlay(
    image: np.ndarray,
    prediction: np.ndarray,
    truth: np.ndarray | None = None,
    labels: list[Label] | None = None,
    instances: np.ndarray | None = None,
) -> np.ndarray:
    """RGB image with the ground-truth contour in green and the predicted contours (2 px): red for one label, each
    label's own colour for several; with ``labels``, a legend naming them; with ``instances`` (an instance map),
    each instance's outline (touching ones apart) and its id at its centroid."""
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
    rgb = rgb.copy()
    if truth is not None:
        rgb[find_boundaries(truth > 0, mode="thick")] = TRUTH_COLOUR
    several = labels is not None and len(labels) > 1
    entries = [(label.value, label.color if several else PREDICTION_COLOUR, label.name) for label in labels or []]
    if not entries:
        entries = [(None, PREDICTION_COLOUR, "prediction")]
    for value, colour, _ in entries:
        mask = prediction > 0 if value is None else prediction == value
        rgb[find_boundaries(mask, mode="thick")] = colour
        if instances is not None:
            rgb[find_boundaries(np.where(mask, instances, 0), mode="inner")] = colour
    if instances is not None:
        rgb = _with_instance_ids(rgb, instances)
    if labels is None:
        return rgb
    legend = ([("truth", TRUTH_COLOUR)] if truth is not None else []) + [(name, colour) for _, colour, name in entries]
    return _with_legend(rgb, legend)


def _with_legend(rgb: np.ndarray, entries: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """The picture with a small key in its top-left corner: a colour swatch and a name per line."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(rgb)
    draw = ImageDraw.Draw(picture)
    line = 14
    width = 22 + 7 * max(len(name) for name, _ in entries)
    draw.rectangle((2, 2, 2 + width, 4 + line * len(entries)), fill=(0, 0, 0))
    for row, (name, colour) in enumerate(entries):
        top = 5 + row * line
        draw.rectangle((6, top + 2, 14, top + 10), fill=tuple(colour))
        draw.text((18, top), name, fill=(255, 255, 255))
    return np.asarray(picture)


def _with_instance_ids(rgb: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """The picture with each instance's id centred on its centroid, white on a small black box."""
    from PIL import Image, ImageDraw
    from skimage.measure import regionprops

    picture = Image.fromarray(rgb)
    draw = ImageDraw.Draw(picture)
    draw.fontmode = "1"  # crisp pixels, no anti-aliasing
    for region in regionprops(instances):
        row, col = region.centroid
        text = str(region.label)
        left, top, right, bottom = draw.textbbox((0, 0), text)
        x, y = round(col - (right + left) / 2), round(row - (bottom + top) / 2)
        draw.rectangle((x + left - 1, y + top - 1, x + right, y + bottom), fill=(0, 0, 0))
        draw.text((x, y), text, fill=(255, 255, 255))
    return np.asarray(picture)


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

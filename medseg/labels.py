"""What the values of a label map mean: named labels, their colours and codes, and region-based labels.

A model either predicts classes (sigmoid for one foreground class, softmax over ``data.label_mapping``) or, with
``data.regions``, one sigmoid channel per region of raw labels (BraTS: whole tumour, tumour core, enhancing). Region
channels are painted into a label map of raw values in ``data.region_order`` (later regions win), each with the
smallest of its labels that no later region covers, as nnU-Net does; a region's mask is then the label map's
voxels holding any of the region's labels. Everything that names a label (metrics, CSV columns, overlays, output
formats) asks this module.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medseg.config.schema import PipelineConfig

#: distinct colours for labels without one (3D Slicer's generic anatomy colours first)
PALETTE = (
    (128, 174, 128),
    (241, 214, 145),
    (177, 122, 101),
    (111, 184, 210),
    (216, 101, 79),
    (221, 130, 101),
    (144, 238, 144),
    (192, 104, 88),
    (220, 245, 20),
    (78, 63, 0),
)
ANATOMICAL_STRUCTURE = ("SCT", "91723000", "Anatomical Structure")
KNOWN_CATEGORIES = {
    ("SCT", "91723000"): "Anatomical Structure",
    ("SCT", "49755003"): "Morphologically Altered Structure",
    ("SCT", "85756007"): "Tissue",
}


@dataclass(frozen=True)
class Label:
    """One value of a written label map."""

    value: int
    name: str
    color: tuple[int, int, int]
    code: tuple[str, str] | None = None  # (scheme, value)
    category: tuple[str, str] | None = None

    @property
    def key(self) -> str:
        """The name as it appears in metric names and file names (``test_dice_left_kidney``)."""
        return slug(self.name)


@dataclass(frozen=True)
class Structure:
    """What a metric is reported on: one class, or one region (a set of raw label values)."""

    name: str
    values: tuple[int, ...]

    @property
    def key(self) -> str:
        return slug(self.name)


def slug(name: str) -> str:
    """``Left kidney`` -> ``left_kidney``."""
    return re.sub(r"[^a-z0-9_.-]+", "_", name.strip().lower()).strip("_")


def _code(text: str | None) -> tuple[str, str] | None:
    return None if text is None else tuple(text.split(":", 1))  # type: ignore[return-value]


def _named(cfg: PipelineConfig, value: int, default: str) -> Label:
    info = (cfg.data.labels or {}).get(value)
    color = (info.color if info else None) or PALETTE[(value - 1) % len(PALETTE)]
    if info is None:
        return Label(value, default, color)
    return Label(value, info.name, color, _code(info.code), _code(info.category))


def class_count(cfg: PipelineConfig) -> int:
    """Classes with background for a class model (2 for binary)."""
    return max(2, cfg.model.out_channels)


def region_values(cfg: PipelineConfig) -> dict[str, tuple[int, ...]]:
    """Each region's raw label values (names resolved through ``data.labels``), in ``data.regions`` order."""
    by_name = {info.name: value for value, info in (cfg.data.labels or {}).items()}
    return {
        region: tuple(sorted({int(v) if isinstance(v, int) else by_name[v] for v in members}))
        for region, members in (cfg.data.regions or {}).items()
    }


def paint_order(cfg: PipelineConfig) -> list[tuple[int, int]]:
    """(region channel, value painted) in painting order: each region paints the smallest of its labels that no
    later region covers."""
    regions = region_values(cfg)
    names = list(regions)
    order = cfg.data.region_order or names
    plan = []
    for position, region in enumerate(order):
        later = {v for other in order[position + 1 :] for v in regions[other]}
        own = [v for v in regions[region] if v not in later]
        plan.append((names.index(region), min(own)))
    return plan


def output_labels(cfg: PipelineConfig) -> list[Label]:
    """The named foreground values a written label map can hold."""
    if cfg.data.regions:
        return [_named(cfg, value, f"label_{value}") for value in sorted({v for _, v in paint_order(cfg)})]
    classes = class_count(cfg)
    if classes == 2:
        return [_named(cfg, 1, "foreground")]
    return [_named(cfg, value, f"class_{value}") for value in range(1, classes)]


def structures(cfg: PipelineConfig) -> list[Structure]:
    """What evaluation reports on: each region, or each class."""
    if cfg.data.regions:
        return [Structure(name, values) for name, values in region_values(cfg).items()]
    return [Structure(label.name, (label.value,)) for label in output_labels(cfg)]


def structure_masks(label_map: np.ndarray, cfg: PipelineConfig) -> dict[str, np.ndarray]:
    """Boolean masks of each structure in a label map (classes: ``== value``; regions: any of their labels)."""
    return {s.name: np.isin(label_map, s.values) for s in structures(cfg)}


def channel_names(cfg: PipelineConfig) -> list[str]:
    """The name of each channel of the network's probabilities."""
    if cfg.data.regions:
        return [slug(name) for name in cfg.data.regions]
    if cfg.model.out_channels == 1:
        return [output_labels(cfg)[0].key]
    return ["background", *(label.key for label in output_labels(cfg))]


def paint_regions(probabilities: np.ndarray, threshold: float, plan: list[tuple[int, int]]) -> np.ndarray:
    """Region probabilities (R, ...) -> uint8 label map, regions painted in order (later ones win)."""
    labels = np.zeros(probabilities.shape[1:], dtype=np.uint8)
    for channel, value in plan:
        labels[probabilities[channel] > threshold] = value
    return labels


def labels_document(cfg: PipelineConfig) -> dict[str, Any]:
    """``labels.json``: every value of the written label maps with its name, colour and code; the regions."""
    document: dict[str, Any] = {
        "labels": [
            {
                "value": label.value,
                "name": label.name,
                "color": list(label.color),
                **({"code": ":".join(label.code)} if label.code else {}),
            }
            for label in output_labels(cfg)
        ],
        "background": 0,
    }
    if cfg.data.regions:
        document["regions"] = {name: list(values) for name, values in region_values(cfg).items()}
        document["region_order"] = list(cfg.data.region_order or cfg.data.regions)
    return document


def labels_json(cfg: PipelineConfig) -> str:
    return json.dumps(labels_document(cfg), indent=1) + "\n"


def itksnap_label_text(cfg: PipelineConfig) -> str:
    """An ITK-SNAP label description file (Segmentation > Import Label Descriptions)."""
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File (written by medseg)",
        "# Columns: IDX R G B A VIS MSH LABEL",
        "################################################",
        '    0     0    0    0        0  0  0    "Clear Label"',
    ]
    for label in output_labels(cfg):
        r, g, b = label.color
        lines.append(f'{label.value:5d} {r:5d} {g:4d} {b:4d}        1  1  1    "{label.name}"')
    return "\n".join(lines) + "\n"


def discretise(probabilities: np.ndarray, cfg: PipelineConfig) -> np.ndarray:
    """Probabilities (C, ...) -> uint8 label map: threshold (binary), argmax (classes) or regions painted."""
    threshold = cfg.evaluation.threshold
    if cfg.data.regions:
        return paint_regions(probabilities, threshold, paint_order(cfg))
    if probabilities.shape[0] == 1:
        return (probabilities[0] > threshold).astype(np.uint8)
    return probabilities.argmax(axis=0).astype(np.uint8)


def compared_masks(
    prediction: np.ndarray, truth: np.ndarray, cfg: PipelineConfig
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The structure masks of a predicted and a reference label map, ``data.ignore_label`` voxels of the truth left
    out of both."""
    if cfg.data.ignore_label is not None:
        valid = truth != cfg.data.ignore_label
        prediction, truth = prediction * valid, truth * valid
    return structure_masks(prediction, cfg), structure_masks(truth, cfg)


def mean_dice(prediction: np.ndarray, truth: np.ndarray, cfg: PipelineConfig) -> float:
    """Mean Dice over the structures (classes or regions) of two label maps (ignored voxels left out)."""
    from medseg.evaluation.metrics import dice_score

    predicted, true = compared_masks(prediction, truth, cfg)
    return float(np.mean([dice_score(predicted[name], true[name]) for name in predicted]))

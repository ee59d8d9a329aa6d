"""What the values of a label map mean: named labels, their colours and codes, and region-based labels.

A model either predicts classes (sigmoid for one foreground class, softmax over ``data.label_mapping``) or, with
``data.regions``, one sigmoid channel per region of raw labels (BraTS: whole tumour, tumour core, enhancing). Region
channels are painted into a label map of raw values in ``data.region_order`` (later regions win), each with the
smallest of its labels that no later region covers, as nnU-Net does; a region's mask is then the label map's
voxels holding any of the region's labels. Everything that names a label (metrics, CSV columns, overlays, output
formats) asks a :class:`LabelScheme`, built once from the configuration (:func:`medseg.config.settings.label_scheme`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


def parse_code(text: str | None) -> tuple[str, str] | None:
    """``SCT:10200004`` -> ``("SCT", "10200004")``."""
    return None if text is None else tuple(text.split(":", 1))  # type: ignore[return-value]


def default_color(value: int) -> tuple[int, int, int]:
    """The colour of a label the configuration gives none."""
    return PALETTE[(value - 1) % len(PALETTE)]


def paint_regions(probabilities: np.ndarray, threshold: float, plan: list[tuple[int, int]]) -> np.ndarray:
    """Region probabilities (R, ...) -> uint8 label map, regions painted in order (later ones win)."""
    labels = np.zeros(probabilities.shape[1:], dtype=np.uint8)
    for channel, value in plan:
        labels[probabilities[channel] > threshold] = value
    return labels


@dataclass(frozen=True)
class LabelScheme:
    """What a model's outputs and label maps mean: its channels, the named labels, the regions and how they are
    painted, the voxels left out of scores, and the probability threshold.

    ``named``: the labels the configuration names (value -> :class:`Label`); ``regions``: each region's raw label
    values, in channel order (empty: the model predicts classes); ``region_order``: the painting order (later
    regions win; None: as listed).
    """

    out_channels: int = 1
    named: dict[int, Label] = field(default_factory=dict)
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    region_order: tuple[str, ...] | None = None
    ignore_label: int | None = None
    threshold: float = 0.5

    @property
    def multilabel(self) -> bool:
        """Region channels (one sigmoid each), painted into a label map."""
        return bool(self.regions)

    @property
    def class_count(self) -> int:
        """Classes with background for a class model (2 for binary)."""
        return max(2, self.out_channels)

    def _named(self, value: int, default: str) -> Label:
        return self.named.get(value) or Label(value, default, default_color(value))

    def paint_order(self) -> list[tuple[int, int]]:
        """(region channel, value painted) in painting order: each region paints the smallest of its labels that
        no later region covers."""
        names = list(self.regions)
        order = list(self.region_order or names)
        plan = []
        for position, region in enumerate(order):
            later = {v for other in order[position + 1 :] for v in self.regions[other]}
            own = [v for v in self.regions[region] if v not in later]
            plan.append((names.index(region), min(own)))
        return plan

    def output_labels(self) -> list[Label]:
        """The named foreground values a written label map can hold."""
        if self.regions:
            return [self._named(value, f"label_{value}") for value in sorted({v for _, v in self.paint_order()})]
        if self.class_count == 2:
            return [self._named(1, "foreground")]
        return [self._named(value, f"class_{value}") for value in range(1, self.class_count)]

    def structures(self) -> list[Structure]:
        """What evaluation reports on: each region, or each class."""
        if self.regions:
            return [Structure(name, values) for name, values in self.regions.items()]
        return [Structure(label.name, (label.value,)) for label in self.output_labels()]

    def structure_masks(self, label_map: np.ndarray) -> dict[str, np.ndarray]:
        """Boolean masks of each structure in a label map (classes: ``== value``; regions: any of their labels)."""
        return {s.name: np.isin(label_map, s.values) for s in self.structures()}

    def channel_names(self) -> list[str]:
        """The name of each channel of the network's probabilities."""
        if self.regions:
            return [slug(name) for name in self.regions]
        if self.out_channels == 1:
            return [self.output_labels()[0].key]
        return ["background", *(label.key for label in self.output_labels())]

    def discretise(self, probabilities: np.ndarray) -> np.ndarray:
        """Probabilities (C, ...) -> uint8 label map: threshold (binary), argmax (classes) or regions painted."""
        if self.regions:
            return paint_regions(probabilities, self.threshold, self.paint_order())
        if probabilities.shape[0] == 1:
            return (probabilities[0] > self.threshold).astype(np.uint8)
        return probabilities.argmax(axis=0).astype(np.uint8)

    def compared_masks(
        self, prediction: np.ndarray, truth: np.ndarray
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The structure masks of a predicted and a reference label map, ``data.ignore_label`` voxels of the truth
        left out of both."""
        if self.ignore_label is not None:
            valid = truth != self.ignore_label
            prediction, truth = prediction * valid, truth * valid
        return self.structure_masks(prediction), self.structure_masks(truth)

    def mean_dice(self, prediction: np.ndarray, truth: np.ndarray) -> float:
        """Mean Dice over the structures (classes or regions) of two label maps (ignored voxels left out)."""
        from medseg.evaluation.metrics import dice_score

        predicted, true = self.compared_masks(prediction, truth)
        return float(np.mean([dice_score(predicted[name], true[name]) for name in predicted]))

    def document(self) -> dict[str, Any]:
        """``labels.json``: every value of the written label maps with its name, colour and code; the regions."""
        document: dict[str, Any] = {
            "labels": [
                {
                    "value": label.value,
                    "name": label.name,
                    "color": list(label.color),
                    **({"code": ":".join(label.code)} if label.code else {}),
                }
                for label in self.output_labels()
            ],
            "background": 0,
        }
        if self.regions:
            document["regions"] = {name: list(values) for name, values in self.regions.items()}
            document["region_order"] = list(self.region_order or self.regions)
        return document

    def json(self) -> str:
        """``labels.json``'s text."""
        return json.dumps(self.document(), indent=1) + "\n"

    def itksnap_text(self) -> str:
        """An ITK-SNAP label description file (Segmentation > Import Label Descriptions)."""
        lines = [
            "################################################",
            "# ITK-SnAP Label Description File (written by medseg)",
            "# Columns: IDX R G B A VIS MSH LABEL",
            "################################################",
            '    0     0    0    0        0  0  0    "Clear Label"',
        ]
        for label in self.output_labels():
            r, g, b = label.color
            lines.append(f'{label.value:5d} {r:5d} {g:4d} {b:4d}        1  1  1    "{label.name}"')
        return "\n".join(lines) + "\n"

"""What the transform chains read, as one small frozen object (:func:`medseg.config.settings.transform_settings`
builds it from a pipeline configuration)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from medseg.config.schema import AugmentationConfig, PreprocessingConfig


@dataclass(frozen=True)
class LabelRemap:
    """How raw label values become training targets (the arguments of :class:`RemapLabels`)."""

    mapping: Mapping[int, int] | None = None
    foreground: tuple[int, ...] | None = None
    regions: tuple[tuple[int, ...], ...] | None = None
    ignore: int | None = None

    def arguments(self) -> dict[str, Any]:
        return {"mapping": self.mapping, "foreground": self.foreground, "regions": self.regions, "ignore": self.ignore}

    def without_regions(self) -> LabelRemap:
        """The remapping of reference labels scored against painted label maps (regions keep their raw values)."""
        return replace(self, regions=None)


@dataclass(frozen=True)
class TransformSettings:
    """What the transform chains read: the images' dimensions and channels, the deterministic preprocessing, the
    augmentation, the 3D training crops per volume and how raw labels become targets."""

    spatial_dims: int = 2
    in_channels: int = 3
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    samples_per_volume: int = 1
    labels: LabelRemap = field(default_factory=LabelRemap)

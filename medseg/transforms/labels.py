"""Raw label values -> training classes, as an array transform and its MONAI dictionary version."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.transforms import MapTransform


class RemapLabels:
    """Raw label values -> training classes.

    ``mapping`` {raw: class} (unlisted values -> 0, background); else ``foreground`` values -> 1;
    else every value > 0 -> 1.
    """

    def __init__(self, mapping: Mapping[int, int] | None = None, foreground: list[int] | None = None) -> None:
        self.mapping = dict(mapping or {})
        self.foreground = list(foreground or [])

    def __call__(self, label: torch.Tensor) -> torch.Tensor:
        if self.mapping:
            out = torch.zeros_like(label, dtype=torch.float32)
            for raw, cls in self.mapping.items():
                out[label == raw] = float(cls)
            return out
        if self.foreground:
            return torch.isin(label, torch.as_tensor(self.foreground, dtype=label.dtype)).float()
        return (label > 0).float()


class RemapLabelsd(MapTransform):
    """Dictionary version of :class:`RemapLabels`."""

    def __init__(
        self, keys: Any, mapping: Mapping[int, int] | None = None, foreground: list[int] | None = None
    ) -> None:
        super().__init__(keys)
        self.remap = RemapLabels(mapping, foreground)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.remap(d[key])
        return d

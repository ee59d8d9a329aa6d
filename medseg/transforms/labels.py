"""Raw label values -> training targets, as an array transform and its MONAI dictionary version."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.transforms import MapTransform


class RemapLabels:
    """Raw label values -> training targets.

    ``regions`` (one tuple of raw values per region): one channel per region, 1 where the label is any of them;
    else ``mapping`` {raw: class} (unlisted values -> 0, background); else ``foreground`` values -> 1; else every
    value > 0 -> 1. Voxels holding ``ignore`` keep that value in every output channel (the loss and the metrics
    leave them out).
    """

    def __init__(
        self,
        mapping: Mapping[int, int] | None = None,
        foreground: list[int] | None = None,
        regions: Sequence[Sequence[int]] | None = None,
        ignore: int | None = None,
    ) -> None:
        self.mapping = dict(mapping or {})
        self.foreground = list(foreground or [])
        self.regions = [list(r) for r in regions or []]
        self.ignore = ignore

    def __call__(self, label: torch.Tensor) -> torch.Tensor:
        if self.regions:  # (1, ...) -> (R, ...)
            source = label[0] if label.ndim > 1 and label.shape[0] == 1 else label
            values = [torch.as_tensor(r, dtype=source.dtype, device=source.device) for r in self.regions]
            out = torch.stack([torch.isin(source, v).float() for v in values])
        elif self.mapping:
            out = torch.zeros_like(label, dtype=torch.float32)
            for raw, cls in self.mapping.items():
                out[label == raw] = float(cls)
        elif self.foreground:
            out = torch.isin(label, torch.as_tensor(self.foreground, dtype=label.dtype)).float()
        else:
            out = ((label > 0) & (label != self.ignore)).float() if self.ignore is not None else (label > 0).float()
        if self.ignore is not None:
            ignored = label == self.ignore
            out[ignored.expand_as(out) if self.regions else ignored] = float(self.ignore)
        return out


class RemapLabelsd(MapTransform):
    """Dictionary version of :class:`RemapLabels`."""

    def __init__(self, keys: Any, **remap: Any) -> None:
        super().__init__(keys)
        self.remap = RemapLabels(**remap)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.remap(d[key])
        return d

"""Augmentation without MONAI's metadata tracking: training batches drop the metadata anyway (``EnsureTyped(...,
track_meta=False)`` at the end), and tracking it through every random transform made them 1.6-2.1x costlier on PH2
(3.55 against 2.17 ms per 256x256 image on 2 cores, BENCHMARKS.md). Imported when a chain is built (needs MONAI)."""

from __future__ import annotations

from typing import Any

from monai.data import get_track_meta, set_track_meta
from monai.transforms import Compose


class UntrackedCompose(Compose):
    """A ``Compose`` whose transforms run on plain tensors: MONAI's metadata tracking is off while it runs and put
    back after. Random like any ``Compose``, so ``CacheDataset`` caches what comes before it."""

    def __call__(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        tracked = get_track_meta()
        set_track_meta(False)
        try:
            return super().__call__(data, *args, **kwargs)
        finally:
            set_track_meta(tracked)

"""Where the deterministic part of preprocessing is kept between epochs: in memory (MONAI ``CacheDataset``), on disk
(MONAI ``PersistentDataset``), or nowhere. The disk cache is keyed by each case's files (path, size, modification
time) and by everything that changes preprocessing, so a later run, fold or DDP rank reuses it, and an edited file
or setting misses it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from medseg.data.records import Record
from medseg.data.settings import DataSettings
from medseg.version import __version__

log = logging.getLogger(__name__)
LABEL_KEYS = ("label_mapping", "foreground_labels", "regions", "ignore_label")


def preprocessing_key(settings: DataSettings) -> str:
    """A digest of what the cached (deterministic) preprocessing depends on."""
    settings = {
        "preprocessing": settings.preprocessing.model_dump(mode="json"),
        "labels": {
            k: settings.data.model_dump(mode="json")[k]
            for k in ("label_mapping", "foreground_labels", "regions", "ignore_label")
        },
        "spatial_dims": settings.spatial_dims,
        "channels": settings.in_channels,
        "medseg": __version__,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def case_key(record: Any) -> bytes:
    """A digest of one case's files: path, size and modification time of each (PersistentDataset's hash)."""
    parts = []
    for value in (record.get("image"), record.get("label")):
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if path is None:
                continue
            stat = os.stat(path)
            parts.append(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest().encode()


def estimated_cache_bytes(settings: DataSettings, records: list[Record]) -> int:
    """The in-memory cache's size: float32 image channels plus the label, at each case's stored size (3D: from the
    headers, as resampled to the target spacing when one is set; 2D: the resized image)."""
    if settings.spatial_dims == 2:
        h, w = settings.preprocessing.spatial_size
        return len(records) * h * w * (settings.in_channels + 1) * 4
    import numpy as np

    from medseg.imageio.headers import read_header

    total = 0
    for record in records:
        header = read_header(Path(record["image"][0]))
        voxels = float(np.prod(header.spatial_shape))
        if isinstance(settings.preprocessing.spacing, tuple):
            voxels *= float(np.prod(header.spacing)) / float(np.prod(settings.preprocessing.spacing))
        total += int(voxels * (settings.in_channels + 1) * 4)
    return total


def available_memory() -> int:
    """Physical memory of this machine in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cache_mode(settings: DataSettings, records: list[Record]) -> str:
    """``memory``, ``disk`` or ``none``: ``auto`` is memory when the cache fits ``data.cache_memory_fraction`` of
    RAM, else disk."""
    if settings.data.cache != "auto":
        return settings.data.cache
    needed, budget = estimated_cache_bytes(settings, records), settings.data.cache_memory_fraction * available_memory()
    mode = "memory" if needed <= budget else "disk"
    log.info("data.cache auto: %.2f GB of cases against %.2f GB allowed in RAM: %s", needed / 1e9, budget / 1e9, mode)
    return mode


def cached_dataset(settings: DataSettings, records: list[Record], transform: Any) -> Any:
    """The MONAI dataset of ``records`` with the configured cache."""
    from monai.data import CacheDataset, Dataset, PersistentDataset

    mode = cache_mode(settings, records)
    if mode == "memory":
        return CacheDataset(records, transform, cache_rate=1.0, num_workers=None, progress=False)
    if mode == "disk":
        folder = settings.data.cache_dir / preprocessing_key(settings)
        folder.mkdir(parents=True, exist_ok=True)
        return PersistentDataset(records, transform, cache_dir=folder, hash_func=case_key)
    return Dataset(records, transform)

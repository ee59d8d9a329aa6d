"""A dataset fingerprint, as nnU-Net's: spacings, shapes, foreground intensities and label counts; written beside
a plan."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.core.atomic import atomic_write_text
from medseg.data.records import Record

SAMPLES_PER_CASE = 10_000  # foreground voxels sampled per case for the intensity statistics


@dataclass
class Fingerprint:
    """What the data is: modality and channels, per-case shape and spacing, foreground intensities, classes."""

    spatial_dims: int
    modality: str
    channels: int
    cases: list[dict[str, Any]] = field(default_factory=list)  # id, shape, spacing
    foreground_intensity: list[dict[str, float]] = field(default_factory=list)  # per channel
    class_fractions: dict[str, float] = field(default_factory=dict)  # label value -> fraction of voxels
    median_spacing: list[float] = field(default_factory=list)
    median_shape: list[float] = field(default_factory=list)
    anisotropy: float = 1.0
    timing: dict[str, Any] = field(default_factory=dict)  # plan --minutes: the machine and every timed candidate

    def write(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=1))


def _intensity_stats(samples: np.ndarray) -> dict[str, float]:
    if not samples.size:
        return {"mean": 0.0, "std": 1.0, "p00_5": 0.0, "p99_5": 0.0, "median": 0.0}
    low, median, high = np.percentile(samples, [0.5, 50.0, 99.5])
    return {
        "mean": float(samples.mean()),
        "std": float(samples.std()) or 1.0,
        "p00_5": float(low),
        "p99_5": float(high),
        "median": float(median),
    }


def _sample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return values if values.size <= SAMPLES_PER_CASE else rng.choice(values, SAMPLES_PER_CASE, replace=False)


def fingerprint_images(records: list[Record], seed: int = 0) -> Fingerprint:
    """2D images: sizes (H, W), channels, foreground colour statistics per channel, lesion fraction."""
    from medseg.imageio.images import open_image

    rng = np.random.default_rng(seed)
    fingerprint = Fingerprint(spatial_dims=2, modality="rgb", channels=3)
    samples: list[list[np.ndarray]] = [[], [], []]
    counts: dict[int, int] = {}
    for record in records:
        image = np.asarray(open_image(Path(record["image"])).convert("RGB"))
        mask = np.asarray(open_image(Path(record["label"]), "mask")) > 0
        fingerprint.cases.append({"id": record["id"], "shape": list(mask.shape), "spacing": [1.0, 1.0]})
        for channel in range(3):
            samples[channel].append(_sample(image[..., channel][mask].astype(np.float32), rng))
        for value, count in zip(*np.unique(mask.astype(np.uint8), return_counts=True), strict=True):
            counts[int(value)] = counts.get(int(value), 0) + int(count)
    fingerprint.foreground_intensity = [_intensity_stats(np.concatenate(s)) for s in samples]
    return _finish(fingerprint, counts)


def fingerprint_volumes(records: list[Record], modality: str | None = None, seed: int = 0) -> Fingerprint:
    """3D scans: per-case shape and spacing (RAS axes), foreground intensities per channel, class fractions."""
    from medseg.data.volume_checks import spacing_in_orientation
    from medseg.imageio.headers import read_header
    from medseg.imageio.readers import load_volume, read_label_on_grid

    rng = np.random.default_rng(seed)
    channels = len(records[0]["image"])
    samples: list[list[np.ndarray]] = [[] for _ in range(channels)]
    counts: dict[int, int] = {}
    fingerprint = Fingerprint(spatial_dims=3, modality=modality or "", channels=channels)
    lowest = math.inf
    for record in records:
        header = read_header(Path(record["image"][0]))
        spacing = spacing_in_orientation(header.affine, "RAS")
        shape = [int(n) for n in header.spatial_shape]
        fingerprint.cases.append({"id": record["id"], "shape": shape, "spacing": list(spacing)})
        label = read_label_on_grid(Path(record["label"]), header) if record.get("label") else None
        foreground = (label > 0) if label is not None else None
        for channel, path in enumerate(record["image"]):
            array, _ = load_volume(Path(path))
            array = np.asarray(array, dtype=np.float32).reshape(array.shape[:3] + (-1,))[..., 0]
            lowest = min(lowest, float(array.min()))
            chosen = array[foreground] if foreground is not None and foreground.any() else array.ravel()
            samples[channel].append(_sample(chosen, rng))
        if label is not None:
            values, found = np.unique(label.astype(np.int64), return_counts=True)
            for value, count in zip(values, found, strict=True):
                counts[int(value)] = counts.get(int(value), 0) + int(count)
    if not fingerprint.modality:
        fingerprint.modality = "ct" if lowest < -500 else "mri"  # air in Hounsfield units is -1000
    fingerprint.foreground_intensity = [_intensity_stats(np.concatenate(s)) for s in samples]
    return _finish(fingerprint, counts)


def _finish(fingerprint: Fingerprint, counts: dict[int, int]) -> Fingerprint:
    total = sum(counts.values()) or 1
    fingerprint.class_fractions = {str(k): v / total for k, v in sorted(counts.items())}
    spacings = np.array([c["spacing"] for c in fingerprint.cases], dtype=float)
    shapes = np.array([c["shape"] for c in fingerprint.cases], dtype=float)
    fingerprint.median_spacing = [float(v) for v in np.median(spacings, axis=0)]
    fingerprint.median_shape = [float(v) for v in np.median(shapes, axis=0)]
    fingerprint.anisotropy = float(max(fingerprint.median_spacing) / min(fingerprint.median_spacing))
    return fingerprint

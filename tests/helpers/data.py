"""Tiny data made on the fly: 2D image/mask pairs, 3D phantoms, and run overrides that write under tmp_path."""

from __future__ import annotations

import locale
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image


def write_pair(root: Path, case_id: str, image: np.ndarray, mask: np.ndarray, mask_name: str | None = None) -> None:
    """Write images/<id>.png and masks/<mask_name or id>.png."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{case_id}.png")
    Image.fromarray(mask).save(root / "masks" / f"{mask_name or case_id}.png")


def tiny_overrides(tmp_path: Path, data_root: Path) -> list[str]:
    """--set overrides for a fast run that writes only under tmp_path."""
    return [
        f"data.root={data_root}",
        "data.dataset_dir=''",
        f"data.split.file={tmp_path / 'splits.json'}",
        f"output_root={tmp_path / 'runs'}",
        "preprocessing.spatial_size=[64, 64]",
        "model.args.channels=[8, 16, 32]",
        "model.args.strides=[2, 2]",
        "model.args.num_res_units=1",
        "training.epochs=2",
        "training.batch_size=4",
        "training.max_minutes=null",
        "schedule.length=epochs",  # the shipped pipeline fits its schedule to a time budget: tests run set epochs
        "training.bf16=true",  # bf16 where native, without timing fp32 against it: runs compared in tests stay equal
        "training.memory_format=contiguous",  # the same: no layout timing
        "prediction.max_overlays=2",
        f"tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
    ]


AFFINE = np.array([[-1.2, 0, 0, 30], [0, 1.0, 0, -20], [0, 0, 1.5, 5], [0, 0, 0, 1]])  # LAS, anisotropic


def phantom_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two modalities of a 'head' with a tumour: core (label 2) inside oedema (label 1)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (24, 24, 16)], indexing="ij"), axis=-1).astype(float)
    centre = rng.uniform([9, 9, 6], [15, 15, 10])
    distance = np.linalg.norm((grid - centre) / [1.0, 1.0, 0.8], axis=-1)
    head = np.linalg.norm((grid - [12, 12, 8]) / [11, 11, 7.5], axis=-1) < 1
    label = np.where(distance < 3, 2, np.where(distance < 5.5, 1, 0)) * head
    flair = head * (1.0 + 1.5 * (label > 0) + rng.normal(0, 0.2, head.shape))
    t1c = head * (1.0 + 2.0 * (label == 2) + rng.normal(0, 0.2, head.shape))
    return flair.astype(np.float32), t1c.astype(np.float32), label.astype(np.float32)


@contextmanager
def locale_kept() -> Iterator[None]:
    """GDCM leaves the process in the "C" locale after writing DICOM positions, and later tests (and torch's
    inductor, which reads its templates in the locale's encoding) read and write text: put the locale back."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def write_dicom_series(volume: sitk.Image, folder: Path, series_uid: str, prefix: str) -> None:
    """One file per slice with the tags GDCM needs to rebuild the volume (position, orientation, UIDs)."""
    with locale_kept():
        folder.mkdir(parents=True, exist_ok=True)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        d = volume.GetDirection()
        for k in range(volume.GetDepth()):
            image = volume[:, :, k]
            tags = {
                "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
                "0008|0018": f"{series_uid}.{k + 1}",
                "0008|0060": "CT",
                "0020|000d": "1.2.826.0.1.3680043.2.1125.7.1",
                "0020|000e": series_uid,
                "0020|0052": f"{series_uid}.0",  # frame of reference
                "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{v:.6f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, k))),
                "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
                "0018|0050": f"{volume.GetSpacing()[2]:.6f}",
            }
            for tag, value in tags.items():
                image.SetMetaData(tag, value)
            writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
            writer.Execute(image)

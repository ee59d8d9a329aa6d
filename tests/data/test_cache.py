"""``data.cache: disk`` keeps the deterministic preprocessing on disk, keyed by the files and the preprocessing;
``auto`` picks memory when the cases fit the allowed share of RAM."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medseg.config.schema import PipelineConfig
from medseg.config.settings import data_settings, transform_settings
from medseg.data.cache import cache_mode, cached_dataset
from medseg.transforms import validation_transforms


def config(tmp_path: Path, **data: object) -> PipelineConfig:
    return PipelineConfig(
        name="cache",
        spatial_dims=3,
        model={"in_channels": 1},
        preprocessing={"patch_size": [8, 8, 8], "intensity": {"kind": "ct"}},
        data={"cache": "disk", "cache_dir": str(tmp_path / "cache"), **data},
    )


def records(tmp_path: Path) -> list[dict]:
    out = []
    for index in range(3):
        volume = np.full((12, 10, 8), -500, np.int16)
        volume[3:8, 2:7, 2:6] = 100 + index
        label = (volume > 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / f"i{index}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / f"l{index}.nii.gz")
        out.append(
            {
                "id": f"c{index}",
                "image": [str(tmp_path / f"i{index}.nii.gz")],
                "label": str(tmp_path / f"l{index}.nii.gz"),
            }
        )
    return out


def cached_files(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*.pt")}


def test_disk_cache_is_reused_and_invalidated_by_files_and_settings(tmp_path: Path) -> None:
    cases, cfg = records(tmp_path), config(tmp_path)
    first = cached_dataset(data_settings(cfg), cases, validation_transforms(transform_settings(cfg)))
    images = [first[i]["image"] for i in range(3)]
    files = cached_files(tmp_path / "cache")
    assert len(files) == 3  # one per case, under one preprocessing key
    again = cached_dataset(data_settings(cfg), cases, validation_transforms(transform_settings(cfg)))
    for index in range(3):
        torch.testing.assert_close(again[index]["image"], images[index])
    assert cached_files(tmp_path / "cache") == files  # read back, not recomputed

    os.utime(cases[0]["image"][0], ns=(1, 1))  # the file changed: that case is preprocessed again
    cached_dataset(data_settings(cfg), cases, validation_transforms(transform_settings(cfg)))[0]
    assert len(cached_files(tmp_path / "cache")) == 4
    other = config(tmp_path, label_mapping=None).with_values({"preprocessing.intensity.window": [-100.0, 200.0]})
    cached_dataset(data_settings(other), cases, validation_transforms(transform_settings(other)))[1]
    assert len({Path(name).parts[0] for name in cached_files(tmp_path / "cache")}) == 2  # a new key folder


def test_auto_cache_chooses_memory_when_it_fits(tmp_path: Path) -> None:
    cases = records(tmp_path)
    assert cache_mode(data_settings(config(tmp_path, cache="auto")), cases) == "memory"
    assert cache_mode(data_settings(config(tmp_path, cache="auto", cache_memory_fraction=1e-12)), cases) == "disk"

"""Shared fixtures: tiny datasets made on the fly, and the shared real-data folder when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDSEG_DATA_ROOT", REPO.parent / "shared" / "data"))


def write_pair(root: Path, case_id: str, image: np.ndarray, mask: np.ndarray, mask_name: str | None = None) -> None:
    """Write images/<id>.png and masks/<mask_name or id>.png."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{case_id}.png")
    Image.fromarray(mask).save(root / "masks" / f"{mask_name or case_id}.png")


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A 12-case synthetic dermoscopy set, 64x96, in PH2 layout."""
    from medseg.data.synthetic import generate_dermoscopy_dataset

    return generate_dermoscopy_dataset(tmp_path / "tiny", num_cases=12, image_size=(64, 96), seed=3)


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
        "prediction.max_overlays=2",
        f"tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
    ]


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (or $MEDSEG_DATA_ROOT); skips the test where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} not found")
    return SHARED_DATA

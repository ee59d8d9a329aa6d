"""Shared fixtures: tiny datasets made on the fly, and the shared real-data folder when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.paths import SHARED_DATA


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A 12-case synthetic dermoscopy set, 64x96, in PH2 layout."""
    from medseg.data.synthetic import generate_dermoscopy_dataset

    return generate_dermoscopy_dataset(tmp_path / "tiny", num_cases=12, image_size=(64, 96), seed=3)


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (or $MEDSEG_DATA_ROOT); skips the test where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} not found")
    return SHARED_DATA

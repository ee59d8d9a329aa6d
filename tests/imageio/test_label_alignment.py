"""Reference labels stored in another axis order than their scan are brought onto the scan's grid."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.core.errors import DataError
from medseg.imageio.readers import align_to_grid

LPS = np.diag([-0.9, -0.9, 2.0, 1.0])
LPS[:3, 3] = [10.0, 20.0, -5.0]


def _las_copy(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same labels stored LAS: y reversed, the affine adjusted so every voxel keeps its world position."""
    flipped = labels[:, ::-1, :]
    affine = LPS.copy()
    affine[:3, 1] *= -1
    affine[:3, 3] += LPS[:3, 1] * (labels.shape[1] - 1)
    return flipped, affine


def test_a_flipped_label_is_reoriented_onto_the_scan_grid() -> None:
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[1, 0, 2] = 1  # asymmetric in y
    stored, affine = _las_copy(labels)
    np.testing.assert_array_equal(align_to_grid(stored, affine, LPS, labels.shape, "seg.nii.gz"), labels)
    np.testing.assert_array_equal(align_to_grid(labels, LPS, LPS, labels.shape, "seg.nii.gz"), labels)


def test_a_label_on_another_grid_is_rejected() -> None:
    shifted = LPS.copy()
    shifted[0, 3] += 3.0
    with pytest.raises(DataError, match="seg.nii.gz: the label's voxel grid does not match"):
        align_to_grid(np.zeros((6, 5, 4), np.uint8), shifted, LPS, (6, 5, 4), "seg.nii.gz")

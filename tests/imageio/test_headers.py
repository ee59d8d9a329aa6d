"""The one header reader: shape, RAS affine and the writer's geometry, without reading voxels."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.core.errors import DataError
from medseg.imageio.headers import read_header
from medseg.imageio.readers import load_volume
from tests.helpers.data import write_dicom_series


def _oblique(size: tuple[int, int, int] = (9, 8, 6)) -> sitk.Image:
    image = sitk.Image(size, sitk.sitkInt16)
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image.SetDirection(direction.ravel().tolist())
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((-20.0, 15.5, 40.0))
    return image


def test_a_dicom_series_header_matches_simpleitks_series_reader(tmp_path: Path) -> None:
    """From the first and last slices' headers alone: the geometry the series reader builds from every slice."""
    image = _oblique()
    write_dicom_series(image, tmp_path / "series", "1.2.826.0.1.3680043.2.1125.9.2", "s")
    header = read_header(tmp_path / "series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    series = reader.Execute()
    assert header.shape == series.GetSize() == (9, 8, 6) and header.is_series
    np.testing.assert_allclose(header.sitk.spacing, series.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(header.sitk.origin, series.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(header.sitk.direction, series.GetDirection(), atol=1e-5)
    _, meta = load_volume(tmp_path / "series")
    np.testing.assert_allclose(header.affine, meta["affine"], atol=1e-5)
    np.testing.assert_allclose(header.spacing, (0.7, 0.9, 2.5), atol=1e-5)


@pytest.mark.parametrize("name", ["scan.nii.gz", "scan.nrrd", "scan.mha"])
def test_file_headers_agree_with_the_reader(name: str, tmp_path: Path) -> None:
    image = _oblique()
    path = tmp_path / name
    if name.endswith(".nii.gz"):
        affine = np.array([[0, -0.8, 0, 10], [1.2, 0, 0, -5], [0, 0, 3.0, 2], [0, 0, 0, 1]])
        nib.save(nib.Nifti1Image(np.zeros((9, 8, 6), np.int16), affine), path)
    else:
        sitk.WriteImage(image, str(path))
    header = read_header(path)
    _, meta = load_volume(path)
    assert header.spatial_shape == (9, 8, 6) and header.channels == 1
    np.testing.assert_allclose(header.affine, meta["affine"], atol=1e-6)
    assert (header.nifti is not None) == name.endswith(".nii.gz")
    assert (header.sitk is not None) == (not name.endswith(".nii.gz"))


def test_unreadable_and_2d_headers_are_one_line_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.nrrd"
    broken.write_text("not a header")
    with pytest.raises(DataError, match=r"broken\.nrrd: cannot read the image header"):
        read_header(broken)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5), np.uint8), np.eye(4)), flat)
    with pytest.raises(DataError, match=r"flat\.nii\.gz: expected a 3D volume, got shape 4x5"):
        read_header(flat)

"""``medseg predict`` on a folder of scans: each scan's header is read once, and a mask once written is never read
back (the summary's spacing comes from the header already read)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medseg.config.schema import PipelineConfig
from medseg.config.settings import inference_settings
from medseg.imageio import headers
from medseg.infer.predictor import Predictor
from medseg.models.registry import build_network
from medseg.outputs.batch import Outputs, predict_folder
from tests.helpers.data import write_dicom_series

ARGS = {"channels": [4, 8], "strides": [2], "num_res_units": 0}


@pytest.fixture
def predictor_3d() -> Predictor:
    torch.manual_seed(0)
    cfg = PipelineConfig(
        name="t3d",
        spatial_dims=3,
        preprocessing={"patch_size": [16, 16, 16], "intensity": {"kind": "ct"}},
        model={"in_channels": 1, "args": ARGS},
        inference={"backend": "torch"},
    )
    return Predictor(build_network("unet", 3, 1, 1, ARGS), inference_settings(cfg))


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    """A NIfTI, an NRRD and a DICOM series folder, 20x18x12 with a bright block."""
    folder = tmp_path / "scans"
    folder.mkdir()
    volume = np.full((20, 18, 12), -500, np.int16)
    volume[5:14, 4:12, 3:9] = 150
    affine = np.diag([0.9, 1.1, 2.0, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), folder / "a.nii.gz")
    image = sitk.GetImageFromArray(volume.transpose(2, 1, 0).copy())
    image.SetSpacing((0.9, 1.1, 2.0))
    image.SetOrigin((4.0, -3.0, 10.0))
    sitk.WriteImage(image, str(folder / "b.nrrd"))
    write_dicom_series(image, folder / "c", "1.2.826.0.1.3680043.2.1125.9.1", "s")
    return folder


class Spy:
    """Records every header read and every file a reader opens."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.headers: list[Path] = []
        self.opened: list[Path] = []
        original = headers.read_header

        def read_header(path):
            self.headers.append(Path(path))
            return original(path)

        for module in list(sys.modules.values()):  # every module that imported the function by name
            if getattr(module, "read_header", None) is original:
                monkeypatch.setattr(module, "read_header", read_header)
        nib_load, sitk_read = nib.load, sitk.ReadImage
        set_file_name = sitk.ImageFileReader.SetFileName

        def load(path, *args, **kwargs):
            self.opened.append(Path(path))
            return nib_load(path, *args, **kwargs)

        def read_image(path, *args, **kwargs):
            self.opened.append(Path(path))
            return sitk_read(path, *args, **kwargs)

        def set_name(reader, path):
            self.opened.append(Path(path))
            return set_file_name(reader, path)

        monkeypatch.setattr(nib, "load", load)
        monkeypatch.setattr(sitk, "ReadImage", read_image)
        monkeypatch.setattr(sitk.ImageFileReader, "SetFileName", set_name)


def test_each_header_is_read_once_and_no_written_mask_is_read(
    predictor_3d: Predictor, scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    out = tmp_path / "out"
    report = predict_folder(predictor_3d, scans, out, Outputs(probabilities=True))
    assert sorted(report.written) == ["a", "b", "c"] and not report.failed
    assert sorted(spy.headers) == sorted([scans / "a.nii.gz", scans / "b.nrrd", scans / "c"])  # once each
    assert spy.opened and not [p for p in spy.opened if out in p.parents]
    rows = {row["case"]: row for row in csv.DictReader((out / "summary.csv").open(encoding="utf-8"))}
    assert rows["a"]["spacing"] == "0.9x1.1x2" and rows["b"]["spacing"] == "0.9x1.1x2"
    assert rows["c"]["shape"] == "20x18x12"
    for case, name in (("a", "a.nii.gz"), ("b", "b.nrrd"), ("c", "c.nii.gz")):
        written = sitk.ReadImage(str(out / "masks" / name))
        assert written.GetSize() == (20, 18, 12), case

    spy.headers.clear(), spy.opened.clear()
    again = predict_folder(predictor_3d, scans, out)  # resumed: every mask exists, nothing is read at all
    assert sorted(again.skipped) == ["a", "b", "c"] and not spy.headers and not spy.opened


def test_a_volume_array_is_segmented_on_its_own_grid(predictor_3d: Predictor, scans: Path) -> None:
    """``Predictor.predict(array, affine)`` gives the same labels as the file with that array and affine."""
    affine = np.diag([0.9, 1.1, 2.0, 1.0])
    volume = np.asarray(nib.load(scans / "a.nii.gz").dataobj)
    from_array = predictor_3d.predict(volume, affine=affine)
    from_file = predictor_3d.predict(scans / "a.nii.gz")
    assert from_array.labels.shape == (20, 18, 12)
    np.testing.assert_allclose(from_array.affine, affine)
    np.testing.assert_array_equal(from_array.labels, from_file.labels)

"""DICOM-SEG and RTSTRUCT made from a series with real UIDs (uncompressed, as a PACS sends it) are valid DICOM:
``dciodvfy`` (Debian's dicom3tools) reports no error, and the SEG's frames and references are the source's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.imageio.dicom_seg import output_uids, write_dicom_seg
from medseg.imageio.headers import dicom_series_files, read_header
from medseg.imageio.rtstruct import write_rtstruct
from tests.imageio.test_rtstruct import DIGEST, LABELS, SERIES_UID, STUDY_UID, sphere_mask, write_series

#: dciodvfy warnings accepted, with the reason (none are printed for these objects today; an entry here must say why)
ACCEPTED_WARNINGS: dict[str, str] = {}


def dciodvfy_problems(path: Path) -> list[str]:
    """dciodvfy's Error lines, and its Warning lines not in :data:`ACCEPTED_WARNINGS`."""
    binary = shutil.which("dciodvfy")
    if binary is None:
        pytest.skip("dciodvfy is not installed (apt-get install dicom3tools)")
    result = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return [
        line
        for line in lines
        if line.startswith("Error") or (line.startswith("Warning") and not any(w in line for w in ACCEPTED_WARNINGS))
    ]


@pytest.fixture
def series(tmp_path: Path) -> Path:
    write_series(tmp_path / "ct", np.zeros((40, 36, 12), np.int16))
    return tmp_path / "ct"


def test_dicom_seg_of_a_series_with_real_uids_is_valid_and_references_it(series: Path, tmp_path: Path) -> None:
    import highdicom as hd

    header, mask = read_header(series), sphere_mask()
    path = write_dicom_seg(mask, header, LABELS, tmp_path / "seg.dcm", DIGEST)
    assert dciodvfy_problems(path) == []
    seg = hd.seg.segread(str(path))
    assert (seg.SeriesInstanceUID, seg.SOPInstanceUID) == output_uids(SERIES_UID, DIGEST, "dicom-seg")
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID) == (STUDY_UID, f"{STUDY_UID}.0")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    for k, file in enumerate(dicom_series_files(series)):  # every frame is the mask slice of the instance it names
        uid = pydicom.dcmread(file, stop_before_pixels=True).SOPInstanceUID
        frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1, 2])[0]
        np.testing.assert_array_equal(frames[..., 0], (mask[:, :, k] == 1).T)
        np.testing.assert_array_equal(frames[..., 1], (mask[:, :, k] == 2).T)


def test_rtstruct_is_valid(series: Path, tmp_path: Path) -> None:
    path = write_rtstruct(sphere_mask(), read_header(series), LABELS, tmp_path / "rt.dcm", DIGEST)
    assert dciodvfy_problems(path) == []


def test_dciodvfy_finds_an_error_in_a_broken_rtstruct(series: Path, tmp_path: Path) -> None:
    """The check above is not vacuous: an RTSTRUCT without its Frame of Reference UID is reported."""
    path = write_rtstruct(sphere_mask(), read_header(series), LABELS, tmp_path / "rt.dcm", DIGEST)
    broken = pydicom.dcmread(path)
    del broken.FrameOfReferenceUID
    broken.save_as(tmp_path / "broken.dcm")
    assert any("FrameOfReferenceUID" in line for line in dciodvfy_problems(tmp_path / "broken.dcm"))

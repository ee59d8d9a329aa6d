"""DICOM as it leaves a PACS or a CD: patient / study / series folders, a DICOMDIR, several series mixed in one folder.
One case per image series (read alone, even beside other series), named PatientID_StudyDate_SeriesNumber; SR, SEG,
localizers and too-short series listed in summary.csv with the reason."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medseg.core.errors import DataError
from medseg.data.inputs import predict_inputs
from medseg.imageio.dicom_series import find_series, is_dicom_file
from medseg.imageio.headers import read_header
from medseg.imageio.readers import load_volume
from medseg.outputs.batch import Outputs, predict_folder
from tests.imageio.test_rtstruct import LABELS, STUDY_UID, ct_predictor, write_series

UID = "1.2.826.0.1.3680043.2.1125.78"


def ct(slices: int) -> np.ndarray:
    volume = np.full((20, 18, slices), -500, np.int16)
    volume[5:14, 4:12, 1 : slices - 1] = 150
    return volume


def write_sr(path: Path) -> Path:
    """A structured report: a DICOM object without pixels."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", f"{UID}.900.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = STUDY_UID, f"{UID}.900", "SR"
    ds.PatientID, ds.StudyDate, ds.SeriesNumber = "B", "20260202", 900
    ds.save_as(path, enforce_file_format=True)
    return path


def mixed_folder(folder: Path) -> None:
    """Two CT series (5 and 3 slices), a one-image localizer, an SR and a DICOM-SEG, all in one folder."""
    from medseg.imageio.dicom_seg import write_dicom_seg

    write_series(folder, ct(5), f"{UID}.4", name="a{k:02d}", PatientID="B", StudyDate="20260202", SeriesNumber=4)
    write_series(folder, ct(3), f"{UID}.5", name="b{k:02d}", PatientID="B", StudyDate="20260202", SeriesNumber=5)
    write_series(
        folder,
        ct(1),
        f"{UID}.1",
        name="scout{k}",
        PatientID="B",
        StudyDate="20260202",
        SeriesNumber=1,
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
    )
    write_sr(folder / "report")
    scratch = folder.parent / "scratch"
    write_series(scratch, ct(4), f"{UID}.6", PatientID="B", StudyDate="20260202", SeriesNumber=6)
    write_dicom_seg(np.zeros((20, 18, 4), np.uint8), read_header(scratch), LABELS, folder / "seg.dcm")
    for path in scratch.iterdir():
        path.unlink()
    scratch.rmdir()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """patientA/ct/*.dcm, patientB/study/ (series mixed with other objects), and a note that is not DICOM."""
    root = tmp_path / "pacs"
    write_series(root / "patientA" / "ct", ct(4), f"{UID}.2", PatientID="A", StudyDate="20260101", SeriesNumber=2)
    mixed_folder(root / "patientB" / "study")
    (root / "patientB" / "README.txt").write_text("not DICOM")
    return root


def test_a_tree_gives_one_case_per_series_named_by_its_headers_and_lists_the_rest(tree: Path) -> None:
    mixed = tree / "patientB" / "study"
    records = predict_inputs(tree, 3, 1, skipped=True)
    assert [(r["id"], r["image"], r.get("skipped", "")) for r in records] == [
        ("A_20260101_2", [str(tree / "patientA" / "ct")], ""),  # alone in its folder: read as the folder
        ("B_20260202_1", [str(mixed / "scout0")], "a localizer (ImageType LOCALIZER)"),
        ("B_20260202_106", [str(mixed / "seg.dcm")], "not an image series (Modality SEG)"),  # SEG: source's + 100
        ("B_20260202_4", [str(mixed / "a00")], ""),  # beside other series: named by its first file
        ("B_20260202_5", [str(mixed / "b00")], ""),
        ("B_20260202_900", [str(mixed / "report")], "not an image series (Modality SR)"),
    ]
    assert [r["id"] for r in predict_inputs(tree, 3, 1)] == ["A_20260101_2", "B_20260202_4", "B_20260202_5"]
    assert is_dicom_file(mixed / "a00") and not is_dicom_file(tree / "patientB" / "README.txt")
    # a series named by one of its files is read alone: only its own slices
    assert read_header(mixed / "b00").spatial_shape == (20, 18, 3)
    image, _ = load_volume(mixed / "a00")
    assert image.shape == (20, 18, 5) and (image == 150).sum() == 9 * 8 * 3


def test_predict_segments_every_series_of_a_tree_and_reports_the_skipped_ones(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = predict_folder(ct_predictor(), tree, out, Outputs(formats=("nifti", "dicom-seg")))
    assert report.written == ["A_20260101_2", "B_20260202_4", "B_20260202_5"] and not report.failed
    assert set(report.not_read) == {"B_20260202_1", "B_20260202_106", "B_20260202_900"}
    rows = {row["case"]: row for row in csv.DictReader((out / "summary.csv").open())}
    assert rows["B_20260202_900"]["status"] == "skipped"
    assert rows["B_20260202_900"]["message"] == "not an image series (Modality SR)"
    assert rows["B_20260202_5"]["status"] == "ok" and rows["B_20260202_5"]["shape"] == "20x18x3"
    mask = np.asarray(nib.load(out / "masks" / "B_20260202_4.nii.gz").dataobj)
    np.testing.assert_array_equal(mask, (ct(5) > 0).astype(np.uint8))
    seg = pydicom.dcmread(out / "masks" / "B_20260202_4.dcm")  # references its own 5 slices, none of the others
    referenced = [i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert sorted(referenced) == [f"{UID}.4.{k}" for k in range(1, 6)]
    again = predict_folder(ct_predictor(), tree, out, Outputs(formats=("nifti", "dicom-seg")))
    assert again.skipped == ["A_20260101_2", "B_20260202_4", "B_20260202_5"]  # done: resumed, nothing rewritten


def test_a_dicomdir_lists_the_files_of_a_cd(tmp_path: Path) -> None:
    from pydicom.fileset import FileSet

    staged = tmp_path / "staged"
    files = write_series(staged / "a", ct(4), f"{UID}.7", PatientID="C", StudyDate="20260303", SeriesNumber=7)
    files += write_series(staged / "b", ct(3), f"{UID}.8", PatientID="C", StudyDate="20260303", SeriesNumber=8)
    fileset = FileSet()
    for path in files:
        fileset.add(path)
    fileset.write(tmp_path / "cd")
    cd = tmp_path / "cd"
    unlisted = write_series(cd / "extra", ct(4), f"{UID}.9", PatientID="C", StudyDate="20260303", SeriesNumber=9)
    records = predict_inputs(cd, 3, 1)
    assert [r["id"] for r in records] == ["C_20260303_7", "C_20260303_8"]  # what the DICOMDIR lists, no more
    assert all(not Path(r["image"][0]).suffix for r in records)  # CD file names: IM000000, no ending
    assert [r["id"] for r in predict_inputs(cd / "DICOMDIR", 3, 1)] == ["C_20260303_7", "C_20260303_8"]
    assert read_header(Path(records[1]["image"][0])).spatial_shape == (20, 18, 3)
    assert unlisted and len(find_series(cd / "extra")) == 1


def test_series_folders_keep_their_names_and_equal_names_are_made_distinct(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    write_series(flat / "case1", ct(4), f"{UID}.10")
    write_series(flat / "case2", ct(4), f"{UID}.11")
    nib.save(nib.Nifti1Image(ct(4), np.eye(4)), flat / "case3.nii.gz")
    records = predict_inputs(flat, 3, 1)
    assert [(r["id"], r["image"]) for r in records] == [
        ("case1", [str(flat / "case1")]),
        ("case2", [str(flat / "case2")]),
        ("case3", [str(flat / "case3.nii.gz")]),
    ]
    assert [r["id"] for r in predict_inputs(flat / "case1", 3, 1)] == ["case1"]  # one series folder

    nested = tmp_path / "nested"  # the same PatientID, StudyDate and SeriesNumber twice
    write_series(nested / "p" / "x", ct(4), f"{UID}.12")
    write_series(nested / "p" / "y", ct(4), f"{UID}.13")
    assert [r["id"] for r in predict_inputs(nested, 3, 1)] == ["P1_20260101_1", "P1_20260101_1_2"]


def test_a_tree_with_nothing_to_read_says_what_was_skipped(tmp_path: Path) -> None:
    write_sr((tmp_path / "only").mkdir() or tmp_path / "only" / "report.dcm")
    with pytest.raises(DataError) as info:
        predict_inputs(tmp_path / "only", 3, 1)
    assert "no scans found" in str(info.value) and "not an image series (Modality SR)" in str(info.value)

"""RTSTRUCT written from a label map: contours that rasterise back to the mask (a sphere with a hole, real anatomy),
one ROI per label with its name and colour, references to the source study, series, frame of reference and slices,
UIDs derived from the source series and the model (a retry writes the same instance), and the refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.core.errors import ConfigError, DataError
from medseg.imageio.dicom_seg import output_uids
from medseg.imageio.headers import dicom_series_files, read_header
from medseg.imageio.rtstruct import read_rtstruct, slice_contours, write_rtstruct
from medseg.infer.predictor import Predictor
from medseg.labels import Label
from medseg.outputs.batch import Outputs, model_digest, predict_folder
from tests.helpers.models import ct_threshold_predictor

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_UID = "1.2.826.0.1.3680043.2.1125.77.1"
SERIES_UID = "1.2.826.0.1.3680043.2.1125.77.2"
LABELS = [Label(1, "liver", (221, 130, 101), ("SCT", "10200004")), Label(2, "tumour", (255, 0, 0))]
DIGEST = "ab" * 32


def write_series(
    folder: Path,
    volume: np.ndarray,
    series_uid: str = SERIES_UID,
    *,
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5),
    positions: list[list[str]] | None = None,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    name: str = "ct{k:03d}.dcm",
    **attributes: object,
) -> list[Path]:
    """A DICOM series as a PACS sends it: one uncompressed file per z slice of ``volume`` ((x, y, z) int16), every
    UID set; ``attributes`` (keywords) override the header; ``positions``: each slice's ImagePositionPatient."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    normal = np.cross(orientation[:3], orientation[3:])
    paths = []
    for k in range(volume.shape[2]):
        sop_uid = f"{series_uid}.{k + 1}"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CT_IMAGE_STORAGE, sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / name.format(k=k)), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = STUDY_UID, series_uid, f"{STUDY_UID}.0"
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "P1", "Phantom^One", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = (
            "20260101",
            "120000",
            "1",
            "A1",
            "",
        )
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "CT", 1, k + 1, "medseg-tests"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PositionReferenceIndicator = ""
        default = [f"{v:.4f}" for v in np.array([-25.0, -20.0, 10.0]) + k * spacing[2] * normal]
        ds.ImagePositionPatient = positions[k] if positions else default
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing, ds.SliceThickness = [spacing[1], spacing[0]], spacing[2]
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T.astype(np.int16)).tobytes()  # rows = y
        ds.save_as(ds.filename, enforce_file_format=True)
        paths.append(Path(ds.filename))
    return paths


def sphere_mask() -> np.ndarray:
    """Label 1: a ball (radius 12 mm) with a hole on one slice; label 2: a block at the image edge."""
    x, y, z = np.mgrid[:40, :36, :12]
    mask = ((((x - 20) * 0.8) ** 2 + ((y - 18) * 0.8) ** 2 + ((z - 6) * 2.5) ** 2) < 12**2).astype(np.uint8)
    mask[18:22, 16:20, 6] = 0
    mask[36:, :4, 2:5] = 2
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_sphere_with_a_hole_rasterises_back_with_names_colours_and_references(tmp_path: Path) -> None:
    files = write_series(tmp_path / "ct", np.zeros((40, 36, 12), np.int16))
    header, mask = read_header(tmp_path / "ct"), sphere_mask()
    path = write_rtstruct(mask, header, LABELS, tmp_path / "rt.dcm", DIGEST)

    names, back = read_rtstruct(path, header)
    assert names == {1: "liver", 2: "tumour"}
    for label in LABELS:
        assert dice(mask == label.value, back == label.value) >= 0.97
    assert not back[18:22, 16:20, 6].any()  # the hole: an inner contour, even-odd

    ds = pydicom.dcmread(path)
    assert ds.Modality == "RTSTRUCT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert ds.SeriesDescription == "medseg abababababab"
    assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == output_uids(SERIES_UID, DIGEST, "rtstruct")
    assert (ds.StudyInstanceUID, ds.PatientID, ds.FrameOfReferenceUID) == (STUDY_UID, "P1", f"{STUDY_UID}.0")
    assert [(r.ROINumber, r.ROIName) for r in ds.StructureSetROISequence] == [(1, "liver"), (2, "tumour")]
    assert [list(c.ROIDisplayColor) for c in ds.ROIContourSequence] == [[221, 130, 101], [255, 0, 0]]
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    study = frame.RTReferencedStudySequence[0]
    series = study.RTReferencedSeriesSequence[0]
    assert (frame.FrameOfReferenceUID, study.ReferencedSOPInstanceUID) == (f"{STUDY_UID}.0", STUDY_UID)
    assert series.SeriesInstanceUID == SERIES_UID
    slices = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in dicom_series_files(header.path)]
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == slices
    assert sorted(map(str, files)) == sorted(dicom_series_files(header.path))
    liver = ds.ROIContourSequence[0].ContourSequence
    touched = {slices[k] for k in np.flatnonzero((mask == 1).any(axis=(0, 1)))}
    assert {c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in liver} == touched  # every slice it touches
    for contour in liver:
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        assert len(contour.ContourData) == 3 * contour.NumberOfContourPoints
        z = float(
            pydicom.dcmread(
                files[slices.index(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
            ).ImagePositionPatient[2]
        )
        assert np.allclose(np.asarray(contour.ContourData, float).reshape(-1, 3)[:, 2], z)  # on its slice's plane
    assert all(len(str(v)) <= 16 for c in liver for v in c.ContourData)


def test_holes_are_separate_contours_and_an_oblique_series_maps_through_its_orientation(tmp_path: Path) -> None:
    ring = np.zeros((9, 9), bool)
    ring[1:8, 1:8], ring[3:6, 3:6] = True, False
    assert len(slice_contours(ring)) == 2  # outer boundary and hole
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    write_series(tmp_path / "ct", np.zeros((40, 36, 12), np.int16), orientation=(c, s, 0, -s, c, 0))
    header, mask = read_header(tmp_path / "ct"), sphere_mask()
    _, back = read_rtstruct(write_rtstruct(mask, header, LABELS, tmp_path / "rt.dcm", DIGEST), header)
    assert dice(mask == 1, back == 1) >= 0.97 and dice(mask == 2, back == 2) >= 0.97


def test_a_retry_gives_the_same_uids_and_another_model_others(tmp_path: Path) -> None:
    write_series(tmp_path / "ct", np.zeros((40, 36, 12), np.int16))
    header, mask = read_header(tmp_path / "ct"), sphere_mask()
    uids = [
        (ds.SeriesInstanceUID, ds.SOPInstanceUID)
        for ds in (
            pydicom.dcmread(write_rtstruct(mask, header, LABELS, tmp_path / f"rt{i}.dcm", digest))
            for i, digest in enumerate((DIGEST, DIGEST, "cd" * 32))
        )
    ]
    assert uids[0] == uids[1] != uids[2]
    assert output_uids(SERIES_UID, DIGEST, "rtstruct") != output_uids(SERIES_UID, DIGEST, "dicom-seg")


def test_a_series_without_the_uids_a_reference_needs_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path / "anonymised", np.zeros((8, 8, 3), np.int16), StudyInstanceUID="")
    header = read_header(tmp_path / "anonymised")
    with pytest.raises(DataError) as info:
        write_rtstruct(np.zeros((8, 8, 3), np.uint8), header, LABELS, tmp_path / "rt.dcm", DIGEST)
    assert str(info.value).startswith(f"DICOM series {tmp_path / 'anonymised'}: no StudyInstanceUID in ct000.dcm")
    assert not (tmp_path / "rt.dcm").exists()


def test_the_shared_ct_series_lacks_its_uids_and_is_refused_in_one_line(tmp_path: Path, shared_data: Path) -> None:
    series = shared_data / "ct-mr-examples" / "dicom" / "ct_series"
    header = read_header(series)
    with pytest.raises(DataError) as info:
        write_rtstruct(np.zeros(header.spatial_shape, np.uint8), header, LABELS, tmp_path / "rt.dcm", DIGEST)
    assert f"DICOM series {series}: no StudyInstanceUID, SeriesInstanceUID in " in str(info.value)


def test_real_anatomy_rasterises_back(tmp_path: Path, shared_data: Path) -> None:
    """The shared CT's labels on its own geometry, the series re-written uncompressed with every UID set."""
    from medseg.imageio.readers import load_volume, read_label_on_grid

    source = shared_data / "ct-mr-examples" / "dicom" / "ct_series"
    image, _ = load_volume(source)
    slices = [pydicom.dcmread(f, stop_before_pixels=True) for f in dicom_series_files(source)]
    first = slices[0]
    write_series(
        tmp_path / "ct",
        image,
        positions=[list(s.ImagePositionPatient) for s in slices],
        orientation=tuple(float(v) for v in first.ImageOrientationPatient),
        spacing=(float(first.PixelSpacing[1]), float(first.PixelSpacing[0]), 2.0),
    )
    header = read_header(tmp_path / "ct")
    mask = read_label_on_grid(shared_data / "ct-mr-examples" / "dicom" / "ct_series_seg.nii.gz", read_header(source))
    values = [v for v in np.unique(mask) if v and (mask == v).sum() > 500][:6]  # the larger organs
    labels = [Label(int(v), f"organ {v}", (10 * int(v) % 256, 100, 200)) for v in values]
    kept = np.where(np.isin(mask, values), mask, 0).astype(np.uint8)
    _, back = read_rtstruct(write_rtstruct(kept, header, labels, tmp_path / "rt.dcm", DIGEST), header)
    assert len(values) >= 3
    for value in values:
        assert dice(kept == value, back == value) >= 0.97, value


def ct_predictor() -> Predictor:
    return ct_threshold_predictor()  # 150 HU is foreground, -500 is not


def test_predict_writes_rtstruct_and_seg_with_the_models_uids_and_refuses_nifti(tmp_path: Path) -> None:
    volume = np.full((20, 18, 6), -500, np.int16)
    volume[5:14, 4:12, 1:5] = 150
    write_series(tmp_path / "in" / "series", volume)
    predictor, out = ct_predictor(), tmp_path / "out"
    outputs = Outputs(formats=("rtstruct", "dicom-seg"))
    report = predict_folder(predictor, tmp_path / "in", out, outputs)
    assert report.written == ["series"], report.failed
    digest = model_digest(predictor)
    assert len(digest) == 64 and digest == model_digest(ct_predictor())  # the weights, not the object
    rt, seg = pydicom.dcmread(out / "masks" / "series.rtstruct.dcm"), pydicom.dcmread(out / "masks" / "series.dcm")
    assert (rt.SeriesInstanceUID, rt.SOPInstanceUID) == output_uids(SERIES_UID, digest, "rtstruct")
    assert (seg.SeriesInstanceUID, seg.SOPInstanceUID) == output_uids(SERIES_UID, digest, "dicom-seg")
    assert rt.SeriesDescription == seg.SeriesDescription == f"medseg {digest[:12]}"
    _, back = read_rtstruct(out / "masks" / "series.rtstruct.dcm", read_header(tmp_path / "in" / "series"))
    assert dice(back == 1, volume > 0) >= 0.97
    again = predict_folder(ct_predictor(), tmp_path / "in", out, outputs, overwrite=True)
    assert again.written == ["series"]
    assert pydicom.dcmread(out / "masks" / "series.rtstruct.dcm").SOPInstanceUID == rt.SOPInstanceUID

    import nibabel as nib

    (tmp_path / "nifti").mkdir()
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "nifti" / "scan.nii.gz")
    with pytest.raises(ConfigError) as info:
        predict_folder(predictor, tmp_path / "nifti", tmp_path / "out2", Outputs(formats=("rtstruct",)))
    assert str(info.value).startswith("--format (prediction.formats) rtstruct: ")
    assert "not a DICOM series (there is no DICOM source to reference" in str(info.value)

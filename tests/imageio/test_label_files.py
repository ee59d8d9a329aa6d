"""Label files from viewers and PACS read as label maps on their scan's grid: Slicer ``.seg.nrrd`` (one layer, several
layers, cropped, coarser) and DICOM-SEG (BINARY and FRACTIONAL, only some frames stored, in a folder), voxel for
voxel; files of another region or another series refused in one line."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medseg.core.errors import DataError
from medseg.imageio.dicom_seg import write_dicom_seg
from medseg.imageio.formats import volume_id, volume_suffix
from medseg.imageio.headers import ScanHeader, dicom_series_files, read_header
from medseg.imageio.label_files import label_map_on_grid, segment_names
from medseg.imageio.slicer import write_seg_nrrd
from medseg.labels import Label
from tests.helpers.data import AFFINE, locale_kept, write_dicom_series

SHAPE = (6, 5, 4)  # (x, y, z)
SPACING = (0.8, 0.9, 2.0)
ORIGIN = (10.0, -5.0, 3.0)
SERIES = "1.2.826.0.1.3680043.2.1125.5.1"
OTHER_SERIES = "1.2.826.0.1.3680043.2.1125.5.2"
VALUES = {"liver": 1, "tumour": 2, "vessel": 3}


def _sitk(array_xyz: np.ndarray, spacing=SPACING, origin=ORIGIN, vector: bool = False) -> sitk.Image:
    """A SimpleITK image of an (x, y, z[, layer]) array."""
    order = (2, 1, 0, 3) if vector else (2, 1, 0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(order)), isVector=vector)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def _scan(tmp_path: Path, shape=SHAPE, spacing=SPACING, origin=ORIGIN) -> ScanHeader:
    path = tmp_path / "scan.nrrd"
    sitk.WriteImage(_sitk(np.zeros(shape, np.int16), spacing, origin), str(path))
    return read_header(path)


def _slicer_file(path: Path, image: sitk.Image, segments: list[tuple[str, int, int]]) -> Path:
    """A .seg.nrrd with Slicer's header keys, written by SimpleITK: (name, layer, label value) per segment."""
    for index, (name, layer, value) in enumerate(segments):
        image.SetMetaData(f"Segment{index}_ID", f"Segment_{index + 1}")
        image.SetMetaData(f"Segment{index}_Name", name)
        image.SetMetaData(f"Segment{index}_Layer", str(layer))
        image.SetMetaData(f"Segment{index}_LabelValue", str(value))
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def test_seg_nrrd_has_the_case_id_before_its_double_ending() -> None:
    assert volume_suffix("case7.SEG.nrrd") == ".seg.nrrd"
    assert volume_id(Path("labelsTr/case7.seg.nrrd")) == "case7"
    assert volume_id(Path("labelsTr/case7.nrrd")) == "case7"


def test_one_layer_seg_nrrd_by_label_value(tmp_path: Path) -> None:
    stored = np.zeros(SHAPE, np.uint8)
    stored[1:3, 1:4, 1] = 3  # liver
    stored[4, 2, 2:4] = 5  # tumour
    label = _slicer_file(tmp_path / "case.seg.nrrd", _sitk(stored), [("liver", 0, 3), ("tumour", 0, 5)])
    assert segment_names(label) == ["liver", "tumour"]
    expected = np.select([stored == 3, stored == 5], [1, 2], 0)
    np.testing.assert_array_equal(label_map_on_grid(label, _scan(tmp_path), VALUES), expected)


def test_two_layer_seg_nrrd_later_segments_win_where_they_overlap(tmp_path: Path) -> None:
    layers = np.zeros((*SHAPE, 2), np.uint8)
    layers[0:4, 0:3, 0:2, 0] = 1  # liver, layer 0
    layers[2:5, 1:4, 1:3, 1] = 1  # tumour, layer 1, overlapping the liver
    layers[3, 2, 1, 0] = 2  # vessel, layer 0 (inside the tumour: the vessel, listed last, wins)
    segments = [("liver", 0, 1), ("tumour", 1, 1), ("vessel", 0, 2)]
    label = _slicer_file(tmp_path / "case.seg.nrrd", _sitk(layers, vector=True), segments)
    expected = np.zeros(SHAPE, np.uint8)
    expected[0:4, 0:3, 0:2] = 1
    expected[2:5, 1:4, 1:3] = 2
    expected[3, 2, 1] = 3
    np.testing.assert_array_equal(label_map_on_grid(label, _scan(tmp_path), VALUES), expected)


def test_cropped_and_coarser_seg_nrrd_are_resampled_onto_the_scan(tmp_path: Path) -> None:
    scan = _scan(tmp_path, shape=(8, 8, 8), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    # Slicer's crop to the segments' extent: 2x2x2 voxels starting at voxel (3, 4, 5)
    cropped = np.array([[[1, 0], [0, 1]], [[1, 1], [0, 0]]], np.uint8)
    label = _slicer_file(
        tmp_path / "crop.seg.nrrd", _sitk(cropped, (1.0, 1.0, 1.0), (3.0, 4.0, 5.0)), [("liver", 0, 1)]
    )
    expected = np.zeros((8, 8, 8), np.uint8)
    expected[3:5, 4:6, 5:7] = cropped
    np.testing.assert_array_equal(label_map_on_grid(label, scan, VALUES), expected)
    # twice the voxel size: label voxel (i, j, k) covers scan voxels 2i..2i+1 on each axis
    coarse = np.zeros((4, 4, 4), np.uint8)
    coarse[1, 2, 3] = 1
    coarse[0, 0, 0] = 2
    label = _slicer_file(
        tmp_path / "coarse.seg.nrrd",
        _sitk(coarse, (2.0, 2.0, 2.0), (0.5, 0.5, 0.5)),
        [("liver", 0, 1), ("tumour", 0, 2)],
    )
    on_grid = label_map_on_grid(label, scan, VALUES)
    np.testing.assert_array_equal(on_grid, np.kron(coarse, np.ones((2, 2, 2), np.uint8)))
    assert (on_grid[2:4, 4:6, 6:8] == 1).all() and (on_grid[0:2, 0:2, 0:2] == 2).all()


def test_a_label_file_of_another_region_is_refused_naming_both_files(tmp_path: Path) -> None:
    scan = _scan(tmp_path)
    far = _sitk(np.ones(SHAPE, np.uint8), origin=(500.0, 500.0, 500.0))
    label = _slicer_file(tmp_path / "far.seg.nrrd", far, [("liver", 0, 1)])
    with pytest.raises(DataError) as info:
        label_map_on_grid(label, scan, VALUES)
    assert str(info.value).startswith(f"{label}: no voxel in common with its scan {scan.path}")


def test_a_segment_without_a_value_is_refused(tmp_path: Path) -> None:
    label = _slicer_file(tmp_path / "case.seg.nrrd", _sitk(np.ones(SHAPE, np.uint8)), [("spleen", 0, 1)])
    with pytest.raises(DataError, match=r"case\.seg\.nrrd: segment 'spleen' is not in data\.labels \(known: liver"):
        label_map_on_grid(label, _scan(tmp_path), VALUES)


def test_medseg_seg_nrrd_reads_back_on_a_nifti_scan(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE), tmp_path / "scan.nii.gz")
    scan = read_header(tmp_path / "scan.nii.gz")
    labels_map = np.zeros(SHAPE, np.uint8)
    labels_map[1:4, 2:4, 1:3] = 1
    labels_map[5, 0, 3] = 2
    labels = [Label(1, "liver", (200, 0, 0)), Label(2, "tumour", (0, 200, 0))]
    label = write_seg_nrrd(labels_map, scan, labels, tmp_path / "scan.seg.nrrd")
    np.testing.assert_array_equal(label_map_on_grid(label, scan, {"liver": 1, "tumour": 2}), labels_map)


# --------------------------------------------------------------------------------------------------
# DICOM-SEG
# --------------------------------------------------------------------------------------------------


def ct_series(folder: Path, uid: str = SERIES) -> ScanHeader:
    """A tiny CT series, slices along z."""
    write_dicom_series(_sitk(np.zeros(SHAPE, np.int16)), folder, uid, "ct")
    return read_header(folder)


def dicom_seg_of(scan: ScanHeader, frames: np.ndarray, path: Path, names: list[str], kind: str = "BINARY") -> Path:
    """A DICOM-SEG of ``scan`` made by highdicom: ``frames`` (slice, row, column, segment); empty frames left out."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in dicom_series_files(scan.path)]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, name in enumerate(names, start=1)
    ]
    with locale_kept():
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues[kind],
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=2,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="test",
            manufacturer_model_name="test",
            software_versions="1",
            device_serial_number="0",
            max_fractional_value=100,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        seg.save_as(str(path))
    return path


def overlapping_frames() -> tuple[np.ndarray, np.ndarray]:
    """Two segments on slices 1 and 2 only (frames (z, y, x, segment)), and the expected (x, y, z) label map."""
    frames = np.zeros((SHAPE[2], SHAPE[1], SHAPE[0], 2), np.uint8)
    frames[1, 1:3, 1:4, 0] = 1  # liver
    frames[2, 0:2, 2:6, 0] = 1
    frames[2, 1, 3:5, 1] = 1  # tumour, inside the liver: the later segment wins
    expected = np.zeros(SHAPE, np.uint8)
    expected[1:4, 1:3, 1] = 1
    expected[2:6, 0:2, 2] = 1
    expected[3:5, 1, 2] = 2
    return frames, expected


def test_binary_dicom_seg_with_only_some_frames_in_a_folder(tmp_path: Path) -> None:
    scan = ct_series(tmp_path / "ct")
    frames, expected = overlapping_frames()
    seg = dicom_seg_of(scan, frames, tmp_path / "seg" / "seg.dcm", ["liver", "tumour"])
    (tmp_path / "seg" / "README.txt").write_text("not DICOM")
    assert pydicom.dcmread(seg, stop_before_pixels=True).NumberOfFrames == 3  # the empty frames are not stored
    assert segment_names(seg) == ["liver", "tumour"]
    np.testing.assert_array_equal(label_map_on_grid(seg, scan, VALUES), expected)
    np.testing.assert_array_equal(label_map_on_grid(seg.parent, scan, VALUES), expected)


def test_fractional_dicom_seg_holds_voxels_from_one_half(tmp_path: Path) -> None:
    scan = ct_series(tmp_path / "ct")
    fractions = np.zeros((SHAPE[2], SHAPE[1], SHAPE[0], 1), np.float32)
    fractions[0, 0, 0:4, 0] = (0.2, 0.49, 0.5, 0.9)
    fractions[3, 4, 5, 0] = 1.0
    seg = dicom_seg_of(scan, fractions, tmp_path / "seg.dcm", ["tumour"], kind="FRACTIONAL")
    expected = np.zeros(SHAPE, np.uint8)
    expected[2:4, 0, 0] = 2
    expected[5, 4, 3] = 2
    np.testing.assert_array_equal(label_map_on_grid(seg, scan, VALUES), expected)


def test_medseg_dicom_seg_reads_back(tmp_path: Path) -> None:
    scan = ct_series(tmp_path / "ct")
    labels_map = np.zeros(SHAPE, np.uint8)
    labels_map[0:3, 1:5, 0:2] = 1
    labels_map[4:6, 0:2, 3] = 2
    labels = [Label(1, "liver", (200, 0, 0)), Label(2, "tumour", (0, 200, 0))]
    with locale_kept():
        seg = write_dicom_seg(labels_map, scan, labels, tmp_path / "seg.dcm")
    np.testing.assert_array_equal(label_map_on_grid(seg, scan, {"liver": 1, "tumour": 2}), labels_map)


def test_a_dicom_seg_of_another_series_is_refused(tmp_path: Path) -> None:
    drawn_on = ct_series(tmp_path / "ct")
    other = ct_series(tmp_path / "other", OTHER_SERIES)
    seg = dicom_seg_of(drawn_on, overlapping_frames()[0], tmp_path / "seg.dcm", ["liver", "tumour"])
    with pytest.raises(DataError) as info:
        label_map_on_grid(seg, other, VALUES)
    assert str(info.value) == f"{seg}: references series {SERIES}, not the scan's series {OTHER_SERIES} ({other.path})"

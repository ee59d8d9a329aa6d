"""Images and labels found by their names, whatever the folders are called: 2D images beside their masks (the
``folder`` layout), 3D scans and labels in sibling folders or side by side (the ``volumes`` layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medseg.config.schema import DataConfig, PipelineConfig
from medseg.config.settings import data_settings
from medseg.core.errors import DataError
from medseg.data.check import check_dataset
from medseg.data.discovery import find_cases
from medseg.data.layouts.base import LayoutSettings
from medseg.data.layouts.folder import side_by_side
from medseg.data.layouts.registry import choose_layout, get_layout
from medseg.data.records import Finding
from tests.helpers.paths import SHARED_DATA

SHAPE = (8, 8, 6)
SHARED_NRRD = SHARED_DATA / "ct-mr-examples" / "nrrd"


def _settings(dims: int, **data: Any):
    channels = 3 if dims == 2 else 1
    return data_settings(PipelineConfig(name="t", spatial_dims=dims, model={"in_channels": channels}, data=data))


def _layout(root: Path, dims: int, **data: Any) -> str:
    return choose_layout(root, LayoutSettings.of(DataConfig(**data), dims))[0].name


def _label_3d(case: int) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[1 + case : 4 + case, 2:5, 1:4] = 1
    return label


def _nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 2.0, 1.0])), str(path))


def _sitk(path: Path, array: np.ndarray) -> None:
    """A NRRD / MetaImage file (SimpleITK's arrays are z, y, x)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing((1.5, 1.5, 2.0))
    sitk.WriteImage(image, str(path))


def _scan_and_label(scan: Path, label: Path, case: int) -> None:
    rng = np.random.default_rng(case)
    _nifti(scan, rng.normal(100.0, 10.0, SHAPE).astype(np.float32))
    _nifti(label, _label_3d(case))


# --------------------------------------------------------------------------------------------------
# 2D: images beside their masks
# --------------------------------------------------------------------------------------------------


def test_the_names_tell_images_from_masks_in_one_folder() -> None:
    names = ["case1", "case1_mask", "case2", "case2_segmentation", "case3", "x_seg", "x", "b1_image", "b1_label"]
    pairs, unlabelled, unused = side_by_side(names, ("", "_mask", "_seg", "_segmentation", "_label"))
    assert pairs == {"case1": "case1_mask", "case2": "case2_segmentation", "x": "x_seg", "b1_image": "b1_label"}
    assert unlabelled == ["case3"] and unused == []


def _pair_2d(root: Path, image: str, mask: str, value: int) -> np.ndarray:
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 9, 3), value, np.uint8)).save(root / image)
    label = np.zeros((6, 9), np.uint8)
    label[1:4, value % 5 : value % 5 + 3] = 255
    Image.fromarray(label).save(root / mask)
    return label


def test_2d_images_beside_their_masks_are_found_and_one_without_is_left_out_with_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "polyps"
    expected = {
        "case1": _pair_2d(root, "case1.png", "case1_mask.png", 1),
        "case2": _pair_2d(root, "case2.jpg", "case2_seg.png", 2),
    }
    Image.fromarray(np.zeros((6, 9, 3), np.uint8)).save(root / "case3.png")
    assert _layout(root, 2) == "folder"
    findings: list[Finding] = []
    cases = find_cases(_settings(2), root, findings)
    assert cases.layout == "folder"
    assert cases.records == [
        {"id": "case1", "image": str(root / "case1.png"), "label": str(root / "case1_mask.png")},
        {"id": "case2", "image": str(root / "case2.jpg"), "label": str(root / "case2_seg.png")},
    ]
    for record in cases.records:
        np.testing.assert_array_equal(np.asarray(Image.open(record["label"])), expected[record["id"]])
    unlabelled = root / "case3.png"
    message = f"{unlabelled}: no mask beside this image (left out)"
    assert findings == [Finding("warning", "case3", "unlabelled", message, str(unlabelled))]
    report = check_dataset(_settings(2), root)
    assert [r["id"] for r in report.records] == ["case1", "case2"]
    assert not report.errors and [f.check for f in report.warnings] == ["unlabelled"]


def test_2d_sibling_folders_win_over_files_beside_each_other(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _pair_2d(root / "Original", "a.png", "a.png", 3)
    _pair_2d(root / "Ground Truth", "b.png", "a.png", 3)
    _pair_2d(root, "loose.png", "loose_mask.png", 1)
    records = find_cases(_settings(2), root).records
    assert records == [
        {"id": "a", "image": str(root / "Original" / "a.png"), "label": str(root / "Ground Truth" / "a.png")}
    ]


# --------------------------------------------------------------------------------------------------
# 3D: sibling folders
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scans", "labels", "scan_name", "label_name"),
    [
        ("scans", "labels", "{}.nii.gz", "{}.nii.gz"),
        ("images", "masks", "{}.nii.gz", "{}_seg.nii.gz"),
        ("volumes", "segmentations", "{}.nii", "{}_segmentation.nii.gz"),
        ("images", "labels", "{}_0000.nii.gz", "{}.nii.gz"),  # nnU-Net-like, without imagesTr
    ],
    ids=["scans-labels", "images-masks", "volumes-segmentations", "nnunet-like"],
)
def test_3d_sibling_folders_are_found_by_their_names(
    tmp_path: Path, scans: str, labels: str, scan_name: str, label_name: str
) -> None:
    root = tmp_path / "ds"
    for n, case in enumerate(["p1", "p2"]):
        _scan_and_label(root / scans / scan_name.format(case), root / labels / label_name.format(case), n)
    _nifti(root / scans / scan_name.format("p3"), np.zeros(SHAPE, np.float32))  # no label
    assert _layout(root, 3) == "volumes"
    findings: list[Finding] = []
    cases = find_cases(_settings(3), root, findings)
    assert cases.layout == "volumes"
    assert cases.records == [
        {
            "id": case,
            "image": [str(root / scans / scan_name.format(case))],
            "label": str(root / labels / label_name.format(case)),
        }
        for case in ["p1", "p2"]
    ]
    for n, record in enumerate(cases.records):
        np.testing.assert_array_equal(np.asarray(nib.load(record["label"]).dataobj), _label_3d(n))
    scan = root / scans / scan_name.format("p3")
    assert findings == [
        Finding("warning", "p3", "unlabelled", f"{scan}: no label found in {root / labels} (left out)", str(scan))
    ]


def test_medseg_check_reads_every_case_of_a_scans_and_labels_folder(tmp_path: Path) -> None:
    root = tmp_path / "ct"
    for n, case in enumerate(["a", "b", "c"]):
        _scan_and_label(root / "scans" / f"{case}.nii.gz", root / "labels" / f"{case}.nii.gz", n)
    report = check_dataset(_settings(3), root)
    assert report.layout == "volumes" and report.findings == []
    assert [r["id"] for r in report.records] == ["a", "b", "c"]
    assert "imagesTr" not in report.summary()


def test_two_folders_that_could_each_hold_the_labels_are_named_with_the_keys_that_choose(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for n, case in enumerate(["a", "b"]):
        _scan_and_label(root / "left" / f"{case}.nii.gz", root / "right" / f"{case}.nii.gz", n)
    with pytest.raises(DataError) as info:
        find_cases(_settings(3), root)
    assert str(info.value) == (
        f"{root}: the scans and labels could be left/ + right/ or right/ + left/; set data.images_dir and "
        "data.labels_dir to choose"
    )
    records = find_cases(_settings(3, images_dir="right", labels_dir="left"), root).records
    assert [(r["image"], r["label"]) for r in records] == [
        ([str(root / "right" / f"{c}.nii.gz")], str(root / "left" / f"{c}.nii.gz")) for c in ["a", "b"]
    ]


def test_a_second_channel_is_sent_to_the_multi_channel_layouts(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _scan_and_label(root / "images" / "a_0000.nii.gz", root / "labels" / "a.nii.gz", 0)
    _nifti(root / "images" / "a_0001.nii.gz", np.zeros(SHAPE, np.float32))
    with pytest.raises(DataError) as info:
        find_cases(_settings(3, layout="volumes", images_dir="images", labels_dir="labels"), root)
    assert str(info.value).startswith(f"{root / 'images' / 'a_0001.nii.gz'}: a second channel; the volumes layout")


# --------------------------------------------------------------------------------------------------
# 3D: side by side
# --------------------------------------------------------------------------------------------------


def test_3d_scans_beside_their_labels_in_every_format(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _scan_and_label(root / "a.nii.gz", root / "a_seg.nii.gz", 0)
    _sitk(root / "b.nrrd", np.ones(SHAPE, np.float32))
    _sitk(root / "b_label.nrrd", _label_3d(1))
    _sitk(root / "c.mha", np.ones(SHAPE, np.float32))
    _sitk(root / "c_mask.mha", _label_3d(2))
    _nifti(root / "e.nii", np.ones(SHAPE, np.float32))  # no label
    assert _layout(root, 3) == "volumes"
    findings: list[Finding] = []
    cases = find_cases(_settings(3), root, findings)
    labels = {"a": "a_seg.nii.gz", "b": "b_label.nrrd", "c": "c_mask.mha"}
    scans = {"a": "a.nii.gz", "b": "b.nrrd", "c": "c.mha"}
    assert cases.records == [
        {"id": case, "image": [str(root / scans[case])], "label": str(root / labels[case])} for case in labels
    ]
    for n, case in enumerate(["b", "c"], start=1):
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(root / labels[case]))).transpose(2, 1, 0)
        np.testing.assert_array_equal(label, _label_3d(n))
    assert [(f.severity, f.case, f.check) for f in findings] == [("warning", "e", "unlabelled")]
    assert not check_dataset(_settings(3), root).errors


def test_a_slicer_segmentation_beside_its_scan_is_the_case_label(tmp_path: Path) -> None:
    """The layout only names the ``.seg.nrrd``; reading it is :mod:`medseg.data.label_files`' part."""
    _sitk(tmp_path / "knee.nrrd", np.ones(SHAPE, np.float32))
    (tmp_path / "knee.seg.nrrd").write_bytes(b"NRRD0004")
    cases = get_layout("volumes").find(tmp_path, LayoutSettings.of(DataConfig(), 3))
    assert cases.records == [
        {"id": "knee", "image": [str(tmp_path / "knee.nrrd")], "label": str(tmp_path / "knee.seg.nrrd")}
    ]


def test_an_empty_3d_folder_is_not_a_volumes_folder(tmp_path: Path) -> None:
    _nifti(tmp_path / "only_a_scan.nii.gz", np.zeros(SHAPE, np.float32))
    assert _layout(tmp_path, 3) != "volumes"
    with pytest.raises(DataError) as info:
        find_cases(_settings(3, layout="volumes"), tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: no scans with labels found")


@pytest.mark.skipif(not SHARED_NRRD.is_dir(), reason="../shared/data/ct-mr-examples is not here")
def test_the_shared_nrrd_examples_are_read_side_by_side() -> None:
    """``<case>_image.nrrd`` beside ``<case>_label.nrrd``, as the shared examples ship."""
    report = check_dataset(_settings(3), SHARED_NRRD)
    assert report.layout == "volumes" and not report.errors
    assert [(r["id"], Path(r["label"]).name) for r in report.records] == [
        (f"{case}_image", f"{case}_label.nrrd") for case in ("brain1", "brain2", "breast1")
    ]

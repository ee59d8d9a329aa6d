"""``medseg convert`` (medseg.data.convert): any readable dataset written as nnU-Net v2 raw data, MSD or medseg
folders, names kept; nnU-Net -> msd/folder -> nnU-Net gives the same dataset.json and byte-identical files; labels
renumbered for nnU-Net (ignore highest), lossy images re-encoded as PNG; a target that is not empty, or inside the
source, refused; nothing half-written left behind. nnU-Net's own ``verify_dataset_integrity`` accepts the output
where nnunetv2 can be imported (MEDSEG_NNUNET_PYTHON names an interpreter that has it)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medseg.config.schema import DataConfig
from medseg.core.errors import DataError
from medseg.data.convert import convert_dataset
from medseg.data.layouts.base import LayoutSettings
from tests.helpers.paths import SHARED_DATA

CASES = ["case_001", "case_002", "case_003"]
BRATS = SHARED_DATA / "brats2015-sample"


def settings(dims: int = 3, **data) -> LayoutSettings:
    return LayoutSettings.of(DataConfig(**data), dims)


def nnunet_3d(root: Path, channels: tuple[str, ...] = ("T1", "FLAIR")) -> Path:
    """Two channels (by default), labels 0 background, 1 tumour, 2 ignore; an extra description key nnU-Net allows."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-10, 5, 3)
    for case in CASES:
        label = np.zeros((10, 9, 6), np.uint8)
        label[2:6, 3:7, 1:4] = 1
        label[0, 0, :] = 2
        for channel in range(len(channels)):
            image = rng.normal(0, 1, label.shape).astype(np.float32)
            nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{case}.nii.gz")
    description = {
        "channel_names": {str(c): name for c, name in enumerate(channels)},
        "labels": {"background": 0, "tumour": 1, "ignore": 2},
        "numTraining": len(CASES),
        "file_ending": ".nii.gz",
        "name": "Brain",
        "overwrite_image_reader_writer": "NibabelIOWithReorient",
    }
    (root / "dataset.json").write_text(json.dumps(description))
    return root


def nnunet_2d(root: Path) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for n, case in enumerate(CASES):
        rgb = np.full((12, 16, 3), 40 * n, np.uint8)
        rgb[3:9, 4:12] = (200, 100, 50)
        mask = np.zeros((12, 16), np.uint8)
        mask[3:9, 4:12] = 1
        Image.fromarray(rgb).save(root / "imagesTr" / f"{case}_0000.png")
        Image.fromarray(mask).save(root / "labelsTr" / f"{case}.png")
    description = {
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": len(CASES),
        "file_ending": ".png",
    }
    (root / "dataset.json").write_text(json.dumps(description))
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_nnunet(original: Path, back: Path) -> None:
    """The same dataset.json content and byte-identical image and label files."""
    assert json.loads((back / "dataset.json").read_text()) == json.loads((original / "dataset.json").read_text())
    kept = {k: v for k, v in files_of(back).items() if k.startswith(("imagesTr", "labelsTr"))}
    assert kept == {k: v for k, v in files_of(original).items() if k != "dataset.json"}


@pytest.mark.parametrize("via", ["msd", "folder"])
def test_nnunet_3d_round_trip_is_byte_identical(tmp_path: Path, via: str) -> None:
    source = nnunet_3d(tmp_path / "Dataset001_Brain")
    middle = convert_dataset(source, tmp_path / via, via, settings())
    assert middle.cases == 3 and middle.rewritten == 0 and middle.copied == 9
    back = convert_dataset(tmp_path / via, tmp_path / "back", "nnunet", settings())
    assert back.mapping == {0: 0, 1: 1, 2: 2} and back.rewritten == 0
    assert_same_nnunet(source, tmp_path / "back")


def test_nnunet_3d_as_msd_lists_its_channels_and_names(tmp_path: Path) -> None:
    convert_dataset(nnunet_3d(tmp_path / "src"), tmp_path / "msd", "msd", settings())
    description = json.loads((tmp_path / "msd" / "dataset.json").read_text())
    assert description["name"] == "Brain" and description["modality"] == {"0": "T1", "1": "FLAIR"}
    assert description["labels"] == {"0": "background", "1": "tumour", "2": "ignore"}
    assert description["training"][0] == {
        "id": "case_001",
        "image": ["imagesTr/case_001_0000.nii.gz", "imagesTr/case_001_0001.nii.gz"],
        "label": "labelsTr/case_001.nii.gz",
    }
    assert description["numTraining"] == 3 and description["test"] == []


def test_nnunet_3d_as_folders_has_one_folder_per_channel(tmp_path: Path) -> None:
    convert_dataset(nnunet_3d(tmp_path / "src"), tmp_path / "out", "folder", settings())
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["FLAIR", "T1", "labels"]
    assert (tmp_path / "out" / "T1" / "case_002.nii.gz").read_bytes() == (
        tmp_path / "src" / "imagesTr" / "case_002_0000.nii.gz"
    ).read_bytes()


def test_a_one_channel_3d_dataset_goes_to_images_and_labels_and_back(tmp_path: Path) -> None:
    source = nnunet_3d(tmp_path / "Dataset004_CT", ("CT",))
    convert_dataset(source, tmp_path / "folder", "folder", settings())
    assert sorted(p.name for p in (tmp_path / "folder").iterdir() if p.is_dir()) == ["images", "labels"]
    assert (tmp_path / "folder" / "images" / "case_003.nii.gz").is_file()
    convert_dataset(tmp_path / "folder", tmp_path / "back", "nnunet", settings())
    assert_same_nnunet(source, tmp_path / "back")


@pytest.mark.parametrize("via", ["msd", "folder"])
def test_nnunet_2d_rgb_round_trip_is_byte_identical(tmp_path: Path, via: str) -> None:
    source = nnunet_2d(tmp_path / "Dataset002_Skin")
    convert_dataset(source, tmp_path / via, via, settings(2))
    convert_dataset(tmp_path / via, tmp_path / "back", "nnunet", settings())  # dims from the files: 2D
    assert_same_nnunet(source, tmp_path / "back")


def jpeg_folder(root: Path) -> dict[str, np.ndarray]:
    """PH2-like: JPEG images, PNG masks 0/255; returns the decoded JPEG pixels by case."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    decoded = {}
    for n, case in enumerate(["IMD 002", "IMD003"]):
        rgb = np.zeros((20, 24, 3), np.uint8)
        rgb[..., 0] = np.arange(24) * 10
        rgb[5:15, 6:18, 1] = 150 + n
        Image.fromarray(rgb).save(root / "images" / f"{case}.jpg", quality=80)
        decoded[case] = np.asarray(Image.open(root / "images" / f"{case}.jpg").convert("RGB"))
        mask = np.zeros((20, 24), np.uint8)
        mask[5:15, 6:18] = 255
        Image.fromarray(mask).save(root / "masks" / f"{case}.png")
    return decoded


def test_jpeg_images_become_lossless_png_and_labels_consecutive(tmp_path: Path) -> None:
    decoded = jpeg_folder(tmp_path / "ph2")
    converted = convert_dataset(tmp_path / "ph2", tmp_path / "nn", "nnunet", settings())
    out = tmp_path / "nn"
    assert converted.mapping == {0: 0, 255: 1} and converted.renamed == {"IMD 002": "IMD_002"}
    description = json.loads((out / "dataset.json").read_text())
    assert description == {
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "label_255": 1},
        "numTraining": 2,
        "file_ending": ".png",
    }
    np.testing.assert_array_equal(np.asarray(Image.open(out / "imagesTr" / "IMD_002_0000.png")), decoded["IMD 002"])
    expected = np.zeros((20, 24), np.uint8)
    expected[5:15, 6:18] = 1
    label = Image.open(out / "labelsTr" / "IMD003.png")
    assert label.mode == "L"
    np.testing.assert_array_equal(np.asarray(label), expected)
    saved = json.loads((out / "medseg_label_mapping.json").read_text())
    assert saved["labels"] == {"0": 0, "255": 1} and saved["case_ids"] == {"IMD 002": "IMD_002"}


def test_labelme_annotations_give_their_drawn_label_maps(tmp_path: Path) -> None:
    """An annotation-file layout: the label map drawn from the polygon (cached as PNG) is the case's label."""
    (tmp_path / "shots").mkdir()
    Image.fromarray(np.full((10, 12, 3), 90, np.uint8)).save(tmp_path / "shots" / "a.png")
    shape = {"label": "lesion", "points": [[2, 2], [8, 6]], "shape_type": "rectangle"}
    annotation = {"version": "5.4.1", "shapes": [shape], "imagePath": "a.png", "imageHeight": 10, "imageWidth": 12}
    (tmp_path / "shots" / "a.json").write_text(json.dumps(annotation))
    layout = settings(2, cache_dir=tmp_path / "cache")
    converted = convert_dataset(tmp_path / "shots", tmp_path / "nn", "nnunet", layout)
    assert converted.mapping == {0: 0, 1: 1}
    expected = np.zeros((10, 12), np.uint8)
    expected[2:7, 2:9] = 1
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "nn" / "labelsTr" / "a.png")), expected)
    assert (tmp_path / "nn" / "imagesTr" / "a_0000.png").read_bytes() == (tmp_path / "shots" / "a.png").read_bytes()


def msd_4d(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MSD as it ships: one 4D image per case, labels 0, 1 (named ignore), 3 and 5 with gaps; float32 labels."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    image = np.random.default_rng(1).normal(size=(8, 7, 5, 2)).astype(np.float32)
    label = np.zeros((8, 7, 5), np.float32)
    label[1:3], label[4:6], label[7, 0, 0] = 3, 5, 1
    nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / "prostate_00.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / "prostate_00.nii.gz")
    description = {
        "name": "Prostate",
        "licence": "CC-BY-SA 4.0",
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "ignore", "3": "PZ", "5": "TZ"},
        "training": [{"image": "./imagesTr/prostate_00.nii.gz", "label": "./labelsTr/prostate_00.nii.gz"}],
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(description))
    return image, label, affine


def test_msd_4d_to_nnunet_splits_channels_and_puts_ignore_highest(tmp_path: Path) -> None:
    image, label, affine = msd_4d(tmp_path / "Task05_Prostate")
    converted = convert_dataset(tmp_path / "Task05_Prostate", tmp_path / "nn", "nnunet", settings())
    assert converted.mapping == {0: 0, 3: 1, 5: 2, 1: 3}
    out = tmp_path / "nn"
    description = json.loads((out / "dataset.json").read_text())
    assert description["labels"] == {"background": 0, "PZ": 1, "TZ": 2, "ignore": 3}
    assert description["channel_names"] == {"0": "T2", "1": "ADC"}
    assert description["name"] == "Prostate" and description["licence"] == "CC-BY-SA 4.0"
    for channel in (0, 1):
        written = nib.load(out / "imagesTr" / f"prostate_00_{channel:04d}.nii.gz")
        np.testing.assert_array_equal(written.get_fdata(dtype=np.float32), image[..., channel])
        np.testing.assert_allclose(written.affine, affine)
    written = nib.load(out / "labelsTr" / "prostate_00.nii.gz")
    expected = np.zeros(label.shape, np.float32)
    expected[1:3], expected[4:6], expected[7, 0, 0] = 1, 2, 3
    assert written.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected)
    np.testing.assert_allclose(written.affine, affine)


def test_a_target_that_is_not_empty_or_inside_the_source_is_refused(tmp_path: Path) -> None:
    source = nnunet_2d(tmp_path / "src")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("keep me")
    with pytest.raises(DataError, match=r"full: already exists and is not empty"):
        convert_dataset(source, tmp_path / "full", "msd", settings())
    with pytest.raises(DataError, match=r"inside the source dataset"):
        convert_dataset(source, source / "converted", "msd", settings())
    with pytest.raises(DataError, match=r"--to nifti: expected one of nnunet, msd, folder"):
        convert_dataset(source, tmp_path / "new", "nifti", settings())
    (tmp_path / "empty").mkdir()
    convert_dataset(source, tmp_path / "empty", "folder", settings())
    assert (tmp_path / "empty" / "masks" / "case_001.png").is_file()


def test_a_failed_conversion_leaves_nothing_behind(tmp_path: Path) -> None:
    source = nnunet_3d(tmp_path / "src")
    (source / "labelsTr" / "case_003.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(DataError, match=r"case_003\.nii\.gz"):
        convert_dataset(source, tmp_path / "out", "nnunet", settings())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@functools.cache
def nnunet_python() -> str | None:
    """An interpreter that imports nnunetv2: $MEDSEG_NNUNET_PYTHON, else this one; None if neither does."""
    python = os.environ.get("MEDSEG_NNUNET_PYTHON", sys.executable)
    probe = subprocess.run([python, "-c", "import nnunetv2"], capture_output=True, timeout=120)
    return python if probe.returncode == 0 else None


def verify_with_nnunet(dataset: Path) -> subprocess.CompletedProcess[str]:
    python = nnunet_python()
    assert python is not None
    env = {**os.environ, **{k: str(dataset.parent) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}}
    code = (
        "import sys\nfrom nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity\n"
        "verify_dataset_integrity(sys.argv[1], 1)"
    )
    return subprocess.run([python, "-c", code, str(dataset)], capture_output=True, text=True, env=env, timeout=300)


def brats_as_nnunet(source: Path) -> Path:
    """3 real BraTS cases (FLAIR, T1c, float32 labels 0-4) laid out as nnU-Net raw data (links to the shared files)."""
    (source / "imagesTr").mkdir(parents=True)
    (source / "labelsTr").mkdir()
    cases = sorted(p.name.removesuffix(".nii.gz") for p in (BRATS / "labelsTr").glob("*.nii.gz"))[:3]
    for case in cases:
        for channel, folder in enumerate(("imagesTr", "imagesTr_t1c")):
            (source / "imagesTr" / f"{case}_{channel:04d}.nii.gz").symlink_to(BRATS / folder / f"{case}.nii.gz")
        (source / "labelsTr" / f"{case}.nii.gz").symlink_to(BRATS / "labelsTr" / f"{case}.nii.gz")
    labels = {"background": 0, "necrosis": 1, "edema": 2, "non-enhancing": 3, "enhancing": 4}
    description = {"channel_names": {"0": "FLAIR", "1": "T1c"}, "labels": labels, "numTraining": 3}
    (source / "dataset.json").write_text(json.dumps({**description, "file_ending": ".nii.gz"}))
    return source


@pytest.mark.skipif(not BRATS.is_dir(), reason=f"shared data not present: {BRATS}")
def test_brats_cases_round_trip_nnunet_msd_nnunet(tmp_path: Path) -> None:
    source = brats_as_nnunet(tmp_path / "Dataset100_BraTS")
    convert_dataset(source, tmp_path / "msd", "msd", settings())
    back = convert_dataset(tmp_path / "msd", tmp_path / "back", "nnunet", settings())
    assert back.mapping == {v: v for v in range(5)} and back.copied == 9
    assert_same_nnunet(source, tmp_path / "back")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["2d-jpeg", "3d-msd-4d", "3d-brats"])
def test_nnunet_verifies_the_converted_dataset(tmp_path: Path, kind: str) -> None:
    """nnU-Net's own check (about 5-10 s each: nnunetv2's import and its worker pool)."""
    if nnunet_python() is None:
        pytest.skip(
            "nnunetv2 is not importable here: set MEDSEG_NNUNET_PYTHON to a Python that has it (docs/workflow.md)"
        )
    if kind == "3d-brats" and not BRATS.is_dir():
        pytest.skip(f"shared data not present: {BRATS}")
    {"2d-jpeg": jpeg_folder, "3d-msd-4d": msd_4d, "3d-brats": brats_as_nnunet}[kind](tmp_path / "src")
    target = tmp_path / "raw" / "Dataset001_Converted"
    convert_dataset(tmp_path / "src", target, "nnunet", settings())
    result = verify_with_nnunet(target)
    assert result.returncode == 0, result.stderr[-2000:]

"""Medical Segmentation Decathlon datasets read completely: the ``labels`` map taken into ``data.labels``, the
``test`` list read by ``medseg predict``, 4D multi-channel images, and every bad training entry reported at once."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.config.schema import PipelineConfig
from medseg.config.settings import data_settings
from medseg.core.errors import DataError
from medseg.data.check import check_dataset
from medseg.data.dataset import prepare_data
from medseg.data.inputs import predict_inputs

CASES = ["BRATS_001", "BRATS_002", "BRATS_003", "BRATS_004"]


def msd_4d(root: Path, labels: dict | None = None, training: list | None = None) -> Path:
    """As Task01_BrainTumour ships: one 4D file per case (four modalities), labels 0..3, a ``test`` list."""
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for n, case in enumerate(CASES):
        label = np.zeros((6, 6, 4), np.uint8)
        label[1:3, 1:3, 1:3], label[3:5, 3:5, 1:3] = 1, 3
        image = np.random.default_rng(n).normal(size=(6, 6, 4, 4)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / f"{case}.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 4, 4), np.float32), np.eye(4)), root / "imagesTs" / "BRATS_485.nii.gz")
    description = {
        "name": "BRATS",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": labels or {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": len(CASES),
        "numTest": 1,
        "training": training or [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in CASES],
        "test": ["./imagesTs/BRATS_485.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(description))
    return root


def settings(root: Path, tmp_path: Path, **data):
    data = {"root": root, "dataset_dir": "", "split": {"file": str(tmp_path / "splits.json")}, **data}
    return data_settings(PipelineConfig(name="t", spatial_dims=3, model={"in_channels": 4}, data=data))


def test_msd_label_names_become_data_labels_where_the_pipeline_leaves_them_unset(tmp_path: Path) -> None:
    root = msd_4d(tmp_path / "Task01_BrainTumour")
    prepared = prepare_data(settings(root, tmp_path))
    assert [r["image"] for r in prepared.records][0] == [str(root / "imagesTr" / "BRATS_001.nii.gz")]  # 4D: one file
    assert prepared.resolved == {"data.labels": {1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}}
    assert prepare_data(settings(root, tmp_path, labels={1: "oedema"})).resolved == {}


def test_label_values_the_msd_labels_do_not_list_are_errors_naming_the_file(tmp_path: Path) -> None:
    root = msd_4d(tmp_path / "Task01", labels={"0": "background", "1": "edema", "2": "necrosis"})
    report = check_dataset(settings(root, tmp_path), root)
    assert [(f.case, f.message) for f in report.errors] == [
        (
            case,
            f"{root / 'labelsTr' / case}.nii.gz: label value(s) 3 not listed in {root / 'dataset.json'}'s labels "
            "(0, 1, 2)",
        )
        for case in CASES
    ]


def test_every_bad_training_entry_and_label_is_one_finding(tmp_path: Path) -> None:
    training = [
        {"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"},
        {"image": "./imagesTr/BRATS_002.nii.gz"},
        "./imagesTr/BRATS_003.nii.gz",
        {"image": [], "label": "./labelsTr/BRATS_004.nii.gz"},
    ]
    root = msd_4d(tmp_path / "Task01", labels={"0": "background", "one": "edema", "3": "tumour"}, training=training)
    report = check_dataset(settings(root, tmp_path), root)
    path = root / "dataset.json"
    assert [f.message for f in report.errors if not f.case] == [
        f"{path}: labels entry 'one': 'edema' must be a label value and its name",
        f"{path}: training entry 1 has no 'label'",
        f"{path}: expected a 'training' list of {{image, label}} entries (training entry 2 is a str)",
        f"{path}: training entry 3: 'image' must be a path or a non-empty list of paths",
    ]
    assert [r["id"] for r in report.records] == ["BRATS_001"]
    with pytest.raises(DataError, match="labels entry 'one'"):
        from medseg.data.layouts.base import LayoutSettings
        from medseg.data.layouts.msd import MsdLayout

        MsdLayout().find(root, LayoutSettings.of(settings(root, tmp_path).data, 3))


def test_predict_reads_the_test_list_of_a_dataset_folder_or_its_json(tmp_path: Path) -> None:
    root = msd_4d(tmp_path / "Task01")
    expected = [{"id": "BRATS_485", "image": [str(root / "imagesTs" / "BRATS_485.nii.gz")]}]
    assert predict_inputs(root, 3, 4) == expected
    assert predict_inputs(root / "dataset.json", 3, 4) == expected
    description = json.loads((root / "dataset.json").read_text())
    description["test"] = [{"image": "./imagesTs/BRATS_485.nii.gz"}]
    (root / "dataset.json").write_text(json.dumps(description))
    assert predict_inputs(root, 3, 4) == expected


def test_2d_nnunet_test_images_drop_their_channel_suffix(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "imagesTs"
    folder.mkdir()
    for name in ("ISIC_01_0000.png", "ISIC_02_0000.png"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / name)
    assert [r["id"] for r in predict_inputs(folder, 2, 3)] == ["ISIC_01", "ISIC_02"]
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "other.png")
    assert [r["id"] for r in predict_inputs(folder, 2, 3)] == ["ISIC_01_0000", "ISIC_02_0000", "other"]

"""nnU-Net v2 raw datasets read as they ship (documentation/dataset_format.md): detected from their dataset.json (not
taken for MSD), 2D and 3D, the labels checked as nnU-Net checks them, their names and ``ignore`` taken into the
pipeline where it leaves them unset."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medseg.config.schema import PipelineConfig
from medseg.config.settings import data_settings
from medseg.core.errors import DataError
from medseg.data.datalist import build_datalist
from medseg.data.dataset import prepare_data

CASES = ["case_001", "case_002", "case_003", "case_004", "case_005", "case_006"]


def dataset_json(root: Path, labels: dict, channels: dict, ending: str) -> None:
    """As nnunetv2's ``generate_dataset_json`` writes it."""
    description = {"channel_names": channels, "labels": labels, "numTraining": len(CASES), "file_ending": ending}
    (root / "dataset.json").write_text(json.dumps(description, indent=4))


def volumes_3d(root: Path, labels: dict | None = None) -> Path:
    rng = np.random.default_rng(0)
    for case in CASES:
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        label = np.zeros((12, 12, 8), np.uint8)
        label[3:8, 3:8, 2:6] = 1
        for channel in (0, 1):
            image = rng.normal(0, 1, label.shape).astype(np.float32) + label
            nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / f"{case}.nii.gz")
    dataset_json(root, labels or {"background": 0, "tumour": 1}, {"0": "T1", "1": "FLAIR"}, ".nii.gz")
    return root


def images_2d(root: Path, labels: dict | None = None) -> Path:
    for n, case in enumerate(CASES):
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        rgb = np.full((40, 48, 3), 60 + 10 * n, np.uint8)
        rgb[10:30, 12:36] = 200
        mask = np.zeros((40, 48), np.uint8)
        mask[10:30, 12:36] = 1
        Image.fromarray(rgb).save(root / "imagesTr" / f"{case}_0000.png")
        Image.fromarray(mask).save(root / "labelsTr" / f"{case}.png")
    dataset_json(root, labels or {"background": 0, "lesion": 1}, {"0": "R", "1": "G", "2": "B"}, ".png")
    return root


def settings(root: Path, dims: int, **data):
    channels = 3 if dims == 2 else 2
    cfg = PipelineConfig(
        name="t", spatial_dims=dims, model={"in_channels": channels}, data={"root": root, "dataset_dir": "", **data}
    )
    return data_settings(cfg)


def test_a_3d_nnunet_dataset_is_not_taken_for_msd(tmp_path: Path) -> None:
    root = volumes_3d(tmp_path / "Dataset001_Brain")
    datalist = build_datalist(settings(root, 3), root)
    assert datalist.check.layout == "nnunet" and "(nnunet layout)" in datalist.check.summary()
    assert [r["id"] for r in datalist.records] == CASES
    assert datalist.records[0]["image"] == [str(root / "imagesTr" / f"case_001_{c:04d}.nii.gz") for c in (0, 1)]
    assert datalist.records[0]["label"] == str(root / "labelsTr" / "case_001.nii.gz")


def test_a_2d_nnunet_dataset_holds_rgb_in_one_file(tmp_path: Path) -> None:
    root = images_2d(tmp_path / "Dataset002_Skin")
    datalist = build_datalist(settings(root, 2), root)
    assert datalist.check.layout == "nnunet" and not datalist.check.errors
    assert datalist.records[0] == {
        "id": "case_001",
        "image": str(root / "imagesTr" / "case_001_0000.png"),
        "label": str(root / "labelsTr" / "case_001.png"),
    }


def test_label_names_and_ignore_come_from_dataset_json_where_the_pipeline_leaves_them_unset(tmp_path: Path) -> None:
    labels = {"background": 0, "lesion": 1, "ignore": 2}
    root = images_2d(tmp_path / "Dataset003_Ignore", labels)
    split = {"split": {"file": str(tmp_path / "splits.json")}}
    taken = prepare_data(settings(root, 2, **split)).resolved
    assert taken == {"data.labels": {1: "lesion"}, "data.ignore_label": 2}
    named = prepare_data(settings(root, 2, labels={1: "mole"}, ignore_label=9, **split)).resolved
    assert named == {}
    remapped = prepare_data(settings(root, 2, foreground_labels=[1], **split)).resolved
    assert remapped == {"data.ignore_label": 2}  # raw label names name no model class once labels are remapped


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"background": 0, "lesion": 2}, "label values must be consecutive from 0 (got 0, 2)"),
        ({"background": 1, "lesion": 0}, "labels.background must be 0 (nnU-Net's background)"),
        ({"background": 0, "ignore": 1, "lesion": 2}, "labels.ignore must have the highest value (2), not 1"),
        (
            {"background": 0, "lesion": "one"},
            "labels.lesion must be an integer value (or a list of values for a region)",
        ),
    ],
)
def test_labels_nnunet_would_refuse_are_refused_in_one_line(tmp_path: Path, labels: dict, message: str) -> None:
    root = images_2d(tmp_path / "Dataset004_Bad", labels)
    with pytest.raises(DataError) as info:
        build_datalist(settings(root, 2), root)
    assert str(info.value) == f"{root / 'dataset.json'}: {message}"


def test_a_case_missing_a_channel_is_named(tmp_path: Path) -> None:
    root = volumes_3d(tmp_path / "Dataset005_Missing")
    (root / "imagesTr" / "case_003_0001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case 'case_003' is missing channel 0001 \(.*case_003_0001.nii.gz not found"):
        build_datalist(settings(root, 3), root)


def test_label_names_the_model_cannot_hold_are_one_line_naming_the_dataset(tmp_path: Path) -> None:
    from medseg.config.loading import load_config
    from medseg.core.errors import ConfigError
    from medseg.pipeline.run import run_pipeline
    from tests.helpers.data import tiny_overrides
    from tests.helpers.paths import REPO

    root = images_2d(tmp_path / "Dataset007_Two", {"background": 0, "nevus": 1, "melanoma": 2})
    overrides = [*tiny_overrides(tmp_path, root), "data.layout=auto", "data.labels=null"]
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", overrides)
    with pytest.raises(ConfigError) as info:
        run_pipeline(cfg, run_name="too-many-classes")
    assert str(info.value) == (
        f"{root}: the dataset's description does not fit this pipeline (data.labels: 2 not a class of this model "
        "(classes 1..1; with data.label_mapping, name the classes the raw labels map to))"
    )


@pytest.mark.slow
def test_one_epoch_from_a_2d_nnunet_dataset_names_its_metric_after_the_label(tmp_path: Path) -> None:
    from medseg.config.loading import load_config
    from medseg.pipeline.run import run_pipeline
    from tests.helpers.data import tiny_overrides
    from tests.helpers.paths import REPO

    root = images_2d(tmp_path / "Dataset006_Lesion", {"background": 0, "skin_lesion": 1})
    overrides = [*tiny_overrides(tmp_path, root), "data.layout=auto", "data.labels=null", "training.epochs=1"]
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", [*overrides, "stages=[train, evaluate]"])
    result = run_pipeline(cfg, run_name="nnunet-2d")
    assert "test_dice_skin_lesion" in result.metrics

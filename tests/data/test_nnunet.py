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
    assert datalist.check.layout == "nnunet" and "(nnunet layout; auto: " in datalist.check.summary()
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


# --------------------------------------------------------------------------------------------------
# Channel names choose the normalisation; regions; bad input reported all at once (issue #25)
# --------------------------------------------------------------------------------------------------

# the exact dataset.json nnunetv2 2.8.1's generate_dataset_json writes for these arguments (pasted from its output):
# generate_dataset_json(d, {0: "CT", 1: "PET"}, {"background": 0, "lesion": 1}, 6, ".nii.gz",
#                       dataset_name="Dataset010_CtPet")
CT_PET_JSON = {
    "channel_names": {"0": "CT", "1": "PET"},
    "labels": {"background": 0, "lesion": 1},
    "numTraining": 6,
    "file_ending": ".nii.gz",
    "licence": "Whoever converted this dataset was lazy and didn't look it up!",
    "converted_by": "Please enter your name, especially when sharing datasets with others in a common infrastructure!",
    "name": "Dataset010_CtPet",
}
# generate_dataset_json(d, {0: "T1", 1: "FLAIR"}, {"background": 0, "whole tumor": [1, 2, 3], "tumor_core": [2, 3],
#     "enhancing_tumor": 3}, 6, ".nii.gz", regions_class_order=(1, 2, 3), dataset_name="Dataset011_Regions",
#     overwrite_image_reader_writer="SimpleITKIO")
REGIONS_JSON = {
    "channel_names": {"0": "T1", "1": "FLAIR"},
    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3},
    "numTraining": 6,
    "file_ending": ".nii.gz",
    "licence": "Whoever converted this dataset was lazy and didn't look it up!",
    "converted_by": "Please enter your name, especially when sharing datasets with others in a common infrastructure!",
    "name": "Dataset011_Regions",
    "overwrite_image_reader_writer": "SimpleITKIO",
    "regions_class_order": [1, 2, 3],
}


def small_3d(root: Path, description: dict, label_value: int = 1) -> Path:
    """Six 6x6x4 two-channel cases (channel 0 CT-like), a 2x2x2 block of ``label_value``, and ``description``."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for n, case in enumerate(CASES):
        label = np.zeros((6, 6, 4), np.uint8)
        label[2:4, 2:4, 1:3] = label_value
        ct = np.full(label.shape, -1000.0, np.float32)
        ct[label > 0] = 10.0 * (n + 1) + np.arange(8, dtype=np.float32)
        pet = np.arange(label.size, dtype=np.float32).reshape(label.shape) * (n + 1)
        for channel, image in enumerate((ct, pet)):
            nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / f"{case}.nii.gz")
    (root / "dataset.json").write_text(json.dumps(description, indent=4))
    return root


def test_channel_names_choose_ct_and_zscore_with_the_window_measured_on_the_training_foreground(
    tmp_path: Path,
) -> None:
    root = small_3d(tmp_path / "Dataset010_CtPet", CT_PET_JSON)
    prepared = prepare_data(settings(root, 3, split={"file": str(tmp_path / "splits.json")}))
    intensity = prepared.resolved["preprocessing.intensity"]
    assert intensity["kind"] == "none" and intensity["channels"] == ["ct", "zscore"]
    train = [int(case[-1]) for case in prepared.splits["train"]]  # case_00n: foreground 10n + 0..7
    foreground = np.concatenate([10.0 * n + np.arange(8) for n in train])
    low, high = np.percentile(foreground, [0.5, 99.5])
    mean, std = foreground.mean(), foreground.std()
    assert intensity["window"] == pytest.approx([low, high], abs=1e-3)
    assert intensity["scaled_to"] == pytest.approx([(low - mean) / std, (high - mean) / std], abs=1e-3)
    cfg = PipelineConfig(name="t", spatial_dims=3, model={"in_channels": 2}).with_values(prepared.resolved)
    assert cfg.preprocessing.intensity.channel_kinds(2) == ["ct", "zscore"]
    configured = settings(root, 3, split={"file": str(tmp_path / "splits.json")})
    configured = data_settings(
        PipelineConfig(
            name="t",
            spatial_dims=3,
            model={"in_channels": 2},
            preprocessing={"intensity": {"kind": "mri"}},
            data={"root": root, "dataset_dir": "", "split": {"file": str(tmp_path / "splits.json")}},
        )
    )
    assert "preprocessing.intensity" not in prepare_data(configured).resolved  # the pipeline's own wins


def test_regions_become_data_regions_in_painting_order_with_safe_names(tmp_path: Path) -> None:
    root = small_3d(tmp_path / "Dataset011_Regions", REGIONS_JSON, label_value=3)
    resolved = prepare_data(settings(root, 3, split={"file": str(tmp_path / "splits.json")})).resolved
    assert {k: v for k, v in resolved.items() if not k.startswith("preprocessing")} == {
        "data.regions": {"whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]},
        "data.region_order": ["whole_tumor", "tumor_core", "enhancing_tumor"],
        "model.out_channels": 3,
    }
    assert resolved["preprocessing.intensity"] == {"kind": "zscore"}  # T1, FLAIR: nnU-Net's default z-score
    cfg = PipelineConfig(name="t", spatial_dims=3, model={"in_channels": 2}).with_values(resolved)
    assert cfg.model.out_channels == 3 and cfg.data.region_order == ["whole_tumor", "tumor_core", "enhancing_tumor"]
    own = settings(root, 3, split={"file": str(tmp_path / "splits.json")}, regions={"tumour": [1, 2, 3]})
    assert "data.regions" not in prepare_data(own).resolved  # the pipeline's regions win


def test_every_problem_of_an_nnunet_dataset_is_one_finding_naming_its_file(tmp_path: Path) -> None:
    from medseg.data.check import check_dataset

    description = {
        "channel_names": ["T1", "FLAIR"],
        "labels": {"background": 0, "tumour": 3, "ignore": 1},
        "numTraining": 9,
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "NibabelIOWithReorient",
    }
    root = volumes_3d(tmp_path / "Dataset012_Bad")
    (root / "dataset.json").write_text(json.dumps(description))
    (root / "imagesTr" / "case_002_0001.nii.gz").unlink()
    (root / "labelsTr" / "case_004.nii.gz").unlink()
    label = np.zeros((12, 12, 8), np.uint8)
    label[1, 1, 1] = 5
    nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / "case_005.nii.gz")
    report = check_dataset(settings(root, 3), root)
    found = sorted((f.severity, f.case, f.message) for f in report.findings if f.check != "empty label")
    path = root / "dataset.json"
    assert found == [
        (
            "error",
            "",
            f'{path}: \'channel_names\' must be a mapping of channel index to name, e.g. {{"0": "CT"}}, '
            'not ["T1", "FLAIR"]',
        ),
        ("error", "", f"{path}: label values must be consecutive from 0 (got 0, 1, 3)"),
        ("error", "", f"{path}: labels.ignore must have the highest value (3), not 1"),
        (
            "error",
            "case_002",
            f"{root / 'imagesTr'}: case 'case_002' is missing channel 0001 "
            f"({root / 'imagesTr' / 'case_002_0001.nii.gz'} not found)",
        ),
        ("error", "case_004", f"{root / 'labelsTr' / 'case_004.nii.gz'}: label file not found for case 'case_004'"),
        (
            "error",
            "case_005",
            f"{root / 'labelsTr' / 'case_005.nii.gz'}: label value(s) 5 not listed in {path}'s labels (0, 1, 3)",
        ),
        ("warning", "", f"{path}: numTraining is 9 but {root / 'imagesTr'} holds 6 case(s)"),
        (
            "warning",
            "",
            f"{path}: overwrite_image_reader_writer 'NibabelIOWithReorient' is not used; medseg reads "
            "each format itself",
        ),
    ]


def test_medseg_run_refuses_a_bad_nnunet_dataset_before_writing_anything(tmp_path: Path) -> None:
    from medseg.config.loading import load_config
    from medseg.data.check import DataCheckError
    from medseg.pipeline.run import run_pipeline
    from tests.helpers.data import tiny_overrides
    from tests.helpers.paths import REPO

    root = images_2d(tmp_path / "Dataset013_Refused")
    (root / "labelsTr" / "case_002.png").unlink()
    description = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**description, "file_ending": 7}))
    overrides = [*tiny_overrides(tmp_path, root), "data.layout=auto", "data.labels=null"]
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", overrides)
    with pytest.raises(DataCheckError) as info:
        run_pipeline(cfg, run_name="refused")
    assert [f.message for f in info.value.report.errors] == [
        f"{root / 'dataset.json'}: 'file_ending' must be a file ending like '.nii.gz', not 7",
        f"{root / 'labelsTr' / 'case_002.png'}: label file not found for case 'case_002'",
    ]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "splits.json").exists()


@pytest.mark.parametrize("channels", [1, 2])
def test_predicting_imagests_writes_case_named_masks_as_nnunet_does(tmp_path: Path, channels: int) -> None:
    import torch

    from medseg.config.settings import inference_settings
    from medseg.infer.predictor import Predictor
    from medseg.outputs.batch import predict_folder
    from tests.helpers.models import ThresholdNet

    root = tmp_path / "Dataset014_Test"
    (root / "imagesTs").mkdir(parents=True)
    for case in ("liver_7", "liver_9"):
        for channel in range(channels):
            image = np.zeros((8, 8, 6), np.float32)
            image[2:6, 2:6, 1:5] = 1.0
            nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTs" / f"{case}_{channel:04d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({**CT_PET_JSON, "channel_names": {"0": "CT"}}))
    cfg = PipelineConfig(
        name="t",
        spatial_dims=3,
        preprocessing={"patch_size": [8, 8, 8], "intensity": {"kind": "none"}, "crop_foreground": False},
        model={"in_channels": channels},
        inference={"backend": "torch"},
    )
    predictor = Predictor(ThresholdNet((0.5,)).eval(), inference_settings(cfg))
    with torch.no_grad():
        report = predict_folder(predictor, root, tmp_path / "out")  # the dataset folder: its imagesTs
    assert sorted(report.written) == ["liver_7", "liver_9"]
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["liver_7.nii.gz", "liver_9.nii.gz"]
    mask = np.asarray(nib.load(tmp_path / "out" / "masks" / "liver_7.nii.gz").dataobj)
    expected = np.zeros((8, 8, 6), np.uint8)
    expected[2:6, 2:6, 1:5] = 1
    np.testing.assert_array_equal(mask, expected)


def test_a_2d_mask_value_the_dataset_json_does_not_list_is_an_error_naming_both_files(tmp_path: Path) -> None:
    from medseg.data.check import check_dataset

    root = images_2d(tmp_path / "Dataset002_Skin", {"background": 0, "lesion": 1, "nevus": 2})
    mask = np.asarray(Image.open(root / "labelsTr" / f"{CASES[1]}.png")).copy()
    mask[0:2, 0:2] = 5
    Image.fromarray(mask).save(root / "labelsTr" / f"{CASES[1]}.png")
    report = check_dataset(settings(root, 2, foreground_labels=[1, 2]), root)
    assert [(f.case, f.check, f.message) for f in report.errors] == [
        (
            CASES[1],
            "unlisted labels",
            f"{root / 'labelsTr' / f'{CASES[1]}.png'}: label value(s) 5 not listed in {root / 'dataset.json'}'s "
            "labels (0, 1, 2)",
        )
    ]
    binary = images_2d(tmp_path / "Dataset003_Binary")  # one foreground label: masks are read at > 0
    mask[mask == 1] = 255
    Image.fromarray(mask).save(binary / "labelsTr" / f"{CASES[1]}.png")
    assert not check_dataset(settings(binary, 2), binary).errors

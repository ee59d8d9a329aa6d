"""3D end to end on tiny synthetic two-modality volumes: the shipped brain-tumour pipeline, binary and
multi-class, then `medseg predict` on a folder with a corrupt scan."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.config.loading import load_config
from medseg.config.settings import data_settings, evaluation_settings
from tests.helpers.data import AFFINE, phantom_case
from tests.helpers.paths import REPO

PIPELINE = REPO / "pipelines" / "brain_tumor_mri.yaml"


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms") / "brats-like"
    rng = np.random.default_rng(0)
    for folder in ("imagesTr", "imagesTr_t1c", "labelsTr"):
        (root / folder).mkdir(parents=True)
    for index in range(5):
        flair, t1c, label = phantom_case(rng)
        for folder, array in (("imagesTr", flair), ("imagesTr_t1c", t1c), ("labelsTr", label)):
            nib.save(nib.Nifti1Image(array, AFFINE), root / folder / f"case{index}.nii.gz")
    return root


def _overrides(tmp_path: Path, dataset: Path, *extra: str) -> list[str]:
    return [
        f"data.root={dataset.parent}",
        f"data.dataset_dir={dataset.name}",
        f"data.split.file={tmp_path / 'splits.json'}",
        f"output_root={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        "preprocessing.patch_size=[16, 16, 16]",
        "model.args.channels=[8, 16, 32]",
        "model.args.strides=[2, 2]",
        "training.epochs=2",
        "training.val_every=1",
        "training.samples_per_volume=2",
        "training.max_minutes=null",
        "schedule.length=epochs",
        "training.bf16=true",  # no step timing (tests/helpers/data.py)
        *extra,
    ]


@pytest.mark.slow
def test_binary_whole_tumour_pipeline(tmp_path: Path, phantom_dataset: Path) -> None:
    from medseg.pipeline.run import run_pipeline

    cfg = load_config(PIPELINE, _overrides(tmp_path, phantom_dataset))
    result = run_pipeline(cfg, run_name="wt")
    masks = sorted((result.run_dir / "predictions" / "masks").glob("*.nii.gz"))
    assert len(masks) == 1
    written = nib.load(masks[0])
    assert written.shape == (24, 24, 16) and written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, AFFINE, atol=1e-5)
    rows = list(csv.DictReader((result.run_dir / "evaluation" / "per_case_metrics.csv").open()))
    assert {r["variant"] for r in rows} == {"raw", "postprocessed"} and {r["label"] for r in rows} == {"whole_tumor"}
    assert {"test_dice", "test_hd95_mm", "test_asd_mm", "test_volume_error_pct"} <= set(result.metrics)


@pytest.mark.slow
def test_multiclass_option(tmp_path: Path, phantom_dataset: Path) -> None:
    from medseg.pipeline.run import run_pipeline

    overrides = _overrides(
        tmp_path, phantom_dataset, "model.out_channels=3", "data.label_mapping={1: 1, 2: 2}", "data.labels={2: edema}"
    )
    cfg = load_config(PIPELINE, overrides)
    result = run_pipeline(cfg, run_name="multi")
    assert {"test_dice_whole_tumor", "test_dice_edema"} <= set(result.metrics)
    labels = np.asarray(nib.load(next((result.run_dir / "predictions" / "masks").glob("*.nii.gz"))).dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2}


@pytest.mark.slow
def test_predict_folder_of_scans_goes_on_past_a_corrupt_one(tmp_path: Path, phantom_dataset: Path) -> None:
    from medseg.cli.app import app
    from medseg.pipeline.run import run_pipeline

    cfg = load_config(PIPELINE, _overrides(tmp_path, phantom_dataset, "training.epochs=1", "stages=[train]"))
    result = run_pipeline(cfg, run_name="for-predict")
    scans = tmp_path / "scans"
    scans.mkdir()
    for case in ("case0", "case1"):
        for channel, folder in enumerate(("imagesTr", "imagesTr_t1c")):
            (scans / f"{case}_{channel:04d}.nii.gz").write_bytes(
                (phantom_dataset / folder / f"{case}.nii.gz").read_bytes()
            )
    (scans / "broken_0000.nii.gz").write_bytes(b"not a nifti")
    (scans / "broken_0001.nii.gz").write_bytes(b"not a nifti")
    before = {p.name: p.read_bytes() for p in scans.iterdir()}

    runner = CliRunner()
    out = tmp_path / "out"
    first = runner.invoke(app, ["predict", "-m", str(result.run_dir), "-i", str(scans), "-o", str(out)])
    assert first.exit_code == 1
    assert "broken" in first.output and "2 written" in first.output
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["case0.nii.gz", "case1.nii.gz"]
    rows = {r["case"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["broken"]["status"] == "failed" and "broken_0000.nii.gz" in rows["broken"]["message"]
    assert rows["case0"]["shape"] == "24x24x16" and rows["case0"]["spacing"] == "1.2x1x1.5"
    assert {p.name: p.read_bytes() for p in scans.iterdir()} == before, "inputs untouched"
    assert not list(out.rglob("*.tmp*"))

    second = runner.invoke(app, ["predict", "-m", str(result.run_dir), "-i", str(scans), "-o", str(out)])
    assert "0 written, 2 already done, 1 failed" in second.output


@pytest.mark.slow
def test_region_based_training_reports_each_region(tmp_path: Path, phantom_dataset: Path) -> None:
    """The regions pipeline on phantoms (labels 1 and 2): one sigmoid channel per region, metrics per region, label
    maps painted with raw label values, label descriptions beside the masks."""
    from medseg.pipeline.run import run_pipeline

    pipeline = REPO / "pipelines" / "brain_tumor_regions.yaml"
    cfg = load_config(pipeline, _overrides(tmp_path, phantom_dataset))
    result = run_pipeline(cfg, run_name="regions")
    assert {"test_dice_whole_tumor", "test_dice_tumor_core", "test_dice_enhancing_tumor"} <= set(result.metrics)
    rows = list(csv.DictReader((result.run_dir / "evaluation" / "per_case_metrics.csv").open()))
    assert {r["label"] for r in rows} == {"whole_tumor", "tumor_core", "enhancing_tumor"}
    assert {r["values"] for r in rows} == {"1;2;3;4", "1;3;4", "4"}
    predictions = result.run_dir / "predictions"
    labels = np.asarray(nib.load(next((predictions / "masks").glob("*.nii.gz"))).dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 4}  # edema, necrosis (the core), enhancing: painted raw values
    described = json.loads((predictions / "labels.json").read_text())
    assert [entry["name"] for entry in described["labels"]] == ["necrosis", "edema", "enhancing"]
    assert described["region_order"] == ["whole_tumor", "tumor_core", "enhancing_tumor"]


@pytest.mark.slow
def test_ignore_label_trains_and_evaluates_on_annotated_voxels_only(tmp_path: Path) -> None:
    """Partially labelled phantoms: half of every label volume is 255 (unannotated); training and evaluation run,
    and the per-case Dice equals the Dice computed by hand over the annotated voxels only."""
    from medseg.evaluation.evaluate import read_truth
    from medseg.infer.predictor import Predictor
    from medseg.pipeline.run import run_pipeline

    root = tmp_path / "partial"
    rng = np.random.default_rng(1)
    for folder in ("imagesTr", "imagesTr_t1c", "labelsTr"):
        (root / folder).mkdir(parents=True)
    for index in range(5):
        flair, t1c, label = phantom_case(rng)
        label = label.astype(np.uint8)
        label[:, :12] = 255
        for folder, array in (("imagesTr", flair), ("imagesTr_t1c", t1c), ("labelsTr", label)):
            nib.save(nib.Nifti1Image(array, AFFINE), root / folder / f"case{index}.nii.gz")
    cfg = load_config(PIPELINE, _overrides(tmp_path, root, "data.ignore_label=255", "postprocessing.mode=off"))
    result = run_pipeline(cfg, run_name="partial")
    row = next(csv.DictReader((result.run_dir / "evaluation" / "per_case_metrics.csv").open()))
    saved = load_config(result.run_dir / "config.yaml")
    case = next(r for r in result_records(saved) if r["id"] == row["case"])
    prediction = Predictor.from_model(result.run_dir).predict(case["image"]).labels
    truth, _ = read_truth(case, evaluation_settings(saved))
    assert (truth == 255).any() and set(np.unique(truth)) <= {0, 1, 255}
    valid = truth != 255
    predicted, true = (prediction > 0) & valid, (truth == 1) & valid
    expected = 2 * (predicted & true).sum() / max(predicted.sum() + true.sum(), 1)
    if predicted.sum() + true.sum():
        assert float(row["dice"]) == pytest.approx(expected, abs=1e-5)


def result_records(cfg) -> list[dict]:
    from medseg.data.dataset import data_folder
    from medseg.data.discovery import find_cases

    return find_cases(data_settings(cfg), data_folder(data_settings(cfg))).records

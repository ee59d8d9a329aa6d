"""End to end: a short run on tiny synthetic data, read back from MLflow with the client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.config.loading import load_config
from tests.helpers.data import tiny_overrides
from tests.helpers.paths import REPO

PIPELINE = REPO / "pipelines" / "skin_lesion.yaml"


def _artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.mark.slow
def test_tiny_run_is_fully_tracked(tmp_path: Path, tiny_dataset: Path) -> None:
    import mlflow

    from medseg.pipeline.run import run_pipeline

    cfg = load_config(PIPELINE, tiny_overrides(tmp_path, tiny_dataset))
    result = run_pipeline(cfg, run_name="e2e")

    # outputs on disk
    run_dir = tmp_path / "runs" / "skin_lesion" / "e2e"
    assert result.run_dir == run_dir
    for name in (
        "config.yaml",
        "history.json",
        "training_curves.png",
        "model/best.pt",
        "model/last.pt",
        "model/postprocessing.json",
        "evaluation/per_case_metrics.csv",
        "evaluation/summary.json",
    ):
        assert (run_dir / name).is_file(), name
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (8, 2, 2)
    # masks are written at each input's own size (64x96), binary 0/255
    for case in splits["test"]:
        mask = np.asarray(Image.open(run_dir / "predictions" / "masks" / f"{case}.png"))
        assert mask.shape == (64, 96) and set(np.unique(mask)) <= {0, 255}
    assert len(list((run_dir / "predictions" / "overlays").glob("*.png"))) == 2
    summary = json.loads((run_dir / "evaluation" / "summary.json").read_text())
    assert summary["cases"] == 2 and 0.0 <= summary["postprocessed"]["dice"]["mean"] <= 1.0

    # tracking, read back through the MLflow client
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    parent = client.get_run(result.run_id)
    assert parent.info.run_name == "e2e" and parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["dataset"] == "ph2" and tags["data_synthetic"] == "false"
    assert len(tags["data_fingerprint"]) == 16 and tags["medseg_version"] and tags["git_commit"]
    assert parent.data.params["training.epochs"] == "2"
    assert parent.data.params["model.name"] == "unet"
    assert parent.data.params["preprocessing.spatial_size"] == "[64, 64]"
    assert 0.0 <= parent.data.metrics["test_dice"] <= 1.0
    # the model is logged with mlflow.pytorch (signature + input example) and carries the medseg checkpoint
    assert result.model_uri
    logged = mlflow.models.get_model_info(result.model_uri)
    assert logged.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 64, 64)
    # the data set is logged with mlflow.data: source and digest tell runs on different data apart
    inputs = parent.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.digest == tags["data_fingerprint"]
    assert inputs[0].dataset.name == "ph2"
    assert {"config.yaml", "data/splits.json"} <= _artifact_paths(client, result.run_id)

    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    by_stage = {run.info.run_name: run for run in children}
    assert set(by_stage) == {"train", "postprocess", "evaluate", "predict"}
    train_id = by_stage["train"].info.run_id
    for metric in ("train_loss", "val_dice", "lr"):
        history = client.get_metric_history(train_id, metric)
        assert [m.step for m in history] == [1, 2], metric
    assert {
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "plots/training_curves.png",
        "history.json",
    } <= _artifact_paths(client, train_id)
    postprocess = by_stage["postprocess"]  # its own stage: the choice, each candidate's validation Dice, the file
    assert postprocess.data.tags["postprocessing_selected"]
    assert {"val_dice_pp_none", "val_dice_pp_fill_holes"} <= set(postprocess.data.metrics)
    assert "checkpoints/postprocessing.json" in _artifact_paths(client, postprocess.info.run_id)
    evaluate_id = by_stage["evaluate"].info.run_id
    logged = set(by_stage["evaluate"].data.metrics)
    assert {"test_dice", "test_dice_raw", "test_jaccard_thresholded", "test_precision"} <= logged
    # HD95 is undefined where a mask is empty (this 2-epoch model may predict nothing): logged iff defined
    hd95_cases = json.loads((run_dir / "evaluation" / "summary.json").read_text())["postprocessed"]["hd95"]["n"]
    assert ("test_hd95" in logged) == (hd95_cases > 0)
    assert {"evaluation/per_case_metrics.csv", "evaluation/summary.json"} <= _artifact_paths(client, evaluate_id)
    predicted = _artifact_paths(client, by_stage["predict"].info.run_id)
    assert sum(p.startswith("predictions/overlays/") for p in predicted) == 2
    assert sum(p.startswith("predictions/masks/") for p in predicted) == 2


@pytest.mark.slow
def test_cli_demo_falls_back_to_synthetic_data(tmp_path: Path) -> None:
    """`medseg run` with no dataset: synthetic data, said in the log and the tags, default sqlite store."""
    env = {k: v for k, v in os.environ.items() if k not in ("MEDSEG_DATA_ROOT", "MLFLOW_TRACKING_URI")}
    overrides = [
        "data.synthetic.num_cases=12",
        "data.synthetic.image_size=[64, 80]",
        "data.synthetic.epochs=1",
        "preprocessing.spatial_size=[64, 64]",
        "model.args.channels=[8, 16]",
        "model.args.strides=[2]",
        "prediction.max_overlays=1",
    ]
    command = [sys.executable, "-m", "medseg", "run", str(PIPELINE), "--name", "demo"]
    for override in overrides:
        command += ["--set", override]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SYNTHETIC" in done.stderr
    assert "test_dice" in done.stdout
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    assert (tmp_path / "data" / "splits" / "synthetic-dermoscopy" / "splits.json").is_file()

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("skin_lesion")
    assert experiment.artifact_location.startswith((tmp_path / "mlruns" / "artifacts").as_uri())
    run = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'demo'")[0]
    assert run.data.tags["data_synthetic"] == "true" and run.data.tags["dataset"] == "synthetic-dermoscopy"


@pytest.mark.slow
def test_2d_multiclass_run_logs_per_class_and_semantic_metrics(tmp_path: Path) -> None:
    """The multi-class synthetic set (lesion, hair, ruler ticks) end to end: per-class Dice and IoU, mIoU, FWIoU,
    pixel accuracy logged, a confusion matrix written, masks holding the class values."""
    import csv as csv_module

    import mlflow

    from medseg.data.synthetic import generate_dermoscopy_dataset
    from medseg.pipeline.run import run_pipeline

    data = generate_dermoscopy_dataset(tmp_path / "mc", num_cases=14, image_size=(64, 80), seed=2, multiclass=True)
    overrides = [
        *tiny_overrides(tmp_path, data),
        "preprocessing.spatial_size=[64, 80]",
        "training.epochs=2",
        "prediction.max_overlays=1",
    ]
    cfg = load_config(REPO / "pipelines" / "skin_multiclass.yaml", overrides)
    result = run_pipeline(cfg, run_name="mc")
    expected = {f"test_dice_{n}" for n in ("lesion", "hair", "ruler")} | {f"test_iou_{n}" for n in ("lesion", "hair")}
    assert expected | {"test_miou", "test_fwiou", "test_pixel_accuracy", "test_mean_pixel_accuracy"} <= set(
        result.metrics
    )
    evaluation = result.run_dir / "evaluation"
    rows = list(csv_module.reader((evaluation / "confusion_matrix.csv").open()))
    assert rows[0] == ["true \\ predicted", "background", "lesion", "hair", "ruler"] and len(rows) == 5
    assert (evaluation / "confusion_matrix.png").stat().st_size > 5000
    per_case = list(csv_module.DictReader((evaluation / "per_case_metrics.csv").open()))
    assert {r["label"] for r in per_case} == {"lesion", "hair", "ruler"}
    mask = np.asarray(Image.open(next((result.run_dir / "predictions" / "masks").glob("*.png"))))
    assert set(np.unique(mask)) <= {0, 1, 2, 3}
    client = mlflow.MlflowClient(cfg.tracking.uri)
    assert "test_miou" in client.get_run(result.run_id).data.metrics

"""Resume an interrupted training into the same MLflow runs; predict with an MLflow model URI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg.config.loading import load_config
from medseg.models.checkpoint import load_checkpoint
from tests.helpers.data import tiny_overrides
from tests.helpers.paths import REPO

PIPELINE = REPO / "pipelines" / "skin_lesion.yaml"


def _config(tmp_path: Path, dataset: Path, *extra: str):
    return load_config(PIPELINE, [*tiny_overrides(tmp_path, dataset), "training.epochs=3", *extra])


@pytest.mark.slow
def test_resume_after_interruption_matches_an_uninterrupted_run(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    import medseg.training.trainer
    from medseg.pipeline.run import run_pipeline

    reference = run_pipeline(_config(tmp_path / "a", tiny_dataset), run_name="straight")

    calls = {"n": 0}
    real_validation = medseg.training.trainer.validation_dice

    def interrupt_in_epoch_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_validation(*args, **kwargs)

    cfg = _config(tmp_path / "b", tiny_dataset)
    monkeypatch.setattr(medseg.training.trainer, "validation_dice", interrupt_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, run_name="interrupted")
    run_dir = tmp_path / "b" / "runs" / "skin_lesion" / "interrupted"
    assert load_checkpoint(run_dir / "model" / "last.pt")["epoch"] == 2
    monkeypatch.setattr(medseg.training.trainer, "validation_dice", real_validation)

    resumed = run_pipeline(load_config(run_dir / "config.yaml"), resume_dir=run_dir)

    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    parent = client.get_run(resumed.run_id)
    assert parent.info.run_name == "interrupted" and parent.info.status == "FINISHED"
    trains = [r for r in client.search_runs([parent.info.experiment_id]) if r.info.run_name == "train"]
    assert len(trains) == 1, "the resumed training logs into the same train run"
    assert [m.step for m in client.get_metric_history(trains[0].info.run_id, "train_loss")] == [1, 2, 3]

    straight = load_checkpoint(reference.run_dir / "model" / "last.pt")
    again = load_checkpoint(run_dir / "model" / "last.pt")
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(again["state_dict"][key], value, rtol=1e-5, atol=1e-6)
    assert [round(r["train_loss"], 5) for r in again["history"]] == [
        round(r["train_loss"], 5) for r in straight["history"]
    ]
    assert resumed.metrics["test_dice"] == pytest.approx(reference.metrics["test_dice"], abs=1e-6)


@pytest.mark.slow
def test_predict_with_an_mlflow_run_uri_is_resumable(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from medseg.cli.app import app
    from medseg.pipeline.run import run_pipeline

    cfg = _config(
        tmp_path, tiny_dataset, "training.epochs=1", "stages=[train]", "tracking.registered_model=tiny-lesion"
    )
    result = run_pipeline(cfg, run_name="for-uri")
    assert result.model_uri and result.model_uri.startswith("models:/") or result.model_uri.startswith("runs:/")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking.uri)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "predicted"
    runner = CliRunner()
    for uri in (f"runs:/{result.run_id}/model", result.model_uri, "models:/tiny-lesion/1"):
        done = runner.invoke(app, ["predict", "-m", uri, "-i", str(tiny_dataset / "images"), "-o", str(out)])
        assert done.exit_code == 0, done.output
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == 12
    assert np.asarray(Image.open(masks[0])).shape == (64, 96)
    summary = (out / "summary.csv").read_text().splitlines()
    assert (
        summary[0].startswith("case,status,seconds") and sum(",skipped," in line for line in summary) == 12
    )  # the 2nd and 3rd calls resumed

    exported = runner.invoke(app, ["export", "models:/tiny-lesion/1", "--format", "onnx"])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "model.onnx").is_file(), "a URI exports into the current folder, not the download cache"
    again = runner.invoke(app, ["predict", "-m", "model.onnx", "-i", str(tiny_dataset / "images"), "-o", "onnx_out"])
    assert again.exit_code == 0 and "12 written" in again.output, again.output
    for mask in masks:
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "onnx_out" / "masks" / mask.name)), np.asarray(Image.open(mask))
        )

    missing = runner.invoke(
        app, ["predict", "-m", "runs:/0123456789abcdef/model", "-i", str(tiny_dataset), "-o", str(tmp_path / "x")]
    )
    assert missing.exit_code == 2 and "runs:/0123456789abcdef/model" in missing.output

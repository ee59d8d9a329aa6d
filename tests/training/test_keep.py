"""``training.keep``: the model a run keeps is its best validation epoch, or its final epoch (nnU-Net's choice)."""

from __future__ import annotations

import json

import pytest
import torch

from medseg.config.loading import load_config
from medseg.core.errors import ConfigError
from medseg.core.layout import RunLayout
from medseg.models.checkpoint import load_checkpoint
from medseg.pipeline.run import run_pipeline
from tests.helpers.data import tiny_overrides
from tests.helpers.mlflow_store import stage_run
from tests.helpers.paths import REPO


@pytest.mark.parametrize("val_every", [1, 3])
def test_keep_final_keeps_the_last_epochs_weights(tmp_path, tiny_dataset, val_every: int) -> None:
    overrides = [
        *tiny_overrides(tmp_path, tiny_dataset),
        "training.epochs=4",
        "training.keep=final",
        f"training.val_every={val_every}",
        "training.early_stopping_patience=null",
        "stages=[train]",
    ]
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", overrides)
    result = run_pipeline(cfg, run_name=f"final{val_every}")
    layout = RunLayout(result.run_dir)
    kept, last = load_checkpoint(layout.model.best), load_checkpoint(layout.model.last)
    assert kept["epoch"] == last["epoch"] == 4
    for name, weights in last["state_dict"].items():
        torch.testing.assert_close(kept["state_dict"][name], weights, rtol=0, atol=0)
    history = json.loads(layout.history.read_text())
    assert kept["val_dice"] == history[-1]["val_dice"]  # validated at the end even where val_every skips it
    train = stage_run(cfg.tracking.uri, result.run_id)
    assert train.data.metrics["kept_epoch"] == 4
    best = max((row for row in history if "val_dice" in row), key=lambda row: row["val_dice"])
    assert train.data.metrics["best_epoch"] == best["epoch"]


def test_keep_best_keeps_the_best_validation_epoch(tmp_path, tiny_dataset) -> None:
    overrides = [*tiny_overrides(tmp_path, tiny_dataset), "training.epochs=4", "training.keep=best", "stages=[train]"]
    result = run_pipeline(load_config(REPO / "pipelines" / "skin_lesion.yaml", overrides), run_name="best")
    layout = RunLayout(result.run_dir)
    history = json.loads(layout.history.read_text())
    best = max(history, key=lambda row: row["val_dice"])
    kept = load_checkpoint(layout.model.best)
    assert kept["epoch"] == best["epoch"] and kept["val_dice"] == best["val_dice"]


def test_fit_on_train_val_trains_on_both_splits(tmp_path, tiny_dataset, caplog) -> None:
    overrides = [
        *tiny_overrides(tmp_path, tiny_dataset),
        "training.epochs=1",
        "training.fit_on=train_val",
        "training.keep=final",
        "training.early_stopping_patience=null",
        "stages=[train]",
    ]
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", overrides)
    result = run_pipeline(cfg, run_name="train_val")
    splits = json.loads((tmp_path / "splits.json").read_text())
    train = stage_run(cfg.tracking.uri, result.run_id)
    assert train.data.params["train_cases"] == str(len(splits["train"]) + len(splits["val"])) == "10"
    assert train.data.params["val_cases"] == str(len(splits["val"])) == "2"
    assert "postprocessing.mode auto chooses on the validation cases" in caplog.text


def test_fit_on_train_val_names_every_selection_on_validation(tmp_path, tiny_dataset) -> None:
    overrides = [
        *tiny_overrides(tmp_path, tiny_dataset),
        "training.fit_on=train_val",
        "training.keep=best",
        "training.early_stopping_patience=5",
        "training.folds=3",
    ]
    with pytest.raises(ConfigError) as raised:
        load_config(REPO / "pipelines" / "skin_lesion.yaml", overrides)
    message = str(raised.value)
    assert "\n" not in message
    for problem in ("keep: best", "early_stopping_patience", "folds: cross-validation"):
        assert problem in message

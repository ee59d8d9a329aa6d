"""``training.compile``: the training step through torch.compile, and eager steps where compiling fails."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from medseg.config.loading import load_config
from medseg.core.layout import RunLayout
from medseg.pipeline.run import run_pipeline
from tests.helpers.data import tiny_overrides
from tests.helpers.mlflow_store import stage_run
from tests.helpers.paths import REPO


def _train_tags(cfg, result) -> dict[str, str]:
    return stage_run(cfg.tracking.uri, result.run_id).data.tags


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="inductor needs a C++ compiler")
def test_a_compiled_step_trains(tmp_path, tiny_dataset) -> None:
    overrides = [*tiny_overrides(tmp_path, tiny_dataset), "training.compile=true", "stages=[train]"]
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", overrides)
    result = run_pipeline(cfg, run_name="compiled")
    assert _train_tags(cfg, result)["compiled"] == "true"
    history = json.loads(RunLayout(result.run_dir).history.read_text())
    assert len(history) == 2 and all(0 < row["train_loss"] < 2 and 0 <= row["val_dice"] <= 1 for row in history)


class _Uncompilable(torch.nn.Module):
    """What torch.compile returns where inductor cannot build its kernels: it fails at the first call."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self._orig_mod = module

    def forward(self, *args, **kwargs):
        raise RuntimeError("backend='inductor' raised:\nInvalidCxxCompiler: No working C++ compiler found")


def test_training_goes_on_eagerly_where_compiling_fails(tmp_path, tiny_dataset, monkeypatch, caplog) -> None:
    monkeypatch.setattr(torch, "compile", _Uncompilable)
    overrides = [*tiny_overrides(tmp_path, tiny_dataset), "training.compile=true", "stages=[train]"]
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", overrides)
    with caplog.at_level(logging.WARNING, logger="medseg.training.trainer"):
        result = run_pipeline(cfg, run_name="eager")
    warned = [r.getMessage() for r in caplog.records if "training.compile" in r.getMessage()]
    assert warned == ["training.compile: torch.compile failed (backend='inductor' raised:); training without it"], (
        warned
    )
    history = json.loads(RunLayout(result.run_dir).history.read_text())
    assert len(history) == cfg.training.epochs and all(0 < row["train_loss"] < 2 for row in history)
    assert _train_tags(cfg, result)["compiled"] == "false"

"""``medseg select``: the best run or pair of runs on out-of-fold Dice, written as an inference plan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.config.loading import load_config
from medseg.config.settings import data_settings
from medseg.core.errors import ModelError
from medseg.core.layout import RunLayout
from medseg.pipeline.selection import select
from tests.helpers.data import tiny_overrides
from tests.helpers.paths import REPO


def _fake_run(root: Path, name: str, dataset: Path, tmp_path: Path, noise: float, seed: int) -> Path:
    """A finished 2-fold run whose out-of-fold probabilities are the true masks plus ``noise``."""
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", [*tiny_overrides(tmp_path, dataset), "training.folds=2"])
    from medseg.data.dataset import prepare_data

    data = prepare_data(data_settings(cfg))
    run = RunLayout(root / name)
    run.model.root.mkdir(parents=True)
    run.config.write_text(cfg.to_yaml(), encoding="utf-8")
    run.model.ensemble.write_text(json.dumps({"folds": [0, 1], "members": {}}), encoding="utf-8")
    run.oof.mkdir()
    rng = np.random.default_rng(seed)
    for case in (i for fold in data.folds for i in fold):
        truth = (np.asarray(Image.open(dataset / "masks" / f"{case}.png")) > 0).astype(np.float32)
        probabilities = np.clip(truth + rng.normal(0, noise, truth.shape), 0, 1)[None]
        quantised = np.round(probabilities * 255).astype(np.uint8)
        np.savez_compressed(
            run.oof / f"{case}.npz", probabilities=quantised, labels=(quantised[0] > 127).astype(np.uint8)
        )
    return run.root


def test_select_picks_the_planted_best_and_writes_a_plan(tiny_dataset: Path, tmp_path: Path) -> None:
    good = _fake_run(tmp_path / "runs", "good", tiny_dataset, tmp_path, noise=0.3, seed=0)
    poor = _fake_run(tmp_path / "runs", "poor", tiny_dataset, tmp_path, noise=1.5, seed=1)
    plan_path = tmp_path / "inference_plan.json"
    best, candidates = select([poor, good], plan_path)
    assert [c.name for c in candidates] == ["poor", "good", "poor + good"]
    assert best.runs == [good]
    scores = {c.name: c.dice for c in candidates}
    assert scores["good"] > scores["poor + good"] > scores["poor"]
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    assert plan["kind"] == "medseg-inference-plan" and plan["members"] == [str(good.resolve())]
    assert plan["out_of_fold_cases"] == 10 and len(plan["candidates"]) == 3


def test_select_refuses_runs_that_are_not_cross_validated(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(ModelError, match="not a medseg run folder"):
        select([tmp_path / "plain"], tmp_path / "plan.json")

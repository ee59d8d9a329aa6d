"""k-fold cross-validation: nested runs per fold, out-of-fold predictions, a CV summary, the folds' ensemble."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli.app import app
from tests.helpers.data import tiny_overrides
from tests.helpers.paths import REPO

SKIN = REPO / "pipelines" / "skin_lesion.yaml"


def _sets(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


@pytest.mark.slow
def test_three_fold_run_is_tracked_and_predicts_with_the_ensemble(tmp_path: Path, tiny_dataset: Path) -> None:
    import mlflow

    from medseg.infer.predictor import Predictor

    runner = CliRunner()
    result = runner.invoke(
        app, ["run", str(SKIN), *_sets(tiny_overrides(tmp_path, tiny_dataset)), "--folds", "3", "--name", "cv"]
    )
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "skin_lesion" / "cv"
    splits = json.loads((tmp_path / "splits.json").read_text(encoding="utf-8"))
    pooled_ids = sorted(i for fold in splits["folds"] for i in fold)
    assert pooled_ids == sorted(splits["train"] + splits["val"]) and not set(pooled_ids) & set(splits["test"])
    assert sorted(p.stem for p in (run_dir / "oof").glob("*.npz")) == pooled_ids  # every non-test case, once
    summary = json.loads((run_dir / "cv_summary.json").read_text(encoding="utf-8"))
    assert len(summary["metrics"]["dice"]["per_fold"]) == 3
    pooled = summary["pooled"]["dice"]  # every out-of-fold case at once: the per-fold means weighted by fold size
    sizes = [len(fold) for fold in splits["folds"]]
    weighted = np.dot(summary["metrics"]["dice"]["per_fold"], sizes) / sum(sizes)
    assert pooled["n"] == len(pooled_ids) and pooled["mean"] == pytest.approx(weighted, abs=1e-6)
    assert pooled["ci95"][0] <= pooled["mean"] <= pooled["ci95"][1]

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    folds = sorted(
        r.data.tags["fold"]
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and r.data.tags.get("stage") == "train"
    )
    assert folds == ["0", "1", "2"]
    assert "cv_dice_mean" in parent.data.metrics and "cv_dice_sd" in parent.data.metrics
    assert parent.data.metrics["cv_dice_pooled"] == pytest.approx(pooled["mean"])
    assert parent.data.metrics["cv_dice_pooled_ci95_low"] == pytest.approx(pooled["ci95"][0])
    assert "test_dice" in parent.data.metrics  # the test split, segmented by the ensemble

    image = tiny_dataset / "images" / f"{splits['test'][0]}.png"
    pair = Predictor.from_model(run_dir, folds=[0, 2])
    members = [Predictor.from_model(run_dir / "folds" / f"fold_{i}") for i in (0, 2)]
    expected = np.mean([m.probabilities(image) for m in members], axis=0)
    np.testing.assert_allclose(pair.probabilities(image), expected, atol=1e-6)  # the mean of the members

    out = tmp_path / "masks"
    chosen = runner.invoke(app, ["predict", "-m", str(run_dir), "-i", str(image), "-o", str(out), "--folds", "0,2"])
    assert chosen.exit_code == 0 and (out / "masks" / image.name).is_file(), chosen.output
    wrong = runner.invoke(app, ["predict", "-m", str(run_dir), "-i", str(image), "-o", str(out), "--folds", "7"])
    assert wrong.exit_code == 2 and "no fold 7" in wrong.stderr

    exported = runner.invoke(app, ["export", str(run_dir), "--format", "onnx", "-o", str(tmp_path / "cv.onnx")])
    assert exported.exit_code == 0, exported.output
    manifest = json.loads((tmp_path / "cv.ensemble.json").read_text(encoding="utf-8"))
    assert manifest["members"] == {str(i): f"cv.fold{i}.onnx" for i in range(3)}
    from_files = Predictor.from_model(tmp_path / "cv.ensemble.json")
    assert len(from_files.members) == 3
    np.testing.assert_allclose(
        from_files.probabilities(image), Predictor.from_model(run_dir).probabilities(image), atol=1e-4
    )

    plan = tmp_path / "inference_plan.json"
    selected = runner.invoke(app, ["select", str(run_dir), "-o", str(plan)])
    assert selected.exit_code == 0 and f"selected: cv -> {plan}" in selected.output, selected.output
    by_plan, by_run = tmp_path / "by_plan", tmp_path / "by_run"
    for model, target in ((plan, by_plan), (run_dir, by_run)):
        done = runner.invoke(app, ["predict", "-m", str(model), "-i", str(tiny_dataset / "images"), "-o", str(target)])
        assert done.exit_code == 0, done.output
    steps = json.loads(plan.read_text(encoding="utf-8"))["postprocessing"]
    if steps == json.loads((run_dir / "model" / "postprocessing.json").read_text(encoding="utf-8"))["steps"]:
        for mask in sorted((by_run / "masks").iterdir()):
            assert mask.read_bytes() == (by_plan / "masks" / mask.name).read_bytes()  # the plan runs the same model
    parent_tags = client.get_run(parent.info.run_id).data.tags
    assert parent_tags["inference_plan"] == str(plan.resolve())


@pytest.mark.slow
def test_folds_trained_one_at_a_time_gather_under_one_parent_run(tmp_path: Path, tiny_dataset: Path) -> None:
    import mlflow

    runner = CliRunner()
    sets = _sets([*tiny_overrides(tmp_path, tiny_dataset), "training.epochs=1"])
    for fold in (1, 0):
        step = runner.invoke(app, ["run", str(SKIN), *sets, "--folds", "2", "--fold", str(fold), "--name", "gather"])
        assert step.exit_code == 0, step.output
        run_dir = tmp_path / "runs" / "skin_lesion" / "gather"
        assert (run_dir / "model" / "ensemble.json").is_file() == (fold == 0)  # made once both folds exist
    again = runner.invoke(app, ["run", str(SKIN), *sets, "--folds", "2", "--fold", "0", "--name", "gather"])
    assert again.exit_code == 2 and "fold 0 of this run is trained already" in again.stderr
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len([r for r in runs if "mlflow.parentRunId" not in r.data.tags]) == 1


def test_fold_options_are_checked(tmp_path: Path, tiny_dataset: Path) -> None:
    runner = CliRunner()
    sets = _sets(tiny_overrides(tmp_path, tiny_dataset))
    no_folds = runner.invoke(app, ["run", str(SKIN), *sets, "--fold", "0"])
    assert no_folds.exit_code == 2 and "--fold 0: set training.folds" in no_folds.stderr
    out_of_range = runner.invoke(app, ["run", str(SKIN), *sets, "--folds", "2", "--fold", "5"])
    assert out_of_range.exit_code == 2 and "--fold 5: training.folds is 2" in out_of_range.stderr
    one = runner.invoke(app, ["validate", str(SKIN), "--set", "training.folds=1"])
    assert one.exit_code == 2 and "training.folds" in one.stderr

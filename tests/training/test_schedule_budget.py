"""``schedule.length: max_minutes``: the cosine / poly schedule runs over the epochs that fit the time budget,
timed after the warm-up and again halfway, never more than ``training.epochs``; a resumed run keeps the plan."""

from __future__ import annotations

import json

import pytest

from medseg.config.loading import load_config
from medseg.config.schema import PipelineConfig
from medseg.core.errors import ConfigError
from medseg.models.checkpoint import Checkpoint
from medseg.training.callbacks import TimeBudget
from medseg.training.schedules import planned_epochs
from tests.helpers.data import tiny_overrides
from tests.helpers.mlflow_store import stage_run
from tests.helpers.paths import REPO


def test_planned_epochs_fill_the_budget_and_keep_the_cap() -> None:
    assert planned_epochs(cap=100, epochs_done=2, seconds_per_epoch=10.0, seconds_left=95.0) == 11
    assert planned_epochs(cap=5, epochs_done=2, seconds_per_epoch=1.0, seconds_left=100.0) == 5
    assert planned_epochs(cap=100, epochs_done=3, seconds_per_epoch=10.0, seconds_left=-4.0) == 3


def test_a_budget_schedule_needs_a_budget(tmp_path) -> None:
    PipelineConfig(name="s", schedule={"length": "max_minutes"}, training={"max_minutes": 10})
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: p\nschedule: {length: max_minutes}\n")
    with pytest.raises(ConfigError, match="schedule.length: max_minutes needs training.max_minutes") as error:
        load_config(pipeline)
    assert "\n" not in str(error.value)


def test_the_plan_survives_a_checkpoint(tmp_path) -> None:
    cfg = PipelineConfig(name="s", schedule={"length": "max_minutes"}, training={"max_minutes": 10, "epochs": 30})
    budget = TimeBudget(cfg, schedule=None)
    budget.planned_epochs = 7
    saved = Checkpoint({}, {}, {}, 3, callbacks={budget.state_key: budget.state_dict()})
    saved.save(tmp_path / "last.pt")
    restored = TimeBudget(cfg, schedule=None)
    restored.load_state_dict(Checkpoint.load(tmp_path / "last.pt").callbacks[budget.state_key])
    assert restored.planned_epochs == 7
    assert Checkpoint.load(tmp_path / "last.pt").to_dict()["planned_epochs"] == 7  # read by benchmarks/model_zoo.py


@pytest.mark.parametrize("schedule", ["cosine", "poly"])
def test_the_schedule_ends_annealed_at_the_epochs_that_fit(
    schedule: str, tiny_dataset, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:

    import medseg.training.callbacks
    from medseg.pipeline.run import run_pipeline

    seen = []

    def six_fit(cap: int, epochs_done: int, seconds_per_epoch: float, seconds_left: float) -> int:
        seen.append((epochs_done, planned_epochs(cap, epochs_done, seconds_per_epoch, seconds_left)))
        assert 0 < seconds_per_epoch < 60 and 0 < seconds_left <= 5 * 60
        return 6  # as if only six epochs fitted the budget

    monkeypatch.setattr(medseg.training.callbacks, "planned_epochs", six_fit)
    overrides = [
        *tiny_overrides(tmp_path, tiny_dataset),
        "training.epochs=30",
        "training.max_minutes=5",
        "training.early_stopping_patience=null",
        "schedule.length=max_minutes",
        f"schedule.name={schedule}",
        "stages=[train]",
    ]
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", overrides)
    result = run_pipeline(cfg, run_name="budget")
    # planned after the warm-up (epoch 2), again halfway (epoch 4); tiny epochs: the whole cap fits five minutes
    assert seen == [(2, 30), (4, 30)]
    history = json.loads((result.run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6]
    if schedule == "cosine":
        assert history[1]["lr"] == pytest.approx(cfg.optimizer.lr), "the warm-up ends at its peak"
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-12), "annealed to the end of the fitted schedule"
    train = stage_run(cfg.tracking.uri, result.run_id)
    params = train.data.params
    assert params["planned_epochs"] == params["replanned_epochs"] == "6" and float(params["seconds_per_epoch"]) > 0


def test_the_halfway_replan_times_the_epochs_since_the_first_plan(tmp_path, tiny_dataset, monkeypatch) -> None:
    """A slow start (another job on the CPU) is not held against the rest of the budget: on a fake clock, epochs 1-2
    take 30 s and the later ones 3 s; two minutes of budget."""
    import types

    import medseg.training.callbacks
    import medseg.training.trainer
    from medseg.pipeline.run import run_pipeline

    clock = [1000.0]
    for module in (medseg.training.trainer, medseg.training.callbacks):  # the stage's start, the budget's clock
        monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    run_epoch = medseg.training.trainer.Trainer.run_epoch

    def timed_epoch(self, epoch: int, advance) -> float:
        loss = run_epoch(self, epoch, advance)
        clock[0] += 30.0 if epoch <= 2 else 3.0
        return loss

    monkeypatch.setattr(medseg.training.trainer.Trainer, "run_epoch", timed_epoch)
    overrides = [
        *tiny_overrides(tmp_path, tiny_dataset),
        "training.epochs=100",
        "training.max_minutes=2",
        "training.early_stopping_patience=null",
        "schedule.length=max_minutes",
        "stages=[train]",
    ]
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", overrides)
    result = run_pipeline(cfg, run_name="slow-start")
    history = json.loads((result.run_dir / "history.json").read_text())
    # planned at epoch 2 on its 30 s: 2 + 60 // 30 = 4 epochs; re-planned at epoch 3 on the 3 s since: 3 + 57 // 3
    # (timed over the whole run, 33 s for 2 epochs, it would have been 3 + 57 // 16.5 = 6)
    assert len(history) == 22
    params = stage_run(cfg.tracking.uri, result.run_id).data.params
    assert (params["planned_epochs"], params["replanned_epochs"]) == ("4", "22")
    assert float(params["replanned_seconds_per_epoch"]) == 3.0

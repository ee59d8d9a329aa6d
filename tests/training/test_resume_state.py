"""Each training component saves and restores its own state in ``last.pt`` (early stopping, the time budget, the
learning-rate schedule, the best epoch); a resumed fit continues with the same counters, also from a ``last.pt``
written before the components kept their own state (flat keys)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from medseg.config.loading import load_config
from medseg.config.schema import PipelineConfig
from medseg.config.settings import training_settings
from medseg.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medseg.training.callbacks import EarlyStopping, KeepModel, TimeBudget, default_callbacks
from medseg.training.hooks import Callback, Callbacks
from medseg.training.schedules import LearningRateSchedule, build_scheduler
from tests.helpers.data import tiny_overrides
from tests.helpers.paths import REPO


def _validated(callback: Callback, *dice: float) -> None:
    for epoch, value in enumerate(dice, 1):
        callback.on_validation_end(SimpleNamespace(epoch=epoch, row={"val_dice": value}))


def _through_last_pt(tmp_path: Path, callbacks: dict[str, dict]) -> dict[str, dict]:
    """``callbacks`` saved in a checkpoint file and read back."""
    Checkpoint({}, {}, {}, 4, callbacks=callbacks).save(tmp_path / "last.pt")
    return Checkpoint.load(tmp_path / "last.pt").callbacks


def test_early_stopping_counts_on_after_a_save_and_load(tmp_path: Path) -> None:
    stopping = EarlyStopping(patience=3)
    _validated(stopping, 0.5, 0.6, 0.55, 0.58)
    assert (stopping.best_dice, stopping.stale_rounds, stopping.spent) == (0.6, 2, False)

    restored = EarlyStopping(patience=3)
    restored.load_state_dict(_through_last_pt(tmp_path, {stopping.state_key: stopping.state_dict()})["early_stopping"])
    assert (restored.best_dice, restored.stale_rounds) == (0.6, 2)
    _validated(restored, 0.59)  # below the restored best: a third round without improvement
    assert restored.spent
    assert restored.stop_reason(None) == ("Early stopping: no validation improvement in %d rounds", 3)
    fresh = EarlyStopping(patience=3)
    _validated(fresh, 0.59)
    assert (fresh.best_dice, fresh.stale_rounds, fresh.spent) == (0.59, 0, False)


def test_a_restored_time_budget_keeps_its_plan_and_plans_no_more(tmp_path: Path) -> None:
    cfg = PipelineConfig(name="s", schedule={"length": "max_minutes"}, training={"max_minutes": 2, "epochs": 30})
    fresh, loop = TimeBudget(cfg, schedule=None), SimpleNamespace(started=100.0, planned=30)
    fresh.on_train_start(loop)
    assert (loop.planned, fresh.plan_at, fresh.deadline) == (30, 2, 220.0)  # planned after the warm-up

    fresh.planned_epochs = 7
    restored = TimeBudget(cfg, schedule=None)
    restored.load_state_dict(_through_last_pt(tmp_path, {fresh.state_key: fresh.state_dict()})["time_budget"])
    loop = SimpleNamespace(started=500.0, planned=30)
    restored.on_train_start(loop)
    assert (loop.planned, restored.plan_at, restored.deadline) == (7, None, 620.0)


def test_the_schedule_restores_a_refitted_length_and_its_step(tmp_path: Path) -> None:
    cfg = PipelineConfig(name="s", training={"epochs": 30}, schedule={"name": "cosine", "warmup_epochs": 1})

    def schedule() -> tuple[torch.optim.Optimizer, LearningRateSchedule]:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        return optimizer, LearningRateSchedule(build_scheduler(training_settings(cfg), optimizer, steps_per_epoch=4), 4)

    optimizer, original = schedule()
    original.fit_to(6)  # a time budget's plan: 6 epochs of 4 steps
    for _ in range(10):
        optimizer.step()
        original.on_train_batch_end(None, 0.0)
    states = _through_last_pt(tmp_path, {original.state_key: original.state_dict()})
    again_optimizer, again = schedule()
    assert again.scheduler.t_total == 120
    again.load_state_dict(states["lr_schedule"])
    again_optimizer.load_state_dict(optimizer.state_dict())
    assert again.scheduler.t_total == 24 and again.scheduler.last_epoch == 10
    for _ in range(14):  # to the end of the re-fitted schedule: annealed
        for opt, sched in ((optimizer, original), (again_optimizer, again)):
            opt.step()
            sched.on_train_batch_end(None, 0.0)
        assert again_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_every_state_is_saved_once_under_its_own_key() -> None:
    cfg = PipelineConfig(name="s", training={"epochs": 5, "early_stopping_patience": 2, "keep": "final"})
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    callbacks = default_callbacks(
        training_settings(cfg), LearningRateSchedule(build_scheduler(training_settings(cfg), optimizer, 2), 2)
    )
    _validated(callbacks.find(EarlyStopping), 0.4, 0.3)
    _validated(callbacks.find(KeepModel), 0.4, 0.3)
    states = callbacks.state_dict()
    assert sorted(states) == ["best_epoch", "early_stopping", "lr_schedule", "time_budget"]
    assert states["early_stopping"] == {"best_dice": 0.4, "stale_rounds": 1}
    assert states["best_epoch"] == {"best_dice": 0.4, "best_epoch": 1}
    assert states["time_budget"] == {"planned_epochs": None}
    with pytest.raises(ValueError, match="one key"):
        Callbacks([EarlyStopping(2), EarlyStopping(3)])


def test_the_stop_decision_names_early_stopping_before_the_budget(caplog: pytest.LogCaptureFixture) -> None:
    cfg = PipelineConfig(name="s", training={"max_minutes": 1, "epochs": 30, "early_stopping_patience": 1})
    stopping, budget = EarlyStopping(1), TimeBudget(cfg, schedule=None)
    hooks, loop = Callbacks([stopping, budget]), SimpleNamespace(started=0.0, planned=30)
    budget.on_train_start(loop)
    budget.deadline = math.inf
    assert not hooks.should_stop(loop)
    budget.deadline = -math.inf  # the budget spent
    with caplog.at_level(logging.INFO, logger="medseg"):
        assert hooks.should_stop(loop)
        _validated(stopping, 0.5, 0.4)  # and one round without improvement: patience 1 spent
        assert hooks.should_stop(loop)
    assert [r.getMessage() for r in caplog.records] == [
        "Stopping: training.max_minutes=1.0 reached",
        "Early stopping: no validation improvement in 1 rounds",
    ]


def legacy_layout(state: dict) -> dict:
    """A ``last.pt`` as medseg wrote it before the components kept their own state: their values as flat keys."""
    callbacks = state.pop("callbacks")
    state.pop("planned_epochs")
    return {
        **state,
        "scheduler": callbacks["lr_schedule"],
        "best_val_dice": callbacks["best_epoch"]["best_dice"],
        "best_epoch": callbacks["best_epoch"]["best_epoch"],
        "stale_rounds": callbacks["early_stopping"]["stale_rounds"],
        "planned_epochs": callbacks["time_budget"]["planned_epochs"],
    }


def test_a_last_pt_with_flat_keys_is_read_as_the_components_states(tmp_path: Path) -> None:
    flat = {
        "state_dict": {},
        "network": {},
        "config": {},
        "epoch": 3,
        "medseg_version": "0.1.0",
        "optimizer": {},
        "scheduler": {"last_epoch": 12, "t_total": 40},
        "step": {"channels_last": False, "precision": "fp32"},
        "best_val_dice": 0.75,
        "best_epoch": 2,
        "stale_rounds": 1,
        "history": [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}],
        "planned_epochs": 9,
    }
    save_checkpoint(tmp_path / "last.pt", flat)
    saved = Checkpoint.load(tmp_path / "last.pt")
    assert (saved.epoch, saved.step, saved.history) == (3, flat["step"], flat["history"])
    assert saved.callbacks == {
        "lr_schedule": {"last_epoch": 12, "t_total": 40},
        "best_epoch": {"best_dice": 0.75, "best_epoch": 2},
        "early_stopping": {"best_dice": 0.75, "stale_rounds": 1},
        "time_budget": {"planned_epochs": 9},
    }
    kept, budget = KeepModel("best"), TimeBudget(PipelineConfig(name="s"), schedule=None)
    Callbacks([kept, budget]).load_state_dict(saved.callbacks)  # no schedule here: its state is left alone
    assert (kept.best_dice, kept.best_epoch, budget.planned_epochs) == (0.75, 2, 9)
    # the keys written today: the flat ones only where other code reads them
    written = saved.to_dict()
    assert "best_val_dice" not in written and "scheduler" not in written
    assert (written["planned_epochs"], written["epoch"], written["step"]) == (9, 3, flat["step"])


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["current", "flat keys"])
def test_a_resumed_fit_goes_on_with_the_same_counters(
    layout: str, tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Scripted validation Dice, patience 3: the best is epoch 2, then three rounds without improvement stop the run
    after epoch 5 (of 8). Interrupted in epoch 4 and resumed, the restored count (one round) stops it there too."""
    import medseg.training.trainer
    from medseg.pipeline.run import run_pipeline

    scripted, calls, interrupt_after = [0.5, 0.6, 0.55, 0.58, 0.57, 0.9, 0.9, 0.9], [], {"calls": None}

    def validation(*args, **kwargs) -> float:
        if len(calls) == interrupt_after["calls"]:
            interrupt_after["calls"] = None
            raise KeyboardInterrupt
        calls.append(args)
        return scripted[len(calls) - 1]

    monkeypatch.setattr(medseg.training.trainer, "validation_dice", validation)
    overrides = [
        *tiny_overrides(tmp_path, tiny_dataset),
        "training.epochs=8",
        "training.early_stopping_patience=3",
        "training.keep=best",
        "training.deterministic=true",
        "tracking.enabled=false",
        "stages=[train]",
    ]
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", overrides)
    straight = run_pipeline(cfg, run_name="straight").run_dir
    calls.clear()
    interrupt_after["calls"] = 3  # in epoch 4's validation
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, run_name="resumed")
    run_dir = tmp_path / "runs" / "skin_lesion" / "resumed"
    last = load_checkpoint(run_dir / "model" / "last.pt")
    assert last["epoch"] == 3 and last["callbacks"]["early_stopping"] == {"best_dice": 0.6, "stale_rounds": 1}
    if layout == "flat keys":
        save_checkpoint(run_dir / "model" / "last.pt", legacy_layout(last))
    with caplog.at_level(logging.INFO, logger="medseg"):
        run_pipeline(load_config(run_dir / "config.yaml"), resume_dir=run_dir)
    assert "Resuming after epoch 3 (best validation Dice 0.6000 at epoch 2)" in caplog.text
    assert "Early stopping: no validation improvement in 3 rounds" in caplog.text

    ours, theirs = load_checkpoint(run_dir / "model" / "last.pt"), load_checkpoint(straight / "model" / "last.pt")
    assert ours["epoch"] == theirs["epoch"] == 8  # stopped early: a further resume trains no more
    assert [row["epoch"] for row in ours["history"]] == [1, 2, 3, 4, 5]
    assert ours["callbacks"] == theirs["callbacks"]
    assert ours["callbacks"]["early_stopping"] == {"best_dice": 0.6, "stale_rounds": 3}
    assert ours["callbacks"]["best_epoch"] == {"best_dice": 0.6, "best_epoch": 2}
    for key, value in theirs["state_dict"].items():
        torch.testing.assert_close(ours["state_dict"][key], value, rtol=0, atol=0)
    history = json.loads((run_dir / "history.json").read_text())
    assert [{k: v for k, v in r.items() if k != "minutes"} for r in history] == [
        {k: v for k, v in r.items() if k != "minutes"} for r in json.loads((straight / "history.json").read_text())
    ]
    kept = load_checkpoint(run_dir / "model" / "best.pt")
    assert (kept["epoch"], kept["val_dice"]) == (2, 0.6)

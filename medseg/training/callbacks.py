"""The hooks :meth:`Trainer.fit <medseg.training.trainer.Trainer.fit>` runs (:func:`default_callbacks`): the frozen
encoder, early stopping, the time budget, validation every N epochs, the history, the kept model, ``last.pt`` and the
progress report. Those with a state save and restore it themselves (``state_dict`` / ``load_state_dict``)."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from medseg.core.progress import progress_bar
from medseg.models.checkpoint import BEST_EPOCH, EARLY_STOPPING, TIME_BUDGET
from medseg.runtime.distributed import Ranks, broadcast
from medseg.training.hooks import Callback, Callbacks, FitLoop
from medseg.training.schedules import LearningRateSchedule, planned_epochs
from medseg.training.settings import TrainingSettings

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)


def default_callbacks(settings: TrainingSettings, schedule: LearningRateSchedule, group: Ranks = Ranks()) -> Callbacks:
    """The hooks of a training run, in the order each hook runs through them."""
    tcfg = settings.training
    freeze = [FreezeEncoder(settings.network["name"], tcfg.freeze_epochs)] if tcfg.freeze else []
    return Callbacks(
        [
            *freeze,  # before the epoch's first step
            schedule,  # stepped before the progress bar moves, and on validation before the best epoch is kept
            EarlyStopping(tcfg.early_stopping_patience),  # before the time budget: its reason to stop is logged first
            TimeBudget(settings, schedule),  # before the progress report and the row: they show the re-planned epochs
            ValidateEvery(tcfg.val_every),
            History(),
            KeepModel(tcfg.keep),
            LastCheckpoint(),  # after the history and early stopping: the epoch's row and whether training ends
            ProgressReport(),  # the epoch's log line once its checkpoint is written
        ],
        group,
    )


class FreezeEncoder(Callback):
    """``training.freeze: [encoder]``: the encoder's parameters (:data:`medseg.models.registry.ENCODERS`) take no
    optimiser steps (``requires_grad`` off: no gradient, no weight decay) for the first ``training.freeze_epochs``
    epochs, or the whole run. Set at every epoch's start from its number, so a resumed run freezes as the uninterrupted
    one did. Normalisation layers' running statistics still follow the new data."""

    def __init__(self, network: str, epochs: int | None) -> None:
        self.network, self.epochs = network, epochs

    def frozen(self, epoch: int) -> bool:
        """Whether the encoder is frozen during ``epoch`` (1-based)."""
        return self.epochs is None or epoch <= self.epochs

    def on_epoch_start(self, loop: FitLoop) -> None:
        from medseg.models.registry import encoder_parameters

        frozen = self.frozen(loop.epoch)
        if loop.epoch > 1 and frozen != self.frozen(loop.epoch - 1):
            log.info(
                "training.freeze: the encoder trains from epoch %d (training.freeze_epochs=%d)", loop.epoch, self.epochs
            )
        for parameter in encoder_parameters(self.network, loop.trainer.network):
            parameter.requires_grad_(not frozen)


def frozen_params(settings: TrainingSettings, network: nn.Module) -> dict[str, int]:
    """The MLflow params of ``training.freeze``: how many parameter tensors of the network it freezes (none without)."""
    if not settings.training.freeze:
        return {}
    from medseg.models.registry import encoder_parameters

    return {"freeze.encoder_tensors": len(encoder_parameters(settings.network["name"], network))}


class EarlyStopping(Callback):
    """``training.early_stopping_patience``: stop once that many validations in a row brought no better Dice (rounds
    are counted without a patience too). Its state: the best Dice and the rounds since."""

    state_key = EARLY_STOPPING

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.best_dice, self.stale_rounds = -math.inf, 0

    @property
    def spent(self) -> bool:
        return bool(self.patience and self.stale_rounds >= self.patience)

    def on_validation_end(self, loop: FitLoop) -> None:
        if loop.row["val_dice"] > self.best_dice:
            self.best_dice, self.stale_rounds = loop.row["val_dice"], 0
        else:
            self.stale_rounds += 1

    def on_epoch_end(self, loop: FitLoop) -> None:
        if self.spent:
            loop.finished = True  # a resumed run that stopped early stays stopped

    def stop_reason(self, loop: FitLoop) -> tuple[Any, ...] | None:
        return ("Early stopping: no validation improvement in %d rounds", self.stale_rounds) if self.spent else None

    def state_dict(self) -> dict[str, Any]:
        return {"best_dice": self.best_dice, "stale_rounds": self.stale_rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_dice, self.stale_rounds = state["best_dice"], state["stale_rounds"]


class TimeBudget(Callback):
    """``training.max_minutes``: training stops once they are spent (rank 0's clock).

    With ``schedule.length: max_minutes`` the epochs that fit the budget are planned after the warm-up, timed over the
    passes since this process's first, and planned again halfway on the passes since (a slow start, e.g. another job
    sharing the CPU, then stops holding back the rest of the budget); the cosine / poly schedule is stretched or
    shrunk to end there (at most ``training.epochs``). Its state: the plan, which a resumed run keeps.
    """

    state_key = TIME_BUDGET

    def __init__(self, settings: TrainingSettings, schedule: LearningRateSchedule) -> None:
        self.settings, self.schedule = settings, schedule
        self.planned_epochs: int | None = None  # once planned
        self.deadline = math.inf
        self.plan_at: int | None = None  # the epoch after which to plan (again)
        self.timed_from: tuple[int, float] | None = None  # (epoch, clock) at the end of this process's first pass

    def on_train_start(self, loop: FitLoop) -> None:
        minutes, schedule = self.settings.training.max_minutes, self.settings.schedule
        self.deadline = loop.started + minutes * 60 if minutes else math.inf
        loop.planned = self.planned_epochs or loop.planned
        unplanned = schedule.length == "max_minutes" and self.planned_epochs is None
        self.plan_at = max(2, schedule.warmup_epochs) if unplanned else None
        self.timed_from = None

    def on_train_epoch_end(self, loop: FitLoop) -> None:
        epoch = loop.epoch
        if self.plan_at is not None and self.timed_from and epoch >= self.plan_at:
            again = self.planned_epochs is not None
            loop.planned = self.planned_epochs = self._plan(loop, self.timed_from, again)
            self.timed_from = (epoch, time.perf_counter())
            halfway = (epoch + loop.planned) // 2
            self.plan_at = None if again or halfway <= epoch else halfway
        self.timed_from = self.timed_from or (epoch, time.perf_counter())

    def _plan(self, loop: FitLoop, timed_from: tuple[int, float], again: bool) -> int:
        """The epochs that fit the budget, timed over the passes since ``timed_from`` (rank 0's plan on every rank).
        ``again``: the halfway re-plan (MLflow params ``replanned_*``)."""
        now = time.perf_counter()
        seconds_per_epoch = (now - timed_from[1]) / (loop.epoch - timed_from[0])
        cap = self.settings.training.epochs
        planned = broadcast(planned_epochs(cap, loop.epoch, seconds_per_epoch, self.deadline - now), loop.trainer.group)
        self.schedule.fit_to(planned)
        log.info(
            "Schedule %s to training.max_minutes=%s: %d epochs at %.1f s each (at most training.epochs=%d)",
            "re-fitted" if again else "fitted",
            self.settings.training.max_minutes,
            planned,
            seconds_per_epoch,
            cap,
        )
        timing = round(seconds_per_epoch, 2)
        if again:
            loop.tracker.log_params({"replanned_epochs": planned, "replanned_seconds_per_epoch": timing})
        else:
            loop.tracker.log_params({"planned_epochs": planned, "seconds_per_epoch": timing})
        return planned

    def stop_reason(self, loop: FitLoop) -> tuple[Any, ...] | None:
        if time.perf_counter() > self.deadline:
            return ("Stopping: training.max_minutes=%s reached", self.settings.training.max_minutes)
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"planned_epochs": self.planned_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.planned_epochs = state["planned_epochs"]


class ValidateEvery(Callback):
    """``training.val_every``: validate every that many epochs, and after the last planned one."""

    def __init__(self, every: int) -> None:
        self.every = every

    def should_validate(self, loop: FitLoop) -> bool:
        return loop.epoch % self.every == 0 or loop.epoch == loop.planned


class History(Callback):
    """Each epoch's row: training loss, learning rate, wall-clock minutes (across resumes) and, where validated, the
    validation Dice; appended to the history and logged to MLflow at the epoch's step."""

    spent_minutes = 0.0  # by the runs this one resumes

    def on_train_start(self, loop: FitLoop) -> None:
        history = loop.progress.history
        self.spent_minutes = history[-1].get("minutes", 0.0) if history else 0.0

    def on_train_epoch_end(self, loop: FitLoop) -> None:
        loop.row["lr"] = loop.trainer.optimizer.param_groups[0]["lr"]
        loop.row["minutes"] = self.spent_minutes + (time.perf_counter() - loop.started) / 60

    def on_epoch_end(self, loop: FitLoop) -> None:
        loop.progress.history.append(loop.row)
        loop.progress.epoch = loop.epoch
        loop.tracker.log_metrics({k: v for k, v in loop.row.items() if k not in ("epoch", "minutes")}, step=loop.epoch)


class KeepModel(Callback):
    """``model/best.pt``, the model a run keeps (``training.keep``): the best validation epoch's weights, written as it
    improves, or the final epoch's, written at the end (validated first where that epoch was not). Its state: the
    best epoch and its Dice, tracked either way."""

    state_key = BEST_EPOCH

    def __init__(self, keep: str) -> None:
        self.keep = keep
        self.best_dice, self.best_epoch = -math.inf, 0

    def on_validation_end(self, loop: FitLoop) -> None:
        if loop.row["val_dice"] > self.best_dice:
            self.best_dice, self.best_epoch = loop.row["val_dice"], loop.epoch
            if self.keep == "best":
                self._save(loop, loop.epoch, self.best_dice)

    def on_train_end(self, loop: FitLoop) -> None:
        if self.keep == "final" and loop.progress.history:
            final = loop.progress.history[-1]
            if "val_dice" not in final:
                final["val_dice"] = loop.trainer.validate()
            self._save(loop, final["epoch"], final["val_dice"])

    def kept(self, history: list[dict[str, float]]) -> tuple[float, int]:
        """The validation Dice and epoch of the model kept."""
        if self.keep == "final" and history:
            return history[-1]["val_dice"], history[-1]["epoch"]
        return self.best_dice, self.best_epoch

    @staticmethod
    def _save(loop: FitLoop, epoch: int, dice: float) -> None:
        trainer = loop.trainer
        if trainer.group.is_main:
            trainer.checkpoint(epoch, val_dice=dice).save(trainer.model.best)

    def state_dict(self) -> dict[str, Any]:
        return {"best_dice": self.best_dice, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_dice, self.best_epoch = state["best_dice"], state["best_epoch"]


class LastCheckpoint(Callback):
    """``model/last.pt`` after every epoch (rank 0): what ``--resume`` rebuilds from, every callback's state included.
    Once nothing is left to train (early stopping), its epoch is ``training.epochs``."""

    def on_epoch_end(self, loop: FitLoop) -> None:
        trainer = loop.trainer
        if trainer.group.is_main:
            checkpoint = trainer.checkpoint(
                trainer.settings.training.epochs if loop.finished else loop.epoch,
                optimizer=trainer.optimizer.state_dict(),
                step=trainer.step_choice,
                history=loop.progress.history,
                callbacks=trainer.callbacks.state_dict(),
            )
            checkpoint.save(trainer.model.last)


class ProgressReport(Callback):
    """A progress bar over the planned training steps (rank 0, on a terminal) and one log line per epoch."""

    def on_train_start(self, loop: FitLoop) -> None:
        steps = loop.trainer.steps_per_epoch
        self.total = loop.planned * steps
        self.bar = loop.enter(progress_bar(enabled=loop.trainer.group.is_main))
        self.task = self.bar.add_task("train", total=self.total, completed=loop.epoch * steps)

    def on_train_batch_end(self, loop: FitLoop, loss: float) -> None:
        self.bar.update(self.task, advance=1, description=f"epoch {loop.epoch}/{loop.planned} loss {loss:.3f}")

    def on_train_epoch_end(self, loop: FitLoop) -> None:
        total = loop.planned * loop.trainer.steps_per_epoch
        if total != self.total:  # a time budget's plan
            self.total = total
            self.bar.update(self.task, total=total)

    def on_epoch_end(self, loop: FitLoop) -> None:
        row = loop.row
        validated = f", val Dice {row['val_dice']:.4f}" if "val_dice" in row else ""
        log.info("epoch %d: loss %.4f%s", loop.epoch, row["train_loss"], validated)

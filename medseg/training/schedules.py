"""The optimiser and the learning-rate schedules (warm-up cosine, poly), and how many epochs a time budget holds."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from medseg.models.checkpoint import LR_SCHEDULE
from medseg.training.hooks import Callback, FitLoop
from medseg.training.settings import TrainingSettings


def build_optimizer(settings: TrainingSettings, network: nn.Module) -> torch.optim.Optimizer:
    """The configured optimiser over all network parameters."""
    opt = settings.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(
            network.parameters(), lr=opt.lr, momentum=0.99, nesterov=True, weight_decay=opt.weight_decay
        )
    optimizer_class = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    return optimizer_class(network.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)


class PolySchedule(torch.optim.lr_scheduler.LambdaLR):
    """nnU-Net's poly decay, ``lr * (1 - step / t_total) ** exponent``; ``t_total`` may be re-planned mid-run."""

    def __init__(self, optimizer: torch.optim.Optimizer, t_total: int, exponent: float) -> None:
        self.t_total, self.exponent = max(1, t_total), exponent
        super().__init__(optimizer, self.lr_lambda)

    def lr_lambda(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.t_total) ** self.exponent


def build_scheduler(settings: TrainingSettings, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Linear warm-up then cosine decay (MONAI's WarmupCosineSchedule), poly (nnU-Net's) or constant, stepped per
    iteration; or ReduceLROnPlateau on validation Dice, stepped per validation."""
    from monai.optimizers import WarmupCosineSchedule

    schedule = settings.schedule
    if schedule.name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if schedule.name == "plateau":  # stepped on validation Dice (see LearningRateSchedule)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=schedule.plateau_factor, patience=schedule.plateau_patience
        )
    total = settings.training.epochs * steps_per_epoch
    if schedule.name == "poly":
        return PolySchedule(optimizer, total, schedule.poly_exponent)
    return WarmupCosineSchedule(
        optimizer,
        warmup_steps=settings.schedule.warmup_epochs * steps_per_epoch,
        t_total=total,
        end_lr=settings.schedule.end_lr,
    )


class LearningRateSchedule(Callback):
    """The schedule as a hook of the training loop: stepped after every training step, or (plateau) after every
    validation; its length re-planned by a time budget (:meth:`fit_to`); its state (the scheduler's) in ``last.pt``."""

    state_key = LR_SCHEDULE

    def __init__(self, scheduler: Any, steps_per_epoch: int) -> None:
        self.scheduler, self.steps_per_epoch = scheduler, steps_per_epoch
        self.per_validation = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    def on_train_batch_end(self, loop: FitLoop, loss: float) -> None:
        if not self.per_validation:
            self.scheduler.step()

    def on_validation_end(self, loop: FitLoop) -> None:
        if self.per_validation:
            self.scheduler.step(loop.row["val_dice"])

    def fit_to(self, epochs: int) -> None:
        """Stretch or shrink a cosine / poly schedule to end after ``epochs`` (the others have no end)."""
        if hasattr(self.scheduler, "t_total"):
            self.scheduler.t_total = epochs * self.steps_per_epoch

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def planned_epochs(cap: int, epochs_done: int, seconds_per_epoch: float, seconds_left: float) -> int:
    """How many epochs a budget holds: those done plus the whole epochs that fit in what is left, at most ``cap``."""
    return min(cap, epochs_done + max(0, math.floor(seconds_left / seconds_per_epoch)))

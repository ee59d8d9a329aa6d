"""Train stage: cached data, AdamW + warm-up cosine, optional bf16 autocast, best/last checkpoints.

:meth:`Trainer.fit` is a short loop of hooks (:mod:`.hooks`); what happens around the epochs is in the callbacks
(:mod:`.callbacks`). A model is fitted the way its type asks (:func:`fitting_for`): a network by optimiser steps
(:class:`GradientSteps`), a classical baseline by its own search (:class:`GridSearch`).

The loss and the Dice are always computed in fp32 on logits cast back from bf16.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from functools import partial, singledispatch
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.core.atomic import atomic_write_text
from medseg.core.errors import ConfigError
from medseg.core.layout import ModelLayout, RunLayout
from medseg.data.dataset import PreparedData
from medseg.models.checkpoint import BEST_EPOCH, Checkpoint
from medseg.models.classical import ClassicalSegmenter
from medseg.models.init_from import WeightMatch, initialise
from medseg.models.registry import build_loss, build_network
from medseg.runtime.devices import Precision, precision_for, resolve_device
from medseg.runtime.distributed import Ranks, all_sum, barrier, broadcast, rank_device
from medseg.runtime.steps import channels_last_format, channels_last_hazard, fastest_step, step_name, training_step
from medseg.tracking.tracker import Tracker
from medseg.training.callbacks import KeepModel, default_callbacks, frozen_params
from medseg.training.hooks import FitLoop, TrainingState
from medseg.training.loaders import build_loaders, seed_epoch
from medseg.training.schedules import LearningRateSchedule, build_optimizer, build_scheduler
from medseg.training.settings import TrainingSettings
from medseg.training.validation import validation_dice

__all__ = ["TrainResult", "Trainer", "TrainingState", "fitting_for", "train", "use_bf16"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What the train stage produced."""

    model_dir: Path
    best_val_dice: float
    best_epoch: int
    epochs_run: int
    minutes: float
    history: list[dict[str, float]]
    kept_epoch: int  # whose weights model/best.pt holds: best_epoch, or the final one (training.keep)


def use_bf16(setting: bool | str) -> bool:
    """bf16 autocast on the CPU: ``auto`` turns it on only where the CPU has native bf16 (AVX512-BF16/AMX).

    On CPUs without it (e.g. AVX2-only) bf16 is emulated and measured ~20x slower than fp32.
    """
    return precision_for(torch.device("cpu"), setting).enabled


class Trainer:
    """The parts of one training run, built once from the config; :meth:`fit` runs the epochs."""

    def __init__(
        self,
        settings: TrainingSettings,
        data: PreparedData,
        model: ModelLayout,
        group: Ranks = Ranks(),
        saved_step: dict[str, Any] | None = None,
        resume: bool = False,
    ) -> None:
        """``saved_step``: the step choice of a run being resumed (else chosen here, see :meth:`_choose_step`);
        ``resume``: the weights come from ``last.pt`` (:meth:`resume`), not from ``model.init_from``."""
        self.settings, self.model, self.group = settings, model, group
        if settings.training.freeze and group.distributed:
            raise ConfigError(
                "training.freeze: not available with several processes (DistributedDataParallel needs the same "
                "trainable parameters throughout); train with one process"
            )
        self.device = rank_device(resolve_device(settings.training.device, "training.device"), group)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch / image sizes: the fastest kernels, found once
        started = time.perf_counter()
        self.train_loader, self.val_loader = build_loaders(settings, data, group, self.device)
        log.info(
            "Cached %d training and %d validation images in %.1f s",
            len(self.train_loader.dataset),
            len(self.val_loader.dataset),
            time.perf_counter() - started,
        )
        self.network = build_network(**settings.network)
        if settings.training.freeze and not settings.init_from:
            log.warning("training.freeze without model.init_from: the frozen encoder keeps its random initialisation")
        self.initialised: WeightMatch | None = None  # what model.init_from filled of a fresh (not resumed) network
        if settings.init_from and not resume:
            name = settings.network["name"]
            self.initialised = initialise(self.network, settings.init_from, name, settings.stored)
        self.network = self.network.to(self.device)
        self.trained = self.network  # what runs the steps: the network, or its DistributedDataParallel wrapper
        if group.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.trained = DistributedDataParallel(self.network, device_ids=ids)
        self.loss_function = build_loss(
            settings.loss.name,
            settings.network["out_channels"],
            settings.loss.args,
            settings.validation.labels.multilabel,
            settings.validation.labels.ignore_label,
            settings.loss.weights,
        )
        if getattr(self.network, "deep_supervision", False):  # DynUNet's heads, stacked in training mode
            from medseg.models.losses import StackedDeepSupervision

            self.loss_function = StackedDeepSupervision(self.loss_function)
        self.optimizer = build_optimizer(settings, self.network)
        self.steps_per_epoch = len(self.train_loader)
        self.schedule = LearningRateSchedule(
            build_scheduler(settings, self.optimizer, self.steps_per_epoch), self.steps_per_epoch
        )
        self.callbacks = default_callbacks(settings, self.schedule, group)
        self.fitting = fitting_for(self.network)
        self.step_timings: dict[str, float] = {}
        channels_last, self.precision = self._choose_step(saved_step)
        self.memory_format = channels_last_format(settings.spatial_dims) if channels_last else None
        if self.memory_format is not None:
            self.network.to(memory_format=self.memory_format)
        self.bf16 = self.precision.dtype == torch.bfloat16
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.needs_scaler else None
        # training.compile: None until the first step compiles (or fails to), then whether it worked
        self.compiled: bool | None = None

    def _choose_step(self, saved: dict[str, Any] | None) -> tuple[bool, Precision]:
        """Channels-last or not, and the precision. ``memory_format: auto`` tries both layouts and ``bf16: auto``
        fp32 against the mixed precision this device runs natively (never emulated bf16); with more than one
        candidate, real steps on the first batch are timed and the fastest kept (rank 0's choice on every rank).
        A resumed run keeps the choice saved in its checkpoint."""
        tcfg = self.settings.training
        if saved is not None:
            return saved["channels_last"], precision_for(self.device, saved["precision"] != "fp32")
        layouts = [False, True] if tcfg.memory_format == "auto" else [tcfg.memory_format == "channels_last"]
        hazard = channels_last_hazard(self.network, self.device) if any(layouts) else None
        if hazard:
            log.warning(
                "training.memory_format %s: training contiguous; channels-last crashes torch's CPU backward here (%s)",
                tcfg.memory_format,
                hazard,
            )
            layouts = [False]
        mixed = precision_for(self.device, tcfg.bf16)
        precisions = [precision_for(self.device, False), mixed] if tcfg.bf16 == "auto" and mixed.enabled else [mixed]
        candidates = [(layout, precision) for layout in layouts for precision in precisions]
        if len(candidates) == 1 or not self.fitting.steps:
            return candidates[0]
        batch = next(iter(self.train_loader))
        chosen, self.step_timings = fastest_step(self.network, batch, self.loss_function, candidates, self.device)
        index, self.step_timings = broadcast((candidates.index(chosen), self.step_timings), self.group)
        chosen = candidates[index]
        log.info(
            "Fastest training step here: %s (%s)",
            step_name(*chosen),
            ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.step_timings.items()),
        )
        return chosen

    @property
    def step_choice(self) -> dict[str, Any]:
        """What a checkpoint records of the step choice, for a resumed run."""
        return {"channels_last": self.memory_format is not None, "precision": self.precision.name}

    def checkpoint(self, epoch: int, **fields: Any) -> Checkpoint:
        """A checkpoint of the network now (weights, the arguments that rebuild it, the config) at ``epoch``."""
        return Checkpoint.of(self.network, self.settings.network, self.settings.stored, epoch, **fields)

    def resume(self) -> TrainingState:
        """Weights, optimiser, every callback's state (the schedule's among them) and progress from ``last.pt``."""
        saved = Checkpoint.load(self.model.last)
        self.network.load_state_dict(saved.state_dict)
        self.optimizer.load_state_dict(saved.optimizer)
        self.callbacks.load_state_dict(saved.callbacks)
        progress = TrainingState(list(saved.history or []), saved.epoch)
        best = self.callbacks.find(KeepModel)
        log.info(
            "Resuming after epoch %d (best validation Dice %.4f at epoch %d)",
            progress.epoch,
            best.best_dice,
            best.best_epoch,
        )
        return progress

    def validate(self) -> float:
        """Validation Dice of the network now (over the ranks)."""
        return validation_dice(
            self.network, self.val_loader, self.settings.validation, self.precision, self.group, self.device
        )

    def run_epoch(self, epoch: int, advance: Any) -> float:
        """One seeded pass over the training loader; the mean loss (over the ranks). ``advance(loss)`` after every
        step (the hooks' ``on_train_batch_end``: the schedule's step, the progress bar)."""
        seed_epoch(self.settings.seed, epoch, self.train_loader.dataset.transform, self.train_loader.generator)
        if self.train_loader.sampler is not None and hasattr(self.train_loader.sampler, "set_epoch"):
            self.train_loader.sampler.set_epoch(epoch)
        self.trained.train()
        losses = []
        for batch in self.train_loader:
            losses.append(self._step(batch))
            advance(losses[-1])
        total, count = all_sum([sum(losses), len(losses)], self.group, self.device)
        return total / count

    def _step(self, batch: dict[str, torch.Tensor]) -> float:
        """One training step; with ``training.compile``, the first one compiles, and a failure to compile (no C++
        compiler, an unsupported operation) falls back to eager steps with a warning."""

        def step() -> float:
            return training_step(
                self.trained,
                batch,
                self.loss_function,
                self.optimizer,
                self.precision,
                self.scaler,
                self.device,
                self.memory_format,
            )

        if self.compiled is not None or not self.settings.training.compile:
            return step()
        eager = self.trained
        try:
            self.trained = torch.compile(eager)
            loss = step()
        except Exception as exc:  # inductor reports a missing compiler or an unsupported op at the first call
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("training.compile: torch.compile failed (%s); training without it", reason[:200])
            self.trained, self.compiled = eager, False
            return step()
        self.compiled = True
        return loss

    def fit(self, tracker: Tracker, progress: TrainingState, started: float) -> TrainingState:
        """Train from ``progress.epoch + 1`` (nnU-Net's ``run_training``): progress, the time budget, validation every
        N epochs, the kept model, ``last.pt`` and early stopping are hooks of :attr:`callbacks`."""
        hooks, loop = self.callbacks, FitLoop(self, tracker, progress, started)
        with hooks.running(loop):  # on_train_start; what it opened (the progress bar) closes on leaving
            while loop.epoch < loop.planned:
                loop.begin_epoch()
                hooks.on_epoch_start(loop)
                loop.row["train_loss"] = self.run_epoch(loop.epoch, partial(hooks.on_train_batch_end, loop))
                hooks.on_train_epoch_end(loop)
                if hooks.should_validate(loop):
                    loop.row["val_dice"] = self.validate()
                    hooks.on_validation_end(loop)
                hooks.on_epoch_end(loop)
                if hooks.should_stop(loop):  # rank 0 decides, every rank follows
                    break
        hooks.on_train_end(loop)
        barrier(self.group)  # the ranks leave together, the model written (rank 0 goes on alone)
        return progress


def train(
    settings: TrainingSettings,
    data: PreparedData,
    run_dir: Path,
    tracker: Tracker,
    resume: bool = False,
    group: Ranks = Ranks(),
) -> TrainResult:
    """Fit the configured model on the train split, keeping the best epoch on validation Dice or the final one
    (``training.keep``).

    With ``resume``, training continues after the epoch saved in ``model/last.pt`` (weights, optimiser,
    schedule, history); every epoch is seeded from (seed, epoch), so the result equals an uninterrupted run.
    """
    from monai.utils import set_determinism

    set_determinism(seed=settings.seed, use_deterministic_algorithms=settings.training.deterministic or None)
    torch.set_num_threads(settings.training.num_threads or max(1, (os.cpu_count() or 1) // group.world))
    layout = RunLayout(run_dir)
    layout.model.root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    saved_step = Checkpoint.load(layout.model.last).step if resume and layout.model.last.exists() else None
    trainer = Trainer(settings, data, layout.model, group, saved_step, resume)
    return trainer.fitting.fit(trainer, tracker, layout, resume, started)


class Fitting:
    """How the train stage fits a model (:func:`fitting_for` picks it by the model's type)."""

    steps = True  # whether the model trains by optimiser steps (only then is the step timed: memory_format/bf16 auto)

    def fit(self, trainer: Trainer, tracker: Tracker, layout: RunLayout, resume: bool, started: float) -> TrainResult:
        raise NotImplementedError


class GradientSteps(Fitting):
    """A network: optimiser steps over epochs (:meth:`Trainer.fit`), resumable after any epoch from ``last.pt``."""

    def fit(self, trainer: Trainer, tracker: Tracker, layout: RunLayout, resume: bool, started: float) -> TrainResult:
        if resume:
            progress = trainer.resume()
        else:
            progress = TrainingState()
            tracker.log_params(
                {
                    "network_parameters": sum(p.numel() for p in trainer.network.parameters()),
                    "bf16_active": trainer.bf16,
                    "precision": trainer.precision.name,
                    "memory_format": "channels_last" if trainer.memory_format is not None else "contiguous",
                    **{f"step_ms.{k.replace('+', '_')}": round(s * 1000, 1) for k, s in trainer.step_timings.items()},
                    "device": str(trainer.device),
                    "processes": trainer.group.world,
                    "train_cases": len(trainer.train_loader.dataset),
                    "val_cases": len(trainer.val_loader.dataset),
                    **(trainer.initialised.params() if trainer.initialised else {}),
                    **frozen_params(trainer.settings, trainer.network),
                }
            )
        progress = trainer.fit(tracker, progress, started)
        if trainer.compiled is not None:
            tracker.set_tags({"compiled": str(trainer.compiled).lower()})
        minutes = (time.perf_counter() - started) / 60
        if trainer.group.is_main:
            atomic_write_text(layout.history, json.dumps(progress.history, indent=1))
        best = trainer.callbacks.find(KeepModel)
        kept_dice, kept_epoch = best.kept(progress.history)
        log.info("Kept the %s epoch %d: validation Dice %.4f (%.1f min)", best.keep, kept_epoch, kept_dice, minutes)
        return TrainResult(
            layout.model.root,
            best.best_dice,
            best.best_epoch,
            progress.epoch,
            minutes,
            progress.history,
            kept_epoch,
        )


class GridSearch(Fitting):
    """A classical baseline: a grid search of its parameters on the training split (Dice on the preprocessed images,
    :meth:`ClassicalSegmenter.fit`), logged; the chosen parameters are the checkpoint. A resumed run fits again."""

    steps = False

    def __init__(self, segmenter: ClassicalSegmenter) -> None:
        self.segmenter = segmenter

    def fit(self, trainer: Trainer, tracker: Tracker, layout: RunLayout, resume: bool, started: float) -> TrainResult:
        from monai.data import DataLoader

        from medseg.data.cache import cached_dataset
        from medseg.transforms import validation_transforms

        settings = trainer.settings
        records = trainer.train_loader.dataset.data
        dataset = cached_dataset(settings.data, records, validation_transforms(settings.transforms))
        loader = DataLoader(dataset, batch_size=settings.training.batch_size)
        batches = [(np.asarray(batch["image"]), np.asarray(batch["label"])[:, 0]) for batch in loader]
        best, tried = self.segmenter.fit(batches)
        train_dice = max(score for _, score in tried)
        val_dice = trainer.validate()
        grid_rows = [{**params, "train_dice": round(score, 6)} for params, score in tried]
        atomic_write_text(layout.model.root / "grid_search.json", json.dumps(grid_rows, indent=1))
        tracker.log_params({f"classical.{k}": v for k, v in best.items()} | {"classical.grid_size": len(tried)})
        tracker.log_metrics({"train_dice": train_dice, "val_dice": val_dice}, step=1)
        minutes = (time.perf_counter() - started) / 60
        history = [{"epoch": 1, "train_loss": 1.0 - train_dice, "val_dice": val_dice, "lr": 0.0, "minutes": minutes}]
        trainer.checkpoint(1, val_dice=val_dice).save(layout.model.best)
        kept = {BEST_EPOCH: {"best_dice": val_dice, "best_epoch": 1}}
        trainer.checkpoint(1, val_dice=val_dice, history=history, callbacks=kept).save(layout.model.last)
        atomic_write_text(layout.history, json.dumps(history, indent=1))
        log.info(
            "%s fitted on %d training images: validation Dice %.4f", settings.network["name"], len(records), val_dice
        )
        return TrainResult(layout.model.root, val_dice, 1, 1, minutes, history, 1)


@singledispatch
def fitting_for(network: nn.Module) -> Fitting:
    """How the train stage fits ``network``: by its type (a type registers its own way); a network by gradient
    steps."""
    return GradientSteps()


@fitting_for.register
def _(network: ClassicalSegmenter) -> Fitting:
    return GridSearch(network)

"""Train stage: cached data, AdamW + warm-up cosine, optional bf16 autocast, best/last checkpoints.

The loss and the Dice are always computed in fp32 on logits cast back from bf16.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.config.schema import PipelineConfig
from medseg.core.atomic import atomic_write_text
from medseg.core.layout import ModelLayout, RunLayout
from medseg.core.progress import progress_bar
from medseg.data.dataset import PreparedData
from medseg.models.checkpoint import load_checkpoint, network_spec, save_checkpoint
from medseg.models.registry import build_loss, build_network
from medseg.runtime.devices import Precision, precision_for, resolve_device
from medseg.runtime.distributed import Ranks, all_sum, barrier, broadcast, rank_device
from medseg.runtime.steps import channels_last_format, channels_last_hazard, fastest_step, step_name, training_step
from medseg.tracking.tracker import Tracker
from medseg.training.loaders import build_loaders, seed_epoch
from medseg.training.schedules import build_optimizer, build_scheduler, planned_epochs
from medseg.training.validation import validation_dice
from medseg.version import __version__

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


@dataclass
class TrainingState:
    """Where training stands: saved in ``last.pt`` after every epoch, restored by ``--resume``."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_dice: float = -math.inf
    best_epoch: int = 0
    stale_rounds: int = 0
    epoch: int = 0  # the last finished epoch
    planned_epochs: int | None = None  # schedule.length max_minutes: the epochs that fit, once timed

    def record(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` with this progress added (for ``last.pt``)."""
        return {
            **state,
            "best_val_dice": self.best_dice,
            "best_epoch": self.best_epoch,
            "stale_rounds": self.stale_rounds,
            "history": self.history,
            "planned_epochs": self.planned_epochs,
        }

    @classmethod
    def restored(cls, state: dict[str, Any]) -> TrainingState:
        return cls(
            list(state["history"]),
            state["best_val_dice"],
            state["best_epoch"],
            state["stale_rounds"],
            state["epoch"],
            state.get("planned_epochs"),
        )


class Trainer:
    """The parts of one training run, built once from the config; :meth:`fit` runs the epochs."""

    def __init__(
        self,
        cfg: PipelineConfig,
        data: PreparedData,
        model: ModelLayout,
        group: Ranks = Ranks(),
        saved_step: dict[str, Any] | None = None,
    ) -> None:
        """``saved_step``: the step choice of a run being resumed (else chosen here, see :meth:`_choose_step`)."""
        self.cfg, self.model, self.group = cfg, model, group
        self.device = rank_device(resolve_device(cfg.training.device, "training.device"), group)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch / image sizes: the fastest kernels, found once
        started = time.perf_counter()
        self.train_loader, self.val_loader = build_loaders(cfg, data, group, self.device)
        log.info(
            "Cached %d training and %d validation images in %.1f s",
            len(self.train_loader.dataset),
            len(self.val_loader.dataset),
            time.perf_counter() - started,
        )
        self.network = build_network(
            cfg.model.name, cfg.spatial_dims, cfg.model.in_channels, cfg.model.out_channels, cfg.model.args
        ).to(self.device)
        self.trained = self.network  # what runs the steps: the network, or its DistributedDataParallel wrapper
        if group.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.trained = DistributedDataParallel(self.network, device_ids=ids)
        self.loss_function = build_loss(
            cfg.loss.name,
            cfg.model.out_channels,
            cfg.loss.args,
            bool(cfg.data.regions),
            cfg.data.ignore_label,
            cfg.loss.weights,
        )
        if getattr(self.network, "deep_supervision", False):  # DynUNet's heads, stacked in training mode
            from medseg.models.losses import StackedDeepSupervision

            self.loss_function = StackedDeepSupervision(self.loss_function)
        self.optimizer = build_optimizer(cfg, self.network)
        self.scheduler = build_scheduler(cfg, self.optimizer, len(self.train_loader))
        self.step_timings: dict[str, float] = {}
        channels_last, self.precision = self._choose_step(saved_step)
        self.memory_format = channels_last_format(cfg.spatial_dims) if channels_last else None
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
        tcfg = self.cfg.training
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
        if len(candidates) == 1 or getattr(self.network, "classical", False):
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

    def checkpoint(self, epoch: int, **extra: Any) -> dict[str, Any]:
        """What every checkpoint holds: weights, the network's arguments, the config, the epoch."""
        return {
            "state_dict": self.network.state_dict(),
            "network": network_spec(self.cfg),
            "config": self.cfg.to_dict(),
            "epoch": epoch,
            "medseg_version": __version__,
            **extra,
        }

    def resume(self) -> TrainingState:
        """Weights, optimiser, schedule and progress from ``last.pt``."""
        state = load_checkpoint(self.model.last)
        self.network.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        progress = TrainingState.restored(state)
        log.info(
            "Resuming after epoch %d (best validation Dice %.4f at epoch %d)",
            progress.epoch,
            progress.best_dice,
            progress.best_epoch,
        )
        return progress

    def run_epoch(self, epoch: int, advance: Any) -> float:
        """One seeded pass over the training loader; the mean loss (over the ranks)."""
        seed_epoch(self.cfg.seed, epoch, self.train_loader.dataset.transform, self.train_loader.generator)
        if self.train_loader.sampler is not None and hasattr(self.train_loader.sampler, "set_epoch"):
            self.train_loader.sampler.set_epoch(epoch)
        self.trained.train()
        losses = []
        for batch in self.train_loader:
            losses.append(self._step(batch))
            if not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step()
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

        if self.compiled is not None or not self.cfg.training.compile:
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
        """Train from ``progress.epoch + 1``: validate, keep the model (``training.keep``), save ``last.pt``."""
        tcfg = self.cfg.training
        spent_minutes = progress.history[-1].get("minutes", 0.0) if progress.history else 0.0
        deadline = started + tcfg.max_minutes * 60 if tcfg.max_minutes else math.inf
        steps = len(self.train_loader)
        planned = progress.planned_epochs or tcfg.epochs
        # schedule.length max_minutes: planned after the warm-up, planned again halfway on the epochs since (a slow
        # start, e.g. another job sharing the CPU, then stops holding back the rest of the budget)
        unplanned = self.cfg.schedule.length == "max_minutes" and progress.planned_epochs is None
        plan_at = max(2, self.cfg.schedule.warmup_epochs) if unplanned else None
        timed_from: tuple[int, float] | None = None  # (epoch, clock) at the end of this process's first pass
        with progress_bar(enabled=self.group.is_main) as bar:
            task = bar.add_task("train", total=planned * steps, completed=progress.epoch * steps)
            epoch = progress.epoch
            while epoch < planned:
                epoch += 1

                def advance(loss: float, epoch: int = epoch, planned: int = planned) -> None:
                    bar.update(task, advance=1, description=f"epoch {epoch}/{planned} loss {loss:.3f}")

                row = {"epoch": epoch, "train_loss": self.run_epoch(epoch, advance)}
                if plan_at is not None and timed_from and epoch >= plan_at:
                    again = progress.planned_epochs is not None
                    planned = progress.planned_epochs = self._plan(epoch, timed_from, deadline, tracker, again)
                    bar.update(task, total=planned * steps)
                    timed_from = (epoch, time.perf_counter())
                    plan_at = None if again or (epoch + planned) // 2 <= epoch else (epoch + planned) // 2
                timed_from = timed_from or (epoch, time.perf_counter())
                row["lr"] = self.optimizer.param_groups[0]["lr"]
                row["minutes"] = spent_minutes + (time.perf_counter() - started) / 60  # wall clock, across resumes
                if epoch % tcfg.val_every == 0 or epoch == planned:
                    row["val_dice"] = validation_dice(
                        self.network, self.val_loader, self.cfg, self.precision, self.group, self.device
                    )
                    if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                        self.scheduler.step(row["val_dice"])
                    if row["val_dice"] > progress.best_dice:
                        progress.best_dice, progress.best_epoch, progress.stale_rounds = row["val_dice"], epoch, 0
                        if self.group.is_main and tcfg.keep == "best":
                            save_checkpoint(self.model.best, self.checkpoint(epoch, val_dice=progress.best_dice))
                    else:
                        progress.stale_rounds += 1
                progress.history.append(row)
                progress.epoch = epoch
                tracker.log_metrics({k: v for k, v in row.items() if k not in ("epoch", "minutes")}, step=epoch)
                patience = tcfg.early_stopping_patience
                patience_spent = bool(patience and progress.stale_rounds >= patience)
                last = self.checkpoint(
                    tcfg.epochs if patience_spent else epoch,  # a resumed run that stopped early stays stopped
                    optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(),
                    step=self.step_choice,
                )
                if self.group.is_main:
                    save_checkpoint(self.model.last, progress.record(last))
                log.info(
                    "epoch %d: loss %.4f%s",
                    epoch,
                    row["train_loss"],
                    f", val Dice {row['val_dice']:.4f}" if "val_dice" in row else "",
                )
                # rank 0 decides (its clock for max_minutes) and every rank follows
                out_of_time = broadcast(time.perf_counter() > deadline, self.group)
                if broadcast(patience_spent, self.group):
                    log.info("Early stopping: no validation improvement in %d rounds", progress.stale_rounds)
                    break
                if out_of_time:
                    log.info("Stopping: training.max_minutes=%s reached", tcfg.max_minutes)
                    break
        if tcfg.keep == "final" and progress.history:
            self._keep_final(progress)
        barrier(self.group)  # the ranks leave together, the model written (rank 0 goes on alone)
        return progress

    def _keep_final(self, progress: TrainingState) -> None:
        """``training.keep: final``: the last epoch's weights become the model (validated if that epoch was not)."""
        final = progress.history[-1]
        if "val_dice" not in final:
            final["val_dice"] = validation_dice(
                self.network, self.val_loader, self.cfg, self.precision, self.group, self.device
            )
        if self.group.is_main:
            save_checkpoint(self.model.best, self.checkpoint(final["epoch"], val_dice=final["val_dice"]))

    def _plan(
        self, epoch: int, timed_from: tuple[int, float], deadline: float, tracker: Tracker, again: bool = False
    ) -> int:
        """``schedule.length: max_minutes``: the epochs that fit the budget, timed over the passes since
        ``timed_from`` (rank 0's clock); the cosine / poly schedule is stretched or shrunk to end there. ``again``:
        the halfway re-plan, timed since the first (MLflow params ``replanned_*``)."""
        now = time.perf_counter()
        seconds_per_epoch = (now - timed_from[1]) / (epoch - timed_from[0])
        planned = broadcast(
            planned_epochs(self.cfg.training.epochs, epoch, seconds_per_epoch, deadline - now), self.group
        )
        if hasattr(self.scheduler, "t_total"):
            self.scheduler.t_total = planned * len(self.train_loader)
        log.info(
            "Schedule %s to training.max_minutes=%s: %d epochs at %.1f s each (at most training.epochs=%d)",
            "re-fitted" if again else "fitted",
            self.cfg.training.max_minutes,
            planned,
            seconds_per_epoch,
            self.cfg.training.epochs,
        )
        timing = round(seconds_per_epoch, 2)
        if again:
            tracker.log_params({"replanned_epochs": planned, "replanned_seconds_per_epoch": timing})
        else:
            tracker.log_params({"planned_epochs": planned, "seconds_per_epoch": timing})
        return planned


def train(
    cfg: PipelineConfig,
    data: PreparedData,
    run_dir: Path,
    tracker: Tracker,
    resume: bool = False,
    group: Ranks = Ranks(),
) -> TrainResult:
    """Fit the configured network on the train split, keeping the best epoch on validation Dice or the final one
    (``training.keep``).

    With ``resume``, training continues after the epoch saved in ``model/last.pt`` (weights, optimiser,
    schedule, history); every epoch is seeded from (seed, epoch), so the result equals an uninterrupted run.
    """
    from monai.utils import set_determinism

    set_determinism(seed=cfg.seed, use_deterministic_algorithms=cfg.training.deterministic or None)
    torch.set_num_threads(cfg.training.num_threads or max(1, (os.cpu_count() or 1) // group.world))
    layout = RunLayout(run_dir)
    layout.model.root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    saved_step = load_checkpoint(layout.model.last).get("step") if resume and layout.model.last.exists() else None
    trainer = Trainer(cfg, data, layout.model, group, saved_step)
    if getattr(trainer.network, "classical", False):
        return _fit_classical(trainer, tracker, layout, started)
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
                **{f"step_ms.{name.replace('+', '_')}": round(s * 1000, 1) for name, s in trainer.step_timings.items()},
                "device": str(trainer.device),
                "processes": group.world,
                "train_cases": len(trainer.train_loader.dataset),
                "val_cases": len(trainer.val_loader.dataset),
            }
        )
    progress = trainer.fit(tracker, progress, started)
    if trainer.compiled is not None:
        tracker.set_tags({"compiled": str(trainer.compiled).lower()})
    minutes = (time.perf_counter() - started) / 60
    if group.is_main:
        atomic_write_text(layout.history, json.dumps(progress.history, indent=1))
    final = progress.history[-1] if progress.history else None
    if cfg.training.keep == "final" and final is not None:
        kept_dice, kept_epoch = final["val_dice"], final["epoch"]
    else:
        kept_dice, kept_epoch = progress.best_dice, progress.best_epoch
    log.info("Kept the %s epoch %d: validation Dice %.4f (%.1f min)", cfg.training.keep, kept_epoch, kept_dice, minutes)
    return TrainResult(
        layout.model.root,
        progress.best_dice,
        progress.best_epoch,
        progress.epoch,
        minutes,
        progress.history,
        kept_epoch,
    )


def _fit_classical(trainer: Trainer, tracker: Tracker, layout: RunLayout, started: float) -> TrainResult:
    """The train stage of a classical baseline: a grid search of its parameters on the training split (Dice on the
    preprocessed images), logged; the chosen parameters are the checkpoint."""
    from monai.data import DataLoader

    from medseg.data.cache import cached_dataset
    from medseg.models.classical import fit_classical
    from medseg.transforms import validation_transforms

    cfg = trainer.cfg
    records = trainer.train_loader.dataset.data
    loader = DataLoader(cached_dataset(cfg, records, validation_transforms(cfg)), batch_size=cfg.training.batch_size)
    batches = [(np.asarray(batch["image"]), np.asarray(batch["label"])[:, 0]) for batch in loader]
    best, tried = fit_classical(trainer.network, batches)
    train_dice = max(score for _, score in tried)
    val_dice = validation_dice(
        trainer.network, trainer.val_loader, cfg, trainer.precision, trainer.group, trainer.device
    )
    grid_rows = [{**params, "train_dice": round(score, 6)} for params, score in tried]
    atomic_write_text(layout.model.root / "grid_search.json", json.dumps(grid_rows, indent=1))
    tracker.log_params({f"classical.{k}": v for k, v in best.items()} | {"classical.grid_size": len(tried)})
    tracker.log_metrics({"train_dice": train_dice, "val_dice": val_dice}, step=1)
    minutes = (time.perf_counter() - started) / 60
    history = [{"epoch": 1, "train_loss": 1.0 - train_dice, "val_dice": val_dice, "lr": 0.0, "minutes": minutes}]
    state = trainer.checkpoint(1, val_dice=val_dice)
    save_checkpoint(layout.model.best, state)
    save_checkpoint(layout.model.last, TrainingState(history, val_dice, 1, 0, 1).record(state))
    atomic_write_text(layout.history, json.dumps(history, indent=1))
    log.info("%s fitted on %d training images: validation Dice %.4f", cfg.model.name, len(records), val_dice)
    return TrainResult(layout.model.root, val_dice, 1, 1, minutes, history, 1)

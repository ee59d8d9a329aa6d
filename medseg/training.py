"""Train stage: cached data, AdamW + warm-up cosine, optional bf16 autocast, best/last checkpoints.

The loss and the Dice are always computed in fp32 on logits cast back from bf16.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg import __version__
from medseg.atomic import atomic_write_text
from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.config import PipelineConfig
from medseg.data.dataset import PreparedData
from medseg.infer.inferers import activate, build_inferer
from medseg.layout import ModelLayout, RunLayout
from medseg.progress import progress_bar
from medseg.registry import build_loss, build_network
from medseg.tracking.tracker import Tracker

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


def use_bf16(setting: bool | str) -> bool:
    """bf16 autocast: ``auto`` turns it on only where the CPU has native bf16 (AVX512-BF16/AMX).

    On CPUs without it (e.g. AVX2-only) bf16 is emulated and measured ~20x slower than fp32.
    """
    if setting == "auto":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool(setting)


def network_spec(cfg: PipelineConfig) -> dict[str, Any]:
    """The arguments that rebuild the network; stored in every checkpoint."""
    return {
        "name": cfg.model.name,
        "spatial_dims": cfg.spatial_dims,
        "in_channels": cfg.model.in_channels,
        "out_channels": cfg.model.out_channels,
        "args": dict(cfg.model.args),
    }


def build_optimizer(cfg: PipelineConfig, network: nn.Module) -> torch.optim.Optimizer:
    """The configured optimiser over all network parameters."""
    opt = cfg.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(
            network.parameters(), lr=opt.lr, momentum=0.99, nesterov=True, weight_decay=opt.weight_decay
        )
    optimizer_class = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    return optimizer_class(network.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)


def build_scheduler(cfg: PipelineConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Linear warm-up then cosine decay (MONAI's WarmupCosineSchedule), stepped per iteration."""
    from monai.optimizers import WarmupCosineSchedule

    if cfg.schedule.name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    total = cfg.training.epochs * steps_per_epoch
    return WarmupCosineSchedule(
        optimizer, warmup_steps=cfg.schedule.warmup_epochs * steps_per_epoch, t_total=total, end_lr=cfg.schedule.end_lr
    )


def build_loaders(cfg: PipelineConfig, data: PreparedData) -> tuple[Any, Any]:
    """The training loader (shuffled, augmented, cached preprocessing) and the validation loader."""
    from monai.data import CacheDataset, DataLoader, Dataset

    from medseg.transforms import train_transforms, validation_transforms

    def dataset(records, transform):
        if cfg.data.cache == "memory":
            return CacheDataset(records, transform, cache_rate=1.0, num_workers=None, progress=False)
        return Dataset(records, transform)

    train_records, val_records = data.subset("train"), data.subset("val")
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        dataset(train_records, train_transforms(cfg)),
        batch_size=cfg.training.batch_size,
        shuffle=True,
        drop_last=len(train_records) > cfg.training.batch_size,
        num_workers=cfg.data.num_workers,
        generator=generator,
        persistent_workers=cfg.data.num_workers > 0,
    )
    val_loader = DataLoader(
        dataset(val_records, validation_transforms(cfg)),
        batch_size=cfg.training.batch_size if cfg.spatial_dims == 2 else 1,  # whole volumes differ in size
        num_workers=0,
    )
    return train_loader, val_loader


def validation_dice(network: nn.Module, loader: Any, cfg: PipelineConfig, bf16: bool) -> float:
    """Mean Dice over validation cases (foreground classes, or every region) on the preprocessed grid; voxels with
    ``data.ignore_label`` are left out."""
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    inferer = build_inferer(cfg)
    classes, multilabel, ignore = cfg.model.out_channels, bool(cfg.data.regions), cfg.data.ignore_label
    metric = DiceMetric(include_background=classes == 1 or multilabel, reduction="mean", ignore_empty=False)
    network.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for batch in loader:
            probs = activate(inferer(batch["image"], network).float(), multilabel)
            label = batch["label"]
            valid = torch.ones_like(label[:, :1], dtype=torch.bool)
            if ignore is not None:
                valid = ~(label == ignore).any(dim=1, keepdim=True)
                label = label.masked_fill(label == ignore, 0)
            if classes == 1 or multilabel:
                prediction = probs > cfg.evaluation.threshold
                metric(y_pred=(prediction & valid).float(), y=label)
            else:
                prediction = one_hot(probs.argmax(dim=1, keepdim=True), classes) * valid
                metric(y_pred=prediction, y=one_hot(label.long(), classes) * valid)
    value = float(metric.aggregate().item())
    metric.reset()
    return value


def training_step(
    network: nn.Module, batch: dict[str, torch.Tensor], loss_function: nn.Module, optimizer, bf16: bool
) -> float:
    """One optimiser step on a batch; the loss is reduced in fp32 even under bf16 autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = network(batch["image"])
    loss = loss_function(logits.float(), batch["label"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def seed_epoch(seed: int, epoch: int, transform: Any, generator: torch.Generator) -> None:
    """Seed everything random in one epoch from (seed, epoch): shuffling, augmentation, torch.

    A resumed run then replays exactly the epochs an uninterrupted run would have.
    """
    epoch_seed = (seed * 100_003 + epoch) % (2**32)
    generator.manual_seed(epoch_seed)
    torch.manual_seed(epoch_seed)
    np.random.seed(epoch_seed)
    random.seed(epoch_seed)
    transform.set_random_state(seed=epoch_seed)


@dataclass
class TrainingState:
    """Where training stands: saved in ``last.pt`` after every epoch, restored by ``--resume``."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_dice: float = -math.inf
    best_epoch: int = 0
    stale_rounds: int = 0
    epoch: int = 0  # the last finished epoch

    def record(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` with this progress added (for ``last.pt``)."""
        return {
            **state,
            "best_val_dice": self.best_dice,
            "best_epoch": self.best_epoch,
            "stale_rounds": self.stale_rounds,
            "history": self.history,
        }

    @classmethod
    def restored(cls, state: dict[str, Any]) -> TrainingState:
        return cls(
            list(state["history"]), state["best_val_dice"], state["best_epoch"], state["stale_rounds"], state["epoch"]
        )


class Trainer:
    """The parts of one training run, built once from the config; :meth:`fit` runs the epochs."""

    def __init__(self, cfg: PipelineConfig, data: PreparedData, model: ModelLayout) -> None:
        self.cfg, self.model = cfg, model
        started = time.perf_counter()
        self.train_loader, self.val_loader = build_loaders(cfg, data)
        log.info(
            "Cached %d training and %d validation images in %.1f s",
            len(self.train_loader.dataset),
            len(self.val_loader.dataset),
            time.perf_counter() - started,
        )
        self.network = build_network(
            cfg.model.name, cfg.spatial_dims, cfg.model.in_channels, cfg.model.out_channels, cfg.model.args
        )
        self.loss_function = build_loss(
            cfg.loss.name, cfg.model.out_channels, cfg.loss.args, bool(cfg.data.regions), cfg.data.ignore_label
        )
        self.optimizer = build_optimizer(cfg, self.network)
        self.scheduler = build_scheduler(cfg, self.optimizer, len(self.train_loader))
        self.bf16 = use_bf16(cfg.training.bf16)

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
        """One seeded pass over the training loader; the mean loss."""
        seed_epoch(self.cfg.seed, epoch, self.train_loader.dataset.transform, self.train_loader.generator)
        self.network.train()
        losses = []
        for batch in self.train_loader:
            losses.append(training_step(self.network, batch, self.loss_function, self.optimizer, self.bf16))
            self.scheduler.step()
            advance(losses[-1])
        return sum(losses) / len(losses)

    def fit(self, tracker: Tracker, progress: TrainingState, started: float) -> TrainingState:
        """Train from ``progress.epoch + 1``: validate, keep the best checkpoint, save ``last.pt`` every epoch."""
        tcfg = self.cfg.training
        spent_minutes = progress.history[-1].get("minutes", 0.0) if progress.history else 0.0
        deadline = started + tcfg.max_minutes * 60 if tcfg.max_minutes else math.inf
        steps = len(self.train_loader)
        with progress_bar() as bar:
            task = bar.add_task("train", total=tcfg.epochs * steps, completed=progress.epoch * steps)
            for epoch in range(progress.epoch + 1, tcfg.epochs + 1):

                def advance(loss: float, epoch: int = epoch) -> None:
                    bar.update(task, advance=1, description=f"epoch {epoch}/{tcfg.epochs} loss {loss:.3f}")

                row = {"epoch": epoch, "train_loss": self.run_epoch(epoch, advance)}
                row["lr"] = self.optimizer.param_groups[0]["lr"]
                row["minutes"] = spent_minutes + (time.perf_counter() - started) / 60  # wall clock, across resumes
                if epoch % tcfg.val_every == 0 or epoch == tcfg.epochs:
                    row["val_dice"] = validation_dice(self.network, self.val_loader, self.cfg, self.bf16)
                    if row["val_dice"] > progress.best_dice:
                        progress.best_dice, progress.best_epoch, progress.stale_rounds = row["val_dice"], epoch, 0
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
                )
                save_checkpoint(self.model.last, progress.record(last))
                log.info(
                    "epoch %d: loss %.4f%s",
                    epoch,
                    row["train_loss"],
                    f", val Dice {row['val_dice']:.4f}" if "val_dice" in row else "",
                )
                if patience_spent:
                    log.info("Early stopping: no validation improvement in %d rounds", progress.stale_rounds)
                    break
                if time.perf_counter() > deadline:
                    log.info("Stopping: training.max_minutes=%s reached", tcfg.max_minutes)
                    break
        return progress


def train(
    cfg: PipelineConfig, data: PreparedData, run_dir: Path, tracker: Tracker, resume: bool = False
) -> TrainResult:
    """Fit the configured network on the train split, selecting the best epoch on validation Dice.

    With ``resume``, training continues after the epoch saved in ``model/last.pt`` (weights, optimiser,
    schedule, history); every epoch is seeded from (seed, epoch), so the result equals an uninterrupted run.
    """
    from monai.utils import set_determinism

    set_determinism(seed=cfg.seed, use_deterministic_algorithms=cfg.training.deterministic or None)
    torch.set_num_threads(cfg.training.num_threads or os.cpu_count() or 1)
    layout = RunLayout(run_dir)
    layout.model.root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    trainer = Trainer(cfg, data, layout.model)
    if resume:
        progress = trainer.resume()
    else:
        progress = TrainingState()
        tracker.log_params(
            {
                "network_parameters": sum(p.numel() for p in trainer.network.parameters()),
                "bf16_active": trainer.bf16,
                "train_cases": len(trainer.train_loader.dataset),
                "val_cases": len(trainer.val_loader.dataset),
            }
        )
    progress = trainer.fit(tracker, progress, started)
    minutes = (time.perf_counter() - started) / 60
    atomic_write_text(layout.history, json.dumps(progress.history, indent=1))
    log.info("Best validation Dice %.4f at epoch %d (%.1f min)", progress.best_dice, progress.best_epoch, minutes)
    return TrainResult(
        layout.model.root, progress.best_dice, progress.best_epoch, progress.epoch, minutes, progress.history
    )

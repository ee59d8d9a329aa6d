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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg import __version__
from medseg.checkpoint import BEST, LAST, load_checkpoint, save_checkpoint
from medseg.config import PipelineConfig
from medseg.data.dataset import PreparedData
from medseg.io import atomic_write_text
from medseg.progress import progress_bar
from medseg.registry import build_loss, build_network
from medseg.tracking import Tracker

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


def _loaders(cfg: PipelineConfig, data: PreparedData):
    from monai.data import CacheDataset, DataLoader, Dataset

    from medseg.data.transforms import train_transforms, validation_transforms

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


def validation_dice(network: nn.Module, loader, cfg: PipelineConfig, bf16: bool) -> float:
    """Mean Dice over validation cases (foreground classes) on the preprocessed grid."""
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    from medseg.inference import activate, build_inferer

    inferer = build_inferer(cfg)
    classes = cfg.model.out_channels
    metric = DiceMetric(include_background=classes == 1, reduction="mean", ignore_empty=False)
    network.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for batch in loader:
            probs = activate(inferer(batch["image"], network).float())
            if classes == 1:
                metric(y_pred=(probs > cfg.evaluation.threshold).float(), y=batch["label"])
            else:
                prediction = one_hot(probs.argmax(dim=1, keepdim=True), classes)
                metric(y_pred=prediction, y=one_hot(batch["label"].long(), classes))
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
    model_dir = run_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    train_loader, val_loader = _loaders(cfg, data)
    log.info(
        "Cached %d training and %d validation images in %.1f s",
        len(train_loader.dataset),
        len(val_loader.dataset),
        time.perf_counter() - started,
    )
    network = build_network(
        cfg.model.name, cfg.spatial_dims, cfg.model.in_channels, cfg.model.out_channels, cfg.model.args
    )
    loss_function = build_loss(cfg.loss.name, cfg.model.out_channels, cfg.loss.args)
    optimizer = build_optimizer(cfg, network)
    scheduler = build_scheduler(cfg, optimizer, len(train_loader))
    spec = network_spec(cfg)
    tcfg = cfg.training
    bf16 = use_bf16(tcfg.bf16)
    train_transform = train_loader.dataset.transform

    history: list[dict[str, float]] = []
    best_dice, best_epoch, stale_rounds, first_epoch = -math.inf, 0, 0, 1
    if resume:
        state = load_checkpoint(model_dir / LAST)
        network.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best_dice, best_epoch = list(state["history"]), state["best_val_dice"], state["best_epoch"]
        stale_rounds, first_epoch = state["stale_rounds"], state["epoch"] + 1
        log.info(
            "Resuming after epoch %d (best validation Dice %.4f at epoch %d)", state["epoch"], best_dice, best_epoch
        )
    else:
        tracker.log_params(
            {
                "network_parameters": sum(p.numel() for p in network.parameters()),
                "bf16_active": bf16,
                "train_cases": len(train_loader.dataset),
                "val_cases": len(val_loader.dataset),
            }
        )

    spent_minutes = history[-1].get("minutes", 0.0) if history else 0.0
    epoch = first_epoch - 1
    deadline = started + tcfg.max_minutes * 60 if tcfg.max_minutes else math.inf
    with progress_bar() as progress:
        task = progress.add_task("train", total=tcfg.epochs * len(train_loader), completed=epoch * len(train_loader))
        for epoch in range(first_epoch, tcfg.epochs + 1):
            seed_epoch(cfg.seed, epoch, train_transform, train_loader.generator)
            network.train()
            losses = []
            for batch in train_loader:
                losses.append(training_step(network, batch, loss_function, optimizer, bf16))
                scheduler.step()
                progress.update(task, advance=1, description=f"epoch {epoch}/{tcfg.epochs} loss {losses[-1]:.3f}")
            row = {"epoch": epoch, "train_loss": sum(losses) / len(losses), "lr": optimizer.param_groups[0]["lr"]}
            row["minutes"] = spent_minutes + (time.perf_counter() - started) / 60  # wall clock, across resumes
            if epoch % tcfg.val_every == 0 or epoch == tcfg.epochs:
                row["val_dice"] = validation_dice(network, val_loader, cfg, bf16)
                if row["val_dice"] > best_dice:
                    best_dice, best_epoch, stale_rounds = row["val_dice"], epoch, 0
                    save_checkpoint(
                        model_dir / BEST,
                        {
                            "state_dict": network.state_dict(),
                            "network": spec,
                            "config": cfg.to_dict(),
                            "epoch": epoch,
                            "val_dice": best_dice,
                            "medseg_version": __version__,
                        },
                    )
                else:
                    stale_rounds += 1
            history.append(row)
            tracker.log_metrics({k: v for k, v in row.items() if k not in ("epoch", "minutes")}, step=epoch)
            patience_spent = bool(tcfg.early_stopping_patience and stale_rounds >= tcfg.early_stopping_patience)
            save_checkpoint(
                model_dir / LAST,
                {
                    "state_dict": network.state_dict(),
                    "network": spec,
                    "config": cfg.to_dict(),
                    "epoch": tcfg.epochs if patience_spent else epoch,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "best_val_dice": best_dice,
                    "best_epoch": best_epoch,
                    "stale_rounds": stale_rounds,
                    "history": history,
                    "medseg_version": __version__,
                },
            )
            log.info(
                "epoch %d: loss %.4f%s",
                epoch,
                row["train_loss"],
                f", val Dice {row['val_dice']:.4f}" if "val_dice" in row else "",
            )
            if patience_spent:
                log.info("Early stopping: no validation improvement in %d rounds", stale_rounds)
                break
            if time.perf_counter() > deadline:
                log.info("Stopping: training.max_minutes=%s reached", tcfg.max_minutes)
                break
    minutes = (time.perf_counter() - started) / 60
    atomic_write_text(run_dir / "history.json", json.dumps(history, indent=1))
    log.info("Best validation Dice %.4f at epoch %d (%.1f min)", best_dice, best_epoch, minutes)
    return TrainResult(model_dir, best_dice, best_epoch, epoch, minutes, history)

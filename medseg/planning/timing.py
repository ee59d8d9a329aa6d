"""Real training steps timed on the machine a plan is made on: the network, loss, optimiser and precision a planned
pipeline trains with, one warm-up step excluded, the median of the steps after it (``medseg plan --minutes``)."""

from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any

from medseg.config.schema import PipelineConfig

TIMED_STEPS = 3  # steps timed after the warm-up; the median is the step time (a burst of other load hits one)


@dataclass
class TimedCandidate:
    """One network / input / batch tried: its step time and what it means for an epoch and the budget."""

    label: str
    network: str
    model_args: dict[str, Any]
    size: list[int]
    batch: int  # samples per optimiser step (3D: patches per volume, one volume a step)
    steps_per_epoch: int
    warmup_seconds: float
    step_seconds: float  # the median of the timed steps after the warm-up
    timed_steps: int  # 1 where the first timed step was already far over the budget
    epoch_seconds: float  # the estimate: steps x step time x the epoch overhead
    epochs_fit: int  # whole epochs the budget holds at that epoch time
    fits: bool  # at least the rule's epochs fit

    def describe(self) -> str:
        return (
            f"{self.label}: {self.step_seconds:.3f} s/step (median of {self.timed_steps}; warm-up "
            f"{self.warmup_seconds:.3f} s), {self.steps_per_epoch} step(s) an epoch, "
            f"epoch ~{self.epoch_seconds:.3g} s, {self.epochs_fit} epochs fit"
        )

    def record(self) -> dict[str, Any]:
        return asdict(self)


def machine_name(device: str) -> str:
    """The CPU model (lscpu's "Model name") or the CUDA GPU's name."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        listing = ""
    for line in listing.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def precision_name(cfg: PipelineConfig, device: str) -> str:
    """The autocast a training run of ``cfg`` uses on ``device`` (fp32, bf16 or fp16)."""
    import torch

    from medseg.runtime.devices import precision_for

    return precision_for(torch.device(device), cfg.training.bf16).name


def time_training_step(
    cfg: PipelineConfig, size: list[int], batch: int, device: str, give_up_after: float | None = None
) -> tuple[float, list[float]]:
    """(warm-up seconds, timed step seconds) of real optimiser steps of ``cfg``'s network, loss (deep supervision
    included), optimiser and precision on random ``batch`` x ``size`` inputs: TIMED_STEPS after the warm-up (whose
    one-time costs, several seconds for 3D bf16 convolutions, say nothing of the steps after it), or only one when
    it took longer than ``give_up_after`` seconds."""
    import torch

    from medseg.config.settings import training_settings
    from medseg.models.registry import build_loss, build_network
    from medseg.runtime.devices import precision_for
    from medseg.runtime.steps import training_step
    from medseg.training.schedules import build_optimizer

    settings = training_settings(cfg)
    target = torch.device(device)
    network = build_network(**settings.network).to(target).train()
    m = cfg.model
    loss = build_loss(
        cfg.loss.name, m.out_channels, cfg.loss.args, bool(cfg.data.regions), cfg.data.ignore_label, cfg.loss.weights
    )
    if getattr(network, "deep_supervision", False):
        from medseg.models.losses import StackedDeepSupervision

        loss = StackedDeepSupervision(loss)
    optimizer = build_optimizer(settings, network)
    precision = precision_for(target, cfg.training.bf16)
    scaler = torch.amp.GradScaler("cuda") if precision.needs_scaler else None
    generator = torch.Generator().manual_seed(0)
    image = torch.randn((batch, m.in_channels, *size), generator=generator)
    classes = max(2, m.out_channels)
    label = torch.randint(0, classes, (batch, 1, *size), generator=generator).float()
    batch_tensors = {"image": image.to(target), "label": label.to(target)}
    seconds = []
    for index in range(TIMED_STEPS + 1):
        started = time.perf_counter()
        training_step(network, batch_tensors, loss, optimizer, precision, scaler, target)
        if target.type == "cuda":
            torch.cuda.synchronize(target)
        seconds.append(time.perf_counter() - started)
        if index == 1 and give_up_after is not None and seconds[1] > give_up_after:
            break
    return seconds[0], seconds[1:]

"""One optimiser step, on any device and precision; light enough (torch only) for benchmarks on bare GPU machines."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medseg.devices import Precision, precision_for


def training_step(
    network: nn.Module,
    batch: dict[str, torch.Tensor],
    loss_function: nn.Module,
    optimizer,
    precision: Precision | bool,
    scaler: Any = None,
    device: torch.device = torch.device("cpu"),
    memory_format: torch.memory_format | None = None,
) -> float:
    """One optimiser step on a batch; the loss is reduced in fp32 even under autocast (fp16: scaled gradients)."""
    if isinstance(precision, bool):
        precision = precision_for(device, precision)
    image, label = batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)
    if memory_format is not None:
        image = image.contiguous(memory_format=memory_format)
    with precision.autocast():
        logits = network(image)
    loss = loss_function(logits.float(), label)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def channels_last_format(spatial_dims: int) -> torch.memory_format:
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def fastest_step(
    network: nn.Module,
    batch: dict[str, torch.Tensor],
    loss_function: nn.Module,
    candidates: list[tuple[bool, Precision]],
    device: torch.device,
    steps: int = 3,
) -> tuple[tuple[bool, Precision], dict[str, float]]:
    """Time ``steps`` real training steps (after one warm-up) of each (channels-last?, precision) candidate on copies
    of the network and optimiser (the run's own are untouched); the fastest and every median seconds per step."""
    import copy
    import statistics
    import time

    timings: dict[str, float] = {}
    spatial_dims = batch["image"].ndim - 2
    for channels_last, precision in candidates:
        trial = copy.deepcopy(network)
        memory_format = channels_last_format(spatial_dims) if channels_last else None
        if memory_format is not None:
            trial = trial.to(memory_format=memory_format)
        optimizer = torch.optim.AdamW(trial.parameters(), lr=1e-5)
        seconds = []
        for index in range(steps + 1):
            started = time.perf_counter()
            training_step(trial, batch, loss_function, optimizer, precision, None, device, memory_format)
            if index:
                seconds.append(time.perf_counter() - started)
        timings[f"{'channels_last' if channels_last else 'contiguous'}+{precision.name}"] = statistics.median(seconds)
    best = min(range(len(candidates)), key=lambda i: list(timings.values())[i])
    return candidates[best], timings

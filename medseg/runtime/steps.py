"""One optimiser step, on any device and precision; light enough (torch only) for benchmarks on bare GPU machines."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medseg.runtime.devices import Precision, precision_for


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


def channels_last_hazard(network: nn.Module, device: torch.device) -> str | None:
    """Why channels-last training must not run this network here, or None: on CPUs, torch 2.13 corrupts the heap
    computing the weight gradient of a 2D 1x1 convolution with stride > 1 on channels-last input (a segfault, so no
    fallback can catch it; measured on torch 2.13.0+cpu, 3D is unaffected). DynUNet's strided residual blocks have
    them."""
    if device.type != "cpu":
        return None
    for name, module in network.named_modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.stride != (1, 1):
            return f"{name} is a 1x1 convolution with stride {module.stride}"
    return None


def fastest_step(
    network: nn.Module,
    batch: dict[str, torch.Tensor],
    loss_function: nn.Module,
    candidates: list[tuple[bool, Precision]],
    device: torch.device,
    rounds: int = 5,
) -> tuple[tuple[bool, Precision], dict[str, float]]:
    """Time real training steps of each (channels-last?, precision) candidate on copies of the network and optimiser
    (the run's own are untouched): one warm-up each, then ``rounds`` rounds of one step per candidate, interleaved so
    that a burst of other load hits them all; the fastest by its quickest step, and every candidate's quickest step
    in seconds (the minimum: noise only ever adds time)."""
    import copy
    import time

    spatial_dims = batch["image"].ndim - 2
    trials = []
    for channels_last, precision in candidates:
        trial = copy.deepcopy(network)
        memory_format = channels_last_format(spatial_dims) if channels_last else None
        if memory_format is not None:
            trial = trial.to(memory_format=memory_format)
        trials.append((trial, torch.optim.AdamW(trial.parameters(), lr=1e-5), precision, memory_format))
    seconds: list[list[float]] = [[] for _ in candidates]
    for round_index in range(rounds + 1):
        for index, (trial, optimizer, precision, memory_format) in enumerate(trials):
            started = time.perf_counter()
            training_step(trial, batch, loss_function, optimizer, precision, None, device, memory_format)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_index:  # round 0 warms up
                seconds[index].append(time.perf_counter() - started)
    timings = {step_name(*candidate): min(times) for candidate, times in zip(candidates, seconds, strict=True)}
    best = min(range(len(candidates)), key=lambda i: min(seconds[i]))
    return candidates[best], timings


def step_name(channels_last: bool, precision: Precision) -> str:
    """``contiguous+fp32``, ``channels_last+bf16``, ...: how a step choice is logged."""
    return f"{'channels_last' if channels_last else 'contiguous'}+{precision.name}"

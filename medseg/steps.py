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
) -> float:
    """One optimiser step on a batch; the loss is reduced in fp32 even under autocast (fp16: scaled gradients)."""
    if isinstance(precision, bool):
        precision = precision_for(device, precision)
    image, label = batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)
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

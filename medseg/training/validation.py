"""Validation Dice on the preprocessed grid, summed over the ranks' shares."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medseg.infer.inferers import activate, build_inferer
from medseg.infer.settings import InferenceSettings
from medseg.runtime.devices import Precision, precision_for
from medseg.runtime.distributed import Ranks, all_sum


def validation_dice(
    network: nn.Module,
    loader: Any,
    settings: InferenceSettings,
    precision: Precision | bool,
    group: Ranks = Ranks(),
    device: torch.device = torch.device("cpu"),
) -> float:
    """Mean Dice over validation cases (foreground classes, or every region) on the preprocessed grid, summed over
    the ranks' shares; voxels with ``data.ignore_label`` are left out."""
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    if isinstance(precision, bool):
        precision = precision_for(device, precision)
    inferer = build_inferer(settings, device)
    labels = settings.labels
    classes, multilabel, ignore = labels.out_channels, labels.multilabel, labels.ignore_label
    metric = DiceMetric(include_background=classes == 1 or multilabel, reduction="none", ignore_empty=False)
    network.eval()
    with torch.inference_mode(), precision.autocast():
        for batch in loader:
            image, label = batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)
            probs = activate(inferer(image, network).float(), multilabel)
            valid = torch.ones_like(label[:, :1], dtype=torch.bool)
            if ignore is not None:
                valid = ~(label == ignore).any(dim=1, keepdim=True)
                label = label.masked_fill(label == ignore, 0)
            if classes == 1 or multilabel:
                prediction = probs > labels.threshold
                metric(y_pred=(prediction & valid).float(), y=label)
            else:
                prediction = one_hot(probs.argmax(dim=1, keepdim=True), classes) * valid
                metric(y_pred=prediction, y=one_hot(label.long(), classes) * valid)
    scores = metric.get_buffer() if len(loader) else None
    metric.reset()
    total, count = (0.0, 0.0) if scores is None else (float(scores.nansum()), float((~scores.isnan()).sum()))
    total, count = all_sum([total, count], group, device)
    return total / count if count else 0.0

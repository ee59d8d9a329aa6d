"""Networks with known outputs, so output tests can assert exact masks."""

from __future__ import annotations

import torch
from torch import nn


class ThresholdNet(nn.Module):
    """Logits ``gain * (x[:, 0] - t)`` per threshold ``t``: one channel per threshold, so the predicted mask of each
    channel is exactly the voxels brighter than it (after preprocessing)."""

    def __init__(self, thresholds: tuple[float, ...] = (0.4,), gain: float = 40.0) -> None:
        super().__init__()
        self.register_buffer("thresholds", torch.tensor(thresholds).view(1, -1, *([1] * 3)))
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        thresholds = self.thresholds.view(1, -1, *([1] * (x.ndim - 2)))
        return self.gain * (x[:, :1] - thresholds)

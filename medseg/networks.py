"""Small network wrappers used by the registry."""

from __future__ import annotations

import torch
from torch import nn


class FirstOutput(nn.Module):
    """Wrap a network that returns a list of outputs (deep supervision) and keep the first."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return out[0] if isinstance(out, (list, tuple)) else out

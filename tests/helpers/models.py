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


def ct_threshold_predictor(labels: dict | None = None, threshold: float = 0.4, **data: object):
    """A 3D CT predictor with exact masks: HU -160..240 -> 0..1 and :class:`ThresholdNet` at ``threshold`` (150 HU is
    foreground at 0.4, -500 HU is not); no post-processing, PyTorch backend."""
    from medseg.config.schema import PipelineConfig
    from medseg.config.settings import inference_settings
    from medseg.infer.predictor import Predictor

    cfg = PipelineConfig(
        name="ct",
        spatial_dims=3,
        preprocessing={"patch_size": [16, 16, 16], "intensity": {"kind": "ct"}, "crop_foreground": False},
        model={"in_channels": 1},
        inference={"backend": "torch"},
        postprocessing={"mode": "off"},
        data={"labels": labels or {1: {"name": "liver", "color": [221, 130, 101]}}, **data},
    )
    return Predictor(ThresholdNet((threshold,)), inference_settings(cfg))


TINY_UNET_ARGS = {"channels": [4, 8], "strides": [2], "num_res_units": 0}


def tiny_unet_checkpoint(path, name: str = "tiny") -> object:
    """A checkpoint of a tiny seeded 3D UNet (random weights, CT intensities: fixed masks to compare by) at ``path``,
    with a predict-only configuration."""
    from medseg.config.schema import PipelineConfig
    from medseg.models.checkpoint import save_checkpoint
    from medseg.models.registry import build_network

    torch.manual_seed(0)
    cfg = PipelineConfig(
        name=name,
        spatial_dims=3,
        stages=["predict"],
        model={"in_channels": 1, "args": TINY_UNET_ARGS, "checkpoint": "unused.pt"},
        preprocessing={"patch_size": [16, 16, 16], "intensity": {"kind": "ct"}},
        inference={"backend": "torch"},
        postprocessing={"mode": "off"},
    )
    network = build_network("unet", 3, 1, 1, TINY_UNET_ARGS)
    spec = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 1, "args": TINY_UNET_ARGS}
    save_checkpoint(path, {"state_dict": network.state_dict(), "network": spec, "config": cfg.to_dict(), "epoch": 1})
    return path

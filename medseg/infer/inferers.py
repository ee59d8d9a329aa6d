"""How a network is applied to a preprocessed batch: whole image (2D) or sliding window (3D), optional mirror
test-time augmentation, and the activation that turns logits into probabilities."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medseg.infer.settings import InferenceSettings


def activate(logits: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """Sigmoid for a 1-channel (binary) output or region channels (``multilabel``), softmax over classes
    otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 or multilabel else torch.softmax(logits, dim=1)


def build_inferer(
    settings: InferenceSettings, device: torch.device | None = None, stitch: torch.device | None = None
) -> Any:
    """Whole-image inference in 2D; sliding window with Gaussian blending in 3D (MONAI inferers): windows run on
    ``device``, the stitched output lives on ``stitch`` (default: the device too)."""
    from monai.inferers import SimpleInferer, SlidingWindowInferer

    if settings.spatial_dims == 2:
        return SimpleInferer()
    inf = settings.inference
    return SlidingWindowInferer(
        roi_size=settings.working_shape,
        sw_batch_size=inf.sw_batch_size,
        overlap=inf.overlap,
        mode=inf.blend_mode,
        sw_device=device,
        device=stitch or device,
    )


def stitch_device(settings: InferenceSettings, shape: tuple[int, ...], device: torch.device) -> torch.device:
    """Where a volume's sliding-window output is stitched: on the GPU when the output and its weight map take under
    half of the free GPU memory, else on the CPU (a 512x512x600 CT must not run a 16 GB GPU out of memory)."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    voxels = 1
    for n in shape[2:]:
        voxels *= int(n)
    needed = (settings.out_channels + 1) * voxels * 4 * (2 if settings.inference.tta else 1)
    return device if needed < free / 2 else torch.device("cpu")


def mirrored_probabilities(
    network: nn.Module, batch: torch.Tensor, tta: bool, inferer: Any = None, multilabel: bool = False
) -> torch.Tensor:
    """Class (or region) probabilities, averaged over flips of every spatial axis when ``tta`` is on."""
    spatial_axes = list(range(2, batch.ndim))
    flips: list[list[int]] = [[]]
    if tta:
        flips += [[axis] for axis in spatial_axes] + ([spatial_axes] if len(spatial_axes) > 1 else [])
    total: torch.Tensor | None = None
    for axes in flips:
        flipped = batch.flip(axes) if axes else batch
        logits = (inferer(flipped, network) if inferer is not None else network(flipped)).float()
        probs = activate(logits.flip(axes) if axes else logits, multilabel)
        total = probs if total is None else total.add_(probs)
    return total / len(flips)

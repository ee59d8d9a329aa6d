"""The U-Net a planned input gets: pooling per axis while an axis keeps >= 8 voxels (nnU-Net's rule), a DynUNet with
per-axis strides in 3D, a MONAI UNet in 2D, and inputs rounded to the pooling factor."""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_POOLED_SIZE = 4  # an axis is pooled while it stays at least 8 voxels before the pooling (4 after)
MAX_LEVELS = 6
FILTERS = (16, 32, 64, 128, 256, 320)


def pooling_plan(patch: list[int]) -> list[list[int]]:
    """Strides per level and axis: an axis is pooled (2) while its size stays >= 2 x 4 voxels, else 1."""
    sizes, strides = list(patch), [[1] * len(patch)]
    for _ in range(MAX_LEVELS - 1):
        step = [2 if size >= 2 * MIN_POOLED_SIZE else 1 for size in sizes]
        if not any(s == 2 for s in step):
            break
        strides.append(step)
        sizes = [size // s for size, s in zip(sizes, step, strict=True)]
    return strides


def network_args(spatial_dims: int, patch: list[int]) -> tuple[str, dict[str, Any]]:
    """A DynUNet (3D, strides per axis, as nnU-Net) or a MONAI UNet (2D) deep enough for ``patch``."""
    strides = pooling_plan(patch)
    levels = len(strides)
    if spatial_dims == 3:
        strides += [[1, 1, 1]] * (3 - levels)  # MONAI's DynUNet needs 3 levels: a small patch gets unpooled ones
        levels = len(strides)
        return "dynunet", {
            "filters": list(FILTERS[:levels]),
            "kernel_size": [[3, 3, 3] for _ in range(levels)],
            "strides": strides,
        }
    levels = 1 + sum(1 for step in strides[1:] if all(s == 2 for s in step))  # MONAI's UNet pools every axis
    return "unet", {"channels": list(FILTERS[:levels]), "strides": [2] * (levels - 1), "num_res_units": 2}


def round_patch(patch: list[float], strides: list[list[int]]) -> list[int]:
    """Each axis a multiple of its total pooling factor."""
    factor = np.prod(np.array(strides), axis=0)
    return [int(max(f, round(p / f) * f)) for p, f in zip(patch, factor, strict=True)]


def pooling_levels(spatial_dims: int, patch: list[int]) -> int:
    """How many levels ``patch`` allows: the pooling plan's (2D: the levels that pool both axes)."""
    _, args = network_args(spatial_dims, patch)
    return len(args["filters" if spatial_dims == 3 else "channels"])


# The minutes plan's 3D network: MONAI's UNet with one residual unit a level and per-axis strides, the shipped 3D
# preset's family. DynUNet (nnU-Net's two-convolution residual blocks, instance norm) cost 5.7x the UNet's time a voxel
# here (a 96x128x96 step of 8-256 1.88 s for 2 patches against 16-256's 0.50 s for 4 of 96^3), left 89 epochs in 15
# minutes where the UNet got 280, and scored 0.817 against 0.911 on the first BraTS fold (BENCHMARKS.md, issue #28).
RES_UNITS = {2: 2, 3: 1}


def sized_network(spatial_dims: int, patch: list[int], width: int, levels: int, cap: int) -> tuple[str, dict[str, Any]]:
    """The minutes plan's U-Net for ``patch``: MONAI's UNet with ``levels`` levels whose filters start at ``width``
    and double per level up to ``cap``; in 3D pooled per axis as the pooling plan says (an axis too short stays)."""
    filters = [min(width * 2**level, cap) for level in range(levels)]
    if spatial_dims == 3:
        strides = (pooling_plan(patch) + [[1, 1, 1]] * levels)[1:levels]
        return "unet", {"channels": filters, "strides": strides, "num_res_units": RES_UNITS[3]}
    return "unet", {"channels": filters, "strides": [2] * (levels - 1), "num_res_units": RES_UNITS[2]}

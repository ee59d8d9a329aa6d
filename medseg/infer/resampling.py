"""Map probabilities from the preprocessed grid back onto the scan's own voxel grid, slab by slab.

MONAI's ``Invertd`` undoes Spacing by building a coordinate grid for the whole output volume (4 float32
values per output voxel, several times over: about 5 GB peak for a 512 x 512 x 300 CT). Here the whole
preprocessing chain (orientation, resampling, crop) is one affine between voxel grids, and the output is
filled a slab at a time with trilinear ``grid_sample``, so the extra memory is one slab's grid.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resample_to_grid(
    values: torch.Tensor,
    source_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    cropped_sides: tuple[bool, ...] = (False,) * 6,
    slab_voxels: int = 4_000_000,
    exact_shortcut: bool = True,
) -> torch.Tensor:
    """Trilinear resampling of ``values`` (C, X, Y, Z) on ``source_affine`` onto a target voxel grid.

    Args:
        values: channels on the source grid.
        source_affine: voxel-to-world (4x4) of the source grid.
        target_affine: voxel-to-world (4x4) of the target grid (the scan as loaded).
        target_shape: the target's spatial shape.
        cropped_sides: (x low, x high, y low, y high, z low, z high): whether preprocessing cropped that side
            away; beyond a cropped side values fall to 0, beyond the scan's own edge they are clamped (as
            MONAI's crop and Spacing inverses do).
        slab_voxels: about how many target voxels to compute per slab.
        exact_shortcut: when the grids differ only by axis flips, permutations and whole-voxel shifts (no
            resampling in preprocessing), copy voxels by index instead of interpolating (same values).

    Returns:
        (C, *target_shape) float32.
    """
    # one voxel of padding on every side: zeros where a crop removed data, the edge value elsewhere
    source = F.pad(values.float()[None], (1, 1, 1, 1, 1, 1), mode="replicate")  # (1, C, X+2, Y+2, Z+2)
    for axis in range(3):
        for side, index in ((0, 0), (1, -1)):
            if cropped_sides[2 * axis + side]:
                source.select(2 + axis, index).zero_()
    source_shape = source.shape[2:]
    shift = np.eye(4)
    shift[:3, 3] = 1.0  # padded index = index + 1
    index_map = torch.as_tensor(shift @ np.linalg.inv(source_affine) @ target_affine, dtype=torch.float64)
    if exact_shortcut and _is_whole_voxel_map(index_map.numpy()):
        return _copy_by_index(source[0], index_map.numpy(), target_shape)
    output = torch.zeros((values.shape[0], *target_shape), dtype=torch.float32)
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in source_shape], dtype=torch.float64)
    x = torch.arange(target_shape[0], dtype=torch.float64)
    y = torch.arange(target_shape[1], dtype=torch.float64)
    step = max(1, slab_voxels // (target_shape[0] * target_shape[1]))
    for start in range(0, target_shape[2], step):
        z = torch.arange(start, min(start + step, target_shape[2]), dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(x, y, z, indexing="ij"), dim=-1)  # (X, Y, z, 3) target indices
        coords = grid @ index_map[:3, :3].T + index_map[:3, 3]  # source voxel indices
        normalised = (coords * scale - 1.0).flip(-1).float()  # grid_sample wants (W, H, D) = (z, y, x) order
        slab = F.grid_sample(source, normalised[None], mode="bilinear", padding_mode="border", align_corners=True)
        output[:, :, :, start : start + len(z)] = slab[0]
    return output


def _is_whole_voxel_map(index_map: np.ndarray, tolerance: float = 1e-4) -> bool:
    """True if target -> source voxel indices is a signed axis permutation plus a whole-voxel shift."""
    linear, offset = index_map[:3, :3], index_map[:3, 3]
    rounded = np.round(linear)
    is_permutation = (np.abs(rounded).sum(axis=0) == 1).all() and (np.abs(rounded).sum(axis=1) == 1).all()
    return bool(
        is_permutation
        and np.abs(linear - rounded).max() < tolerance
        and np.abs(offset - np.round(offset)).max() < tolerance
    )


def _copy_by_index(source: torch.Tensor, index_map: np.ndarray, target_shape: tuple[int, int, int]) -> torch.Tensor:
    """Gather ``source`` (C, X+2, Y+2, Z+2, padded) at whole-voxel indices; clamped at the edge like ``border``."""
    linear, offset = np.round(index_map[:3, :3]).astype(int), np.round(index_map[:3, 3]).astype(int)
    axes, indices = [], []
    for target_axis in range(3):
        source_axis = int(np.flatnonzero(linear[:, target_axis])[0])
        positions = linear[source_axis, target_axis] * np.arange(target_shape[target_axis]) + offset[source_axis]
        axes.append(source_axis)
        indices.append(torch.as_tensor(np.clip(positions, 0, source.shape[1 + source_axis] - 1)))
    ordered = source.permute(0, *(1 + a for a in axes))  # source axes in target order
    return ordered[:, indices[0][:, None, None], indices[1][None, :, None], indices[2][None, None, :]].contiguous()

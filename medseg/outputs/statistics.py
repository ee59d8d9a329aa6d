"""Per-structure statistics of a predicted label map: size, intensities per channel, world bounding box,
connected components, and whether the structure touches the image border (a cut-off organ)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medseg.labels import Label

BASE_COLUMNS = ("case", "label_value", "label", "voxels", "volume_ml", "components", "touches_border")
BOX_COLUMNS = tuple(f"bbox_{end}_{axis}" for end in ("min", "max") for axis in ("x", "y", "z"))


def statistics_columns(channels: Sequence[str], spatial_dims: int) -> list[str]:
    """The header of ``statistics.csv``."""
    intensity = [f"{stat}_{channel}" for channel in channels for stat in ("mean", "sd", "min", "max")]
    boxes = list(BOX_COLUMNS) if spatial_dims == 3 else ["bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col"]
    return [*BASE_COLUMNS, *intensity, *boxes]


def _world_box(mask: np.ndarray, affine: np.ndarray) -> list[float]:
    """min and max world (RAS mm) coordinates of the voxel centres of ``mask``, over the corners of its index box."""
    index = np.argwhere(mask)
    low, high = index.min(axis=0), index.max(axis=0)
    corners = np.array([[(high if bit else low)[a] for a, bit in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return [*world.min(axis=0).round(3).tolist(), *world.max(axis=0).round(3).tolist()]


def structure_statistics(
    case: str,
    labels_map: np.ndarray,
    labels: list[Label],
    image: np.ndarray | None,
    channels: Sequence[str],
    affine: np.ndarray | None = None,
) -> list[dict[str, object]]:
    """One row per label: ``image`` is (C, *spatial) on the label map's grid; ``affine`` (3D) gives the volume in
    ml and the bounding box in RAS mm (2D: pixels and a row/column box)."""
    from skimage.measure import label as connected

    rows = []
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0 if affine is not None else math.nan
    for entry in labels:
        mask = labels_map == entry.value
        count = int(mask.sum())
        row: dict[str, object] = {"case": case, "label_value": entry.value, "label": entry.name, "voxels": count}
        row["volume_ml"] = round(count * voxel_ml, 4) if affine is not None else ""
        if count:
            row["components"] = int(connected(mask, connectivity=mask.ndim).max())
            row["touches_border"] = any(
                mask.take(edge, axis=axis).any() for axis in range(mask.ndim) for edge in (0, -1)
            )
            for index, channel in enumerate(channels):
                values = image[index][mask].astype(np.float64) if image is not None else np.array([math.nan])
                row.update(
                    {
                        f"mean_{channel}": round(float(values.mean()), 4),
                        f"sd_{channel}": round(float(values.std()), 4),
                        f"min_{channel}": round(float(values.min()), 4),
                        f"max_{channel}": round(float(values.max()), 4),
                    }
                )
            if affine is not None:
                row.update(dict(zip(BOX_COLUMNS, _world_box(mask, affine), strict=True)))
            else:
                index = np.argwhere(mask)
                (r0, c0), (r1, c1) = index.min(axis=0), index.max(axis=0)
                row.update(bbox_min_row=int(r0), bbox_min_col=int(c0), bbox_max_row=int(r1), bbox_max_col=int(c1))
        else:
            row.update(components=0, touches_border=False)
        rows.append(row)
    return rows

"""Per-structure statistics of a predicted label map: size, intensities per channel, world bounding box and
centroid, connected components, and whether the structure touches the image border (a cut-off organ); with an
instance map (``--instances``), the same figures for each instance on its own row."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from medseg.labels import Label

if TYPE_CHECKING:
    from medseg.outputs.instances import Instances

BASE_COLUMNS = ("case", "label_value", "label", "instance", "voxels", "volume_ml", "components", "touches_border")
BOX_COLUMNS = tuple(f"bbox_{end}_{axis}" for end in ("min", "max") for axis in ("x", "y", "z"))
BOX_COLUMNS_2D = ("bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col")
CENTROID_COLUMNS = ("centroid_x", "centroid_y", "centroid_z")  # RAS mm
CENTROID_COLUMNS_2D = ("centroid_row", "centroid_col")  # pixels: a 2D image has no world geometry


def statistics_columns(channels: Sequence[str], spatial_dims: int) -> list[str]:
    """The header of ``statistics.csv``."""
    intensity = [f"{stat}_{channel}" for channel in channels for stat in ("mean", "sd", "min", "max")]
    if spatial_dims == 3:
        return [*BASE_COLUMNS, *intensity, *BOX_COLUMNS, *CENTROID_COLUMNS]
    return [*BASE_COLUMNS, *intensity, *BOX_COLUMNS_2D, *CENTROID_COLUMNS_2D]


def _world_box(low: np.ndarray, high: np.ndarray, affine: np.ndarray) -> list[float]:
    """min and max world (RAS mm) coordinates of the voxel centres of an index box, over its corners."""
    corners = np.array([[(high if bit else low)[a] for a, bit in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return [*world.min(axis=0).round(3).tolist(), *world.max(axis=0).round(3).tolist()]


def _region_figures(
    mask: np.ndarray,
    offset: Sequence[int],
    shape: Sequence[int],
    image: np.ndarray | None,
    channels: Sequence[str],
    affine: np.ndarray | None,
) -> dict[str, object]:
    """The figures of one structure or instance: ``mask`` is its voxels within a window of the label map that starts
    at ``offset`` (``shape``: the whole map's); ``image`` (C, ...) is the same window of the image."""
    from skimage.measure import label as connected

    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0 if affine is not None else math.nan
    count = int(mask.sum())
    row: dict[str, object] = {"voxels": count, "volume_ml": round(count * voxel_ml, 4) if affine is not None else ""}
    if not count:
        return row | {"components": 0, "touches_border": False}
    index = np.argwhere(mask) + np.asarray(offset)
    low, high = index.min(axis=0), index.max(axis=0)
    row["components"] = int(connected(mask, connectivity=mask.ndim).max())
    row["touches_border"] = bool((low == 0).any() or (high == np.asarray(shape) - 1).any())
    for position, channel in enumerate(channels):
        values = image[position][mask].astype(np.float64) if image is not None else np.array([math.nan])
        row[f"mean_{channel}"] = round(float(values.mean()), 4)
        row[f"sd_{channel}"] = round(float(values.std()), 4)
        row[f"min_{channel}"] = round(float(values.min()), 4)
        row[f"max_{channel}"] = round(float(values.max()), 4)
    centre = index.mean(axis=0)
    if affine is not None:
        row.update(zip(BOX_COLUMNS, _world_box(low, high, affine), strict=True))
        row.update(zip(CENTROID_COLUMNS, (affine[:3, :3] @ centre + affine[:3, 3]).round(3).tolist(), strict=True))
    else:
        row.update(zip(BOX_COLUMNS_2D, [*map(int, low), *map(int, high)], strict=True))
        row.update(zip(CENTROID_COLUMNS_2D, centre.round(3).tolist(), strict=True))
    return row


def structure_statistics(
    case: str,
    labels_map: np.ndarray,
    labels: list[Label],
    image: np.ndarray | None,
    channels: Sequence[str],
    affine: np.ndarray | None = None,
    instances: Instances | None = None,
) -> list[dict[str, object]]:
    """One row per label (``instance`` empty), then one per instance of ``instances`` (its id): ``image`` is
    (C, *spatial) on the label map's grid; ``affine`` (3D) gives volumes in ml, the bounding box and centroid in
    RAS mm (2D: pixels, a row/column box and centroid)."""
    from scipy import ndimage

    shape, origin = labels_map.shape, (0,) * labels_map.ndim
    rows = []
    for entry in labels:
        figures = _region_figures(labels_map == entry.value, origin, shape, image, channels, affine)
        rows.append({"case": case, "label_value": entry.value, "label": entry.name, "instance": "", **figures})
    if instances is None:
        return rows
    names = {entry.value: entry.name for entry in labels}
    for number, window in enumerate(ndimage.find_objects(instances.ids), start=1):
        if window is None:
            continue
        value = instances.owners[number - 1]
        crop = None if image is None else image[(slice(None), *window)]
        offset = [part.start for part in window]
        figures = _region_figures(instances.ids[window] == number, offset, shape, crop, channels, affine)
        rows.append({"case": case, "label_value": value, "label": names.get(value, ""), "instance": number, **figures})
    return rows

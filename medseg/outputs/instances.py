"""Instances from a semantic label map (``medseg predict --instances``): each connected component of each label its
own id, touching objects optionally split by a distance-transform watershed, and the instance map on the mask's
grid; :mod:`medseg.outputs.statistics` measures each instance (a row each in ``statistics.csv``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg.core.errors import DataError

if TYPE_CHECKING:
    from medseg.imageio.headers import ScanHeader

log = logging.getLogger(__name__)

#: the fewest voxels (pixels in 2D) an instance keeps by default; smaller components are dropped from the map
MIN_INSTANCE_SIZE = 10
#: ``--split-touching``: how far (voxels; in 3D times the finest spacing, mm) a maximum of the distance to the
#: background must rise above the saddle to its neighbour to seed an object of its own (an h-maximum)
SPLIT_DEPTH = 2.0


@dataclass(frozen=True)
class Instances:
    """An instance map (0 = background, ids 1..n) and the label value each id belongs to; ``dropped``: components
    under the minimum size left out."""

    ids: np.ndarray
    owners: tuple[int, ...]
    dropped: int = 0

    @property
    def count(self) -> int:
        return len(self.owners)


def find_instances(
    labels_map: np.ndarray,
    values: Sequence[int],
    min_size: int = MIN_INSTANCE_SIZE,
    split_touching: bool = False,
    spacing: Sequence[float] | None = None,
) -> Instances:
    """Number each connected component (full connectivity) of each label in ``values``, in label order then raster
    order; with ``split_touching`` each component is cut by a watershed of its distance transform (``spacing``: the
    voxel size, so 3D distances are physical). Pieces under ``min_size`` voxels get no id."""
    from scipy import ndimage
    from skimage.measure import label as connected

    ids = np.zeros(labels_map.shape, dtype=np.uint32)
    owners: list[int] = []
    dropped = 0
    for value in values:
        components = connected(labels_map == value, connectivity=labels_map.ndim)
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            if box is None:
                continue
            piece = components[box] == index
            parts = _watershed_split(piece, spacing) if split_touching else piece.astype(np.int32)
            window = ids[box]
            for part in range(1, int(parts.max()) + 1):
                region = parts == part
                if int(region.sum()) < min_size:
                    dropped += 1
                    continue
                owners.append(int(value))
                window[region] = len(owners)
    dtype = np.uint16 if len(owners) <= np.iinfo(np.uint16).max else np.uint32
    return Instances(ids.astype(dtype, copy=False), tuple(owners), dropped)


def _watershed_split(component: np.ndarray, spacing: Sequence[float] | None) -> np.ndarray:
    """One component cut into touching objects: a seed per regional maximum of the distance to the background that
    rises :data:`SPLIT_DEPTH` above its surroundings (each plateau one seed, so an elongated object with a flat
    ridge stays whole), grown by a watershed of the negated distance inside the component."""
    from scipy import ndimage
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    inside = (slice(1, -1),) * component.ndim
    distance = ndimage.distance_transform_edt(np.pad(component, 1), sampling=spacing)[inside]
    depth = SPLIT_DEPTH * (min(spacing) if spacing is not None else 1.0)
    seeds = h_maxima(distance, depth).astype(bool) & component
    markers, count = ndimage.label(seeds, structure=ndimage.generate_binary_structure(component.ndim, component.ndim))
    if count < 2:
        return component.astype(np.int32)
    return watershed(-distance, markers, mask=component)


def write_instance_map(instances: Instances, header: ScanHeader | None, path: Path) -> Path:
    """The instance map where its mask goes: a 16-bit grey PNG (2D), else uint16 (uint32 past 65,535 instances) on
    the scan's grid in the scan's own format (NIfTI, NRRD, MetaImage)."""
    if header is None:
        if instances.ids.dtype != np.uint16:
            raise DataError(f"{path}: {instances.count} instances; a 16-bit PNG holds at most 65535")
        from medseg.imageio.images import save_png

        save_png(instances.ids, path)
        return path
    from medseg.imageio.writers import write_instances_like

    return write_instances_like(instances.ids, header, path)


def log_instances(case: str, instances: Instances, min_size: int) -> None:
    """One log line per case: how many instances, and how many components were too small to keep."""
    dropped = f"; {instances.dropped} under {min_size} voxels dropped" if instances.dropped else ""
    log.info("%s: %d instance(s)%s", case, instances.count, dropped)

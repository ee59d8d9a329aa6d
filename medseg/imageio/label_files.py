"""Label files from viewers and PACS: a 3D Slicer segmentation (``.seg.nrrd``) or a DICOM-SEG (a file, or a folder
holding one) read as a map of segment numbers on the file's own grid with the segments' names, and placed on a
scan's grid as a label map of the values the names are given.

The readers live beside their writers (:func:`medseg.imageio.slicer.read_seg_nrrd`,
:func:`medseg.imageio.dicom_seg.read_dicom_seg`); this module knows which file is which, and resamples (nearest
neighbour, SimpleITK) where the file's grid differs from the scan's: another spacing, extent or orientation, or only
some slices (a DICOM-SEG stores only the frames that hold a segment). Voxels of the scan outside the file's grid are
background; a file without any voxel in common with its scan is refused.

Overlapping segments (Slicer layers, DICOM-SEG segments): the later segment wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.core.errors import DataError, error_summary
from medseg.imageio.dicom_seg import check_referenced_series, dicom_seg_names, find_dicom_seg, read_dicom_seg
from medseg.imageio.formats import DICOM_SUFFIXES, SEG_NRRD_SUFFIX, has_suffix
from medseg.imageio.headers import LPS_TO_RAS, ScanHeader
from medseg.imageio.slicer import read_seg_nrrd, seg_nrrd_names

#: segment number of the scan's voxels outside the label file's grid (while resampling)
OUTSIDE = np.iinfo(np.uint16).max


@dataclass(frozen=True)
class SegmentMap:
    """A label file as read: ``image`` holds segment numbers (0 background, ``i + 1`` for ``names[i]``) on the
    file's own grid (SimpleITK geometry, LPS)."""

    path: Path
    names: tuple[str, ...]
    image: sitk.Image


def segment_image(numbers: np.ndarray, lps_affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image of the (x, y, z) array ``numbers`` whose voxel-to-LPS affine is ``lps_affine``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(numbers, dtype=np.uint16).transpose(2, 1, 0)))
    spacing = np.linalg.norm(lps_affine[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (lps_affine[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(v) for v in lps_affine[:3, 3]])
    return image


def is_dicom_seg(path: Path) -> bool:
    """A DICOM-SEG label by its name: a DICOM file, or a folder (that holds one SEG file)."""
    return path.is_dir() or has_suffix(path, DICOM_SUFFIXES)


def is_label_file(path: Path) -> bool:
    """A label file this module reads (``.seg.nrrd``, DICOM-SEG) rather than a plain label volume."""
    return has_suffix(path, (SEG_NRRD_SUFFIX,)) or is_dicom_seg(path)


def label_file_source(path: Path) -> Path:
    """The file that holds the label: ``path`` itself, or the one DICOM-SEG file in the folder ``path``."""
    return find_dicom_seg(path) if path.is_dir() else path


def segment_names(path: Path) -> list[str]:
    """The names of a label file's segments, in segment order, from its header only."""
    if has_suffix(path, (SEG_NRRD_SUFFIX,)):
        return seg_nrrd_names(path)
    return dicom_seg_names(label_file_source(path))


def read_segments(path: Path) -> SegmentMap:
    """A label file's segment numbers on its own grid and its segment names."""
    source = label_file_source(path)
    read = read_seg_nrrd if has_suffix(source, (SEG_NRRD_SUFFIX,)) else read_dicom_seg
    names, numbers, lps_affine = read(source)
    try:
        return SegmentMap(source, names, segment_image(numbers, lps_affine))
    except RuntimeError as exc:  # SimpleITK refuses a grid that is not a rotation (sheared, degenerate)
        raise DataError(f"{source}: its grid is not a rotation of voxels ({error_summary(exc)})") from None


def check_scan(path: Path, scan: ScanHeader) -> None:
    """DataError when a DICOM-SEG references another series than its scan's (a DICOM series folder)."""
    if scan.is_series and is_dicom_seg(path):
        check_referenced_series(label_file_source(path), scan)


def numbers_on_grid(segments: SegmentMap, scan: ScanHeader) -> np.ndarray:
    """The segment numbers on ``scan``'s voxels ((x, y, z), nearest neighbour); 0 outside the file's grid.

    Raises:
        DataError: the file's grid has no voxel in common with the scan's, or a grid is not a rotation.
    """
    lps = LPS_TO_RAS @ np.asarray(scan.affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    try:
        placed = sitk.Resample(
            segments.image,
            [int(n) for n in scan.spatial_shape],
            sitk.Transform(),
            sitk.sitkNearestNeighbor,
            [float(v) for v in lps[:3, 3]],
            [float(s) for s in spacing],
            [float(v) for v in (lps[:3, :3] / spacing).ravel()],
            float(OUTSIDE),
            sitk.sitkUInt16,
        )
    except RuntimeError as exc:
        raise DataError(f"{segments.path}: cannot place it on {scan.path} ({error_summary(exc)})") from None
    numbers = sitk.GetArrayFromImage(placed).transpose(2, 1, 0)
    outside = numbers == OUTSIDE
    if outside.all():
        raise DataError(f"{segments.path}: no voxel in common with its scan {scan.path} (it labels another region)")
    numbers[outside] = 0
    return numbers


def label_map_on_grid(path: Path, scan: ScanHeader, values: dict[str, int]) -> np.ndarray:
    """The label file ``path`` as a uint8 label map on ``scan``'s grid ((x, y, z)): each segment's voxels hold the
    value ``values`` gives its name.

    Raises:
        DataError: one line naming the file: unreadable, a segment ``values`` does not name, a DICOM-SEG of another
            series, no overlap with the scan.
    """
    check_scan(path, scan)
    segments = read_segments(path)
    lookup = np.zeros(len(segments.names) + 1, dtype=np.uint8)
    for number, name in enumerate(segments.names, start=1):
        if name not in values:
            raise DataError(f"{segments.path}: segment {name!r} is not in data.labels (known: {', '.join(values)})")
        if not 0 <= values[name] <= 255:
            raise DataError(f"{segments.path}: segment {name!r} has value {values[name]}; label maps hold 0..255")
        lookup[number] = values[name]
    return lookup[numbers_on_grid(segments, scan)]

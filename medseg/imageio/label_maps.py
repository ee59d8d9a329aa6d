"""The one table from an output format's name to the writer of a label map in it, for 2D and 3D: PNG masks beside 2D
images, plain label maps on a scan's grid (NIfTI, NRRD, MetaImage), 3D Slicer segmentations, DICOM-SEG and RTSTRUCT;
and the writer of [0, 1] maps (probabilities, uncertainty) in the same places."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg.imageio.formats import OUTPUT_FORMATS, mask_suffix

if TYPE_CHECKING:
    from medseg.imageio.headers import ScanHeader
    from medseg.labels import Label

#: the formats written as DICOM objects that reference their source series (a DICOM series input only)
DICOM_OBJECTS = {"dicom-seg": OUTPUT_FORMATS["dicom-seg"], "rtstruct": ".rtstruct.dcm"}
#: every 3D mask format ``--format`` names, with its file ending
VOLUME_FORMATS = {**OUTPUT_FORMATS, **DICOM_OBJECTS}
#: a 2D model's masks and maps, beside the 3D formats
PNG = "png"
SUFFIXES = {PNG: ".png", **VOLUME_FORMATS}
#: (labels map, the scan's header, the labels, the target, the model's digest) -> the target; the digest names the
#: model in DICOM objects (their UIDs, SeriesDescription) and is ignored by the other formats
LabelMapWriter = Callable[[np.ndarray, "ScanHeader | None", Sequence["Label"], Path, str], Path]


def _png(labels_map: np.ndarray, header: ScanHeader | None, labels: Sequence[Label], path: Path, digest: str) -> Path:
    """A 2D mask: 0/255 for a binary model (visible in any viewer), else the label values."""
    from medseg.imageio.images import save_png

    binary = len(labels) == 1 and labels[0].value == 1
    save_png(labels_map * 255 if binary else labels_map, path)
    return path


def _on_grid(
    labels_map: np.ndarray, header: ScanHeader | None, labels: Sequence[Label], path: Path, digest: str
) -> Path:
    from medseg.imageio.writers import write_mask_like

    return write_mask_like(labels_map, header, path)


def _slicer(
    labels_map: np.ndarray, header: ScanHeader | None, labels: Sequence[Label], path: Path, digest: str
) -> Path:
    from medseg.imageio.slicer import write_seg_nrrd

    return write_seg_nrrd(labels_map, header, list(labels), path)


def _dicom_seg(
    labels_map: np.ndarray, header: ScanHeader | None, labels: Sequence[Label], path: Path, digest: str
) -> Path:
    from medseg.imageio.dicom_seg import write_dicom_seg

    return write_dicom_seg(labels_map, header, list(labels), path, digest)


def _rtstruct(
    labels_map: np.ndarray, header: ScanHeader | None, labels: Sequence[Label], path: Path, digest: str
) -> Path:
    from medseg.imageio.rtstruct import write_rtstruct

    return write_rtstruct(labels_map, header, list(labels), path, digest)


LABEL_MAP_WRITERS: dict[str, LabelMapWriter] = {
    PNG: _png,
    "nifti": _on_grid,
    "nrrd": _on_grid,
    "mha": _on_grid,
    "seg.nrrd": _slicer,
    "dicom-seg": _dicom_seg,
    "rtstruct": _rtstruct,
}


def input_format(reference: Path, spatial_dims: int) -> tuple[str, str]:
    """The format and file ending a mask takes by default: PNG beside a 2D image, else the scan's own (``.nii``
    stays ``.nii``; a DICOM series gets NIfTI)."""
    if spatial_dims == 2:
        return PNG, SUFFIXES[PNG]
    suffix = mask_suffix(reference)
    return ("nifti" if suffix.startswith(".nii") else suffix.lstrip(".")), suffix


def write_label_map(
    labels_map: np.ndarray,
    header: ScanHeader | None,
    labels: Sequence[Label],
    path: Path,
    output_format: str,
    model_digest: str = "",
) -> Path:
    """Write ``labels_map`` to ``path`` in ``output_format`` (a name of :data:`LABEL_MAP_WRITERS`); DICOM objects
    take their UIDs from the source series and ``model_digest`` (:func:`medseg.imageio.dicom_seg.output_uids`)."""
    return LABEL_MAP_WRITERS[output_format](labels_map, header, labels, path, model_digest)


def write_map(values: np.ndarray, header: ScanHeader | None, path: Path) -> Path:
    """A [0, 1] map (a probability, the uncertainty) where its mask goes: an 8-bit grey PNG (0..255) beside a 2D image,
    else floats on the scan's grid."""
    if header is None:
        from medseg.imageio.images import save_png

        save_png(np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8), path)
        return path
    from medseg.imageio.writers import write_probability_like

    return write_probability_like(values, header, path)

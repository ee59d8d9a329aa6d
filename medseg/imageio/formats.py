"""The one table of file formats medseg reads and writes, and the names derived from file endings."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

PathLike = str | os.PathLike

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")  # read and written by SimpleITK
VOLUME_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES
DETACHED_SUFFIXES = (".nhdr", ".mhd")  # a header file plus a separate data file
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
SEG_NRRD_SUFFIX = ".seg.nrrd"  # a 3D Slicer segmentation: a NRRD whose case id ends before ".seg"
#: mask formats ``medseg predict --format`` writes in 3D, by name (``input``: the scan's own format)
OUTPUT_FORMATS = {"nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha", "seg.nrrd": ".seg.nrrd", "dicom-seg": ".dcm"}
SUPPORTED_VOLUMES = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), a DICOM series folder"
SUPPORTED_FORMATS = f"{SUPPORTED_VOLUMES}, 2D images ({', '.join(IMAGE_2D_SUFFIXES)})"


def has_suffix(path: PathLike, suffixes: Sequence[str]) -> bool:
    """Whether ``path``'s name ends with one of ``suffixes`` (case-insensitive)."""
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in suffixes)


def volume_suffix(name: str) -> str:
    """The volume ending that ``name`` has (case-insensitive; ``.seg.nrrd`` whole), or ""."""
    lower = name.lower()
    return next((s for s in (SEG_NRRD_SUFFIX, *VOLUME_SUFFIXES) if lower.endswith(s)), "")


def is_image_2d(path: PathLike) -> bool:
    """A 2D image by its ending (PNG, JPEG, BMP, TIFF)."""
    return has_suffix(path, IMAGE_2D_SUFFIXES)


def is_volume_file(path: PathLike) -> bool:
    """A 3D volume file by its ending (NIfTI, NRRD, MetaImage)."""
    return has_suffix(path, VOLUME_SUFFIXES)


def volume_id(path: Path) -> str:
    """The case id of a volume: its name without the volume ending (``x.nii.gz``, ``x.seg.nrrd`` -> ``x``).

    A DICOM series folder (or any name without a volume ending) gives its name unchanged.
    """
    path = Path(path)
    if path.is_dir():
        return path.name
    return path.name[: len(path.name) - len(volume_suffix(path.name))]


def mask_suffix(reference: Path) -> str:
    """The ending of a mask written on ``reference``'s grid: the reference's own format; a DICOM series -> NIfTI."""
    name = Path(reference).name.lower()
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return suffix
    return ".mha" if name.endswith(".mhd") else ".nii.gz"

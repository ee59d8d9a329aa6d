"""Write masks and probability maps in the exact geometry of the scan they were predicted from.

The mask array is in the (x, y, z) voxel order that :mod:`medseg.imageio.readers` loads (MONAI's NIfTI
convention), so ``write_mask_like(mask, scan, out)`` overlays on ``scan`` in 3D Slicer / ITK-SNAP:

- NIfTI reference: the reference header is copied (qform and sform with their codes, pixdim, units) with nibabel;
  only the data type changes and intensity scaling is switched off. Asked for NRRD / MetaImage instead, SimpleITK
  writes it with the affine's geometry.
- NRRD / MetaImage / DICOM-series reference: SimpleITK writes the mask with the reference's exact origin, spacing
  and direction, taken from its header (:mod:`medseg.imageio.headers`; no voxels are read); a DICOM reference
  needs a NIfTI (or NRRD / MetaImage) output name.

The reference is a path or the :class:`~medseg.imageio.headers.ScanHeader` already read for it.

Every output is written under a temporary name in the output folder and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medseg.core.atomic import atomic_path
from medseg.core.errors import DataError, error_summary
from medseg.imageio.dicom_series import is_dicom_series
from medseg.imageio.formats import (
    DETACHED_SUFFIXES,
    NIFTI_SUFFIXES,
    SITK_SUFFIXES,
    VOLUME_SUFFIXES,
    PathLike,
    has_suffix,
)
from medseg.imageio.headers import LPS_TO_RAS, ScanHeader, SitkGeometry, read_header, shape_text

WRITABLE_SUFFIXES = VOLUME_SUFFIXES


def _as_label_array(mask: np.ndarray, output: Path) -> np.ndarray:
    """``mask`` as uint8; DataError for values that are not integer labels in 0..255."""
    array = np.asarray(mask)
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)):
            raise DataError(f"mask for {output} has dtype {array.dtype}; expected integer labels")
        if not np.array_equal(array, np.round(array)):
            raise DataError(f"mask for {output} holds non-integer values; expected integer labels 0..255")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise DataError(f"mask for {output} holds labels {array.min()}..{array.max()}; a uint8 label map holds 0..255")
    return array.astype(np.uint8)


def _check_paths(reference: Path, output: Path) -> None:
    if not reference.exists():
        raise DataError(f"reference image not found: {reference}")
    if output.exists() and output.is_dir():
        raise DataError(f"output {output} is a folder; give a file name such as {output / 'mask.nii.gz'}")
    same = output.resolve() == reference.resolve()
    if not same and output.exists():
        with contextlib.suppress(OSError):
            same = os.path.samefile(output, reference)
    if same:
        raise DataError(f"refusing to overwrite the reference image {reference} with a mask")
    if not has_suffix(output, WRITABLE_SUFFIXES):
        raise DataError(
            f"output {output} has an unsupported suffix; use one of {', '.join(WRITABLE_SUFFIXES)} "
            "(.nii.gz for a DICOM reference)"
        )


def _check_shape(array: np.ndarray, expected: tuple[int, ...], what: str, reference: Path) -> None:
    if tuple(array.shape) != tuple(expected):
        raise DataError(
            f"{what} shape {shape_text(array.shape)} differs from the reference {reference} shape "
            f"{shape_text(expected)} (arrays are in (x, y, z) order as loaded by medseg.imageio)"
        )


# ---------------------------------------------------------------------------------------------------- NIfTI


def _write_nifti_like(array: np.ndarray, reference: ScanHeader, output: Path, what: str) -> Path:
    if not has_suffix(output, NIFTI_SUFFIXES):
        raise DataError(f"reference {reference.path} is NIfTI: the output {output} must be .nii.gz or .nii too")
    shape = tuple(reference.shape)
    expected = shape if array.ndim == len(shape) else shape[:3]
    _check_shape(array, expected, what, reference.path)

    ref_header = reference.nifti
    header = ref_header.copy()
    header.set_data_dtype(array.dtype)
    header.set_data_shape(array.shape)
    header.set_slope_inter(1.0, 0.0)  # labels/probabilities are stored as they are, never rescaled
    header["cal_min"] = 0.0
    header["cal_max"] = 0.0
    header.set_intent("none")
    if hasattr(header, "extensions"):
        header.extensions.clear()
    # affine == the header's best affine, so nibabel keeps both qform and sform (and their codes) as copied.
    image_class = nib.Nifti2Image if isinstance(ref_header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(array, reference.affine, header=header)
    for key in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d"):
        image.header[key] = ref_header[key]
    for key in ("qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units"):
        image.header[key] = ref_header[key]
    pixdim = np.array(image.header["pixdim"], copy=True)
    pixdim[:4] = ref_header["pixdim"][:4]  # qfac and voxel sizes
    image.header["pixdim"] = pixdim
    with atomic_path(output) as tmp:
        nib.save(image, str(tmp))
    return output


# ---------------------------------------------------------------------------------------------- SimpleITK


@contextlib.contextmanager
def _atomic_detached(output: Path) -> Iterator[Path]:
    """A path with ``output``'s name in a temporary folder beside it; every file written there is moved beside
    ``output`` (data files first, the header last) when the block succeeds."""
    output.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        target = folder / output.name
        yield target
        others = [p for p in folder.iterdir() if p.name != output.name]
        for path in others:
            os.replace(path, output.parent / path.name)
        os.replace(target, output)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _geometry_from_affine(reference: ScanHeader) -> SitkGeometry:
    """SimpleITK (LPS) geometry of a NIfTI header's affine, to write a NIfTI scan's mask as NRRD or MetaImage."""
    lps = LPS_TO_RAS @ reference.affine  # the same flip both ways
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return SitkGeometry(
        tuple(int(n) for n in reference.spatial_shape),
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in lps[:3, 3]),
        tuple(float(v) for v in direction.ravel()),
    )


def _write_sitk_like(array: np.ndarray, reference: ScanHeader, output: Path, what: str) -> Path:
    geometry = reference.sitk or _geometry_from_affine(reference)
    _check_shape(array, geometry.size, what, reference.path)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose()))  # (x, y, z) -> SimpleITK's (z, y, x)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    atomic = _atomic_detached if has_suffix(output, DETACHED_SUFFIXES) else atomic_path
    try:
        with atomic(output) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=not has_suffix(output, (".nii",)))
    except RuntimeError as e:
        raise DataError(f"cannot write {output}: {error_summary(e)}") from e
    return output


# ----------------------------------------------------------------------------------------------- public API


def _write_like(array: np.ndarray, reference: PathLike | ScanHeader, output: PathLike, what: str) -> Path:
    output = Path(output)
    reference_path = reference.path if isinstance(reference, ScanHeader) else Path(reference)
    _check_paths(reference_path, output)
    if reference_path.is_file() and has_suffix(reference_path, NIFTI_SUFFIXES):
        if has_suffix(output, SITK_SUFFIXES):  # a NIfTI scan's mask as NRRD / MetaImage: its affine as LPS geometry
            return _write_sitk_like(array, _header_of(reference), output, what)
        return _write_nifti_like(array, _header_of(reference), output, what)
    if is_dicom_series(reference_path) or has_suffix(reference_path, SITK_SUFFIXES):  # a folder, or one slice
        return _write_sitk_like(array, _header_of(reference), output, what)
    raise DataError(
        f"unsupported reference image {reference_path}: expected NIfTI, NRRD, MetaImage or a DICOM series folder"
    )


def _header_of(reference: PathLike | ScanHeader) -> ScanHeader:
    """The header already read, or read now (DataError naming the reference if it cannot be read)."""
    return reference if isinstance(reference, ScanHeader) else read_header(reference)


def write_mask_like(mask: np.ndarray, reference: PathLike | ScanHeader, output: PathLike) -> Path:
    """Write the uint8 label map ``mask`` ((x, y, z), the reference's shape) in ``reference``'s geometry.

    NIfTI references give a NIfTI copy of their header (or NRRD / MetaImage with the affine's geometry); NRRD /
    MetaImage references any of .nrrd, .nhdr, .mha,
    .mhd, .nii.gz (normally the reference's own format); DICOM-series folders a .nii.gz (or NRRD / MetaImage).
    The file appears atomically; the reference itself is never overwritten. Returns ``output``.
    """
    output = Path(output)
    return _write_like(_as_label_array(mask, output), reference, output, "mask")


def write_instances_like(ids: np.ndarray, reference: PathLike | ScanHeader, output: PathLike) -> Path:
    """Write an instance map (uint16 or uint32 ids, (x, y, z), the reference's shape) in ``reference``'s geometry."""
    array = np.asarray(ids)
    if array.dtype not in (np.uint16, np.uint32):
        raise DataError(f"instance map for {output}: expected uint16 or uint32 ids, got {array.dtype}")
    return _write_like(array, reference, output, "instance map")


def write_probability_like(prob: np.ndarray, reference: PathLike | ScanHeader, output: PathLike) -> Path:
    """Write a float32 probability map ((x, y, z), the reference's shape) in ``reference``'s geometry."""
    array = np.asarray(prob, dtype=np.float32)
    if array.size and not np.all(np.isfinite(array)):
        raise DataError(f"probability map for {output} holds NaN or infinite values")
    return _write_like(array, reference, output, "probability map")

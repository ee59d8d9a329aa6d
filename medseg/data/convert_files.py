"""The file work of ``medseg convert`` (:mod:`medseg.data.convert`): one image, channel or label file written into
the target layout, copied byte-for-byte where its format stays and its values do not change, else rewritten with
its dtype and geometry kept (NIfTI through nibabel, other volumes through SimpleITK, 2D images through Pillow)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from medseg.core.errors import DataError, error_summary
from medseg.imageio.formats import DETACHED_SUFFIXES, NIFTI_SUFFIXES, OUTPUT_FORMATS, has_suffix, volume_suffix

#: volume endings written as they are (one file each); anything else (a DICOM series, a detached header) -> .nii.gz
SINGLE_FILE_VOLUMES = (*NIFTI_SUFFIXES, OUTPUT_FORMATS["nrrd"], OUTPUT_FORMATS["mha"])
NIFTI = OUTPUT_FORMATS["nifti"]
#: the 2D image modes PNG holds as they are (others are converted to RGB)
PNG_MODES = ("L", "RGB", "I;16", "I")


def volume_ending(path: Path) -> str:
    """The ending a volume keeps when written: its own for a single-file volume, else ``.nii.gz``."""
    ending = volume_suffix(path.name).lower()
    return ending if path.is_file() and ending in SINGLE_FILE_VOLUMES else NIFTI


def _nifti(path: Path, voxels: bool = True) -> tuple[Any, np.ndarray]:
    """A NIfTI image and its voxels (an empty array when ``voxels`` is False); DataError naming the file if it
    cannot be read."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        return image, np.asanyarray(image.dataobj) if voxels else np.empty(0)
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(f"{path}: cannot read NIfTI ({error_summary(exc)})") from None


def channel_count(path: Path) -> int:
    """How many channels a volume file holds (a 4D NIfTI holds several, as MSD ships them)."""
    if not has_suffix(path, NIFTI_SUFFIXES):
        return 1
    shape = _nifti(path, voxels=False)[0].shape
    return int(shape[3]) if len(shape) == 4 else 1


def integer_values(values: np.ndarray, path: Path) -> list[int]:
    """The distinct values of a label array as integers; DataError for non-integer values."""
    unique = np.unique(values)
    if unique.size and not np.array_equal(unique, np.round(unique)):
        raise DataError(f"{path}: label values must be integers (found {unique[unique != np.round(unique)][0]})")
    return [int(v) for v in unique]


def read_label(path: Path, dims: int) -> np.ndarray:
    """A label file's values: a 2D mask as one channel (RGB grey masks taken as one channel, JPEG masks thresholded,
    as the pipeline reads them) or a volume's voxels."""
    if dims == 2:
        from medseg.imageio.images import decode_mask, open_image

        mask = np.asarray(decode_mask(open_image(path, "mask")))
        if mask.ndim != 2:
            raise DataError(f"{path}: colour-coded mask (channels differ); convert needs one channel of label values")
        return mask
    if has_suffix(path, NIFTI_SUFFIXES):
        return _nifti(path)[1]
    import SimpleITK as sitk

    from medseg.imageio.readers import read_sitk_image

    return sitk.GetArrayViewFromImage(read_sitk_image(path))


def relabelled(values: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """``values`` with each source value replaced by its new one (same dtype)."""
    out = np.zeros_like(values)
    for old, new in mapping.items():
        out[values == old] = new
    return out


def write_volume(source: Path, target: Path, mapping: dict[int, int] | None = None, channel: int | None = None) -> bool:
    """``source`` (one ``channel`` of a 4D file where given) written to ``target``, relabelled by ``mapping``; True
    when the bytes were copied unchanged."""
    same_format = source.is_file() and volume_suffix(source.name).lower() == volume_suffix(target.name).lower()
    if mapping is None and channel is None and same_format and not has_suffix(source, DETACHED_SUFFIXES):
        shutil.copyfile(source, target)
        return True
    if has_suffix(source, NIFTI_SUFFIXES) and has_suffix(target, NIFTI_SUFFIXES):
        image, data = _nifti(source)
        data = data if channel is None else data[..., channel]
        if mapping is not None:
            data = relabelled(data, mapping)
        header = image.header.copy()
        header.set_data_shape(data.shape)
        type(image)(data.astype(image.get_data_dtype()), image.affine, header).to_filename(str(target))
        return False
    import SimpleITK as sitk

    from medseg.imageio.readers import read_sitk_image

    if channel is not None:
        raise DataError(f"{source}: only 4D NIfTI files can be split into channels")
    image = read_sitk_image(source)
    if mapping is not None:
        rewritten = sitk.GetImageFromArray(relabelled(sitk.GetArrayFromImage(image), mapping))
        rewritten.CopyInformation(image)
        image = rewritten
    sitk.WriteImage(image, str(target), True)
    return False


def write_image_2d(source: Path, target: Path) -> bool:
    """A 2D image written to ``target`` (its suffix names the format): copied when the format stays and PNG holds
    its mode, else re-encoded (RGBA, palette and other modes as RGB); True when the bytes were copied."""

    from medseg.imageio.images import open_image

    image = open_image(source)
    keeps = source.suffix.lower() == target.suffix.lower() and (
        target.suffix.lower() != ".png" or image.mode in PNG_MODES
    )
    if keeps:
        shutil.copyfile(source, target)
        return True
    if image.mode not in PNG_MODES:
        image = image.convert("RGB")
    image.save(target, format="PNG")
    return False


def write_label_2d(source: Path, target: Path, mapping: dict[int, int] | None) -> bool:
    """A 2D label map written as PNG, relabelled by ``mapping``: copied when it is already a one-channel PNG of the
    target's values; True when the bytes were copied."""
    from PIL import Image

    from medseg.imageio.images import open_image

    if mapping is None and source.suffix.lower() == ".png" and open_image(source, "mask").mode in ("L", "I;16"):
        shutil.copyfile(source, target)
        return True
    values = read_label(source, 2)
    if mapping is not None:
        values = relabelled(values, mapping)
    dtype = np.uint8 if int(values.max(initial=0)) <= 255 else np.uint16
    Image.fromarray(values.astype(dtype)).save(target, format="PNG")
    return False

"""MONAI image readers: NIfTI through nibabel, NRRD / MetaImage / DICOM series through SimpleITK.

:class:`SimpleITKReader` gives the same conventions as MONAI's ``NibabelReader`` for NIfTI, so a pipeline that
mixes formats sees one convention:

- the array's spatial axes are in (x, y, z) = (i, j, k) voxel-index order (SimpleITK's ``GetArrayFromImage``
  returns (z, y, x); it is transposed), the pixel type is kept (int16 stays int16), and vector pixels become a
  last channel axis (``original_channel_dim = -1``; scalar images get ``"no_channel"``);
- ``affine`` / ``original_affine`` are 4x4 voxel-to-world matrices in RAS+ millimetres (SimpleITK is LPS+:
  ``affine_lps = [[direction @ diag(spacing), origin], [0, 0, 0, 1]]`` and ``affine_ras = diag(-1, -1, 1, 1) @
  affine_lps``), with ``space = "RAS"``, so ``Orientationd``, ``Spacingd`` and ``Invertd`` behave as for NIfTI.

MONAI's ITKReader would do the same, but needs the ``itk`` package; this reader needs only SimpleITK.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import ImageReader
from monai.transforms import LoadImaged
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from medseg.core.errors import DataError, error_summary
from medseg.imageio.dicom_series import is_dicom_series
from medseg.imageio.formats import (
    DICOM_SUFFIXES,
    IMAGE_2D_SUFFIXES,
    NIFTI_SUFFIXES,
    SITK_SUFFIXES,
    SUPPORTED_FORMATS,
    PathLike,
    has_suffix,
)
from medseg.imageio.headers import ScanHeader, dicom_series_files, sitk_affine_ras


def sitk_image_affine(image: sitk.Image) -> np.ndarray:
    """The RAS voxel-to-world affine of a SimpleITK image (see :func:`~medseg.imageio.headers.sitk_affine_ras`)."""
    return sitk_affine_ras(image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def sitk_array_xyz(image: sitk.Image) -> np.ndarray:
    """The pixel array of ``image`` with axes in (x, y, z[, t]) order, plus a last channel axis for vector pixels."""
    array = sitk.GetArrayFromImage(image)  # (z, y, x) or (z, y, x, c)
    dim = image.GetDimension()
    order = list(range(dim))[::-1] + list(range(dim, array.ndim))
    return array.transpose(order)


#: what ITK's series reader notes on an image whose slices are not evenly spaced
UNEVEN_SLICES = "ITK_non_uniform_sampling_deviation"


def _slice_gap(files: list[str], image: sitk.Image, tolerance: float = 0.1) -> str:
    """Where a series' slice positions (along the slice normal) step by more than ``tolerance`` of the smallest step
    away from it (a missing slice doubles a step), what is wrong; "" for steps that differ by rounding only."""
    import pydicom

    normal = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
    positions = []
    for name in files:  # read only where ITK flagged the series: the headers, not the pixels
        position = pydicom.dcmread(name, stop_before_pixels=True, specific_tags=["ImagePositionPatient"]).get(
            "ImagePositionPatient"
        )
        if position is None:
            return ""  # no positions to judge by: ITK's own estimate stands
        positions.append(float(np.dot(normal, [float(v) for v in position])))
    steps = np.abs(np.diff(positions))
    usual = float(steps.min())
    worst = int(np.argmax(steps))
    if usual == 0 or steps[worst] - usual <= tolerance * usual:
        return ""
    return f"slices not evenly spaced, {worst} and {worst + 1} are {steps[worst]:.3g} mm apart, others {usual:.3g} mm"


def read_sitk_image(path: PathLike) -> sitk.Image:
    """Read a NRRD / MetaImage / NIfTI file or a one-series DICOM folder with SimpleITK; DataError on failure."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"image not found: {path}")
    try:
        if is_dicom_series(path):
            files = dicom_series_files(path)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            image = reader.Execute()
            if image.HasMetaDataKey(UNEVEN_SLICES):  # ITK flags rounding too; a gap it still stacks as if even
                gap = _slice_gap(files, image)
                if gap:
                    raise DataError(f"cannot read DICOM series {path}: {gap} (a slice missing or unreadable?)")
            return image
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        kind = "DICOM series" if is_dicom_series(path) else "image"
        raise DataError(f"cannot read {kind} {path}: {error_summary(e)}") from e


class SimpleITKReader(ImageReader):
    """MONAI ``ImageReader`` for NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) and DICOM series folders.

    Use it as ``LoadImage(reader=SimpleITKReader())`` or ``LoadImaged(keys, reader=SimpleITKReader())``.
    A list of files is stacked as channels (first axis), as with MONAI's readers. ``read`` also accepts NIfTI
    (ITK reads it; same result as ``NibabelReader`` unless the file's qform and sform disagree, where ITK and
    nibabel may pick different ones), though ``verify_suffix`` claims only NRRD, MetaImage and folders.

    Args:
        channel_dim: sets ``original_channel_dim`` (``None``: ``"no_channel"`` for scalar images, -1 for vector
            images, whose components are the last axis).
    """

    def __init__(self, channel_dim: str | int | None = None) -> None:
        super().__init__()
        self.channel_dim = float("nan") if channel_dim == "no_channel" else channel_dim

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True when every name is a NRRD / MetaImage file or a DICOM series (a folder, or a slice of one)."""
        return all(is_dicom_series(f) or has_suffix(f, SITK_SUFFIXES) for f in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> sitk.Image | list[sitk.Image]:
        """Read one image (a file or a DICOM series folder) or a list of them; DataError naming the path on failure."""
        filenames = ensure_tuple(data)
        images = [read_sitk_image(name) for name in filenames]
        return images if len(filenames) > 1 else images[0]

    def get_data(self, img: sitk.Image | Sequence[sitk.Image]) -> tuple[np.ndarray, dict]:
        """The (x, y, z[, c]) array and its metadata, as ``NibabelReader`` gives for NIfTI."""
        arrays: list[np.ndarray] = []
        meta: dict = {}
        images = [img] if isinstance(img, sitk.Image) else list(img)  # a sitk.Image iterates over its pixels
        for image in images:
            array = sitk_array_xyz(image)
            header = self._meta(image)
            if self.channel_dim is None:
                spatial = len(header[MetaKeys.SPATIAL_SHAPE])
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan") if array.ndim == spatial else -1
            else:
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = self.channel_dim
            if meta:
                if not np.allclose(header[MetaKeys.AFFINE], meta[MetaKeys.AFFINE], atol=1e-4):
                    raise DataError("images stacked as channels have different affines")
                if tuple(header[MetaKeys.SPATIAL_SHAPE]) != tuple(meta[MetaKeys.SPATIAL_SHAPE]):
                    raise DataError("images stacked as channels have different shapes")
            else:
                meta = header
            arrays.append(array)
        if len(arrays) == 1:
            return arrays[0], meta
        channel_dim = meta.get(MetaKeys.ORIGINAL_CHANNEL_DIM)
        if isinstance(channel_dim, int):
            return np.concatenate(arrays, axis=channel_dim), meta
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays, axis=0), meta

    def _meta(self, image: sitk.Image) -> dict:
        dim = image.GetDimension()
        sr = max(1, min(dim, 3))
        affine = sitk_image_affine(image)
        size = list(image.GetSize())
        if isinstance(self.channel_dim, int) and image.GetNumberOfComponentsPerPixel() == 1 and dim > sr:
            size.pop(self.channel_dim)
        return {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(size[:sr]),
            MetaKeys.SPACE: SpaceKeys.RAS,
            # SimpleITK's own (LPS) geometry, for reference; the affine above is what transforms use.
            "spacing": np.asarray(image.GetSpacing(), dtype=np.float64),
            "lps_origin": np.asarray(image.GetOrigin(), dtype=np.float64),
            "lps_direction": np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim),
        }


class VolumeReader(ImageReader):
    """One MONAI reader for every volume format: nibabel for NIfTI, :class:`SimpleITKReader` for the rest.

    MONAI does not consult ``verify_suffix`` for a reader passed to ``LoadImage``, so a lone
    ``SimpleITKReader`` would also read NIfTI (through ITK, which prefers the qform where nibabel uses the
    sform). This reader picks per file; ``get_data`` dispatches on the image type, so it is safe when
    ``CacheDataset`` loads cases in threads.
    """

    def __init__(self) -> None:
        from monai.data import NibabelReader

        super().__init__()
        self.nifti = NibabelReader()
        self.sitk = SimpleITKReader()

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return all(has_suffix(f, NIFTI_SUFFIXES) for f in ensure_tuple(filename)) or self.sitk.verify_suffix(filename)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        names = ensure_tuple(data)
        if all(has_suffix(name, NIFTI_SUFFIXES) for name in names):
            return self.nifti.read(data, **kwargs)  # lazy: voxels are read (and checked) in get_data
        images = self.sitk.read(data, **kwargs)
        for name, image in zip(names, images if isinstance(images, list) else [images], strict=True):
            check_finite(sitk.GetArrayViewFromImage(image), name)
        return images

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """The array and metadata; DataError naming the file for voxels that cannot be read (a truncated
        ``.nii.gz``) or are NaN or infinite (training would diverge, predictions would mean nothing)."""
        first = img[0] if isinstance(img, (list, tuple)) else img
        if isinstance(first, sitk.Image):
            return self.sitk.get_data(img)
        images = list(img) if isinstance(img, (list, tuple)) else [img]
        names = [str(i.get_filename()) for i in images]
        # a NibabelReader pairs the images with the file names of its own last read(), which another CacheDataset
        # thread may have replaced meanwhile (a label's: the case then had one channel): one reader per call
        nifti = type(self.nifti)()
        nifti.filenames = tuple(names)
        try:
            array, meta = nifti.get_data(img)
        except Exception as e:  # nibabel reads NIfTI voxels lazily: truncated or corrupt data fails here
            culprit = next((n for i, n in zip(images, names, strict=True) if not _readable(i)), ", ".join(names))
            raise DataError(f"cannot read image {culprit}: {error_summary(e)}") from e
        check_finite(array, ", ".join(names))
        return array, meta


class LoadVolumesd(LoadImaged):
    """``LoadImaged`` reading with :class:`VolumeReader` alone. Given a reader at construction only, MONAI falls back
    on its other readers when that one refuses a file: its PydicomReader would then read one slice of a DICOM series
    medseg refused (slices missing), and medseg's one-line reason would be lost."""

    def __init__(self, keys: Any, **kwargs: Any) -> None:
        self.volume_reader = VolumeReader()
        super().__init__(keys, reader=self.volume_reader, **kwargs)

    def __call__(self, data: Any, reader: ImageReader | None = None) -> Any:
        return super().__call__(data, reader or self.volume_reader)


def _readable(nifti_image: Any) -> bool:
    try:
        np.asarray(nifti_image.dataobj)
    except Exception:
        return False
    return True


def check_finite(array: np.ndarray, name: str) -> None:
    """DataError naming ``name`` if a floating-point array holds NaN or infinite values."""
    if np.issubdtype(array.dtype, np.floating):
        finite = int(np.isfinite(array).sum())
        if finite != array.size:
            raise DataError(f"{name}: {array.size - finite:,} voxel(s) are NaN or infinite; fix the scan first")


def reader_for(path: PathLike) -> str | ImageReader:
    """The MONAI reader for ``path``: ``"NibabelReader"``, a :class:`SimpleITKReader`, or ``"PILReader"``.

    A folder is read as a DICOM series, and so is a DICOM file: as the series it belongs to (in its folder).
    Raises DataError for other names.
    """
    path = Path(path)
    if is_dicom_series(path):
        return SimpleITKReader()
    if has_suffix(path, NIFTI_SUFFIXES):
        return "NibabelReader"
    if has_suffix(path, SITK_SUFFIXES):
        return SimpleITKReader()
    if has_suffix(path, IMAGE_2D_SUFFIXES):
        return "PILReader"
    if has_suffix(path, DICOM_SUFFIXES):
        raise DataError(f"{path}: DICOM file not found (pass the folder holding the series, or one of its files)")
    raise DataError(f"unsupported image format: {path}; supported formats: {SUPPORTED_FORMATS}")


def _reader_instance(reader: str | ImageReader) -> ImageReader:
    if isinstance(reader, ImageReader):
        return reader
    from monai.data import NibabelReader, PILReader

    return {"NibabelReader": NibabelReader, "PILReader": PILReader}[reader]()


def load_volume(path: PathLike, dtype: Any = None) -> tuple[np.ndarray, dict]:
    """Load ``path`` with :func:`reader_for`'s reader through ``monai.transforms.LoadImage``.

    Returns the array (native pixel type unless ``dtype`` is given; (x, y, z) axes, no channel axis added) and
    the metadata dict (``affine`` in RAS, ``spatial_shape``, ``filename_or_obj``, ...). Any failure to read raises
    DataError naming the file.
    """
    from monai.transforms import LoadImage

    path = Path(path)
    if not path.exists():
        raise DataError(f"image not found: {path}")
    reader = _reader_instance(reader_for(path))
    loader = LoadImage(reader=reader, image_only=False, dtype=dtype)
    try:
        # Passing the reader at call time makes LoadImage use it alone: with only the constructor argument it
        # would fall back to its other readers on failure and raise a RuntimeError holding every traceback.
        image, meta = loader(path, reader=reader)
    except DataError:
        raise
    except Exception as e:  # nibabel / PIL / zlib errors for corrupt or truncated files
        raise DataError(f"cannot read image {path}: {error_summary(e)}") from e
    meta = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in meta.items()}
    return np.asarray(image.numpy() if isinstance(image, torch.Tensor) else image), meta


def align_to_grid(
    labels: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, target_shape: tuple[int, ...], name: str
) -> np.ndarray:
    """Reorient a label array onto another voxel grid that differs only by axis flips/permutations.

    (E.g. a LAS label of an LPS DICOM series.) Raises DataError naming ``name`` if the grids really differ.
    """
    import nibabel as nib

    if np.allclose(affine, target_affine, atol=1e-3) and labels.shape == tuple(target_shape):
        return labels
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.io_orientation(target_affine)
    )
    aligned = nib.orientations.apply_orientation(labels, transform)
    moved = affine @ nib.orientations.inv_ornt_aff(transform, labels.shape)
    if aligned.shape != tuple(target_shape) or not np.allclose(moved, target_affine, atol=1e-3):
        raise DataError(f"{name}: the label's voxel grid does not match the image's (shape or affine differs)")
    return np.ascontiguousarray(aligned)


def read_label_on_grid(path: PathLike, grid: ScanHeader) -> np.ndarray:
    """A label volume as an array on ``grid``'s voxels (reoriented by :func:`align_to_grid` if stored with flipped
    or permuted axes)."""
    labels, meta = load_volume(path)
    affine = np.asarray(meta["affine"], dtype=float)
    return align_to_grid(np.asarray(labels), affine, grid.affine, tuple(grid.spatial_shape), str(path))

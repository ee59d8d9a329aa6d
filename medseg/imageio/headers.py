"""The one reader of 3D scan headers (no voxels): NIfTI through nibabel, NRRD / MetaImage / DICOM series through
SimpleITK. A header is read once per scan and passed along: to the input checks, the writer and the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.core.errors import DataError, error_summary
from medseg.imageio.formats import NIFTI_SUFFIXES, SUPPORTED_FORMATS, PathLike, has_suffix

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class SitkGeometry:
    """SimpleITK's own (LPS) geometry of a scan, all axes: what a writer copies onto a mask."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]


@dataclass(frozen=True)
class ScanHeader:
    """What a scan's header says: its full shape (spatial first, then channels) and voxel-to-RAS affine (mm).

    ``nifti`` holds the nibabel header of a NIfTI file (copied onto masks written beside it), ``sitk`` the
    LPS geometry of a SimpleITK-read file or DICOM series.
    """

    path: Path
    shape: tuple[int, ...]
    affine: np.ndarray
    nifti: Any = None
    sitk: SitkGeometry | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[:3]

    @property
    def channels(self) -> int:
        return int(np.prod(self.shape[3:])) if len(self.shape) > 3 else 1

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along each array axis."""
        x, y, z = (float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))
        return (x, y, z)

    @property
    def is_series(self) -> bool:
        """A DICOM series: a folder of slices, or one slice standing for its series."""
        from medseg.imageio.dicom_series import is_dicom_series

        return is_dicom_series(self.path)


def shape_text(shape: tuple[int, ...]) -> str:
    """``240x240x155``."""
    return "x".join(str(int(n)) for n in shape)


def sitk_affine_ras(spacing: tuple[float, ...], origin: tuple[float, ...], direction: tuple[float, ...]) -> np.ndarray:
    """The RAS voxel-to-world affine of SimpleITK (LPS) geometry: 4x4 for 3D and higher (first three axes), 3x3
    for 2D."""
    dim = len(spacing)
    sr = max(1, min(dim, 3))
    matrix = np.asarray(direction, dtype=np.float64).reshape(dim, dim)[:sr, :sr]
    affine = np.eye(sr + 1)
    affine[:sr, :sr] = matrix @ np.diag(np.asarray(spacing, dtype=np.float64)[:sr])
    affine[:sr, sr] = np.asarray(origin, dtype=np.float64)[:sr]
    flip = np.ones(sr + 1)
    flip[: min(sr, 2)] = -1.0  # LPS -> RAS negates x and y
    return np.diag(flip) @ affine


def read_header(path: PathLike) -> ScanHeader:
    """Read a scan's shape and geometry from its header only (a DICOM series: its first and last slices).

    Raises:
        DataError: the header cannot be read, or the image has fewer than 3 dimensions.
    """
    from medseg.imageio.dicom_series import is_dicom_series

    path = Path(path)
    if is_dicom_series(path):
        return _series_header(path)
    try:
        if has_suffix(path, NIFTI_SUFFIXES):
            import nibabel as nib

            image = nib.load(str(path))  # lazy: reads the header, not the voxel data
            header = ScanHeader(
                path, tuple(int(n) for n in image.shape), np.asarray(image.affine, dtype=float), nifti=image.header
            )
        else:
            header = _itk_file_header(path)
    except Exception as exc:  # any reader failure on user data becomes a one-line DataError
        detail = " ".join(str(exc).split()).split("sitk::ERROR: ")[-1][:200] or type(exc).__name__
        raise DataError(f"{path}: cannot read the image header ({detail})") from None
    if len(header.shape) < 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {shape_text(header.shape)}")
    return header


def dicom_series_files(folder: Path) -> list[str]:
    """The slice files of the only DICOM series in ``folder``, in slice order; DataError when it holds none or
    several. A file instead of a folder stands for its own series: the files of that series in the file's folder
    (other series beside it are not read)."""
    import SimpleITK as sitk

    folder = Path(folder)
    if folder.is_file():
        return _series_of_file(folder)
    warnings_on = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM prints "No Series were found" for a non-DICOM folder
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as e:
        raise DataError(f"cannot list DICOM series in folder {folder}: {error_summary(e)}") from e
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_on)
    if not series_ids:
        raise DataError(
            f"folder {folder} holds no DICOM series (expected a folder of DICOM slices of one series); "
            f"supported formats: {SUPPORTED_FORMATS}"
        )
    if len(series_ids) > 1:
        raise DataError(
            f"folder {folder} holds {len(series_ids)} DICOM series; put each series in its own folder "
            f"(series UIDs: {', '.join(s or '<empty>' for s in series_ids)})"
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0])
    if not files:
        raise DataError(f"folder {folder}: DICOM series {series_ids[0]!r} lists no files")
    return list(files)


def _series_of_file(path: Path) -> list[str]:
    """The slice files, in slice order, of the series ``path`` belongs to, from ``path``'s folder."""
    import pydicom
    import SimpleITK as sitk

    try:
        uid = str(
            pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).get(
                "SeriesInstanceUID", ""
            )
        ).strip()
    except (OSError, ValueError, pydicom.errors.InvalidDicomError) as exc:
        raise DataError(f"{path}: not a readable DICOM file ({error_summary(exc)})") from None
    if not uid:
        raise DataError(f"{path}: no SeriesInstanceUID, so its series cannot be told apart from the others beside it")
    warnings_on = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path.parent), uid)
    except RuntimeError as e:
        raise DataError(f"cannot list DICOM series {uid} in folder {path.parent}: {error_summary(e)}") from e
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_on)
    if not files:
        raise DataError(f"{path}: GDCM finds no files of its series {uid} in {path.parent}")
    return list(files)


def _information(path: PathLike) -> Any:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def _itk_file_header(path: Path) -> ScanHeader:
    reader = _information(path)
    geometry = SitkGeometry(
        tuple(int(n) for n in reader.GetSize()),
        tuple(reader.GetSpacing()),
        tuple(reader.GetOrigin()),
        tuple(reader.GetDirection()),
    )
    shape = geometry.size
    if reader.GetNumberOfComponents() > 1:
        shape = (*shape, int(reader.GetNumberOfComponents()))
    affine = np.eye(4)
    if reader.GetDimension() >= 3:
        affine = sitk_affine_ras(geometry.spacing, geometry.origin, geometry.direction)
    return ScanHeader(path, shape, affine, sitk=geometry)


def _series_header(folder: Path) -> ScanHeader:
    """The geometry SimpleITK's series reader gives, from the headers of the first and last slices."""
    files = dicom_series_files(folder)
    try:
        first = _information(files[0])
        last = _information(files[-1]) if len(files) > 1 else first
    except RuntimeError as exc:
        raise DataError(f"{files[0]}: cannot read the DICOM header ({error_summary(exc)})") from None
    spacing = list(first.GetSpacing())[:3]
    if len(files) > 1:
        spacing[2] = float(np.linalg.norm(np.subtract(last.GetOrigin()[:3], first.GetOrigin()[:3]))) / (len(files) - 1)
    geometry = SitkGeometry(
        (*(int(n) for n in first.GetSize()[:2]), len(files)),
        tuple(spacing),
        tuple(first.GetOrigin()[:3]),
        tuple(np.asarray(first.GetDirection(), dtype=float).reshape(first.GetDimension(), -1)[:3, :3].ravel()),
    )
    shape: tuple[int, ...] = geometry.size
    if first.GetNumberOfComponents() > 1:
        shape = (*shape, int(first.GetNumberOfComponents()))
    affine = sitk_affine_ras(geometry.spacing, geometry.origin, geometry.direction)
    return ScanHeader(folder, shape, affine, sitk=geometry)

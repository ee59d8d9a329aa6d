"""What the data check reads in a 3D case, where each modality (channel) may be its own file: headers first
(every file exists; modalities and label agree in shape and in affine within :data:`AFFINE_TOLERANCE_MM`; a DICOM
series folder is accepted without header checks), then the label's values and the image's voxels; and the
fingerprint of a 3D datalist. The cases are found by :mod:`medseg.data.layouts`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.core.errors import DataError
from medseg.data.records import Finding, Record
from medseg.imageio.headers import ScanHeader, read_header, shape_text

AFFINE_TOLERANCE_MM = 1e-3


def _check_exists(path: Path, role: str) -> bool:
    """True for a file, False for a DICOM series folder (no header checks); DataError if missing."""
    if path.is_file():
        return True
    if path.is_dir():
        if not any(p.is_file() for p in path.iterdir()):
            raise DataError(f"{path}: {role} folder is empty (expected a DICOM series)")
        return False
    raise DataError(f"{path}: {role} file not found")


def _geometry_difference(a: np.ndarray, b: np.ndarray) -> str:
    """Which of spacing, origin and direction differ between two voxel-to-world affines."""
    spacing_a, spacing_b = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    parts = []
    if np.abs(spacing_a - spacing_b).max() > AFFINE_TOLERANCE_MM:
        parts.append(
            "spacing " + "x".join(f"{v:.4g}" for v in spacing_a) + " vs " + "x".join(f"{v:.4g}" for v in spacing_b)
        )
    if np.abs(a[:3, 3] - b[:3, 3]).max() > AFFINE_TOLERANCE_MM:
        parts.append(f"origin differs by {np.abs(a[:3, 3] - b[:3, 3]).max():.3g} mm")
    if np.abs(a[:3, :3] / spacing_a - b[:3, :3] / spacing_b).max() > 1e-4:
        parts.append("direction differs")
    return ", ".join(parts) or "the affines differ"


def check_volume_record(record: Record, channels: int | None = None) -> dict[Path, ScanHeader]:
    """Check that every file of a case exists and that modalities and label agree in shape and affine.

    Args:
        record: a datalist record.
        channels: the number of channels the images must add up to (4D files count their 4th axis), if known.

    Returns:
        The headers read, by path (DICOM series folders are not read).
    """
    case = record["id"]
    files = [(Path(p), "image") for p in record["image"]]
    if record.get("label"):
        files.append((Path(record["label"]), "label"))
    reference: tuple[Path, ScanHeader] | None = None
    headers: dict[Path, ScanHeader] = {}
    total_channels = 0
    for path, role in files:
        if not _check_exists(path, role):
            total_channels += role == "image"
            continue
        header = headers[path] = read_header(path)
        if role == "image":
            total_channels += header.channels
        if reference is None:
            reference = (path, header)
            continue
        ref_path, ref = reference
        if header.spatial_shape != ref.spatial_shape:
            raise DataError(
                f"case {case!r}: shape {shape_text(ref.spatial_shape)} of {ref_path} differs from "
                f"shape {shape_text(header.spatial_shape)} of {path}"
            )
        difference = float(np.abs(header.affine - ref.affine).max())
        if difference > AFFINE_TOLERANCE_MM:
            raise DataError(
                f"case {case!r}: affines differ between {ref_path} and {path} "
                f"({_geometry_difference(ref.affine, header.affine)}; largest difference {difference:.3g} mm, "
                f"tolerance {AFFINE_TOLERANCE_MM} mm)"
            )
    if channels is not None and total_channels != channels:
        raise DataError(
            f"case {case!r}: the image(s) hold {total_channels} channel(s) but {channels} modalities are expected "
            f"({', '.join(Path(p).name for p in record['image'])})"
        )
    return headers


def label_values(path: Path) -> set[int]:
    """The distinct values of a label volume (its voxels are read).

    Raises:
        DataError: unreadable, or values that are not class labels: NaN, infinite, negative or non-integer
            (an image given as a label, or a label resampled with linear interpolation).
    """
    from medseg.imageio.readers import load_volume

    array, _ = load_volume(path)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            raise DataError(f"{path}: label holds {int(array.size - finite.sum()):,} NaN or infinite value(s)")
        fractional = array[array != np.floor(array)]
        if fractional.size:
            raise DataError(
                f"{path}: label holds non-integer values (e.g. {float(fractional.flat[0]):.4g}); expected integer "
                "class labels (an image given as a label, or a label resampled with linear interpolation?)"
            )
    if array.size and array.min() < 0:
        raise DataError(f"{path}: label holds negative values (down to {array.min():g}); expected labels 0, 1, 2, ...")
    if not array.size:
        return set()
    array = array.astype(np.int64, copy=False).ravel()
    counts = np.bincount(array) if array.max() < 2**24 else None
    return {int(v) for v in (np.flatnonzero(counts) if counts is not None else np.unique(array))}


def spacing_in_orientation(affine: np.ndarray, axcodes: str) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the axes of ``axcodes`` (e.g. RAS) for a voxel-to-RAS affine."""
    import nibabel as nib

    zooms = nib.affines.voxel_sizes(affine)
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(tuple(axcodes))
    )
    spacing = [0.0, 0.0, 0.0]
    for source_axis, (target_axis, _) in enumerate(transform[:3]):
        spacing[int(target_axis)] = float(zooms[source_axis])
    return (spacing[0], spacing[1], spacing[2])


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def volume_fingerprint(records: list[Record]) -> str:
    """A short hash of ids, file names and sizes: tells runs on different data apart."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r["id"]):
        paths = [Path(p) for p in record["image"]]
        if record.get("label"):
            paths.append(Path(record["label"]))
        for path in paths:
            digest.update(f"{record['id']}:{path.name}:{_size(path)}\n".encode())
    return digest.hexdigest()[:16]


@dataclass
class CaseFacts:
    """What one checked case tells about the dataset as a whole: its spacing, orientation and content."""

    spacing: tuple[float, float, float] | None = None
    orientation: str = ""
    digest: str = ""


PLAUSIBLE_HU = (-1100.0, 4000.0)


def case_findings(
    record: Record,
    channels: int | None,
    mapping: dict[int, int] | None,
    modality: str,
    listed: tuple[str, set[int]] | None = None,
) -> tuple[list[Finding], CaseFacts]:
    """Every problem of one case: files and headers (shape, spacing, origin, direction agree), channels, the
    label's values (read; with ``listed``, the file that lists the dataset's label values and those values: others are
    errors), and the image's voxels (read: truncation, NaN, CT intensities outside about [-1100, 4000] HU)."""
    import nibabel as nib

    from medseg.imageio.readers import load_volume

    case, findings, facts = record["id"], [], CaseFacts()
    headers: dict[Path, ScanHeader] = {}
    try:
        headers = check_volume_record(record, channels)
    except DataError as exc:
        findings.append(Finding("error", case, "geometry", str(exc), record["image"][0]))
    first = Path(record["image"][0])
    try:
        header = headers.get(first) or read_header(first)  # a DICOM folder: not read by the geometry check
        facts.spacing = header.spacing
        facts.orientation = "".join(nib.orientations.aff2axcodes(header.affine))
    except DataError:
        pass  # reported by check_volume_record
    for path in (Path(p) for p in record["image"]):
        if not path.exists():
            continue
        try:
            array, _ = load_volume(path)
        except DataError as exc:
            findings.append(Finding("error", case, "unreadable", str(exc), str(path)))
            continue
        digest = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
        facts.digest = facts.digest or digest
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad = int(array.size - np.isfinite(array).sum())
            findings.append(Finding("error", case, "nan", f"{path}: {bad:,} voxel(s) are NaN or infinite", str(path)))
        elif modality == "ct" and array.size:
            low, high = float(array.min()), float(array.max())
            if low < PLAUSIBLE_HU[0] or high > PLAUSIBLE_HU[1]:
                findings.append(
                    Finding(
                        "warning",
                        case,
                        "intensity",
                        f"{path}: intensities {low:g}..{high:g}, outside the CT range of about "
                        f"{PLAUSIBLE_HU[0]:g}..{PLAUSIBLE_HU[1]:g} HU (not Hounsfield units, or a wrong modality?)",
                        str(path),
                    )
                )
    label = record.get("label")
    if label is None:
        findings.append(Finding("error", case, "missing label", f"case {case!r}: no label file", record["image"][0]))
    elif Path(label).exists():
        try:
            values = label_values(Path(label))
        except DataError as exc:
            findings.append(Finding("error", case, "label values", str(exc), label))
        else:
            if not values - {0}:
                findings.append(Finding("warning", case, "empty label", f"{label}: the label is empty", label))
            unlisted = sorted(values - listed[1] - {0}) if listed else []
            if listed and unlisted:
                message = (
                    f"{label}: label value(s) {', '.join(map(str, unlisted))} not listed in {listed[0]}'s labels "
                    f"({', '.join(map(str, sorted(listed[1] | {0})))})"
                )
                findings.append(Finding("error", case, "unlisted labels", message, label))
            unmapped = sorted(values - set(mapping) - {0}) if mapping else []
            if unmapped:
                shown = ", ".join(f"{v} in {Path(label).name}" for v in unmapped)
                message = (
                    f"label value(s) {', '.join(map(str, unmapped))} are not in data.label_mapping and become "
                    f"background ({shown})"
                )
                findings.append(Finding("warning", case, "unmapped labels", message, label))
    return findings, facts

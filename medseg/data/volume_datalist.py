"""3D datalists: CT/MRI cases where a case may have several modalities (channels), each its own file.

Records are ``{"id": str, "image": [path per modality, in order], "label": path}``; ``label`` is absent for
cases without one when ``require_labels=False`` (inference). Supported layouts:

- ``msd``: a Medical Segmentation Decathlon ``dataset.json`` with a ``training`` list of ``{"image", "label"}``;
  ``image`` is one path (a 3D or 4D file) or a list of paths (one per modality), relative to the json's folder.
- ``nnunet``: nnU-Net v2 raw layout, ``imagesTr/<case>_<4-digit channel><ending>`` and
  ``<labels_dir>/<case><ending>``; the ending comes from ``dataset.json``'s ``file_ending`` when given.
- ``csv``: columns ``id`` (optional), ``label`` and either ``image`` or one column per modality.
- ``folders``: one folder per modality under the root, each holding ``<id><suffix>``, labels in ``labels_dir``.
- ``list``: the cases listed in the pipeline file (``data.cases``).

Every case is checked cheaply, from the file headers only: all files exist, and all modalities and the label
have the same 3D shape and the same affine (within :data:`AFFINE_TOLERANCE_MM`). A DICOM series folder is
accepted as an image path without header checks.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.config.schema import CaseConfig
from medseg.core.errors import DataError
from medseg.data.records import VOLUME_LAYOUTS, Finding, Record, check_case_ids
from medseg.imageio.formats import VOLUME_SUFFIXES, volume_id, volume_suffix
from medseg.imageio.headers import ScanHeader, read_header, shape_text

log = logging.getLogger(__name__)

AFFINE_TOLERANCE_MM = 1e-3
NNUNET_IMAGES_DIR = "imagesTr"
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")

VolumeRecord = Record


# --------------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(description, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(description).__name__}")
    return description


def _msd_datalist(json_path: Path, require_labels: bool) -> list[VolumeRecord]:
    if not json_path.is_file():
        raise DataError(f"{json_path}: dataset.json not found")
    description = _read_json(json_path)
    entries = description.get("training")
    if not isinstance(entries, list):
        raise DataError(f"{json_path}: expected a 'training' list of {{image, label}} entries")
    if not entries:
        raise DataError(f"{json_path}: the 'training' list is empty")
    records = []
    for number, entry in enumerate(entries):
        where = f"{json_path}: training entry {number}"
        if not isinstance(entry, dict) or "image" not in entry:
            raise DataError(f"{where} has no 'image'")
        images = entry["image"]
        if isinstance(images, str):
            images = [images]
        if not isinstance(images, list) or not images or not all(isinstance(p, str) and p for p in images):
            raise DataError(f"{where}: 'image' must be a path or a non-empty list of paths")
        label = entry.get("label")
        if label is not None and (not isinstance(label, str) or not label):
            raise DataError(f"{where}: 'label' must be a path")
        if label is None and require_labels:
            raise DataError(f"{where} has no 'label'")
        case_id = entry.get("id") or volume_id(Path(label or images[0]))
        record: VolumeRecord = {"id": str(case_id), "image": [str(json_path.parent / p) for p in images]}
        if label is not None:
            record["label"] = str(json_path.parent / label)
        records.append(record)
    counts = {len(r["image"]) for r in records}
    if len(counts) > 1:
        first = records[0]
        odd = next(r for r in records if len(r["image"]) != len(first["image"]))
        raise DataError(
            f"{json_path}: case {odd['id']!r} lists {len(odd['image'])} image(s) "
            f"but case {first['id']!r} lists {len(first['image'])}"
        )
    return records


def _msd_channels(json_path: Path, modalities: list[str]) -> int | None:
    """How many channels each MSD case must have: len(modalities), else the json's 'modality' map."""
    if modalities:
        return len(modalities)
    described = _read_json(json_path).get("modality")
    return len(described) if isinstance(described, dict) and described else None


def _nnunet_datalist(
    root: Path, labels_dir: str, dataset_json: str, modalities: list[str], require_labels: bool
) -> list[VolumeRecord]:
    images_dir = root / NNUNET_IMAGES_DIR
    json_path = root / dataset_json
    description = _read_json(json_path) if json_path.is_file() else {}
    file_ending = description.get("file_ending")
    if file_ending is not None and (not isinstance(file_ending, str) or not file_ending):
        raise DataError(f"{json_path}: 'file_ending' must be a non-empty string like '.nii.gz'")
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found")
    looked_for = file_ending or ", ".join(VOLUME_SUFFIXES)
    cases: dict[str, dict[int, Path]] = {}
    endings: dict[str, str] = {}
    for path in sorted(images_dir.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        ending = file_ending or path.name[len(path.name) - len(volume_suffix(path.name)) :]
        if not ending or not path.name.endswith(ending):
            continue
        match = _NNUNET_CHANNEL.match(path.name[: len(path.name) - len(ending)])
        if match is None:
            raise DataError(f"{path}: not an nnU-Net image name (expected <case>_<4-digit channel>{ending})")
        case, channel = match["case"], int(match["channel"])
        channels = cases.setdefault(case, {})
        if channel in channels:
            raise DataError(f"{path}: ambiguous image, {channels[channel].name} has the same case and channel")
        channels[channel] = path
        endings.setdefault(case, ending)
    if not cases:
        raise DataError(f"{images_dir}: no images found (looked for <case>_0000 with {looked_for})")
    n_channels = max(max(channels) for channels in cases.values()) + 1
    for case in sorted(cases):
        missing = [c for c in range(n_channels) if c not in cases[case]]
        if missing:
            expected = images_dir / f"{case}_{missing[0]:04d}{endings[case]}"
            raise DataError(f"{images_dir}: case {case!r} is missing channel {missing[0]:04d} ({expected} not found)")
    described = description.get("channel_names", description.get("modality"))
    if isinstance(described, dict) and described and len(described) != n_channels:
        raise DataError(
            f"{json_path}: channel_names lists {len(described)} channel(s) but {images_dir} has {n_channels} per case"
        )
    if modalities and len(modalities) != n_channels:
        raise DataError(
            f"{images_dir}: {n_channels} channel(s) per case but {len(modalities)} modalities given "
            f"({', '.join(modalities)})"
        )
    label_folder = root / labels_dir
    if file_ending is None:
        labels = _labels_index(label_folder, require_labels)
    elif not label_folder.is_dir():
        if require_labels:
            raise DataError(f"{label_folder}: label folder not found")
        labels = {}
    else:
        labels = {
            c: label_folder / f"{c}{file_ending}" for c in cases if (label_folder / f"{c}{file_ending}").is_file()
        }
    records = []
    for case in sorted(cases):
        record: VolumeRecord = {"id": case, "image": [str(cases[case][c]) for c in range(n_channels)]}
        if case in labels:
            record["label"] = str(labels[case])
        elif require_labels:
            expected = label_folder / f"{case}{endings[case]}"
            raise DataError(f"{expected}: label file not found for case {case!r}")
        records.append(record)
    return records


def _index_volumes(folder: Path, allow_series: bool) -> dict[str, Path]:
    """id -> volume file (or DICOM series folder when ``allow_series``) in ``folder``; hidden names skipped."""
    index: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if not allow_series:
                continue
        elif not volume_suffix(path.name):
            continue
        case = volume_id(path)
        if case in index:
            raise DataError(f"{path}: ambiguous volume, {index[case].name} has the same id {case!r}")
        index[case] = path
    return index


def _labels_index(folder: Path, require_labels: bool) -> dict[str, Path]:
    if not folder.is_dir():
        if require_labels:
            raise DataError(f"{folder}: label folder not found")
        return {}
    return _index_volumes(folder, allow_series=False)


def _expected_path(folder: Path, case: str, like: Path) -> Path:
    """Where ``case`` would be in ``folder``, with the same ending as ``like``."""
    return folder / f"{case}{'' if like.is_dir() else volume_suffix(like.name)}"


def _folders_datalist(root: Path, modalities: list[str], labels_dir: str, require_labels: bool) -> list[VolumeRecord]:
    if not modalities:
        raise DataError(f"{root}: the folders layout needs modalities (the image folder names, e.g. ['imagesTr'])")
    indexes = []
    for name in modalities:
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"{folder}: modality folder not found")
        indexes.append(_index_volumes(folder, allow_series=True))
    first_folder, first = root / modalities[0], indexes[0]
    if not first:
        raise DataError(f"{first_folder}: no volumes found (looked for {', '.join(VOLUME_SUFFIXES)} or DICOM folders)")
    labels = _labels_index(root / labels_dir, require_labels)
    records = []
    for case in sorted(first):
        images = []
        for name, index in zip(modalities, indexes, strict=True):
            if case not in index:
                expected = _expected_path(root / name, case, first[case])
                raise DataError(f"{expected}: file not found (case {case!r} is in {first_folder} but not in {name})")
            images.append(str(index[case]))
        record: VolumeRecord = {"id": case, "image": images}
        if case in labels:
            record["label"] = str(labels[case])
        elif require_labels:
            expected = _expected_path(root / labels_dir, case, first[case])
            raise DataError(f"{expected}: label file not found for case {case!r}")
        records.append(record)
    return records


def _csv_datalist(csv_path: Path, modalities: list[str], require_labels: bool) -> list[VolumeRecord]:
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: CSV file not found")
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's byte-order mark
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = [c.strip() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{csv_path}: cannot read CSV ({exc})") from None
    if not rows:
        raise DataError(f"{csv_path}: no rows")
    if modalities and all(m in columns for m in modalities):
        image_columns = list(modalities)
    elif "image" in columns and len(modalities) <= 1:
        image_columns = ["image"]
    else:
        wanted = ", ".join(repr(m) for m in modalities) if len(modalities) > 1 else "'image'"
        raise DataError(f"{csv_path}: expected image column(s) {wanted} and 'label', got {columns}")
    if "label" not in columns and require_labels:
        raise DataError(f"{csv_path}: expected a 'label' column, got {columns}")
    records = []
    for number, raw in enumerate(rows, start=2):  # row 1 is the header
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        required = image_columns + (["label"] if require_labels else [])
        empty = next((c for c in required if not row.get(c)), None)
        if empty is not None:
            raise DataError(f"{csv_path}: row {number} has an empty {empty!r} cell")
        images = [csv_path.parent / row[c] for c in image_columns]
        record: VolumeRecord = {"id": row.get("id") or volume_id(images[0]), "image": [str(p) for p in images]}
        if row.get("label"):
            record["label"] = str(csv_path.parent / row["label"])
        records.append(record)
    return records


# --------------------------------------------------------------------------------------------------
# Header checks
# --------------------------------------------------------------------------------------------------


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


def check_volume_record(record: VolumeRecord, channels: int | None = None) -> dict[Path, ScanHeader]:
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


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def find_volume_cases(
    root: Path,
    layout: str,
    modalities: list[str],
    labels_dir: str = "labelsTr",
    dataset_json: str = "dataset.json",
    csv_file: str = "pairs.csv",
    require_labels: bool = True,
) -> tuple[list[VolumeRecord], int | None, Path]:
    """The cases of a 3D dataset in its layout, not yet checked: the records, the channel count the layout
    declares (None if it declares none) and the file that lists them (the folder itself for folder layouts)."""
    root = Path(root)
    modalities = list(modalities or [])
    if layout not in VOLUME_LAYOUTS:
        raise DataError(f"unknown volume layout {layout!r}; expected one of {', '.join(VOLUME_LAYOUTS)}")
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if not any(root.iterdir()):
        raise DataError(f"{root}: dataset folder is empty")
    if layout == "msd":
        source = root / dataset_json
        return _msd_datalist(source, require_labels), _msd_channels(source, modalities), source
    if layout == "nnunet":
        return _nnunet_datalist(root, labels_dir, dataset_json, modalities, require_labels), None, root
    if layout == "csv":
        return _csv_datalist(root / csv_file, modalities, require_labels), None, root / csv_file
    return _folders_datalist(root, modalities, labels_dir, require_labels), None, root


def build_volume_datalist(
    root: Path,
    layout: str,
    modalities: list[str],
    labels_dir: str = "labelsTr",
    dataset_json: str = "dataset.json",
    csv_file: str = "pairs.csv",
    require_labels: bool = True,
) -> list[VolumeRecord]:
    """Find the cases of a 3D dataset under ``root`` and check them from their headers.

    Args:
        root: the dataset folder.
        layout: ``msd``, ``nnunet``, ``csv`` or ``folders`` (see the module docstring).
        modalities: ``folders``: the image folder names, in channel order; ``csv``: the image column names
            (or empty/one name for a single ``image`` column); ``msd``/``nnunet``: optional, the channel
            count must then match.
        labels_dir: label folder (``nnunet``, ``folders``).
        dataset_json: ``msd``: the datalist; ``nnunet``: optional, for ``file_ending`` and ``channel_names``.
        csv_file: the CSV (``csv``), relative to ``root``.
        require_labels: False for inference: cases without a label are kept, without a ``label`` key.

    Returns:
        Records ``{"id": str, "image": [path per modality, in order], "label": path (or absent)}``.

    Raises:
        DataError: one line naming the file (and case) at fault.
    """
    records, channels, source = find_volume_cases(
        root, layout, modalities, labels_dir, dataset_json, csv_file, require_labels
    )
    check_case_ids(records, source)
    for record in records:
        check_volume_record(record, channels)
    log.info("%s: %d case(s), %s layout", root, len(records), layout)
    return records


def cases_from_config(folder: Path, cases: list[CaseConfig]) -> list[VolumeRecord]:
    """The ``list`` layout: the cases named in the pipeline file (paths relative to ``folder``)."""
    return [
        {
            "id": case.id,
            "image": [str(folder / p) for p in case.image],
            **({"label": str(folder / case.label)} if case.label else {}),
        }
        for case in cases
    ]


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


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def volume_fingerprint(records: list[VolumeRecord]) -> str:
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
    record: VolumeRecord, channels: int | None, mapping: dict[int, int] | None, modality: str
) -> tuple[list[Finding], CaseFacts]:
    """Every problem of one case: files and headers (shape, spacing, origin, direction agree), channels, the
    label's values (read), and the image's voxels (read: truncation, NaN, CT intensities outside about
    [-1100, 4000] HU)."""
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
            unmapped = sorted(values - set(mapping) - {0}) if mapping else []
            if unmapped:
                shown = ", ".join(f"{v} in {Path(label).name}" for v in unmapped)
                message = (
                    f"label value(s) {', '.join(map(str, unmapped))} are not in data.label_mapping and become "
                    f"background ({shown})"
                )
                findings.append(Finding("warning", case, "unmapped labels", message, label))
    return findings, facts

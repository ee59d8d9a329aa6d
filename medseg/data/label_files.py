"""Label files from viewers and PACS as training labels: a 3D case whose ``label`` is a 3D Slicer ``.seg.nrrd`` or a
DICOM-SEG (a file or a folder holding one) gets it converted once into a NIfTI label map on its scan's grid
(:func:`medseg.imageio.label_files.label_map_on_grid`), and the record's ``label`` then names that file: the checks,
loading, training and evaluation read an ordinary label map. Every layout's cases pass through
:func:`with_label_maps` (:func:`medseg.data.layouts.registry.find_in_layout`).

Label values: a segment's name gets the value ``data.labels`` gives it, else the one the dataset's description gives
(an nnU-Net ``dataset.json``'s ``labels``); without either the names get 1, 2, 3... in order of first appearance over
the cases (sorted by id), which come back as ``Cases.resolved["data.labels"]``.

Cache: ``<data.cache_dir>/labels/<key>/<case>.nii.gz``, ``key`` the SHA-256 of the label file's bytes, the scan's grid
and the name -> value table; written atomically, re-used while the key matches.

A bad label file (unreadable, a segment ``data.labels`` does not name, another series, no overlap with its scan)
stops the search with one line naming it, or, when findings are collected, is one error for its case (check
``label file``), which is then left out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg.core.errors import DataError
from medseg.data.layouts.annotated import Problems
from medseg.data.layouts.base import Cases, LayoutSettings
from medseg.data.records import Finding, Record
from medseg.imageio.headers import ScanHeader, read_header
from medseg.imageio.label_files import check_scan, is_label_file, label_file_source, label_map_on_grid, segment_names

CONVERSION_VERSION = 1
CACHE_FOLDER = "labels"
CHECK = "label file"


def _label_files(records: list[Record]) -> dict[str, Path]:
    """case -> label file, for the records whose label is a label file that exists (a missing one: the checks say)."""
    files = {}
    for record in records:
        label = Path(record["label"]) if record.get("label") else None
        if label is not None and is_label_file(label) and label.exists():
            files[record["id"]] = label
    return files


def _values(settings: LayoutSettings, described: dict[str, Any], names: dict[str, list[str]]) -> dict[str, int]:
    """Segment name -> label value: ``data.labels``, the dataset's description, or 1, 2, 3... by first appearance."""
    if settings.labels is not None:
        return dict(settings.labels)
    if described.get("data.labels"):
        return {name: int(value) for value, name in described["data.labels"].items()}
    order = dict.fromkeys(name for case in sorted(names) for name in names[case])
    return {name: value for value, name in enumerate(order, start=1)}


def cache_key(label: Path, scan: ScanHeader, values: dict[str, int]) -> str:
    """SHA-256 of the label file's bytes, the scan's grid (shape, affine) and the name -> value table."""
    digest = hashlib.sha256(label_file_source(label).read_bytes())
    grid = {
        "v": CONVERSION_VERSION,
        "shape": [int(n) for n in scan.spatial_shape],
        "affine": np.round(np.asarray(scan.affine, dtype=float), 6).tolist(),
        "values": values,
    }
    digest.update(json.dumps(grid, sort_keys=True).encode())
    return digest.hexdigest()


def cached_label_map(case: str, label: Path, scan: Path, values: dict[str, int], cache_dir: Path) -> Path:
    """The NIfTI label map of ``label`` on ``scan``'s grid, converted now or found in the cache."""
    from medseg.imageio.writers import write_mask_like

    header = read_header(scan)
    check_scan(label, header)  # also for a cached map: the scan folder may now hold another series
    try:
        key = cache_key(label, header, values)
    except OSError as exc:
        raise DataError(f"{label}: cannot read the label file ({exc})") from None
    path = cache_dir / CACHE_FOLDER / key / f"{case}.nii.gz"
    if not path.is_file():
        write_mask_like(label_map_on_grid(label, header, values), header, path)  # written atomically
    return path


def with_label_maps(cases: Cases, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
    """``cases`` with each 3D label file replaced by its cached label map on the scan's grid (see the module).

    Raises:
        DataError: without ``findings``, the first bad label file, in one line naming it.
    """
    files = _label_files(cases.records) if settings.spatial_dims == 3 else {}
    if not files:
        return cases
    problems = Problems(findings)
    names: dict[str, list[str]] = {}
    for case in sorted(files):
        try:
            names[case] = segment_names(files[case])
        except DataError as exc:
            problems.error(case, CHECK, str(exc), files[case])
    values = _values(settings, cases.resolved, names)
    records: list[Record] = []
    for record in cases.records:
        case = record["id"]
        if case not in files:
            records.append(record)
            continue
        if case not in names:
            continue  # its error is reported
        label = files[case]
        unknown = next((name for name in names[case] if name not in values), None)
        if unknown is not None:
            message = f"{label}: segment {unknown!r} is not in data.labels (known: {', '.join(values) or 'none'})"
            problems.error(case, CHECK, message, label)
            continue
        try:
            converted = cached_label_map(case, label, Path(record["image"][0]), values, settings.cache_dir)
        except DataError as exc:
            problems.error(case, CHECK, str(exc), label)
            continue
        records.append({**record, "label": str(converted)})
    resolved = dict(cases.resolved)
    if settings.labels is None and not resolved.get("data.labels") and values:
        resolved["data.labels"] = {value: name for name, value in values.items()}
    return replace(cases, records=records, resolved=resolved)

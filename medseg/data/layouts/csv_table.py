"""The ``csv`` layout: one row per case in ``data.csv_file``, paths relative to the CSV's folder; column names and
cells are stripped of surrounding spaces, and Excel's byte-order mark is skipped.

Columns: ``id`` (optional), the image and the label:

- 2D: ``image`` and ``mask`` (or ``label``); the id defaults to the image's name without its extension;
- 3D: ``image``, or one column per name in ``data.modalities`` (in channel order), and ``label``; the id defaults
  to the first image's name without its volume ending (a DICOM series folder: its name).
"""

from __future__ import annotations

import csv
from pathlib import Path

from medseg.core.errors import DataError
from medseg.data.layouts.base import Cases, Layout, LayoutSettings, make_record
from medseg.data.records import Finding, Record
from medseg.imageio.formats import volume_id


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The column names (in file order) and the rows, stripped."""
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's byte-order mark
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = [c.strip() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from None
    if not rows:
        raise DataError(f"{path}: no rows")
    # cells beyond the header (key None) are ignored; missing cells are empty
    return columns, [{(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in rows]


def _columns(path: Path, columns: list[str], settings: LayoutSettings) -> tuple[list[str], str]:
    """The image column(s) in channel order and the label column."""
    if settings.spatial_dims == 2:
        label = next((c for c in ("mask", "label") if c in columns), None)
        if "image" not in columns or label is None:
            raise DataError(f"{path}: expected columns 'image' and 'mask' (or 'label'), got {columns}")
        return ["image"], label
    modalities = list(settings.modalities)
    if modalities and all(m in columns for m in modalities):
        images = modalities
    elif "image" in columns and len(modalities) <= 1:
        images = ["image"]
    else:
        wanted = ", ".join(repr(m) for m in modalities) if len(modalities) > 1 else "'image'"
        raise DataError(f"{path}: expected image column(s) {wanted} and 'label', got {columns}")
    if "label" not in columns:
        raise DataError(f"{path}: expected a 'label' column, got {columns}")
    return images, "label"


class CsvLayout(Layout):
    name = "csv"
    evidence = "a CSV (data.csv_file) listing the cases"
    spatial_dims = (2, 3)

    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        return (folder / settings.csv_file).is_file()

    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        path = folder / settings.csv_file
        columns, rows = _read(path)
        image_columns, label_column = _columns(path, columns, settings)
        records: list[Record] = []
        for number, row in enumerate(rows, start=2):  # row 1 is the header
            empty = next((c for c in [*image_columns, label_column] if not row.get(c)), None)
            if empty is not None:
                raise DataError(f"{path}: row {number} has an empty {empty!r} cell")
            images = [path.parent / row[c] for c in image_columns]
            default_id = Path(row[image_columns[0]]).stem if settings.spatial_dims == 2 else volume_id(images[0])
            records.append(make_record(settings, row.get("id") or default_id, images, path.parent / row[label_column]))
        return Cases(records, self.name, path)

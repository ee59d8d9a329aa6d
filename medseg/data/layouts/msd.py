"""The ``msd`` layout: a Medical Segmentation Decathlon ``dataset.json`` (``data.dataset_json``) whose ``training``
list holds ``{"image", "label"}`` entries, paths relative to the json's folder.

``image`` is one path, or for 3D scans a list of paths (one per channel; one 4D file may hold every channel).
Ids: 2D, the image's name up to its first dot; 3D, the entry's ``id``, else the label's name without its volume
ending. 3D cases must have the channel count that ``data.modalities`` (else the json's ``modality`` map) declares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medseg.core.errors import DataError
from medseg.data.layouts.base import Cases, Layout, LayoutSettings, is_nnunet_description, make_record, read_json
from medseg.data.records import Finding, Record
from medseg.imageio.formats import volume_id

EXPECTED = "expected a 'training' list of {image, label} entries"


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: dataset.json not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read JSON ({exc})") from None
    try:
        description = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{path}: {EXPECTED} ({exc})") from None
    if not isinstance(description, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(description).__name__}")
    return description


def _entries(path: Path, description: dict[str, Any]) -> list[Any]:
    if "training" not in description:
        raise DataError(f"{path}: {EXPECTED} ('training')")
    entries = description["training"]
    if not isinstance(entries, list):
        raise DataError(f"{path}: {EXPECTED} ('training' is a {type(entries).__name__})")
    if not entries:
        raise DataError(f"{path}: the 'training' list is empty")
    return entries


def _record(path: Path, number: int, entry: Any, settings: LayoutSettings) -> Record:
    where = f"{path}: training entry {number}"
    if not isinstance(entry, dict):
        raise DataError(f"{path}: {EXPECTED} (training entry {number} is a {type(entry).__name__})")
    if "image" not in entry:
        raise DataError(f"{where} has no 'image'")
    images = [entry["image"]] if isinstance(entry["image"], str) else entry["image"]
    one = settings.spatial_dims == 2  # a 2D case is one image
    if not (isinstance(images, list) and images and all(isinstance(p, str) and p for p in images)) or (
        one and len(images) > 1
    ):
        raise DataError(f"{where}: 'image' must be {'one path' if one else 'a path or a non-empty list of paths'}")
    label = entry.get("label")
    if label is None:
        raise DataError(f"{where} has no 'label'")
    if not isinstance(label, str) or not label:
        raise DataError(f"{where}: 'label' must be a path")
    case_id = Path(images[0]).name.split(".")[0] if one else str(entry.get("id") or volume_id(Path(label)))
    return make_record(settings, case_id, [path.parent / p for p in images], path.parent / label)


class MsdLayout(Layout):
    name = "msd"
    spatial_dims = (2, 3)

    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        path = folder / settings.dataset_json
        if not path.is_file():
            return False
        try:
            return not is_nnunet_description(read_json(path))
        except DataError:
            return True  # unreadable: find() reports it

    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        path = folder / settings.dataset_json
        description = _read(path)
        records = [_record(path, n, entry, settings) for n, entry in enumerate(_entries(path, description))]
        if settings.spatial_dims == 2:
            return Cases(records, self.name, path)
        first = records[0]
        odd = next((r for r in records if len(r["image"]) != len(first["image"])), None)
        if odd is not None:
            raise DataError(
                f"{path}: case {odd['id']!r} lists {len(odd['image'])} image(s) "
                f"but case {first['id']!r} lists {len(first['image'])}"
            )
        described = description.get("modality")
        channels = len(settings.modalities) or (len(described) if isinstance(described, dict) and described else None)
        return Cases(records, self.name, path, channels)

"""The ``msd`` layout: a Medical Segmentation Decathlon ``dataset.json`` (``data.dataset_json``) whose ``training``
list holds ``{"image", "label"}`` entries, paths relative to the json's folder.

``image`` is one path, or for 3D scans a list of paths (one per channel; one 4D file may hold every channel).
Ids: 2D, the image's name up to its first dot; 3D, the entry's ``id``, else the label's name without its volume
ending. 3D cases must have the channel count that ``data.modalities`` (else the json's ``modality`` map) declares.
The ``labels`` map (value string -> name, ``"0"`` background) becomes ``data.labels`` where the pipeline leaves it
unset; the ``test`` list (paths, or ``{"image"}`` entries) is what ``medseg predict <folder or dataset.json>`` reads
(:func:`listed_test_cases`). With ``findings`` (``medseg check``) every bad entry is recorded, one line each,
and left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medseg.core.errors import DataError
from medseg.data.layouts.base import Cases, Layout, LayoutSettings, make_record, read_json
from medseg.data.layouts.nnunet import claims_nnunet
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


def _images(where: str, entry: Any, one: bool) -> list[str]:
    """The image paths of a training or test entry: one path for 2D (``one``), a path or a list for 3D."""
    images = [entry] if isinstance(entry, str) else entry
    if not (isinstance(images, list) and images and all(isinstance(p, str) and p for p in images)) or (
        one and len(images) > 1
    ):
        raise DataError(f"{where}: 'image' must be {'one path' if one else 'a path or a non-empty list of paths'}")
    return images


def _record(path: Path, number: int, entry: Any, settings: LayoutSettings) -> Record:
    where = f"{path}: training entry {number}"
    if not isinstance(entry, dict):
        raise DataError(f"{path}: {EXPECTED} (training entry {number} is a {type(entry).__name__})")
    if "image" not in entry:
        raise DataError(f"{where} has no 'image'")
    one = settings.spatial_dims == 2  # a 2D case is one image
    images = _images(where, entry["image"], one)
    label = entry.get("label")
    if label is None:
        raise DataError(f"{where} has no 'label'")
    if not isinstance(label, str) or not label:
        raise DataError(f"{where}: 'label' must be a path")
    case_id = Path(images[0]).name.split(".")[0] if one else str(entry.get("id") or volume_id(Path(label)))
    return make_record(settings, case_id, [path.parent / p for p in images], path.parent / label)


def described_labels(path: Path, labels: Any) -> tuple[dict[int, str], list[str]]:
    """``data.labels`` from MSD's ``labels`` map (``{"0": "background", "1": "liver"}``), and every problem with it."""
    if labels is None:
        return {}, []
    if not isinstance(labels, dict):
        return {}, [f'{path}: \'labels\' must map label values to names, e.g. {{"0": "background", "1": "liver"}}']
    names, problems = {}, []
    for key, name in labels.items():
        if not (isinstance(key, str) and key.isdigit()) or not isinstance(name, str) or not name:
            problems.append(f"{path}: labels entry {key!r}: {name!r} must be a label value and its name")
        elif int(key) > 0:
            names[int(key)] = name
    return names, problems


def listed_test_cases(path: Path, spatial_dims: int) -> list[Record]:
    """The cases of a dataset.json's ``test`` list (paths, or ``{"image"}`` entries), for ``medseg predict``."""
    description = _read(path)
    entries = description.get("test")
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: no 'test' list of images to predict")
    one, records = spatial_dims == 2, []
    for number, entry in enumerate(entries):
        where = f"{path}: test entry {number}"
        image = entry.get("image") if isinstance(entry, dict) else entry
        images = [path.parent / p for p in _images(where, image, one)]
        case_id = images[0].name.split(".")[0] if one else volume_id(images[0])
        records.append({"id": case_id, "image": str(images[0]) if one else [str(p) for p in images]})
    return records


class MsdLayout(Layout):
    name = "msd"
    spatial_dims = (2, 3)
    evidence = "a dataset.json with a training list"

    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        path = folder / settings.dataset_json
        if not path.is_file():
            return False
        try:
            return not claims_nnunet(read_json(path))
        except DataError:
            return True  # unreadable: find() reports it

    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        path = folder / settings.dataset_json
        description = _read(path)
        names, problems = described_labels(path, description.get("labels"))
        records = []
        for number, entry in enumerate(_entries(path, description)):
            try:
                records.append(_record(path, number, entry, settings))
            except DataError as exc:
                problems.append(str(exc))
        if problems and findings is None:
            raise DataError(problems[0])
        for problem in problems:
            findings.append(Finding("error", "", "dataset.json", problem, str(path)))
        resolved = {"data.labels": names} if names else {}
        if settings.spatial_dims == 2 or not records:
            return Cases(records, self.name, path, resolved=resolved)
        first = records[0]
        odd = next((r for r in records if len(r["image"]) != len(first["image"])), None)
        if odd is not None:
            raise DataError(
                f"{path}: case {odd['id']!r} lists {len(odd['image'])} image(s) "
                f"but case {first['id']!r} lists {len(first['image'])}"
            )
        described = description.get("modality")
        channels = len(settings.modalities) or (len(described) if isinstance(described, dict) and described else None)
        return Cases(records, self.name, path, channels, resolved=resolved)

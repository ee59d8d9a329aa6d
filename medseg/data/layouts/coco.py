"""The ``coco`` layout (2D): a COCO instances json (``images``, ``annotations``, ``categories``) in the dataset folder
or its ``annotations/`` folder (several are read together); ``segmentation`` polygons or RLE (compressed string or
uncompressed list counts, column-major) decoded by pycocotools. ``file_name`` is looked up beside the json, then in
``<json folder>/<data.images_dir>``, then in ``<dataset>/<data.images_dir>``. Overlaps: later annotations win."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from medseg.core.errors import DataError
from medseg.data.layouts.annotated import Annotated, Shape, annotated_cases, declared_size, find_image
from medseg.data.layouts.base import Cases, Layout, LayoutSettings
from medseg.data.records import Finding
from medseg.imageio import annotation_shapes as draw


def _coco_files(folder: Path) -> list[tuple[Path, bytes, dict[str, Any]]]:
    """The COCO instance files in ``folder`` and ``folder/annotations``: path, bytes, object."""
    found = []
    for path in [*sorted(folder.glob("*.json")), *sorted((folder / "annotations").glob("*.json"))]:
        try:
            content = path.read_bytes()
            description = json.loads(content.decode("utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(description, dict) and {"images", "annotations", "categories"} <= description.keys():
            found.append((path, content, description))
    return found


def _coco_list(path: Path, description: dict[str, Any], key: str, needs: tuple[str, ...]) -> list[dict[str, Any]]:
    entries = description[key]
    if not isinstance(entries, list):
        raise DataError(f"{path}: '{key}' is a {type(entries).__name__}, not a list")
    for number, entry in enumerate(entries, start=1):
        missing = [k for k in needs if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise DataError(f"{path}: {key} entry {number} has no {', '.join(repr(k) for k in missing)}")
    return entries


class CocoLayout(Layout):
    name = "coco"
    evidence = "a COCO json with images, annotations and categories"
    spatial_dims = (2,)

    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        return folder.is_dir() and bool(_coco_files(folder))

    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        files = _coco_files(folder) if folder.is_dir() else []
        if not files:
            raise DataError(f"{folder}: no COCO json (with images, annotations, categories) found")
        items: list[Annotated] = []
        names: list[str] = []
        for path, content, description in files:
            items += self._items(folder, settings, path, hashlib.sha256(content).hexdigest(), description, names)
        return annotated_cases(self.name, files[0][0] if len(files) == 1 else folder, items, names, settings, findings)

    def _items(
        self, folder: Path, settings: LayoutSettings, path: Path, key: str, description: dict[str, Any], names: list
    ) -> list[Annotated]:
        categories = _coco_list(path, description, "categories", ("id", "name"))
        images = _coco_list(path, description, "images", ("id", "file_name"))
        annotations = _coco_list(path, description, "annotations", ("image_id", "category_id", "segmentation"))
        category_names = {c["id"]: str(c["name"]) for c in categories}
        names.extend(category_names.values())
        places = [path.parent, path.parent / settings.images_dir, folder / settings.images_dir, folder]
        by_id: dict[Any, Annotated] = {}
        for entry in images:
            name = str(entry["file_name"])
            image = find_image(name, places)
            item = Annotated(Path(name).stem, path, key, image, None)
            if image is None:
                looked = ", ".join(str(p) for p in dict.fromkeys(places))
                item.problem = f"{path}: image {name!r} (image id {entry['id']}) not found (looked in {looked})"
            try:
                item.size = declared_size(entry.get("height"), entry.get("width"))
            except draw.ShapeError as exc:
                item.problem = item.problem or f"{path}: image {name!r}: {exc}"
            by_id[entry["id"]] = item
        for number, annotation in enumerate(annotations, start=1):
            where = f"annotation {number} (id {annotation.get('id', '?')})"
            item = by_id.get(annotation["image_id"])
            if item is None:
                raise DataError(f"{path}: {where} is for image id {annotation['image_id']!r}, not in 'images'")
            if annotation["category_id"] not in category_names:
                raise DataError(f"{path}: {where} has category id {annotation['category_id']!r}, not in 'categories'")
            segmentation = annotation["segmentation"]
            item.shapes.append(
                Shape(
                    category_names[annotation["category_id"]],
                    where,
                    lambda size, seg=segmentation: draw.coco_segmentation(seg, size),
                )
            )
        return list(by_id.values())


# --------------------------------------------------------------------------------------------------
# CVAT for images 1.1
# --------------------------------------------------------------------------------------------------

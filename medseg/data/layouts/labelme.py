"""The ``labelme`` layout (2D): one ``<image>.json`` beside each image in the dataset folder, as labelme writes it:
``shapes`` of ``polygon``, ``rectangle``, ``circle`` (centre and a point on the circle), ``line`` / ``linestrip``
(drawn ``line_width`` px wide, 1 by default), ``point`` (a 5 px disc) and ``mask`` (labelme 5.x: a base64 PNG of the
shape's bounding box); the image is ``imagePath`` (relative to the json) or else the embedded ``imageData``.
Overlaps: later shapes in the file win."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from medseg.data.layouts.annotated import Annotated, Drawer, Shape, annotated_cases, declared_size
from medseg.data.layouts.base import Cases, Layout, LayoutSettings
from medseg.data.records import Finding
from medseg.imageio import annotation_shapes as draw
from medseg.imageio.formats import is_image_2d

LABELME_SHAPES = ("polygon", "rectangle", "circle", "line", "linestrip", "point", "mask")


def _read_labelme(path: Path) -> tuple[bytes, dict[str, Any] | None, str | None]:
    """The bytes, the object (None: not a labelme file) and the problem reading it."""
    try:
        content = path.read_bytes()
        description = json.loads(content.decode("utf-8"))
    except (OSError, ValueError) as exc:
        return b"", None, f"{path}: invalid JSON ({exc})"
    if not isinstance(description, dict) or "shapes" not in description:
        return content, None, None
    return content, description, None


def _labelme_shape(number: int, shape: Any, settings: LayoutSettings) -> Shape:
    where = f"shape {number}"
    if not isinstance(shape, dict):
        raise draw.ShapeError(f"{where} is a {type(shape).__name__}, not an object")
    label, kind, points = shape.get("label"), shape.get("shape_type") or "polygon", shape.get("points")
    if not isinstance(label, str) or not label:
        raise draw.ShapeError(f"{where} has no label")
    if kind not in LABELME_SHAPES:
        raise draw.ShapeError(f"{where} ({label!r}): unknown shape type {kind!r} (known: {', '.join(LABELME_SHAPES)})")
    if kind == "mask":
        data = shape.get("mask")
        if not isinstance(data, str):
            raise draw.ShapeError(f"{where} ({label!r}): mask shape without its base64 'mask'")
        return Shape(label, where, lambda size: draw.labelme_mask(data, points, size))
    drawers: dict[str, Drawer] = {
        "polygon": lambda size: draw.polygon(points, size),
        "rectangle": lambda size: draw.rectangle(points, size),
        "circle": lambda size: draw.circle(points, size),
        "line": lambda size: draw.line(points, size, settings.line_width),
        "linestrip": lambda size: draw.line(points, size, settings.line_width),
        "point": lambda size: draw.point(points, size, draw.POINT_RADIUS),
    }
    return Shape(label, where, drawers[kind])


class LabelmeLayout(Layout):
    name = "labelme"
    evidence = "labelme json files beside their images"
    spatial_dims = (2,)

    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        if not folder.is_dir():
            return False
        stems = {p.stem for p in folder.iterdir() if is_image_2d(p)}
        for path in sorted(folder.glob("*.json")):
            _, description, _ = _read_labelme(path)
            if description is not None and (path.stem in stems or description.get("imageData")):
                return True
        return False

    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        items: list[Annotated] = []
        names: list[str] = []
        claimed: set[Path] = set()
        for path in sorted(folder.glob("*.json")):
            content, description, problem = _read_labelme(path)
            key = hashlib.sha256(content).hexdigest()
            if problem is not None:
                items.append(Annotated(path.stem, path, key, None, None, problem=problem))
                continue
            if description is None:
                continue
            items.append(self._item(path, key, description, settings, names, claimed))
        images = sorted(p for p in folder.iterdir() if is_image_2d(p) and p.is_file())
        unlabelled = [p for p in images if p.resolve() not in claimed]
        return annotated_cases(self.name, folder, items, names, settings, findings, unlabelled)

    def _item(
        self,
        path: Path,
        key: str,
        description: dict[str, Any],
        settings: LayoutSettings,
        names: list[str],
        claimed: set[Path],
    ) -> Annotated:
        item = Annotated(path.stem, path, key, None, None)
        image_path, data = description.get("imagePath"), description.get("imageData")
        if isinstance(image_path, str) and image_path and (path.parent / image_path).is_file():
            item.image = path.parent / image_path
            claimed.add(item.image.resolve())
        elif isinstance(data, str) and data:
            item.embedded = data
        else:
            missing = f"image {image_path!r} not found beside it" if image_path else "no imagePath and no imageData"
            item.problem = f"{path}: {missing}"
            return item
        shapes = description.get("shapes")
        try:
            item.size = declared_size(description.get("imageHeight"), description.get("imageWidth"))
            if not isinstance(shapes, list):
                raise draw.ShapeError(f"'shapes' is a {type(shapes).__name__}, not a list")
            item.shapes = [_labelme_shape(n, s, settings) for n, s in enumerate(shapes, start=1)]
        except draw.ShapeError as exc:
            item.problem = f"{path}: {exc}"
            return item
        names.extend(s.label for s in item.shapes)
        return item


# --------------------------------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------------------------------

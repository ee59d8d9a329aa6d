"""What the annotation-file layouts share (:mod:`.labelme`, :mod:`.coco`, :mod:`.cvat`): annotated images'
shapes drawn at the image's size into PNG label maps (:mod:`medseg.imageio.annotation_shapes` draws each shape),
which become the records' ``label``.

Label values: a shape's label name becomes the value ``data.labels`` gives that name (``{1: lesion, 2: nevus}``);
without ``data.labels`` the names get 1, 2, 3... in order of first appearance (labelme: the json files in name
order, shape by shape; COCO: the ``categories`` lists, so category ids with gaps still give 1, 2, 3...; CVAT: the
labels in ``<meta>``, then the shapes). With one name the label maps are binary (0 and 1).

Cache: the label maps (and labelme's embedded images) are written once, atomically, under
``<data.cache_dir>/annotations/<key>/``, ``key`` the SHA-256 of the annotation file's bytes and of what drawing it
depends on (the label values, line width, point size), and re-used while the key matches.

An image without any annotation is unlabelled: it is left out of the records (a warning when the search collects
findings). Bad input stops the search with one line naming the file (or, when findings are collected, an error for
the case): too few points, a shape entirely outside its image, an image file that is not there, an unknown shape
type, a label name ``data.labels`` does not name; invalid JSON or XML always stops it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.core.errors import DataError
from medseg.data.layouts.base import Cases, LayoutSettings
from medseg.data.records import Finding, Record
from medseg.imageio import annotation_shapes as draw

DRAWING_VERSION = 1
CACHE_FOLDER = "annotations"


#: draws a shape on an image of (height, width): a boolean mask of that size
Drawer = Callable[[tuple[int, int]], np.ndarray]


@dataclass(frozen=True)
class Shape:
    """One annotated shape: its label name, where it stands in its file (for messages), how it is drawn."""

    label: str
    where: str
    drawer: Drawer


@dataclass
class Annotated:
    """One annotated image as its file describes it: the case, the annotation file, what the cache key is made of,
    the image (None: labelme's ``embedded`` image data), its size where the file gives it, its shapes, and the
    problem that stops it (a file-level error)."""

    case: str
    source: Path
    key: str
    image: Path | None
    size: tuple[int, int] | None
    shapes: list[Shape] = field(default_factory=list)
    problem: str | None = None
    embedded: str | None = None


class Problems:
    """Where a search's problems go: with ``findings``, one finding each; without, the first error stops the search
    (and warnings are dropped)."""

    def __init__(self, findings: list[Finding] | None) -> None:
        self.findings, self.errors = findings, []

    def error(self, case: str, check: str, message: str, file: Path | str) -> None:
        if self.findings is None:
            raise DataError(message)
        self.errors.append(message)
        self.findings.append(Finding("error", case, check, message, str(file)))

    def warning(self, case: str, check: str, message: str, file: Path | str) -> None:
        if self.findings is not None:
            self.findings.append(Finding("warning", case, check, message, str(file)))


def label_values(settings: LayoutSettings, names: Iterable[str]) -> dict[str, int]:
    if settings.labels is not None:
        return dict(settings.labels)
    order = list(dict.fromkeys(names))
    return {name: value for value, name in enumerate(order, start=1)}


def cache_key(content: bytes, values: dict[str, int], settings: LayoutSettings) -> str:
    digest = hashlib.sha256(content)
    drawing = {"v": DRAWING_VERSION, "values": values, "line": settings.line_width, "point": draw.POINT_RADIUS}
    digest.update(json.dumps(drawing, sort_keys=True).encode())
    return digest.hexdigest()


def _image_size(path: Path) -> tuple[int, int]:
    from medseg.imageio.images import open_image

    width, height = open_image(path, "image").size
    return height, width


def _records(
    items: list[Annotated],
    values: dict[str, int],
    settings: LayoutSettings,
    problems: Problems,
    unlabelled: list[Path],
) -> list[Record]:
    """Each annotated image's label map (drawn, or found in the cache) and its record; the problems reported."""
    from medseg.imageio.images import save_png

    records: list[Record] = []
    for image in unlabelled:
        problems.warning(image.stem, "unlabelled", f"{image}: no annotation for this image (left out)", image)
    for item in items:
        if item.problem is not None:
            problems.error(item.case, "annotation", item.problem, item.source)
            continue
        if not item.shapes:
            where = item.image or item.source
            problems.warning(item.case, "unlabelled", f"{item.source}: no annotation for {where} (left out)", where)
            continue
        unknown = next((s for s in item.shapes if s.label not in values), None)
        if unknown is not None:
            message = (
                f"{item.source}: {unknown.where}: label {unknown.label!r} is not in data.labels "
                f"(known: {', '.join(values)})"
            )
            problems.error(item.case, "unknown label", message, item.source)
            continue
        folder = settings.cache_dir / CACHE_FOLDER / cache_key(item.key.encode(), values, settings)
        label_path = folder / f"{item.case}.png"
        image = item.image
        if image is None:  # labelme's embedded image, written once beside the label maps
            image = folder / "images" / f"{item.case}.png"
            if not image.is_file():
                try:
                    save_png(draw.decode_png_b64(item.embedded or "", "imageData"), image)
                except (draw.ShapeError, TypeError, ValueError) as exc:
                    problems.error(item.case, "annotation", f"{item.source}: {exc}", item.source)
                    continue
        if not label_path.is_file():
            try:
                size = item.size or _image_size(image)
                label = _paint(item.shapes, values, size)
            except draw.ShapeError as exc:
                problems.error(item.case, "annotation", f"{item.source}: {exc}", item.source)
                continue
            except DataError as exc:
                problems.error(item.case, "unreadable", str(exc), image)
                continue
            save_png(label, label_path)
        records.append({"id": item.case, "image": str(image), "label": str(label_path)})
    return records


def _paint(shapes: list[Shape], values: dict[str, int], size: tuple[int, int]) -> np.ndarray:
    dtype = np.uint8 if max(values.values(), default=1) <= 255 else np.uint16
    label = np.zeros(size, dtype=dtype)
    for shape in shapes:
        try:
            mask = shape.drawer(size)
        except draw.ShapeError as exc:
            raise draw.ShapeError(f"{shape.where} ({shape.label!r}): {exc}") from None
        label[mask] = values[shape.label]
    return label


def annotated_cases(
    layout: str,
    source: Path,
    items: list[Annotated],
    names: list[str],
    settings: LayoutSettings,
    findings: list[Finding] | None,
    unlabelled: list[Path] | None = None,
) -> Cases:
    problems = Problems(findings)
    values = label_values(settings, names)
    records = _records(items, values, settings, problems, unlabelled or [])
    if not records and not problems.errors:
        raise DataError(f"{source}: no annotated images found ({layout} layout)")
    named = {value: name for name, value in values.items() if value > 0}  # the label names become data.labels
    return Cases(records, layout, source, resolved={"data.labels": named} if named else {})


def find_image(name: str, places: list[Path]) -> Path | None:
    return next((p / name for p in places if (p / name).is_file()), None)


def as_number(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise draw.ShapeError(f"{what} must be a number, got {value!r}") from None
    if not np.isfinite(number):
        raise draw.ShapeError(f"{what} must be a finite number, got {value!r}")
    return number


def declared_size(height: Any, width: Any) -> tuple[int, int] | None:
    if height is None or width is None:
        return None
    if not all(isinstance(v, (int, float, str)) for v in (height, width)):
        raise draw.ShapeError(f"image size must be numbers, got {width!r}x{height!r}")
    h, w = int(as_number(height, "height")), int(as_number(width, "width"))
    if h <= 0 or w <= 0:
        raise draw.ShapeError(f"image size {w}x{h} is not positive")
    return h, w


# --------------------------------------------------------------------------------------------------
# labelme
# --------------------------------------------------------------------------------------------------

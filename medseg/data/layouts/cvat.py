"""The ``cvat`` layout (2D): CVAT for images 1.1 ``annotations.xml``: ``<image name width height>`` holding ``<polygon
points>``, ``<box xtl ytl xbr ybr>``, ``<ellipse cx cy rx ry>``, ``<mask rle left top width height>`` (CVAT's row-
major RLE, starting with background), ``<polyline>`` and ``<points>``; images beside the xml, then in
``data.images_dir``. Overlaps: higher ``z_order`` wins, then later in the file."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from medseg.core.errors import DataError
from medseg.data.layouts.annotated import (
    Annotated,
    Drawer,
    Shape,
    annotated_cases,
    as_number,
    declared_size,
    find_image,
)
from medseg.data.layouts.base import Cases, Layout, LayoutSettings
from medseg.data.records import Finding
from medseg.imageio import annotation_shapes as draw

CVAT_FILE = "annotations.xml"
CVAT_SHAPES = ("polygon", "box", "ellipse", "mask", "polyline", "points")
CVAT_IGNORED = ("tag",)  # image-level tags, not shapes


def _pairs(text: str | None) -> list[list[float]]:
    if not text:
        raise draw.ShapeError("no points")
    try:
        return [[float(v) for v in pair.split(",")] for pair in text.strip().split(";") if pair]
    except ValueError:
        raise draw.ShapeError(f"points must be 'x,y;x,y;...', got {text[:40]!r}") from None


def _cvat_shape(element: ET.Element, number: int, settings: LayoutSettings) -> Shape:
    kind, a = element.tag, element.attrib
    where = f"<{kind}> {number}"
    label = a.get("label", "")
    if kind not in CVAT_SHAPES:
        raise draw.ShapeError(f"{where} ({label!r}): unknown shape type {kind!r} (known: {', '.join(CVAT_SHAPES)})")
    if not label:
        raise draw.ShapeError(f"{where} has no label")
    if as_number(a.get("rotation", 0), "rotation") % 360:
        raise draw.ShapeError(f"{where} ({label!r}): rotated {kind}es are not supported")

    def num(name: str) -> float:
        return as_number(a.get(name), f"{where} {name}")

    drawer: Drawer
    if kind == "polygon":
        points = _pairs(a.get("points"))
        drawer = lambda size: draw.polygon(points, size)  # noqa: E731
    elif kind == "polyline":
        points = _pairs(a.get("points"))
        drawer = lambda size: draw.line(points, size, settings.line_width)  # noqa: E731
    elif kind == "points":
        points = _pairs(a.get("points"))
        drawer = lambda size: np.logical_or.reduce(  # noqa: E731
            [draw.point([p], size, draw.POINT_RADIUS) for p in points]
        )
    elif kind == "box":
        corners = [[num("xtl"), num("ytl")], [num("xbr"), num("ybr")]]
        drawer = lambda size: draw.rectangle(corners, size)  # noqa: E731
    elif kind == "ellipse":
        cx, cy, rx, ry = num("cx"), num("cy"), num("rx"), num("ry")
        drawer = lambda size: draw.ellipse(cx, cy, rx, ry, size)  # noqa: E731
    else:
        rle, box = a.get("rle", ""), [int(num(n)) for n in ("left", "top", "width", "height")]
        drawer = lambda size: draw.cvat_rle(rle, *box, size)  # noqa: E731
    return Shape(label, where, drawer)


class CvatLayout(Layout):
    name = "cvat"
    evidence = "annotations.xml (CVAT for images 1.1)"
    spatial_dims = (2,)

    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        path = folder / CVAT_FILE
        if not path.is_file():
            return False
        try:
            for _, element in ET.iterparse(path, events=("start",)):
                return element.tag == "annotations"
        except (ET.ParseError, OSError):
            return False
        return False

    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        path = folder / CVAT_FILE
        try:
            content = path.read_bytes()
            root = ET.fromstring(content)
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
        except ET.ParseError as exc:
            raise DataError(f"{path}: invalid XML ({exc})") from None
        if root.tag != "annotations":
            raise DataError(f"{path}: expected an <annotations> root (CVAT for images 1.1), got <{root.tag}>")
        key = hashlib.sha256(content).hexdigest()
        meta = root.find("meta")
        names = [] if meta is None else [t for t in (e.findtext("name") for e in meta.iter("label")) if t]
        places = [folder, folder / settings.images_dir]
        items = []
        for element in root.iter("image"):
            name = element.get("name", "")
            image = find_image(name, places) if name else None
            item = Annotated(Path(name).stem, path, key, image, None)
            items.append(item)
            if image is None:
                looked = ", ".join(str(p) for p in places)
                number = element.get("id", "?")
                item.problem = f"{path}: image {name!r} (image id {number}) not found (looked in {looked})"
                continue
            try:
                item.size = declared_size(element.get("height"), element.get("width"))
                shapes = [
                    (int(as_number(e.get("z_order", 0), "z_order")), n, _cvat_shape(e, n, settings))
                    for n, e in enumerate((e for e in element if e.tag not in CVAT_IGNORED), start=1)
                ]
            except draw.ShapeError as exc:
                item.problem = f"{path}: image {name!r}: {exc}"
                continue
            item.shapes = [shape for _, _, shape in sorted(shapes, key=lambda s: (s[0], s[1]))]
            names.extend(s.label for s in item.shapes)
        return annotated_cases(self.name, path, items, names, settings, findings)

"""Shapes drawn in 2D annotation tools (labelme, COCO, CVAT) as boolean masks at an image's size.

Coordinates are pixels, ``x`` to the right and ``y`` down, with a pixel's centre at integer coordinates (the
convention of all three tools). Each function returns a ``(height, width)`` boolean mask clipped to the image; a
shape that cannot be drawn raises :class:`ShapeError` with what is wrong (the caller names the file and the shape).

- polygon: the pixels whose centres lie inside (:func:`skimage.draw.polygon`); at least 3 points.
- rectangle / box: every pixel from the rounded top-left corner to the rounded bottom-right corner, both included.
- circle: centre and a point on the circle; the pixels closer to the centre than the radius.
- ellipse: centre and radii (:func:`skimage.draw.ellipse`).
- line / linestrip: 1 px wide: :func:`skimage.draw.line` per segment; wider: the pixels within half the width of a
  segment (so with round ends).
- point: a disc of ``point_radius`` (2.5 px: 5 px across, as labelme draws points).
- bitmap: a boolean array placed with its top-left pixel at ``(left, top)`` (labelme's ``mask``, CVAT's ``mask``).
- COCO segmentations (polygons, RLE with compressed or uncompressed counts) through pycocotools.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

#: labelme draws a point as a 5 px disc
POINT_RADIUS = 2.5

Points = Sequence[Sequence[float]]


class ShapeError(ValueError):
    """A shape that cannot be drawn: too few points, outside the image, a malformed value."""


def _points(points: Any, least: int, kind: str) -> np.ndarray:
    try:
        array = np.asarray(points, dtype=float)
    except (TypeError, ValueError):
        raise ShapeError(f"{kind} points must be [x, y] pairs of numbers") from None
    if array.ndim != 2 or (array.size and array.shape[1] != 2) or not np.all(np.isfinite(array)):
        raise ShapeError(f"{kind} points must be [x, y] pairs of numbers")
    if len(array) < least:
        raise ShapeError(f"{kind} has {len(array)} point(s); needs at least {least}")
    return array.reshape(-1, 2)


def check_inside(xmin: float, ymin: float, xmax: float, ymax: float, shape: tuple[int, int], kind: str) -> None:
    """ShapeError when the box ``[xmin, xmax] x [ymin, ymax]`` lies entirely outside a ``(height, width)`` image."""
    height, width = shape
    if xmax < -0.5 or ymax < -0.5 or xmin > width - 0.5 or ymin > height - 0.5:
        raise ShapeError(
            f"{kind} at x {xmin:g}..{xmax:g}, y {ymin:g}..{ymax:g} lies entirely outside the {width}x{height} image"
        )


def _inside(points: np.ndarray, shape: tuple[int, int], kind: str) -> None:
    check_inside(*points.min(axis=0), *points.max(axis=0), shape, kind)


def polygon(points: Points, shape: tuple[int, int]) -> np.ndarray:
    """The pixels inside a polygon of ``[x, y]`` points."""
    from skimage.draw import polygon as draw_polygon

    array = _points(points, 3, "polygon")
    _inside(array, shape, "polygon")
    mask = np.zeros(shape, dtype=bool)
    rows, cols = draw_polygon(array[:, 1], array[:, 0], shape=shape)
    mask[rows, cols] = True
    return mask


def rectangle(points: Points, shape: tuple[int, int]) -> np.ndarray:
    """The pixels of the box between two opposite corners, both corners' pixels included."""
    array = _points(points, 2, "rectangle")[:2]
    _inside(array, shape, "rectangle")
    (x0, y0), (x1, y1) = np.rint(array.min(axis=0)).astype(int), np.rint(array.max(axis=0)).astype(int)
    mask = np.zeros(shape, dtype=bool)
    mask[max(y0, 0) : max(y1 + 1, 0), max(x0, 0) : max(x1 + 1, 0)] = True
    return mask


def _disc(cx: float, cy: float, radius: float, shape: tuple[int, int]) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (cols - cx) ** 2 + (rows - cy) ** 2 < radius**2


def circle(points: Points, shape: tuple[int, int]) -> np.ndarray:
    """The pixels closer to the centre (first point) than the second point is."""
    array = _points(points, 2, "circle")
    (cx, cy), (px, py) = array[0], array[1]
    radius = float(np.hypot(px - cx, py - cy))
    check_inside(cx - radius, cy - radius, cx + radius, cy + radius, shape, "circle")
    return _disc(cx, cy, radius, shape)


def point(points: Points, shape: tuple[int, int], radius: float = POINT_RADIUS) -> np.ndarray:
    """A small disc around a point."""
    (cx, cy) = _points(points, 1, "point")[0]
    check_inside(cx, cy, cx, cy, shape, "point")
    return _disc(cx, cy, radius, shape)


def ellipse(cx: float, cy: float, rx: float, ry: float, shape: tuple[int, int]) -> np.ndarray:
    """The pixels inside an axis-aligned ellipse."""
    from skimage.draw import ellipse as draw_ellipse

    if not (rx > 0 and ry > 0):
        raise ShapeError(f"ellipse radii must be positive (rx {rx:g}, ry {ry:g})")
    check_inside(cx - rx, cy - ry, cx + rx, cy + ry, shape, "ellipse")
    mask = np.zeros(shape, dtype=bool)
    rows, cols = draw_ellipse(cy, cx, ry, rx, shape=shape)
    mask[rows, cols] = True
    return mask


def line(points: Points, shape: tuple[int, int], width: float = 1.0) -> np.ndarray:
    """A line through the points (2 for a line, more for a line strip), ``width`` pixels wide."""
    from skimage.draw import line as draw_line

    array = _points(points, 2, "line")
    _inside(array, shape, "line")
    mask = np.zeros(shape, dtype=bool)
    if width <= 1:
        ends = np.rint(array).astype(int)
        for (x0, y0), (x1, y1) in zip(ends[:-1], ends[1:], strict=True):
            rows, cols = draw_line(y0, x0, y1, x1)
            keep = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
            mask[rows[keep], cols[keep]] = True
        return mask
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    for (x0, y0), (x1, y1) in zip(array[:-1], array[1:], strict=True):
        dx, dy = x1 - x0, y1 - y0
        length = dx * dx + dy * dy
        t = np.clip(((cols - x0) * dx + (rows - y0) * dy) / length, 0, 1) if length else np.zeros(shape)
        mask |= (cols - (x0 + t * dx)) ** 2 + (rows - (y0 + t * dy)) ** 2 <= (width / 2) ** 2
    return mask


def bitmap(array: np.ndarray, left: int, top: int, shape: tuple[int, int]) -> np.ndarray:
    """A boolean bitmap placed with its top-left pixel at ``(left, top)``, clipped to the image."""
    height, width = array.shape
    check_inside(left, top, left + width - 1, top + height - 1, shape, "mask")
    mask = np.zeros(shape, dtype=bool)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, shape[0]), min(left + width, shape[1])
    mask[y0:y1, x0:x1] = array[y0 - top : y1 - top, x0 - left : x1 - left]
    return mask


def decode_png_b64(data: str, what: str) -> np.ndarray:
    """A base64 PNG (labelme's ``mask`` and ``imageData``) as an array; ShapeError if it is not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(base64.b64decode(data, validate=False))) as image:
            image.load()
            return np.asarray(image)
    except (binascii.Error, ValueError, OSError, UnidentifiedImageError, TypeError):
        raise ShapeError(f"{what} is not a base64-encoded image") from None


def labelme_mask(data: str, points: Points, shape: tuple[int, int]) -> np.ndarray:
    """labelme 5.x's ``mask`` shape: a base64 PNG of the shape's bounding box, whose top-left is ``points[0]``."""
    array = decode_png_b64(data, "mask")
    if array.ndim == 3:  # a colour or grey+alpha PNG: any non-zero colour channel is foreground
        array = array[..., : 3 if array.shape[2] >= 3 else 1].max(axis=2)
    corners = _points(points, 1, "mask")
    left, top = np.floor(corners.min(axis=0)).astype(int)
    return bitmap(array > 0, int(left), int(top), shape)


def cvat_rle(rle: str, left: int, top: int, width: int, height: int, shape: tuple[int, int]) -> np.ndarray:
    """CVAT's ``<mask rle>``: run lengths over the ``width x height`` box, row by row, starting with background."""
    try:
        counts = [int(c) for c in rle.replace(" ", "").split(",") if c != ""]
    except ValueError:
        raise ShapeError(f"mask rle must be comma-separated counts, got {rle[:40]!r}") from None
    if width <= 0 or height <= 0 or any(c < 0 for c in counts) or sum(counts) != width * height:
        raise ShapeError(f"mask rle covers {sum(counts)} pixel(s) but its box is {width}x{height}")
    values = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    return bitmap(values.reshape(height, width), left, top, shape)


def coco_segmentation(segmentation: Any, shape: tuple[int, int]) -> np.ndarray:
    """A COCO ``segmentation``: a list of polygons ``[x, y, x, y, ...]``, or RLE ``{"size": [h, w], "counts"}``
    with compressed (string) or uncompressed (list, column-major) counts; decoded by pycocotools."""
    from pycocotools import mask as coco_mask

    height, width = shape
    if isinstance(segmentation, list):
        polygons = []
        for poly in segmentation:
            if not isinstance(poly, list) or not all(isinstance(v, (int, float)) for v in poly) or len(poly) % 2:
                raise ShapeError("polygon must be a flat list [x, y, x, y, ...]")
            _inside(_points(np.reshape(poly, (-1, 2)), 3, "polygon"), shape, "polygon")
            polygons.append([float(v) for v in poly])
        if not polygons:
            raise ShapeError("segmentation holds no polygon")
        rles = coco_mask.frPyObjects(polygons, height, width)
        return coco_mask.decode(coco_mask.merge(rles)).astype(bool)
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = segmentation["size"]
        if list(size) != [height, width]:
            raise ShapeError(f"RLE size {size} differs from the image's [height, width] [{height}, {width}]")
        counts = segmentation["counts"]
        try:
            if isinstance(counts, list):
                if sum(counts) != height * width:
                    raise ShapeError(f"RLE counts cover {sum(counts)} pixel(s), the image {height * width}")
                rle = coco_mask.frPyObjects(segmentation, height, width)
            elif isinstance(counts, (str, bytes)):
                rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
            else:
                raise ShapeError("RLE counts must be a string or a list of integers")
            mask = coco_mask.decode(rle).astype(bool)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ShapeError):
                raise
            raise ShapeError(f"cannot decode RLE ({exc})") from None
        return mask
    raise ShapeError("segmentation must be a list of polygons or an RLE {size, counts}")

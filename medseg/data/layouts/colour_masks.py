"""Colour-coded 2D masks (one colour per label, as annotation tools export them) turned into index masks: the colour
table, and the conversion, done once per mask and cached, so the records' ``label`` is an ordinary index mask.

The table: ``data.label_colors`` (name -> [r, g, b], in the pipeline), else CVAT's ``labelmap.txt``
(``# label:color_rgb:parts:actions``, then ``name:r,g,b::`` per line) found beside the masks. Values: ``background``
(or, where no entry has that name, black) is 0; the others take the value ``data.labels`` gives their name, else
1, 2, 3... in table order. Their names become ``data.labels`` where the pipeline has none (``Cases.resolved``).

Only RGB(A) and palette masks go through the table; single-channel masks are index masks already and are kept.

Cache: ``<data.cache_dir>/masks/<key>/<case>.png``, ``key`` the SHA-256 of the mask file's bytes and of the table
(colours and values), written once, atomically, and re-used while the key matches. A pixel whose colour the table
does not list is one error for the mask (its file, the colour, how many pixels); the case is left out.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medseg.core.errors import DataError
from medseg.data.layouts.annotated import Problems
from medseg.data.layouts.base import Cases, LayoutSettings
from medseg.data.records import Finding, Record

log = logging.getLogger(__name__)

LABELMAP_FILE = "labelmap.txt"  # CVAT's (Datumaro's) colour table
CACHE_FOLDER = "masks"
CONVERSION_VERSION = 1
BACKGROUND = "background"
COLOUR_MODES = ("RGB", "RGBA", "P", "PA")  # masks whose pixels are colours

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class ColourTable:
    """Colour -> label value, value -> name (background left out), and where the table comes from (for messages)."""

    source: str
    values: dict[Colour, int]
    names: dict[int, str]

    def fingerprint(self) -> bytes:
        """What a cached index mask depends on besides the mask's bytes."""
        entries = sorted([*colour, value] for colour, value in self.values.items())
        return json.dumps({"v": CONVERSION_VERSION, "colours": entries}).encode()


def _colour(channels: tuple[int, ...] | str, where: str) -> Colour:
    """An (r, g, b) colour from numbers or ``"r,g,b"`` text; DataError naming ``where`` otherwise."""
    if isinstance(channels, str):
        try:
            channels = tuple(int(v) for v in channels.split(","))
        except ValueError:
            raise DataError(f"{where}: colour must be r,g,b with values 0-255, got {channels!r}") from None
    if len(channels) != 3 or not all(0 <= v <= 255 for v in channels):
        raise DataError(f"{where}: colour must be r,g,b with values 0-255, got {','.join(map(str, channels))}")
    return channels[0], channels[1], channels[2]


def read_labelmap(path: Path) -> dict[str, Colour]:
    """name -> colour from a CVAT / Datumaro ``labelmap.txt`` (``name:r,g,b:parts:actions`` lines, ``#`` comments)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    table: dict[str, Colour] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, rest = line.partition(":")
        if not name.strip() or not rest:
            raise DataError(f"{path}: line {number}: expected name:r,g,b::, got {line.strip()!r}")
        table[name.strip()] = _colour(rest.split(":")[0].strip(), f"{path}: line {number}")
    if not table:
        raise DataError(f"{path}: no labels listed")
    return table


def make_table(colours: dict[str, Colour], settings: LayoutSettings, source: str) -> ColourTable:
    """The values of a name -> colour table (see the module's docstring); DataError naming ``source`` for two names
    with one colour or a name ``data.labels`` does not give."""
    values: dict[Colour, int] = {}
    names: dict[int, str] = {}
    has_background = any(name.lower() == BACKGROUND for name in colours)
    foreground = [name for name in colours if name.lower() != BACKGROUND]
    for name, colour in colours.items():
        if colour in values:
            other = next(n for n, c in colours.items() if c == colour)
            raise DataError(f"{source}: colour {','.join(map(str, colour))} is given to both {other!r} and {name!r}")
        if name.lower() == BACKGROUND:
            values[colour] = 0
            continue
        if settings.labels is None:
            value = foreground.index(name) + 1
        elif name in settings.labels:
            value = settings.labels[name]
        else:
            raise DataError(f"{source}: label {name!r} is not in data.labels (known: {', '.join(settings.labels)})")
        values[colour], names[value] = value, name
    if not has_background:
        values.setdefault((0, 0, 0), 0)
    return ColourTable(source, values, names)


def colour_table(settings: LayoutSettings, places: list[Path]) -> ColourTable | None:
    """The colour table: ``data.label_colors``, else the first ``labelmap.txt`` in ``places``; None without one."""
    if settings.label_colors:
        colours = {name: _colour(tuple(c), f"data.label_colors.{name}") for name, c in settings.label_colors.items()}
        return make_table(colours, settings, "data.label_colors")
    path = next((p / LABELMAP_FILE for p in dict.fromkeys(places) if (p / LABELMAP_FILE).is_file()), None)
    if path is None:
        return None
    log.info("Colour masks: the colour table is %s", path)
    return make_table(read_labelmap(path), settings, str(path))


def index_mask(rgb: np.ndarray, table: ColourTable) -> tuple[np.ndarray, list[tuple[Colour, int]]]:
    """(H, W, 3) colours -> (H, W) label values, and the colours the table does not list with their pixel counts
    (most pixels first; those pixels are 0)."""
    codes = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    found, inverse, counts = np.unique(codes.ravel(), return_inverse=True, return_counts=True)
    colours = [(int(c >> 16), int(c >> 8 & 255), int(c & 255)) for c in found]
    lookup = np.array([table.values.get(c, -1) for c in colours], dtype=np.int64)
    unknown = sorted(
        ((c, int(n)) for c, n, v in zip(colours, counts, lookup, strict=True) if v < 0), key=lambda u: -u[1]
    )
    dtype = np.uint8 if max(table.values.values(), default=0) <= 255 else np.uint16
    return np.maximum(lookup, 0)[inverse].reshape(codes.shape).astype(dtype), unknown


def _colour_mode(path: Path) -> bool:
    """Whether the mask's pixels are colours (read from its header; an unreadable mask is left to the data check)."""
    try:
        with Image.open(path) as image:
            return image.mode in COLOUR_MODES
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def _indexed(record: Record, table: ColourTable, settings: LayoutSettings, problems: Problems) -> Record | None:
    """The record with its colour mask's index mask (converted now, or found in the cache); None when it has
    colours the table does not list."""
    from medseg.imageio.images import open_image, save_png

    mask = Path(record["label"])
    if not _colour_mode(mask):
        return record
    digest = hashlib.sha256(mask.read_bytes())
    digest.update(table.fingerprint())
    cached = settings.cache_dir / CACHE_FOLDER / digest.hexdigest() / f"{record['id']}.png"
    if not cached.is_file():
        try:
            rgb = np.asarray(open_image(mask, "mask").convert("RGB"))
        except DataError as exc:
            problems.error(record["id"], "unreadable", str(exc), mask)
            return None
        values, unknown = index_mask(rgb, table)
        if unknown:
            (colour, count), more = unknown[0], len(unknown) - 1
            also = f" (and {more} more unlisted colour(s))" if more else ""
            message = (
                f"{mask}: {count} pixel(s) of colour {','.join(map(str, colour))} that {table.source} does not "
                f"list{also}"
            )
            problems.error(record["id"], "unknown colour", message, mask)
            return None
        save_png(values, cached)
    return {**record, "label": str(cached)}


def indexed_cases(cases: Cases, settings: LayoutSettings, places: list[Path], findings: list[Finding] | None) -> Cases:
    """``cases`` with colour masks as cached index masks and the table's names as ``data.labels``; unchanged where
    there is no colour table (``data.label_colors``, or ``labelmap.txt`` in ``places``)."""
    table = colour_table(settings, places)
    if table is None:
        return cases
    problems = Problems(findings)
    records = [r for r in (_indexed(record, table, settings, problems) for record in cases.records) if r is not None]
    resolved = {**cases.resolved, "data.labels": dict(sorted(table.names.items()))} if table.names else cases.resolved
    return replace(cases, records=records, resolved=resolved)

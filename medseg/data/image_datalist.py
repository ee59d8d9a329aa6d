"""2D datalists: ``{"id", "image", "label"}`` records from a dataset folder, each pair checked.

Supported layouts for 2D images:
- ``folder``: ``images/<id>.<ext>`` and ``masks/<id><suffix>.<ext>`` (PH2: suffix "", ISIC: "_segmentation");
- ``csv``: a CSV with ``image`` and ``mask`` (or ``label``) columns, paths relative to the CSV;
- ``msd``: a Decathlon-style ``dataset.json`` with a ``training`` list of ``{"image", "label"}``.
``auto`` picks ``msd`` if dataset.json exists, else ``csv`` if the CSV exists, else ``folder``
(:func:`medseg.data.records.detect_layout`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from medseg.config.schema import DataConfig
from medseg.core.errors import DataError
from medseg.data.records import Finding, Record, check_case_ids, detect_layout, first_error
from medseg.imageio.formats import IMAGE_2D_SUFFIXES, is_image_2d
from medseg.imageio.images import open_image

log = logging.getLogger(__name__)


@dataclass
class DatalistReport:
    """What the data check found: counts that are worth logging."""

    cases: int = 0
    masks_with_non_binary_pixels: int = 0
    non_binary_pixels: int = 0
    empty_masks: list[str] = field(default_factory=list)
    non_binary_example: str = ""  # the first mask with non-binary pixels, for the warning
    unmatched_masks: list[str] = field(default_factory=list)


def _images_in(folder: Path, findings: list[Finding] | None = None) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    images = sorted(p for p in folder.iterdir() if is_image_2d(p) and not p.is_dir())
    for broken in [p for p in images if not p.is_file()]:  # a dangling or looping symbolic link
        message = f"{broken}: broken symbolic link (its target is missing or it links to itself)"
        if findings is None:
            raise DataError(message)
        findings.append(Finding("error", broken.stem, "unreadable", message, str(broken)))
    return [p for p in images if p.is_file()]


def _folder_datalist(
    root: Path, cfg: DataConfig, report: DatalistReport, findings: list[Finding] | None = None
) -> list[Record]:
    """``images/`` and ``masks/`` matched by name; with ``findings``, a case without its mask is recorded there and
    left out instead of stopping the search."""
    recorded = len(findings) if findings is not None else 0
    images = _images_in(root / cfg.images_dir, findings)
    if not images and (findings is None or len(findings) == recorded):  # not even a broken link to report
        raise DataError(f"{root / cfg.images_dir}: no images found (looked for {', '.join(IMAGE_2D_SUFFIXES)})")
    mask_dir = root / cfg.masks_dir
    if not mask_dir.is_dir():
        raise DataError(f"{mask_dir}: mask folder not found")
    masks: dict[str, Path] = {}
    for mask in _images_in(mask_dir, findings):
        if mask.stem in masks:
            message = f"{mask}: ambiguous mask, {masks[mask.stem].name} has the same name"
            if findings is None:
                raise DataError(message)
            findings.append(Finding("error", mask.stem, "ambiguous mask", message, str(mask)))
            continue
        masks[mask.stem] = mask
    records, used = [], set()
    for image in images:
        match = next((masks[image.stem + s] for s in cfg.mask_suffixes if image.stem + s in masks), None)
        if match is None:
            tried = ", ".join(f"{image.stem}{s}.*" for s in cfg.mask_suffixes)
            message = f"{image}: no mask found in {mask_dir} (tried {tried})"
            if findings is None:
                raise DataError(message)
            findings.append(Finding("error", image.stem, "missing mask", message, str(image)))
            continue
        used.add(match.stem)
        records.append({"id": image.stem, "image": str(image), "label": str(match)})
    report.unmatched_masks = sorted(set(masks) - used)
    return records


def _csv_datalist(csv_path: Path) -> list[Record]:
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's byte-order mark
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{csv_path}: cannot read CSV ({exc})") from None
    if not rows:
        raise DataError(f"{csv_path}: no rows")
    columns = set(rows[0])
    mask_column = "mask" if "mask" in columns else "label" if "label" in columns else None
    if "image" not in columns or mask_column is None:
        raise DataError(f"{csv_path}: expected columns 'image' and 'mask' (or 'label'), got {sorted(columns)}")
    records = []
    for number, row in enumerate(rows, start=2):
        if not row.get("image") or not row.get(mask_column):
            raise DataError(f"{csv_path}: row {number} needs both an image and a {mask_column} path")
        image = csv_path.parent / row["image"]
        records.append(
            {
                "id": row.get("id") or Path(row["image"]).stem,
                "image": str(image),
                "label": str(csv_path.parent / row[mask_column]),
            }
        )
    return records


def _msd_datalist(json_path: Path) -> list[Record]:
    try:
        description = json.loads(json_path.read_text(encoding="utf-8"))
        entries = description["training"]
        records = [
            {
                "id": Path(str(e["image"])).name.split(".")[0],
                "image": str(json_path.parent / e["image"]),
                "label": str(json_path.parent / e["label"]),
            }
            for e in entries
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{json_path}: expected a 'training' list of {{image, label}} entries ({exc})") from None
    if not records:
        raise DataError(f"{json_path}: the 'training' list is empty")
    return records


def find_image_pairs(
    root: Path, cfg: DataConfig, report: DatalistReport, findings: list[Finding] | None = None
) -> list[Record]:
    """The image/mask pairs under ``root`` in its layout, not yet checked (``findings``: see _folder_datalist)."""
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    layout = detect_layout(root, cfg, spatial_dims=2)
    if layout == "msd":
        return _msd_datalist(root / cfg.dataset_json)
    if layout == "csv":
        return _csv_datalist(root / cfg.csv_file)
    return _folder_datalist(root, cfg, report, findings)


def build_image_datalist(root: Path, cfg: DataConfig, in_channels: int = 3) -> tuple[list[Record], DatalistReport]:
    """Find image/mask pairs under ``root`` and check that every pair is readable and consistent.

    Raises:
        DataError: missing folder, image without mask, unreadable image, size mismatch, duplicate id.
    """
    report = DatalistReport()
    records = find_image_pairs(root, cfg, report)
    check_case_ids(records, root)
    for record in records:
        check_pair(record, in_channels, report)
    report.cases = len(records)
    return records, report


def check_pair(record: Record, in_channels: int, report: DatalistReport) -> None:
    """DataError for the first error of :func:`pair_findings`."""
    error = first_error(pair_findings(record, in_channels, report)[0])
    if error is not None:
        raise DataError(error.message)


def _mode_finding(image: Image.Image, path: Path, case: str, in_channels: int) -> Finding | None:
    """Whether an image's mode fits the model: an opaque RGBA image is read as RGB (a warning)."""
    expected_mode = {1: ("L",), 3: ("RGB",)}.get(in_channels, ())
    if not expected_mode or image.mode in expected_mode:
        return None
    if image.mode == "RGBA" and in_channels == 3:
        low, _ = image.getchannel("A").getextrema()
        if low == 255:
            return Finding(
                "warning", case, "opaque alpha", f"{path}: image mode RGBA, fully opaque: read as RGB", str(path)
            )
        transparent = int(np.count_nonzero(np.asarray(image.getchannel("A")) < 255))
        return Finding(
            "error",
            case,
            "transparency",
            f"{path}: image mode RGBA with {transparent:,} transparent pixel(s); flatten it onto a background and "
            "save it as RGB",
            str(path),
        )
    hint = {"L": "grey-scale: convert it to RGB", "P": "a palette image: save it as RGB"}.get(image.mode, "")
    return Finding(
        "error",
        case,
        "image mode",
        f"{path}: image mode {image.mode} ({len(image.getbands())} channels) but the model "
        f"expects {in_channels} channel(s) ({'/'.join(expected_mode)})"
        + (f"; {hint}" if hint and in_channels == 3 else ""),
        str(path),
    )


def pair_findings(
    record: Record, in_channels: int, report: DatalistReport, label_values: set[int] | None = None
) -> tuple[list[Finding], str | None]:
    """Decode one image and its mask once: modes, sizes, empty and non-binary masks (counted in ``report``);
    with ``label_values`` (multi-class: the raw values ``data.label_mapping`` lists), values outside them instead.

    Returns the findings and the decoded image's content hash (duplicates are found across cases by
    :mod:`medseg.data.check`), None when the image cannot be read.
    """
    case, image_path, mask_path = record["id"], Path(record["image"]), Path(record["label"])
    try:
        image = open_image(image_path, "image")
    except DataError as exc:
        return [Finding("error", case, "unreadable", str(exc), str(image_path))], None
    findings = [f for f in [_mode_finding(image, image_path, case, in_channels)] if f is not None]
    digest = hashlib.sha256(image.tobytes()).hexdigest()
    try:
        mask = open_image(mask_path, "mask")
    except DataError as exc:
        return [*findings, Finding("error", case, "unreadable", str(exc), str(mask_path))], digest
    if len(mask.getbands()) != 1:
        message = f"{mask_path}: mask has {len(mask.getbands())} channels ({mask.mode}); expected one"
        return [*findings, Finding("error", case, "mask channels", message, str(mask_path))], digest
    if mask.size != image.size:
        message = (
            f"{mask_path}: mask size {mask.size[0]}x{mask.size[1]} differs from image size "
            f"{image.size[0]}x{image.size[1]} ({image_path.name})"
        )
        findings.append(Finding("error", case, "size mismatch", message, str(mask_path)))
    values = np.asarray(mask)
    top = values.max() if values.size else 0
    if label_values is not None:
        unknown = sorted(set(np.unique(values).tolist()) - label_values - {0})
        if unknown:
            message = f"{mask_path}: label value(s) {unknown[:8]} not in data.label_mapping (read as background)"
            findings.append(Finding("warning", case, "unmapped labels", message, str(mask_path)))
        non_binary = 0
    else:
        non_binary = int(np.count_nonzero((values != 0) & (values != top)))
    if non_binary:
        report.masks_with_non_binary_pixels += 1
        report.non_binary_pixels += non_binary
        report.non_binary_example = report.non_binary_example or str(mask_path)
        message = f"{mask_path}: {non_binary:,} non-binary pixel(s) (neither 0 nor {top}); masks are binarised at > 0"
        findings.append(Finding("warning", case, "non-binary mask", message, str(mask_path)))
    if top == 0:
        report.empty_masks.append(case)
        findings.append(Finding("warning", case, "empty mask", f"{mask_path}: the mask is empty", str(mask_path)))
    return findings, digest


def image_fingerprint(records: list[Record]) -> str:
    """A short hash of the file list and sizes: tells runs on different data apart."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r["id"]):
        for key in ("image", "label"):
            path = Path(record[key])
            digest.update(f"{record['id']}:{path.name}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]

"""What the data check reads in a 2D case: the image and its mask decoded once (modes, sizes, mask values), and
the fingerprint of a 2D datalist. The cases are found by :mod:`medseg.data.layouts`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from medseg.core.errors import DataError
from medseg.data.records import Finding, Record
from medseg.imageio.images import decode_mask, lossy_pixels, open_image


@dataclass
class DatalistReport:
    """What the data check found: counts that are worth logging."""

    cases: int = 0
    masks_with_non_binary_pixels: int = 0
    non_binary_pixels: int = 0
    empty_masks: list[str] = field(default_factory=list)
    non_binary_example: str = ""  # the first mask with non-binary pixels, for the warning
    unmatched_masks: list[str] = field(default_factory=list)


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
    record: Record,
    in_channels: int,
    report: DatalistReport,
    label_values: set[int] | None = None,
    listed: tuple[str, set[int]] | None = None,
) -> tuple[list[Finding], str | None]:
    """Decode one image and its mask once: modes, sizes, empty and non-binary masks (counted in ``report``);
    with ``label_values`` (multi-class: the raw values ``data.label_mapping`` lists), values outside them instead;
    with ``listed`` (the file describing the dataset and the label values it lists, more than one foreground value),
    values it does not list are errors (binary masks are read at > 0 whatever their foreground value).

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
        stored = open_image(mask_path, "mask")
    except DataError as exc:
        return [*findings, Finding("error", case, "unreadable", str(exc), str(mask_path))], digest
    mask = decode_mask(stored)
    if len(mask.getbands()) != 1:
        message = (
            f"{mask_path}: mask has {len(mask.getbands())} channels ({mask.mode}) that differ; expected one channel "
            "of label values (or equal colour channels)"
        )
        return [*findings, Finding("error", case, "mask channels", message, str(mask_path))], digest
    lossy = lossy_pixels(stored)
    if lossy:
        message = f"{mask_path}: JPEG mask, {lossy:,} pixel(s) not near 0 or 255 (lossy edges); thresholded at 128"
        findings.append(Finding("warning", case, "lossy mask", message, str(mask_path)))
    if mask.size != image.size:
        message = (
            f"{mask_path}: mask size {mask.size[0]}x{mask.size[1]} differs from image size "
            f"{image.size[0]}x{image.size[1]} ({image_path.name})"
        )
        findings.append(Finding("error", case, "size mismatch", message, str(mask_path)))
    values = np.asarray(mask)
    top = values.max() if values.size else 0
    unlisted = sorted(set(np.unique(values).tolist()) - listed[1] - {0}) if listed else []
    if unlisted:
        shown = ", ".join(map(str, sorted(listed[1] | {0})))
        message = (
            f"{mask_path}: label value(s) {', '.join(map(str, unlisted))} not listed in {listed[0]}'s labels ({shown})"
        )
        findings.append(Finding("error", case, "unlisted labels", message, str(mask_path)))
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

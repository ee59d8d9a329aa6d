"""Predict stage: masks at each input image's own size, plus contour overlays.

Each case is isolated: an unreadable image is reported and skipped, the others finish.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from medseg.data.datalist import IMAGE_EXTENSIONS, Record
from medseg.errors import DataError, MedsegError
from medseg.evaluation import read_mask
from medseg.inference import Predictor
from medseg.progress import progress_bar
from medseg.visualize import overlay, save_png

log = logging.getLogger(__name__)


@dataclass
class PredictionReport:
    """Which cases were written and which failed (with the reason)."""

    written: list[str] = field(default_factory=list)
    overlays: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def image_records(folder: Path) -> list[Record]:
    """Records for every image in a folder (no masks)."""
    if not folder.exists():
        raise DataError(f"{folder}: prediction input not found")
    paths = (
        [folder]
        if folder.is_file()
        else sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    )
    if not paths:
        raise DataError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return [{"id": p.stem, "image": str(p)} for p in paths]


def predict_images(
    predictor: Predictor, records: list[Record], out_dir: Path, overlays: bool = True, max_overlays: int = 24
) -> PredictionReport:
    """Write ``masks/<id>.png`` (0/255, input size) and, for the first cases, ``overlays/<id>.png``."""
    report = PredictionReport()
    with progress_bar() as progress:
        for record in progress.track(records, description="predict"):
            try:
                _, mask = predictor.segment(Path(record["image"]))
                save_png(mask.astype(np.uint8) * 255, out_dir / "masks" / f"{record['id']}.png")
                if overlays and len(report.overlays) < max_overlays:
                    image = np.asarray(Image.open(record["image"]).convert("RGB"))
                    truth = read_mask(record["label"]) if record.get("label") else None
                    save_png(overlay(image, mask, truth), out_dir / "overlays" / f"{record['id']}.png")
                    report.overlays.append(record["id"])
                report.written.append(record["id"])
            except MedsegError as exc:
                report.failed[record["id"]] = str(exc)
                log.error("%s", exc)
    log.info(
        "Predicted %d mask(s) into %s%s",
        len(report.written),
        out_dir / "masks",
        f"; {len(report.failed)} failed: {', '.join(report.failed)}" if report.failed else "",
    )
    return report

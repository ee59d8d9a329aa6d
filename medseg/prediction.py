"""Predict stage and ``medseg predict``: masks at each input image's own size, plus contour overlays.

Each case is isolated: an unreadable image is reported and skipped, the others finish. Every file is
written atomically; with ``overwrite=False`` cases whose mask exists are skipped, so an interrupted batch
resumes where it stopped. Inputs are never modified.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from medseg.data.datalist import IMAGE_EXTENSIONS, Record
from medseg.errors import DataError, MedsegError
from medseg.evaluation import read_mask
from medseg.inference import Predictor
from medseg.io import atomic_write_text
from medseg.progress import progress_bar
from medseg.visualize import overlay, save_png

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("case", "status", "seconds", "height", "width", "foreground_pixels", "message")


@dataclass
class PredictionReport:
    """Which cases were written, skipped (already done) or failed (with the reason)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    overlays: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rows: list[dict[str, object]] = field(default_factory=list)


def image_records(source: Path) -> list[Record]:
    """Records for one image file or every image in a folder (no masks)."""
    if not source.exists():
        raise DataError(f"{source}: prediction input not found")
    paths = (
        [source]
        if source.is_file()
        else sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    )
    if not paths:
        raise DataError(f"{source}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return [{"id": p.stem, "image": str(p)} for p in paths]


def _output_path(out_dir: Path, kind: str, case_id: str) -> Path:
    """``out_dir/kind/<id>.png``, refusing ids that would write outside ``out_dir``."""
    path = out_dir / kind / f"{case_id}.png"
    if (
        "/" in case_id
        or "\\" in case_id
        or case_id in {"", ".", ".."}
        or not path.resolve().is_relative_to(out_dir.resolve())
    ):
        raise DataError(f"case id {case_id!r}: would write outside {out_dir}")
    return path


def predict_images(
    predictor: Predictor,
    records: list[Record],
    out_dir: Path,
    overlays: bool = True,
    max_overlays: int = 24,
    overwrite: bool = True,
) -> PredictionReport:
    """Write ``masks/<id>.png`` (0/255, input size) and, for the first cases, ``overlays/<id>.png``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: output folder is a file")
    report = PredictionReport()
    with progress_bar() as progress:
        for record in progress.track(records, description="predict"):
            case_id = record["id"]
            started = time.perf_counter()
            row: dict[str, object] = {"case": case_id}
            try:
                mask_path = _output_path(out_dir, "masks", case_id)
                if mask_path.is_file() and not overwrite:
                    report.skipped.append(case_id)
                    report.rows.append({**row, "status": "skipped", "message": "mask exists"})
                    continue
                _, mask = predictor.segment(Path(record["image"]))
                save_png(mask.astype(np.uint8) * 255, mask_path)
                if overlays and len(report.overlays) < max_overlays:
                    image = np.asarray(Image.open(record["image"]).convert("RGB"))
                    truth = read_mask(record["label"]) if record.get("label") else None
                    save_png(overlay(image, mask, truth), _output_path(out_dir, "overlays", case_id))
                    report.overlays.append(case_id)
                report.written.append(case_id)
                row.update(status="ok", height=mask.shape[0], width=mask.shape[1], foreground_pixels=int(mask.sum()))
            except MedsegError as exc:
                report.failed[case_id] = str(exc)
                row.update(status="failed", message=str(exc))
                log.error("%s", exc)
            row["seconds"] = round(time.perf_counter() - started, 3)
            report.rows.append(row)
    _write_summary(out_dir / "summary.csv", report.rows)
    log.info(
        "Predicted %d mask(s) into %s%s%s",
        len(report.written),
        out_dir / "masks",
        f"; {len(report.skipped)} already done" if report.skipped else "",
        f"; {len(report.failed)} failed: {', '.join(report.failed)}" if report.failed else "",
    )
    return report


def _write_summary(path: Path, rows: list[dict[str, object]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def predict_folder(
    predictor: Predictor, source: Path, out_dir: Path, overwrite: bool = False, overlays: bool = True
) -> PredictionReport:
    """``medseg predict``: every image of ``source`` into ``out_dir`` (resumable unless ``overwrite``)."""
    if out_dir.resolve() == source.resolve() or (source.is_dir() and out_dir.resolve().parent == source.resolve()):
        raise DataError(f"{out_dir}: choose an output folder outside the input folder {source}")
    records = image_records(source)
    return predict_images(
        predictor, records, out_dir, overlays=overlays, max_overlays=len(records), overwrite=overwrite
    )

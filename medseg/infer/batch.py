"""The batch runner behind the predict stage and ``medseg predict``: masks on each input's own grid, overlays,
probability maps and a summary.

Each case is isolated: an unreadable image is reported and skipped, the others finish. Every file is
written atomically; with ``overwrite=False`` cases whose mask exists are skipped, so an interrupted batch
resumes where it stopped. Inputs are never modified, and a mask once written is never read back.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.atomic import atomic_write_text
from medseg.data.inputs import predict_inputs
from medseg.data.records import Record
from medseg.errors import DataError, MedsegError
from medseg.imageio.formats import mask_suffix
from medseg.imageio.images import read_mask, read_rgb, save_png
from medseg.infer.predictor import Predictor
from medseg.layout import PredictionLayout
from medseg.progress import progress_bar
from medseg.visualize import overlay

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = (
    "case",
    "status",
    "seconds",
    "height",
    "width",
    "foreground_pixels",
    "shape",
    "spacing",
    "voxels",
    "message",
)


@dataclass
class PredictionReport:
    """Which cases were written, skipped (already done) or failed (with the reason)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    overlays: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rows: list[dict[str, object]] = field(default_factory=list)


def _output_path(out_dir: Path, kind: str, case_id: str, suffix: str = ".png") -> Path:
    """``out_dir/kind/<id><suffix>``, refusing ids that would write outside ``out_dir``."""
    path = PredictionLayout(out_dir).folder(kind) / f"{case_id}{suffix}"
    if (
        "/" in case_id
        or "\\" in case_id
        or case_id in {"", ".", ".."}
        or not path.resolve().is_relative_to(out_dir.resolve())
    ):
        raise DataError(f"case id {case_id!r}: would write outside {out_dir}")
    return path


def _run_batch(
    records: list[Record],
    out_dir: Path,
    mask_path_of: Callable[[Record], Path],
    predict_case: Callable[[Record, Path], dict[str, object]],
    overwrite: bool,
) -> PredictionReport:
    """The shared batch loop: skip finished cases, isolate failures, time each case, write summary.csv."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: output folder is a file")
    _remove_stale_temporaries(out_dir)
    report = PredictionReport()
    with progress_bar() as progress:
        for record in progress.track(records, description="predict"):
            case_id, started = record["id"], time.perf_counter()
            row: dict[str, object] = {"case": case_id}
            try:
                mask_path = mask_path_of(record)
                if mask_path.is_file() and not overwrite:
                    report.skipped.append(case_id)
                    report.rows.append({**row, "status": "skipped", "message": "mask exists"})
                    continue
                row.update(status="ok", **predict_case(record, mask_path))
                report.written.append(case_id)
            except MedsegError as exc:
                report.failed[case_id] = str(exc)
                row.update(status="failed", message=str(exc))
                log.error("%s", exc)
            row["seconds"] = round(time.perf_counter() - started, 3)
            report.rows.append(row)
    _write_summary(PredictionLayout(out_dir).summary, report.rows)
    log.info(
        "Predicted %d case(s) into %s%s%s",
        len(report.written),
        PredictionLayout(out_dir).folder(PredictionLayout.MASKS),
        f"; {len(report.skipped)} already done" if report.skipped else "",
        f"; {len(report.failed)} failed: {', '.join(report.failed)}" if report.failed else "",
    )
    return report


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete the temporary files (``.<name>.<random>.tmp...``) of a batch that was killed while writing.

    Outputs are written under such names and renamed, so they are never half-written files with real names; only
    a process killed mid-write (SIGKILL, power loss) leaves one behind. One batch per output folder at a time.
    """
    layout = PredictionLayout(out_dir)
    stale = [
        path
        for folder in (out_dir, *(layout.folder(kind) for kind in PredictionLayout.KINDS))
        if folder.is_dir()
        for path in folder.glob(".*.tmp*")
    ]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)  # the folder of a detached-header (.nhdr/.mhd) write
        else:
            path.unlink(missing_ok=True)
    if stale:
        log.info("Removed %d temporary file(s) left by an interrupted batch in %s", len(stale), out_dir)


def predict_images(
    predictor: Predictor,
    records: list[Record],
    out_dir: Path,
    overlays: bool = True,
    max_overlays: int = 24,
    overwrite: bool = True,
) -> PredictionReport:
    """Write ``masks/<id>.png`` (0/255, input size) and, for the first cases, ``overlays/<id>.png``."""
    drawn: list[str] = []

    def predict_case(record: Record, mask_path: Path) -> dict[str, object]:
        mask = predictor.predict(Path(record["image"])).labels > 0
        save_png(mask.astype(np.uint8) * 255, mask_path)
        if overlays and len(drawn) < max_overlays:
            truth = read_mask(record["label"]) if record.get("label") else None
            picture = overlay(read_rgb(record["image"]), mask, truth)
            save_png(picture, _output_path(out_dir, PredictionLayout.OVERLAYS, record["id"]))
            drawn.append(record["id"])
        return {"height": mask.shape[0], "width": mask.shape[1], "foreground_pixels": int(mask.sum())}

    def mask_path_of(record: Record) -> Path:
        return _output_path(out_dir, PredictionLayout.MASKS, record["id"])

    report = _run_batch(records, out_dir, mask_path_of, predict_case, overwrite)
    report.overlays = drawn
    return report


def _write_summary(path: Path, rows: list[dict[str, object]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def predict_volumes(
    predictor: Predictor,
    records: list[Record],
    out_dir: Path,
    overwrite: bool = False,
    save_probabilities: bool = False,
) -> PredictionReport:
    """Write ``masks/<id>.<ext>`` (uint8, exactly the scan's geometry) and optional probability maps."""
    from medseg.imageio.writers import write_mask_like, write_probability_like

    def mask_path_of(record: Record) -> Path:
        return _output_path(out_dir, PredictionLayout.MASKS, record["id"], mask_suffix(Path(record["image"][0])))

    def predict_case(record: Record, mask_path: Path) -> dict[str, object]:
        case_id = record["id"]
        result = predictor.predict(record["image"], probabilities=save_probabilities)
        header, suffix = result.header, mask_suffix(Path(record["image"][0]))
        if result.probabilities is not None:
            channels = result.probabilities.shape[0]
            for channel in range(channels):
                name = case_id if channels == 1 else f"{case_id}_class{channel}"
                target = _output_path(out_dir, PredictionLayout.PROBABILITIES, name, suffix)
                write_probability_like(result.probabilities[channel], header, target)
            result.probabilities = None  # free it before the mask is written
        write_mask_like(result.labels, header, mask_path)
        counts = np.bincount(result.labels.ravel())  # no sorted copy of the volume, unlike np.unique
        return {
            "shape": "x".join(map(str, result.labels.shape)),
            "spacing": "x".join(f"{v:.5g}" for v in header.spacing),
            "voxels": ";".join(f"{v}:{c}" for v, c in enumerate(counts) if v and c),
        }

    return _run_batch(records, out_dir, mask_path_of, predict_case, overwrite)


def predict_folder(
    predictor: Predictor,
    source: Path,
    out_dir: Path,
    overwrite: bool = False,
    overlays: bool = True,
    save_probabilities: bool = False,
) -> PredictionReport:
    """``medseg predict``: every image or scan of ``source`` into ``out_dir`` (resumable unless ``overwrite``)."""
    if source.exists() and out_dir.resolve() == source.resolve():
        raise DataError(f"{out_dir}: choose an output folder other than the input folder")
    cfg = predictor.config
    records = predict_inputs(source, cfg.spatial_dims, cfg.model.in_channels)
    if cfg.spatial_dims == 3:
        return predict_volumes(predictor, records, out_dir, overwrite=overwrite, save_probabilities=save_probabilities)
    return predict_images(
        predictor, records, out_dir, overlays=overlays, max_overlays=len(records), overwrite=overwrite
    )

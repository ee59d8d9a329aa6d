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
from collections.abc import Callable
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


def image_records(source: Path) -> list[Record]:
    """Records for one image file or every image in a folder (no masks)."""
    if not source.exists():
        raise DataError(f"{source}: prediction input not found")
    paths = (
        [source]
        if source.is_file()
        # not p.is_dir(): a broken or looping symlink with an image name is reported as a failed case, not skipped
        else sorted(p for p in source.iterdir() if not p.is_dir() and p.suffix.lower() in IMAGE_EXTENSIONS)
    )
    if not paths:
        raise DataError(f"{source}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return [{"id": p.stem, "image": str(p)} for p in paths]


def _output_path(out_dir: Path, kind: str, case_id: str, suffix: str = ".png") -> Path:
    """``out_dir/kind/<id><suffix>``, refusing ids that would write outside ``out_dir``."""
    path = out_dir / kind / f"{case_id}{suffix}"
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
    _write_summary(out_dir / "summary.csv", report.rows)
    log.info(
        "Predicted %d case(s) into %s%s%s",
        len(report.written),
        out_dir / "masks",
        f"; {len(report.skipped)} already done" if report.skipped else "",
        f"; {len(report.failed)} failed: {', '.join(report.failed)}" if report.failed else "",
    )
    return report


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete the temporary files (``.<name>.<random>.tmp...``) of a batch that was killed while writing.

    Outputs are written under such names and renamed, so they are never half-written files with real names; only
    a process killed mid-write (SIGKILL, power loss) leaves one behind. One batch per output folder at a time.
    """
    import shutil

    stale = [
        path
        for folder in (out_dir, *(out_dir / kind for kind in ("masks", "overlays", "probabilities")))
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
        mask = predictor.segment(Path(record["image"]))[1] > 0
        save_png(mask.astype(np.uint8) * 255, mask_path)
        if overlays and len(drawn) < max_overlays:
            image = np.asarray(Image.open(record["image"]).convert("RGB"))
            truth = read_mask(record["label"]) if record.get("label") else None
            save_png(overlay(image, mask, truth), _output_path(out_dir, "overlays", record["id"]))
            drawn.append(record["id"])
        return {"height": mask.shape[0], "width": mask.shape[1], "foreground_pixels": int(mask.sum())}

    report = _run_batch(records, out_dir, lambda r: _output_path(out_dir, "masks", r["id"]), predict_case, overwrite)
    report.overlays = drawn
    return report


def _write_summary(path: Path, rows: list[dict[str, object]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def volume_records(source: Path, channels: int = 1) -> list[Record]:
    """Cases from one scan (file or DICOM folder) or a folder of scans.

    With several channels, files follow nnU-Net naming: ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``...
    A sub-folder is taken as one DICOM series.
    """
    from medseg.data.volumes import VOLUME_SUFFIXES, volume_id

    if not source.exists():
        raise DataError(f"{source}: prediction input not found")
    is_scan = source.is_file() or (
        source.is_dir()
        and not any(p.is_dir() for p in source.iterdir())
        and not any(p.name.lower().endswith(VOLUME_SUFFIXES) for p in source.iterdir())
    )
    entries = (
        [source]
        if is_scan
        else sorted(p for p in source.iterdir() if p.is_dir() or p.name.lower().endswith(VOLUME_SUFFIXES))
    )
    if not entries:
        raise DataError(f"{source}: no scans found (looked for {', '.join(VOLUME_SUFFIXES)} files and DICOM folders)")
    if channels == 1:
        return [{"id": volume_id(p), "image": [str(p)]} for p in entries]
    cases: dict[str, dict[int, Path]] = {}
    for path in entries:
        stem = volume_id(path)
        case, _, index = stem.rpartition("_")
        if not case or not (index.isdigit() and len(index) == 4):
            raise DataError(
                f"{path}: a {channels}-channel model needs files named <case>_0000 ... <case>_{channels - 1:04d}"
            )
        cases.setdefault(case, {})[int(index)] = path
    records = []
    for case, files in sorted(cases.items()):
        if sorted(files) != list(range(channels)):
            raise DataError(f"{source}: case {case!r} has channels {sorted(files)}, expected 0..{channels - 1}")
        records.append({"id": case, "image": [str(files[i]) for i in range(channels)]})
    return records


def _mask_suffix(reference: Path) -> str:
    name = reference.name.lower()
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return suffix
    return ".mha" if name.endswith(".mhd") else ".nii.gz"  # DICOM series and others -> NIfTI


def predict_volumes(
    predictor: Predictor,
    records: list[Record],
    out_dir: Path,
    overwrite: bool = False,
    save_probabilities: bool = False,
) -> PredictionReport:
    """Write ``masks/<id>.<ext>`` (uint8, exactly the scan's geometry) and optional probability maps."""
    from medseg.data.volumes import read_volume_header
    from medseg.imageio.writers import write_mask_like, write_probability_like
    from medseg.postprocessing import apply_steps

    def mask_path_of(record: Record) -> Path:
        return _output_path(out_dir, "masks", record["id"], _mask_suffix(Path(record["image"][0])))

    def predict_case(record: Record, mask_path: Path) -> dict[str, object]:
        reference, case_id = Path(record["image"][0]), record["id"]
        probs = predictor.probabilities(record["image"])
        labels = apply_steps(predictor.discretise(probs), predictor.steps, predictor.config.postprocessing)
        if save_probabilities:
            for channel in range(probs.shape[0]):
                name = case_id if probs.shape[0] == 1 else f"{case_id}_class{channel}"
                write_probability_like(
                    probs[channel], reference, _output_path(out_dir, "probabilities", name, _mask_suffix(reference))
                )
        del probs
        write_mask_like(labels, reference, mask_path)
        spacing = np.linalg.norm(read_volume_header(mask_path).affine[:3, :3], axis=0)
        counts = np.bincount(labels.ravel())  # no sorted copy of the volume, unlike np.unique
        return {
            "shape": "x".join(map(str, labels.shape)),
            "spacing": "x".join(f"{v:.5g}" for v in spacing),
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
    if predictor.config.spatial_dims == 3:
        records = volume_records(source, predictor.config.model.in_channels)
        return predict_volumes(predictor, records, out_dir, overwrite=overwrite, save_probabilities=save_probabilities)
    records = image_records(source)
    return predict_images(
        predictor, records, out_dir, overlays=overlays, max_overlays=len(records), overwrite=overwrite
    )

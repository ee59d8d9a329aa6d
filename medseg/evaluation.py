"""Evaluate stage: metrics at the images' own size, before and after post-processing.

Also chooses the post-processing on the validation split after training (``postprocessing.mode: auto``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medseg.config import PipelineConfig
from medseg.data.datalist import Record
from medseg.inference import POSTPROCESSING_FILE, Predictor
from medseg.io import atomic_write_text
from medseg.metrics import METRIC_NAMES, case_metrics, dice_score, summarise
from medseg.postprocessing import enabled_steps, select_steps
from medseg.progress import progress_bar

log = logging.getLogger(__name__)


def read_mask(path: str | Path) -> np.ndarray:
    """A reference mask as a boolean (H, W) array (binarised at > 0)."""
    return np.asarray(Image.open(path)) > 0


def choose_postprocessing(
    predictor: Predictor, records: list[Record], cfg: PipelineConfig, model_dir: Path
) -> dict[str, Any]:
    """Select post-processing steps on validation cases and save the choice beside the model."""
    candidates = enabled_steps(cfg.postprocessing)
    choice: dict[str, Any] = {"mode": cfg.postprocessing.mode, "candidates": candidates, "steps": [], "scores": {}}
    if cfg.postprocessing.mode == "auto" and candidates:
        predictions, truths = [], []
        with progress_bar() as progress:
            for record in progress.track(records, description="choose post-processing"):
                predictions.append(predictor.segment(Path(record["image"]))[0])
                truths.append(read_mask(record["label"]))
        choice["steps"], choice["scores"] = select_steps(predictions, truths, cfg.postprocessing, dice_score)
        log.info(
            "Post-processing chosen on %d validation cases: %s (validation Dice %s)",
            len(records),
            ", ".join(choice["steps"]) or "none",
            ", ".join(f"{k} {v:.4f}" for k, v in choice["scores"].items()),
        )
    elif cfg.postprocessing.mode == "on":
        choice["steps"] = candidates
    atomic_write_text(model_dir / POSTPROCESSING_FILE, json.dumps(choice, indent=1))
    predictor.steps = list(choice["steps"])
    return choice


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def evaluate(predictor: Predictor, records: list[Record], cfg: PipelineConfig, out_dir: Path) -> dict[str, Any]:
    """Per-case metrics (CSV) and their summary (JSON), raw and post-processed.

    Returns:
        The summary: ``{"raw": {...}, "postprocessed": {...}, "postprocessing_steps": [...], "cases": n}``.
    """
    rows: list[dict[str, Any]] = []
    per_variant: dict[str, list[dict[str, float]]] = {"raw": [], "postprocessed": []}
    jaccard_threshold = cfg.evaluation.jaccard_threshold
    with progress_bar() as progress:
        for record in progress.track(records, description="evaluate"):
            raw, post = predictor.segment(Path(record["image"]))
            truth = read_mask(record["label"])
            for variant, mask in (("raw", raw), ("postprocessed", post)):
                values = case_metrics(mask, truth, jaccard_threshold=jaccard_threshold)
                per_variant[variant].append(values)
                rows.append({"case": record["id"], "variant": variant, **{k: round(v, 6) for k, v in values.items()}})
    summary = {variant: summarise(values) for variant, values in per_variant.items()}
    summary.update({"postprocessing_steps": predictor.steps, "cases": len(records), "split": cfg.evaluation.split})
    atomic_write_text(out_dir / "per_case_metrics.csv", _csv_text(rows))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    headline = summary["postprocessed"]
    log.info(
        "Test (%d cases): Dice %.4f, IoU %.4f, thresholded Jaccard %.4f, HD95 %.1f px (post-processed); raw Dice %.4f",
        len(records),
        headline["dice"]["mean"],
        headline["iou"]["mean"],
        headline["jaccard_thresholded"]["mean"],
        headline["hd95"]["mean"],
        summary["raw"]["dice"]["mean"],
    )
    return summary


def summary_metrics(summary: dict[str, Any], prefix: str = "test") -> dict[str, float]:
    """Flatten a summary to MLflow metrics: ``test_dice`` (post-processed) and ``test_dice_raw``."""
    metrics = {}
    for name in METRIC_NAMES:
        for variant, suffix in (("postprocessed", ""), ("raw", "_raw")):
            value = summary[variant][name]["mean"]
            if np.isfinite(value):
                metrics[f"{prefix}_{name}{suffix}"] = value
    return metrics

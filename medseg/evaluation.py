"""Evaluate stage: metrics at the images' own size, before and after post-processing; and the validation label
maps that :mod:`medseg.postprocessing` chooses its steps on."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medseg.atomic import atomic_write_text
from medseg.config import PipelineConfig
from medseg.data.records import Record
from medseg.imageio.headers import ScanHeader
from medseg.infer.predictor import Predictor, Segmentation
from medseg.metrics import METRIC_NAMES, VOLUME_METRIC_NAMES, case_metrics, summarise, volume_metrics
from medseg.progress import progress_bar

log = logging.getLogger(__name__)


def validation_label_maps(
    predictor: Predictor, records: list[Record], cfg: PipelineConfig
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Raw predicted label maps and reference labels of the cases, to choose the post-processing on."""
    predictions, truths = [], []
    with progress_bar() as progress:
        for record in progress.track(records, description="choose post-processing"):
            result = predictor.predict(record["image"])
            predictions.append(result.raw)
            truths.append(read_truth(record, cfg, result.header)[0])
    return predictions, truths


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_truth(
    record: Record, cfg: PipelineConfig, header: ScanHeader | None = None
) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Reference labels on the image's own voxel grid and the voxel spacing: classes remapped as in training (with
    ``data.regions``: the raw labels); voxels with ``data.ignore_label`` keep that value.

    ``header``: the image's header, as read for the prediction (3D; read here if not given).
    """
    import torch

    from medseg.transforms.labels import RemapLabels, label_remapping

    remapping = {**label_remapping(cfg), "regions": None}
    dtype = np.uint16 if (cfg.data.ignore_label or 0) > 255 else np.uint8
    if cfg.spatial_dims == 2:
        from medseg.imageio.images import open_image

        raw = np.asarray(open_image(Path(record["label"]), "mask"))
        raw = raw.max(axis=-1) if raw.ndim == 3 else raw  # an RGB(A) mask: any channel > 0
        return RemapLabels(**remapping)(torch.as_tensor(raw.astype(np.int32))).numpy().astype(dtype), None

    from medseg.imageio.headers import read_header
    from medseg.imageio.readers import read_label_on_grid

    header = header or read_header(Path(record["image"][0]))
    array = read_label_on_grid(Path(record["label"]), header)
    if cfg.data.regions:
        return np.asarray(array).astype(dtype), header.spacing
    labels = RemapLabels(**remapping)(torch.as_tensor(np.asarray(array).astype(np.int32)))
    return labels.numpy().astype(dtype), header.spacing


def structure_metrics(
    prediction: np.ndarray, truth: np.ndarray, cfg: PipelineConfig, spacing: tuple[float, ...] | None
) -> dict[str, dict[str, float]]:
    """Metrics of each structure (class or region) of a predicted label map against the reference labels, the
    ``data.ignore_label`` voxels left out."""
    from medseg.labels import structure_masks

    if cfg.data.ignore_label is not None:
        valid = truth != cfg.data.ignore_label
        prediction, truth = prediction * valid, truth * valid
    predicted, true = structure_masks(prediction, cfg), structure_masks(truth, cfg)
    if cfg.spatial_dims == 2:
        threshold = cfg.evaluation.jaccard_threshold
        return {name: case_metrics(predicted[name], true[name], jaccard_threshold=threshold) for name in predicted}
    return {name: volume_metrics(predicted[name], true[name], spacing) for name in predicted}


def evaluate(
    predictor: Predictor,
    records: list[Record],
    cfg: PipelineConfig,
    out_dir: Path,
    on_case: Callable[[Record, Segmentation], None] | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Per-case metrics (CSV) and their summary (JSON), raw and post-processed, on the inputs' own grids.

    One row per case and structure (each named class, or each region). 2D: Dice, IoU, thresholded Jaccard,
    precision, recall, accuracy, HD95 (pixels). 3D:
    Dice, IoU, HD95 and average surface distance (mm) and volume error. ``on_case`` gets each case's
    segmentation, probabilities included (e.g. to keep out-of-fold predictions); ``split`` names the cases
    (default ``evaluation.split``).

    Returns:
        The summary: ``{"raw": {...}, "postprocessed": {...}, "postprocessing_steps": [...], "cases": n}``.
    """
    from medseg.labels import structures

    names = METRIC_NAMES if cfg.spatial_dims == 2 else VOLUME_METRIC_NAMES
    named = structures(cfg)
    rows: list[dict[str, Any]] = []
    per_variant: dict[str, list[dict[str, float]]] = {"raw": [], "postprocessed": []}
    with progress_bar() as progress:
        for record in progress.track(records, description="evaluate"):
            result = predictor.predict(record["image"], probabilities=on_case is not None)
            if on_case is not None:
                on_case(record, result)
            truth, spacing = read_truth(record, cfg, result.header)
            for variant, labels in (("raw", result.raw), ("postprocessed", result.labels)):
                metrics = structure_metrics(labels, truth, cfg, spacing)
                for structure in named:
                    values = metrics[structure.name]
                    per_variant[variant].append(values)
                    rows.append(
                        {
                            "case": record["id"],
                            "variant": variant,
                            "label": structure.name,
                            "values": ";".join(map(str, structure.values)),
                            **{k: round(v, 6) for k, v in values.items()},
                        }
                    )
    summary: dict[str, Any] = {variant: summarise(values, names) for variant, values in per_variant.items()}
    summary["per_label"] = {
        s.name: summarise([r for r in rows if r["label"] == s.name and r["variant"] == "postprocessed"], names)
        for s in named
    }
    summary.update(
        {
            "postprocessing_steps": predictor.steps,
            "cases": len(records),
            "split": split or cfg.evaluation.split,
            "metrics": list(names),
        }
    )
    atomic_write_text(out_dir / "per_case_metrics.csv", _csv_text(rows))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    headline = summary["postprocessed"]
    log.info(
        "%s (%d cases): %s (post-processed); raw Dice %.4f",
        split or cfg.evaluation.split,
        len(records),
        ", ".join(
            f"{n} {headline[n]['mean']:.4f}"
            for n in names
            if n in ("dice", "iou", "jaccard_thresholded", "hd95", "hd95_mm", "asd_mm")
        ),
        summary["raw"]["dice"]["mean"],
    )
    return summary


def summary_metrics(summary: dict[str, Any], prefix: str = "test") -> dict[str, float]:
    """Flatten a summary to MLflow metrics: ``test_dice`` (post-processed) and ``test_dice_raw``."""
    metrics = {}
    for name in summary.get("metrics", METRIC_NAMES):
        for variant, suffix in (("postprocessed", ""), ("raw", "_raw")):
            value = summary[variant][name]["mean"]
            if np.isfinite(value):
                metrics[f"{prefix}_{name}{suffix}"] = value
    from medseg.labels import slug

    for name, per_label in summary.get("per_label", {}).items():
        metrics[f"{prefix}_dice_{slug(name)}"] = per_label["dice"]["mean"]
    return metrics

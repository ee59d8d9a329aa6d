"""Evaluate stage: metrics at the images' own size, before and after post-processing; and the validation label
maps that :mod:`medseg.infer.postprocessing` chooses its steps on."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medseg.core.atomic import atomic_write_text
from medseg.core.progress import progress_bar
from medseg.data.records import Record
from medseg.evaluation.metrics import METRIC_NAMES, VOLUME_METRIC_NAMES, case_metrics, summarise, volume_metrics
from medseg.evaluation.settings import EvaluationSettings
from medseg.imageio.headers import ScanHeader
from medseg.infer.predictor import Predictor, Segmentation

log = logging.getLogger(__name__)

PER_CASE_CSV = "per_case_metrics.csv"


def validation_label_maps(
    predictor: Predictor, records: list[Record], settings: EvaluationSettings, refined: list[np.ndarray] | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Raw predicted label maps and reference labels of the cases, to choose the post-processing on; ``refined``, when
    given, gets the maps after the predictor's own steps (the dense CRF alone, while it is tried)."""
    predictions, truths = [], []
    with progress_bar() as progress:
        for record in progress.track(records, description="choose post-processing"):
            result = predictor.predict(record["image"])
            predictions.append(result.raw)
            if refined is not None:
                refined.append(result.labels)
            truths.append(read_truth(record, settings, result.header)[0])
    return predictions, truths


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_per_case(out_dir: Path, names: list[str], variant: str = "raw") -> list[dict[str, float]]:
    """The metrics ``names`` of each row :func:`evaluate` wrote to ``out_dir`` for ``variant`` (raw or
    postprocessed)."""
    with (out_dir / PER_CASE_CSV).open(encoding="utf-8", newline="") as table:
        return [{n: float(row[n]) for n in names} for row in csv.DictReader(table) if row["variant"] == variant]


def read_truth(
    record: Record, settings: EvaluationSettings, header: ScanHeader | None = None
) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Reference labels on the image's own voxel grid and the voxel spacing: classes remapped as in training (with
    ``data.regions``: the raw labels); voxels with ``data.ignore_label`` keep that value.

    ``header``: the image's header, as read for the prediction (3D; read here if not given).
    """
    import torch

    from medseg.transforms.labels import RemapLabels

    remapping = settings.truth.without_regions().arguments()
    dtype = np.uint16 if (settings.labels.ignore_label or 0) > 255 else np.uint8
    if settings.spatial_dims == 2:
        from medseg.imageio.images import decode_mask, open_image

        raw = np.asarray(decode_mask(open_image(Path(record["label"]), "mask")))
        raw = raw.max(axis=-1) if raw.ndim == 3 else raw  # a colour-coded mask: any channel > 0
        return RemapLabels(**remapping)(torch.as_tensor(raw.astype(np.int32))).numpy().astype(dtype), None

    from medseg.imageio.headers import read_header
    from medseg.imageio.readers import read_label_on_grid

    header = header or read_header(Path(record["image"][0]))
    array = read_label_on_grid(Path(record["label"]), header)
    if settings.labels.regions:
        return np.asarray(array).astype(dtype), header.spacing
    labels = RemapLabels(**remapping)(torch.as_tensor(np.asarray(array).astype(np.int32)))
    return labels.numpy().astype(dtype), header.spacing


def structure_metrics(
    prediction: np.ndarray, truth: np.ndarray, settings: EvaluationSettings, spacing: tuple[float, ...] | None
) -> dict[str, dict[str, float]]:
    """Metrics of each structure (class or region) of a predicted label map against the reference labels, the
    ``data.ignore_label`` voxels left out."""
    predicted, true = settings.labels.compared_masks(prediction, truth)
    if settings.spatial_dims == 2:
        threshold = settings.jaccard_threshold
        return {name: case_metrics(predicted[name], true[name], jaccard_threshold=threshold) for name in predicted}
    return {name: volume_metrics(predicted[name], true[name], spacing) for name in predicted}


def evaluate(
    predictor: Predictor,
    records: list[Record],
    settings: EvaluationSettings,
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
    from medseg.evaluation.metrics import confusion_matrix, semantic_scores

    names = METRIC_NAMES if settings.spatial_dims == 2 else VOLUME_METRIC_NAMES
    scheme = settings.labels
    named = scheme.structures()
    classes = None if scheme.regions else scheme.class_count  # a confusion matrix for class models
    matrix = np.zeros((classes, classes), dtype=np.int64) if classes else None
    rows: list[dict[str, Any]] = []
    per_variant: dict[str, list[dict[str, float]]] = {"raw": [], "postprocessed": []}
    with progress_bar() as progress:
        for record in progress.track(records, description="evaluate"):
            result = predictor.predict(record["image"], probabilities=on_case is not None)
            if on_case is not None:
                on_case(record, result)
            truth, spacing = read_truth(record, settings, result.header)
            if matrix is not None:
                valid = None if settings.labels.ignore_label is None else truth != settings.labels.ignore_label
                matrix += confusion_matrix(result.labels, truth, classes, valid)
            for variant, labels in (("raw", result.raw), ("postprocessed", result.labels)):
                metrics = structure_metrics(labels, truth, settings, spacing)
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
    if matrix is not None:
        class_names = ["background", *(label.name for label in scheme.output_labels())]
        summary["semantic"] = {**semantic_scores(matrix), "classes": class_names, "confusion_matrix": matrix.tolist()}
        write_confusion_matrix(matrix, class_names, out_dir)
    summary.update(
        {
            "postprocessing_steps": predictor.steps,
            "cases": len(records),
            "split": split or settings.split,
            "metrics": list(names),
        }
    )
    atomic_write_text(out_dir / PER_CASE_CSV, _csv_text(rows))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    headline = summary["postprocessed"]
    log.info(
        "%s (%d cases): %s (post-processed); raw Dice %.4f",
        split or settings.split,
        len(records),
        ", ".join(
            f"{n} {headline[n]['mean']:.4f} (95% CI {headline[n]['ci95'][0]:.4f}-{headline[n]['ci95'][1]:.4f})"
            for n in names
            if n in ("dice", "iou", "jaccard_thresholded", "hd95", "hd95_mm", "asd_mm")
        ),
        summary["raw"]["dice"]["mean"],
    )
    return summary


def write_confusion_matrix(matrix: np.ndarray, names: list[str], out_dir: Path) -> None:
    """``confusion_matrix.csv`` (pixel counts, rows true, columns predicted) and ``confusion_matrix.png`` (rows
    normalised, with the counts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medseg.core.atomic import atomic_path

    rows = [
        {"true \\ predicted": name, **dict(zip(names, map(int, row), strict=True))}
        for name, row in zip(names, matrix, strict=True)
    ]
    atomic_write_text(out_dir / "confusion_matrix.csv", _csv_text(rows))
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    fig, axis = plt.subplots(figsize=(1.2 * len(names) + 2.5, 1.1 * len(names) + 1.8))
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            colour = "white" if shares[i, j] > 0.5 else "black"
            axis.text(j, i, f"{shares[i, j]:.2f}\n{matrix[i, j]:,}", ha="center", va="center", color=colour, fontsize=8)
    axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title("confusion matrix (rows sum to 1; pixel counts)")
    fig.colorbar(image, ax=axis, fraction=0.046)
    fig.tight_layout()
    with atomic_path(out_dir / "confusion_matrix.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def summary_metrics(summary: dict[str, Any], prefix: str = "test") -> dict[str, float]:
    """Flatten a summary to MLflow metrics: ``test_dice`` (post-processed), its 95 % interval ``test_dice_ci95_low`` /
    ``_high``, and ``test_dice_raw``."""
    metrics = {}
    for name in summary.get("metrics", METRIC_NAMES):
        for variant, suffix in (("postprocessed", ""), ("raw", "_raw")):
            value = summary[variant][name]["mean"]
            if np.isfinite(value):
                metrics[f"{prefix}_{name}{suffix}"] = value
        low, high = summary["postprocessed"][name]["ci95"]
        if np.isfinite(low) and np.isfinite(high):  # the mean's 95 % bootstrap interval over cases
            metrics[f"{prefix}_{name}_ci95_low"], metrics[f"{prefix}_{name}_ci95_high"] = low, high
    from medseg.labels import slug

    for name, per_label in summary.get("per_label", {}).items():
        metrics[f"{prefix}_dice_{slug(name)}"] = per_label["dice"]["mean"]
    semantic = summary.get("semantic")
    if semantic:
        for key in ("miou", "fwiou", "pixel_accuracy", "mean_pixel_accuracy"):
            if np.isfinite(semantic[key]):
                metrics[f"{prefix}_{key}"] = semantic[key]
        for name, iou in zip(semantic["classes"], semantic["iou"], strict=True):
            if iou is not None and name != "background":
                metrics[f"{prefix}_iou_{slug(name)}"] = iou
    return metrics

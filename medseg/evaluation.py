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
import torch
from PIL import Image

from medseg.config import PipelineConfig
from medseg.data.datalist import Record
from medseg.errors import DataError
from medseg.inference import POSTPROCESSING_FILE, Predictor
from medseg.io import atomic_write_text
from medseg.metrics import METRIC_NAMES, VOLUME_METRIC_NAMES, case_metrics, dice_score, summarise, volume_metrics
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
                predictions.append(predictor.segment(record["image"])[0])
                truths.append(read_truth(record, cfg)[0])
        classes = range(1, max(2, cfg.model.out_channels))

        def mean_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
            return float(np.mean([dice_score(prediction == c, truth == c) for c in classes]))

        choice["steps"], choice["scores"] = select_steps(predictions, truths, cfg.postprocessing, mean_dice)
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


def align_to_grid(
    labels: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, target_shape: tuple[int, ...], name: str
) -> np.ndarray:
    """Reorient a label array onto another voxel grid that differs only by axis flips/permutations.

    (E.g. a LAS label of an LPS DICOM series.) Raises DataError if the grids really differ.
    """
    import nibabel as nib

    if np.allclose(affine, target_affine, atol=1e-3) and labels.shape == target_shape:
        return labels
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.io_orientation(target_affine)
    )
    aligned = nib.orientations.apply_orientation(labels, transform)
    moved = affine @ nib.orientations.inv_ornt_aff(transform, labels.shape)
    if aligned.shape != target_shape or not np.allclose(moved, target_affine, atol=1e-3):
        raise DataError(f"{name}: the label's voxel grid does not match the image's (shape or affine differs)")
    return np.ascontiguousarray(aligned)


def read_truth(record: Record, cfg: PipelineConfig) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Reference labels on the image's own voxel grid (classes remapped as in training) and the voxel spacing."""
    if cfg.spatial_dims == 2:
        return read_mask(record["label"]).astype(np.uint8), None
    from medseg.data.volume_transforms import RemapLabels
    from medseg.data.volumes import read_volume_header
    from medseg.imageio.readers import load_volume

    array, meta = load_volume(Path(record["label"]))
    image = Path(record["image"][0])
    if image.is_file():  # the header is enough; a DICOM series folder has to be read
        header = read_volume_header(image)
        affine, shape = header.affine, tuple(header.spatial_shape)
    else:
        _, image_meta = load_volume(image)
        affine = np.asarray(image_meta["affine"], dtype=float)
        shape = tuple(int(n) for n in image_meta["spatial_shape"])
    array = align_to_grid(np.asarray(array), np.asarray(meta["affine"], dtype=float), affine, shape, record["label"])
    labels = RemapLabels(cfg.data.label_mapping, cfg.data.foreground_labels)(torch.as_tensor(array))
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    return labels.numpy().astype(np.uint8), spacing


def evaluate(predictor: Predictor, records: list[Record], cfg: PipelineConfig, out_dir: Path) -> dict[str, Any]:
    """Per-case metrics (CSV) and their summary (JSON), raw and post-processed, on the inputs' own grids.

    2D: Dice, IoU, thresholded Jaccard, precision, recall, accuracy, HD95 (pixels). 3D: per foreground class,
    Dice, IoU, HD95 and average surface distance (mm) and volume error.

    Returns:
        The summary: ``{"raw": {...}, "postprocessed": {...}, "postprocessing_steps": [...], "cases": n}``.
    """
    names = METRIC_NAMES if cfg.spatial_dims == 2 else VOLUME_METRIC_NAMES
    classes = list(range(1, max(2, cfg.model.out_channels)))
    rows: list[dict[str, Any]] = []
    per_variant: dict[str, list[dict[str, float]]] = {"raw": [], "postprocessed": []}
    with progress_bar() as progress:
        for record in progress.track(records, description="evaluate"):
            raw, post = predictor.segment(record["image"])
            truth, spacing = read_truth(record, cfg)
            for variant, labels in (("raw", raw), ("postprocessed", post)):
                for cls in classes:
                    if cfg.spatial_dims == 2:
                        values = case_metrics(
                            labels == cls, truth == cls, jaccard_threshold=cfg.evaluation.jaccard_threshold
                        )
                    else:
                        values = volume_metrics(labels == cls, truth == cls, spacing)
                    per_variant[variant].append(values)
                    rows.append(
                        {
                            "case": record["id"],
                            "variant": variant,
                            "class": cls,
                            **{k: round(v, 6) for k, v in values.items()},
                        }
                    )
    summary: dict[str, Any] = {variant: summarise(values, names) for variant, values in per_variant.items()}
    if len(classes) > 1:
        summary["per_class"] = {
            str(cls): summarise([r for r in rows if r["class"] == cls and r["variant"] == "postprocessed"], names)
            for cls in classes
        }
    summary.update(
        {
            "postprocessing_steps": predictor.steps,
            "cases": len(records),
            "split": cfg.evaluation.split,
            "metrics": list(names),
        }
    )
    atomic_write_text(out_dir / "per_case_metrics.csv", _csv_text(rows))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    headline = summary["postprocessed"]
    log.info(
        "%s (%d cases): %s (post-processed); raw Dice %.4f",
        cfg.evaluation.split,
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
    for cls, per_class in summary.get("per_class", {}).items():
        metrics[f"{prefix}_dice_class{cls}"] = per_class["dice"]["mean"]
    return metrics

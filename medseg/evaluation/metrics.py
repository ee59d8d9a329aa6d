"""Per-case segmentation metrics on binary masks, through MONAI's metric functions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METRIC_NAMES = ("dice", "iou", "jaccard_thresholded", "precision", "recall", "accuracy", "hd95")
VOLUME_METRIC_NAMES = ("dice", "iou", "hd95_mm", "asd_mm", "volume_pred_ml", "volume_true_ml", "volume_error_pct")


def _as_batch(mask: np.ndarray):
    import torch

    return torch.as_tensor(np.ascontiguousarray(mask), dtype=torch.float32)[None, None]


def case_metrics(
    prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None, jaccard_threshold: float = 0.65
) -> dict[str, float]:
    """Dice, IoU, ISIC thresholded Jaccard, precision, recall, pixel accuracy and HD95 for one case.

    Args:
        prediction: boolean mask (2D or 3D, no channel axis).
        truth: boolean mask of the same shape.
        spacing: pixel/voxel size for HD95 in physical units (default 1 per axis).
        jaccard_threshold: a Jaccard below this counts as 0 (ISIC 2018 challenge rule).

    Returns:
        Metric name -> value; HD95 is NaN when either mask is empty.
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou
    from monai.metrics.confusion_matrix import compute_confusion_matrix_metric, get_confusion_matrix

    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from truth shape {truth.shape}")
    pred, gt = _as_batch(prediction > 0), _as_batch(truth > 0)
    both_empty = not prediction.any() and not truth.any()
    dice = 1.0 if both_empty else float(compute_dice(pred, gt, ignore_empty=False).item())
    iou = 1.0 if both_empty else float(compute_iou(pred, gt, ignore_empty=False).item())
    confusion = get_confusion_matrix(pred, gt)
    precision, recall, accuracy = (
        float(compute_confusion_matrix_metric(name, confusion).item())
        for name in ("precision", "sensitivity", "accuracy")
    )
    if prediction.any() and truth.any():
        hd95 = float(compute_hausdorff_distance(pred, gt, percentile=95, spacing=spacing).item())
    else:
        hd95 = math.nan
    return {
        "dice": dice,
        "iou": iou,
        "jaccard_thresholded": iou if iou >= jaccard_threshold else 0.0,
        "precision": 1.0 if both_empty else 0.0 if not prediction.any() else precision,
        "recall": 1.0 if both_empty else recall,
        "accuracy": accuracy,
        "hd95": hd95,
    }


def dice_score(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty); cheap, for post-processing selection."""
    pred, gt = prediction > 0, truth > 0
    total = int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, gt).sum()) / total


def volume_metrics(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Dice, IoU, HD95 and average surface distance in mm, and volumes (ml) for one class of one scan.

    Args:
        prediction: boolean mask on the scan's voxel grid.
        truth: boolean reference mask, same grid.
        spacing: voxel size in mm along each array axis.
    """
    from monai.metrics import compute_average_surface_distance

    base = case_metrics(prediction, truth, spacing=spacing)
    pred, gt = _as_batch(prediction > 0), _as_batch(truth > 0)
    if prediction.any() and truth.any():
        asd = float(compute_average_surface_distance(pred, gt, symmetric=True, spacing=spacing).item())
    else:
        asd = math.nan
    voxel_ml = float(np.prod(spacing)) / 1000.0
    volume_pred, volume_true = float(prediction.sum()) * voxel_ml, float(truth.sum()) * voxel_ml
    return {
        "dice": base["dice"],
        "iou": base["iou"],
        "hd95_mm": base["hd95"],
        "asd_mm": asd,
        "volume_pred_ml": volume_pred,
        "volume_true_ml": volume_true,
        "volume_error_pct": 100.0 * (volume_pred - volume_true) / volume_true if volume_true else math.nan,
    }


def mean_ci95(values: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The 95 % percentile-bootstrap interval of the mean over cases (SciPy; seeded, so a summary repeats); the
    value itself where fewer than two cases or all equal."""
    if values.size < 2 or np.ptp(values) == 0:
        value = float(values.mean()) if values.size else math.nan
        return value, value
    from scipy.stats import bootstrap

    interval = bootstrap(
        (values,), np.mean, n_resamples=resamples, method="percentile", rng=np.random.default_rng(seed)
    ).confidence_interval
    return float(interval.low), float(interval.high)


def summarise(rows: Sequence[dict[str, float]], names: Sequence[str] = METRIC_NAMES) -> dict[str, dict[str, float]]:
    """Mean (with its 95 % bootstrap interval over cases), standard deviation and median of each metric over cases
    (NaNs ignored, counted)."""
    summary = {}
    for name in names:
        values = np.array([row[name] for row in rows], dtype=float)
        finite = values[np.isfinite(values)]
        low, high = mean_ci95(finite)
        summary[name] = {
            "mean": float(finite.mean()) if finite.size else math.nan,
            "ci95": [low, high],
            "std": float(finite.std()) if finite.size else math.nan,
            "median": float(np.median(finite)) if finite.size else math.nan,
            "n": int(finite.size),
        }
    return summary


def confusion_matrix(
    prediction: np.ndarray, truth: np.ndarray, classes: int, valid: np.ndarray | None = None
) -> np.ndarray:
    """(classes, classes) pixel counts, rows the true class, columns the predicted one (``valid`` pixels only)."""
    pred, true = prediction.ravel().astype(np.int64), truth.ravel().astype(np.int64)
    keep = (true < classes) & (pred < classes)
    if valid is not None:
        keep &= valid.ravel()
    return np.bincount(true[keep] * classes + pred[keep], minlength=classes * classes).reshape(classes, classes)


def semantic_scores(matrix: np.ndarray) -> dict[str, object]:
    """The semantic-segmentation scores of a confusion matrix (FCN paper's definitions): pixel accuracy, mean pixel
    accuracy (mean per-class recall), mean IoU, frequency-weighted IoU, and per-class IoU and Dice (classes absent
    from both truth and prediction are left out of the means)."""
    matrix = matrix.astype(np.float64)
    true, predicted, hits = matrix.sum(axis=1), matrix.sum(axis=0), np.diag(matrix)
    union = true + predicted - hits
    present = union > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, hits / union, np.nan)
        dice = np.where(present, 2 * hits / (true + predicted), np.nan)
        recall = np.where(true > 0, hits / true, np.nan)
    frequency = true / true.sum() if true.sum() else true
    return {
        "pixel_accuracy": float(hits.sum() / matrix.sum()) if matrix.sum() else math.nan,
        "mean_pixel_accuracy": float(np.nanmean(recall)) if np.isfinite(recall).any() else math.nan,
        "miou": float(np.nanmean(iou)) if present.any() else math.nan,
        "fwiou": float(np.nansum(frequency * np.nan_to_num(iou))),
        "iou": [None if np.isnan(v) else float(v) for v in iou],
        "dice": [None if np.isnan(v) else float(v) for v in dice],
    }

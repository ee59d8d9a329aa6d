"""Metrics on masks whose values are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.evaluation.metrics import case_metrics, dice_score, summarise


def _square(top: int, left: int, size: int, shape: tuple[int, int] = (20, 20)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_half_overlap_values() -> None:
    truth = _square(2, 2, 8)  # 64 px
    prediction = np.zeros_like(truth)
    prediction[2:10, 2:6] = True  # left half: 32 px, all inside the truth
    m = case_metrics(prediction, truth)
    assert m["dice"] == pytest.approx(2 * 32 / 96)
    assert m["iou"] == pytest.approx(0.5)
    assert m["jaccard_thresholded"] == 0.0  # 0.5 < 0.65
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(1 - 32 / 400)
    assert m["hd95"] == pytest.approx(4.0)


def test_thresholded_jaccard_keeps_values_above_threshold() -> None:
    truth = _square(0, 0, 10)
    prediction = truth.copy()
    prediction[0, :] = False  # IoU 0.9
    m = case_metrics(prediction, truth)
    assert m["iou"] == pytest.approx(0.9) and m["jaccard_thresholded"] == pytest.approx(0.9)


def test_hd95_honours_spacing() -> None:
    truth = _square(5, 5, 4)
    shifted = _square(5, 8, 4)
    assert case_metrics(shifted, truth)["hd95"] == pytest.approx(3.0)
    assert case_metrics(shifted, truth, spacing=(1.0, 2.0))["hd95"] == pytest.approx(6.0)


def test_empty_cases() -> None:
    empty = np.zeros((8, 8), bool)
    both = case_metrics(empty, empty)
    assert both["dice"] == 1.0 and both["iou"] == 1.0 and math.isnan(both["hd95"])
    missed = case_metrics(empty, _square(1, 1, 3, (8, 8)))
    assert missed["dice"] == 0.0 and missed["precision"] == 0.0 and missed["recall"] == 0.0
    assert math.isnan(missed["hd95"])


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        case_metrics(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


def test_dice_score_matches_case_metrics() -> None:
    a, b = _square(0, 0, 6), _square(2, 2, 6)
    assert dice_score(a, b) == pytest.approx(case_metrics(a, b)["dice"])


def test_summary_ignores_nan_and_counts() -> None:
    rows = [
        {
            "dice": 1.0,
            "iou": 1.0,
            "jaccard_thresholded": 1.0,
            "precision": 1.0,
            "recall": 1.0,
            "accuracy": 1.0,
            "hd95": math.nan,
        },
        {
            "dice": 0.5,
            "iou": 0.5,
            "jaccard_thresholded": 0.0,
            "precision": 1.0,
            "recall": 0.5,
            "accuracy": 0.9,
            "hd95": 4.0,
        },
    ]
    summary = summarise(rows)
    assert summary["dice"]["mean"] == pytest.approx(0.75) and summary["dice"]["n"] == 2
    assert summary["hd95"]["mean"] == pytest.approx(4.0) and summary["hd95"]["n"] == 1
    assert summary["dice"]["ci95"] == [pytest.approx(0.5), pytest.approx(1.0)]  # two cases: resamples of 0.5 and 1
    assert summary["hd95"]["ci95"] == [4.0, 4.0]  # one case: no interval


def test_the_mean_interval_narrows_with_the_number_of_cases() -> None:
    from medseg.evaluation.metrics import mean_ci95

    rng = np.random.default_rng(0)
    few, many = rng.normal(0.9, 0.03, 30), rng.normal(0.9, 0.03, 480)
    (low_few, high_few), (low_many, high_many) = mean_ci95(few), mean_ci95(many)
    assert low_few < few.mean() < high_few and low_many < many.mean() < high_many
    # near the normal-theory width 2 * 1.96 * sd / sqrt(n): ~0.02 for 30 cases, a quarter of that for 16 times as many
    for values, (low, high) in ((few, (low_few, high_few)), (many, (low_many, high_many))):
        assert high - low == pytest.approx(2 * 1.96 * values.std() / np.sqrt(values.size), rel=0.15)
    assert mean_ci95(few) == mean_ci95(few)  # seeded: a summary repeats


def test_semantic_scores_equal_hand_computed_values_on_a_3x3_confusion_matrix() -> None:
    from medseg.evaluation.metrics import confusion_matrix, semantic_scores

    matrix = np.array([[50, 2, 3], [4, 30, 1], [0, 5, 10]])  # rows true, columns predicted
    scores = semantic_scores(matrix)
    assert scores["pixel_accuracy"] == pytest.approx(90 / 105)
    assert scores["mean_pixel_accuracy"] == pytest.approx((50 / 55 + 30 / 35 + 10 / 15) / 3)
    ious = [50 / (55 + 54 - 50), 30 / (35 + 37 - 30), 10 / (15 + 14 - 10)]
    assert scores["iou"] == pytest.approx(ious)
    assert scores["miou"] == pytest.approx(sum(ious) / 3)
    assert scores["fwiou"] == pytest.approx((55 * ious[0] + 35 * ious[1] + 15 * ious[2]) / 105)
    assert scores["dice"] == pytest.approx([100 / 109, 60 / 72, 20 / 29])
    truth = np.array([[0, 0, 1], [2, 2, 255]])
    prediction = np.array([[0, 1, 1], [2, 0, 2]])
    counted = confusion_matrix(prediction, truth, 3, valid=truth != 255)
    assert counted.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    absent = semantic_scores(np.array([[5, 0], [0, 0]]))  # a class in neither truth nor prediction: left out
    assert absent["miou"] == 1.0 and absent["iou"] == [1.0, None]


def test_multiclass_synthetic_masks_are_exact_classes() -> None:
    from medseg.data.synthetic import MULTICLASS_LABELS, synthesize_case

    image, labels = synthesize_case(np.random.default_rng(3), (96, 128), multiclass=True)
    _, lesion = synthesize_case(np.random.default_rng(3), (96, 128))
    assert image.shape == (96, 128, 3) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= set(MULTICLASS_LABELS) | {0}
    assert ((labels == 1) <= lesion).all()  # lesion pixels are the binary lesion's, less what hair or ruler covers
    assert (image[labels == 3] < 60).all()  # ruler ticks are dark

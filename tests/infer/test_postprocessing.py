"""Post-processing on tiny arrays, and its selection on validation data."""

from __future__ import annotations

import numpy as np

from medseg.config.schema import PostprocessingConfig
from medseg.evaluation.metrics import dice_score
from medseg.infer.postprocessing import apply_steps, enabled_steps, select_steps

CFG = PostprocessingConfig(min_size=3, radius=1)


def test_largest_component_keeps_the_biggest_blob() -> None:
    labels = np.array([[1, 1, 0, 0, 1, 0]], dtype=np.uint8)  # six voxels, blobs of 2 and 1
    np.testing.assert_array_equal(apply_steps(labels, ["largest_component"], CFG), [[1, 1, 0, 0, 0, 0]])


def test_fill_holes_fills_an_enclosed_hole_only() -> None:
    ring = np.ones((5, 5), np.uint8)
    ring[2, 2] = 0
    ring[0, 4] = 0  # touches the border: not a hole
    out = apply_steps(ring, ["fill_holes"], CFG)
    assert out[2, 2] == 1 and out[0, 4] == 0


def test_remove_small_objects_uses_min_size() -> None:
    labels = np.zeros((6, 6), np.uint8)
    labels[0, 0:2] = 1  # 2 pixels < 3: removed
    labels[3:5, 3:5] = 1  # 4 pixels: kept
    out = apply_steps(labels, ["remove_small_objects"], CFG)
    assert out[0, 0] == 0 and out[3:5, 3:5].all() and out.sum() == 4


def test_opening_removes_a_thin_spur_and_closing_bridges_a_gap() -> None:
    square = np.zeros((9, 12), np.uint8)
    square[2:7, 2:7] = 1
    square[4, 7:11] = 1  # one-pixel-wide spur
    opened = apply_steps(square, ["opening"], CFG)
    assert opened[4, 9] == 0 and opened[4, 4] == 1
    gap = np.zeros((7, 9), np.uint8)
    gap[2:5, 1:4] = 1
    gap[2:5, 5:8] = 1
    assert apply_steps(gap, ["closing"], CFG)[3, 4] == 1


def test_steps_apply_per_label_in_a_multiclass_map() -> None:
    labels = np.zeros((1, 10), np.uint8)
    labels[0, [0, 1, 3]] = 1
    labels[0, [6, 8, 9]] = 2
    out = apply_steps(labels, ["largest_component"], CFG)
    np.testing.assert_array_equal(out, [[1, 1, 0, 0, 0, 0, 0, 0, 2, 2]])


def test_3d_masks_are_supported() -> None:
    volume = np.zeros((4, 4, 4), np.uint8)
    volume[0, 0, 0] = 1
    volume[2:4, 2:4, 2:4] = 1
    assert apply_steps(volume, ["largest_component"], CFG).sum() == 8


def test_auto_selection_keeps_only_steps_that_raise_dice() -> None:
    truth = np.zeros((20, 20), bool)
    truth[5:15, 5:15] = True
    prediction = truth.copy().astype(np.uint8)
    prediction[0:2, 0:2] = 1  # a spurious blob: largest_component / remove_small_objects help
    prediction[9, 9] = 0  # a hole: fill_holes helps
    cfg = PostprocessingConfig(min_size=5, opening=True, radius=4)
    steps, scores = select_steps([prediction], [truth], cfg, dice_score)
    assert steps == ["fill_holes", "largest_component"]
    assert scores["none"] < scores["fill_holes"] < scores["largest_component"] == 1.0
    assert "opening" in scores and "opening" not in steps  # radius 4 erodes the square's corners: rejected


def test_enabled_steps_follow_the_fixed_order() -> None:
    cfg = PostprocessingConfig(fill_holes=False, closing=True)
    assert enabled_steps(cfg) == ["largest_component", "remove_small_objects", "closing"]

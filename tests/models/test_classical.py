"""Classical baselines (Otsu, watershed, k-means) as models: they segment a dark blob on light skin, are fitted by
grid search in the train stage, and evaluate and predict through the same pipeline as a network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.evaluation.metrics import dice_score
from medseg.models.classical import METHODS, ClassicalSegmenter, fit_classical, segment
from medseg.models.registry import build_network
from tests.helpers.data import tiny_overrides
from tests.helpers.paths import REPO


def dark_blob(seed: int, size: tuple[int, int] = (96, 128)) -> tuple[np.ndarray, np.ndarray]:
    """A (3, H, W) [0, 1] image: light, slightly noisy skin with a dark, soft-edged ellipse; and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    cy, cx = rng.uniform(0.35, 0.65) * size[0], rng.uniform(0.35, 0.65) * size[1]
    ry, rx = rng.uniform(0.15, 0.3) * size[0], rng.uniform(0.15, 0.3) * size[1]
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    skin = np.array([0.85, 0.68, 0.6])[:, None, None] + rng.normal(0, 0.02, (3, *size))
    lesion = np.array([0.45, 0.3, 0.25])[:, None, None] + rng.normal(0, 0.02, (3, *size))
    image = np.where(mask[None], lesion, skin)
    return np.clip(image, 0, 1).astype(np.float32), mask


@pytest.mark.parametrize("method", METHODS)
def test_each_baseline_segments_a_dark_blob_on_light_skin(method: str) -> None:
    model = build_network(method, 2, 3, 1, {})
    batches = [(np.stack([dark_blob(s)[0] for s in (1, 2)]), np.stack([dark_blob(s)[1] for s in (1, 2)]))]
    best, tried = fit_classical(model, batches)
    assert len(tried) > 4 and model.params == {**best, **{k: float(v) for k, v in best.items() if k != "channel"}}
    image, mask = dark_blob(7)
    logits = model(torch.as_tensor(image)[None])
    assert logits.shape == (1, 1, 96, 128)
    assert dice_score(logits[0, 0].numpy() > 0, mask) >= 0.9
    reloaded = build_network(method, 2, 3, 1, {})
    reloaded.load_state_dict(model.state_dict())  # the fitted parameters travel in the checkpoint
    assert reloaded.params == model.params


def test_bad_classical_arguments_are_named() -> None:
    from medseg.core.errors import ConfigError

    with pytest.raises(ConfigError, match="otsu takes channel, sigma, opening; not clusters"):
        build_network("otsu", 2, 3, 1, {"clusters": 3})
    with pytest.raises(ConfigError, match="a binary 2D baseline"):
        build_network("kmeans", 3, 1, 1, {})
    assert not segment(np.full((3, 8, 8), 0.5, np.float32), "otsu", ClassicalSegmenter("otsu").params).any()


@pytest.mark.slow
def test_a_baseline_runs_the_whole_pipeline(tiny_dataset: Path, tmp_path: Path) -> None:
    from medseg.config.loading import load_config
    from medseg.infer.predictor import Predictor
    from medseg.pipeline.run import run_pipeline

    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", tiny_overrides(tmp_path, tiny_dataset))
    cfg = cfg.with_values({"model.name": "otsu", "model.args": {}})  # --set merges mappings: the UNet's args stay
    result = run_pipeline(cfg, run_name="otsu")
    assert {"test_dice", "test_jaccard_thresholded", "test_hd95"} <= set(result.metrics)
    assert result.metrics["test_dice"] > 0.5
    metrics = result.metrics  # the mean's 95 % bootstrap interval over the test cases
    assert metrics["test_dice_ci95_low"] <= metrics["test_dice"] <= metrics["test_dice_ci95_high"]
    grid = json.loads((result.run_dir / "model" / "grid_search.json").read_text())
    assert len(grid) == 18 and all("train_dice" in row for row in grid)
    assert len(list((result.run_dir / "predictions" / "masks").glob("*.png"))) >= 1
    assert Predictor.from_model(result.run_dir).network.method == "otsu"

"""The Python API for notebooks and scripts: ``import medseg`` -> load_config, run_pipeline, Predictor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.data import tiny_overrides
from tests.helpers.paths import REPO


@pytest.mark.slow
def test_train_and_predict_through_the_public_api_alone(tmp_path: Path, tiny_dataset: Path) -> None:
    import medseg

    cfg = medseg.load_config(REPO / "pipelines" / "skin_lesion.yaml", tiny_overrides(tmp_path, tiny_dataset))
    result = medseg.run_pipeline(cfg, run_name="api")
    predictor = medseg.Predictor.from_model(result.run_dir)

    case = json.loads((tmp_path / "splits.json").read_text(encoding="utf-8"))["test"][0]
    image = tiny_dataset / "images" / f"{case}.png"
    segmentation = predictor.predict(image)
    assert isinstance(segmentation, medseg.Segmentation)
    assert segmentation.labels.shape == (64, 96) and segmentation.labels.dtype == np.uint8
    assert segmentation.header is None and segmentation.probabilities is None  # 2D: the image's own size is all
    written = np.asarray(Image.open(result.run_dir / "predictions" / "masks" / f"{case}.png")) > 0
    np.testing.assert_array_equal(segmentation.labels > 0, written)  # what the predict stage wrote

    pixels = np.asarray(Image.open(image).convert("RGB"))
    from_array = predictor.predict(pixels, probabilities=True)
    np.testing.assert_array_equal(from_array.labels, segmentation.labels)
    assert from_array.probabilities.shape == (1, 64, 96)

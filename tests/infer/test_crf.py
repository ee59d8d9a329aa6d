"""Dense-CRF refinement (medseg.infer.crf): a boundary pulled onto the image's colour edge, its choice on validation,
the configurations it refuses and the message when pydensecrf2 is missing; a tiny 2D run that applies it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from medseg.config.schema import PostprocessingConfig
from medseg.core.errors import ConfigError
from medseg.evaluation.metrics import dice_score
from medseg.infer.postprocessing import (
    DENSE_CRF,
    apply_steps,
    choose_postprocessing,
    enabled_steps,
    runs_dense_crf,
    select_steps,
)
from medseg.labels import LabelScheme
from tests.helpers.data import tiny_overrides
from tests.helpers.paths import REPO

try:
    import pydensecrf.densecrf  # noqa: F401

    MISSING = ""
except ImportError:
    MISSING = "pydensecrf2 (the crf extra) is not installed: it needs a C++ compiler to build"

needs_crf = pytest.mark.skipif(bool(MISSING), reason=MISSING)
CFG = PostprocessingConfig(dense_crf=True)


def lesion_on_skin(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An RGB image whose dark ellipse is the truth, and a blurred, shifted, noisy probability map of it (1, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :128]
    truth = ((yy - 45) / 30) ** 2 + ((xx - 60) / 40) ** 2 < 1
    colour = np.where(truth[..., None], [150, 80, 50], [220, 180, 160]) + rng.normal(0, 8, (96, 128, 3))
    image = np.clip(colour, 0, 255).astype(np.uint8)
    blurred = np.roll(ndimage.gaussian_filter(truth.astype(float), 6), 5, axis=1)
    probability = np.clip(0.15 + 0.7 * blurred + rng.normal(0, 0.15, truth.shape), 0.01, 0.99)
    return image, probability[None].astype(np.float32), truth


@needs_crf
def test_crf_pulls_a_blurred_shifted_boundary_onto_the_colour_edge() -> None:
    from medseg.infer.crf import dense_crf

    image, probability, truth = lesion_on_skin()
    before = dice_score(probability[0] > 0.5, truth)
    refined = dense_crf(probability, image, CFG)
    assert refined.shape == probability.shape and refined.min() >= 0 and refined.max() <= 1
    after = dice_score(refined[0] > 0.5, truth)
    assert before < 0.9 and after > before + 0.08 and after > 0.97
    two_classes = dense_crf(np.concatenate([1 - probability, probability]), image, CFG)  # softmax channels
    assert dice_score(two_classes.argmax(0) == 1, truth) > before + 0.08
    np.testing.assert_allclose(two_classes.sum(0), 1.0, atol=1e-4)


@needs_crf
def test_crf_parameters_change_the_result() -> None:
    from medseg.infer.crf import dense_crf

    image, probability, _ = lesion_on_skin()
    weak = PostprocessingConfig(dense_crf=True, crf_iterations=1, crf_bilateral_compat=0.1, crf_gaussian_compat=0.1)
    assert not np.allclose(dense_crf(probability, image, weak), dense_crf(probability, image, CFG), atol=1e-3)


def test_image_and_probabilities_must_share_a_grid() -> None:
    pytest.importorskip("pydensecrf.densecrf", reason=MISSING)
    from medseg.infer.crf import dense_crf

    image, probability, _ = lesion_on_skin()
    with pytest.raises(ValueError, match="does not match"):
        dense_crf(probability, image.transpose(1, 0, 2), CFG)


def _maps(shift: int) -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((20, 20), np.uint8)
    truth[5:15, 5:15] = 1
    return np.roll(truth, shift, axis=1), truth


def test_auto_keeps_the_crf_where_it_raises_validation_dice_and_tries_mask_steps_after_it() -> None:
    raw, truth = _maps(3)
    refined, _ = _maps(0)
    refined[0, 0] = 1  # a speck largest_component removes, tried on the CRF's maps
    steps, scores = select_steps([raw], [truth], CFG, dice_score, [refined])
    assert steps == [DENSE_CRF, "largest_component"]
    assert scores["none"] == pytest.approx(0.7) and scores["none"] < scores[DENSE_CRF] < scores["largest_component"]
    assert scores["largest_component"] == 1.0


def test_auto_drops_the_crf_where_it_lowers_validation_dice() -> None:
    raw, truth = _maps(0)
    worse, _ = _maps(4)
    steps, scores = select_steps([raw], [truth], CFG, dice_score, [worse])
    assert DENSE_CRF not in steps and scores[DENSE_CRF] == pytest.approx(0.6) and scores["none"] == 1.0


def test_the_choice_records_the_crf_parameters_and_on_forces_it() -> None:
    raw, truth = _maps(3)
    refined, _ = _maps(0)
    scheme = LabelScheme(1)
    auto = choose_postprocessing([raw], [truth], CFG, scheme, [refined])
    assert auto["steps"][0] == DENSE_CRF and auto["candidates"][0] == DENSE_CRF
    assert auto["crf"] == {
        "crf_iterations": 5,
        "crf_gaussian_sxy": 3.0,
        "crf_gaussian_compat": 3.0,
        "crf_bilateral_sxy": 80.0,
        "crf_bilateral_srgb": 13.0,
        "crf_bilateral_compat": 10.0,
    }
    without_images = choose_postprocessing([raw], [truth], CFG, scheme)  # out-of-fold maps keep no images
    assert DENSE_CRF not in without_images["steps"] and DENSE_CRF not in without_images["scores"]
    forced = choose_postprocessing([], [], CFG.model_copy(update={"mode": "on"}), scheme)
    assert forced["steps"] == enabled_steps(CFG) and forced["steps"][0] == DENSE_CRF
    off = choose_postprocessing([], [], PostprocessingConfig(mode="off"), scheme)
    assert "crf" not in off and DENSE_CRF not in off["candidates"]


def test_mask_steps_pass_over_the_crf() -> None:
    labels = np.array([[1, 1, 0, 0, 1, 0]], np.uint8)
    out = apply_steps(labels, [DENSE_CRF, "largest_component"], CFG)
    np.testing.assert_array_equal(out, [[1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(apply_steps(labels, [DENSE_CRF], CFG), labels)


@pytest.mark.parametrize(
    ("pipeline", "overrides", "why"),
    [
        ("ct_liver.yaml", [], "spatial_dims 3 with 1 channel(s)"),
        ("skin_lesion.yaml", ["model.in_channels=1"], "spatial_dims 2 with 1 channel(s)"),
    ],
)
def test_dense_crf_needs_2d_rgb_one_line_exit_2(tmp_path: Path, pipeline: str, overrides: list[str], why: str) -> None:
    from medseg.cli.app import app

    sets = [arg for o in ["postprocessing.dense_crf=true", *overrides] for arg in ("--set", o)]
    result = CliRunner().invoke(app, ["validate", str(REPO / "pipelines" / pipeline), *sets])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "postprocessing.dense_crf" in lines[0] and why in lines[0], result.output


def test_missing_package_names_the_extra_before_a_run_folder_is_made(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medseg.config.loading import load_config
    from medseg.infer.crf import require_dense_crf
    from medseg.pipeline.run import run_pipeline

    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # import pydensecrf raises ImportError
    with pytest.raises(ConfigError) as info:
        require_dense_crf()
    message = str(info.value)
    assert message.startswith("postprocessing.dense_crf: pydensecrf2 is not installed") and "'.[crf]'" in message
    cfg = load_config(
        REPO / "pipelines" / "skin_lesion.yaml",
        [*tiny_overrides(tmp_path, tiny_dataset), "postprocessing.dense_crf=true"],
    )
    with pytest.raises(ConfigError, match=r"install the crf extra"):
        run_pipeline(cfg, run_name="crf")
    assert not (tmp_path / "runs" / "skin_lesion" / "crf").exists()
    assert runs_dense_crf(cfg.postprocessing)
    assert not runs_dense_crf(cfg.with_values({"postprocessing.mode": "off"}).postprocessing)  # off: not needed


def tiny_crf_run(tmp_path: Path, dataset: Path, mode: str):
    """A one-epoch 2D run with the dense CRF a candidate (no MLflow store, no backend timing: fast)."""
    from medseg.config.loading import load_config
    from medseg.pipeline.run import run_pipeline

    overrides = [
        *tiny_overrides(tmp_path, dataset),
        "training.epochs=1",
        "tracking.enabled=false",
        "inference.backend=torch",
        "postprocessing.dense_crf=true",
        f"postprocessing.mode={mode}",
    ]
    return run_pipeline(load_config(REPO / "pipelines" / "skin_lesion.yaml", overrides), run_name="crf")


@needs_crf
def test_a_tiny_2d_run_applies_the_crf_it_is_told_to(tmp_path: Path, tiny_dataset: Path) -> None:
    from medseg.infer.predictor import Predictor

    result = tiny_crf_run(tmp_path, tiny_dataset, "on")
    choice = json.loads((result.run_dir / "model" / "postprocessing.json").read_text(encoding="utf-8"))
    assert choice["steps"][0] == DENSE_CRF and choice["crf"]["crf_bilateral_sxy"] == 80.0
    summary = json.loads((result.run_dir / "evaluation" / "summary.json").read_text(encoding="utf-8"))
    assert summary["postprocessing_steps"][0] == DENSE_CRF and 0.0 <= summary["postprocessed"]["dice"]["mean"] <= 1
    masks = sorted((result.run_dir / "predictions" / "masks").glob("*.png"))
    assert masks, "the predict stage wrote masks"

    predictor = Predictor.from_model(result.run_dir)  # the saved choice replayed: CRF on the image's own grid
    image = sorted((tiny_dataset / "images").glob("*.png"))[0]
    segmentation = predictor.predict(image, probabilities=True)
    height, width = np.asarray(Image.open(image)).shape[:2]
    assert height != width, "a non-square image: the CRF's image and probabilities share its (H, W) grid"
    assert predictor.steps[0] == DENSE_CRF and segmentation.labels.shape == segmentation.raw.shape == (height, width)
    assert segmentation.probabilities.shape == (1, height, width)


@needs_crf
@pytest.mark.slow
def test_a_tiny_2d_run_in_auto_mode_scores_the_crf_on_the_validation_images(tmp_path: Path, tiny_dataset: Path) -> None:
    result = tiny_crf_run(tmp_path, tiny_dataset, "auto")
    choice = json.loads((result.run_dir / "model" / "postprocessing.json").read_text(encoding="utf-8"))
    assert choice["candidates"][0] == DENSE_CRF and choice["crf"]["crf_iterations"] == 5
    assert set(choice["scores"]) >= {"none", DENSE_CRF, "fill_holes"}
    kept = choice["scores"][DENSE_CRF] > choice["scores"]["none"] + 1e-4
    assert (DENSE_CRF in choice["steps"]) == kept
    summary = json.loads((result.run_dir / "evaluation" / "summary.json").read_text(encoding="utf-8"))
    assert summary["postprocessing_steps"] == choice["steps"]

"""Models written by earlier medseg code keep working: a checkpoint and an ONNX export made before the code moved into
folders per stage (tests/fixtures/legacy_2d/MAKING.md) load and predict the masks that code predicted, and stored
configuration keys this schema no longer has are ignored with one warning naming them."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.paths import REPO

LEGACY = REPO / "tests" / "fixtures" / "legacy_2d"
CASES = ("synth_000", "synth_001")


def _masks(predictor, images: Path) -> dict[str, np.ndarray]:
    return {case: predictor.predict(images / f"{case}.png").labels for case in CASES}


def _expected(backend: str) -> dict[str, np.ndarray]:
    return {case: np.asarray(Image.open(LEGACY / "expected" / backend / f"{case}.png")) > 0 for case in CASES}


@pytest.mark.parametrize(
    ("model", "backend"), [(".", "torch"), ("model", "torch"), ("model/best.pt", "torch"), ("model.onnx", "onnx")]
)
def test_a_model_from_before_the_move_predicts_the_same_masks(model: str, backend: str) -> None:
    """From a run folder, its model folder, the checkpoint and the ONNX export: no PipelineConfig built here."""
    from medseg.infer.predictor import Predictor

    predictor = Predictor.from_model(LEGACY / model, backend="torch" if backend == "torch" else None, tta=False)
    got, expected = _masks(predictor, LEGACY / "images"), _expected(backend)
    for case in CASES:
        assert got[case].shape == expected[case].shape == (64, 96)
        assert 0.2 < expected[case].mean() < 0.8  # a real mask, not all one value
        np.testing.assert_array_equal(got[case] > 0, expected[case], err_msg=case)


def test_stored_keys_the_schema_no_longer_has_are_ignored_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from medseg.infer.predictor import Predictor
    from medseg.models.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(LEGACY / "model" / "best.pt")
    state["config"]["training"]["retired_option"] = 3
    state["config"]["data"]["labels"]["1"]["retired_field"] = "x"
    state["config"]["retired_section"] = {"a": 1}
    (tmp_path / "model").mkdir()
    save_checkpoint(tmp_path / "model" / "best.pt", state)
    shutil.copy(LEGACY / "model" / "postprocessing.json", tmp_path / "model")
    with caplog.at_level(logging.WARNING, logger="medseg"):
        predictor = Predictor.from_model(tmp_path / "model" / "best.pt", backend="torch", tta=False)
    warnings = [r.getMessage() for r in caplog.records if "stored configuration keys" in r.getMessage()]
    assert len(warnings) == 1
    assert all(
        key in warnings[0] for key in ("training.retired_option", "data.labels.1.retired_field", "retired_section")
    )
    got, expected = _masks(predictor, LEGACY / "images"), _expected("torch")
    for case in CASES:
        np.testing.assert_array_equal(got[case] > 0, expected[case])


def test_an_invalid_stored_value_is_still_an_error(tmp_path: Path) -> None:
    from medseg.core.errors import ModelError
    from medseg.infer.predictor import Predictor
    from medseg.models.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(LEGACY / "model" / "best.pt")
    state["config"]["training"]["epochs"] = -1
    state["config"]["training"]["retired_option"] = 3
    save_checkpoint(tmp_path / "best.pt", state)
    with pytest.raises(ModelError, match=r"best.pt: the configuration stored with the model is invalid"):
        Predictor.from_model(tmp_path / "best.pt", backend="torch")
    assert torch.load(tmp_path / "best.pt", weights_only=True)["config"]["training"]["epochs"] == -1  # input kept


def test_each_model_file_has_one_source() -> None:
    from medseg.infer.sources import SOURCES, resolve_model, source_kind

    kinds = {name: source_kind(resolve_model(LEGACY / name)) for name in (".", "model/best.pt", "model.onnx")}
    assert kinds == {".": "checkpoint", "model/best.pt": "checkpoint", "model.onnx": "exported"}
    assert set(SOURCES) == {"checkpoint", "exported", "ensemble", "exported_ensemble", "plan"}

"""OpenVINO: fp32 IR export with parity, ``inference.backend: openvino``, and int8 (NNCF) calibrated on the run's
training cases and gated on its validation cases."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medseg.cli.app import app
from medseg.config.loading import load_config
from medseg.config.schema import PipelineConfig
from medseg.core.errors import ConfigError, ModelError
from medseg.infer import export as export_module
from medseg.infer.backends import OpenVinoNetwork, read_exported
from medseg.infer.export import export_model
from medseg.infer.predictor import Predictor
from tests.helpers.data import tiny_overrides
from tests.infer.test_export import ARGS, _checkpoint

pytest.importorskip("openvino", reason="OpenVINO is not installed (the openvino extra)")
pytest.importorskip("nncf", reason="NNCF is not installed (the openvino extra)")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def model_2d(tmp_path: Path) -> Path:
    cfg = PipelineConfig(name="t2d", preprocessing={"spatial_size": [64, 64]}, model={"args": ARGS})
    return _checkpoint(tmp_path / "run2d", cfg, ["fill_holes"])


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2D UNet trained for 25 epochs on a synthetic set that stays where its config says (for int8)."""
    from medseg.data.synthetic import generate_dermoscopy_dataset
    from medseg.pipeline.run import run_pipeline

    tmp = tmp_path_factory.mktemp("int8")
    data = generate_dermoscopy_dataset(tmp / "tiny", num_cases=12, image_size=(64, 96), seed=3)
    overrides = [
        *tiny_overrides(tmp, data),
        "training.epochs=25",
        "training.early_stopping_patience=null",
        "stages=[train]",
        "tracking.enabled=false",
        "seed=3",
    ]
    return run_pipeline(load_config(REPO / "pipelines" / "skin_lesion.yaml", overrides), run_name="int8").run_dir


def test_fp32_ir_reproduces_the_network_and_carries_its_metadata(model_2d: Path, image: Path) -> None:
    result = export_model(model_2d.parent.parent, "openvino")
    assert result.path == model_2d.parent / "model.xml"
    assert result.path.with_suffix(".bin").is_file()
    assert result.parity.passed and result.parity.max_abs_logit_difference < 1e-4
    assert not list(model_2d.parent.glob(".model*")), "no staged file left"

    network, metadata = read_exported(result.path)
    assert isinstance(network, OpenVinoNetwork)
    assert metadata["postprocessing"] == ["fill_holes"] and metadata["network"]["args"] == ARGS
    reference, exported = Predictor.from_model(model_2d, backend="torch"), Predictor.from_model(result.path)
    assert exported.steps == ["fill_holes"]
    np.testing.assert_allclose(exported.probabilities(image), reference.probabilities(image), atol=1e-5)
    # the weights stay fp32 (save_model would write fp16 by default): the .bin holds 4 bytes per parameter
    parameters = sum(t.numel() for t in reference.network.state_dict().values() if t.is_floating_point())
    assert result.path.with_suffix(".bin").stat().st_size >= 4 * parameters * 0.95


def test_openvino_backend_runs_the_checkpoint_in_fp32(model_2d: Path, image: Path) -> None:
    ours = Predictor.from_model(model_2d, backend="torch")
    theirs = Predictor.from_model(model_2d, backend="openvino")
    assert isinstance(theirs.runtime, OpenVinoNetwork) and theirs.backend.label == "openvino"
    np.testing.assert_allclose(theirs.probabilities(image), ours.probabilities(image), atol=1e-5)
    # one compiled model per input shape it meets
    assert list(theirs.runtime.requests) == [(1, 3, 64, 64)]


def test_int8_is_calibrated_on_training_cases_and_checked_on_validation_cases(trained: Path) -> None:
    result = export_model(trained, "openvino", quantize="int8")
    assert result.path == trained / "model" / "model.int8.xml"
    parity = result.parity
    splits = json.loads((trained.parent.parent.parent / "splits.json").read_text())
    assert parity.quantized == "int8" and parity.min_agreement == 0.98
    assert sorted(row["case"] for row in parity.per_case) == sorted(f"{case}.png" for case in splits["val"])
    assert parity.passed and parity.mask_dice >= 0.98
    network, metadata = read_exported(result.path)
    assert metadata["quantized"] == "int8"
    kinds = {op.get_type_name() for op in network.model.get_ops()}
    assert "FakeQuantize" in kinds or "FakeConvert" in kinds, kinds  # int8 in the graph, not only in the name
    report = json.loads(result.path.with_name("model.int8.xml.parity.json").read_text())
    assert report["passed"] and len(report["per_case"]) == len(splits["val"])
    assert report["max_abs_logit_difference"] is None  # int8 is checked on masks, not logits (valid JSON: no NaN)


def test_int8_below_the_agreement_minimum_writes_nothing(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_module, "dice_score", lambda a, b: 0.9)
    target = trained / "strict.int8.xml"
    with pytest.raises(ModelError, match=r"strict.int8.xml: the int8 model's mask agrees with fp32's at Dice 0.9000"):
        export_model(trained, "openvino", target, quantize="int8")
    assert not target.exists() and not target.with_suffix(".bin").exists()
    assert not list(trained.glob(".strict*")), "a refused export leaves no file"


def test_int8_needs_the_runs_data(tmp_path: Path) -> None:
    missing = tmp_path / "moved-away"
    cfg = PipelineConfig(
        name="t2d", data={"root": str(missing)}, preprocessing={"spatial_size": [64, 64]}, model={"args": ARGS}
    )
    model = _checkpoint(tmp_path / "run", cfg, [])
    with pytest.raises(ModelError, match=r"--quantize: calibrates on .*best.pt's training cases .*moved-away"):
        export_model(model, "openvino", quantize="int8")
    assert not list(model.parent.glob("*.xml"))


def test_cli_quantize_errors_are_one_line(model_2d: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(model_2d), "--quantize", "int8"])
    assert result.exit_code == 2
    assert result.output.startswith("error: --quantize int8 --format onnx: ONNX Runtime's static int8 ran at")
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["export", str(model_2d), "--format", "openvino", "--quantize", "int4"])
    assert result.exit_code == 2 and result.output.strip() == "error: --quantize int4: expected int8"
    result = runner.invoke(app, ["export", str(model_2d), "--format", "torchscript", "--quantize", "int8"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --quantize int8: only with --format openvino, not --format torchscript"


def test_cli_export_and_predict_with_the_ir(model_2d: Path, image: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(model_2d), "--format", "openvino"])
    assert result.exit_code == 0, result.output
    assert f"{model_2d.parent / 'model.xml'} (openvino): parity on 2 random tensors" in result.output
    out = {}
    for name, extra in (("ir", ["-m", str(model_2d.parent / "model.xml")]), ("torch", ["-m", str(model_2d)])):
        out[name] = tmp_path / name
        args = ["predict", *extra, "-i", str(image), "-o", str(out[name]), "--no-overlays"]
        result = runner.invoke(app, args + (["--backend", "torch"] if name == "torch" else []))
        assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(
        np.asarray(Image.open(out["ir"] / "masks" / "a.png")), np.asarray(Image.open(out["torch"] / "masks" / "a.png"))
    )


def test_without_openvino_the_backend_and_format_say_which_extra(
    model_2d: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(ConfigError, match=r"inference.backend: openvino: OpenVINO is not installed; .*\[openvino\]"):
        Predictor.from_model(model_2d, backend="openvino")
    with pytest.raises(ConfigError, match="--format openvino: OpenVINO is not installed"):
        export_model(model_2d, "openvino")
    assert not list(model_2d.parent.glob("*.xml"))


def test_a_pipeline_asking_for_openvino_without_it_stops_before_training(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medseg.pipeline.run import run_pipeline

    monkeypatch.setitem(sys.modules, "openvino", None)
    overrides = [*tiny_overrides(tmp_path, tiny_dataset), "inference.backend=openvino", "tracking.enabled=false"]
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", overrides)
    with pytest.raises(ConfigError, match="inference.backend: openvino: OpenVINO is not installed"):
        run_pipeline(cfg, run_name="no-openvino")
    assert not list((tmp_path / "runs").rglob("*.pt")), "nothing trained"


def test_int8_of_a_3d_network_tracks_fp32_on_its_calibration_windows(tmp_path: Path) -> None:
    import torch

    from medseg.infer.openvino_export import quantize_int8, write_openvino
    from medseg.models.registry import build_network

    torch.manual_seed(0)
    network = build_network("unet", 3, 1, 1, {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}).eval()
    rng = np.random.default_rng(0)
    windows = [rng.normal(0, 1, (1, 1, 16, 16, 16)).astype(np.float32) for _ in range(8)]
    target = tmp_path / "int8.xml"
    write_openvino(network, torch.from_numpy(windows[0]), {}, target, lambda model: quantize_int8(model, windows))
    int8 = OpenVinoNetwork(target)
    assert {op.get_type_name() for op in int8.model.get_ops()} >= {"FakeQuantize"}
    with torch.inference_mode():
        ours = np.concatenate([network(torch.from_numpy(w)).numpy().ravel() for w in windows])
    theirs = np.concatenate([int8(torch.from_numpy(w)).numpy().ravel() for w in windows])
    # dynamic spatial axes made this constant (a correlation of 0); fixed, int8 follows fp32
    assert np.corrcoef(ours, theirs)[0, 1] > 0.95

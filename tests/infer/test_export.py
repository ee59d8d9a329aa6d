"""``medseg export``: ONNX and TorchScript files that reproduce the PyTorch network and predict on their own."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medseg.cli.app import app
from medseg.config.schema import PipelineConfig
from medseg.config.settings import inference_settings
from medseg.core.errors import ModelError
from medseg.core.layout import BEST_CHECKPOINT, POSTPROCESSING_FILE
from medseg.infer import backends
from medseg.infer import export as export_module
from medseg.infer.backends import Backend, read_exported
from medseg.infer.export import export_model
from medseg.infer.predictor import Predictor
from medseg.models.checkpoint import save_checkpoint
from medseg.models.registry import build_network

ARGS = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}


def _checkpoint(folder: Path, cfg: PipelineConfig, steps: list[str]) -> Path:
    """A run's model folder: a seeded network with its config and the chosen post-processing."""
    torch.manual_seed(0)
    m = cfg.model
    network = build_network(m.name, cfg.spatial_dims, m.in_channels, m.out_channels, m.args)
    spec = {"name": m.name, "spatial_dims": cfg.spatial_dims, "in_channels": m.in_channels}
    spec |= {"out_channels": m.out_channels, "args": m.args}
    path = folder / "model" / BEST_CHECKPOINT
    save_checkpoint(path, {"state_dict": network.state_dict(), "network": spec, "config": cfg.to_dict()})
    (path.parent / POSTPROCESSING_FILE).write_text(json.dumps({"mode": "auto", "steps": steps}), encoding="utf-8")
    return path


@pytest.fixture
def model_2d(tmp_path: Path) -> Path:
    cfg = PipelineConfig(name="t2d", preprocessing={"spatial_size": [64, 64]}, model={"args": ARGS})
    return _checkpoint(tmp_path / "run2d", cfg, ["fill_holes", "largest_component"])


@pytest.fixture
def images(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    folder = tmp_path / "images"
    folder.mkdir()
    for name, (h, w) in {"a.png": (50, 70), "b.jpg": (64, 40)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_reproduces_the_network_and_predicts_the_same_masks(fmt: str, model_2d: Path, images: Path) -> None:
    result = export_model(model_2d.parent.parent, fmt)
    assert result.path == model_2d.parent / ("model.onnx" if fmt == "onnx" else "model.ts")
    parity = result.parity
    assert parity.passed and parity.cases == 2
    assert parity.max_abs_logit_difference < 1e-4
    assert parity.mask_dice == 1.0
    assert json.loads(result.path.with_name(result.path.name + ".parity.json").read_text())["passed"] is True

    _, metadata = read_exported(result.path)
    assert metadata["postprocessing"] == ["fill_holes", "largest_component"]
    assert metadata["network"]["args"] == ARGS
    reference, exported = Predictor.from_model(model_2d), Predictor.from_model(result.path)
    assert exported.steps == reference.steps  # and the config, but for the backend the reference chose by timing
    assert replace(exported.settings, inference=reference.settings.inference) == reference.settings
    for image in sorted(images.iterdir()):
        ours, theirs = reference.probabilities(image), exported.probabilities(image)
        assert theirs.shape == ours.shape
        np.testing.assert_allclose(theirs, ours, atol=1e-5)
        np.testing.assert_array_equal(exported.segment(image)[1], reference.segment(image)[1])


def test_parity_on_real_inputs_goes_through_the_whole_predictor(model_2d: Path, images: Path) -> None:
    parity = export_model(model_2d, "onnx", model_2d.parent / "m.onnx", check_inputs=images).parity
    assert [row["case"] for row in parity.per_case] == ["random-0", "random-1", "a.png", "b.jpg"]
    assert parity.inputs == "2 random tensors at the working shape and 2 inputs end to end"
    assert parity.max_abs_probability_difference < 1e-5 and parity.mask_dice == 1.0


def test_3d_onnx_predicts_the_same_mask_on_the_scan_grid(tmp_path: Path) -> None:
    cfg = PipelineConfig(
        name="t3d",
        spatial_dims=3,
        preprocessing={"spacing": [2.0, 2.0, 2.0], "intensity": {"kind": "mri"}, "patch_size": [16, 16, 16]},
        model={"in_channels": 1, "out_channels": 2, "args": ARGS},
        data={"label_mapping": {0: 0, 1: 1}},
        inference={"sw_batch_size": 2, "overlap": 0.25},
    )
    model = _checkpoint(tmp_path / "run3d", cfg, [])
    rng = np.random.default_rng(0)
    affine = np.diag([-1.5, 1.2, 2.5, 1.0])
    affine[:3, 3] = [40.0, -30.0, 12.0]
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(100, 20, (30, 26, 14)).astype(np.float32), affine), scan)

    result = export_model(model, "onnx", check_inputs=scan)
    assert [row["case"] for row in result.parity.per_case] == ["random-0", "random-1", "scan.nii.gz"]
    assert result.parity.mask_dice == 1.0
    exported = Predictor.from_model(result.path)
    reference = Predictor.from_model(model, backend="torch")
    ours, theirs = reference.probabilities([scan]), exported.probabilities([scan])
    assert theirs.shape == ours.shape == (2, 30, 26, 14)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)


def test_cli_export_then_predict_with_the_onnx_file(model_2d: Path, images: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(model_2d.parent.parent), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    onnx_file = model_2d.parent / "model.onnx"
    assert f"{onnx_file} (onnx): parity on 2 random tensors" in result.output
    assert "mask Dice 1.0000" in result.output

    for model, out in ((onnx_file, tmp_path / "onnx_out"), (model_2d, tmp_path / "torch_out")):
        result = runner.invoke(app, ["predict", "-m", str(model), "-i", str(images), "-o", str(out), "--no-overlays"])
        assert result.exit_code == 0, result.output
        assert "2 written, 0 already done, 0 failed" in result.output
    for mask in sorted((tmp_path / "torch_out" / "masks").iterdir()):
        ours = np.asarray(Image.open(mask))
        theirs = np.asarray(Image.open(tmp_path / "onnx_out" / "masks" / mask.name))
        np.testing.assert_array_equal(theirs, ours)


def test_export_errors_are_one_line_and_write_nothing(model_2d: Path, tmp_path: Path, monkeypatch) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(model_2d), "--format", "tflite"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: export format 'tflite': expected one of onnx, torchscript, openvino, bundle"

    result = runner.invoke(app, ["export", str(model_2d), "-o", str(tmp_path / "model.pt")])
    assert result.exit_code == 2 and "model.pt: a onnx export must end in .onnx" in result.output

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelError, match="garbage.onnx: not a"):
        Predictor.from_model(garbage)

    import onnx

    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 1, 1), (torch.zeros(1, 3, 8, 8),), str(plain), dynamo=False)
    assert onnx.load(str(plain)).metadata_props is not None
    with pytest.raises(ModelError, match="plain.onnx: an ONNX file without medseg metadata"):
        Predictor.from_model(plain)

    monkeypatch.setattr(export_module, "MAX_ABS_LOGIT_DIFFERENCE", -1.0)  # no export can pass
    target = tmp_path / "strict.onnx"
    with pytest.raises(ModelError, match="strict.onnx: the onnx export does not reproduce the network"):
        export_model(model_2d, "onnx", target)
    assert not target.exists() and not list(tmp_path.glob(".strict*")), "a failed export leaves no file"


ONNX_ONLY = Backend("onnxruntime")


@pytest.mark.parametrize("dims", [2, 3])
def test_backend_auto_times_every_candidate_and_keeps_the_fastest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dims: int
) -> None:
    from medseg.infer.backends import OnnxNetwork, TorchRuntime, backend_candidates

    if dims == 3:
        cfg = PipelineConfig(
            name="t3d",
            spatial_dims=3,
            preprocessing={"spacing": None, "patch_size": [16, 16, 16]},
            model={"in_channels": 1, "out_channels": 1, "args": ARGS},
        )
        scan = tmp_path / "scan.nii.gz"
        volume = np.random.default_rng(0).normal(0, 1, (20, 18, 17)).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), scan)
    else:
        cfg = PipelineConfig(name="t2d", preprocessing={"spatial_size": [32, 48]}, model={"args": ARGS})
        scan = tmp_path / "image.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(scan)
    model = _checkpoint(tmp_path / "run", cfg, [])
    chosen = Predictor.from_model(model)
    timings = chosen.backend_timings
    assert set(timings) == {"torch+contiguous", "torch+channels_last", "onnxruntime"}  # bf16 only when allowed
    fastest = backend_candidates(cfg.inference.bf16)[min(timings, key=timings.get)]
    assert chosen.backend == fastest
    assert chosen.settings.inference.backend == "auto", "the choice is returned, never written into the settings"
    expected = {"onnxruntime": OnnxNetwork, "channels_last": TorchRuntime, "contiguous": type(chosen.network)}
    assert isinstance(
        chosen.runtime, expected["onnxruntime" if fastest.name == "onnxruntime" else fastest.memory_format]
    )
    again = Predictor.from_model(model)  # nothing is kept between predictors: it is timed again
    assert set(again.backend_timings) == set(timings)
    given = Predictor(again.network, again.settings, backend=chosen.backend)  # a caller passes a choice on
    assert given.backend_timings == {} and given.backend == chosen.backend
    reference = Predictor.from_model(model, backend="torch").probabilities([scan])
    for candidate in backend_candidates(cfg.inference.bf16).values():
        other = Predictor(Predictor.from_model(model, backend="torch").network, chosen.settings, backend=candidate)
        np.testing.assert_allclose(other.probabilities([scan]), reference, atol=1e-5)


def test_backend_auto_exports_once_and_runs_what_it_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg.infer.backends import OnnxNetwork

    exports = []
    real_write = backends.write_onnx
    monkeypatch.setattr(backends, "write_onnx", lambda *args: exports.append(args) or real_write(*args))
    monkeypatch.setattr(backends, "backend_candidates", lambda allow_bf16: {"onnxruntime": ONNX_ONLY})  # wins alone
    cfg = PipelineConfig(name="t2d", preprocessing={"spatial_size": [32, 32]}, model={"args": ARGS})
    predictor = Predictor(build_network("unet", 2, 3, 1, ARGS), inference_settings(cfg))
    assert isinstance(predictor.runtime, OnnxNetwork) and predictor.backend == ONNX_ONLY
    assert len(exports) == 1, "the session timed is the session that runs"


def test_bf16_inference_is_timed_only_where_allowed_and_native(tmp_path: Path, monkeypatch) -> None:
    import medseg.runtime.devices
    from medseg.infer.backends import backend_candidates
    from medseg.runtime.devices import cpu_has_native_bf16

    cfg = PipelineConfig(name="t2d", preprocessing={"spatial_size": [32, 32]}, model={"args": ARGS})
    assert "torch+contiguous+bf16" not in backend_candidates(cfg.inference.bf16)  # inference.bf16 is off by default
    allowed = cfg.with_values({"inference.bf16": True})
    native = cpu_has_native_bf16()
    assert ("torch+channels_last+bf16" in backend_candidates(True)) is native
    monkeypatch.setattr(medseg.runtime.devices, "cpu_has_native_bf16", lambda: False)
    assert len(backend_candidates(True)) == 3  # emulated bf16 is never tried
    if native:  # bf16 probabilities stay within a few hundredths of fp32 ones
        monkeypatch.undo()
        torch.manual_seed(0)
        network = build_network("unet", 2, 3, 1, ARGS)
        image = tmp_path / "image.png"
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image)
        fp32_settings = inference_settings(cfg).with_inference(backend="torch")
        bf16_settings = inference_settings(allowed).with_inference(backend="torch")
        plain = Predictor(network, fp32_settings).probabilities([image])
        bf16 = Predictor(network, bf16_settings).probabilities([image])
        assert np.abs(plain - bf16).max() < 0.05 and not np.array_equal(plain, bf16)


def test_backend_falls_back_to_pytorch_when_the_export_fails(tmp_path: Path, monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(backends, "write_onnx", broken)
    model = {"in_channels": 1, "args": ARGS}
    cfg = PipelineConfig(name="t3d", spatial_dims=3, preprocessing={"patch_size": [16, 16, 16]}, model=model)
    network = build_network("unet", 3, 1, 1, ARGS)
    with caplog.at_level("WARNING"):
        predictor = Predictor(network, inference_settings(cfg.with_values({"inference.backend": "onnxruntime"})))
    assert predictor.runtime is network
    assert "ONNX Runtime backend unavailable (exporter exploded); running the network in PyTorch" in caplog.text
    timed = Predictor(network, inference_settings(cfg)).backend_timings  # auto: ONNX Runtime is left out of the timing
    assert set(timed) == {"torch+contiguous", "torch+channels_last"}


def test_written_files_get_ordinary_permissions(model_2d: Path) -> None:
    """Atomic writes go through mkstemp (0600); the final file must be readable like any other output."""
    import os

    mask = os.umask(0o022)
    try:
        path = export_model(model_2d, "onnx").path
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644

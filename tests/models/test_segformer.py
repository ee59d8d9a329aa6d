"""SegFormer (``model.name: segformer``): shapes, the paper's sizes, inputs it refuses (in forward, in the config,
on the command line), bf16 + channels-last, ONNX / TorchScript export, and one epoch through ``medseg run``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from medseg.config.schema import DATA_ROOT_ENV, PipelineConfig
from medseg.core.errors import ConfigError
from medseg.models.registry import INPUT_REQUIREMENTS, build_network, encoder_parameters
from medseg.models.segformer import MULTIPLE
from tests.helpers.paths import REPO

PIPELINE = REPO / "pipelines" / "skin_lesion.yaml"
TINY = {"widths": [8, 16, 40, 64], "depths": [1, 1, 1, 1], "head_width": 16}  # widths: multiples of heads 1, 2, 5, 8


@pytest.mark.parametrize("size", [(64, 96), (96, 32)])
@pytest.mark.parametrize("out_channels", [1, 3])
def test_b0_gives_logits_at_the_input_size(size: tuple[int, int], out_channels: int) -> None:
    network = build_network("segformer", 2, 3, out_channels).eval()
    with torch.no_grad():
        logits = network(torch.randn(2, 3, *size))
    assert logits.shape == (2, out_channels, *size) and torch.isfinite(logits).all()


@pytest.mark.parametrize(("size", "paper_millions"), [("b0", 3.7), ("b1", 13.7), ("b2", 27.5)])
def test_sizes_have_the_papers_parameter_counts(size: str, paper_millions: float) -> None:
    """Encoder + all-MLP head at 150 classes (ADE20K), as the paper counts them."""
    network = build_network("segformer", 2, 3, 150, {"size": size})
    millions = sum(p.numel() for p in network.parameters()) / 1e6
    assert millions == pytest.approx(paper_millions, rel=0.10)


def test_explicit_arguments_override_the_size_and_the_encoder_can_freeze() -> None:
    network = build_network("segformer", 2, 1, 2, {"size": "b2", **TINY, "drop_path": 0.0, "dropout": 0.0})
    assert [len(stage.blocks) for stage in network.encoder] == [1, 1, 1, 1]
    assert [stage.norm.normalized_shape[0] for stage in network.encoder] == TINY["widths"]
    assert network.classifier.in_channels == 16
    encoder = encoder_parameters("segformer", network)
    assert 0 < len(encoder) < len(list(network.parameters()))
    assert {id(p) for p in encoder} == {id(p) for p in network.encoder.parameters()}


def test_sides_not_multiples_of_32_are_refused_in_forward_and_in_the_config() -> None:
    assert INPUT_REQUIREMENTS["segformer"] == (2, MULTIPLE)  # the config checks what the network needs
    network = build_network("segformer", 2, 3, 1, TINY).eval()
    with pytest.raises(ValueError, match="segformer takes height and width multiples of 32, not 64x80"):
        network(torch.randn(1, 3, 64, 80))
    with pytest.raises(ValueError) as refused:
        PipelineConfig(name="t", model={"name": "segformer"}, preprocessing={"spatial_size": [100, 64]})
    assert (
        "preprocessing.spatial_size: segformer takes sides that are multiples of 32, not [100, 64] "
        "(for example [96, 64])" in str(refused.value)
    )
    PipelineConfig(name="t", model={"name": "segformer"}, preprocessing={"spatial_size": [96, 64]})  # accepted


def test_unknown_size_and_3d_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from medseg.cli.app import app

    with pytest.raises(ConfigError, match=r"^model.args: cannot build segformer: size 'b7': choose one of b0, b1, b2$"):
        build_network("segformer", 2, 3, 1, {"size": "b7"})
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(PIPELINE), "--set", "model.name=segformer", "--set", "spatial_dims=3"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {PIPELINE}: model.name: segformer is a 2D network, not for spatial_dims 3"
    ]
    assert not list(tmp_path.iterdir()), "nothing written"


def test_trains_under_bf16_autocast_on_channels_last_inputs() -> None:
    torch.manual_seed(0)
    network = build_network("segformer", 2, 3, 1, TINY).train().to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = network(images)
    assert logits.dtype == torch.bfloat16 and logits.shape == (2, 1, 64, 64)
    logits.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in network.parameters())


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_reproduces_the_network(fmt: str, tmp_path: Path) -> None:
    """``medseg export`` checks the file against PyTorch on random inputs; ONNX Runtime also on another size."""
    from medseg.core.layout import BEST_CHECKPOINT
    from medseg.infer.export import export_model
    from medseg.models.checkpoint import save_checkpoint

    cfg = PipelineConfig(name="t", preprocessing={"spatial_size": [64, 96]}, model={"name": "segformer", "args": TINY})
    torch.manual_seed(0)
    network = build_network("segformer", 2, 3, 1, TINY).eval()
    spec = {"name": "segformer", "spatial_dims": 2, "in_channels": 3, "out_channels": 1, "args": TINY}
    checkpoint = tmp_path / "run" / "model" / BEST_CHECKPOINT
    save_checkpoint(checkpoint, {"state_dict": network.state_dict(), "network": spec, "config": cfg.to_dict()})
    result = export_model(checkpoint, fmt)
    assert result.parity.passed and result.parity.max_abs_logit_difference < 1e-3
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        image = torch.randn(1, 3, 128, 32)  # the spatial axes are dynamic
        with torch.no_grad():
            expected = network(image).numpy()
        (logits,) = session.run(None, {session.get_inputs()[0].name: image.numpy()})
        assert logits.shape == expected.shape and abs(logits - expected).max() < 1e-3


def test_one_epoch_through_medseg_run(tmp_path: Path, tiny_dataset: Path) -> None:
    from typer.testing import CliRunner

    from medseg.cli.app import app
    from medseg.models.checkpoint import load_checkpoint
    from tests.helpers.data import tiny_overrides

    overrides = [o for o in tiny_overrides(tmp_path, tiny_dataset) if not o.startswith("model.args.")]
    overrides += ["model.name=segformer", "model.args.size=b0", "model.args.widths=[8,16,40,64]"]
    overrides += ["model.args.head_width=32", "training.epochs=1", "stages=[train, evaluate]", "tracking.enabled=false"]
    arguments = ["run", str(PIPELINE), "--name", "segformer"]
    for override in overrides:
        arguments += ["--set", override]
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        result = CliRunner().invoke(app, arguments)
    finally:  # the CLI sets up logging for a process of its own
        root.handlers[:] = handlers
        root.setLevel(level)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "skin_lesion" / "segformer"
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 1 and history[0]["train_loss"] > 0
    spec = load_checkpoint(run / "model" / "best.pt")["network"]
    assert spec["name"] == "segformer" and spec["args"]["widths"] == [8, 16, 40, 64]
    summary = json.loads((run / "evaluation" / "summary.json").read_text())
    assert summary["cases"] == 2 and 0.0 <= summary["postprocessed"]["dice"]["mean"] <= 1.0

"""What runs the network: PyTorch, ONNX Runtime or TorchScript, and the exported files that carry a model.

An exported file is self-contained: the pipeline configuration and the post-processing chosen on validation
travel inside it (ONNX ``metadata_props``, TorchScript extra files), so ``medseg predict -m model.onnx`` needs
nothing else.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg import __version__
from medseg.atomic import atomic_path
from medseg.config import PipelineConfig
from medseg.errors import ModelError, error_summary
from medseg.infer.inferers import working_shape

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".ts"}
METADATA_KEY = "medseg"
TORCHSCRIPT_EXTRA = "medseg.json"
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def export_format(path: Path) -> str | None:
    """``onnx`` or ``torchscript`` for a file medseg exported, else None (a checkpoint, a run folder)."""
    return next((name for name, suffix in FORMATS.items() if Path(path).suffix == suffix), None)


def inference_backend(cfg: PipelineConfig) -> str:
    """``torch`` or ``onnxruntime`` for this pipeline (``auto``: ONNX Runtime for 3D sliding windows)."""
    backend = cfg.inference.backend
    return ("onnxruntime" if cfg.spatial_dims == 3 else "torch") if backend == "auto" else backend


class OnnxNetwork(nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` call the inferers and TTA expect."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: not a loadable ONNX model ({error_summary(exc)[:200]})") from None
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def random_inputs(channels: int, shape: tuple[int, ...], count: int = 2) -> list[torch.Tensor]:
    """Standard-normal inputs at the working shape: the preprocessed images are z-scored or in [0, 1]."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn((1, channels, *shape), generator=generator) for _ in range(count)]


def example_input(cfg: PipelineConfig) -> torch.Tensor:
    """One input of the working shape, to trace or export the network with."""
    return random_inputs(cfg.model.in_channels, working_shape(cfg), 1)[0]


def write_onnx(network: nn.Module, example: torch.Tensor, metadata: dict[str, Any], target: Path) -> None:
    """Export ``network`` to an ONNX file (dynamic batch and spatial axes) with ``metadata`` inside."""
    import onnx

    spatial = {axis: f"dim{axis - 2}" for axis in range(2, example.ndim)}
    axes = {0: "batch", **spatial}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation per module
        raw = Path(tmp) / "model.onnx"
        # dynamo=False: the torch.export-based exporter took minutes for a UNet here, this one seconds,
        # with the same outputs (checked by the parity test)
        torch.onnx.export(
            network,
            (example,),
            str(raw),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            opset_version=17,
            dynamo=False,
        )
        model = onnx.load(str(raw))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    model.producer_name, model.producer_version = "medseg", __version__
    onnx.checker.check_model(model)
    with atomic_path(target) as tmp_target:
        onnx.save(model, str(tmp_target))


def write_torchscript(network: nn.Module, example: torch.Tensor, metadata: dict[str, Any], target: Path) -> None:
    """Trace ``network`` to a TorchScript file with ``metadata`` as an extra file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warns about shape checks that are constant for this network
        traced = torch.jit.trace(network, example, check_trace=False)
    with atomic_path(target) as tmp_target:
        torch.jit.save(traced, str(tmp_target), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata)})


WRITERS = {"onnx": write_onnx, "torchscript": write_torchscript}


def read_exported(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network of an exported file (ONNX Runtime or TorchScript) and the medseg metadata inside it."""
    if not path.is_file():
        raise ModelError(f"{path}: exported model not found")
    kind = export_format(path)
    if kind == "onnx":
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf decode errors have no common base class
            raise ModelError(f"{path}: not a readable ONNX file ({error_summary(exc)[:200]})") from None
        props = {p.key: p.value for p in model.metadata_props}
        if METADATA_KEY not in props:
            raise ModelError(f"{path}: an ONNX file without medseg metadata; export it with `medseg export`")
        return OnnxNetwork(path), json.loads(props[METADATA_KEY])
    if kind == "torchscript":
        extra = {TORCHSCRIPT_EXTRA: ""}
        try:
            network = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except (RuntimeError, zipfile.BadZipFile, ValueError) as exc:
            raise ModelError(f"{path}: not a readable TorchScript file ({error_summary(exc)[:200]})") from None
        if not extra[TORCHSCRIPT_EXTRA]:
            raise ModelError(f"{path}: a TorchScript file without medseg metadata; export it with `medseg export`")
        return network.eval(), json.loads(extra[TORCHSCRIPT_EXTRA])
    raise ModelError(f"{path}: unknown export format (expected {' or '.join(FORMATS.values())})")


def runtime_network(network: nn.Module, cfg: PipelineConfig) -> nn.Module:
    """The network as it will run: exported in memory to ONNX Runtime when the backend says so (PyTorch if the
    export fails, with a warning: the result is the same, only slower)."""
    if inference_backend(cfg) != "onnxruntime" or isinstance(network, OnnxNetwork | torch.jit.ScriptModule):
        return network
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "network.onnx"
            write_onnx(network.eval(), example_input(cfg), {}, path)
            return OnnxNetwork(path)  # the session holds the model in memory; the file can go
    except Exception as exc:  # any exporter failure
        log.warning("ONNX Runtime backend unavailable (%s); running the network in PyTorch", str(exc)[:200])
        return network

"""What runs the network: PyTorch, ONNX Runtime, OpenVINO or TorchScript, and the exported files that carry a model.

An exported file is self-contained: the pipeline configuration and the post-processing chosen on validation
travel inside it (ONNX ``metadata_props``, TorchScript extra files, OpenVINO IR ``rt_info``), so ``medseg predict -m
model.onnx`` needs nothing else. OpenVINO (the ``openvino`` extra) is imported only where it runs.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from medseg.config.schema import InferenceConfig
from medseg.core.atomic import atomic_path
from medseg.core.errors import ConfigError, ModelError, error_summary
from medseg.models.classical import ClassicalSegmenter
from medseg.runtime.steps import channels_last_format
from medseg.version import __version__

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".ts", "openvino": ".xml"}  # OpenVINO IR: model.xml + model.bin
METADATA_KEY = "medseg"
TORCHSCRIPT_EXTRA = "medseg.json"
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def export_format(path: Path) -> str | None:
    """``onnx``, ``torchscript`` or ``openvino`` for a file medseg exported, else None (a checkpoint, a run
    folder)."""
    return next((name for name, suffix in FORMATS.items() if Path(path).suffix == suffix), None)


class TorchRuntime(nn.Module):
    """A PyTorch network run channels-last and/or under CPU bf16 autocast; float32 logits out."""

    def __init__(self, network: nn.Module, spatial_dims: int, channels_last: bool, bf16: bool) -> None:
        super().__init__()
        self.network, self.bf16 = network, bf16
        self.memory_format = None
        if channels_last:
            self.memory_format = channels_last_format(spatial_dims)
            self.network = network.to(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.network(x).float()


class OnnxNetwork(nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` call the inferers and TTA expect."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # no busy-waiting between runs: spinning threads take the cores from the PyTorch work between network calls
        # (TTA flips, activation, resampling, post-processing)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: not a loadable ONNX model ({error_summary(exc)[:200]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.files = [Path(path)]  # what carries the weights (gone once an in-memory export's folder is)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def require_openvino(what: str) -> ModuleType:
    """The ``openvino`` module; ConfigError naming ``what`` asked for it and the extra to install when missing."""
    try:
        import openvino
    except ImportError:
        raise ConfigError(
            f"{what}: OpenVINO is not installed; install the openvino extra "
            "(pip install -c constraints.txt -e '.[openvino]')"
        ) from None
    return openvino


class OpenVinoNetwork(nn.Module):
    """An OpenVINO model (read from medseg's ONNX or OpenVINO IR, fp32 or int8) behind the ``nn.Module`` call the
    inferers expect. Compiled for each input shape it meets (static shapes: the CPU plugin's fast path; a 2D
    predictor meets one, a 3D sliding window two: full and last batch), with f32 inference precision: on a CPU with
    bf16 OpenVINO would otherwise run in bf16 unasked (bf16 stays ``inference.bf16``'s opt-in, for PyTorch)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        ov = require_openvino(f"{path}")
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise ModelError(f"{path}: not a model OpenVINO can read ({error_summary(exc)[:200]})") from None
        self.config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        self.files = [Path(path), Path(path).with_suffix(".bin")] if Path(path).suffix == ".xml" else [Path(path)]
        self.requests: dict[tuple[int, ...], Any] = {}

    def request(self, shape: tuple[int, ...]) -> Any:
        """The inference request compiled for ``shape``."""
        if shape not in self.requests:
            model = self.model.clone()
            model.reshape(list(shape))
            self.requests[shape] = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        return self.requests[shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_openvino(self.request(tuple(x.shape)).infer, x)


def run_openvino(infer: Callable[[dict[int, np.ndarray]], Any], x: torch.Tensor) -> torch.Tensor:
    """``x`` through an OpenVINO compiled model or inference request's call, float32 in and out."""
    array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    return torch.from_numpy(np.array(infer({0: array})[0], dtype=np.float32))


EXPORTED_NETWORKS = (OnnxNetwork, OpenVinoNetwork, torch.jit.ScriptModule)  # run as exported: no layout, no bf16


def random_inputs(channels: int, shape: tuple[int, ...], count: int = 2) -> list[torch.Tensor]:
    """Standard-normal inputs at the working shape: the preprocessed images are z-scored or in [0, 1]."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn((1, channels, *shape), generator=generator) for _ in range(count)]


def example_input(channels: int, shape: tuple[int, ...]) -> torch.Tensor:
    """One input of the working shape, to trace or export the network with."""
    return random_inputs(channels, shape, 1)[0]


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


def read_openvino_metadata(network: OpenVinoNetwork, path: Path) -> dict[str, Any]:
    """The medseg metadata in an OpenVINO IR file's ``rt_info``; ModelError when it has none."""
    if not network.model.has_rt_info([METADATA_KEY]):
        raise ModelError(f"{path}: an OpenVINO model without medseg metadata; export it with `medseg export`")
    return json.loads(network.model.get_rt_info([METADATA_KEY]).astype(str))


def read_exported(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network of an exported file (ONNX Runtime, OpenVINO or TorchScript) and the medseg metadata inside it."""
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
    if kind == "openvino":
        network = OpenVinoNetwork(path)
        return network, read_openvino_metadata(network, path)
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


@dataclass(frozen=True)
class Backend:
    """What runs the network: PyTorch (contiguous or channels-last, fp32 or bf16 autocast), ONNX Runtime or
    OpenVINO (fp32)."""

    name: Literal["torch", "onnxruntime", "openvino"] = "torch"
    memory_format: Literal["contiguous", "channels_last"] = "contiguous"
    bf16: bool = False

    @classmethod
    def configured(cls, inference: InferenceConfig) -> Backend:
        """The backend ``inference.*`` names (``auto`` is made concrete by :func:`resolve_backend`)."""
        name = "torch" if inference.backend == "auto" else inference.backend
        return cls(name, inference.memory_format, inference.bf16)

    @property
    def label(self) -> str:
        """``torch+channels_last+bf16``, ``onnxruntime``: how the timing log names a candidate."""
        if self.name != "torch":
            return self.name
        return f"torch+{self.memory_format}" + ("+bf16" if self.bf16 else "")


def runtime_network(network: nn.Module, backend: Backend, example: torch.Tensor) -> nn.Module:
    """The network as it will run: exported in memory to ONNX (traced on ``example``, one input of the working
    shape) and run by ONNX Runtime or OpenVINO when the backend says so (PyTorch if the export fails, with a warning:
    the result is the same, only slower; OpenVINO not installed: ConfigError), else PyTorch, channels-last and under
    bf16 autocast where the backend says so (bf16 only where the CPU has it)."""
    from medseg.runtime.devices import cpu_has_native_bf16

    if isinstance(network, EXPORTED_NETWORKS):
        return network
    if backend.name in ("onnxruntime", "openvino"):
        if backend.name == "openvino":
            require_openvino("inference.backend: openvino")
        runner, name = (OnnxNetwork, "ONNX Runtime") if backend.name == "onnxruntime" else (OpenVinoNetwork, "OpenVINO")
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "network.onnx"
                write_onnx(network.eval(), example, {}, path)
                return runner(path)  # the session / model holds the network in memory; the file can go
        except Exception as exc:  # any exporter failure
            log.warning("%s backend unavailable (%s); running the network in PyTorch", name, str(exc)[:200])
            return network
    on_cpu = next(network.parameters(), torch.empty(0)).device.type == "cpu"
    channels_last = on_cpu and backend.memory_format == "channels_last"
    bf16 = on_cpu and backend.bf16 and cpu_has_native_bf16()
    spatial_dims = example.ndim - 2
    return TorchRuntime(network, spatial_dims, channels_last, bf16) if channels_last or bf16 else network


def backend_candidates(allow_bf16: bool) -> dict[str, Backend]:
    """What ``inference.backend: auto`` times: PyTorch contiguous and channels-last (and each under bf16 where
    ``allow_bf16`` (``inference.bf16``) and the CPU has it natively), and ONNX Runtime."""
    from medseg.runtime.devices import cpu_has_native_bf16

    candidates = [
        Backend("torch", layout, bf16)
        for bf16 in ((False, True) if allow_bf16 and cpu_has_native_bf16() else (False,))
        for layout in ("contiguous", "channels_last")
    ]
    candidates.append(Backend("onnxruntime"))
    return {candidate.label: candidate for candidate in candidates}


class BackendChoice(NamedTuple):
    """What ``inference.backend: auto`` decided: the backend, the seconds per timed candidate (empty: nothing
    timed) and the winner as it was timed (built on a copy of the network; None when nothing was timed)."""

    backend: Backend
    seconds: dict[str, float]
    runtime: nn.Module | None = None


def resolve_backend(
    network: nn.Module, inference: InferenceConfig, example: torch.Tensor, rounds: int = 3
) -> BackendChoice:
    """The backend ``inference.*`` asks for; ``auto`` made concrete for this machine: every candidate
    (:func:`backend_candidates`) runs the network on ``example`` (inputs of the working shape; 3D: ``sw_batch_size``
    windows), one warm-up and then ``rounds`` interleaved rounds; the quickest run of each counts and the fastest
    wins (a candidate that fails here is left out). The winner's runtime comes back too, so it is not built (an ONNX
    export) a second time. Nothing is kept between calls: a caller that builds several predictors of one model passes
    the first one's backend on."""
    import copy
    import time

    if inference.backend != "auto":
        return BackendChoice(Backend.configured(inference), {})
    if isinstance(network, ClassicalSegmenter):  # scikit-image inside: nothing to export or lay out
        return BackendChoice(Backend("torch"), {})
    one = example[:1]
    runtimes = {}
    with torch.inference_mode():
        for name, candidate in backend_candidates(inference.bf16).items():
            try:  # a candidate that cannot be built or run here (a failed export, a layout the network refuses) is out
                runtime = runtime_network(copy.deepcopy(network).eval(), candidate, one)
                runtime(example)  # warm-up
            except Exception as exc:  # any builder or kernel failure
                log.debug("Inference candidate %s unavailable: %s", name, error_summary(exc))
                continue
            if candidate.name != "onnxruntime" or isinstance(runtime, OnnxNetwork):  # the export fell back to PyTorch
                runtimes[name] = runtime
    candidates = backend_candidates(inference.bf16)
    if len(runtimes) <= 1:
        fallback = next(iter(runtimes), "torch+contiguous")
        return BackendChoice(candidates[fallback], {}, runtimes.get(fallback))
    seconds: dict[str, float] = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, runtime in runtimes.items():
                started = time.perf_counter()
                runtime(example)
                seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - started)
    fastest = min(seconds, key=seconds.get)
    log.info(
        "Inference backend here: %s (%s per %s input)",
        fastest,
        ", ".join(f"{name} {s * 1000:.0f} ms" for name, s in seconds.items()),
        "x".join(map(str, (example.shape[0], *example.shape[2:]))),
    )
    return BackendChoice(candidates[fastest], seconds, runtimes[fastest])

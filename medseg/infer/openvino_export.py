"""OpenVINO IR files (``model.xml`` + ``model.bin``) from a trained network, fp32 or int8 (NNCF post-training
quantization on training cases): the int8 path that measured faster on a CPU (BENCHMARKS.md, "Int8 inference":
ONNX Runtime's static int8 ran at 0.45-0.89x of its fp32 on medseg's UNets, this int8 at 2.1-3.5x of it).

The network goes through medseg's own ONNX export (the one ``medseg export --format onnx`` parity-checks) and
OpenVINO's ONNX reader; ``openvino.convert_model`` is not used (it sends usage telemetry), and NNCF's telemetry is
switched off before NNCF is imported: medseg sends nothing anywhere.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.data.records import Record
from medseg.infer.backends import METADATA_KEY, require_openvino, run_openvino, write_onnx

CALIBRATION_INPUTS = 32  # NNCF's statistics: 2D whole images, 3D windows of the working shape
CALIBRATION_SEED = 0


def calibration_inputs(
    predictor: Any, records: list[Record], count: int = CALIBRATION_INPUTS, seed: int = CALIBRATION_SEED
) -> list[np.ndarray]:
    """``count`` fixed, seeded network inputs from ``records`` (training cases) as the predictor preprocesses them:
    2D whole images, 3D random windows of the working shape spread over the volumes (zero-padded where a volume
    is smaller, as outside it)."""
    rng = np.random.default_rng(seed)

    def preprocessed(record: Record) -> np.ndarray:
        return predictor.preprocess({"image": record["image"]})["image"].as_tensor()[None].numpy()

    if predictor.settings.spatial_dims == 2:
        chosen = sorted(rng.choice(len(records), size=min(count, len(records)), replace=False))
        return [preprocessed(records[i]) for i in chosen]
    shape = predictor.settings.working_shape
    windows = []
    for record in records:
        volume = preprocessed(record)
        short = [(0, max(0, w - n)) for w, n in zip(shape, volume.shape[2:], strict=True)]
        volume = np.pad(volume, [(0, 0), (0, 0), *short])
        for _ in range(-(-count // len(records))):
            start = [int(rng.integers(0, n - w + 1)) for w, n in zip(shape, volume.shape[2:], strict=True)]
            box = tuple(slice(s, s + w) for s, w in zip(start, shape, strict=True))
            windows.append(np.ascontiguousarray(volume[(slice(None), slice(None), *box)]))
    return windows[:count]


class CompiledNetwork(nn.Module):
    """A compiled OpenVINO model (as NNCF's accuracy control hands it over) behind the ``nn.Module`` call."""

    def __init__(self, compiled: Any) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_openvino(self.compiled, x)


# (network, validation case numbers) -> per case, the network's mask Dice against the fp32 network's
Agreement = Callable[[nn.Module, list[int]], list[float]]


def quantize_int8(
    model: Any,
    calibration: list[np.ndarray],
    agreement: Agreement | None = None,
    cases: int = 0,
    minimum: float = 1.0,
) -> Any:
    """``model`` (an OpenVINO model) with int8 weights and activations: NNCF's default post-training quantization,
    its activation ranges from ``calibration``. With ``agreement`` over ``cases`` validation cases, NNCF's accuracy
    control: where the lowest per-case agreement falls below ``minimum``, the layers that cost the most agreement go
    back to fp32, group by group, until it holds (or nothing is left to restore)."""
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's switch that replaces its usage telemetry with a stub
    import nncf

    if agreement is None:
        return nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration))

    def validate(compiled: Any, numbers: Any) -> tuple[float, list[float]]:
        values = agreement(CompiledNetwork(compiled), list(numbers))
        return min(values), values

    return nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(calibration),
        nncf.Dataset(list(range(cases))),
        validation_fn=validate,
        max_drop=1.0 - minimum,  # the fp32 model agrees with itself: 1.0
        subset_size=len(calibration),
    )


def write_openvino(
    network: nn.Module,
    example: torch.Tensor,
    metadata: dict[str, Any],
    target: Path,
    quantize: Callable[[Any], Any] | None = None,
) -> None:
    """Write ``network`` as OpenVINO IR at ``target`` (``.xml``, its weights in the ``.bin`` beside it) with
    ``metadata`` in its ``rt_info``; fp32 weights (never the fp16 that ``save_model`` writes by default), or what
    ``quantize`` makes of the OpenVINO model (:func:`quantize_int8`)."""
    ov = require_openvino("--format openvino")
    import json

    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        write_onnx(network.eval(), example, {}, onnx_file)
        model = ov.Core().read_model(str(onnx_file))
    if quantize is not None:
        # static spatial axes first: NNCF's int8 of medseg's 3D UNet with dynamic ones gave a constant output (logits
        # -51 to -18 on every BraTS window, fp32's -4 to 114); with them fixed it tracks fp32. The predictor feeds
        # the working shape; OpenVinoNetwork reshapes for any other.
        model.reshape([-1, *example.shape[1:]])
        model = quantize(model)
    model.set_rt_info(json.dumps(metadata), [METADATA_KEY])
    ov.save_model(model, str(target), compress_to_fp16=False)


def ir_files(target: Path) -> list[Path]:
    """The files of one OpenVINO IR model: the ``.bin`` (weights) and the ``.xml`` that reads it, in that order."""
    return [target.with_suffix(".bin"), target]

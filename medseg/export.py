"""Export a trained network to ONNX or TorchScript, check it against PyTorch, and load it back for prediction.

The exported file is self-contained: the pipeline configuration (preprocessing, sliding window, threshold)
and the post-processing chosen on validation travel inside it (ONNX ``metadata_props``, TorchScript extra
files), so ``medseg predict -m model.onnx`` needs nothing else.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg import __version__
from medseg.errors import ModelError
from medseg.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".ts"}
METADATA_KEY = "medseg"
TORCHSCRIPT_EXTRA = "medseg.json"
INPUT_NAME, OUTPUT_NAME = "image", "logits"
# what counts as the same model: float32 kernels differ in summation order, not in the decision
MAX_ABS_LOGIT_DIFFERENCE = 1e-3
MIN_MASK_DICE = 0.999


@dataclass
class ParityReport:
    """How closely the exported model reproduces the PyTorch network."""

    inputs: str
    cases: int
    max_abs_logit_difference: float
    max_abs_probability_difference: float
    mask_dice: float
    passed: bool
    per_case: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ExportResult:
    """The written file and its parity check."""

    path: Path
    format: str
    parity: ParityReport


def export_format(path: Path) -> str | None:
    """``onnx`` or ``torchscript`` for a file medseg exported, else None (a checkpoint, a run folder)."""
    if path.suffix == FORMATS["onnx"]:
        return "onnx"
    if path.suffix == FORMATS["torchscript"]:
        return "torchscript"
    return None


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
            raise ModelError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def session_network(network: nn.Module, cfg: Any) -> OnnxNetwork:
    """Export ``network`` to a temporary ONNX file and return its ONNX Runtime session as a module."""
    example = _random_inputs(cfg.model.in_channels, _working_shape(cfg), 1)[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "network.onnx"
        _export_onnx(network, example, {}, path)
        return OnnxNetwork(path)  # the session holds the model in memory; the file can go


def _working_shape(cfg: Any) -> tuple[int, ...]:
    """The spatial shape the network sees: the resized image (2D) or the sliding-window ROI (3D)."""
    if cfg.spatial_dims == 2:
        return tuple(cfg.preprocessing.spatial_size)
    return tuple(cfg.inference.roi_size or cfg.preprocessing.patch_size)


def _metadata(state: dict[str, Any], steps: list[str], source: Path) -> dict[str, Any]:
    return {
        "config": state["config"],
        "network": state["network"],
        "postprocessing": steps,
        "medseg_version": __version__,
        "source_checkpoint": str(source),
        "epoch": state.get("epoch"),
        "val_dice": state.get("val_dice"),
    }


def _export_onnx(network: nn.Module, example: torch.Tensor, metadata: dict[str, Any], target: Path) -> None:
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


def _export_torchscript(network: nn.Module, example: torch.Tensor, metadata: dict[str, Any], target: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warns about shape checks that are constant for this network
        traced = torch.jit.trace(network, example, check_trace=False)
    with atomic_path(target) as tmp_target:
        torch.jit.save(traced, str(tmp_target), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata)})


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
            raise ModelError(f"{path}: not a readable ONNX file ({str(exc).splitlines()[0][:200]})") from None
        props = {p.key: p.value for p in model.metadata_props}
        if METADATA_KEY not in props:
            raise ModelError(f"{path}: an ONNX file without medseg metadata; export it with `medseg export`")
        return OnnxNetwork(path), json.loads(props[METADATA_KEY])
    if kind == "torchscript":
        extra = {TORCHSCRIPT_EXTRA: ""}
        try:
            network = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except (RuntimeError, zipfile.BadZipFile, ValueError) as exc:
            raise ModelError(f"{path}: not a readable TorchScript file ({str(exc).splitlines()[0][:200]})") from None
        if not extra[TORCHSCRIPT_EXTRA]:
            raise ModelError(f"{path}: a TorchScript file without medseg metadata; export it with `medseg export`")
        return network.eval(), json.loads(extra[TORCHSCRIPT_EXTRA])
    raise ModelError(f"{path}: unknown export format (expected {' or '.join(FORMATS.values())})")


def _random_inputs(channels: int, shape: tuple[int, ...], count: int = 2) -> list[torch.Tensor]:
    """Standard-normal inputs at the working shape: the preprocessed images are z-scored or in [0, 1]."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn((1, channels, *shape), generator=generator) for _ in range(count)]


def check_parity(reference: Any, exported: Any, images: list[str | list[str]] | None = None) -> ParityReport:
    """Compare two predictors that differ only in their network backend.

    Standard-normal tensors of the working shape go through both networks (logits, probabilities and mask
    Dice compared); each of ``images`` also goes through both whole predictors (preprocessing, sliding
    window, TTA, inverse resampling; probabilities and mask Dice compared).
    """
    from medseg.inference import activate
    from medseg.metrics import dice_score

    rows: list[dict[str, Any]] = []
    shape = _working_shape(reference.config)
    for index, batch in enumerate(_random_inputs(reference.config.model.in_channels, shape)):
        with torch.inference_mode():
            ours, theirs = reference.network(batch).float(), exported.runtime(batch).float()
        ours_p, theirs_p = activate(ours)[0].numpy(), activate(theirs)[0].numpy()
        rows.append(
            {
                "case": f"random-{index}",
                "max_abs_logit_difference": float((ours - theirs).abs().max()),
                "max_abs_probability_difference": float(np.abs(ours_p - theirs_p).max()),
                "mask_dice": dice_score(reference.discretise(ours_p), reference.discretise(theirs_p)),
            }
        )
    for image in images or []:
        ours_p, theirs_p = reference.probabilities(image), exported.probabilities(image)
        rows.append(
            {
                "case": Path(image[0] if isinstance(image, list) else image).name,
                "max_abs_probability_difference": float(np.abs(ours_p - theirs_p).max()),
                "mask_dice": dice_score(reference.discretise(ours_p), reference.discretise(theirs_p)),
            }
        )
    logit = max(row["max_abs_logit_difference"] for row in rows if "max_abs_logit_difference" in row)
    probability = max(row["max_abs_probability_difference"] for row in rows)
    dice = min(row["mask_dice"] for row in rows)
    return ParityReport(
        inputs=f"{len(rows) - len(images or [])} random tensors at the working shape"
        + (f" and {len(images)} inputs end to end" if images else ""),
        cases=len(rows),
        max_abs_logit_difference=logit,
        max_abs_probability_difference=probability,
        mask_dice=dice,
        passed=bool(
            logit <= MAX_ABS_LOGIT_DIFFERENCE and probability <= MAX_ABS_LOGIT_DIFFERENCE and dice >= MIN_MASK_DICE
        ),
        per_case=rows,
    )


def parity_inputs(source: Path, config: Any) -> list[str | list[str]]:
    """The cases ``medseg predict`` would read from ``source``: images (2D) or scans, one list per case (3D)."""
    from medseg.prediction import image_records, volume_records

    if config.spatial_dims == 2:
        return [record["image"] for record in image_records(source)]
    return [record["image"] for record in volume_records(source, config.model.in_channels)]


def export_model(
    model: Path | str, fmt: str, output: Path | None = None, check_inputs: Path | None = None, max_cases: int = 4
) -> ExportResult:
    """Export ``model`` (run folder, checkpoint or MLflow URI) and check the file against PyTorch.

    Raises ModelError, after writing nothing, if the export does not reproduce the network.
    """
    from medseg.checkpoint import load_checkpoint
    from medseg.inference import MODEL_URI_SCHEMES, Predictor, resolve_model

    if fmt not in FORMATS:
        raise ModelError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    checkpoint = resolve_model(model)
    if export_format(checkpoint) is not None:
        raise ModelError(f"{checkpoint}: already an exported model; export from a run folder or checkpoint")
    reference = Predictor.from_model(checkpoint, backend="torch")
    state = load_checkpoint(checkpoint)
    from_uri = isinstance(model, str) and model.startswith(MODEL_URI_SCHEMES)
    default_folder = Path.cwd() if from_uri else checkpoint.parent  # not inside the download cache
    target = Path(output) if output is not None else default_folder / f"model{FORMATS[fmt]}"
    if export_format(target) != fmt:
        raise ModelError(f"{target}: a {fmt} export must end in {FORMATS[fmt]}")
    metadata = _metadata(state, reference.steps, checkpoint)
    metadata["config"].setdefault("inference", {})["backend"] = "auto"  # the file decides: ONNX Runtime or TorchScript
    example = _random_inputs(reference.config.model.in_channels, _working_shape(reference.config), 1)[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f".{target.stem}.checking{target.suffix}")
    (_export_onnx if fmt == "onnx" else _export_torchscript)(reference.network, example, metadata, staged)
    try:
        exported = Predictor.from_model(staged)
        images = parity_inputs(check_inputs, reference.config)[:max_cases] if check_inputs is not None else None
        parity = check_parity(reference, exported, images)
        if not parity.passed:
            raise ModelError(
                f"{target}: the {fmt} export does not reproduce the network (max |logit difference| "
                f"{parity.max_abs_logit_difference:.2e}, mask Dice {parity.mask_dice:.4f}); nothing written"
            )
        staged.replace(target)
    finally:
        staged.unlink(missing_ok=True)
    report = target.with_name(target.name + ".parity.json")
    atomic_write_text(report, json.dumps(asdict(parity), indent=1))
    log.info("Exported %s -> %s", checkpoint, target)
    return ExportResult(target, fmt, parity)

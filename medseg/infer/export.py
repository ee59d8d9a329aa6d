"""``medseg export``: write a trained network as an ONNX, TorchScript or OpenVINO file (:mod:`medseg.infer.backends`,
:mod:`medseg.infer.openvino_export`), after checking that it reproduces the PyTorch network; nothing is written when
it does not. An int8 OpenVINO file is calibrated on the run's training cases and written only if its masks agree
with the fp32 network's on every validation case.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.core.atomic import atomic_write_text
from medseg.core.errors import ModelError
from medseg.core.layout import ENSEMBLE_FILE
from medseg.data.inputs import predict_inputs
from medseg.evaluation.metrics import dice_score
from medseg.infer.backends import FORMATS, WRITERS, Backend, example_input, export_format, random_inputs
from medseg.infer.bundle import BUNDLE_FORMAT, export_bundle
from medseg.infer.inferers import activate
from medseg.infer.openvino_export import (
    CALIBRATION_INPUTS,
    calibration_inputs,
    ir_files,
    quantize_int8,
    write_openvino,
)
from medseg.infer.predictor import Predictor
from medseg.infer.settings import InferenceSettings
from medseg.infer.sources import EXPORTED_ENSEMBLE_KIND, MODEL_URI_SCHEMES, resolve_model
from medseg.models.checkpoint import load_checkpoint
from medseg.models.classical import ClassicalSegmenter
from medseg.version import __version__

log = logging.getLogger(__name__)

# what counts as the same model: float32 kernels differ in summation order, not in the decision
MAX_ABS_LOGIT_DIFFERENCE = 1e-3
MIN_MASK_DICE = 0.999
# int8 is another model: its mask on each validation case must agree with fp32's at least this well (Dice). The
# OpenVINO int8 PH2 UNet measured 0.9877 on its worst case (mean 0.9973) at test Dice +0.0001; BraTS 0.9949.
MIN_INT8_AGREEMENT = 0.98
QUANTIZE = {"int8": "openvino"}  # precision: the one format where it measured faster (BENCHMARKS.md)


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
    quantized: str | None = None  # int8: the masks' agreement with fp32 on validation cases is what was checked
    min_agreement: float | None = None


@dataclass
class ExportResult:
    """The written file and its parity check."""

    path: Path
    format: str
    parity: ParityReport
    notes: list[str] = field(default_factory=list)  # a bundle: the steps inference.json leaves out, one line each


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


def check_parity(
    reference: Predictor, exported: Predictor, images: list[str | list[str]] | None = None
) -> ParityReport:
    """Compare two predictors that differ only in their network backend.

    Standard-normal tensors of the working shape go through both networks (logits, probabilities and mask
    Dice compared); each of ``images`` also goes through both whole predictors (preprocessing, sliding
    window, TTA, inverse resampling; probabilities and mask Dice compared).
    """
    rows = _random_rows(reference, exported) + _image_rows(reference, exported, images or [])
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


def check_agreement(
    reference: Predictor, quantized: Predictor, images: list[str | list[str]], minimum: float, precision: str
) -> ParityReport:
    """A quantized model against the fp32 network, end to end on ``images`` (validation cases): passed when every
    case's mask Dice reaches ``minimum``. Random tensors say nothing here (the quantization ranges fit real
    inputs)."""
    rows = _image_rows(reference, quantized, images)
    return ParityReport(
        inputs=f"{len(rows)} validation case(s) end to end",
        cases=len(rows),
        max_abs_logit_difference=float("nan"),
        max_abs_probability_difference=max(row["max_abs_probability_difference"] for row in rows),
        mask_dice=min(row["mask_dice"] for row in rows),
        passed=all(row["mask_dice"] >= minimum for row in rows),
        per_case=rows,
        quantized=precision,
        min_agreement=minimum,
    )


def _random_rows(reference: Predictor, exported: Predictor) -> list[dict[str, Any]]:
    """Standard-normal tensors of the working shape through both networks: logits, probabilities, mask Dice."""
    rows: list[dict[str, Any]] = []
    settings = reference.settings
    for index, batch in enumerate(random_inputs(settings.in_channels, settings.working_shape)):
        with torch.inference_mode():
            ours = reference.network(batch.to(reference.device)).float().cpu()
            theirs = exported.runtime(batch).float()
        multilabel = settings.labels.multilabel
        ours_p, theirs_p = activate(ours, multilabel)[0].numpy(), activate(theirs, multilabel)[0].numpy()
        rows.append(
            {
                "case": f"random-{index}",
                "max_abs_logit_difference": float((ours - theirs).abs().max()),
                "max_abs_probability_difference": float(np.abs(ours_p - theirs_p).max()),
                "mask_dice": dice_score(reference.discretise(ours_p), reference.discretise(theirs_p)),
            }
        )
    return rows


def _image_rows(reference: Predictor, exported: Predictor, images: list[str | list[str]]) -> list[dict[str, Any]]:
    """Each image through both whole predictors: probabilities and mask Dice."""
    rows = []
    for image in images:
        ours_p, theirs_p = reference.probabilities(image), exported.probabilities(image)
        rows.append(
            {
                "case": Path(image[0] if isinstance(image, list) else image).name,
                "max_abs_probability_difference": float(np.abs(ours_p - theirs_p).max()),
                "mask_dice": dice_score(reference.discretise(ours_p), reference.discretise(theirs_p)),
            }
        )
    return rows


def parity_inputs(source: Path, settings: InferenceSettings) -> list[str | list[str]]:
    """The cases ``medseg predict`` would read from ``source``: images (2D) or scans, one list per case (3D)."""
    return [record["image"] for record in predict_inputs(source, settings.spatial_dims, settings.in_channels)]


def export_model(
    model: Path | str,
    fmt: str,
    output: Path | None = None,
    check_inputs: Path | None = None,
    max_cases: int = 4,
    device: str | None = None,
    quantize: str | None = None,
    min_agreement: float = MIN_INT8_AGREEMENT,
) -> ExportResult:
    """Export ``model`` (run folder, checkpoint or MLflow URI) and check the file against PyTorch (on ``device``;
    the file itself is written from the CPU: ONNX, TorchScript and OpenVINO files are device-independent).
    ``quantize="int8"`` (OpenVINO only): calibrated on the run's training cases, checked on its validation cases.

    Raises ModelError, after writing nothing, if the export does not reproduce the network (int8: if a validation
    case's mask agrees with fp32's below ``min_agreement``).
    """
    check_quantize(quantize, fmt)
    if fmt == BUNDLE_FORMAT:
        if check_inputs is not None:
            raise ModelError("--check-input: compares ONNX / TorchScript files end to end, not bundles; leave it out")
        return _export_bundle(model, output)
    if fmt not in FORMATS:
        raise ModelError(f"export format {fmt!r}: expected one of {', '.join([*FORMATS, BUNDLE_FORMAT])}")
    checkpoint = resolve_model(model)
    if checkpoint.name == ENSEMBLE_FILE:
        return _export_ensemble(checkpoint, fmt, output, check_inputs, max_cases, device, quantize, min_agreement)
    if export_format(checkpoint) is not None:
        raise ModelError(f"{checkpoint}: already an exported model; export from a run folder or checkpoint")
    reference = Predictor.from_model(checkpoint, backend="torch", device="cpu")
    state = load_checkpoint(checkpoint)
    if isinstance(reference.network, ClassicalSegmenter):
        raise ModelError(
            f"{checkpoint}: a classical baseline ({state['network']['name']}) is not a network to "
            "export; medseg predict runs it from the run folder"
        )
    from_uri = isinstance(model, str) and model.startswith(MODEL_URI_SCHEMES)
    default_folder = Path.cwd() if from_uri else checkpoint.parent  # not inside the download cache
    name = f"model.{quantize}" if quantize else "model"
    target = Path(output) if output is not None else default_folder / f"{name}{FORMATS[fmt]}"
    if export_format(target) != fmt:
        raise ModelError(f"{target}: a {fmt} export must end in {FORMATS[fmt]}")
    metadata = _metadata(state, reference.steps, checkpoint)
    metadata["config"].setdefault("inference", {})["backend"] = "auto"  # the file decides what runs it
    quantizer, validation = None, []
    if quantize:
        metadata["quantized"] = quantize
        calibration, validation = _quantization_cases(state, checkpoint, reference)
        quantizer = _int8_quantizer(reference, calibration, validation, min_agreement)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f".{target.stem}.checking{target.suffix}")
    example = example_input(reference.settings.in_channels, reference.settings.working_shape)
    try:
        if fmt == "openvino":
            write_openvino(reference.network, example, metadata, staged, quantizer)
        else:
            WRITERS[fmt](reference.network, example, metadata, staged)
        exported = Predictor.from_model(staged)
        checked = (
            reference if device in (None, "cpu") else Predictor.from_model(checkpoint, backend="torch", device=device)
        )
        if quantize:
            parity = check_agreement(checked, exported, validation, min_agreement, quantize)
            if not parity.passed:
                worst = min(parity.per_case, key=lambda row: row["mask_dice"])
                raise ModelError(
                    f"{target}: the {quantize} model's mask agrees with fp32's at Dice {worst['mask_dice']:.4f} on "
                    f"validation case {worst['case']}, below --min-agreement {min_agreement}; nothing written "
                    f"(fp32: leave out --quantize)"
                )
        else:
            images = parity_inputs(check_inputs, reference.settings)[:max_cases] if check_inputs is not None else None
            parity = check_parity(checked, exported, images)
            if not parity.passed:
                raise ModelError(
                    f"{target}: the {fmt} export does not reproduce the network (max |logit difference| "
                    f"{parity.max_abs_logit_difference:.2e}, mask Dice {parity.mask_dice:.4f}); nothing written"
                )
        for done, ready in zip(_files(staged, fmt), _files(target, fmt), strict=True):
            done.replace(ready)  # OpenVINO: the weights first, the .xml that reads them last
    finally:
        for leftover in _files(staged, fmt):
            leftover.unlink(missing_ok=True)
    report = target.with_name(target.name + ".parity.json")
    fields = {k: None if isinstance(v, float) and v != v else v for k, v in asdict(parity).items()}  # NaN: not JSON
    atomic_write_text(report, json.dumps(fields, indent=1))
    log.info("Exported %s -> %s", checkpoint, target)
    return ExportResult(target, fmt, parity)


def check_quantize(quantize: str | None, fmt: str) -> None:
    """``--quantize`` names a precision for a format it measured faster in (ModelError otherwise)."""
    if quantize is None:
        return
    if quantize not in QUANTIZE:
        raise ModelError(f"--quantize {quantize}: expected {', '.join(QUANTIZE)}")
    if fmt == "onnx":
        raise ModelError(
            f"--quantize {quantize} --format onnx: ONNX Runtime's static int8 ran at 0.45-0.89x of its fp32 on "
            "medseg's UNets (BENCHMARKS.md, Int8 inference); use --format openvino --quantize int8"
        )
    if fmt != QUANTIZE[quantize]:
        raise ModelError(f"--quantize {quantize}: only with --format {QUANTIZE[quantize]}, not --format {fmt}")


def _files(path: Path, fmt: str) -> list[Path]:
    """The files one exported model is made of (OpenVINO IR: weights, then the .xml)."""
    return ir_files(path) if fmt == "openvino" else [path]


def _int8_quantizer(
    reference: Predictor, calibration: list[np.ndarray], validation: list[str | list[str]], minimum: float
) -> Callable[[Any], Any]:
    """NNCF int8 with accuracy control: the agreement of each validation case's mask with the fp32 network's (run
    through the whole predictor) must reach ``minimum``, else layers go back to fp32 until it does."""
    fp32_masks = [reference.discretise(reference.probabilities(image)) for image in validation]

    def agreement(network: torch.nn.Module, numbers: list[int]) -> list[float]:
        candidate = Predictor(network, reference.settings, [], reference.tta, backend=Backend())
        masks = (candidate.discretise(candidate.probabilities(validation[n])) for n in numbers)
        return [dice_score(fp32_masks[n], mask) for n, mask in zip(numbers, masks, strict=True)]

    return lambda model: quantize_int8(model, calibration, agreement, len(validation), minimum)


def _quantization_cases(
    state: dict[str, Any], checkpoint: Path, reference: Predictor
) -> tuple[list[np.ndarray], list[str | list[str]]]:
    """The calibration inputs (from the run's training cases) and the validation images the quantized model is
    checked on; ModelError naming what is missing when the run's data cannot be read."""
    from medseg.config.settings import stored_data_settings
    from medseg.core.errors import MedsegError
    from medseg.data.dataset import prepare_data

    try:
        data = prepare_data(stored_data_settings(state.get("config"), checkpoint))
    except MedsegError as exc:
        raise ModelError(
            f"--quantize: calibrates on {checkpoint}'s training cases and checks its validation cases, but its data "
            f"cannot be read ({exc}); set MEDSEG_DATA_ROOT or export fp32"
        ) from None
    train, validation = data.subset("train"), data.subset("val")
    if not train or not validation:
        raise ModelError(f"--quantize: {checkpoint}'s split has no training or no validation case to calibrate / check")
    log.info(
        "int8: calibrating on %d inputs from %d training cases, checking %d validation cases",
        min(CALIBRATION_INPUTS, len(train)) if reference.settings.spatial_dims == 2 else CALIBRATION_INPUTS,
        len(train),
        len(validation),
    )
    return calibration_inputs(reference, train), [record["image"] for record in validation]


def _export_bundle(model: Path | str, output: Path | None) -> ExportResult:
    """A MONAI bundle folder (:mod:`medseg.infer.bundle`), written only if its TorchScript file reproduces the
    network."""
    checkpoint = resolve_model(model)
    if export_format(checkpoint) is not None:
        raise ModelError(f"{checkpoint}: already an exported model; export from a run folder or checkpoint")
    from_uri = isinstance(model, str) and model.startswith(MODEL_URI_SCHEMES)
    written = export_bundle(checkpoint, output, Path.cwd() if from_uri else checkpoint.parent, MAX_ABS_LOGIT_DIFFERENCE)
    parity = ParityReport(
        inputs=f"{written.cases} random tensors at the working shape (models/model.ts)",
        cases=written.cases,
        max_abs_logit_difference=written.max_abs_logit_difference,
        max_abs_probability_difference=written.max_abs_probability_difference,
        mask_dice=written.mask_dice,
        passed=True,
    )
    return ExportResult(written.path, BUNDLE_FORMAT, parity, written.left_out)


def _export_ensemble(
    manifest: Path,
    fmt: str,
    output: Path | None,
    check_inputs: Path | None,
    max_cases: int,
    device: str | None = None,
    quantize: str | None = None,
    min_agreement: float = MIN_INT8_AGREEMENT,
) -> ExportResult:
    """A cross-validated run: one checked file per fold, plus ``<name>.ensemble.json`` naming them with the
    ensemble's post-processing (what ``medseg predict -m <name>.ensemble.json`` reads)."""
    from medseg.infer.postprocessing import saved_steps

    members = json.loads(manifest.read_text(encoding="utf-8"))["members"]
    root = manifest.parent.parent
    name = f"model.{quantize}" if quantize else "model"
    target = Path(output) if output is not None else manifest.parent / f"{name}{FORMATS[fmt]}"
    if export_format(target) != fmt:
        raise ModelError(f"{target}: a {fmt} export must end in {FORMATS[fmt]}")
    written, reports = {}, []
    for fold, relative in sorted(members.items(), key=lambda item: int(item[0])):
        member = target.with_name(f"{target.stem}.fold{fold}{target.suffix}")
        exported = export_model(root / relative, fmt, member, check_inputs, max_cases, device, quantize, min_agreement)
        reports.append(exported.parity)
        written[fold] = member.name
    settings = Predictor.from_model(root / members[min(members, key=int)], backend="torch").settings
    document = {
        "kind": EXPORTED_ENSEMBLE_KIND,
        "format": fmt,
        "members": written,
        "postprocessing": saved_steps(settings.postprocessing, manifest.parent),
    }
    path = target.with_name(f"{target.stem}.ensemble.json")
    atomic_write_text(path, json.dumps(document, indent=1))
    worst = (
        min(reports, key=lambda r: r.mask_dice)
        if quantize
        else max(reports, key=lambda r: (r.max_abs_logit_difference, -r.mask_dice))
    )
    return ExportResult(path, fmt, worst)

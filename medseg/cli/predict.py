"""``medseg predict`` and ``medseg export``: use a trained model on new scans, or write it for another runtime."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medseg.cli.app import (
    DebugOption,
    DeviceOption,
    checked_device,
    guarded,
)

if TYPE_CHECKING:
    from medseg.infer.export import ExportResult
    from medseg.outputs.batch import PredictionReport
    from medseg.outputs.dicomweb import PacsReport
    from medseg.outputs.pacs import DicomwebSource


def predict(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Run folder, checkpoint, exported .onnx/.ts file, runs:/<id>/model or models:/<name>/<version>.",
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for masks, overlays and summary.csv.")],
    input_path: Annotated[
        Path | None, typer.Option("--input", "-i", help="An image or a folder of images (or use --dicomweb).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Recompute cases whose mask exists (or that the PACS holds).")
    ] = False,
    dicomweb: Annotated[
        str | None, typer.Option("--dicomweb", help="A PACS's DICOMweb root URL: the series come from there.")
    ] = None,
    study: Annotated[str | None, typer.Option("--study", help="DICOMweb: the StudyInstanceUID to segment.")] = None,
    series: Annotated[str | None, typer.Option("--series", help="DICOMweb: one SeriesInstanceUID.")] = None,
    query: Annotated[
        list[str] | None, typer.Option("--query", help="DICOMweb: a QIDO-RS filter KEY=VALUE (repeatable).")
    ] = None,
    channel: Annotated[
        list[str] | None,
        typer.Option(
            "--channel",
            help="DICOMweb, multi-channel models: KEY=PATTERN per channel, e.g. "
            "SeriesDescription=*FLAIR* (default: the model's modality names in SeriesDescription).",
        ),
    ] = None,
    store: Annotated[
        bool, typer.Option("--store", help="DICOMweb: STOW-RS the DICOM-SEG / RTSTRUCT back into the PACS.")
    ] = False,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Mirror test-time augmentation.")] = None,
    overlays: Annotated[bool, typer.Option("--overlays/--no-overlays", help="Write overlay PNGs (2D).")] = True,
    probabilities: Annotated[
        bool, typer.Option("--probabilities", help="Also write probability maps (scan geometry; 2D: PNG 0..255).")
    ] = False,
    formats: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Mask formats, comma-separated: input (default: the scan's own), nifti, nrrd, mha, seg.nrrd "
            "(3D Slicer), dicom-seg, rtstruct (DICOM series inputs; with --dicomweb the default is dicom-seg).",
        ),
    ] = None,
    statistics: Annotated[
        bool,
        typer.Option("--statistics", help="statistics.csv: volume, intensities, box, components per case and label."),
    ] = False,
    uncertainty: Annotated[
        bool,
        typer.Option(
            "--uncertainty", help="Predictive entropy maps and summary columns (turns TTA on unless --no-tta)."
        ),
    ] = False,
    meshes: Annotated[bool, typer.Option("--meshes", help="One surface mesh per label per case (3D).")] = False,
    instances: Annotated[
        bool,
        typer.Option(
            "--instances",
            help="An instance map per case (an id per connected component of a label); a row each in statistics.csv.",
        ),
    ] = False,
    min_size: Annotated[
        int, typer.Option("--min-instance-size", help="--instances: drop components under this many voxels/pixels.")
    ] = 10,
    split: Annotated[
        bool,
        typer.Option("--split-touching", help="--instances: cut touching objects by a distance-transform watershed."),
    ] = False,
    mesh_format: Annotated[str, typer.Option("--mesh-format", help="stl, obj or ply.")] = "stl",
    mesh_space: Annotated[
        str, typer.Option("--mesh-space", help="World coordinates of the meshes: lps (3D Slicer) or ras.")
    ] = "lps",
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="auto (the fastest here, timed), torch, onnxruntime or openvino (the openvino extra); default: the "
            "model's.",
        ),
    ] = None,
    folds: Annotated[
        str | None, typer.Option("--folds", help="A cross-validated run's folds to ensemble, e.g. 0,2 (default: all).")
    ] = None,
    device: DeviceOption = None,
    engine_name: Annotated[
        str, typer.Option("--engine", help="local (this process) or ray (Ray Data actors, one model each).")
    ] = "local",
    workers: Annotated[int, typer.Option("--workers", help="Ray: how many actors.")] = 2,
    gpus_per_worker: Annotated[float, typer.Option("--gpus-per-worker", help="Ray: GPUs per actor.")] = 0.0,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Ray: join this cluster (default $RAY_ADDRESS, else local).")
    ] = None,
    shard: Annotated[
        str | None, typer.Option("--shard", help="i/N: only shard i of N (job arrays); N shards cover every case once.")
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Segment a folder of images with a trained model (resumable: existing masks are kept)."""

    def action() -> None:
        from dataclasses import replace

        from medseg.infer.sources import SourceOptions
        from medseg.outputs.batch import Outputs, parse_shard
        from medseg.outputs.predict import Engine, predict_batch

        outputs = Outputs(
            _formats(formats), probabilities, uncertainty, statistics, meshes, mesh_format, mesh_space, overlays
        )
        outputs = replace(outputs, instances=instances, min_instance_size=min_size, split_touching=split)
        tta_on = True if uncertainty and tta is None else tta  # entropy over the mirrored predictions
        options = SourceOptions(tta_on, None, backend, _folds(folds), checked_device(device))
        source = _dicomweb_source(input_path, dicomweb, study, series, query, channel, store)
        if source is not None:
            from medseg.outputs.dicomweb import predict_dicomweb

            return _reported(predict_dicomweb(model, source, output, outputs, options, overwrite), output)
        engine = Engine(engine_name, workers, gpus_per_worker, ray_address)
        portion = parse_shard(shard) if shard is not None else None
        _reported(predict_batch(model, input_path, output, outputs, options, engine, portion, overwrite), output)

    guarded(debug, action)


def export(
    model: Annotated[str, typer.Argument(help="Run folder, checkpoint, runs:/<id>/model or models:/<name>/<version>.")],
    export_format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="onnx (runs on ONNX Runtime), torchscript, openvino (OpenVINO IR, the openvino extra), or bundle: "
            "a MONAI bundle folder that runs with python -m monai.bundle run, without medseg.",
        ),
    ] = "onnx",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="File to write (default: model.onnx / model.ts / model.xml / model.int8.xml / bundle/ beside the "
            "checkpoint; in this folder for a URI); a folder for --format bundle.",
        ),
    ] = None,
    check_input: Annotated[
        Path | None,
        typer.Option(
            "--check-input",
            help="Image or folder (as for predict) to also compare the backends on end to end; random "
            "tensors of the working shape always go through both networks.",
        ),
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option(
            "--quantize",
            help="int8 (with --format openvino): NNCF post-training quantization calibrated on the run's training "
            "cases; written only if every validation case's mask agrees with fp32's (needs the run's data).",
        ),
    ] = None,
    min_agreement: Annotated[
        float | None,
        typer.Option(
            "--min-agreement", help="--quantize: the least mask Dice against fp32 on each validation case (0.98)."
        ),
    ] = None,
    device: DeviceOption = None,
    debug: DebugOption = False,
) -> None:
    """Export a trained model to ONNX, TorchScript, OpenVINO (fp32 or int8) or a MONAI bundle; written only if it
    reproduces the PyTorch network (int8: agrees with it on the validation cases)."""

    def action() -> None:
        from medseg.infer.export import MIN_INT8_AGREEMENT, export_model

        agreement = MIN_INT8_AGREEMENT if min_agreement is None else min_agreement
        result = export_model(
            model,
            export_format,
            output,
            check_input,
            device=checked_device(device),
            quantize=quantize,
            min_agreement=agreement,
        )
        typer.echo(_export_report(result))
        for note in result.notes:
            typer.echo(f"left out of inference.json: {note}")
        typer.echo(_use_with(result.path, result.format))

    guarded(debug, action)


def _dicomweb_source(
    input_path: Path | None,
    url: str | None,
    study: str | None,
    series: str | None,
    query: list[str] | None,
    channels: list[str] | None,
    store: bool,
) -> DicomwebSource | None:
    """The DICOMweb source the options name (None: ``-i``); ConfigError naming the option that is wrong."""
    from medseg.core.errors import ConfigError
    from medseg.outputs.dicomweb import DicomwebSource, check_url, parse_pairs

    dicomweb_only = {"--store": store, "--study": study, "--series": series, "--query": query, "--channel": channels}
    if url is None:
        given = [name for name, value in dicomweb_only.items() if value]
        if given:
            raise ConfigError(f"{given[0]}: needs --dicomweb URL (the PACS to read from and store into)")
        if input_path is None:
            raise ConfigError("--input: give -i PATH, or --dicomweb URL to read from a PACS")
        return None
    if input_path is not None:
        raise ConfigError(f"--input {input_path}: give either -i or --dicomweb, not both")
    if not (study or series or query):
        raise ConfigError("--dicomweb: name what to segment with --study UID, --series UID or --query KEY=VALUE")
    return DicomwebSource(
        check_url(url), study, series, parse_pairs(query or [], "--query"), tuple(channels or ()), store
    )


def _reported(report: PredictionReport | PacsReport, output: Path) -> None:
    """The batch's one-line result, each failure on stderr; exit 1 if any case failed."""
    typer.echo(
        f"{len(report.written)} written, {len(report.skipped)} already done, {len(report.failed)} failed "
        f"-> {output / 'summary.csv'}"
    )
    for case, reason in report.failed.items():
        typer.echo(f"failed {case}: {reason}", err=True)
    if report.failed:
        raise typer.Exit(1)


def _export_report(result: ExportResult) -> str:
    """One line on what ``medseg export`` checked: parity (fp32) or agreement with fp32 (int8)."""
    parity = result.parity
    if parity.quantized:
        mean = sum(row["mask_dice"] for row in parity.per_case) / len(parity.per_case)
        return (
            f"{result.path} ({result.format}, {parity.quantized}): masks against fp32 on {parity.inputs}: "
            f"Dice min {parity.mask_dice:.4f} (at least {parity.min_agreement}), mean {mean:.4f}"
        )
    return (
        f"{result.path} ({result.format}): parity on {parity.inputs}: max |logit difference| "
        f"{parity.max_abs_logit_difference:.2e}, max |probability difference| "
        f"{parity.max_abs_probability_difference:.2e}, mask Dice {parity.mask_dice:.4f}"
    )


def _use_with(path: Path, export_format: str) -> str:
    """How to run what ``medseg export`` wrote."""
    if export_format == "bundle":
        return (
            f"run with: python -m monai.bundle run --config_file {path}/configs/inference.json --bundle_root {path} "
            "--dataset_dir IMAGES --output_dir OUTPUT"
        )
    return f"predict with: medseg predict -m {path} -i IMAGES -o OUTPUT"


def _formats(text: str | None) -> tuple[str, ...]:
    """``--format nifti,seg.nrrd`` -> the format names (none: the input's own)."""
    return tuple(f.strip() for f in text.split(",") if f.strip()) if text else ()


def _folds(text: str | None) -> list[int] | None:
    """``--folds 0,2`` -> [0, 2]; ConfigError for anything else."""
    if text is None:
        return None
    from medseg.core.errors import ConfigError

    try:
        return [int(f) for f in text.split(",")]
    except ValueError:
        raise ConfigError(f"--folds {text}: expected fold numbers separated by commas, e.g. 0,2") from None

"""``medseg predict`` and ``medseg export``: use a trained model on new scans, or write it for another runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medseg.cli.app import (
    DebugOption,
    DeviceOption,
    checked_device,
    guarded,
)


def predict(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Run folder, checkpoint, exported .onnx/.ts file, runs:/<id>/model or models:/<name>/<version>.",
        ),
    ],
    input_path: Annotated[Path, typer.Option("--input", "-i", help="An image or a folder of images.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for masks, overlays and summary.csv.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute cases whose mask exists.")] = False,
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
            "(3D Slicer), dicom-seg (DICOM series inputs).",
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
    mesh_format: Annotated[str, typer.Option("--mesh-format", help="stl, obj or ply.")] = "stl",
    mesh_space: Annotated[
        str, typer.Option("--mesh-space", help="World coordinates of the meshes: lps (3D Slicer) or ras.")
    ] = "lps",
    backend: Annotated[
        str | None,
        typer.Option("--backend", help="auto (the fastest here, timed), torch or onnxruntime; default: the model's."),
    ] = None,
    folds: Annotated[
        str | None, typer.Option("--folds", help="A cross-validated run's folds to ensemble, e.g. 0,2 (default: all).")
    ] = None,
    device: DeviceOption = None,
    engine: Annotated[
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
        from medseg.core.errors import ConfigError
        from medseg.infer.predictor import Predictor
        from medseg.outputs.batch import Outputs, parse_shard, predict_folder

        if backend not in (None, "auto", "torch", "onnxruntime"):
            raise ConfigError(f"--backend {backend}: expected auto, torch or onnxruntime")
        if engine not in ("local", "ray"):
            raise ConfigError(f"--engine {engine}: expected local or ray")
        portion = parse_shard(shard) if shard is not None else None
        if engine == "ray":
            from medseg.outputs.ray_engine import import_ray

            import_ray()  # the extra is installed, or one line saying how
        chosen = None
        if folds is not None:
            try:
                chosen = [int(f) for f in folds.split(",")]
            except ValueError:
                raise ConfigError(f"--folds {folds}: expected fold numbers separated by commas, e.g. 0,2") from None
        outputs = Outputs(
            formats=tuple(f.strip() for f in formats.split(",") if f.strip()) if formats else (),
            probabilities=probabilities,
            uncertainty=uncertainty,
            statistics=statistics,
            meshes=meshes,
            mesh_format=mesh_format,
            mesh_space=mesh_space,
            overlays=overlays,
        )
        tta_on = True if uncertainty and tta is None else tta  # entropy over the mirrored predictions
        options = {"tta": tta_on, "backend": backend, "folds": chosen, "device": checked_device(device)}
        if engine == "ray":
            from medseg.outputs.batch import folder_cases
            from medseg.outputs.ray_engine import predict_with_ray

            predictor = Predictor.from_model(model, **options)  # a bad model fails here, before Ray starts
            _, todo, summary = folder_cases(predictor.config, input_path, output, portion)
            report = predict_with_ray(
                predictor,
                model,
                options,
                todo,
                output,
                outputs,
                overwrite,
                workers,
                gpus_per_worker,
                ray_address,
                summary,
            )
        else:
            predictor = Predictor.from_model(model, **options)
            report = predict_folder(predictor, input_path, output, outputs, overwrite=overwrite, shard=portion)
        typer.echo(
            f"{len(report.written)} written, {len(report.skipped)} already done, {len(report.failed)} failed "
            f"-> {output / 'summary.csv'}"
        )
        if report.failed:
            for case, reason in report.failed.items():
                typer.echo(f"failed {case}: {reason}", err=True)
            raise typer.Exit(1)

    guarded(debug, action)


def export(
    model: Annotated[str, typer.Argument(help="Run folder, checkpoint, runs:/<id>/model or models:/<name>/<version>.")],
    export_format: Annotated[
        str, typer.Option("--format", "-f", help="onnx (runs on ONNX Runtime) or torchscript.")
    ] = "onnx",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="File to write (default: model.onnx / model.ts beside the checkpoint; in this folder for a URI).",
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
    device: DeviceOption = None,
    debug: DebugOption = False,
) -> None:
    """Export a trained model to ONNX or TorchScript; written only if it reproduces the PyTorch network."""

    def action() -> None:
        from medseg.infer.export import export_model

        result = export_model(model, export_format, output, check_input, device=checked_device(device))
        parity = result.parity
        typer.echo(
            f"{result.path} ({result.format}): parity on {parity.inputs}: max |logit difference| "
            f"{parity.max_abs_logit_difference:.2e}, max |probability difference| "
            f"{parity.max_abs_probability_difference:.2e}, mask Dice {parity.mask_dice:.4f}"
        )
        typer.echo(f"predict with: medseg predict -m {result.path} -i IMAGES -o OUTPUT")

    guarded(debug, action)

"""Command-line interface. Heavy libraries (torch, MONAI, MLflow) are imported inside the commands."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Medical-image segmentation pipelines driven by one YAML file, tracked in MLflow.",
)

PipelineArg = Annotated[Path, typer.Argument(help="Pipeline YAML file, e.g. pipelines/skin_lesion.yaml.")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a key: key.path=value (repeatable).")
]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help="auto (CUDA when available), cpu, cuda or cuda:N; default: the config's.")
]


def _checked_device(device: str | None) -> str | None:
    """``--device`` as given, after checking this machine has it (one line and exit 2 if not)."""
    if device is not None:
        from medseg.devices import resolve_device

        resolve_device(device, "--device")
    return device


def _without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE``."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == option:
            skip = True
        elif not item.startswith(f"{option}="):
            kept.append(item)
    return kept


def _setup_logging(debug: bool) -> None:
    from rich.logging import RichHandler

    from medseg.progress import console

    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=debug, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler], force=True)
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)  # a GPU decoder, absent here
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "git", "torch._export", "torch.export"):
        level = logging.ERROR if noisy.startswith("torch") else logging.WARNING
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else level)
    if not debug:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*transform info of.*")
        warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")  # MONAI, once pydicom is installed


def _guarded(debug: bool, action: Callable[[], Any]) -> Any:
    """Run a command; user errors become one line on stderr and exit code 2 (tracebacks with --debug)."""
    from medseg.errors import MedsegError, user_error_in

    _setup_logging(debug)
    try:
        return action()
    except MedsegError as exc:
        if debug:
            raise
        report = getattr(exc, "report", None)  # a data check: every problem in one table, then the first
        if report is not None and len(report.errors) > 1:
            from medseg.data.check import render_findings
            from medseg.progress import console

            console.print(render_findings(report))
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):  # click's exits are RuntimeErrors: a command's own exit code, not a crash
        raise
    except Exception as exc:
        if debug:
            raise
        wrapped = user_error_in(exc)  # e.g. a DataError re-raised as RuntimeError by a MONAI transform
        if wrapped is not None:
            print(f"error: {wrapped}", file=sys.stderr)
            raise typer.Exit(wrapped.exit_code) from None
        print(
            f"internal error: {exc.__class__.__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr
        )
        raise typer.Exit(1) from None


@app.command()
def run(
    pipeline: PipelineArg,
    overrides: SetOption = None,
    debug: DebugOption = False,
    name: Annotated[str | None, typer.Option("--name", help="Run name (default <pipeline>-<timestamp>).")] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Continue an interrupted run: its MLflow run id or run folder.")
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option(
            "--folds", help="k-fold cross-validation (sets training.folds); the model is the folds' ensemble."
        ),
    ] = None,
    fold: Annotated[
        int | None,
        typer.Option(
            "--fold", help="Train one fold into the run named by --name (gather folds from several machines)."
        ),
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option("--nproc", help="Train with DistributedDataParallel in N processes here (torchrun's launcher)."),
    ] = None,
    device: DeviceOption = None,
) -> None:
    """Run a pipeline: data -> train -> evaluate -> predict, tracked in MLflow."""

    def action() -> None:
        import os

        from medseg.config import load_config
        from medseg.errors import ConfigError
        from medseg.layout import RunLayout
        from medseg.pipeline import locate_run, run_pipeline

        if nproc is not None and nproc < 1:
            raise ConfigError(f"--nproc {nproc}: give at least 1 process (one per GPU, or a few on a CPU)")
        chosen = _checked_device(device)
        extra = [f"training.folds={folds}"] if folds is not None else []
        extra += [f"training.device={chosen}", f"inference.device={chosen}"] if chosen else []
        cfg = load_config(pipeline, [*(overrides or []), *extra])
        if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:  # start the processes; each runs this command
            from medseg.distributed import launch

            launch(nproc, _without_option(sys.argv[1:], "--nproc"))
            typer.echo(f"{nproc} processes finished; the run is tracked by rank 0")
            return
        resume_dir = None
        if resume:
            resume_dir = locate_run(cfg, resume)
            saved = load_config(RunLayout(resume_dir).config, overrides)
            if saved.name != cfg.name:
                raise ConfigError(f"--resume {resume}: that run belongs to pipeline {saved.name!r}, not {cfg.name!r}")
            cfg = saved
        result = run_pipeline(cfg, run_name=name, resume_dir=resume_dir, fold=fold)
        if os.environ.get("RANK", "0") != "0":
            return  # another rank's outputs are rank 0's
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if not k.endswith("_raw"))
        typer.echo(f"run {result.run_id}: {result.run_dir}" + (f"\n{metrics}" if metrics else ""))
        if result.model_uri:
            typer.echo(f"model: {result.model_uri}")
        if result.failed_cases:
            typer.echo(
                f"{len(result.failed_cases)} case(s) failed: " + "; ".join(result.failed_cases.values()), err=True
            )
            raise typer.Exit(1)

    _guarded(debug, action)


@app.command()
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
        from medseg.errors import ConfigError
        from medseg.infer.batch import Outputs, parse_shard, predict_folder
        from medseg.infer.predictor import Predictor

        if backend not in (None, "auto", "torch", "onnxruntime"):
            raise ConfigError(f"--backend {backend}: expected auto, torch or onnxruntime")
        if engine not in ("local", "ray"):
            raise ConfigError(f"--engine {engine}: expected local or ray")
        portion = parse_shard(shard) if shard is not None else None
        if engine == "ray":
            from medseg.infer.ray_engine import import_ray

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
        options = {"tta": tta_on, "backend": backend, "folds": chosen, "device": _checked_device(device)}
        if engine == "ray":
            from medseg.infer.batch import folder_cases
            from medseg.infer.ray_engine import predict_with_ray

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

    _guarded(debug, action)


@app.command()
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

        result = export_model(model, export_format, output, check_input, device=_checked_device(device))
        parity = result.parity
        typer.echo(
            f"{result.path} ({result.format}): parity on {parity.inputs}: max |logit difference| "
            f"{parity.max_abs_logit_difference:.2e}, max |probability difference| "
            f"{parity.max_abs_probability_difference:.2e}, mask Dice {parity.mask_dice:.4f}"
        )
        typer.echo(f"predict with: medseg predict -m {result.path} -i IMAGES -o OUTPUT")

    _guarded(debug, action)


@app.command()
def check(
    data: Annotated[
        Path | None, typer.Argument(help="Dataset folder (default: the pipeline's data.root/data.dataset_dir).")
    ] = None,
    pipeline: Annotated[
        Path | None,
        typer.Option("--pipeline", "-p", help="Pipeline YAML: its layout, channels, labels and modality."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the findings: report.csv or .json.")
    ] = None,
    overrides: SetOption = None,
    debug: DebugOption = False,
) -> None:
    """Read every case once and list ALL problems in one table (exit 0 clean, 1 warnings, 2 errors)."""

    def action() -> None:
        from medseg.data.check import check_dataset, render_findings
        from medseg.data.dataset import dataset_folder
        from medseg.progress import console

        cfg, folder = _check_target(data, pipeline, overrides)
        report = check_dataset(cfg, folder or dataset_folder(cfg))
        if output is not None:
            report.write(output)
        if report.findings:
            console.print(render_findings(report))
        typer.echo(report.summary() + (f" -> {output}" if output else ""))
        if report.exit_code:
            raise typer.Exit(report.exit_code)

    _guarded(debug, action)


@app.command()
def plan(
    data: Annotated[Path | None, typer.Argument(help="Dataset folder (default: the --pipeline's).")] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Pipeline YAML to write (<name>.fingerprint.json beside it).")
    ] = Path("pipelines/planned.yaml"),
    pipeline: Annotated[
        Path | None,
        typer.Option("--pipeline", "-p", help="Take how to find the cases (data section) from this pipeline."),
    ] = None,
    modality: Annotated[
        str | None, typer.Option("--modality", help="ct or mri (default: told from the intensities).")
    ] = None,
    memory_gb: Annotated[float, typer.Option("--memory-gb", help="Memory budget for one training step.")] = 4.0,
    device: Annotated[
        str, typer.Option("--device", help="cpu, or cuda[:N]: where one training step's memory is measured.")
    ] = "cpu",
    max_patch_voxels: Annotated[
        int | None, typer.Option("--max-patch-voxels", help="Cap on the patch (default 128^3 in 3D, 256^2 in 2D).")
    ] = None,
    merge_labels: Annotated[
        bool, typer.Option("--merge-labels", help="One foreground class for all labels > 0.")
    ] = False,
    overrides: SetOption = None,
    debug: DebugOption = False,
) -> None:
    """Fingerprint a dataset and write a pipeline YAML derived from it, each choice commented."""

    def action() -> None:
        from medseg.config import load_config
        from medseg.errors import ConfigError
        from medseg.planning import plan_dataset

        if modality not in (None, "ct", "mri"):
            raise ConfigError(f"--modality {modality}: expected ct or mri")
        if device != "cpu":
            import torch

            if not device.startswith("cuda") or not torch.cuda.is_available():
                raise ConfigError(f"--device {device}: expected cpu or cuda[:N] with a CUDA GPU present")
        source = load_config(pipeline, overrides) if pipeline is not None else None
        if data is None and source is None:
            raise ConfigError("medseg plan: give a dataset folder, or --pipeline to plan the pipeline's data")
        written, fingerprint, result = plan_dataset(
            data, output, None, modality, memory_gb, max_patch_voxels, merge_labels, source, device
        )
        typer.echo(f"{written} (fingerprint: {fingerprint})")
        for note in result.notes:
            typer.echo(f"note: {note}")
        typer.echo(f"train with: medseg run {written}")

    _guarded(debug, action)


@app.command()
def select(
    runs: Annotated[list[Path], typer.Argument(help="Cross-validated run folders to compare (and ensemble in pairs).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The plan to write.")] = Path("inference_plan.json"),
    pairs: Annotated[
        bool, typer.Option("--pairs/--no-pairs", help="Also try every pair of runs as an ensemble.")
    ] = True,
    debug: DebugOption = False,
) -> None:
    """Pick the best run or pair of runs on out-of-fold Dice; `medseg predict -m inference_plan.json` runs it."""

    def action() -> None:
        from medseg.selection import select as select_runs

        best, candidates = select_runs(runs, output, pairs)
        for candidate in sorted(candidates, key=lambda c: -c.dice):
            typer.echo(f"{candidate.dice:.4f}  (raw {candidate.dice_raw:.4f})  {candidate.name}")
        typer.echo(f"selected: {best.name} -> {output}")

    _guarded(debug, action)


def _check_target(data: Path | None, pipeline: Path | None, overrides: list[str] | None) -> tuple[Any, Path | None]:
    """The configuration to check ``data`` with: the pipeline's, or one guessed from the folder (2D images or
    3D scans, channels as found)."""
    from medseg.config import load_config
    from medseg.data.discovery import guess_config
    from medseg.errors import ConfigError

    if pipeline is not None:
        return load_config(pipeline, overrides), data
    if data is None:
        raise ConfigError("medseg check: give a dataset folder, or --pipeline to check the pipeline's data")
    return guess_config(data, "check"), data


@app.command()
def validate(pipeline: PipelineArg, overrides: SetOption = None, debug: DebugOption = False) -> None:
    """Check a pipeline file (schema, network and loss arguments) and print the resolved config."""

    def action() -> None:
        from rich.syntax import Syntax

        from medseg.config import load_config
        from medseg.progress import console
        from medseg.registry import build_loss, build_network

        cfg = load_config(pipeline, overrides)
        network, filled = build_network(
            cfg.model.name, cfg.spatial_dims, cfg.model.in_channels, cfg.model.out_channels, cfg.model.args, True
        )
        loss = cfg.loss
        build_loss(
            loss.name, cfg.model.out_channels, loss.args, bool(cfg.data.regions), cfg.data.ignore_label, loss.weights
        )
        if sys.stdout.isatty():
            console.print(Syntax(cfg.to_yaml(), "yaml"))
        else:
            typer.echo(cfg.to_yaml())

    _guarded(debug, action)


@app.command()
def ui(
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on (0 picks a free one).")] = 5000,
    host: Annotated[str, typer.Option("--host", help="Interface to bind (default: this machine only).")] = "127.0.0.1",
    backend_store_uri: Annotated[
        str | None, typer.Option("--backend-store-uri", help="MLflow store (default: sqlite mlruns/mlflow.db here).")
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Browse the tracked runs in the MLflow UI (Ctrl-C stops it)."""

    def action() -> None:
        from medseg.tracking.ui import run_ui

        run_ui(backend_store_uri, host, port)

    _guarded(debug, action)


@app.command()
def runs(
    pipeline: Annotated[
        str | None, typer.Argument(help="Pipeline YAML file or experiment name (default: all experiments).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many of the most recent runs.")] = 10,
    store: Annotated[str | None, typer.Option("--store", help="MLflow tracking URI (default: the project's).")] = None,
    debug: DebugOption = False,
) -> None:
    """List the most recent runs in the terminal: params that differ, key metrics."""

    def action() -> None:
        from medseg.tracking.runs_table import print_runs

        print_runs(pipeline, limit, store)

    _guarded(debug, action)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

"""``medseg run`` and ``medseg validate``: train, evaluate and predict from one pipeline file, or only check it."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from medseg.cli.app import (
    DebugOption,
    DeviceOption,
    PipelineArg,
    SetOption,
    checked_device,
    guarded,
    without_option,
)


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

        from medseg.pipeline.run import prepare_run, run_pipeline

        cfg, resume_dir = prepare_run(pipeline, overrides or [], folds, checked_device(device), resume, nproc)
        if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:  # start the processes; each runs this command
            from medseg.runtime.distributed import launch

            launch(nproc, without_option(sys.argv[1:], "--nproc"))
            typer.echo(f"{nproc} processes finished; the run is tracked by rank 0")
            return
        result = run_pipeline(cfg, run_name=name, resume_dir=resume_dir, fold=fold)
        if os.environ.get("RANK", "0") == "0":  # another rank's outputs are rank 0's
            _report(result)

    guarded(debug, action)


def _report(result: Any) -> None:
    """The run, its metrics and its model on stdout; failed cases on stderr and exit code 1."""
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if not k.endswith("_raw"))
    typer.echo(f"run {result.run_id}: {result.run_dir}" + (f"\n{metrics}" if metrics else ""))
    if result.model_uri:
        typer.echo(f"model: {result.model_uri}")
    if result.failed_cases:
        typer.echo(f"{len(result.failed_cases)} case(s) failed: " + "; ".join(result.failed_cases.values()), err=True)
        raise typer.Exit(1)


def validate(pipeline: PipelineArg, overrides: SetOption = None, debug: DebugOption = False) -> None:
    """Check a pipeline file (schema, network and loss arguments) and print the resolved config."""

    def action() -> None:
        from rich.syntax import Syntax

        from medseg.config.loading import load_config
        from medseg.core.progress import console
        from medseg.models.registry import build_loss, build_network

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

    guarded(debug, action)

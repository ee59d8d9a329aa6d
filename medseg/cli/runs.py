"""``medseg select``, ``medseg ui`` and ``medseg runs``: compare and browse tracked runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medseg.cli.app import (
    DebugOption,
    guarded,
)


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
        from medseg.pipeline.selection import select as select_runs

        best, candidates = select_runs(runs, output, pairs)
        for candidate in sorted(candidates, key=lambda c: -c.dice):
            typer.echo(f"{candidate.dice:.4f}  (raw {candidate.dice_raw:.4f})  {candidate.name}")
        typer.echo(f"selected: {best.name} -> {output}")

    guarded(debug, action)


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

    guarded(debug, action)


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

    guarded(debug, action)

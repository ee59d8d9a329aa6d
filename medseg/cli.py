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
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "git"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    if not debug:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*transform info of.*")


def _guarded(debug: bool, action: Callable[[], Any]) -> Any:
    """Run a command; user errors become one line on stderr and exit code 2 (tracebacks with --debug)."""
    from medseg.errors import MedsegError

    _setup_logging(debug)
    try:
        return action()
    except MedsegError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug:
            raise
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
) -> None:
    """Run a pipeline: data -> train -> evaluate -> predict, tracked in MLflow."""

    def action() -> None:
        from medseg.config import load_config
        from medseg.pipeline import run_pipeline

        cfg = load_config(pipeline, overrides)
        result = run_pipeline(cfg, run_name=name)
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if not k.endswith("_raw"))
        typer.echo(f"run {result.run_id}: {result.run_dir}" + (f"\n{metrics}" if metrics else ""))
        if result.failed_cases:
            typer.echo(
                f"{len(result.failed_cases)} case(s) failed: " + "; ".join(result.failed_cases.values()), err=True
            )
            raise typer.Exit(1)

    _guarded(debug, action)


@app.command()
def validate(pipeline: PipelineArg, overrides: SetOption = None, debug: DebugOption = False) -> None:
    """Check a pipeline file (schema, network and loss arguments) and print the resolved config."""

    def action() -> None:
        from rich.syntax import Syntax

        from medseg.config import load_config
        from medseg.progress import console
        from medseg.registry import build_loss, build_network

        cfg = load_config(pipeline, overrides)
        build_network(cfg.model.name, 2, cfg.model.in_channels, cfg.model.out_channels, cfg.model.args)
        build_loss(cfg.loss.name, cfg.model.out_channels, cfg.loss.args)
        if sys.stdout.isatty():
            console.print(Syntax(cfg.to_yaml(), "yaml"))
        else:
            typer.echo(cfg.to_yaml())

    _guarded(debug, action)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

"""The Typer application, the options every command shares, and the guard that turns user errors into one line and
an exit code. Heavy libraries (torch, MONAI, MLflow) are imported inside the commands."""

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


def checked_device(device: str | None) -> str | None:
    """``--device`` as given, after checking this machine has it (one line and exit 2 if not)."""
    if device is not None:
        from medseg.runtime.devices import resolve_device

        resolve_device(device, "--device")
    return device


def without_option(argv: list[str], option: str) -> list[str]:
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

    from medseg.core.progress import console

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


def guarded(debug: bool, action: Callable[[], Any]) -> Any:
    """Run a command; user errors become one line on stderr and exit code 2 (tracebacks with --debug)."""
    from medseg.core.errors import MedsegError, user_error_in

    _setup_logging(debug)
    try:
        return action()
    except MedsegError as exc:
        if debug:
            raise
        report = getattr(exc, "report", None)  # a data check: every problem in one table, then the first
        if report is not None and len(report.errors) > 1:
            from medseg.core.progress import console
            from medseg.data.check import render_findings

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

"""Command-line interface: one module per command group; each command parses its options and makes one call into
the library. The commands are registered here, in the order ``medseg --help`` lists them."""

from __future__ import annotations

from medseg.cli import data, predict, run, runs
from medseg.cli.app import app

COMMANDS = (
    run.run,
    predict.predict,
    predict.export,
    data.check,
    data.convert,
    data.plan,
    runs.select,
    run.validate,
    runs.ui,
    runs.runs,
)
for command in COMMANDS:
    app.command()(command)


def main() -> None:
    """Console-script entry point."""
    app()

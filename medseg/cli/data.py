"""``medseg check``, ``medseg plan`` and ``medseg convert``: read a dataset once and report its problems, derive a
pipeline from it, or write it in another tool's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medseg.cli.app import (
    DebugOption,
    SetOption,
    guarded,
)


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
        from medseg.config.settings import data_settings
        from medseg.core.progress import console
        from medseg.data.check import check_dataset, render_findings
        from medseg.data.dataset import dataset_folder

        cfg, folder = _check_target(data, pipeline, overrides)
        settings = data_settings(cfg)
        report = check_dataset(settings, folder or dataset_folder(settings))
        if output is not None:
            report.write(output)
        if report.findings:
            console.print(render_findings(report))
        typer.echo(report.summary() + (f" -> {output}" if output else ""))
        if report.exit_code:
            raise typer.Exit(report.exit_code)

    guarded(debug, action)


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
    minutes: Annotated[
        float | None,
        typer.Option("--minutes", help="Training budget: network, input and batch chosen by timing steps here."),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="cpu, or cuda[:N]: where training steps are measured (memory, time).")
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
        from medseg.config.loading import load_config
        from medseg.core.errors import ConfigError
        from medseg.planning.planner import plan_dataset

        _check_plan_options(modality, device, minutes)
        source = load_config(pipeline, overrides) if pipeline is not None else None
        if data is None and source is None:
            raise ConfigError("medseg plan: give a dataset folder, or --pipeline to plan the pipeline's data")
        written, fingerprint, result = plan_dataset(
            data, output, None, modality, memory_gb, max_patch_voxels, merge_labels, source, device, minutes
        )
        typer.echo(f"{written} (fingerprint: {fingerprint})")
        for note in result.notes:
            typer.echo(f"note: {note}")
        typer.echo(f"train with: medseg run {written}")

    guarded(debug, action)


def convert(
    source: Annotated[Path, typer.Argument(help="Dataset folder to read (any layout medseg reads).")],
    target: Annotated[Path, typer.Argument(help="Folder to write (new or empty).")],
    to: Annotated[str, typer.Option("--to", help="Target layout: nnunet, msd or folder.")],
    layout: Annotated[str, typer.Option("--layout", help="The source's layout (default: auto-detected).")] = "auto",
    dims: Annotated[
        int | None, typer.Option("--dims", help="2 or 3 (default: 3 when the source holds volumes).")
    ] = None,
    pipeline: Annotated[
        Path | None, typer.Option("--pipeline", "-p", help="Read the source as this pipeline's data section says.")
    ] = None,
    overrides: SetOption = None,
    debug: DebugOption = False,
) -> None:
    """Write a dataset in another tool's layout (nnU-Net v2, MSD, medseg folders), names kept."""

    def action() -> None:
        from medseg.core.errors import ConfigError
        from medseg.data.convert import convert_dataset, describe

        if dims not in (None, 2, 3):
            raise ConfigError(f"--dims {dims}: expected 2 or 3")
        converted = convert_dataset(source, target, to, _convert_settings(pipeline, layout, overrides), dims)
        typer.echo("\n".join(describe(converted)))

    guarded(debug, action)


def _check_plan_options(modality: str | None, device: str, minutes: float | None) -> None:
    """``medseg plan``'s options that need no data: one-line errors naming the option."""
    from medseg.core.errors import ConfigError

    if modality not in (None, "ct", "mri"):
        raise ConfigError(f"--modality {modality}: expected ct or mri")
    if minutes is not None and not minutes > 0:
        raise ConfigError(f"--minutes {minutes:g}: expected a positive number of minutes")
    if device != "cpu":
        import torch

        if not device.startswith("cuda") or not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: expected cpu or cuda[:N] with a CUDA GPU present")


def _check_target(data: Path | None, pipeline: Path | None, overrides: list[str] | None) -> tuple[Any, Path | None]:
    """The configuration to check ``data`` with: the pipeline's, or one guessed from the folder (2D images or
    3D scans, channels as found)."""
    from medseg.config.loading import load_config
    from medseg.core.errors import ConfigError
    from medseg.planning.planner import guess_config

    if pipeline is not None:
        return load_config(pipeline, overrides), data
    if data is None:
        raise ConfigError("medseg check: give a dataset folder, or --pipeline to check the pipeline's data")
    return guess_config(data, "check"), data


def _convert_settings(pipeline: Path | None, layout: str, overrides: list[str] | None) -> Any:
    """How ``medseg convert`` reads its source: the pipeline's data section (or the defaults with ``--set``
    overrides), ``--layout`` replacing ``data.layout``."""
    from medseg.config.loading import apply_overrides, load_config, validation_message
    from medseg.config.schema import PipelineConfig
    from medseg.core.errors import ConfigError
    from medseg.data.layouts.base import LayoutSettings
    from medseg.data.layouts.registry import get_layout

    if pipeline is not None:
        cfg = load_config(pipeline, overrides)
    else:
        try:
            cfg = PipelineConfig.model_validate(apply_overrides({"name": "convert"}, overrides or [], {}))
        except ValueError as exc:
            raise ConfigError(f"--set: {validation_message(exc)}") from None
    data = cfg.data if layout == "auto" else cfg.data.model_copy(update={"layout": get_layout(layout).name})
    return LayoutSettings.of(data, cfg.spatial_dims)

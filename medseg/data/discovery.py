"""Which cases a dataset folder holds, as a pipeline describes it (or as guessed from the folder), before any
case is read: what ``medseg check``, ``medseg run``, ``medseg plan`` and ``medseg select`` start from."""

from __future__ import annotations

from pathlib import Path

from medseg.config.schema import PipelineConfig
from medseg.core.errors import DataError
from medseg.data.layouts.base import Cases, LayoutSettings
from medseg.data.layouts.registry import find_in_layout
from medseg.data.records import Finding
from medseg.imageio.formats import is_image_2d


def find_cases(cfg: PipelineConfig, folder: Path, findings: list[Finding] | None = None) -> Cases:
    """The cases under ``folder`` in the pipeline's layout (2D pairs or 3D scans), none of them read.

    ``findings``: 2D cases without their mask are recorded there instead of stopping the search.
    """
    return find_in_layout(folder, LayoutSettings.of(cfg.data, cfg.spatial_dims), findings)


def guess_config(folder: Path, name: str) -> PipelineConfig:
    """A configuration for a folder without a pipeline: 2D RGB if ``images/`` holds 2D images, else 3D with the
    channels the first case has."""
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found")
    images = folder / PipelineConfig(name=name).data.images_dir
    if images.is_dir() and any(is_image_2d(p) for p in images.iterdir()):
        return PipelineConfig(name=name)
    guess = PipelineConfig(name=name, spatial_dims=3, model={"in_channels": 1})
    records = find_cases(guess, folder).records
    return guess.with_values({"model.in_channels": len(records[0]["image"]) if records else 1})

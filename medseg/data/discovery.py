"""Which cases a dataset folder holds, as a pipeline describes it (or as guessed from the folder), before any
case is read: what ``medseg check``, ``medseg plan`` and ``medseg select`` start from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medseg.config.schema import PipelineConfig
from medseg.core.errors import DataError
from medseg.data.image_datalist import DatalistReport, find_image_pairs
from medseg.data.records import Finding, Record, detect_layout
from medseg.data.volume_datalist import cases_from_config, find_volume_cases
from medseg.imageio.formats import is_image_2d


@dataclass
class Cases:
    """The records found, the layout and the file that listed them, and the channel count the layout declares."""

    records: list[Record]
    layout: str
    source: Path
    channels: int | None = None
    report: DatalistReport = field(default_factory=DatalistReport)


def find_cases(cfg: PipelineConfig, folder: Path, findings: list[Finding] | None = None) -> Cases:
    """The cases under ``folder`` (2D pairs or 3D scans, ``data.cases`` when listed), none of them read.

    ``findings``: 2D cases without their mask are recorded there instead of stopping the search.
    """
    data = cfg.data
    if cfg.spatial_dims == 2:
        report = DatalistReport()
        records = find_image_pairs(folder, data, report, findings)
        return Cases(records, detect_layout(folder, data, spatial_dims=2), folder, report=report)
    if data.cases:
        return Cases(cases_from_config(folder, data.cases), "list", folder)
    layout = detect_layout(folder, data, spatial_dims=3)
    records, channels, source = find_volume_cases(
        folder, layout, data.modalities, data.labels_dir, data.dataset_json, data.csv_file
    )
    return Cases(records, layout, source, channels)


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

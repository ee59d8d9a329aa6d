"""One entry point for the datalist of a dataset folder, 2D or 3D: the records, what the check found, and a
fingerprint that tells runs on different data apart."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from medseg.config import PipelineConfig
from medseg.data.image_datalist import DatalistReport, build_image_datalist, image_fingerprint
from medseg.data.records import Record, detect_layout
from medseg.data.volume_datalist import (
    build_volume_datalist,
    check_label_values,
    records_from_cases,
    volume_fingerprint,
)
from medseg.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Datalist:
    """The checked records of a dataset folder."""

    records: list[Record]
    report: DatalistReport
    fingerprint: str


def build_datalist(cfg: PipelineConfig, folder: Path) -> Datalist:
    """Find and check every case under ``folder`` as the pipeline describes it (2D images or 3D scans).

    Raises:
        DataError: one line naming the file (and case) at fault.
    """
    if cfg.spatial_dims == 2:
        records, report = build_image_datalist(folder, cfg.data, in_channels=cfg.model.in_channels)
        if report.masks_with_non_binary_pixels:
            log.warning(
                "%d mask(s) hold %d non-binary pixel(s), e.g. %s; masks are binarised at > 0",
                report.masks_with_non_binary_pixels,
                report.non_binary_pixels,
                report.non_binary_example,
            )
        if report.unmatched_masks:
            log.warning(
                "%d mask(s) have no image and are ignored, e.g. %s",
                len(report.unmatched_masks),
                report.unmatched_masks[0],
            )
        return Datalist(records, report, image_fingerprint(records))
    data = cfg.data
    if data.cases:
        records = records_from_cases(folder, data.cases)
    else:
        layout = detect_layout(folder, data, spatial_dims=3)
        records = build_volume_datalist(
            folder, layout, data.modalities, data.labels_dir, data.dataset_json, data.csv_file
        )
    channels = len(records[0]["image"])
    if channels != cfg.model.in_channels:
        raise DataError(
            f"{folder}: cases have {channels} image channel(s) but model.in_channels is {cfg.model.in_channels}"
        )
    check_label_values(records, data.label_mapping)
    return Datalist(records, DatalistReport(cases=len(records)), volume_fingerprint(records))

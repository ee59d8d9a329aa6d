"""One entry point for the datalist of a dataset folder, 2D or 3D: the records, what the check found, and a
fingerprint that tells runs on different data apart.

The one path from a dataset folder to its cases: :func:`build_datalist` -> :func:`medseg.data.check.check_dataset`
-> :func:`medseg.data.discovery.find_cases` -> the folder's layout (:mod:`medseg.data.layouts`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from medseg.data.check import CheckReport, check_dataset, raise_or_skip
from medseg.data.image_checks import DatalistReport, image_fingerprint
from medseg.data.records import Record
from medseg.data.settings import DataSettings
from medseg.data.volume_checks import volume_fingerprint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Datalist:
    """The checked records of a dataset folder (without the cases left out under ``data.on_bad_case: skip``)."""

    records: list[Record]
    report: DatalistReport
    fingerprint: str
    check: CheckReport


def build_datalist(settings: DataSettings, folder: Path) -> Datalist:
    """Find and check every case under ``folder`` as the pipeline describes it (2D images or 3D scans).

    Every case is read once (:func:`medseg.data.check.check_dataset`); warnings are logged, one line per kind.

    Raises:
        DataError: the folder or its list file cannot be read (one line naming the file).
        DataCheckError: the cases have errors (all of them in its report) and ``data.on_bad_case`` is ``error``.
    """
    result = check_dataset(settings, folder)
    records = raise_or_skip(result, settings.data.on_bad_case)
    fingerprint = image_fingerprint(records) if settings.spatial_dims == 2 else volume_fingerprint(records)
    return Datalist(records, result.report, fingerprint, result)

"""The ``list`` layout (3D): the cases listed in the pipeline file (``data.cases``), paths relative to the dataset
folder. Listed cases win over ``data.layout``; a case without a label is kept (the data check reports it)."""

from __future__ import annotations

from pathlib import Path

from medseg.core.errors import DataError
from medseg.data.layouts.base import Cases, Layout, LayoutSettings
from medseg.data.records import Finding, Record


class CaseListLayout(Layout):
    name = "list"
    evidence = "data.cases lists the cases"
    spatial_dims = (3,)
    in_folder = False  # the paths may point anywhere; nothing is looked up before the data check

    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        return bool(settings.cases)

    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        if not settings.cases:
            raise DataError(f"{folder}: data.layout is list but data.cases lists no case")
        records: list[Record] = [
            {
                "id": case.id,
                "image": [str(folder / p) for p in case.image],
                **({"label": str(folder / case.label)} if case.label else {}),
            }
            for case in settings.cases
        ]
        return Cases(records, self.name, folder)

"""The layouts by name: the one table where a ``data.layout`` value becomes a layout, the choice for ``auto``, and
:func:`find_in_layout`, which every search for a dataset's cases goes through."""

from __future__ import annotations

import logging
from pathlib import Path

from medseg.core.errors import DataError
from medseg.data.label_files import with_label_maps
from medseg.data.layouts.base import Cases, Layout, LayoutSettings
from medseg.data.layouts.case_list import CaseListLayout
from medseg.data.layouts.coco import CocoLayout
from medseg.data.layouts.csv_table import CsvLayout
from medseg.data.layouts.cvat import CvatLayout
from medseg.data.layouts.cvat_masks import CvatMasksLayout
from medseg.data.layouts.folder import FolderLayout
from medseg.data.layouts.folders import FoldersLayout
from medseg.data.layouts.labelme import LabelmeLayout
from medseg.data.layouts.msd import MsdLayout
from medseg.data.layouts.nnunet import NnunetLayout
from medseg.data.layouts.volume_folder import VolumeFolderLayout
from medseg.data.records import Finding

log = logging.getLogger(__name__)

#: name -> layout, in the order ``auto`` asks them (the first that detects its files wins)
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        *(CaseListLayout(), MsdLayout(), CsvLayout(), FoldersLayout(), NnunetLayout()),
        *(CvatLayout(), CvatMasksLayout(), CocoLayout(), LabelmeLayout(), FolderLayout(), VolumeFolderLayout()),
    )
}
#: what ``auto`` takes when no layout detects its files (its error then names what is missing)
FALLBACK = {2: "folder", 3: "nnunet"}


def get_layout(name: str) -> Layout:
    """The layout called ``name``; DataError listing the known ones otherwise."""
    if name not in LAYOUTS:
        raise DataError(f"unknown data layout {name!r}; known layouts: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def choose_layout(folder: Path, settings: LayoutSettings) -> tuple[Layout, str]:
    """The configured layout, or for ``auto`` the one that detects its files under ``folder``; and why.

    3D: cases listed in the pipeline file (``data.cases``) win over ``data.layout``, and ``folder`` means ``auto``.
    ``auto``: the layouts describing their cases in a file (dataset.json, CSV, annotation files), where two fitting
    is an error naming both; else the first of those matching files by name (``by_content``, e.g. ``folders`` where
    ``data.modalities`` names the folders).

    Raises:
        DataError: an unknown layout, one that does not read these dimensions, or two that fit equally.
    """
    dims = settings.spatial_dims
    if dims == 3 and settings.cases:
        return LAYOUTS["list"], "data.cases lists the cases"
    if settings.layout != "auto" and not (dims == 3 and settings.layout == "folder"):
        layout = get_layout(settings.layout)
        if dims not in layout.spatial_dims:
            known = ", ".join(name for name, lay in LAYOUTS.items() if dims in lay.spatial_dims)
            raise DataError(f"data.layout {layout.name!r} does not read {dims}D data; {dims}D layouts: {known}")
        return layout, f"data.layout: {layout.name}"
    fitting = [lay for lay in LAYOUTS.values() if dims in lay.spatial_dims and lay.detect(folder, settings)]
    described = [lay for lay in fitting if not lay.by_content]
    if len(described) > 1:
        first, second = described[:2]
        raise DataError(
            f"{folder}: both the {first.name} layout ({first.evidence}) and the {second.name} layout "
            f"({second.evidence}) fit; set data.layout to {first.name} or {second.name}"
        )
    if fitting:
        layout = (described or fitting)[0]
        return layout, f"auto: {layout.evidence}"
    layout = LAYOUTS[FALLBACK[dims]]
    return layout, f"auto: no layout's files found, tried {layout.name}"


def find_in_layout(folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
    """The cases under ``folder`` in its layout, none of them read (``findings``: see :meth:`Layout.find`).

    Raises:
        DataError: one line naming the file (and case) at fault: no folder, an unreadable list, a missing file.
    """
    layout, reason = choose_layout(folder, settings)
    if layout.in_folder:
        if not folder.is_dir():
            raise DataError(f"{folder}: dataset folder not found")
        if settings.spatial_dims == 3 and not any(folder.iterdir()):  # (2D: the folder layout names images/)
            raise DataError(f"{folder}: dataset folder is empty")
    cases = with_label_maps(layout.find(folder, settings, findings), settings, findings)  # .seg.nrrd, DICOM-SEG
    cases.reason = reason
    log.info("%s: %s layout (%s)", folder, layout.name, reason)
    return cases

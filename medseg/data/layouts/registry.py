"""The layouts by name: the one table where a ``data.layout`` value becomes a layout, the choice for ``auto``, and
:func:`find_in_layout`, which every search for a dataset's cases goes through."""

from __future__ import annotations

from pathlib import Path

from medseg.core.errors import DataError
from medseg.data.layouts.base import Cases, Layout, LayoutSettings
from medseg.data.layouts.case_list import CaseListLayout
from medseg.data.layouts.coco import CocoLayout
from medseg.data.layouts.csv_table import CsvLayout
from medseg.data.layouts.cvat import CvatLayout
from medseg.data.layouts.folder import FolderLayout
from medseg.data.layouts.folders import FoldersLayout
from medseg.data.layouts.labelme import LabelmeLayout
from medseg.data.layouts.msd import MsdLayout
from medseg.data.layouts.nnunet import NnunetLayout
from medseg.data.records import Finding

#: name -> layout, in the order ``auto`` asks them (the first that detects its files wins)
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        *(CaseListLayout(), MsdLayout(), CsvLayout(), FoldersLayout(), NnunetLayout()),
        *(CvatLayout(), CocoLayout(), LabelmeLayout(), FolderLayout()),
    )
}
#: what ``auto`` takes when no layout detects its files (its error then names what is missing)
FALLBACK = {2: "folder", 3: "nnunet"}


def get_layout(name: str) -> Layout:
    """The layout called ``name``; DataError listing the known ones otherwise."""
    if name not in LAYOUTS:
        raise DataError(f"unknown data layout {name!r}; known layouts: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def choose_layout(folder: Path, settings: LayoutSettings) -> Layout:
    """The configured layout, or for ``auto`` the first that detects its files under ``folder``.

    3D: cases listed in the pipeline file (``data.cases``) win over ``data.layout``, and ``folder`` means ``auto``.
    """
    dims = settings.spatial_dims
    if dims == 3 and settings.cases:
        return LAYOUTS["list"]
    if settings.layout == "auto" or (dims == 3 and settings.layout == "folder"):
        detected = (lay for lay in LAYOUTS.values() if dims in lay.spatial_dims and lay.detect(folder, settings))
        return next(detected, LAYOUTS[FALLBACK[dims]])
    layout = get_layout(settings.layout)
    if dims not in layout.spatial_dims:
        known = ", ".join(name for name, lay in LAYOUTS.items() if dims in lay.spatial_dims)
        raise DataError(f"data.layout {layout.name!r} does not read {dims}D data; {dims}D layouts: {known}")
    return layout


def find_in_layout(folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
    """The cases under ``folder`` in its layout, none of them read (``findings``: see :meth:`Layout.find`).

    Raises:
        DataError: one line naming the file (and case) at fault: no folder, an unreadable list, a missing file.
    """
    layout = choose_layout(folder, settings)
    if layout.in_folder:
        if not folder.is_dir():
            raise DataError(f"{folder}: dataset folder not found")
        if settings.spatial_dims == 3 and not any(folder.iterdir()):  # (2D: the folder layout names images/)
            raise DataError(f"{folder}: dataset folder is empty")
    return layout.find(folder, settings, findings)

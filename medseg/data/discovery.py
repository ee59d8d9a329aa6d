"""Which cases a dataset folder holds, as a pipeline describes it, before any case is read: what ``medseg check``,
``medseg run``, ``medseg plan`` and ``medseg select`` start from."""

from __future__ import annotations

from pathlib import Path

from medseg.data.layouts.base import Cases, LayoutSettings
from medseg.data.layouts.registry import find_in_layout
from medseg.data.records import Finding
from medseg.data.settings import DataSettings


def find_cases(settings: DataSettings, folder: Path, findings: list[Finding] | None = None) -> Cases:
    """The cases under ``folder`` in the pipeline's layout (2D pairs or 3D scans), none of them read.

    ``findings``: 2D cases without their mask are recorded there instead of stopping the search.
    """
    return find_in_layout(folder, LayoutSettings.of(settings.data, settings.spatial_dims), findings)

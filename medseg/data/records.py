"""What a datalist is made of: records, case ids, and which layout a dataset folder has."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medseg.config.schema import DataConfig
from medseg.core.errors import DataError

#: ``{"id": str, "image": path (2D) or [path per channel] (3D), "label": path (absent for unlabelled cases)}``
Record = dict[str, Any]

IMAGE_LAYOUTS = ("folder", "csv", "msd")
VOLUME_LAYOUTS = ("msd", "nnunet", "csv", "folders")


def check_case_id(case_id: str, source: Path) -> None:
    """DataError for a case id that could name a path outside an output folder (separators, ``..``, empty)."""
    if not case_id.strip() or case_id in {".", ".."} or any(c in case_id for c in "/\\\0"):
        raise DataError(f"{source}: case id {case_id!r} is not a plain name (no path separators, '..' or empty ids)")


def case_id_findings(records: list[Record], source: Path) -> list[Finding]:
    """An error for every id that appears twice or is not a plain name."""
    findings, seen = [], set()
    for record in records:
        case = record["id"]
        if case in seen:
            findings.append(
                Finding("error", case, "duplicate id", f"{source}: case id {case!r} appears more than once")
            )
            continue
        seen.add(case)
        try:
            check_case_id(case, source)
        except DataError as exc:
            findings.append(Finding("error", case, "case id", str(exc)))
    return findings


def check_case_ids(records: list[Record], source: Path) -> None:
    """DataError for the first id that appears twice or is not a plain name."""
    error = first_error(case_id_findings(records, source))
    if error is not None:
        raise DataError(error.message)


def detect_layout(folder: Path, cfg: DataConfig, spatial_dims: int) -> str:
    """The configured layout, or for ``auto``: ``msd`` if the dataset.json exists, else ``csv`` if the CSV exists,
    else ``folder`` (2D), or ``folders`` when modalities are named and ``nnunet`` otherwise (3D)."""
    layout = cfg.layout
    if spatial_dims == 2 and layout != "auto":
        return layout
    if spatial_dims == 3 and layout not in ("auto", "folder"):
        return layout
    if (folder / cfg.dataset_json).is_file():
        return "msd"
    if (folder / cfg.csv_file).is_file():
        return "csv"
    if spatial_dims == 2:
        return "folder"
    return "folders" if cfg.modalities else "nnunet"


def subset(records: list[Record], ids: list[str]) -> list[Record]:
    """The records with these ids, in that order."""
    by_id = {r["id"]: r for r in records}
    return [by_id[i] for i in ids]


@dataclass(frozen=True)
class Finding:
    """One problem of one case (or of the whole dataset when ``case`` is empty), found by a data check.

    ``message`` is one line that names the file; an ``error`` stops a run, a ``warning`` does not.
    """

    severity: Literal["error", "warning"]
    case: str
    check: str
    message: str
    file: str = ""


def first_error(findings: list[Finding]) -> Finding | None:
    """The first error among ``findings``, if any."""
    return next((f for f in findings if f.severity == "error"), None)

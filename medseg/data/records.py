"""What a datalist is made of: records, case ids and the findings of a data check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medseg.core.errors import DataError

#: ``{"id": str, "image": path (2D) or [path per channel] (3D), "label": path (absent for unlabelled cases)}``
Record = dict[str, Any]


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

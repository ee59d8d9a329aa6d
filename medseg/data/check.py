"""``medseg check``: read every case of a dataset once and report all its problems in one table.

Per case (in parallel threads): files and headers, image/label geometry, image modes, label values, voxels.
Across cases: case ids that collide, duplicate images (content hash), mixed orientations, spacing outliers
(> 3x the median on an axis). ``medseg run`` runs the same check before anything is written.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.config.schema import DataConfig
from medseg.core.atomic import atomic_write_text
from medseg.core.errors import DataError
from medseg.data.discovery import find_cases
from medseg.data.image_checks import DatalistReport, pair_findings
from medseg.data.records import Finding, Record, case_id_findings
from medseg.data.settings import DataSettings
from medseg.data.volume_checks import CaseFacts, case_findings

log = logging.getLogger(__name__)

SPACING_OUTLIER_FACTOR = 3.0
COLUMNS = ("severity", "case", "check", "file", "message")


@dataclass
class CheckReport:
    """Every finding of a data check, and the records it was made on."""

    root: Path
    records: list[Record]
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0
    report: DatalistReport = field(default_factory=DatalistReport)
    layout: str = ""  # the layout the cases were read in
    resolved: dict[str, Any] = field(default_factory=dict)  # what the dataset's description gives (Cases.resolved)
    reason: str = ""  # why that layout (Cases.reason)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def bad_cases(self) -> list[str]:
        """Cases with at least one error (found in the data or not: a case without its mask), sorted."""
        return sorted({f.case for f in self.errors if f.case})

    @property
    def good_records(self) -> list[Record]:
        bad = set(self.bad_cases)
        return [r for r in self.records if r["id"] not in bad]

    @property
    def exit_code(self) -> int:
        """0 clean, 1 warnings only, 2 errors."""
        return 2 if self.errors else 1 if self.findings else 0

    def summary(self) -> str:
        said = "; ".join(part for part in (self.layout and f"{self.layout} layout", self.reason) if part)
        layout = f" ({said})" if said else ""
        return (
            f"{self.root}{layout}: {len(self.records)} case(s) checked in {self.seconds:.1f} s: "
            f"{len(self.errors)} error(s) "
            f"in {len(self.bad_cases)} case(s), {len(self.warnings)} warning(s)"
        )

    def csv_text(self, findings: list[Finding] | None = None) -> str:
        """The findings (default: all of them) as CSV."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: getattr(f, k) for k in COLUMNS} for f in (self.findings if findings is None else findings))
        return buffer.getvalue()

    def write(self, path: Path) -> None:
        """The findings as CSV (``.csv``) or JSON (anything else), atomically."""
        if path.suffix.lower() == ".csv":
            atomic_write_text(path, self.csv_text())
            return
        document = {
            "root": str(self.root),
            "cases": len(self.records),
            "seconds": round(self.seconds, 3),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "bad_cases": self.bad_cases,
            "findings": [asdict(f) for f in self.findings],
        }
        atomic_write_text(path, json.dumps(document, indent=1))


class DataCheckError(DataError):
    """A dataset with errors: the first one as the message, all of them in :attr:`report`."""

    def __init__(self, report: CheckReport) -> None:
        errors = report.errors
        more = len(errors) - 1
        suffix = f" (and {more} more error(s) in {len(report.bad_cases)} case(s): see the table)" if more else ""
        super().__init__(errors[0].message + suffix)
        self.report = report


def render_findings(report: CheckReport):
    """A :class:`rich.table.Table` of the findings, errors first."""
    from rich.table import Table

    table = Table(title=report.summary(), title_justify="left")
    for column in ("severity", "case", "check", "message"):
        table.add_column(column, no_wrap=column != "message", overflow="fold")
    style = {"error": "red", "warning": "yellow"}
    for finding in sorted(report.findings, key=lambda f: (f.severity != "error", f.case, f.check)):
        table.add_row(f"[{style[finding.severity]}]{finding.severity}[/]", finding.case, finding.check, finding.message)
    return table


def _in_parallel(function: Callable[[Record], tuple[list[Finding], object]], records: list[Record], workers: int):
    if workers <= 1 or len(records) < 2:
        return [function(r) for r in records]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # decoding and zlib release the GIL
        return list(pool.map(function, records))


def _duplicate_findings(digests: dict[str, str | None], records: list[Record], key: str = "image") -> list[Finding]:
    by_digest: dict[str, list[str]] = defaultdict(list)
    for record in records:
        digest = digests.get(record["id"])
        if digest:
            by_digest[digest].append(record["id"])
    findings = []
    for cases in by_digest.values():
        for case in cases[1:]:
            record = next(r for r in records if r["id"] == case)
            path = record[key][0] if isinstance(record[key], list) else record[key]
            message = f"{path}: the same image as case {cases[0]!r} (identical voxels)"
            findings.append(Finding("warning", case, "duplicate image", message, str(path)))
    return findings


def _volume_dataset_findings(facts: dict[str, CaseFacts], records: list[Record]) -> list[Finding]:
    findings = []
    orientations = Counter(f.orientation for f in facts.values() if f.orientation)
    if len(orientations) > 1:
        usual, count = orientations.most_common(1)[0]
        total = sum(orientations.values())
        for record in records:
            found = facts[record["id"]].orientation
            if found and found != usual:
                message = (
                    f"{record['image'][0]}: orientation {found}, while {count} of {total} cases are {usual} "
                    "(reoriented in training)"
                )
                findings.append(Finding("warning", record["id"], "orientation", message, record["image"][0]))
    spacings = {case: f.spacing for case, f in facts.items() if f.spacing}
    if len(spacings) >= 3:
        median = np.median(np.array(list(spacings.values())), axis=0)
        for record in records:
            spacing = spacings.get(record["id"])
            if spacing is None:
                continue
            ratio = np.maximum(np.array(spacing) / median, median / np.array(spacing))
            if (ratio > SPACING_OUTLIER_FACTOR).any():
                shown = "x".join(f"{v:.3g}" for v in spacing)
                usual = "x".join(f"{v:.3g}" for v in median)
                message = f"{record['image'][0]}: spacing {shown} mm, more than 3x the median {usual} mm on an axis"
                findings.append(Finding("warning", record["id"], "spacing outlier", message, record["image"][0]))
    return findings


def _image_findings(
    records: list[Record],
    report: DatalistReport,
    data: DataConfig,
    in_channels: int,
    folder: Path,
    workers: int,
    listed: tuple[str, set[int]] | None = None,
) -> list[Finding]:
    """2D: every pair decoded once (modes, sizes, mask values; ``listed``: the dataset's own list of label values
    where it names several classes), duplicate images, masks without an image."""
    mapped = data.label_mapping
    values = {*mapped, *([data.ignore_label] if data.ignore_label else [])} if mapped else None
    results = _in_parallel(lambda r: pair_findings(r, in_channels, report, values, listed), records, workers)
    digests = {r["id"]: digest for r, (_, digest) in zip(records, results, strict=True)}
    findings = [finding for case_findings_, _ in results for finding in case_findings_]
    findings += _duplicate_findings(digests, records)
    if report.unmatched_masks:
        message = (
            f"{folder / data.masks_dir}: {len(report.unmatched_masks)} mask(s) have no image and are ignored, "
            f"e.g. {report.unmatched_masks[0]}"
        )
        findings.append(Finding("warning", "", "unmatched masks", message))
    return findings


def _volume_findings(
    records: list[Record],
    channels: int | None,
    in_channels: int,
    mapping: dict[int, int] | None,
    modality: str,
    folder: Path,
    workers: int,
    listed: tuple[str, set[int]] | None = None,
) -> list[Finding]:
    """3D: the channel count, every case's headers, labels and voxels (``listed``: the dataset's own list of label
    values, by file), duplicates, orientations and spacings."""
    findings = []
    declared = channels or (len(records[0]["image"]) if records else None)  # a 4D file holds several channels
    if declared is not None and declared != in_channels:
        message = f"{folder}: cases have {declared} image channel(s) but model.in_channels is {in_channels}"
        findings.append(Finding("error", "", "channels", message))
    results = _in_parallel(lambda r: case_findings(r, channels, mapping, modality, listed), records, workers)
    facts = {r["id"]: f for r, (_, f) in zip(records, results, strict=True)}
    findings += [finding for case_findings_, _ in results for finding in case_findings_]
    findings += _duplicate_findings({case: f.digest for case, f in facts.items()}, records)
    return findings + _volume_dataset_findings(facts, records)


def listed_labels(resolved: dict[str, Any], source: Path, json_name: str) -> tuple[str, set[int]] | None:
    """The label values a dataset's description lists (its label names, ignore label and regions), with the file
    that lists them; None where it lists none."""
    named = resolved.get("data.labels")
    regions = resolved.get("data.regions")
    if not named and not regions:
        return None
    values = {int(v) for v in named or {}} | {int(v) for members in (regions or {}).values() for v in members}
    if resolved.get("data.ignore_label") is not None:
        values.add(int(resolved["data.ignore_label"]))
    return str(source if source.is_file() else source / json_name), values


def check_dataset(settings: DataSettings, folder: Path, workers: int = 2) -> CheckReport:
    """Check every case under ``folder`` as the pipeline describes it (2D images or 3D scans), all at once.

    Raises:
        DataError: only for problems that leave nothing to check (no folder, an unreadable list file).
    """
    started = time.perf_counter()
    findings: list[Finding] = []
    cases = find_cases(settings, folder, findings)
    records, report = cases.records, DatalistReport(unmatched_masks=list(cases.unmatched_masks))
    findings += case_id_findings(records, cases.source)
    listed = listed_labels(cases.resolved, cases.source, settings.data.dataset_json)
    if settings.spatial_dims == 2:
        several = len(cases.resolved.get("data.labels") or {}) > 1  # binary 2D masks are read at > 0 (0/1, 0/255)
        data, channels = settings.data, settings.in_channels
        findings += _image_findings(records, report, data, channels, folder, workers, listed if several else None)
    else:
        kind = settings.preprocessing.intensity.kind
        findings += _volume_findings(
            records,
            cases.channels,
            settings.in_channels,
            settings.data.label_mapping,
            kind,
            folder,
            workers,
            listed,
        )
    report.cases = len(records)
    if not records and not findings:
        raise DataError(f"{folder}: no cases found")
    seconds = time.perf_counter() - started
    result = CheckReport(folder, records, findings, seconds, report, cases.layout, dict(cases.resolved), cases.reason)
    log.info("%s", result.summary())
    return result


def log_warnings(result: CheckReport) -> None:
    """One log line per kind of warning (the first case's message, and how many more cases have it)."""
    by_check: dict[str, list[Finding]] = defaultdict(list)
    for finding in result.warnings:
        by_check[finding.check].append(finding)
    for found in by_check.values():
        more = f" (and {len(found) - 1} more case(s) like it; `medseg check` lists them)" if len(found) > 1 else ""
        log.warning("%s%s", found[0].message, more)


def raise_or_skip(result: CheckReport, on_bad_case: str) -> list[Record]:
    """The records to run on: all of them when clean; without the bad cases under ``on_bad_case: skip``;
    else :class:`DataCheckError` with the whole report (always for an error of the dataset as a whole)."""
    log_warnings(result)
    if not result.errors:
        return result.records
    if on_bad_case == "skip" and all(f.case for f in result.errors):
        log.warning(
            "data.on_bad_case=skip: leaving out %d case(s) with errors: %s",
            len(result.bad_cases),
            ", ".join(result.bad_cases),
        )
        for finding in result.errors:
            log.warning("%s", finding.message)
        if not result.good_records:
            raise DataCheckError(result)
        return result.good_records
    raise DataCheckError(result)

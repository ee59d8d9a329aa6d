"""``medseg predict --dicomweb``: studies from a PACS in, DICOM-SEG / RTSTRUCT back, resumable.

QIDO-RS finds the series (``--study``, ``--series``, ``--query KEY=VALUE``); each series a model can read is one
case (a multi-channel model takes one series per channel, chosen in each study by the channel rules); WADO-RS
retrieves it into a temporary folder; the batch runner (:mod:`medseg.outputs.batch`) segments it and writes the
asked formats into ``masks/``; with ``store`` STOW-RS sends the case's DICOM-SEG / RTSTRUCT back in one request.
A series whose study already holds this model's result for every asked DICOM format (the result references the
series and its SeriesDescription names the model digest) is skipped unless ``overwrite``; a local copy not yet
stored is stored without segmenting again. ``summary.csv``: one row per series with each instance's outcome.

Channel rules (``channels``, one per model channel, in channel order): ``KEY=PATTERN``, a DICOM keyword and an
fnmatch pattern, case-insensitive, e.g. ``SeriesDescription=*FLAIR*``; without rules channel ``i`` is the series
whose SeriesDescription contains the model's modality name ``i``.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.core.atomic import atomic_write_text
from medseg.core.errors import ConfigError, DataError, MedsegError
from medseg.core.layout import PredictionLayout
from medseg.outputs.pacs import OUTPUT_MODALITIES, DicomwebSource, Pacs, SeriesInfo, check_url
from medseg.outputs.settings import Outputs

if TYPE_CHECKING:
    from medseg.infer.predictor import Predictor
    from medseg.infer.sources import SourceOptions

log = logging.getLogger(__name__)

NOT_IMAGES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "DOC", "REG", "OT"}
MIN_SLICES = 3  # fewer instances: a localizer or a single image, not a volume
SUMMARY_COLUMNS = ("case", "status", "study_uid", "series_uid", "seconds", "shape", "spacing", "voxels", "stored")
SUMMARY_COLUMNS += ("message",)


@dataclass
class PacsReport:
    """Per case: written, skipped (done before), failed (with the reason); the summary rows."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rows: list[dict[str, object]] = field(default_factory=list)


@dataclass
class _Case:
    case_id: str
    series: list[SeriesInfo]  # one per model channel
    problem: str | None = None  # why it cannot run (a channel rule matched none or several)


def parse_pairs(items: list[str] | tuple[str, ...], option: str) -> tuple[tuple[str, str], ...]:
    """``["Modality=CT", ...]`` -> ``(("Modality", "CT"), ...)``; ConfigError naming ``option`` otherwise."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"{option} {item}: expected KEY=VALUE, e.g. SeriesDescription=*FLAIR*")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def check_dicomweb(source: DicomwebSource, outputs: Outputs) -> Outputs:
    """The outputs a DICOMweb batch writes (dicom-seg unless formats are given); ConfigError for a bad URL, a bad
    query, or ``store`` with nothing a PACS stores."""
    check_url(source.url)
    if not outputs.formats:
        outputs = replace(outputs, formats=("dicom-seg",))
    if source.store and not set(outputs.formats) & set(OUTPUT_MODALITIES):
        raise ConfigError("--store: needs --format dicom-seg and/or rtstruct (what a PACS stores)")
    parse_pairs([f"{k}={v}" for k, v in source.query], "--query")
    return outputs


def predict_dicomweb(
    model: str | Path | Predictor,
    source: DicomwebSource,
    out_dir: Path,
    outputs: Outputs = Outputs(),
    options: SourceOptions | None = None,
    overwrite: bool = False,
) -> PacsReport:
    """Segment the series ``source`` finds with ``model`` into ``out_dir`` (and back into the PACS with
    ``source.store``); resumable from the PACS and from ``out_dir`` unless ``overwrite``.

    Raises:
        PacsError: the PACS is not reachable or refuses the credentials.
        ConfigError / DataError: bad options; nothing the model can read in what the query found.
    """
    from medseg.infer.predictor import Predictor
    from medseg.outputs.batch import (
        case_functions,
        check_outputs,
        model_digest,
        prepare_output_folder,
        write_label_descriptions,
    )

    outputs = check_dicomweb(source, outputs)
    pacs = Pacs(source.url, source.ca_bundle)
    found = pacs.search_series(source.study, source.series, dict(source.query))
    readable, skipped_rows = _readable(found, _asked(source))
    if isinstance(model, Predictor):
        predictor = model
    else:
        from medseg.infer.sources import SourceOptions

        options = options or SourceOptions()
        predictor = Predictor.from_model(
            model, options.tta, options.steps, options.backend, options.folds, options.device
        )
    check_outputs(outputs, predictor.settings.spatial_dims, [])
    cases = _cases(readable, predictor.settings.in_channels, source.channels, list(predictor.settings.modalities))
    prepare_output_folder(out_dir)
    write_label_descriptions(predictor, out_dir)
    functions = case_functions(predictor, out_dir, outputs)
    digest = model_digest(predictor)
    kinds = [OUTPUT_MODALITIES[f] for f in outputs.formats if f in OUTPUT_MODALITIES]
    report, done_in = PacsReport(), _DoneInStudy(pacs, kinds, digest)
    for case in cases:
        row = _run_case(case, pacs, functions, out_dir, outputs, source.store, overwrite, done_in)
        report.rows.append(row)
        status = str(row["status"])
        if status == "ok":
            report.written.append(case.case_id)
        elif status.startswith("skipped"):
            report.skipped.append(case.case_id)
        else:
            report.failed[case.case_id] = str(row.get("message", ""))
    report.rows += skipped_rows
    atomic_write_text(PredictionLayout(out_dir).summary, _csv_text(report.rows))
    return report


def _asked(source: DicomwebSource) -> str:
    if source.series:
        return f"--series {source.series}"
    if source.study:
        return f"--study {source.study}"
    return "--query " + " ".join(f"{k}={v}" for k, v in source.query) if source.query else f"--dicomweb {source.url}"


def _readable(found: list[SeriesInfo], asked: str) -> tuple[list[SeriesInfo], list[dict[str, object]]]:
    """The series a model can read, and a summary row for each of the others; DataError when none is readable."""
    readable, rows = [], []
    for info in found:
        reason = None
        if info.modality.upper() in NOT_IMAGES:
            reason = f"not an image series ({info.modality})"
        elif info.instances is not None and info.instances < MIN_SLICES:
            reason = f"{info.instances} instance(s): not a volume (a localizer?)"
        if reason is None:
            readable.append(info)
        else:
            rows.append(
                {"case": "", "status": "skipped", "study_uid": info.study_uid, "series_uid": info.series_uid}
                | {"message": reason}
            )
    if not readable:
        listed = ", ".join(f"{r['series_uid']} ({r['message']})" for r in rows[:3])
        raise DataError(f"{asked}: no series medseg can read" + (f": {listed}" if listed else " (nothing matched)"))
    return readable, rows


def _cases(readable: list[SeriesInfo], channels: int, rules: tuple[str, ...], modalities: list[str]) -> list[_Case]:
    """One case per series (one channel), or per study with one series per channel rule."""
    named: dict[str, int] = {}

    def case_id(info: SeriesInfo) -> str:
        from medseg.labels import slug

        base = slug("_".join(p for p in (info.patient_id, info.study_date, info.number) if p)) or "series"
        named[base] = named.get(base, 0) + 1
        return base if named[base] == 1 else f"{base}_{hashlib.sha256(info.series_uid.encode()).hexdigest()[:6]}"

    if channels == 1:
        return [_Case(case_id(info), [info]) for info in readable]
    parsed = (
        parse_pairs(list(rules), "--channel") if rules else tuple(("SeriesDescription", f"*{m}*") for m in modalities)
    )
    if len(parsed) != channels:
        raise ConfigError(f"--channel: the model takes {channels} channels; give one KEY=PATTERN rule per channel")
    cases = []
    for study in dict.fromkeys(info.study_uid for info in readable):
        members = [info for info in readable if info.study_uid == study]
        chosen, problems = [], []
        for key, pattern in parsed:
            matches = [info for info in members if fnmatch.fnmatch(_field(info, key).lower(), pattern.lower())]
            if len(matches) != 1:
                problems.append(f"channel rule {key}={pattern} matched {len(matches)} series in study {study}")
            chosen.append(matches[0] if matches else members[0])
        cases.append(_Case(case_id(chosen[0]), chosen, "; ".join(problems) or None))
    return cases


def _field(info: SeriesInfo, key: str) -> str:
    names = {"SeriesDescription": "description", "Modality": "modality", "SeriesNumber": "number"}
    if key not in names:
        raise ConfigError(f"--channel {key}: choose one of {', '.join(names)}")
    return getattr(info, names[key])


class _DoneInStudy:
    """Whether a study already holds this model's results for a series (every asked kind), read once per study."""

    def __init__(self, pacs: Pacs, kinds: list[str], digest: str) -> None:
        from medseg.imageio.dicom_seg import series_description

        self.pacs, self.kinds, self.mark = pacs, kinds, series_description(digest)
        self.studies: dict[str, list[tuple[str, set[str]]]] = {}

    def __call__(self, info: SeriesInfo) -> bool:
        if not self.kinds:
            return False
        if info.study_uid not in self.studies:
            self.studies[info.study_uid] = [
                (str(ds.get("Modality", "")), _referenced_series(ds))
                for ds in self.pacs.results_in_study(info.study_uid, self.kinds)
                if str(ds.get("SeriesDescription", "")).startswith(self.mark)
            ]
        held = self.studies[info.study_uid]
        return all(any(kind == m and info.series_uid in refs for m, refs in held) for kind in self.kinds)


def _referenced_series(ds) -> set[str]:
    """The series a SEG (ReferencedSeriesSequence) or an RTSTRUCT (the frame of reference's RT series) references."""
    found = {str(item.get("SeriesInstanceUID", "")) for item in ds.get("ReferencedSeriesSequence", [])}
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            found |= {str(s.get("SeriesInstanceUID", "")) for s in study.get("RTReferencedSeriesSequence", [])}
    return found


def _run_case(
    case: _Case,
    pacs: Pacs,
    functions,
    out_dir: Path,
    outputs: Outputs,
    store: bool,
    overwrite: bool,
    done_in: _DoneInStudy,
) -> dict[str, object]:
    """One case's summary row: skipped (in the PACS), or segmented (unless its local copy exists) and stored."""
    from medseg.imageio.label_maps import SUFFIXES
    from medseg.outputs.pacs import PacsError

    first = case.series[0]
    row: dict[str, object] = {"case": case.case_id, "study_uid": first.study_uid, "series_uid": first.series_uid}
    if case.problem:
        return row | {"status": "failed", "message": case.problem}
    started = time.perf_counter()
    try:
        if not overwrite and done_in(first):
            return row | {"status": "skipped", "message": f"in the PACS already ({done_in.mark})"}
        record: dict[str, object] = {"id": case.case_id, "image": ["series"]}  # a DICOM series: masks as for one
        if overwrite or not functions.finished(record):
            with tempfile.TemporaryDirectory(prefix="medseg-dicomweb-") as folder:
                for channel, info in enumerate(case.series):
                    pacs.retrieve_series(info, Path(folder) / f"channel{channel}")
                record["image"] = [str(Path(folder) / f"channel{c}") for c in range(len(case.series))]
                row |= functions.run(record)
            if row["status"] != "ok":
                return row
        else:
            row |= {"status": "ok", "message": "segmented before (local copy)"}
        if store:
            paths = [
                PredictionLayout(out_dir).folder(PredictionLayout.MASKS) / f"{case.case_id}{SUFFIXES[f]}"
                for f in outputs.formats
                if f in OUTPUT_MODALITIES
            ]
            outcomes = pacs.store(first.study_uid, paths)
            row["stored"] = "; ".join(f"{path.name}: {outcome}" for path, outcome in outcomes.items())
            if any(outcome != "stored" for outcome in outcomes.values()):
                row |= {"status": "failed", "message": f"not stored: {row['stored']} (kept in {out_dir})"}
    except PacsError:
        raise
    except MedsegError as exc:
        row |= {"status": "failed", "message": str(exc)}
        log.error("%s", exc)
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row


def _csv_text(rows: list[dict[str, object]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(SUMMARY_COLUMNS), restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()

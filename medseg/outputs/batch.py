"""The batch runner behind the predict stage and ``medseg predict``: masks on each input's own grid, overlays,
probability maps and a summary.

Each case is isolated: an unreadable image is reported and skipped, the others finish. Every file is
written atomically; with ``overwrite=False`` cases whose mask exists are skipped, so an interrupted batch
resumes where it stopped. Inputs are never modified, and a mask once written is never read back.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg.core.atomic import atomic_write_text
from medseg.core.errors import ConfigError, DataError, MedsegError
from medseg.core.layout import PredictionLayout
from medseg.core.progress import progress_bar
from medseg.data.inputs import predict_inputs
from medseg.data.records import Record
from medseg.imageio.dicom_series import is_dicom_series
from medseg.imageio.headers import ScanHeader
from medseg.imageio.images import read_mask, read_rgb, save_png
from medseg.imageio.label_maps import DICOM_OBJECTS, VOLUME_FORMATS
from medseg.infer.predictor import Predictor
from medseg.infer.settings import InferenceSettings
from medseg.labels import Label, slug
from medseg.outputs.meshes import MESH_FORMATS, MESH_SPACES
from medseg.outputs.settings import Outputs
from medseg.outputs.visualize import overlay

if TYPE_CHECKING:
    from medseg.outputs.instances import Instances

log = logging.getLogger(__name__)

RGB = ("red", "green", "blue")
SUMMARY_COLUMNS = (
    "case",
    "status",
    "seconds",
    "height",
    "width",
    "foreground_pixels",
    "shape",
    "spacing",
    "voxels",
    "mean_entropy",
    "mean_entropy_foreground",
    "message",
)


def check_outputs(outputs: Outputs, spatial_dims: int, records: list[Record], multilabel: bool = False) -> None:
    """Every problem with the asked outputs for this model (``multilabel``: one of regions) and these inputs, in one
    ConfigError, before anything is written; each names the ``medseg predict`` option and the pipeline's YAML key
    that ask for it."""
    problems = _instance_problems(outputs, multilabel)
    unknown = [f for f in outputs.formats if f not in ("input", *VOLUME_FORMATS)]
    if unknown:
        problems.append(
            f"--format (prediction.formats) {','.join(unknown)}: unknown; "
            f"choose from input, {', '.join(VOLUME_FORMATS)}"
        )
    if spatial_dims == 2:
        if [f for f in outputs.formats if f not in ("input", "png")]:
            problems.append("--format (prediction.formats): a 2D model writes PNG masks (leave it out)")
        if outputs.meshes:
            problems.append("--meshes (prediction.meshes): a 2D model has no surfaces; meshes need a 3D model")
    elif any(f in DICOM_OBJECTS for f in outputs.formats):
        asked = ",".join(f for f in outputs.formats if f in DICOM_OBJECTS)
        not_series = [r["image"][0] for r in records if "skipped" not in r and not is_dicom_series(r["image"][0])]
        if not_series:
            shown = ", ".join(not_series[:3]) + (f" and {len(not_series) - 3} more" if len(not_series) > 3 else "")
            problems.append(
                f"--format (prediction.formats) {asked}: {shown} not a DICOM series (there is no DICOM source to "
                "reference: a DICOM-SEG or RTSTRUCT references its source series); use nifti or seg.nrrd for these"
            )
    if outputs.mesh_format not in MESH_FORMATS:
        problems.append(
            f"--mesh-format (prediction.mesh_format) {outputs.mesh_format}: choose {', '.join(MESH_FORMATS)}"
        )
    if outputs.mesh_space not in MESH_SPACES:
        problems.append(f"--mesh-space (prediction.mesh_space) {outputs.mesh_space}: choose {' or '.join(MESH_SPACES)}")
    if problems:
        raise ConfigError("; ".join(problems))


def _instance_problems(outputs: Outputs, multilabel: bool) -> list[str]:
    """What is wrong with the asked instances: a regions model, --split-touching alone, a negative minimum size."""
    problems = []
    if outputs.instances and multilabel:
        problems.append(
            "--instances (prediction.instances): this model predicts overlapping regions (data.regions), so a voxel "
            "belongs to several structures; instances need a model of classes"
        )
    if outputs.split_touching and not outputs.instances:
        problems.append("--split-touching (prediction.split_touching): needs --instances (prediction.instances)")
    if outputs.min_instance_size < 0:
        problems.append(
            f"--min-instance-size (prediction.min_instance_size) {outputs.min_instance_size}: give 0 or more voxels"
        )
    return problems


@dataclass
class PredictionReport:
    """Which cases were written, skipped (already done) or failed (with the reason)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    overlays: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rows: list[dict[str, object]] = field(default_factory=list)
    not_read: dict[str, str] = field(default_factory=dict)  # DICOM series that are not scans (SR, SEG...): why


def _output_path(out_dir: Path, kind: str, case_id: str, suffix: str = ".png") -> Path:
    """``out_dir/kind/<id><suffix>``, refusing ids that would write outside ``out_dir``."""
    path = PredictionLayout(out_dir).folder(kind) / f"{case_id}{suffix}"
    if (
        "/" in case_id
        or "\\" in case_id
        or case_id in {"", ".", ".."}
        or not path.resolve().is_relative_to(out_dir.resolve())
    ):
        raise DataError(f"case id {case_id!r}: would write outside {out_dir}")
    return path


@dataclass
class CaseFunctions:
    """How one case is done: the masks that mark it finished, and the function that writes them (and the rest)."""

    outputs_of: Callable[[Record], list[Path]]
    predict_case: Callable[[Record], dict[str, object]]
    columns: list[str] = field(default_factory=list)  # of statistics.csv
    drawn: list[str] = field(default_factory=list)  # the cases given an overlay (2D)

    def finished(self, record: Record) -> bool:
        return all(path.is_file() for path in self.outputs_of(record))

    def run(self, record: Record) -> dict[str, object]:
        """The case's summary row: ``ok`` (written), or ``failed`` with the reason; the case's failure never
        escapes."""
        started = time.perf_counter()
        row: dict[str, object] = {"case": record["id"]}
        try:
            row.update(status="ok", **self.predict_case(record))
        except MedsegError as exc:
            row.update(status="failed", message=str(exc))
            log.error("%s", exc)
        row["seconds"] = round(time.perf_counter() - started, 3)
        return row


def prepare_output_folder(out_dir: Path) -> None:
    """Refuse a file as the output folder; clear what a killed batch left half-written."""
    _check_output_folder(out_dir)
    _remove_stale_temporaries(out_dir)


def split_finished(records: list[Record], cases: CaseFunctions, overwrite: bool) -> tuple[list[Record], list[Record]]:
    """(to do, already finished) cases; with ``overwrite`` every case is to do. A case whose id is unsafe is to do,
    where it fails with the reason; a series that is not read (``"skipped"``) is never to do."""
    todo, done = [], []
    for record in records:
        try:
            finished = "skipped" in record or (not overwrite and cases.finished(record))
        except MedsegError:
            finished = False
        (done if finished else todo).append(record)
    return todo, done


def report_rows(
    records: list[Record], rows: dict[str, dict[str, object]], out_dir: Path, summary: Path
) -> PredictionReport:
    """The batch's report, in the records' order (cases without a row were finished already), and ``summary.csv``."""
    report = PredictionReport()
    for record in records:
        row = rows.get(record["id"])
        if "skipped" in record:  # a DICOM series that is not a scan: listed with the reason
            report.not_read[record["id"]] = record["skipped"]
            report.rows.append({"case": record["id"], "status": "skipped", "message": record["skipped"]})
            continue
        if row is None:
            report.skipped.append(record["id"])
            report.rows.append({"case": record["id"], "status": "skipped", "message": "mask exists"})
            continue
        report.rows.append(row)
        if row["status"] == "ok":
            report.written.append(str(row["case"]))
        else:
            report.failed[str(row["case"])] = str(row.get("message", ""))
    _write_summary(summary, report.rows)
    log.info(
        "Predicted %d case(s) into %s%s%s%s",
        len(report.written),
        PredictionLayout(out_dir).folder(PredictionLayout.MASKS),
        f"; {len(report.skipped)} already done" if report.skipped else "",
        f"; {len(report.not_read)} DICOM series not read (see summary.csv)" if report.not_read else "",
        f"; {len(report.failed)} failed: {', '.join(report.failed)}" if report.failed else "",
    )
    return report


def _run_batch(
    records: list[Record], out_dir: Path, cases: CaseFunctions, overwrite: bool, summary: Path | None = None
) -> PredictionReport:
    """The local batch loop (the output folder prepared): skip finished cases (all their masks exist), isolate
    failures, time each case, write summary.csv."""
    todo, _ = split_finished(records, cases, overwrite)
    rows = {}
    with progress_bar() as progress:
        for record in progress.track(todo, description="predict"):
            rows[record["id"]] = cases.run(record)
    return report_rows(records, rows, out_dir, summary or PredictionLayout(out_dir).summary)


def _check_output_folder(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: output folder is a file")


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete the temporary files (``.<name>.<random>.tmp...``) of a batch that was killed while writing.

    Outputs are written under such names and renamed, so they are never half-written files with real names; only
    a process killed mid-write (SIGKILL, power loss) leaves one behind. One batch per output folder at a time.
    """
    layout = PredictionLayout(out_dir)
    stale = [
        path
        for folder in (out_dir, *(layout.folder(kind) for kind in PredictionLayout.KINDS))
        if folder.is_dir()
        for path in folder.glob(".*.tmp*")
    ]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)  # the folder of a detached-header (.nhdr/.mhd) write
        else:
            path.unlink(missing_ok=True)
    if stale:
        log.info("Removed %d temporary file(s) left by an interrupted batch in %s", len(stale), out_dir)


def write_label_descriptions(predictor: Predictor, out_dir: Path) -> None:
    """``labels.json`` and the ITK-SNAP label description file beside the masks."""
    layout = PredictionLayout(out_dir)
    atomic_write_text(layout.labels_json, predictor.labels.json())
    atomic_write_text(layout.itksnap_labels, predictor.labels.itksnap_text())


def _case_statistics(out_dir: Path, case_id: str, rows: list[dict[str, object]], columns: list[str]) -> None:
    """One case's statistics rows, kept per case so a resumed batch still reports every case."""
    atomic_write_text(_output_path(out_dir, PredictionLayout.STATISTICS, case_id, ".csv"), _csv_text(rows, columns))


def gather_statistics(out_dir: Path, records: list[Record], columns: list[str]) -> None:
    """``statistics.csv``: the per-case statistics of every case of the batch that has them."""
    rows: list[dict[str, object]] = []
    for record in records:
        path = _output_path(out_dir, PredictionLayout.STATISTICS, record["id"], ".csv")
        if path.is_file():
            rows.extend(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    atomic_write_text(PredictionLayout(out_dir).statistics, _csv_text(rows, columns))


def _csv_text(rows: list[dict[str, object]], columns: list[str] | tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def predict_records(
    predictor: Predictor,
    records: list[Record],
    out_dir: Path,
    outputs: Outputs | None = None,
    overwrite: bool = False,
) -> PredictionReport:
    """Write each case's masks (2D: ``masks/<id>.png``, 0/255 for a binary model, else the label values, at the
    input's size; 3D: ``masks/<id>.<ext>`` in each asked format, uint8, exactly the scan's geometry) and what
    ``outputs`` asks for. Resumable: a case whose masks exist is skipped unless ``overwrite``."""
    outputs = outputs or Outputs()
    check_outputs(outputs, predictor.settings.spatial_dims, records, predictor.multilabel)
    cases = case_functions(predictor, out_dir, outputs)
    return run_cases(predictor, records, out_dir, outputs, overwrite, cases)


def run_cases(
    predictor: Predictor,
    records: list[Record],
    out_dir: Path,
    outputs: Outputs,
    overwrite: bool,
    cases: CaseFunctions,
    summary: Path | None = None,
    everyone: list[Record] | None = None,
) -> PredictionReport:
    """The local engine: the label descriptions, every case in turn, then ``statistics.csv`` (over ``everyone``
    that has statistics: all shards' cases)."""
    prepare_output_folder(out_dir)
    write_label_descriptions(predictor, out_dir)
    report = _run_batch(records, out_dir, cases, overwrite, summary)
    if outputs.tables:
        gather_statistics(out_dir, everyone or records, cases.columns)
    report.overlays = list(cases.drawn)
    return report


def _write_summary(path: Path, rows: list[dict[str, object]]) -> None:
    atomic_write_text(path, _csv_text(rows, SUMMARY_COLUMNS))


def model_digest(predictor: Predictor) -> str:
    """The SHA-256 (hex) of the model's weights: every member network's state (names, dtypes, shapes, values; an
    exported member (ONNX Runtime, OpenVINO): its files' bytes). It names the model in the DICOM objects a batch
    writes (their UIDs, SeriesDescription), so a retry with the same model writes the same instances, and another
    model new ones."""
    import torch

    digest = hashlib.sha256()
    for member in predictor.members:
        files = getattr(member, "files", None)  # an exported network's files (backends.OnnxNetwork, OpenVinoNetwork)
        if files and all(Path(f).is_file() for f in files):
            for file in files:
                digest.update(Path(file).read_bytes())
            continue
        for name, tensor in sorted(member.state_dict().items()):
            values = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{values.dtype}:{tuple(values.shape)}\n".encode())
            digest.update(values.reshape(-1).view(torch.uint8).numpy().tobytes() if values.numel() else b"")
    return digest.hexdigest()


def case_functions(predictor: Predictor, out_dir: Path, outputs: Outputs) -> CaseFunctions:
    """What one case writes, a 2D image or a 3D scan alike: the uncertainty and probability maps, the statistics, an
    overlay (2D, the first ``max_overlays`` cases), meshes (3D), and the masks last (a case whose masks exist is
    finished). Maps and masks take the input's place: PNG beside a 2D image, the scan's grid in 3D."""
    from medseg.imageio.label_maps import SUFFIXES, input_format, write_label_map, write_map
    from medseg.infer.uncertainty import entropy_summary, predictive_entropy
    from medseg.outputs.statistics import statistics_columns, structure_statistics

    problems = _instance_problems(outputs, predictor.multilabel)  # the engines that do not call check_outputs
    if problems:
        raise ConfigError("; ".join(problems))
    settings = predictor.settings
    dims = settings.spatial_dims
    labels, names = predictor.labels.output_labels(), predictor.labels.channel_names()
    modalities = list(settings.modalities) or [f"channel{i}" for i in range(settings.in_channels)]
    channels = list(RGB) if dims == 2 else [slug(m) for m in modalities][: settings.in_channels]
    columns = statistics_columns(channels, dims)
    drawn: list[str] = []
    digest = model_digest(predictor) if any(f in DICOM_OBJECTS for f in outputs.formats) else ""

    def masks_of(record: Record) -> list[tuple[str, Path]]:
        own = input_format(Path(_first_file(record)), dims)
        chosen = [own if f == "input" else (f, SUFFIXES[f]) for f in outputs.formats or ("input",)]
        return [(name, _output_path(out_dir, PredictionLayout.MASKS, record["id"], end)) for name, end in chosen]

    def predict_case(record: Record) -> dict[str, object]:
        case_id = record["id"]
        keep = outputs.probabilities or outputs.uncertainty
        result = predictor.predict(record["image"], probabilities=keep, image=outputs.tables and dims == 3)
        header, suffix = result.header, input_format(Path(_first_file(record)), dims)[1]
        row: dict[str, object] = {}
        if outputs.uncertainty:
            entropy = predictive_entropy(result.probabilities, predictor.multilabel)
            write_map(entropy, header, _output_path(out_dir, PredictionLayout.UNCERTAINTY, case_id, suffix))
            row.update(entropy_summary(entropy, result.labels > 0))
            del entropy
        if outputs.probabilities:
            for channel, name in enumerate(names):
                target = case_id if len(names) == 1 else f"{case_id}_{name}"
                path = _output_path(out_dir, PredictionLayout.PROBABILITIES, target, suffix)
                write_map(result.probabilities[channel], header, path)
        result.probabilities = None  # free it before the masks are written
        overlay_due = dims == 2 and outputs.overlays and len(drawn) < outputs.max_overlays
        rgb = read_rgb(record["image"]) if dims == 2 and (outputs.tables or overlay_due) else None
        instances = _case_instances(out_dir, case_id, result.labels, header, labels, outputs, suffix)
        if outputs.tables:
            image = result.image if rgb is None else rgb.transpose(2, 0, 1)
            affine = None if header is None else header.affine
            figures = structure_statistics(case_id, result.labels, labels, image, channels, affine, instances)
            _case_statistics(out_dir, case_id, figures, columns)
            result.image = None
        if overlay_due:
            truth = read_mask(record["label"]) if record.get("label") else None
            ids = None if instances is None else instances.ids
            save_png(
                overlay(rgb, result.labels, truth, labels, ids),
                _output_path(out_dir, PredictionLayout.OVERLAYS, case_id),
            )
            drawn.append(case_id)
        if outputs.meshes:
            from medseg.outputs.meshes import write_mesh

            for label in labels:
                mask = result.labels == label.value
                if mask.any():
                    name = f"{case_id}_{label.key}.{outputs.mesh_format}"
                    path = _output_path(out_dir, PredictionLayout.MESHES, name, "")
                    write_mesh(mask, header.affine, path, outputs.mesh_space)
        for output_format, path in masks_of(record):  # the masks last: a case whose masks exist is finished
            write_label_map(result.labels, header, labels, path, output_format, digest)
        return {**_size_columns(result.labels, header), **row}

    def outputs_of(record: Record) -> list[Path]:
        """What a finished case has: its masks, and its instance map and statistics when they are asked for (so a
        resumed batch that now asks for them redoes the cases without them)."""
        paths = [path for _, path in masks_of(record)]
        if outputs.instances:
            suffix = input_format(Path(_first_file(record)), dims)[1]
            paths.append(_output_path(out_dir, PredictionLayout.INSTANCES, record["id"], suffix))
        if outputs.tables:
            paths.append(_output_path(out_dir, PredictionLayout.STATISTICS, record["id"], ".csv"))
        return paths

    return CaseFunctions(outputs_of, predict_case, columns, drawn)


def _case_instances(
    out_dir: Path,
    case_id: str,
    labels_map: np.ndarray,
    header: ScanHeader | None,
    labels: list[Label],
    outputs: Outputs,
    suffix: str,
) -> Instances | None:
    """With ``outputs.instances``: the case's instances, their map written to ``instances/<id><suffix>`` (their rows
    go into the statistics); None otherwise."""
    if not outputs.instances:
        return None
    from medseg.outputs.instances import find_instances, log_instances, write_instance_map

    spacing = None if header is None else header.spacing
    values = [label.value for label in labels]
    found = find_instances(labels_map, values, outputs.min_instance_size, outputs.split_touching, spacing)
    log_instances(case_id, found, outputs.min_instance_size)
    write_instance_map(found, header, _output_path(out_dir, PredictionLayout.INSTANCES, case_id, suffix))
    return found


def _first_file(record: Record) -> str:
    """The image of a 2D case, or the first channel's scan of a 3D case."""
    image = record["image"]
    return image if isinstance(image, str) else image[0]


def _size_columns(labels_map: np.ndarray, header: ScanHeader | None) -> dict[str, object]:
    """The summary's size columns: a 2D mask's height, width and foreground pixels; a 3D one's shape, spacing and
    voxels per label."""
    if header is None:
        foreground = labels_map > 0
        return {"height": foreground.shape[0], "width": foreground.shape[1], "foreground_pixels": int(foreground.sum())}
    counts = np.bincount(labels_map.ravel())  # no sorted copy of the volume, unlike np.unique
    return {
        "shape": "x".join(map(str, labels_map.shape)),
        "spacing": "x".join(f"{v:.5g}" for v in header.spacing),
        "voxels": ";".join(f"{v}:{c}" for v, c in enumerate(counts) if v and c),
    }


def parse_shard(text: str) -> tuple[int, int]:
    """``i/N`` -> (i, N); ConfigError unless 0 <= i < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text}: expected i/N, e.g. 0/4 for the first of 4 shards") from None
    if count < 1 or not 0 <= index < count:
        last = max(count - 1, 0)
        raise ConfigError(f"--shard {text}: i must be 0..N-1 (the shards of {count} are 0/{count} .. {last}/{count})")
    return index, count


def shard_records(records: list[Record], index: int, count: int) -> list[Record]:
    """Shard ``index`` of ``count``: every ``count``-th case by sorted case id, so N shards cover each case once."""
    ordered = sorted(records, key=lambda record: record["id"])
    return ordered[index::count]


def predict_folder(
    predictor: Predictor,
    source: Path,
    out_dir: Path,
    outputs: Outputs | None = None,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
) -> PredictionReport:
    """``medseg predict``: every image or scan of ``source`` into ``out_dir`` (resumable unless ``overwrite``);
    ``shard`` (i, N): only shard i of N, its summary in ``summary.shard<i>-of-<N>.csv``."""
    records, todo, summary = folder_cases(predictor.settings, source, out_dir, shard)
    outputs = outputs or Outputs()
    if predictor.settings.spatial_dims == 2:
        outputs = replace(outputs, max_overlays=len(records))
    check_outputs(outputs, predictor.settings.spatial_dims, todo, predictor.multilabel)
    cases = case_functions(predictor, out_dir, outputs)
    return run_cases(predictor, todo, out_dir, outputs, overwrite, cases, summary, records)


def folder_cases(
    settings: InferenceSettings, source: Path, out_dir: Path, shard: tuple[int, int] | None
) -> tuple[list[Record], list[Record], Path | None]:
    """All the cases of ``source``, those of this shard, and the shard's summary path (None: ``summary.csv``)."""
    if source.exists() and out_dir.resolve() == source.resolve():
        raise DataError(f"{out_dir}: choose an output folder other than the input folder")
    records = predict_inputs(source, settings.spatial_dims, settings.in_channels, skipped=True)
    if shard is None:
        return records, records, None
    return records, shard_records(records, *shard), PredictionLayout(out_dir).shard_summary(*shard)

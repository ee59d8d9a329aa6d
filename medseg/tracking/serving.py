"""A trained model behind an HTTP endpoint through MLflow's scoring server (``mlflow models serve``): the pyfunc
model that wraps the whole predictor, and how it is logged beside the PyTorch model.

Each input is one file as base64 bytes (PNG / JPEG / BMP / TIFF, NIfTI, NRRD, MHA, or a zip of one DICOM series or
of a case's channel files), or, where the server allows it, a path under one folder. The bytes are written into a
temporary folder and segmented there by medseg's one prediction path (:func:`medseg.outputs.batch.predict_records`,
what ``medseg predict`` runs), so an answer's mask is the mask ``medseg predict`` writes: the input's own format and
geometry. A bad input never raises (MLflow's scoring server echoes the request in the message of an exception): it
gets ``{"status": "error", "reason": <one line>}`` and the other inputs are still served. No answer and no log line
holds an input's bytes.
"""

from __future__ import annotations

import base64
import binascii
import csv
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import pandas as pd

from medseg.core.errors import DataError, MedsegError, error_summary
from medseg.imageio.formats import DETACHED_SUFFIXES, IMAGE_2D_SUFFIXES, NIFTI_SUFFIXES, SITK_SUFFIXES

if TYPE_CHECKING:
    from medseg.tracking.tracker import Tracker

log = logging.getLogger(__name__)

#: the name the serving model is logged under in a run (``runs:/<run id>/serving``)
SERVING_MODEL_NAME = "serving"
#: the registered name of the serving model: the PyTorch model's registered name plus this
SERVING_REGISTERED_SUFFIX = "-serving"
#: path inputs (a file or DICOM folder on the server) are off unless this names the one folder they may come from
PATHS_UNDER_ENV = "MEDSEG_SERVING_PATHS_UNDER"
#: the most bytes a zip input may unpack to
MAX_UNZIPPED_BYTES = 4 << 30
MAX_REASON_CHARS = 300

#: what one base64 file may be: a 2D image, a single-file volume, or a zip (a DICOM series, a detached header with
#: its data, a case's channel files)
ZIP_SUFFIX = ".zip"
SINGLE_FILE_SUFFIXES = (
    *NIFTI_SUFFIXES,
    *(s for s in SITK_SUFFIXES if s not in DETACHED_SUFFIXES),
    *IMAGE_2D_SUFFIXES,
    ZIP_SUFFIX,
)
NIFTI_GZ, NIFTI = NIFTI_SUFFIXES
#: leading bytes -> the ending of a file sent without a name
MAGIC = (
    (b"\x89PNG", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"PK\x03\x04", ZIP_SUFFIX),
    (b"\x1f\x8b", NIFTI_GZ),
    (b"NRRD", ".nrrd"),
    (b"ObjectType", ".mha"),
)


class ServingInputError(MedsegError):
    """One input of a request cannot be segmented (the reason goes into its answer)."""


class SegmentationService(mlflow.pyfunc.PythonModel):
    """The whole predictor as an MLflow pyfunc model: files in (base64 or a path), masks and volumes out."""

    def load_context(self, context: Any) -> None:
        """Load the predictor once, from the checkpoint folder among the model's artefacts."""
        from medseg.infer.predictor import Predictor
        from medseg.version import __version__

        _log_to_stderr()
        self.predictor = Predictor.from_model(Path(context.artifacts["model"]))
        self.paths_under = allowed_folder()
        settings = self.predictor.settings
        log.info(
            "medseg %s serving a %dD model (%d channel(s)), medseg imported from %s; path inputs %s",
            __version__,
            settings.spatial_dims,
            settings.in_channels,
            Path(__file__).resolve().parents[1],  # the medseg package this module belongs to
            f"allowed under {self.paths_under}" if self.paths_under else f"off (set {PATHS_UNDER_ENV} to allow)",
        )

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """One answer per input; never raises. ``model_input``: a DataFrame for ``dataframe_records`` and
        ``dataframe_split``, a list or dict for ``inputs`` and ``instances`` (the DataFrame hint keeps MLflow from
        enforcing a schema before this code runs: its errors echo the request)."""
        try:
            items = input_items(model_input)
        except ServingInputError as exc:
            return [failure("request", str(exc))]
        answers = []
        for index, item in enumerate(items):
            try:
                answers.append(self.answer(index, item))
            except Exception as exc:  # a last guard: whatever escapes one input is answered, never raised
                answers.append(failure(f"input-{index}", f"{type(exc).__name__} while answering this input"))
        return answers

    def answer(self, index: int, item: Mapping[str, Any]) -> dict[str, Any]:
        """The answer to input ``index``: its mask and volumes, or the one-line reason it has none."""
        label = _display_name(index, item)
        with tempfile.TemporaryDirectory(prefix="medseg-serving-") as folder:
            workspace = Path(folder)
            try:
                source = self.materialise(item, workspace / "in")
                return {"name": label, **self.segment(source, workspace / "out")}
            except MedsegError as exc:
                reason = str(exc)
            except Exception as exc:  # anything a reader raises: the answer says it, the server never sees it
                reason = f"{type(exc).__name__}: {error_summary(exc)}"
                log.debug("input %d failed", index, exc_info=True)
            return failure(label, _scrubbed(reason, workspace, label))

    def materialise(self, item: Mapping[str, Any], folder: Path) -> Path:
        """The file or folder to segment: base64 bytes written (a zip unpacked) into ``folder``, or an allowed path."""
        folder.mkdir(parents=True)
        if item.get("path") not in (None, ""):
            return checked_path(str(item["path"]), self.paths_under)
        data = item.get("data")
        if not isinstance(data, str) or not data:
            raise ServingInputError("give the file as base64 in 'data' (or a server path in 'path')")
        try:
            content = base64.b64decode("".join(data.split()), validate=True)  # `base64` wraps its lines
        except (binascii.Error, ValueError):
            raise ServingInputError("'data' is not valid base64") from None
        suffix = file_suffix(item.get("name"), content)
        self.check_kind(suffix)
        if suffix == ZIP_SUFFIX:
            return unpacked(content, folder / "input")
        path = folder / f"input{suffix}"
        path.write_bytes(content)
        return path

    def check_kind(self, suffix: str) -> None:
        """ServingInputError for a 2D image sent to a 3D model, or a scan sent to a 2D model."""
        dims = self.predictor.settings.spatial_dims
        image_2d = suffix in IMAGE_2D_SUFFIXES
        if dims == 3 and image_2d:
            raise ServingInputError(
                "a 2D image, but this model segments 3D scans (NIfTI, NRRD, MHA, or a zip of one DICOM series)"
            )
        if dims == 2 and not image_2d:
            raise ServingInputError("a 3D scan or a zip, but this model segments 2D images (PNG, JPEG, BMP, TIFF)")

    def segment(self, source: Path, out_dir: Path) -> dict[str, Any]:
        """``source`` through :func:`predict_records`; the mask (base64), its format, the labels and their sizes."""
        from medseg.core.layout import PredictionLayout
        from medseg.data.inputs import predict_inputs
        from medseg.outputs.batch import predict_records
        from medseg.outputs.settings import Outputs

        settings = self.predictor.settings
        records = predict_inputs(source, settings.spatial_dims, settings.in_channels)
        if len(records) != 1:
            raise ServingInputError(f"holds {len(records)} cases; send one case per input")
        outputs = Outputs(statistics=True, overlays=False)
        report = predict_records(self.predictor, records, out_dir, outputs, overwrite=True)
        if report.failed:
            raise ServingInputError(next(iter(report.failed.values())))
        layout = PredictionLayout(out_dir)
        mask = next(p for p in sorted(layout.folder(PredictionLayout.MASKS).iterdir()) if p.is_file())
        rows = list(csv.DictReader(layout.statistics.open(encoding="utf-8")))
        labels = {row["label"]: row for row in rows}
        return {
            "status": "ok",
            "mask": base64.b64encode(mask.read_bytes()).decode("ascii"),
            "mask_suffix": mask.name[len(records[0]["id"]) :],
            "labels": {str(label.value): label.name for label in self.predictor.labels.output_labels()},
            "voxels": {name: int(row["voxels"]) for name, row in labels.items()},
            "ml": {name: float(row["volume_ml"]) if row["volume_ml"] else None for name, row in labels.items()},
            "reason": None,
        }


def failure(name: str, reason: str) -> dict[str, Any]:
    """The answer to an input that cannot be segmented."""
    return {"name": name, "status": "error", "reason": reason}


def input_items(model_input: Any) -> list[Mapping[str, Any]]:
    """The inputs of a request as mappings (``name``, ``data`` or ``path``): MLflow gives a DataFrame for
    ``dataframe_records`` / ``dataframe_split`` and a dict or list for ``inputs`` / ``instances``."""
    if isinstance(model_input, pd.DataFrame):
        return [{k: (None if _missing(v) else v) for k, v in row.items()} for row in model_input.to_dict("records")]
    if isinstance(model_input, Mapping):
        columns = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in model_input.items()}
        if all(isinstance(v, list) for v in columns.values()):
            count = max((len(v) for v in columns.values()), default=0)
            return [{k: v[i] if i < len(v) else None for k, v in columns.items()} for i in range(count)]
        return [columns]
    if hasattr(model_input, "tolist"):
        model_input = model_input.tolist()
    if isinstance(model_input, list) and all(isinstance(item, Mapping) for item in model_input):
        return [{k: _plain(v) for k, v in item.items()} for item in model_input]
    raise ServingInputError(
        "expected records with 'data' (base64 file bytes) and 'name' (its file name), e.g. "
        '{"dataframe_records": [{"name": "scan.nii.gz", "data": "<base64>"}]}'
    )


def _plain(value: Any) -> Any:
    """A value as JSON gave it: ``inputs`` records arrive with each value wrapped in a 0-d numpy array."""
    return value.item() if getattr(value, "ndim", None) == 0 else value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def file_suffix(name: Any, content: bytes) -> str:
    """The ending that tells the file's format: from ``name`` where it has a known one, else from the leading bytes."""
    if isinstance(name, str) and name:
        lower = name.lower()
        found = next((s for s in SINGLE_FILE_SUFFIXES if lower.endswith(s)), None)
        if found:
            return found
        raise ServingInputError(
            f"name {Path(name).name[-60:]!r}: not a format this endpoint reads "
            f"({', '.join(SINGLE_FILE_SUFFIXES)}; .nhdr/.mhd and DICOM series as a zip)"
        )
    if len(content) > 348 and content[344:348] in (b"n+1\x00", b"ni1\x00"):
        return NIFTI
    found = next((suffix for magic, suffix in MAGIC if content.startswith(magic)), None)
    if found is None:
        raise ServingInputError("not a file this endpoint reads (no name given, and its bytes are no known format)")
    return found


def unpacked(content: bytes, folder: Path) -> Path:
    """A zip's files under ``folder`` (a lone top folder is stepped into); ServingInputError for a zip that is
    unreadable, writes outside ``folder`` or unpacks to more than :data:`MAX_UNZIPPED_BYTES`."""
    import io

    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        members = [m for m in archive.infolist() if not m.is_dir()]
        if sum(m.file_size for m in members) > MAX_UNZIPPED_BYTES:
            raise ServingInputError(f"the zip unpacks to more than {MAX_UNZIPPED_BYTES >> 30} GiB")
        for member in members:
            parts = Path(member.filename).parts
            if not parts or Path(member.filename).is_absolute() or ".." in parts:
                raise ServingInputError("the zip holds a file that would unpack outside its folder")
            target = folder.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as read, target.open("wb") as write:
                shutil.copyfileobj(read, write)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError) as exc:
        raise ServingInputError(f"not a readable zip ({error_summary(exc)})") from None
    if not members:
        raise ServingInputError("the zip holds no files")
    entries = list(folder.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def allowed_folder() -> Path | None:
    """The folder path inputs may come from (``$MEDSEG_SERVING_PATHS_UNDER``), or None: path inputs are off."""
    value = os.environ.get(PATHS_UNDER_ENV, "").strip()
    if not value:
        return None
    folder = Path(value).expanduser().resolve()
    if not folder.is_dir():
        raise DataError(f"{PATHS_UNDER_ENV}={value}: not a folder")
    return folder


def checked_path(text: str, under: Path | None) -> Path:
    """The server file or folder ``text`` names, only where it lies (symlinks followed) inside ``under``."""
    if under is None:
        raise ServingInputError(f"path inputs are off on this server (its operator can allow one: {PATHS_UNDER_ENV})")
    path = Path(text).expanduser()
    resolved = (path if path.is_absolute() else under / path).resolve()
    if not resolved.is_relative_to(under):
        raise ServingInputError("the path is outside the folder path inputs are allowed from")
    if not resolved.exists():
        raise ServingInputError("the path does not exist in the folder path inputs are allowed from")
    return resolved


def _display_name(index: int, item: Mapping[str, Any]) -> str:
    """How an answer names its input: the file name it was sent with, else ``input-<index>``."""
    for key in ("name", "path"):
        value = item.get(key)
        if isinstance(value, str) and value:
            return Path(value).name[-120:]
    return f"input-{index}"


def _scrubbed(reason: str, workspace: Path, label: str) -> str:
    """One line of at most :data:`MAX_REASON_CHARS`, any path in the temporary folder replaced by the input's name."""
    import re

    for root in {str(workspace.resolve()), str(workspace)}:
        reason = re.sub(re.escape(root) + r"[^\s:,;'\"()]*", lambda _: label, reason)
    line = " ".join(reason.split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


def _log_to_stderr() -> None:
    """medseg's INFO lines on the server's stderr (the scoring server configures only its own loggers)."""
    logger = logging.getLogger("medseg")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def log_serving_model(tracker: Tracker, checkpoint_files: list[Path], registered_name: str | None) -> str:
    """Log the serving model into the tracker's active run (``runs:/<run id>/serving``): the checkpoint and its
    post-processing as its artefacts, built at load time by :mod:`medseg.tracking.pyfunc_model`; registered as
    ``<name>-serving`` when the PyTorch model is registered as ``<name>``. Returns its URI."""
    with tempfile.TemporaryDirectory(prefix="medseg-serving-model-") as folder:
        model_dir = Path(folder) / "model"
        model_dir.mkdir()
        for path in checkpoint_files:
            shutil.copy2(path, model_dir / path.name)
        return tracker.log_pyfunc_model(
            SERVING_MODEL_NAME,
            Path(__file__).with_name("pyfunc_model.py"),
            {"model": model_dir},
            f"{registered_name}{SERVING_REGISTERED_SUFFIX}" if registered_name else None,
        )

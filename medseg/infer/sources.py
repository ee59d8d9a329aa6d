"""Where a trained model comes from, one small function per source, chosen by one table: a checkpoint (a run
folder, its ``model/`` folder, a ``.pt`` file or an MLflow model URI), an exported file (``.onnx``, ``.ts``), a
cross-validated run (``model/ensemble.json``: its folds' ensemble), an exported fold ensemble, and an
``inference_plan.json`` (runs combined, written by ``medseg select``).

Each returns a :class:`LoadedModel` (networks, the settings of the configuration stored with them, the
post-processing and TTA to use); :meth:`medseg.infer.predictor.Predictor.from_model` builds the predictor from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from medseg.config.settings import stored_inference_settings
from medseg.core.errors import ModelError
from medseg.core.layout import ENSEMBLE_FILE
from medseg.infer.backends import export_format, read_exported
from medseg.infer.postprocessing import saved_steps
from medseg.infer.settings import InferenceSettings
from medseg.models.checkpoint import load_checkpoint, network_from_checkpoint, resolve_checkpoint

MODEL_URI_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
PLAN_KIND = "medseg-inference-plan"  # the "kind" of an inference_plan.json written by `medseg select`
EXPORTED_ENSEMBLE_KIND = "medseg-exported-ensemble"  # `medseg export` of a cross-validated run


@dataclass(frozen=True)
class SourceOptions:
    """What the caller overrides: TTA, the post-processing steps, ``inference.backend`` / ``inference.device``, and
    which folds of a cross-validated run."""

    tta: bool | None = None
    steps: list[str] | None = None
    backend: str | None = None
    folds: list[int] | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if self.device is not None and self.backend is None and self.device != "cpu":
            object.__setattr__(self, "backend", "torch")  # ONNX Runtime here is CPU-only


@dataclass
class LoadedModel:
    """A model as a source gives it: networks whose probabilities are averaged (one unless a fold ensemble) with
    the settings of the configuration stored beside them, or ``parts`` (each a loaded model) combined by an
    inference plan."""

    networks: list[nn.Module]
    settings: InferenceSettings | None
    steps: list[str]
    tta: bool = False
    parts: list[LoadedModel] = field(default_factory=list)


def load_model(model: Path | str, options: SourceOptions) -> LoadedModel:
    """The model behind ``model``, read by the source its file is (:data:`SOURCES`)."""
    path = resolve_model(model)
    kind = source_kind(path)
    if options.folds is not None and kind != "ensemble":
        raise ModelError(f"{path}: --folds needs a cross-validated run (this model has no folds)")
    return SOURCES[kind](path, options)


def source_kind(path: Path) -> str:
    """Which source reads ``path`` (a key of :data:`SOURCES`)."""
    if path.name == ENSEMBLE_FILE:
        return "ensemble"
    if path.suffix == ".json":
        plan = read_plan(path)
        if plan is not None:
            return "exported_ensemble" if plan["kind"] == EXPORTED_ENSEMBLE_KIND else "plan"
    return "exported" if export_format(path) is not None else "checkpoint"


def _loaded(
    networks: list[nn.Module], settings: InferenceSettings, steps: list[str], options: SourceOptions
) -> LoadedModel:
    chosen = steps if options.steps is None else options.steps
    tta = settings.inference.tta if options.tta is None else options.tta
    return LoadedModel(networks, settings, list(chosen), tta)


def _from_checkpoint(path: Path, options: SourceOptions) -> LoadedModel:
    state = load_checkpoint(path)
    settings = stored_inference_settings(state.get("config"), path, options.backend, options.device)
    steps = saved_steps(settings.postprocessing, path.parent) if options.steps is None else options.steps
    return _loaded([network_from_checkpoint(state, path)], settings, steps, options)


def _from_exported(path: Path, options: SourceOptions) -> LoadedModel:
    network, metadata = read_exported(path)
    settings = stored_inference_settings(metadata.get("config"), path, options.backend, options.device)
    return _loaded([network], settings, list(metadata.get("postprocessing", [])), options)  # resolved at export


def _from_exported_ensemble(path: Path, options: SourceOptions) -> LoadedModel:
    plan = read_plan(path)
    files = [path.parent / name for _, name in sorted(plan["members"].items(), key=lambda item: int(item[0]))]
    networks, metadata = zip(*(read_exported(f) for f in files), strict=True)
    settings = stored_inference_settings(metadata[0].get("config"), files[0], options.backend, options.device)
    return _loaded(list(networks), settings, list(plan["postprocessing"]), options)


def _from_ensemble(manifest: Path, options: SourceOptions) -> LoadedModel:
    """The fold checkpoints a cross-validated run's ``model/ensemble.json`` lists (all, or ``options.folds``)."""
    try:
        members = {int(k): v for k, v in json.loads(manifest.read_text(encoding="utf-8"))["members"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{manifest}: not a readable ensemble manifest ({exc})") from None
    chosen = sorted(members) if options.folds is None else list(options.folds)
    unknown = [f for f in chosen if f not in members]
    if unknown or not chosen:
        raise ModelError(f"{manifest}: no fold {unknown[0] if unknown else ''} (folds: {sorted(members)})")
    root = manifest.parent.parent
    networks, settings = [], None
    for fold in chosen:
        path = root / members[fold]
        state = load_checkpoint(path)
        settings = settings or stored_inference_settings(state.get("config"), path, options.backend, options.device)
        networks.append(network_from_checkpoint(state, path))
    steps = saved_steps(settings.postprocessing, manifest.parent) if options.steps is None else options.steps
    return _loaded(networks, settings, steps, options)


def _from_plan(path: Path, options: SourceOptions) -> LoadedModel:
    """The runs an ``inference_plan.json`` combines, each without its own post-processing: the plan's is applied
    once to the averaged probabilities."""
    plan = read_plan(path)
    member_options = SourceOptions(options.tta, [], options.backend, None, options.device)
    parts = [load_model(Path(run), member_options) for run in plan["members"]]
    steps = list(plan["postprocessing"]) if options.steps is None else options.steps
    return LoadedModel([], None, steps, parts[0].tta, parts)


#: source name -> the function that loads it (:func:`source_kind` names the source of a file)
SOURCES: dict[str, Callable[[Path, SourceOptions], LoadedModel]] = {
    "checkpoint": _from_checkpoint,
    "exported": _from_exported,
    "ensemble": _from_ensemble,
    "exported_ensemble": _from_exported_ensemble,
    "plan": _from_plan,
}


def read_plan(path: Path) -> dict[str, Any] | None:
    """The inference plan or exported-ensemble manifest in ``path`` (None for another JSON file)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(document, dict) or document.get("kind") not in (PLAN_KIND, EXPORTED_ENSEMBLE_KIND):
        return None
    if not document.get("members"):
        raise ModelError(f"{path}: a {document['kind']} without members")
    return document


def resolve_model(model: Path | str) -> Path:
    """The model file behind a run folder, ``model/`` folder, file path or MLflow model URI."""
    if isinstance(model, str) and model.startswith(MODEL_URI_SCHEMES):
        from medseg.tracking.tracker import download_model

        return download_model(model)
    return resolve_checkpoint(Path(model))

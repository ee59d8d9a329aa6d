"""Experiment tracking behind a small interface, so stages never talk to ``mlflow`` directly.

:class:`MlflowTracker` writes to MLflow (default: a sqlite store under ``mlruns/`` in the working
directory, artefacts beside it); :class:`Tracker` itself keeps everything in memory for tests and for
``tracking.enabled: false``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from medseg.config.schema import TrackingConfig
from medseg.core.errors import MedsegError, error_summary
from medseg.core.layout import BEST_CHECKPOINT
from medseg.tracking.store import DEFAULT_STORE, artifacts_dir, default_tracking_uri

log = logging.getLogger(__name__)


class TrackingError(MedsegError):
    """An MLflow run or model that was asked for does not exist."""


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become their string form."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class Tracker:
    """The interface the pipeline uses; the base class records into memory."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self._stack: list[dict[str, Any]] = []

    @property
    def run_id(self) -> str | None:
        """Id of the innermost active run."""
        return self._stack[-1]["id"] if self._stack else None

    @contextlib.contextmanager
    def run(self, name: str, tags: Mapping[str, str] | None = None, run_id: str | None = None) -> Iterator[str]:
        """Start a run (nested under the active one, if any), or reopen ``run_id``, and yield its id."""
        existing = [r for r in self.runs if r["id"] == run_id]
        record = (
            existing[0]
            if existing
            else {
                "id": f"memory-{len(self.runs)}",
                "name": name,
                "parent": self.run_id,
                "tags": dict(tags or {}),
                "params": {},
                "metrics": {},
                "artifacts": [],
            }
        )
        if not existing:
            self.runs.append(record)
        self._stack.append(record)
        try:
            yield record["id"]
        finally:
            self._stack.pop()

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters (nested mappings are flattened to dotted keys)."""
        self._stack[-1]["params"].update({k: str(v) for k, v in flatten(params).items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metric values, optionally at a step (the epoch)."""
        for key, value in metrics.items():
            self._stack[-1]["metrics"].setdefault(key, []).append((step, float(value)))

    def log_artifact(self, path: Path, artifact_dir: str | None = None) -> None:
        """Attach a file or folder to the active run."""
        self._stack[-1]["artifacts"].append((str(path), artifact_dir))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags on the active run."""
        self._stack[-1]["tags"].update(tags)

    def log_dataset(self, name: str, source: str, digest: str, records: list[dict[str, str]]) -> None:
        """Record the data set a run used (source and digest tell runs on different data apart)."""
        self._stack[-1].setdefault("datasets", []).append({"name": name, "source": source, "digest": digest})

    def log_model(self, network: Any, input_example: Any, files: list[Path], registered_name: str | None) -> str:
        """Log the trained network as a model of the active run; returns its URI."""
        self._stack[-1]["model"] = {"files": [str(f) for f in files], "registered_name": registered_name}
        return f"runs:/{self.run_id}/model"

    def log_pyfunc_model(
        self, name: str, model_code: Path, artifacts: Mapping[str, Path], registered_name: str | None
    ) -> str:
        """Log an MLflow pyfunc model built by ``model_code`` (models from code) with ``artifacts``, medseg's code and
        installable requirements, as model ``name`` of the active run; returns its URI."""
        self._stack[-1].setdefault("pyfunc_models", {})[name] = {
            "code": str(model_code),
            "artifacts": {k: str(v) for k, v in artifacts.items()},
            "registered_name": registered_name,
        }
        return f"runs:/{self.run_id}/{name}"

    def set_run_tag(self, run_id: str, key: str, value: str) -> None:
        """Set a tag on an existing (finished) run."""
        for record in self.runs:
            if record["id"] == run_id:
                record["tags"][key] = value

    def run_tags(self, run_id: str) -> dict[str, str]:
        """Tags of an existing run (to find the folder of a run being resumed)."""
        for record in self.runs:
            if record["id"] == run_id:
                return dict(record["tags"])
        raise TrackingError(f"run {run_id}: not found in the in-memory tracker")


#: the experiment tag MLflow's UI reads to open an experiment on its runs table ("Model training"), not on the GenAI
#: overview of traces that it shows for untagged experiments
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def ensure_experiment(client: Any, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created if missing, tagged as a model-training experiment."""
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(
            name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
        )
    if found.tags.get(EXPERIMENT_KIND_TAG) is None:  # made by an older medseg, or by hand
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return found.experiment_id


class MlflowTracker(Tracker):
    """Tracker that writes to an MLflow tracking store."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None) -> None:
        super().__init__()
        import mlflow

        for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self._mlflow = mlflow
        self.uri = uri
        mlflow.set_tracking_uri(uri)
        ensure_experiment(mlflow.MlflowClient(), experiment, artifact_location)
        mlflow.set_experiment(experiment)

    @contextlib.contextmanager
    def run(self, name: str, tags: Mapping[str, str] | None = None, run_id: str | None = None) -> Iterator[str]:
        nested = self._mlflow.active_run() is not None
        name = None if run_id else name
        with self._mlflow.start_run(run_id=run_id, run_name=name, nested=nested, tags=dict(tags or {})) as active:
            yield active.info.run_id

    @property
    def run_id(self) -> str | None:
        active = self._mlflow.active_run()
        return active.info.run_id if active else None

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._mlflow.log_params({k: str(v)[:6000] for k, v in flatten(params).items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: Path, artifact_dir: str | None = None) -> None:
        if Path(path).is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_dir)
        else:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_dir)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._mlflow.set_tags(dict(tags))

    def log_dataset(self, name: str, source: str, digest: str, records: list[dict[str, str]]) -> None:
        import pandas as pd
        from mlflow.data.pandas_dataset import from_pandas

        frame = pd.DataFrame(records)
        with warnings.catch_warnings():  # MLflow registers its local source class twice and warns about it
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            dataset = from_pandas(frame, source=source, name=name, digest=digest)
        self._mlflow.log_input(dataset, context="training")

    def log_model(self, network: Any, input_example: Any, files: list[Path], registered_name: str | None) -> str:
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        from medseg.models.classical import ClassicalSegmenter

        with torch.inference_mode():
            output = network(torch.from_numpy(input_example)).float().numpy()
        # a classical baseline runs scikit-image inside forward(): torch.export (MLflow's pt2 default) cannot trace
        # it, so it is pickled, and unpickling needs medseg: its code travels with the model. medseg itself always
        # reloads the weights-only checkpoint among the extra files, never this pickle
        classical = isinstance(network, ClassicalSegmenter)
        if classical:
            options = {"serialization_format": "pickle", "code_paths": [medseg_code_path()]}
            pip_requirements = installable_requirements()
        else:  # the exported program needs torch alone
            options, pip_requirements = {}, [f"torch=={torch.__version__.split('+')[0]}"]
        info = mlflow.pytorch.log_model(
            network,
            name="model",
            **options,
            signature=infer_signature(input_example, output),
            input_example=input_example,
            extra_files=[str(f) for f in files],
            registered_model_name=registered_name,
            pip_requirements=pip_requirements,
        )
        return info.model_uri

    def log_pyfunc_model(
        self, name: str, model_code: Path, artifacts: Mapping[str, Path], registered_name: str | None
    ) -> str:
        import mlflow.pyfunc

        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(model_code),
            artifacts={k: str(v) for k, v in artifacts.items()},
            code_paths=[medseg_code_path()],
            pip_requirements=installable_requirements(),
            registered_model_name=registered_name,
        )
        return info.model_uri

    def set_run_tag(self, run_id: str, key: str, value: str) -> None:
        self._mlflow.MlflowClient().set_tag(run_id, key, value)

    def run_tags(self, run_id: str) -> dict[str, str]:
        from mlflow.exceptions import MlflowException

        try:
            return dict(self._mlflow.MlflowClient().get_run(run_id).data.tags)
        except MlflowException:
            raise TrackingError(f"run {run_id}: no such MLflow run in {self.uri}") from None


def installable_requirements() -> list[str]:
    """pip requirements any package index can install: medseg's own dependencies at the versions installed here
    (medseg itself travels with a model as its code, :func:`medseg_code_path`, so it is not among them)."""
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement

    try:
        declared = requires("medseg") or []
    except PackageNotFoundError:  # run from a source tree that was never installed
        log.warning("medseg is not installed: the logged model's requirements name only what MLflow adds")
        declared = []
    pinned = []
    for text in declared:
        requirement = Requirement(text)
        if requirement.marker is not None and "extra" in str(requirement.marker):
            continue
        try:
            pinned.append(f"{requirement.name}=={version(requirement.name).split('+')[0]}")
        except PackageNotFoundError:
            pinned.append(f"{requirement.name}{requirement.specifier}")
    return pinned


def medseg_code_path() -> str:
    """The medseg package folder, logged with a model (MLflow's ``code_paths``) so it loads without medseg installed."""
    return str(Path(__file__).resolve().parents[1])


def download_model(uri: str, cache_root: Path = DEFAULT_STORE / "downloads") -> Path:
    """Fetch an MLflow model (``runs:/<id>/model``, ``models:/<name>/<version>``) and return its checkpoint."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(default_tracking_uri())
    target = cache_root / hashlib.sha256(uri.encode()).hexdigest()[:16]
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
    except (MlflowException, OSError) as exc:
        raise TrackingError(f"{uri}: cannot fetch the model ({error_summary(exc)})") from None
    found = sorted(local.rglob(BEST_CHECKPOINT))
    if not found:
        raise TrackingError(f"{uri}: the model holds no medseg checkpoint ({BEST_CHECKPOINT})")
    return found[0]


def build_tracker(cfg: TrackingConfig, experiment: str) -> Tracker:
    """An MLflow tracker for the configured store, or an in-memory one when tracking is disabled."""
    if not cfg.enabled:
        return Tracker()
    uri = cfg.uri or default_tracking_uri()
    artifacts = artifacts_dir(uri)
    if artifacts is not None:
        artifacts.parent.mkdir(parents=True, exist_ok=True)
    artifact_location = None if artifacts is None else artifacts.resolve().as_uri()  # artefacts beside the database
    return MlflowTracker(uri, cfg.experiment or experiment, artifact_location)

"""Experiment tracking behind a small interface, so stages never talk to ``mlflow`` directly.

:class:`MlflowTracker` writes to MLflow (default: a sqlite store under ``mlruns/`` in the working
directory, artefacts beside it); :class:`MemoryTracker` keeps everything in memory for tests and for
``tracking.enabled: false``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from medseg.config import TrackingConfig

log = logging.getLogger(__name__)

DEFAULT_STORE = Path("mlruns")


def default_tracking_uri(store: Path = DEFAULT_STORE) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a sqlite database under ``mlruns/`` (MLflow 3's recommended store)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(store / 'mlflow.db').resolve()}"


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
    def run(self, name: str, tags: Mapping[str, str] | None = None) -> Iterator[str]:
        """Start a run (nested under the active one, if any) and yield its id."""
        record = {
            "id": f"memory-{len(self.runs)}",
            "name": name,
            "parent": self.run_id,
            "tags": dict(tags or {}),
            "params": {},
            "metrics": {},
            "artifacts": [],
        }
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


MemoryTracker = Tracker


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
        client = mlflow.MlflowClient()
        found = client.get_experiment_by_name(experiment)
        if found is None:
            client.create_experiment(experiment, artifact_location=artifact_location)
        mlflow.set_experiment(experiment)

    @contextlib.contextmanager
    def run(self, name: str, tags: Mapping[str, str] | None = None) -> Iterator[str]:
        nested = self._mlflow.active_run() is not None
        with self._mlflow.start_run(run_name=name, nested=nested, tags=dict(tags or {})) as active:
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


def build_tracker(cfg: TrackingConfig, experiment: str) -> Tracker:
    """An MLflow tracker for the configured store, or an in-memory one when tracking is disabled."""
    if not cfg.enabled:
        return MemoryTracker()
    uri = cfg.uri or default_tracking_uri()
    artifact_location = None
    if uri.startswith("sqlite:///"):
        store = Path(uri.removeprefix("sqlite:///")).parent
        store.mkdir(parents=True, exist_ok=True)
        artifact_location = (store / "artifacts").resolve().as_uri()  # artefacts beside the database
    return MlflowTracker(uri, cfg.experiment or experiment, artifact_location)

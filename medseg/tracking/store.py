"""Where the MLflow tracking store is: ``$MLFLOW_TRACKING_URI``, or a sqlite database under ``mlruns/``, with
the run artefacts in ``mlruns/artifacts/`` beside it. The only module that parses a store URI."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_STORE = Path("mlruns")
SQLITE_PREFIX = "sqlite:///"


def default_tracking_uri(store: Path = DEFAULT_STORE) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a sqlite database under ``mlruns/`` (MLflow 3's recommended store)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE_PREFIX}{(store / 'mlflow.db').resolve()}"


def sqlite_database(store_uri: str) -> Path | None:
    """The database file of a sqlite store URI; None for other stores (a server, a folder)."""
    return Path(store_uri.removeprefix(SQLITE_PREFIX)) if store_uri.startswith(SQLITE_PREFIX) else None


def artifacts_dir(store_uri: str) -> Path | None:
    """For a sqlite store, the ``artifacts/`` folder beside the database (where medseg writes artefacts)."""
    database = sqlite_database(store_uri)
    return None if database is None else database.parent / "artifacts"


def missing_store(store_uri: str) -> Path | None:
    """The database file of a sqlite store that does not exist yet (looking must not create it), else None."""
    database = sqlite_database(store_uri)
    return database if database is not None and not database.is_file() else None

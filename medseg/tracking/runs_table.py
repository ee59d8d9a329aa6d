"""``medseg runs``: the most recent pipeline runs as a table in the terminal, for machines without a browser.

Only parent runs (one per ``medseg run``) are listed, newest first; the nested stage runs (``train``,
``evaluate``, ``predict``) are left out, except that ``best_val_dice`` is read from the ``train`` child.
Parameters are shown only where their values differ between the listed runs.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medseg.core.errors import MedsegError
from medseg.tracking.store import default_tracking_uri, missing_store

PARENT_TAG = "mlflow.parentRunId"
#: metrics shown, in order: (column, where it is logged)
KEY_METRICS: tuple[tuple[str, str], ...] = (
    ("test_dice", "parent"),
    ("test_jaccard_thresholded", "parent"),
    ("test_hd95", "parent"),
    ("best_val_dice", "train"),
)
MISSING = None


class RunsError(MedsegError):
    """Nothing to list: no store, no such experiment, or no runs."""


def resolve_target(pipeline: str | None, store: str | None) -> tuple[str, str | None]:
    """``(store_uri, experiment_name or None)`` for a pipeline YAML path, an experiment name, or nothing.

    A pipeline file gives its experiment (``tracking.experiment`` or ``name``) and its store (``tracking.uri``);
    ``store`` overrides the store; the default store is the project's (``default_tracking_uri()``).
    """
    experiment: str | None = None
    config_uri: str | None = None
    if pipeline is not None:
        path = Path(pipeline)
        if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
            from medseg.config.loading import load_config

            if not path.is_file():
                raise RunsError(f"{path}: no such pipeline file")
            cfg = load_config(path)
            experiment = cfg.tracking.experiment or cfg.name
            config_uri = cfg.tracking.uri
        else:
            experiment = pipeline
    return store or config_uri or default_tracking_uri(), experiment


def _check_store(store_uri: str) -> None:
    """Fail in one line if a sqlite store does not exist (and do not create one by looking)."""
    db = missing_store(store_uri)
    if db is not None:
        raise RunsError(f"no runs yet: no MLflow store at {db} (run `medseg run <pipeline>` first, or pass --store)")


def differing_params(params: Sequence[Mapping[str, str]]) -> list[str]:
    """Parameter names whose values are not the same in every run (a missing key counts as a value)."""
    keys = sorted(set().union(*params)) if params else []
    return [key for key in keys if len({p.get(key, MISSING) for p in params}) > 1]


def _duration_s(info: Any, now_ms: int) -> float | None:
    if info.start_time is None:
        return None
    end = info.end_time if info.end_time else (now_ms if info.status == "RUNNING" else None)
    return None if end is None else max(0.0, (end - info.start_time) / 1000.0)


def _train_metrics(client: Any, run: Any) -> dict[str, float]:
    """Metrics of the run's nested ``train`` stage (empty if it has none)."""
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.{PARENT_TAG} = '{run.info.run_id}' AND attributes.run_name = 'train'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return dict(children[0].data.metrics) if children else {}


def runs_table(store_uri: str, experiment: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
    """The ``limit`` most recent parent runs of ``experiment`` (all experiments if None), newest first.

    Each row: ``run_id``, ``run_name``, ``experiment``, ``status``, ``start_time`` (aware datetime or None),
    ``duration_s`` (None if unknown), ``params`` (only those that differ between the rows) and ``metrics``
    (the key metrics present: ``test_dice``, ``test_jaccard_thresholded``, ``test_hd95``, ``best_val_dice``).

    Raises:
        RunsError: the store does not exist, the experiment is unknown, or there are no runs.
    """
    if limit < 1:
        raise RunsError(f"--limit {limit}: must be at least 1")
    _check_store(store_uri)
    import mlflow
    from mlflow.entities import ViewType

    client = mlflow.MlflowClient(tracking_uri=store_uri)
    if experiment is None:
        experiments = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None or found.lifecycle_stage != "active":
            known = sorted(e.name for e in client.search_experiments() if e.name != "Default")
            hint = f"; known: {', '.join(known)}" if known else "; the store has no experiments yet"
            raise RunsError(f"no experiment named {experiment!r} in {store_uri}{hint}")
        experiments = [found]
    names = {e.experiment_id: e.name for e in experiments}
    runs = (
        client.search_runs(
            list(names),
            filter_string=f"tags.{PARENT_TAG} IS NULL",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=limit,
            order_by=["attributes.start_time DESC"],
        )
        if names
        else []
    )
    if not runs:
        where = f"experiment {experiment!r}" if experiment else store_uri
        raise RunsError(f"no runs in {where}")
    shown = differing_params([run.data.params for run in runs])
    now_ms = int(time.time() * 1000)
    rows = []
    for run in runs:
        info = run.info
        metrics: dict[str, float] = {}
        train: dict[str, float] | None = None
        for name, source in KEY_METRICS:
            if name in run.data.metrics:
                metrics[name] = run.data.metrics[name]
            elif source == "train":
                train = _train_metrics(client, run) if train is None else train
                if name in train:
                    metrics[name] = train[name]
        rows.append(
            {
                "run_id": info.run_id,
                "run_name": info.run_name,
                "experiment": names.get(info.experiment_id, info.experiment_id),
                "status": info.status,
                "start_time": (
                    dt.datetime.fromtimestamp(info.start_time / 1000, tz=dt.timezone.utc) if info.start_time else None
                ),
                "duration_s": _duration_s(info, now_ms),
                "params": {key: run.data.params.get(key) for key in shown},
                "metrics": metrics,
            }
        )
    return rows


def format_duration(seconds: float | None) -> str:
    """``3.2s``, ``4m 05s``, ``2h 03m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _columns(rows: Iterable[Mapping[str, Any]], field: str) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row[field]))
    return list(seen)


def render_table(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> Any:
    """A :class:`rich.table.Table` of :func:`runs_table` rows."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    several_experiments = len({row["experiment"] for row in rows}) > 1
    if several_experiments:
        table.add_column("experiment", no_wrap=True)
    table.add_column("run", no_wrap=True, style="bold")
    table.add_column("status", no_wrap=True)
    table.add_column("started", no_wrap=True)
    table.add_column("duration", no_wrap=True, justify="right")
    params = _columns(rows, "params")
    metrics = [name for name, _ in KEY_METRICS if name in set(_columns(rows, "metrics"))]
    for name in params:
        table.add_column(name, style="cyan")
    for name in metrics:
        table.add_column(name, justify="right", style="green", no_wrap=True)
    status_style = {"FINISHED": "green", "RUNNING": "yellow", "FAILED": "red", "KILLED": "red"}
    for row in rows:
        start = row["start_time"].astimezone().strftime("%Y-%m-%d %H:%M:%S") if row["start_time"] else "-"
        status = row["status"]
        cells = [row["experiment"]] if several_experiments else []
        cells += [
            row["run_name"] or row["run_id"],
            f"[{status_style.get(status, 'white')}]{status}[/]",
            start,
            format_duration(row["duration_s"]),
        ]
        cells += ["-" if row["params"].get(name) is None else str(row["params"][name]) for name in params]
        cells += [f"{row['metrics'][name]:.4f}" if name in row["metrics"] else "-" for name in metrics]
        table.add_row(*cells)
    return table


def print_runs(pipeline: str | None = None, limit: int = 10, store: str | None = None) -> list[dict[str, Any]]:
    """``medseg runs``: print the table on stdout and return its rows."""
    from rich.console import Console

    store_uri, experiment = resolve_target(pipeline, store)
    rows = runs_table(store_uri, experiment, limit)
    console = Console()
    if not console.is_terminal:
        console = Console(width=100_000)  # piped or captured: never wrap or cut a cell; the table is as wide as needed
    what = f"experiment {experiment}" if experiment else "all experiments"
    title = f"{len(rows)} most recent run(s), {what}"
    console.print(render_table(rows, title))
    if len(rows) > 1 and not rows[0]["params"]:
        console.print("(all parameters are the same in these runs)")
    return rows

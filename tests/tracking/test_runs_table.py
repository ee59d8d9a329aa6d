"""`medseg runs`: parent runs only, newest first, differing params, key metrics (best_val_dice from the child)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg.cli.app import app
from medseg.tracking.runs_table import differing_params, format_duration, render_table, resolve_target, runs_table
from tests.helpers.mlflow_store import make_store
from tests.helpers.paths import REPO


@pytest.fixture(scope="module")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Made once per module: creating a sqlite store (schema migrations) takes seconds; copying it does not."""
    root = tmp_path_factory.mktemp("template") / "mlruns"
    return root / "mlflow.db", make_store(root)[1]


@pytest.fixture
def store(tmp_path: Path, template_store: tuple[Path, dict[str, str]]) -> tuple[str, dict[str, str]]:
    """A private copy of the two-run store, free to change."""
    db, ids = template_store
    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(db, tmp_path / "mlruns" / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", ids


def test_differing_params_keeps_only_what_changes() -> None:
    runs = [{"a": "1", "b": "x"}, {"a": "1", "b": "y", "c": "z"}]
    assert differing_params(runs) == ["b", "c"]
    assert differing_params([{"a": "1"}]) == []
    assert differing_params([]) == []


def test_parent_runs_newest_first_with_differing_params_and_metrics(store: tuple[str, dict[str, str]]) -> None:
    uri, ids = store
    rows = runs_table(uri, "skin_lesion")
    assert [row["run_name"] for row in rows] == ["longer-epochs3", "baseline-epochs2"]  # newest first, no stages
    assert [row["run_id"] for row in rows] == [ids["longer-epochs3"], ids["baseline-epochs2"]]
    assert all(row["params"] == {"training.epochs": e} for row, e in zip(rows, ["3", "2"], strict=True))
    newer, older = rows
    assert older["metrics"] == {
        "test_dice": 0.8765,
        "test_jaccard_thresholded": 0.7,
        "test_hd95": 12.5,
        "best_val_dice": 0.81,  # from the nested train run
    }
    assert newer["metrics"]["best_val_dice"] == 0.86
    assert older["status"] == "FINISHED" and older["duration_s"] == pytest.approx(125.0)
    assert older["experiment"] == "skin_lesion" and older["start_time"] < newer["start_time"]


def test_limit_and_all_experiments(store: tuple[str, dict[str, str]]) -> None:
    uri, _ = store
    rows = runs_table(uri, limit=1)
    assert [row["run_name"] for row in rows] == ["longer-epochs3"]
    assert rows[0]["params"] == {}  # one run: nothing differs
    assert len(runs_table(uri)) == 2


def test_clear_messages_for_missing_store_experiment_and_runs(
    tmp_path: Path, store: tuple[str, dict[str, str]]
) -> None:
    from medseg.tracking.runs_table import RunsError

    missing = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(RunsError, match="no MLflow store"):
        runs_table(f"sqlite:///{missing}")
    assert not missing.parent.exists()  # looking does not create a store
    uri, _ = store
    with pytest.raises(RunsError, match="no experiment named 'nope'.*known: skin_lesion"):
        runs_table(uri, "nope")
    import mlflow

    mlflow.MlflowClient(tracking_uri=uri).create_experiment("empty")
    with pytest.raises(RunsError, match="no runs in experiment 'empty'"):
        runs_table(uri, "empty")


def test_pipeline_file_names_the_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri, experiment = resolve_target(str(REPO / "pipelines" / "skin_lesion.yaml"), None)
    assert experiment == "skin_lesion" and uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert resolve_target("skin_lesion", "sqlite:////x/y.db") == ("sqlite:////x/y.db", "skin_lesion")
    assert resolve_target(None, None)[1] is None


def test_render_and_durations(store: tuple[str, dict[str, str]]) -> None:
    from rich.console import Console

    table = render_table(runs_table(store[0]))
    console = Console(width=400, record=True)
    console.print(table)
    text = console.export_text()
    for expected in ("training.epochs", "best_val_dice", "0.8765", "0.9012", "2m 05s", "FINISHED"):
        assert expected in text
    assert "model.name" not in text and "train " not in text
    assert [format_duration(s) for s in (None, 3.24, 125, 7380)] == ["-", "3.2s", "2m 05s", "2h 03m"]


def test_cli_runs(store: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    uri, _ = store
    result = CliRunner().invoke(app, ["runs", "skin_lesion", "--store", uri, "--limit", "5"])
    assert result.exit_code == 0, result.output
    assert "baseline-epochs2" in result.output and "longer-epochs3" in result.output
    assert "training.epochs" in result.output and "0.8765" in result.output
    assert result.output.index("longer-epochs3") < result.output.index("baseline-epochs2")

    missing = CliRunner().invoke(app, ["runs", "nope", "--store", uri])
    assert missing.exit_code == 2
    assert "no experiment named 'nope'" in missing.output and len(missing.output.strip().splitlines()) == 1

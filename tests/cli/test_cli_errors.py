"""The command line turns user errors into one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

from medseg.cli.app import app
from medseg.config.schema import DATA_ROOT_ENV
from medseg.core.errors import ConfigError
from tests.helpers.paths import REPO

SKIN_LESION = REPO / "pipelines" / "skin_lesion.yaml"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No $MEDSEG_DATA_ROOT from the caller, and the CLI's logging set-up undone afterwards."""
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def medseg(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a fresh interpreter (for the true exit code and stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in (DATA_ROOT_ENV, "MLFLOW_TRACKING_URI")}
    return subprocess.run(
        [sys.executable, "-m", "medseg", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
    )


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


# --------------------------------------------------------------------------------------------------
# Real subprocesses: exit code, exactly one stderr line, no traceback
# --------------------------------------------------------------------------------------------------


def test_validate_unknown_key_one_line_exit_2(tmp_path: Path) -> None:
    pipeline = tmp_path / "bad.yaml"
    pipeline.write_text("training:\n  epoch: 3\n")
    result = medseg("validate", str(pipeline), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {pipeline}: training.epoch: unknown key; did you mean 'epochs'?"]
    assert result.stdout == ""
    assert "Traceback" not in result.stderr + result.stdout


def test_run_with_missing_data_root_one_line_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_data"
    out = tmp_path / "out"
    splits = tmp_path / "splits.json"
    result = medseg(
        "run",
        str(SKIN_LESION),
        "--set",
        f"data.root={missing}",
        "--set",
        f"data.split.file={splits}",
        "--set",
        f"output_root={out}",
        "--set",
        "tracking.enabled=false",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"error: {missing / 'ph2'}: dataset folder not found (data.root={missing}, data.dataset_dir='ph2')"
    ]
    assert "Traceback" not in result.stderr + result.stdout
    assert not out.exists()
    assert not splits.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written in the working folder either


# --------------------------------------------------------------------------------------------------
# In-process (CliRunner)
# --------------------------------------------------------------------------------------------------


def test_help_lists_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    assert "run" in result.output
    assert "validate" in result.output


def test_validate_shipped_pipeline_prints_resolved_yaml() -> None:
    result = invoke("validate", str(SKIN_LESION))
    assert result.exit_code == 0, result.output
    assert "name: skin_lesion" in result.stdout
    resolved = yaml.safe_load(result.stdout)
    assert resolved["name"] == "skin_lesion"
    assert resolved["training"]["max_minutes"] == 10 and resolved["schedule"]["length"] == "max_minutes"
    assert resolved["training"]["epochs"] == 654  # a cap, twice the plan's estimate
    assert resolved["training"]["batch_size"] == 8  # merged from configs/dermoscopy_2d.yaml
    assert resolved["model"]["name"] == "unet"
    assert "extends" not in resolved
    assert result.stderr == ""


def test_validate_applies_set_overrides() -> None:
    result = invoke("validate", str(SKIN_LESION), "--set", "training.epochs=3", "-s", "optimizer.lr=0.5")
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.stdout)
    assert resolved["training"]["epochs"] == 3
    assert resolved["optimizer"]["lr"] == 0.5


def test_validate_bad_override_names_it() -> None:
    result = invoke("validate", str(SKIN_LESION), "--set", "training.epochs=abc")
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: --set training.epochs=abc: training.epochs: Input should be a valid integer")
    assert result.stdout == ""


def test_validate_malformed_override() -> None:
    result = invoke("validate", str(SKIN_LESION), "--set", "training.epochs")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: --set training.epochs: expected key.path=value, e.g. training.epochs=5"
    ]


def test_validate_names_every_argument_a_network_does_not_take_and_those_it_takes() -> None:
    result = invoke("validate", str(SKIN_LESION), "--set", "model.args.bogus=1", "--set", "model.args.also_bogus=2")
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: model.args: unet does not take also_bogus, bogus; it takes channels, strides, ")
    assert "num_res_units" in lines[0] and "in_channels" not in lines[0]  # medseg sets the channels itself


@pytest.mark.parametrize("network", ["fcn8s", "deeplabv3plus", "otsu", "segresnet"])
def test_changing_the_network_drops_the_preset_arguments_of_the_other(network: str) -> None:
    result = invoke("validate", str(SKIN_LESION), "--set", f"model.name={network}")
    assert result.exit_code == 0, result.stderr
    model = yaml.safe_load(result.stdout)["model"]
    assert model["name"] == network and model["args"] == {}


def test_validate_missing_file(tmp_path: Path) -> None:
    result = invoke("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'nope.yaml'}: file not found"]


def test_validate_yaml_syntax_error(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: x\ntraining: [1, 2\n")
    result = invoke("validate", str(pipeline))
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {pipeline}: line 3, column 1: invalid YAML: ")


def test_debug_reraises_the_error(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("training:\n  epoch: 3\n")
    result = invoke("validate", str(pipeline), "--debug")
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == f"{pipeline}: training.epoch: unknown key; did you mean 'epochs'?"

"""Interruptions: SIGKILL a training mid-epoch and a prediction batch mid-way, then finish them; same seed twice.

The killed commands run in real subprocesses (``python -m medseg``), so nothing gets a chance to clean up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medseg.config.loading import load_config
from medseg.config.schema import DATA_ROOT_ENV
from medseg.core.errors import ModelError
from medseg.models.checkpoint import load_checkpoint
from tests.helpers.data import tiny_overrides
from tests.helpers.paths import REPO

pytestmark = pytest.mark.slow

SKIN = REPO / "pipelines" / "skin_lesion.yaml"
EPOCHS = 6


def deterministic_overrides(tmp: Path, data: Path, *extra: str) -> list[str]:
    """A tiny deterministic run: train and evaluate, 6 epochs, fixed seed."""
    return [
        *tiny_overrides(tmp, data),
        f"training.epochs={EPOCHS}",
        "training.deterministic=true",
        "training.early_stopping_patience=null",
        "seed=7",
        "stages=[train, evaluate]",
        *extra,
    ]


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "medseg", *args]


def sets(overrides: list[str]) -> list[str]:
    return [part for item in overrides for part in ("--set", item)]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (DATA_ROOT_ENV, "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = str(REPO)
    return env


def start_cli(cwd: Path, *args: str) -> subprocess.Popen:
    """``medseg ARGS`` in a child process, output captured, to be killed mid-work."""
    return subprocess.Popen(
        cli_command(*args),
        cwd=cwd,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
    )


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240.0) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` holds (polled every 10 ms)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == -signal.SIGKILL, f"not killed (exit {process.returncode}):\n{output[-3000:]}"


def weights_digest(checkpoint: Path) -> str:
    """sha256 over the state_dict tensors (names, dtypes, shapes and bytes) of a checkpoint."""
    state = load_checkpoint(checkpoint)["state_dict"]
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def evaluation(run_dir: Path) -> dict:
    return json.loads((run_dir / "evaluation" / "summary.json").read_text())


def assert_same_run(run: Path, reference: Path) -> None:
    """Same history, weights (best and last, 1e-6) and evaluation numbers (1e-6)."""
    for name in ("best.pt", "last.pt"):
        ours, theirs = load_checkpoint(run / "model" / name), load_checkpoint(reference / "model" / name)
        assert ours["epoch"] == theirs["epoch"], name
        for key, value in theirs["state_dict"].items():
            torch.testing.assert_close(ours["state_dict"][key], value, rtol=0, atol=1e-6, msg=f"{name}: {key}")
    ours_history = learning_history(run)
    theirs_history = learning_history(reference)
    assert [r["epoch"] for r in ours_history] == list(range(1, EPOCHS + 1))
    for mine, theirs in zip(ours_history, theirs_history, strict=True):
        assert mine == pytest.approx(theirs, rel=0, abs=1e-6)
    assert _numbers(evaluation(run)) == pytest.approx(_numbers(evaluation(reference)), rel=0, abs=1e-6, nan_ok=True)


def learning_history(run: Path) -> list[dict[str, float]]:
    """history.json without its wall-clock minutes, which differ between any two runs."""
    rows = json.loads((run / "history.json").read_text())
    assert all(row["minutes"] >= 0 for row in rows)
    return [{k: v for k, v in row.items() if k != "minutes"} for row in rows]


def _numbers(summary: dict, prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """The CLI's logging set-up (a handler on CliRunner's stream) undone after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medseg.data.synthetic import generate_dermoscopy_dataset

    return generate_dermoscopy_dataset(tmp_path_factory.mktemp("d") / "tiny", num_cases=12, image_size=(64, 96), seed=3)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """An uninterrupted deterministic run (in-process, no tracking)."""
    from medseg.pipeline.run import run_pipeline

    tmp = tmp_path_factory.mktemp("reference")
    cfg = load_config(SKIN, deterministic_overrides(tmp, data, "tracking.enabled=false"))
    return run_pipeline(cfg, run_name="reference").run_dir


def test_training_killed_mid_epoch_resumes_to_the_uninterrupted_result(
    tmp_path: Path, data: Path, reference: Path
) -> None:
    overrides = deterministic_overrides(tmp_path, data)  # tracked in MLflow (sqlite under tmp_path)
    run_dir = tmp_path / "runs" / "skin_lesion" / "killed"
    last = run_dir / "model" / "last.pt"
    seen = {"epoch": 0}

    def after_epoch_two() -> bool:
        if last.is_file():
            with contextlib.suppress(ModelError, KeyError):  # tolerate a read while the file is replaced
                seen["epoch"] = load_checkpoint(last)["epoch"]
        return seen["epoch"] >= 2

    process = start_cli(tmp_path, "run", str(SKIN), *sets(overrides), "--name", "killed")
    kill_when(process, after_epoch_two)
    stopped_at = load_checkpoint(last)["epoch"]
    assert 2 <= stopped_at < EPOCHS, "killed during training, after epoch 2"
    assert not (run_dir / "evaluation").exists()

    resumed = subprocess.run(
        cli_command("run", str(SKIN), *sets(overrides), "--resume", str(run_dir)),
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    assert f"Resuming after epoch {stopped_at}" in resumed.stderr
    assert load_checkpoint(last)["epoch"] == EPOCHS
    assert_same_run(run_dir, reference)


def test_same_seed_twice_gives_identical_metrics_and_weights(tmp_path: Path, data: Path, reference: Path) -> None:
    from medseg.pipeline.run import run_pipeline

    cfg = load_config(SKIN, deterministic_overrides(tmp_path, data, "tracking.enabled=false"))
    again = run_pipeline(cfg, run_name="again").run_dir
    for name in ("best.pt", "last.pt"):
        assert weights_digest(again / "model" / name) == weights_digest(reference / "model" / name), name
    assert learning_history(again) == learning_history(reference)
    assert _numbers(evaluation(again)) == pytest.approx(_numbers(evaluation(reference)), rel=0, abs=0, nan_ok=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """30 photos of 512 x 384, so that a batch takes a few seconds."""
    folder = tmp_path_factory.mktemp("photos") / "photos"
    folder.mkdir()
    sources = sorted((data / "images").iterdir())
    for index in range(30):
        image = Image.open(sources[index % len(sources)]).convert("RGB").resize((512, 384), Image.BILINEAR)
        array = np.asarray(image)[:, :: -1 if index >= len(sources) else 1]
        Image.fromarray(np.ascontiguousarray(np.roll(array, 7 * index, axis=1))).save(folder / f"photo_{index:02d}.png")
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_predict_killed_mid_batch_reruns_to_identical_masks(tmp_path: Path, reference: Path, photos: Path) -> None:
    from medseg.cli.app import app

    inputs = _files(photos)
    straight = tmp_path / "straight"
    done = CliRunner().invoke(app, ["predict", "-m", str(reference), "-i", str(photos), "-o", str(straight)])
    assert done.exit_code == 0, done.output
    assert len(list((straight / "masks").glob("*.png"))) == 30

    out = tmp_path / "out"
    masks = out / "masks"

    def three_masks() -> bool:
        return masks.is_dir() and sum(not p.name.startswith(".") for p in masks.iterdir()) >= 3

    process = start_cli(tmp_path, "predict", "-m", str(reference), "-i", str(photos), "-o", str(out))
    kill_when(process, three_masks)
    finished = sorted(p.name for p in masks.iterdir() if not p.name.startswith("."))
    assert 3 <= len(finished) < 30, "killed mid-batch"
    for name in finished:  # every mask under its real name is complete (written under a temporary name first)
        assert (masks / name).read_bytes() == (straight / "masks" / name).read_bytes(), name
    (masks / ".photo_29.png.k1ll3d.tmp.png").write_bytes(b"\x89PNG half")  # what a kill during a write leaves

    rerun = CliRunner().invoke(app, ["predict", "-m", str(reference), "-i", str(photos), "-o", str(out)])
    assert rerun.exit_code == 0, rerun.output
    assert f"{30 - len(finished)} written, {len(finished)} already done, 0 failed" in rerun.stdout
    assert not list(out.rglob("*.tmp*")), "no temporary or half-written file left"
    ours, theirs = _files(out / "masks"), _files(straight / "masks")
    assert sorted(ours) == sorted(theirs) and all(ours[name] == theirs[name] for name in theirs), "identical masks"
    assert _files(photos) == inputs, "inputs untouched"

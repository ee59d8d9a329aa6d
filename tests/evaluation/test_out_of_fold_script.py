"""benchmarks/out_of_fold.py: each case's Dice from the fold that did not train on it, paired against the first run,
each label over the runs that have it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers.paths import REPO


def cross_validated_run(root: Path, name: str, dice: dict[str, list[float]], epochs: int) -> Path:
    """A run folder of 2 folds, one case each, with per-case Dice per label, a history and a kept checkpoint."""
    run = root / name
    for fold in range(2):
        folder = run / "folds" / f"fold_{fold}"
        (folder / "evaluation").mkdir(parents=True)
        (folder / "model").mkdir()
        with (folder / "evaluation" / "per_case_metrics.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case", "variant", "label", "dice"])
            for label, values in dice.items():
                writer.writerow([f"case{fold}", "raw", label, values[fold]])
                writer.writerow([f"case{fold}", "postprocessed", label, 0.0])
        rows = [{"epoch": e, "train_loss": 1.0, "minutes": e / 10} for e in range(1, epochs + 1)]
        (folder / "history.json").write_text(json.dumps(rows), encoding="utf-8")
        torch.save({"state_dict": {}, "network": {"name": "unet"}, "epoch": epochs}, folder / "model" / "best.pt")
    return run


def test_runs_are_paired_per_case_and_a_label_only_over_the_runs_having_it(tmp_path: Path) -> None:
    scratch = cross_validated_run(tmp_path, "scratch", {"whole": [0.80, 0.90], "core": [0.50, 0.70]}, epochs=4)
    tuned = cross_validated_run(tmp_path, "tuned", {"whole": [0.90, 0.90], "core": [0.40, 0.70]}, epochs=3)
    binary = cross_validated_run(tmp_path, "binary", {"whole": [0.85, 0.95]}, epochs=5)
    done = subprocess.run(
        [sys.executable, "benchmarks/out_of_fold.py", str(scratch), str(tuned), str(binary)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "RuntimeWarning" not in done.stderr and "nan" not in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert "| scratch (evaluation) | 0.8000 | 0.9000 | 0.8500 (" in rows[1]
    assert rows[2].startswith("| tuned (evaluation) | 0.9000 | 0.9000 | 0.9000 (") and "| +0.0500 (" in rows[2]
    assert rows[3].startswith("| binary (evaluation) | 0.8500 | 0.9500 | 0.9000 (") and "| +0.0500 (" in rows[3]
    core = done.stdout.split("\ncore (raw, 2 cases out of fold: case0, case1)")[1]
    assert "| tuned (evaluation) | 0.4000 | 0.7000 | 0.5500 (" in core and "| -0.0500 (" in core
    assert "binary (evaluation) |" not in core.split("\nscratch:")[0]
    assert "fold_0: 3 epochs in 0.3 min, kept epoch 3" in done.stdout.split("\ntuned:")[1]

"""Out-of-fold comparison of cross-validated runs (issues #28 and #27): per label, each case's Dice from the fold that
did not train on it, each run's mean with its 95 % bootstrap interval, and the paired per-case difference from the
first run with its interval; plus what each fold trained (epochs, minutes, the kept epoch).

    python benchmarks/out_of_fold.py BASELINE_RUN OTHER_RUN [MORE_RUNS...] [--variant raw|postprocessed]
    MEDSEG_DATA_ROOT=../shared/data python benchmarks/out_of_fold.py RUN --rescore last.pt

Each RUN is a run folder of ``medseg run ... --folds K`` (its ``folds/fold_i/evaluation/per_case_metrics.csv``, written
as each fold finishes, so a run still training compares on the folds it has). With 5 cases the intervals are wide:
they say how far apart the runs could be, not only the sign. Each label is compared over the runs that have it: a
binary whole-tumour run beside regions runs joins the whole-tumour table only.

``--rescore CHECKPOINT``: each fold's ``model/CHECKPOINT`` evaluated on its out-of-fold cases again (raw), written to
``folds/fold_i/evaluation-CHECKPOINT/``; then ``RUN/evaluation-last.pt`` style folders compare like runs (give the
run with ``--evaluation evaluation-last.pt``). Where a fold's validation cases are its out-of-fold cases (5 folds of
5 cases), the best validation epoch and early stopping were chosen on the very case scored: the final checkpoint
is the figure without that selection.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from medseg.evaluation.metrics import mean_ci95


def per_case(run: Path, variant: str, evaluation: str = "evaluation") -> dict[str, dict[str, float]]:
    """label -> case -> Dice, over every fold evaluated so far."""
    table: dict[str, dict[str, float]] = {}
    for path in sorted(run.glob(f"folds/fold_*/{evaluation}/per_case_metrics.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row["variant"] == variant:
                    table.setdefault(row["label"], {})[row["case"]] = float(row["dice"])
    return table


def training(run: Path) -> list[str]:
    """Per fold: the epochs trained and their minutes (history.json), the epoch kept (the model's checkpoint)."""
    from medseg.models.checkpoint import load_checkpoint

    lines = []
    for fold in sorted(run.glob("folds/fold_*")):
        if not (fold / "evaluation" / "per_case_metrics.csv").is_file():
            lines.append(f"{fold.name}: training")
            continue
        history = json.loads((fold / "history.json").read_text(encoding="utf-8"))
        kept = load_checkpoint(fold / "model" / "best.pt").get("epoch")
        minutes = history[-1]["minutes"] if history else float("nan")
        lines.append(f"{fold.name}: {len(history)} epochs in {minutes:.1f} min, kept epoch {kept}")
    return lines


def rescore(run: Path, checkpoint: str) -> None:
    """Each trained fold's ``checkpoint`` on its out-of-fold cases (raw), as the fold's own evaluation did."""
    from medseg.config.loading import load_config
    from medseg.config.settings import data_settings, evaluation_settings
    from medseg.data.dataset import prepare_data
    from medseg.evaluation.evaluate import evaluate
    from medseg.infer.predictor import Predictor

    cfg = load_config(run / "config.yaml")
    data = prepare_data(data_settings(cfg))
    for fold in sorted(run.glob("folds/fold_*")):
        index = int(fold.name.split("_")[1])
        finished = (fold / "evaluation" / "per_case_metrics.csv").is_file()  # a fold still training has a last.pt
        if not finished or not (fold / "model" / checkpoint).is_file():
            continue
        predictor = Predictor.from_model(fold / "model" / checkpoint, steps=[])
        records = data.for_fold(index).subset("val")
        evaluate(predictor, records, evaluation_settings(cfg), fold / f"evaluation-{checkpoint}", split=fold.name)


def interval(values: np.ndarray) -> str:
    low, high = mean_ci95(values)
    return f"{values.mean():.4f} ({low:.4f}-{high:.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="cross-validated run folders; the first is the baseline")
    parser.add_argument("--variant", default="raw", choices=["raw", "postprocessed"])
    parser.add_argument("--rescore", default=None, help="evaluate each fold's model/CHECKPOINT (e.g. last.pt) again")
    parser.add_argument(
        "--evaluation",
        nargs="+",
        default=None,
        help="per run, the fold folder to read (evaluation, or evaluation-last.pt after --rescore)",
    )
    args = parser.parse_args()
    if args.rescore:
        for run in args.runs:
            rescore(run, args.rescore)
        return
    folders = args.evaluation or ["evaluation"] * len(args.runs)
    tables = [per_case(run, args.variant, folder) for run, folder in zip(args.runs, folders, strict=True)]
    base = tables[0]
    for label in base:  # each label over the runs that have it (a binary whole-tumour run beside a regions one)
        having = [(run, folder, t) for run, folder, t in zip(args.runs, folders, tables, strict=True) if label in t]
        cases = sorted(set.intersection(*(set(t[label]) for _, _, t in having)))
        print(f"\n{label} ({args.variant}, {len(cases)} cases out of fold: {', '.join(cases)})")
        print("| run | " + " | ".join(cases) + " | mean (95 % CI) | paired - baseline (95 % CI) |")
        print("| --- " * (len(cases) + 3) + "|")
        for run, folder, table in having:
            values = np.array([table[label][c] for c in cases])
            differences = values - np.array([base[label][c] for c in cases])
            low, high = mean_ci95(differences)
            paired = "-" if table is base else f"{differences.mean():+.4f} ({low:+.4f} to {high:+.4f})"
            cells = " | ".join(f"{v:.4f}" for v in values)
            print(f"| {run.name} ({folder}) | {cells} | {interval(values)} | {paired} |")
    for run in args.runs:
        print(f"\n{run.name}:", *training(run), sep="\n  ")


if __name__ == "__main__":
    main()

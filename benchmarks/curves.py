"""Per-epoch curves of runs side by side (issue #27: fine-tuned against from scratch): validation Dice and training
loss against training minutes, one colour per run (each fold of a cross-validated run a line of that colour), as a
PNG; and a Markdown table of each run's validation Dice at given minutes (the last validation by then, averaged over
folds). The same curves are in the MLflow UI (compare the runs' ``val_dice`` and ``train_loss``); this puts them in
one picture for BENCHMARKS.md.

    python benchmarks/curves.py RUN[=LABEL] RUN[=LABEL] ... --out curves.png [--at 1 2 5 10]

Each RUN is a run folder (its ``history.json``) or a cross-validated one (``folds/fold_*/history.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def histories(run: Path) -> list[list[dict]]:
    """The run's per-epoch rows: one list per fold, or the run's own."""
    paths = sorted(run.glob("folds/fold_*/history.json")) or [run / "history.json"]
    found = [json.loads(path.read_text(encoding="utf-8")) for path in paths if path.is_file()]
    if not found:
        raise SystemExit(f"{run}: no history.json (not a run folder, or nothing trained yet)")
    return found


def dice_at(rows: list[dict], minutes: float) -> float | None:
    """Validation Dice of the last validation within ``minutes`` of training."""
    seen = [r["val_dice"] for r in rows if r.get("val_dice") is not None and r["minutes"] <= minutes]
    return seen[-1] if seen else None


def table(runs: dict[str, list[list[dict]]], marks: list[float]) -> str:
    lines = ["| run | " + " | ".join(f"val Dice at {m:g} min" for m in marks) + " | epochs (per fold) |"]
    lines.append("| --- " * (len(marks) + 2) + "|")
    for label, folds in runs.items():
        cells = []
        for mark in marks:
            values = [v for v in (dice_at(rows, mark) for rows in folds) if v is not None]
            cells.append(f"{statistics.fmean(values):.4f} ({len(values)})" if values else "-")
        epochs = ", ".join(str(len(rows)) for rows in folds)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {epochs} |")
    return "\n".join(lines)


def plot(runs: dict[str, list[list[dict]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (dice_axis, loss_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    multi = any(len(folds) > 1 for folds in runs.values())
    for index, (label, folds) in enumerate(runs.items()):
        colour = f"C{index}"
        for fold, rows in enumerate(folds):
            validated = [r for r in rows if r.get("val_dice") is not None]
            name = label if fold == 0 else None
            dice = [r["val_dice"] for r in validated]
            dice_axis.plot([r["minutes"] for r in validated], dice, colour, lw=1, label=name)
            loss_axis.plot([r["minutes"] for r in rows], [r["train_loss"] for r in rows], colour, lw=0.8, label=name)
    title = "validation Dice (a line per fold)" if multi else "validation Dice"
    dice_axis.set(xlabel="training minutes", ylabel="validation Dice", title=title)
    loss_axis.set(xlabel="training minutes", ylabel="training loss", title="training loss", yscale="log")
    for axis in (dice_axis, loss_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="RUN or RUN=LABEL")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--at", type=float, nargs="+", default=[1, 2, 5, 10], help="minutes for the table")
    args = parser.parse_args()
    runs = {}
    for spec in args.runs:
        path, _, label = spec.partition("=")
        runs[label or Path(path).name] = histories(Path(path))
    plot(runs, args.out)
    print(table(runs, args.at))
    print(f"\n{args.out}")


if __name__ == "__main__":
    main()

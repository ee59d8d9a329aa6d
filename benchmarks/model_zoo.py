"""Every 2D architecture and the classical baselines on the recorded PH2 split at the same training budget: test
Dice, thresholded Jaccard, HD95, parameters, seconds per epoch, milliseconds per image at inference, and the
melanoma cases of the test split on their own.

    MEDSEG_DATA_ROOT=../shared/data python benchmarks/model_zoo.py [--minutes 10] [--models unet,fcn8s,...]
    ... benchmarks/model_zoo.py --table [--baseline unet]   # every stored row, compared case by case with one
    # a recipe variant: the same comparison with overrides, kept as its own rows
    ... benchmarks/model_zoo.py --models unet --tag res192 --set preprocessing.spatial_size=[192,192]
    # another pipeline (a planned one) over seeds, then two groups of rows compared on their seed-averaged cases
    ... benchmarks/model_zoo.py --pipeline pipelines/skin_lesion_planned.yaml --models unet --tag planned-s1 \
        --set seed=1
    ... benchmarks/model_zoo.py --table --pair unet+s unet+planned-s

Each model is the shipped skin-lesion pipeline with only ``model`` replaced, trained for ``--minutes`` with
``schedule.length: max_minutes``: the first epochs time the model (training + validation), the cosine schedule then
runs over the epochs that fit the budget, ``training.max_minutes`` is the hard stop; the pipeline's ``training.keep``
(the final epoch) is the model. The unet row is therefore the shipped default at that budget. Each model runs in its
own process; finished rows are kept in ``--results`` (JSON), so an interrupted comparison resumes. Prints a Markdown
table: the test Dice with its 95 % bootstrap interval over the test cases, and the mean per-case difference from the
``--baseline`` row with its interval (paired on the same cases, so it separates far smaller differences).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS: dict[str, dict | None] = {
    "unet": None,  # the shipped pipeline's own network arguments
    "attention_unet": {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2]},
    "fcn8s": {},
    "fcn16s": {},
    "fcn32s": {},
    "deeplabv3plus": {},
    "segformer": {"size": "b0"},
    "flexible_unet": {},
    "swin_unetr": {"feature_size": 12},
    "unetr": {"img_size": [256, 256], "feature_size": 16},
    "otsu": {},
    "watershed": {},
    "kmeans": {},
}
CLASSICAL = ("otsu", "watershed", "kmeans")


def planned_epochs(run_dir: Path) -> int:
    """The epochs the training fitted to its budget (1 for a classical baseline)."""
    from medseg.models.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir / "model" / "last.pt")
    return state.get("planned_epochs") or state["epoch"]


def run_one(name: str, minutes: float, out: Path, overrides: list[str], pipeline: Path) -> dict:
    """Train, evaluate and time one model of ``pipeline`` (``overrides``: ``key=value`` applied after the model)."""
    import torch

    from medseg.config.loading import load_config, parse_override
    from medseg.infer.predictor import Predictor
    from medseg.pipeline.run import run_pipeline

    cfg = load_config(pipeline, [f"output_root={out}", "tracking.experiment=model_zoo"])
    cfg = cfg.with_values(
        {
            "model.name": name,
            "model.args": cfg.model.args if MODELS[name] is None else MODELS[name],
            "stages": ["train", "evaluate"],
        }
    )
    if name not in CLASSICAL:  # the schedule runs over the epochs that fit the budget (timed on the first ones)
        cfg = cfg.with_values(
            {"training.max_minutes": minutes, "training.epochs": 10_000, "schedule.length": "max_minutes"}
        )
    cfg = cfg.with_values({".".join(key): value for key, value in map(parse_override, overrides)})
    started = time.perf_counter()
    result = run_pipeline(cfg, run_name=f"zoo-{name}")
    history = json.loads((result.run_dir / "history.json").read_text())
    predictor = Predictor.from_model(result.run_dir)
    rows = list(csv.DictReader((result.run_dir / "evaluation" / "per_case_metrics.csv").open()))
    post = [r for r in rows if r["variant"] == "postprocessed"]
    with (cfg.data.root / "ph2" / "metadata.csv").open(encoding="utf-8") as table:
        diagnosis = {r["id"]: r["clinical_diagnosis_name"] for r in csv.DictReader(table)}
    melanoma = [r for r in post if diagnosis.get(r["case"]) == "melanoma"]
    images = sorted((cfg.data.root / "ph2" / "images").iterdir())[:8]
    predictor.predict(images[0])  # warm-up
    begun = time.perf_counter()
    for image in images:
        predictor.predict(image)
    ms_per_image = 1000 * (time.perf_counter() - begun) / len(images)

    def mean(values: list[dict], key: str) -> float:
        finite = [float(v[key]) for v in values if v[key] not in ("", "nan")]
        return sum(finite) / len(finite) if finite else float("nan")

    summary = json.loads((result.run_dir / "evaluation" / "summary.json").read_text())["postprocessed"]
    return {
        "model": name,
        "test_dice": summary["dice"]["mean"],
        "test_dice_ci95": summary["dice"]["ci95"],
        "per_case_dice": {r["case"]: float(r["dice"]) for r in post},
        "jaccard_thresholded": summary["jaccard_thresholded"]["mean"],
        "hd95": summary["hd95"]["mean"],
        "melanoma_dice": mean(melanoma, "dice"),
        "melanoma_cases": len(melanoma),
        "parameters": int(sum(p.numel() for p in predictor.network.parameters() if p.requires_grad)),
        "epochs": len(history),
        "planned_epochs": planned_epochs(result.run_dir),
        "seconds_per_epoch": history[-1]["minutes"] * 60 / len(history) if name not in CLASSICAL else float("nan"),
        "minutes": (time.perf_counter() - started) / 60,
        "ms_per_image": ms_per_image,
        "threads": torch.get_num_threads(),
    }


def paired(per_case: dict[str, float] | None, baseline: dict[str, float] | None) -> str:
    """The mean per-case Dice difference from the baseline on the same test cases, with its 95 % bootstrap interval
    (paired: the cases' own difficulty cancels, so this resolves far smaller differences than two intervals do)."""
    if not per_case or not baseline or per_case is baseline:
        return ""
    import numpy as np

    from medseg.evaluation.metrics import mean_ci95

    differences = np.array([per_case[case] - baseline[case] for case in sorted(set(per_case) & set(baseline))])
    low, high = mean_ci95(differences)
    return f"{differences.mean():+.4f} ({low:+.4f} to {high:+.4f})"


def print_pair(results: list[dict], first: str, second: str) -> None:
    """Each group's mean test Dice over its rows (seeds), and the paired interval of the difference of the per-case
    Dice averaged over each group's seeds (second minus first)."""
    import statistics

    groups = {prefix: [r for r in results if r["model"].startswith(prefix)] for prefix in (first, second)}
    for prefix, rows in groups.items():
        dice = [r["test_dice"] for r in rows]
        spread = f" (sd {statistics.stdev(dice):.4f})" if len(dice) > 1 else ""
        print(
            f"{prefix}*: {len(rows)} rows, mean test Dice {statistics.fmean(dice):.4f}{spread}: "
            + ", ".join(f"{r['model']} {r['test_dice']:.4f}" for r in rows)
        )
    averaged = []
    for rows in groups.values():
        cases = set.intersection(*(set(r["per_case_dice"]) for r in rows))
        averaged.append({case: statistics.fmean(r["per_case_dice"][case] for r in rows) for case in cases})
    print(f"{second}* - {first}*, per case averaged over seeds (95 % CI): {paired(averaged[1], averaged[0])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--pipeline", type=Path, default=REPO / "pipelines" / "skin_lesion.yaml", help="PH2 pipeline")
    parser.add_argument("--pair", nargs=2, metavar=("A", "B"), help="compare the rows starting A and B over seeds")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value, for every model")
    parser.add_argument("--tag", default="", help="names the rows of a --set variant: <model>+<tag>")
    parser.add_argument("--output", type=Path, default=REPO / "mlruns" / "runs")
    parser.add_argument("--results", type=Path, default=REPO / "mlruns" / "model_zoo.json")
    parser.add_argument("--baseline", default="unet", help="the row the others are compared with, case by case")
    parser.add_argument("--table", action="store_true", help="print every stored row at --minutes; train nothing")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_one(args.worker, args.minutes, args.output, args.overrides, args.pipeline)))
        return
    if args.overrides and not args.tag:
        parser.error("--set needs --tag, so that its rows are not mistaken for the shipped recipe")
    store = args.results
    results = {r["model"]: r for r in json.loads(store.read_text())} if store.exists() else {}
    names = args.models.split(",")
    rows = [f"{name}+{args.tag}" if args.tag else name for name in names]
    todo = list(zip(names, rows, strict=True))
    if args.table:
        rows, todo = [row for row, r in results.items() if r["minutes_budget"] == args.minutes], []
    for name, row in todo:
        if row in results and results[row]["minutes_budget"] == args.minutes:
            print(f"{row}: kept from {store}", flush=True)
            continue
        command = [sys.executable, __file__, "--worker", name, "--minutes", str(args.minutes)]
        command += ["--output", str(args.output / row), "--pipeline", str(args.pipeline)]
        command += [f"--set={o}" for o in args.overrides]
        done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace")
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            print(f"{row}: failed ({done.stderr.strip().splitlines()[-1:] or done.returncode})", flush=True)
            continue
        results[row] = {**json.loads(lines[-1][7:]), "model": row, "overrides": args.overrides}
        results[row]["pipeline"] = os.path.relpath(args.pipeline.resolve(), REPO)
        results[row]["minutes_budget"] = args.minutes
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(list(results.values()), indent=1))
        print(json.dumps(results[row]), flush=True)
    results = [results[row] for row in rows if row in results]
    if args.pair:
        print_pair(results, *args.pair)
    baseline = next((r.get("per_case_dice") for r in results if r["model"] == args.baseline), None)
    header = "| model | test Dice | 95% CI | paired vs baseline | thr. Jaccard | HD95 (px) | melanoma Dice | parameters"
    print(f"\n{header} | epochs in {args.minutes:g} min | s/epoch | ms/image |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in sorted(results, key=lambda r: -r["test_dice"]):
        interval = "{:.3f}-{:.3f}".format(*r["test_dice_ci95"]) if r.get("test_dice_ci95") else ""  # older rows: none
        print(
            f"| {r['model']} | {r['test_dice']:.4f} | {interval} | {paired(r.get('per_case_dice'), baseline)} | "
            f"{r['jaccard_thresholded']:.4f} | {r['hd95']:.1f} | "
            f"{r['melanoma_dice']:.4f} ({r['melanoma_cases']}) | {r['parameters']:,} | "
            f"{r['epochs']}/{r['planned_epochs']} | "
            f"{r['seconds_per_epoch']:.1f} | {r['ms_per_image']:.0f} |"
        )


if __name__ == "__main__":
    main()

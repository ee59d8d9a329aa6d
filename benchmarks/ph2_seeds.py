"""PH2 accuracy over several training seeds on the committed split: mean and spread of test Dice and Jaccard.

    MEDSEG_DATA_ROOT=../shared/data python benchmarks/ph2_seeds.py --seeds 42 43 44

Each seed is one full ``medseg run pipelines/skin_lesion.yaml`` (train <= training.max_minutes, evaluate,
predict), run one after another so that they do not share the CPU. Runs already finished are reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PIPELINE = Path("pipelines/skin_lesion.yaml")
METRICS = ("dice", "jaccard_thresholded", "hd95")


def run_seed(seed: int, prefix: str, extra: list[str]) -> Path:
    """Run the pipeline for one seed unless its summary exists; returns the run folder."""
    name = f"{prefix}-seed{seed}"
    run_dir = Path("mlruns/runs/skin_lesion") / name
    if not (run_dir / "evaluation" / "summary.json").is_file():
        sets = [arg for value in (f"seed={seed}", *extra) for arg in ("--set", value)]
        started = time.perf_counter()
        subprocess.run(["medseg", "run", str(PIPELINE), "--name", name, *sets], check=True)
        print(f"seed {seed}: {(time.perf_counter() - started) / 60:.1f} min end to end", flush=True)
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--prefix", default="ph2")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set for every run")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        run_dir = run_seed(seed, args.prefix, args.overrides)
        summary = json.loads((run_dir / "evaluation" / "summary.json").read_text(encoding="utf-8"))
        history = json.loads((run_dir / "history.json").read_text(encoding="utf-8"))
        scores = {m: summary["postprocessed"][m]["mean"] for m in METRICS}
        scores["minutes"] = history[-1].get("minutes", float("nan"))
        rows.append((seed, scores))
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), flush=True)
    print("\n| seed | test Dice | thresholded Jaccard | HD95 (px) | training min |")
    print("| --- | --- | --- | --- | --- |")
    for seed, s in rows:
        print(f"| {seed} | {s['dice']:.4f} | {s['jaccard_thresholded']:.4f} | {s['hd95']:.1f} | {s['minutes']:.1f} |")
    for metric in (*METRICS, "minutes"):
        values = [s[metric] for _, s in rows]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        mean = statistics.mean(values)
        print(f"{metric}: mean {mean:.4f}, sd {spread:.4f}, min {min(values):.4f}, max {max(values):.4f}")


if __name__ == "__main__":
    sys.exit(main())

"""Dense-CRF refinement on a finished 2D run (PH2), without retraining: test Dice with and without it, paired.

    MEDSEG_DATA_ROOT=../shared/data python benchmarks/dense_crf.py RUN_DIR [--output DIR] [--set crf_bilateral_srgb=13]

On the run's validation split the post-processing is chosen twice as the postprocess stage's ``auto`` does: once with
the mask steps alone, once with ``dense_crf`` a candidate too. The test split is then evaluated with the mask steps
alone ("without"), with the CRF forced before them ("with CRF"), and with whatever ``auto`` chose when the CRF was a
candidate ("auto"); each compared case by case with "without" (mean difference and 95 % bootstrap interval). Writes
only under ``--output``. The CRF's seconds per image are timed on the test images.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def per_case_dice(folder: Path) -> dict[tuple[str, str], float]:
    from medseg.evaluation.evaluate import PER_CASE_CSV

    with (folder / PER_CASE_CSV).open(encoding="utf-8", newline="") as table:
        return {
            (r["case"], r["label"]): float(r["dice"]) for r in csv.DictReader(table) if r["variant"] == "postprocessed"
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished 2D RGB run folder")
    parser.add_argument("--output", type=Path, default=REPO / "mlruns" / "dense_crf")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="crf_*=value or config key=value")
    args = parser.parse_args()

    from medseg.config.loading import load_config
    from medseg.config.settings import data_settings, evaluation_settings
    from medseg.data.dataset import prepare_data
    from medseg.evaluation.evaluate import evaluate, validation_label_maps
    from medseg.evaluation.metrics import mean_ci95
    from medseg.infer.postprocessing import DENSE_CRF, choose_postprocessing
    from medseg.infer.predictor import Predictor

    pairs = [o.split("=", 1) for o in args.overrides]
    crf = {key: float(value) for key, value in pairs if key.startswith("crf_")}
    cfg = load_config(args.run / "config.yaml", [f"{k}={v}" for k, v in pairs if not k.startswith("crf_")])
    data = prepare_data(data_settings(cfg))
    settings = evaluation_settings(cfg.with_values(data.resolved) if data.resolved else cfg)
    predictor = Predictor.from_model(args.run, steps=[])
    masks_only = predictor.settings.postprocessing.model_copy(update={"mode": "auto", "dense_crf": False})
    with_crf = type(masks_only).model_validate({**masks_only.model_dump(), "dense_crf": True, **crf})  # typed
    predictor.settings = dataclasses.replace(predictor.settings, postprocessing=with_crf)  # the CRF's parameters

    refined: list[np.ndarray] = []
    predictions, truths = validation_label_maps(
        predictor.with_steps([DENSE_CRF]), data.subset("val"), settings, refined
    )
    plain = choose_postprocessing(predictions, truths, masks_only, settings.labels)
    chosen = choose_postprocessing(predictions, truths, with_crf, settings.labels, refined)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "validation.json").write_text(json.dumps({"masks_only": plain, "with_crf": chosen}, indent=1))
    print(f"validation ({len(truths)} cases): mask steps {plain['steps']}, scores {json.dumps(plain['scores'])}")
    print(f"validation with the CRF a candidate: {chosen['steps']}, scores {json.dumps(chosen['scores'])}")

    test = data.subset(cfg.evaluation.split)
    variants = {"without": plain["steps"], "with CRF": [DENSE_CRF, *plain["steps"]], "auto": chosen["steps"]}
    dice, seconds = {}, {}
    for name, steps in variants.items():
        same = next((other for other in dice if variants[other] == steps), None)
        if same is not None:  # auto chose one of the variants already evaluated
            dice[name], seconds[name] = dice[same], seconds[same]
            continue
        started = time.perf_counter()
        evaluate(predictor.with_steps(steps), test, settings, args.output / name.replace(" ", "_"))
        seconds[name] = (time.perf_counter() - started) / len(test)
        dice[name] = per_case_dice(args.output / name.replace(" ", "_"))
    keys = sorted(dice["without"])
    base = np.array([dice["without"][k] for k in keys])
    print(f"\ntest split: {len(keys)} cases; CRF parameters {json.dumps(chosen.get('crf', {}))}")
    print("| variant | steps | test Dice | paired vs without (95 % CI) | s/image (evaluation) |")
    print("| --- | --- | --- | --- | --- |")
    for name, per_case in dice.items():
        values = np.array([per_case[k] for k in keys])
        low, high = mean_ci95(values - base)
        paired = "" if name == "without" else f"{np.mean(values - base):+.4f} ({low:+.4f} to {high:+.4f})"
        steps = ", ".join(variants[name]) or "none"
        print(f"| {name} | {steps} | {values.mean():.4f} | {paired} | {seconds[name]:.2f} |")


if __name__ == "__main__":
    main()

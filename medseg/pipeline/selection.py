"""``medseg select``: compare cross-validated runs and their pairwise ensembles on the out-of-fold predictions,
with post-processing chosen for each candidate, and write the best as ``inference_plan.json``.

``medseg predict -m inference_plan.json`` then runs exactly that: the chosen runs' fold ensembles, their
probabilities averaged, and the chosen post-processing.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.config.loading import load_config
from medseg.config.schema import PipelineConfig
from medseg.core.atomic import atomic_write_text
from medseg.core.errors import ModelError
from medseg.core.layout import RunLayout
from medseg.infer.sources import PLAN_KIND

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """A run or an ensemble of runs, scored on the out-of-fold predictions."""

    runs: list[Path]
    dice_raw: float
    dice: float
    steps: list[str]

    @property
    def name(self) -> str:
        return " + ".join(run.name for run in self.runs)


def _cross_validated(run: Path) -> PipelineConfig:
    layout = RunLayout(run)
    if not layout.config.is_file():
        raise ModelError(f"{run}: not a medseg run folder (no {layout.config.name})")
    cfg = load_config(layout.config)
    if not cfg.training.folds or not layout.model.ensemble.is_file():
        raise ModelError(f"{run}: not a finished cross-validated run (train it with --folds K first)")
    return cfg


def _truths(cfg: PipelineConfig, cases: list[str]) -> list[np.ndarray]:
    """The reference labels of these cases (found as the run found them; only these cases are read)."""
    from medseg.config.settings import data_settings, evaluation_settings
    from medseg.data.dataset import data_folder
    from medseg.data.discovery import find_cases
    from medseg.data.records import subset
    from medseg.evaluation.evaluate import read_truth

    settings = data_settings(cfg)
    records = find_cases(settings, data_folder(settings)).records
    settings = evaluation_settings(cfg)
    return [read_truth(record, settings)[0] for record in subset(records, cases)]


def _score(
    probabilities: list[np.ndarray], truths: list[np.ndarray], cfg: PipelineConfig
) -> tuple[float, float, list[str]]:
    """Mean Dice before and after the post-processing chosen on these same cases, and the chosen steps."""
    from medseg.config.settings import label_scheme
    from medseg.infer.postprocessing import apply_steps, choose_postprocessing

    scheme = label_scheme(cfg)
    labels = [scheme.discretise(p) for p in probabilities]

    def mean_dice(maps: list[np.ndarray]) -> float:
        return float(np.mean([scheme.mean_dice(m, t) for m, t in zip(maps, truths, strict=True)]))

    choice = choose_postprocessing(labels, truths, cfg.postprocessing, scheme)
    post = [apply_steps(m, choice["steps"], cfg.postprocessing) for m in labels]
    return mean_dice(labels), mean_dice(post), list(choice["steps"])


def select(runs: list[Path], output: Path, pairs: bool = True) -> tuple[Candidate, list[Candidate]]:
    """Score every run and (with ``pairs``) every pair of runs on their common out-of-fold cases; write the best.

    Raises:
        ModelError: a run is not a finished cross-validated run, or the runs share no out-of-fold cases.
    """
    from medseg.pipeline.crossval import read_out_of_fold

    runs = [Path(r) for r in runs]
    configs = {run: _cross_validated(run) for run in runs}
    dims = {cfg.spatial_dims for cfg in configs.values()}
    classes = {cfg.model.out_channels for cfg in configs.values()}
    if len(dims) > 1 or len(classes) > 1:
        raise ModelError("medseg select: the runs must segment the same images into the same classes")
    cases = sorted(set.intersection(*[{p.stem for p in RunLayout(r).oof.glob("*.npz")} for r in runs]))
    if not cases:
        raise ModelError("medseg select: the runs share no out-of-fold cases (were they trained on the same split?)")
    reference = configs[runs[0]]
    truths = _truths(reference, cases)
    oof = {run: [read_out_of_fold(RunLayout(run), case)[0] for case in cases] for run in runs}
    groups = [[run] for run in runs] + ([list(p) for p in itertools.combinations(runs, 2)] if pairs else [])
    candidates = []
    for group in groups:
        probabilities = [np.mean([oof[run][i] for run in group], axis=0) for i in range(len(cases))]
        raw, post, steps = _score(probabilities, truths, reference)
        candidates.append(Candidate(group, raw, post, steps))
        log.info(
            "%s: out-of-fold Dice %.4f (raw %.4f), post-processing %s",
            candidates[-1].name,
            post,
            raw,
            ", ".join(steps) or "none",
        )
    best = max(candidates, key=lambda c: (c.dice, -len(c.runs)))  # a tie goes to the simpler candidate
    plan = {
        "kind": PLAN_KIND,
        "members": [str(run.resolve()) for run in best.runs],
        "postprocessing": best.steps,
        "out_of_fold_cases": len(cases),
        "dice": best.dice,
        "candidates": [
            {"runs": [str(r) for r in c.runs], "dice": c.dice, "dice_raw": c.dice_raw, "steps": c.steps}
            for c in candidates
        ],
    }
    atomic_write_text(output, json.dumps(plan, indent=1))
    _tag_runs(best, output, configs)
    return best, candidates


def _tag_runs(best: Candidate, output: Path, configs: dict[Path, PipelineConfig]) -> None:
    """An MLflow tag on the parent run of every run the plan uses."""
    from medseg.tracking.tracker import build_tracker

    for run in best.runs:
        ids = RunLayout(run).tracking
        if not ids.is_file():
            continue
        run_id = json.loads(ids.read_text(encoding="utf-8")).get("run_id")
        tracker = build_tracker(configs[run].tracking, configs[run].name)
        if run_id:
            tracker.set_run_tag(run_id, "inference_plan", str(output.resolve()))

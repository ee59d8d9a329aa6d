"""k-fold cross-validation: one training per fold (a nested MLflow run each), out-of-fold predictions kept, the
post-processing chosen on the pooled out-of-fold predictions, a CV summary, and the folds' ensemble as the model.

Folds can be trained one at a time (``medseg run --fold i``, e.g. on different machines sharing the run folder);
the run is finished (post-processing, summary, ensemble) once every fold has its checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from medseg.config.schema import PipelineConfig
from medseg.core.atomic import atomic_path, atomic_write_text
from medseg.core.errors import ConfigError, DataError
from medseg.core.layout import RunLayout
from medseg.data.dataset import PreparedData
from medseg.data.records import Record
from medseg.infer.predictor import Predictor, Segmentation
from medseg.tracking.tracker import Tracker

log = logging.getLogger(__name__)


def oof_path(run: RunLayout, case: str) -> Path:
    return run.oof / f"{case}.npz"


def _keep_out_of_fold(run: RunLayout):
    """Save each validation case's probabilities (uint8, 1/255 steps) and raw label map."""

    def keep(record: Record, result: Segmentation) -> None:
        quantised = np.round(np.clip(result.probabilities, 0.0, 1.0) * 255).astype(np.uint8)
        with atomic_path(oof_path(run, record["id"])) as tmp:
            np.savez_compressed(tmp, probabilities=quantised, labels=result.raw)

    return keep


def read_out_of_fold(run: RunLayout, case: str) -> tuple[np.ndarray, np.ndarray]:
    """A case's out-of-fold probabilities (float32, (C, ...)) and raw label map."""
    with np.load(oof_path(run, case)) as stored:
        return stored["probabilities"].astype(np.float32) / 255.0, stored["labels"]


def train_folds(
    cfg: PipelineConfig, data: PreparedData, run: RunLayout, tracker: Tracker, only: int | None = None
) -> list[int]:
    """Train every fold (or fold ``only``), each in its nested run; returns the folds trained now."""
    from medseg.config.settings import evaluation_settings, training_settings
    from medseg.evaluation.evaluate import evaluate, summary_metrics
    from medseg.pipeline.stages import log_training
    from medseg.training.trainer import train

    check_fold(only, cfg.training.folds)
    folds = cfg.training.folds or 0
    todo = list(range(folds)) if only is None else [only]
    for fold in todo:
        fold_run = run.fold(fold)
        if fold_run.model.best.is_file():
            raise DataError(f"{fold_run.model.best}: fold {fold} of this run is trained already")
        fold_data = data.for_fold(fold)
        with tracker.run(f"train-fold{fold}", tags={"stage": "train", "fold": str(fold)}):
            log.info(
                "Fold %d/%d: train %d, validate %d",
                fold,
                folds,
                len(fold_data.splits["train"]),
                len(fold_data.splits["val"]),
            )
            result = train(training_settings(cfg), fold_data, fold_run.root, tracker)
            predictor = Predictor.from_model(result.model_dir, steps=[])
            summary = evaluate(
                predictor,
                fold_data.subset("val"),
                evaluation_settings(cfg),
                fold_run.evaluation,
                on_case=_keep_out_of_fold(run),
                split=f"fold {fold} (out of fold)",
            )
            out_of_fold = {k: v for k, v in summary_metrics(summary, "oof").items() if k.endswith("_raw")}
            log_training(result, fold_run, tracker, out_of_fold)
            tracker.log_artifact(fold_run.evaluation, "evaluation")
    return todo


def check_fold(fold: int | None, folds: int | None) -> None:
    """``--fold`` names a fold of a cross-validated run (ConfigError otherwise); None: every fold."""
    if fold is None:
        return
    if not folds:
        raise ConfigError(f"--fold {fold}: set training.folds (or --folds K) for a cross-validated run")
    if not 0 <= fold < folds:
        raise ConfigError(f"--fold {fold}: training.folds is {folds}; choose 0..{folds - 1}")


def cv_summary(cfg: PipelineConfig, run: RunLayout) -> dict[str, Any]:
    """Mean and standard deviation over folds of each fold's mean out-of-fold metric, and ``pooled``: every
    out-of-fold case together, each metric's mean with its 95 % bootstrap interval (before post-processing)."""
    from medseg.evaluation.evaluate import read_per_case
    from medseg.evaluation.metrics import summarise

    folds = cfg.training.folds or 0
    per_fold = [json.loads((run.fold(i).evaluation / "summary.json").read_text(encoding="utf-8")) for i in range(folds)]
    names = per_fold[0]["metrics"]
    rows = [row for i in range(folds) for row in read_per_case(run.fold(i).evaluation, names)]
    summary: dict[str, Any] = {"folds": folds, "metrics": {}, "pooled": summarise(rows, names)}
    for name in names:
        values = np.array([fold["raw"][name]["mean"] for fold in per_fold], dtype=float)
        finite = values[np.isfinite(values)]
        summary["metrics"][name] = {
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            "per_fold": [float(v) for v in values],
        }
    return summary


def finish(cfg: PipelineConfig, data: PreparedData, run: RunLayout, tracker: Tracker) -> Predictor | None:
    """Once every fold is trained: choose the post-processing on the pooled out-of-fold predictions, log the CV
    summary and write the ensemble manifest; returns the ensemble's predictor (None while folds are missing)."""
    from medseg.config.settings import evaluation_settings
    from medseg.evaluation.evaluate import read_truth
    from medseg.pipeline.stages import choose_postprocessing_stage

    folds = cfg.training.folds or 0
    missing = [i for i in range(folds) if not run.fold(i).model.best.is_file()]
    if missing:
        log.info(
            "Folds %s are not trained yet (medseg run ... --fold i); the ensemble is made when all are",
            ", ".join(map(str, missing)),
        )
        return None
    pooled = [record for fold in data.folds or [] for record in data.subset_ids(fold)]

    def label_maps() -> tuple[list, list]:
        predictions = [read_out_of_fold(run, record["id"])[1] for record in pooled]
        settings = evaluation_settings(cfg)
        return predictions, [read_truth(record, settings)[0] for record in pooled]

    with tracker.run("postprocess", tags={"stage": "postprocess"}):
        choice = choose_postprocessing_stage(cfg, label_maps, run, tracker, "oof")
    members = {str(i): str(run.fold(i).model.best.relative_to(run.root)) for i in range(folds)}
    atomic_write_text(run.model.ensemble, json.dumps({"folds": list(range(folds)), "members": members}, indent=1))
    summary = cv_summary(cfg, run)
    summary["postprocessing"] = choice
    atomic_write_text(run.cv_summary, json.dumps(summary, indent=1))
    metrics = {}
    for name, values in summary["metrics"].items():
        if np.isfinite(values["mean"]):
            metrics[f"cv_{name}_mean"], metrics[f"cv_{name}_sd"] = values["mean"], values["sd"]
        pooled = summary["pooled"][name]
        if np.isfinite(pooled["mean"]):
            metrics[f"cv_{name}_pooled"] = pooled["mean"]
            metrics[f"cv_{name}_pooled_ci95_low"], metrics[f"cv_{name}_pooled_ci95_high"] = pooled["ci95"]
    tracker.log_metrics(metrics)
    tracker.set_tags({"folds": str(folds)})
    tracker.log_artifact(run.cv_summary)
    tracker.log_artifact(run.model.root, "checkpoints")
    pooled = summary["pooled"]["dice"]
    log.info(
        "Cross-validation (%d folds): Dice %.4f +- %.4f (out of fold, per-fold means); every out-of-fold case "
        "pooled: %.4f (95%% CI %.4f-%.4f, n %d)",
        folds,
        summary["metrics"]["dice"]["mean"],
        summary["metrics"]["dice"]["sd"],
        pooled["mean"],
        *pooled["ci95"],
        pooled["n"],
    )
    return Predictor.from_model(run.root)

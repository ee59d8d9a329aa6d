"""The work of each stage, written once for single runs and for the folds of a cross-validated run: what training
logs, and the choice of post-processing (its own stage: its nested MLflow run, its log line)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.config.schema import PipelineConfig
from medseg.core.layout import RunLayout
from medseg.tracking.tracker import Tracker

if TYPE_CHECKING:
    from medseg.training.trainer import TrainResult

log = logging.getLogger(__name__)


def log_training(result: TrainResult, run: RunLayout, tracker: Tracker, extra: dict[str, float] | None = None) -> None:
    """The training curves picture, the train stage's metrics (and ``extra`` ones) and its artefacts."""
    from medseg.outputs.visualize import plot_training_curves

    plot_training_curves(result.history, run.curves)
    tracker.log_metrics(
        {
            "best_val_dice": result.best_val_dice,
            "best_epoch": result.best_epoch,
            "kept_epoch": result.kept_epoch,
            "epochs_run": result.epochs_run,
            "train_minutes": result.minutes,
            **(extra or {}),
        }
    )
    tracker.log_artifact(result.model_dir, "checkpoints")
    tracker.log_artifact(run.history)
    tracker.log_artifact(run.curves, "plots")


def choose_postprocessing_stage(
    cfg: PipelineConfig,
    label_maps: Callable[[], tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    run: RunLayout,
    tracker: Tracker,
    scores_as: str,
    refined: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """The postprocess stage's work (inside its nested ``postprocess`` run): the steps chosen on ``label_maps()``
    (predictions and truths, asked for only when ``postprocessing.mode: auto`` has steps to try), saved beside the
    model, logged (each candidate's Dice as ``<scores_as>_dice_pp_<step>``, the dense CRF's parameters as
    ``postprocessing.crf_*``); returns the choice. ``refined``: a list that ``label_maps()`` fills with the same
    cases' maps after the dense CRF (where it is a candidate and the maps' images are at hand)."""
    from medseg.config.settings import label_scheme
    from medseg.infer.postprocessing import choose_postprocessing, chooses_on_data, save_choice

    predictions, truths = label_maps() if chooses_on_data(cfg.postprocessing) else ([], [])
    choice = choose_postprocessing(predictions, truths, cfg.postprocessing, label_scheme(cfg), refined)
    save_choice(choice, run.model.root)
    tracker.log_artifact(run.model.postprocessing, "checkpoints")
    tracker.set_tags({"postprocessing_selected": ",".join(choice["steps"]) or "none"})
    if "crf" in choice:
        tracker.log_params({f"postprocessing.{name}": value for name, value in choice["crf"].items()})
    for name, value in choice["scores"].items():
        tracker.log_metrics({f"{scores_as}_dice_pp_{name}": value})
    return choice

"""Where every output of a run and of a prediction batch goes: the only module that spells these paths.

A run folder (``<output_root>/<pipeline>/<run name>/``)::

    config.yaml  tracking.json  history.json  training_curves.png  bad_cases.csv
    model/       best.pt  last.pt  postprocessing.json
    evaluation/  per_case_metrics.csv  summary.json
    predictions/ (a prediction folder)

A prediction folder::

    masks/  overlays/  probabilities/  summary.csv
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"
POSTPROCESSING_FILE = "postprocessing.json"
MODEL_DIR = "model"


@dataclass(frozen=True)
class ModelLayout:
    """The ``model/`` folder of a run: checkpoints and the post-processing chosen on validation."""

    root: Path

    @property
    def best(self) -> Path:
        return self.root / BEST_CHECKPOINT

    @property
    def last(self) -> Path:
        return self.root / LAST_CHECKPOINT

    @property
    def postprocessing(self) -> Path:
        return self.root / POSTPROCESSING_FILE


@dataclass(frozen=True)
class PredictionLayout:
    """A prediction folder: masks, overlays and probability maps per case, and the batch's summary."""

    root: Path

    MASKS = "masks"
    OVERLAYS = "overlays"
    PROBABILITIES = "probabilities"
    KINDS = (MASKS, OVERLAYS, PROBABILITIES)

    @property
    def summary(self) -> Path:
        return self.root / "summary.csv"

    def folder(self, kind: str) -> Path:
        """``masks/``, ``overlays/`` or ``probabilities/``."""
        return self.root / kind


@dataclass(frozen=True)
class RunLayout:
    """A run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def tracking(self) -> Path:
        """The MLflow run ids of the run and its stages (to resume into the same runs)."""
        return self.root / "tracking.json"

    @property
    def history(self) -> Path:
        return self.root / "history.json"

    @property
    def curves(self) -> Path:
        return self.root / "training_curves.png"

    @property
    def bad_cases(self) -> Path:
        """The data check's errors for the cases a run left out (``data.on_bad_case: skip``)."""
        return self.root / "bad_cases.csv"

    @property
    def model(self) -> ModelLayout:
        return ModelLayout(self.root / MODEL_DIR)

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def predictions(self) -> PredictionLayout:
        return PredictionLayout(self.root / "predictions")


def checkpoint_candidates(model: Path) -> tuple[Path, ...]:
    """Where a checkpoint may be, given a ``.pt`` file, a ``model/`` folder or a run folder (in that order)."""
    return (model, ModelLayout(model).best, RunLayout(model).model.best)

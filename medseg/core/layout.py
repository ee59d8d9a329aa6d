"""Where every output of a run and of a prediction batch goes: the only module that spells these paths.

A run folder (``<output_root>/<pipeline>/<run name>/``)::

    config.yaml  tracking.json  history.json  training_curves.png  bad_cases.csv
    model/       best.pt  last.pt  postprocessing.json  (cross-validation: ensemble.json)
    evaluation/  per_case_metrics.csv  summary.json
    predictions/ (a prediction folder)
    folds/fold_<i>/  (cross-validation: a run folder per fold, its evaluation on its validation fold)
    oof/<case>.npz   (cross-validation: out-of-fold probabilities and label maps)
    cv_summary.json

A prediction folder::

    masks/  overlays/  probabilities/  uncertainty/  meshes/  statistics/  instances/
    summary.csv  statistics.csv  labels.json  itksnap_labels.txt
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"
POSTPROCESSING_FILE = "postprocessing.json"
ENSEMBLE_FILE = "ensemble.json"
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

    @property
    def ensemble(self) -> Path:
        """A cross-validated run's manifest: which fold checkpoints make up the model."""
        return self.root / ENSEMBLE_FILE


@dataclass(frozen=True)
class PredictionLayout:
    """A prediction folder: masks, overlays and probability maps per case, and the batch's summary."""

    root: Path

    MASKS = "masks"
    OVERLAYS = "overlays"
    PROBABILITIES = "probabilities"
    UNCERTAINTY = "uncertainty"
    MESHES = "meshes"
    STATISTICS = "statistics"  # one CSV per case, gathered into statistics.csv
    INSTANCES = "instances"  # an instance map per case (--instances); their rows are in statistics.csv
    KINDS = (MASKS, OVERLAYS, PROBABILITIES, UNCERTAINTY, MESHES, STATISTICS, INSTANCES)

    @property
    def summary(self) -> Path:
        return self.root / "summary.csv"

    def shard_summary(self, index: int, count: int) -> Path:
        """The summary of one shard of a batch split over several jobs (``--shard i/N``)."""
        return self.root / f"summary.shard{index}-of-{count}.csv"

    @property
    def statistics(self) -> Path:
        """Per case and label: size, intensities, bounding box, components, border contact."""
        return self.root / "statistics.csv"

    @property
    def labels_json(self) -> Path:
        """Every value of the masks with its name, colour and code."""
        return self.root / "labels.json"

    @property
    def itksnap_labels(self) -> Path:
        """The same as an ITK-SNAP label description file."""
        return self.root / "itksnap_labels.txt"

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

    def fold(self, index: int) -> RunLayout:
        """The run folder of one cross-validation fold."""
        return RunLayout(self.root / "folds" / f"fold_{index}")

    @property
    def oof(self) -> Path:
        """Out-of-fold predictions, one ``<case>.npz`` each."""
        return self.root / "oof"

    @property
    def cv_summary(self) -> Path:
        return self.root / "cv_summary.json"


def checkpoint_candidates(model: Path) -> tuple[Path, ...]:
    """Where a checkpoint may be, given a ``.pt`` file, a ``model/`` folder or a run folder (in that order); a
    cross-validated run's ensemble manifest comes before its folds' checkpoints."""
    return (
        model,
        ModelLayout(model).ensemble,
        ModelLayout(model).best,
        RunLayout(model).model.ensemble,
        RunLayout(model).model.best,
    )

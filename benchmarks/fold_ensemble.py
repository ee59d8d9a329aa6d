"""What a cross-validated run's fold ensemble adds: test-split Dice of each fold alone and of the ensemble.

    MEDSEG_DATA_ROOT=../shared/data python benchmarks/fold_ensemble.py mlruns/runs/skin_lesion_planned/<run>

Every fold is evaluated with the ensemble's post-processing and TTA setting, on the run's recorded test split.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from medseg.config.loading import load_config
from medseg.config.settings import data_settings, evaluation_settings
from medseg.data.dataset import prepare_data
from medseg.evaluation.evaluate import evaluate
from medseg.infer.predictor import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a cross-validated run folder")
    run = parser.parse_args().run
    cfg = load_config(run / "config.yaml")
    test, settings = prepare_data(data_settings(cfg)).subset("test"), evaluation_settings(cfg)
    ensemble = Predictor.from_model(run)
    with tempfile.TemporaryDirectory() as tmp:
        single = {
            fold: evaluate(
                Predictor.from_model(run, folds=[fold], steps=ensemble.steps), test, settings, Path(tmp) / str(fold)
            )["postprocessed"]["dice"]["mean"]
            for fold in range(cfg.training.folds or 0)
        }
        together = evaluate(ensemble, test, settings, Path(tmp) / "ensemble")["postprocessed"]["dice"]["mean"]
    values = np.array(list(single.values()))
    print(
        json.dumps(
            {
                "single_folds": single,
                "mean_single": float(values.mean()),
                "sd_single": float(values.std(ddof=1)),
                "ensemble": together,
                "gain": together - float(values.mean()),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

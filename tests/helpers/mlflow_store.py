"""A small MLflow store with known runs, for the runs table and the UI tests."""

from __future__ import annotations

import time
from pathlib import Path

SHARED = {"model.name": "unet", "training.batch_size": "4", "seed": "42"}


def make_store(root: Path, experiment: str = "skin_lesion") -> tuple[str, dict[str, str]]:
    """A sqlite store with two finished parent runs (epochs 2, then 3), each with train/evaluate/predict children.

    Returns the store URI and ``{run name: run id}`` (parents and the experiment id under ``"experiment_id"``).
    """
    import mlflow

    from medseg.tracking.tracker import ensure_experiment

    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = ensure_experiment(client, experiment, (root / "artifacts").as_uri())
    ids = {"experiment_id": experiment_id}
    start = int(time.time() * 1000) - 3_600_000
    runs = [
        ("baseline-epochs2", "2", {"test_dice": 0.8765, "test_jaccard_thresholded": 0.7, "test_hd95": 12.5}, 0.81),
        ("longer-epochs3", "3", {"test_dice": 0.9012, "test_jaccard_thresholded": 0.75, "test_hd95": 9.25}, 0.86),
    ]
    for offset, (name, epochs, metrics, best_val) in enumerate(runs):
        t0 = start + offset * 600_000
        parent = client.create_run(experiment_id, start_time=t0, run_name=name, tags={"pipeline": experiment})
        run_id = parent.info.run_id
        for key, value in {**SHARED, "training.epochs": epochs}.items():
            client.log_param(run_id, key, value)
        for key, value in metrics.items():
            client.log_metric(run_id, key, value, timestamp=t0 + 100_000)
        for i, stage in enumerate(("train", "evaluate", "predict")):
            child = client.create_run(
                experiment_id,
                start_time=t0 + 1000 * (i + 1),
                run_name=stage,
                tags={"mlflow.parentRunId": run_id, "stage": stage},
            )
            if stage == "train":
                client.log_metric(child.info.run_id, "best_val_dice", best_val, timestamp=t0 + 50_000)
            if stage == "evaluate":  # the evaluate child has test_dice too: it must not be listed as a run
                client.log_metric(child.info.run_id, "test_dice", metrics["test_dice"], timestamp=t0 + 90_000)
            client.set_terminated(child.info.run_id, "FINISHED", end_time=t0 + 1000 * (i + 2))
        client.set_terminated(run_id, "FINISHED", end_time=t0 + 125_000)
        ids[name] = run_id
    return uri, ids


def stage_run(tracking_uri: str, parent_id: str, stage: str = "train"):
    """The nested MLflow run of one stage (``train``, ``postprocess``, ...) of a pipeline run."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_run(parent_id).info.experiment_id
    query = f"tags.mlflow.parentRunId = '{parent_id}' and tags.mlflow.runName = '{stage}'"
    return client.search_runs([experiment], query)[0]

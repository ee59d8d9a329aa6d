"""Experiments medseg makes carry MLflow's model-training tag, so the UI opens them on their runs table."""

from __future__ import annotations

from pathlib import Path

from medseg.tracking.tracker import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, MlflowTracker
from medseg.tracking.ui import experiment_links


def test_new_and_old_experiments_are_tagged_and_linked_to_their_runs(tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    untagged = client.create_experiment("made_by_hand", artifact_location=(tmp_path / "a").as_uri())
    client.create_run(untagged, run_name="r")
    MlflowTracker(uri, "skin_lesion", (tmp_path / "b").as_uri())
    made = client.get_experiment_by_name("skin_lesion")
    assert made.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND == "custom_model_development"

    links = dict(experiment_links(uri, "http://127.0.0.1:5000"))
    assert set(links) == {"made_by_hand", "skin_lesion"}  # the empty Default experiment is left out
    assert links["skin_lesion"] == (
        f"http://127.0.0.1:5000/#/experiments/{made.experiment_id}/runs?workflowType=machine_learning"
    )
    assert client.get_experiment(untagged).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND

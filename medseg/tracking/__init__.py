"""Experiment tracking: the interface the stages log through (:mod:`.tracker`), the MLflow store
(:mod:`.store`), the terminal runs table (:mod:`.runs_table`) and the MLflow UI server (:mod:`.ui`)."""

"""Batch prediction over many machines or cores with Ray Data: each actor loads the predictor once and runs the
local engine's per-case function on the cases it is given, so masks, per-case isolation, resume and the summary are
the local engine's. Ray is an optional extra (``pip install "medseg[distributed]"``), imported only here."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from medseg.core.errors import ConfigError
from medseg.core.layout import PredictionLayout
from medseg.data.records import Record
from medseg.infer.predictor import Predictor
from medseg.outputs.batch import (
    Outputs,
    PredictionReport,
    case_functions,
    check_outputs,
    gather_statistics,
    prepare_output_folder,
    report_rows,
    split_finished,
    write_label_descriptions,
)

log = logging.getLogger(__name__)


def import_ray() -> Any:
    """Ray, or a ConfigError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(
            '--engine ray: Ray is not installed; pip install "medseg[distributed]" (or use --engine local)'
        ) from None
    return ray


class _CaseWorker:
    """A Ray Data actor: one predictor, loaded once, writing the cases it is given."""

    def __init__(self, model: str, options: dict[str, Any], out_dir: str, outputs: dict[str, Any]) -> None:
        self.predictor = Predictor.from_model(model, **options)
        self.cases = case_functions(self.predictor, Path(out_dir), Outputs(**outputs))

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        rows = [self.cases.run(json.loads(item)) for item in batch["record"]]
        return {"row": [json.dumps(row, default=str) for row in rows]}


def predict_with_ray(
    predictor: Predictor,
    model: str,
    options: dict[str, Any],
    records: list[Record],
    out_dir: Path,
    outputs: Outputs,
    overwrite: bool = False,
    workers: int = 2,
    gpus_per_worker: float = 0.0,
    address: str | None = None,
    summary: Path | None = None,
) -> PredictionReport:
    """Segment ``records`` on ``workers`` Ray actors, each loading ``model`` with ``options`` once (a local Ray on this
    machine's CPUs unless ``address`` or ``$RAY_ADDRESS`` names a cluster); ``predictor`` (the same model, loaded
    here) checks the inputs and outputs first. The outputs and report are those of the local engine."""
    ray = import_ray()
    if workers < 1:
        raise ConfigError(f"--workers {workers}: give at least 1 worker")
    check_outputs(outputs, predictor.settings.spatial_dims, records, predictor.multilabel)
    prepare_output_folder(out_dir)
    write_label_descriptions(predictor, out_dir)
    cases = case_functions(predictor, out_dir, outputs)
    todo, _ = split_finished(records, cases, overwrite)
    rows: dict[str, dict[str, object]] = {}
    if todo:
        started_here = not ray.is_initialized()
        if started_here:
            address = address or os.environ.get("RAY_ADDRESS")
            cpus = max(os.cpu_count() or 1, workers)
            init = {"address": address} if address else {"num_cpus": cpus, "_node_ip_address": "127.0.0.1"}
            ray.init(**init, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            dataset = ray.data.from_items([{"record": json.dumps(record)} for record in todo])
            per_worker = max(1.0, (os.cpu_count() or 1) / workers) if not address else 1.0
            resources = {"num_cpus": per_worker, **({"num_gpus": gpus_per_worker} if gpus_per_worker else {})}
            results = dataset.map_batches(
                _CaseWorker,
                fn_constructor_kwargs={
                    "model": str(model),
                    "options": options,
                    "out_dir": str(out_dir),
                    "outputs": outputs.as_dict(),
                },
                batch_size=1,
                concurrency=workers,
                **resources,
            ).take_all()
        finally:
            if started_here:
                ray.shutdown()
        for item in results:
            row = json.loads(item["row"])
            rows[str(row["case"])] = row
    log.info("Ray: %d case(s) on %d worker(s)", len(todo), workers)
    report = report_rows(records, rows, out_dir, summary or PredictionLayout(out_dir).summary)
    if outputs.tables:
        gather_statistics(out_dir, records, cases.columns)
    return report

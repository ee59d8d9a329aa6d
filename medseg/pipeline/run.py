"""Run a pipeline: data -> train -> evaluate -> predict, one MLflow parent run, one nested run per stage."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.config.loading import validation_message
from medseg.config.schema import PipelineConfig
from medseg.config.settings import data_settings, network_spec, training_settings
from medseg.core.atomic import atomic_write_text
from medseg.core.errors import ConfigError, DataError, ModelError
from medseg.core.layout import RunLayout
from medseg.data.dataset import PreparedData, prepare_data
from medseg.runtime.distributed import Ranks, barrier, broadcast, join, leave
from medseg.tracking.tracker import Tracker, build_tracker
from medseg.version import __version__

if TYPE_CHECKING:
    from medseg.infer.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    """Where a run's outputs are and its headline numbers."""

    run_dir: Path
    run_id: str | None
    model_uri: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    failed_cases: dict[str, str] = field(default_factory=dict)


def git_commit() -> str:
    """The current git commit of the working directory, or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(cfg: PipelineConfig, data: PreparedData | None) -> dict[str, str]:
    """Tags that make a run identifiable and reproducible (``data``: None for a prediction that reads no dataset)."""
    tags = {"git_commit": git_commit(), "medseg_version": __version__, "pipeline": cfg.name}
    if data is not None:
        tags |= {
            "data_fingerprint": data.fingerprint,
            "dataset": data.name,
            "data_synthetic": str(data.synthetic).lower(),
        }
    return tags


def reads_dataset(cfg: PipelineConfig) -> bool:
    """Whether the stages read the pipeline's dataset: training and evaluation do, prediction unless it reads
    ``prediction.input`` or a PACS (``prediction.dicomweb``)."""
    predicts_elsewhere = cfg.prediction.input is not None or cfg.prediction.dicomweb is not None
    return any(stage in cfg.stages for stage in ("train", "evaluate")) or not predicts_elsewhere


def _train_stage(
    cfg: PipelineConfig, data: PreparedData, run: RunLayout, tracker: Tracker, resume: bool, group: Ranks
) -> Path:
    """Train (on every rank); rank 0 logs the result. Returns the model folder."""
    from medseg.pipeline.stages import log_training
    from medseg.training.trainer import train

    result = train(training_settings(cfg), data, run.root, tracker, resume=resume, group=group)
    if group.is_main:
        log_training(result, run, tracker)
    return result.model_dir


def _postprocess_stage(cfg: PipelineConfig, data: PreparedData, run: RunLayout, tracker: Tracker) -> Predictor:
    """Choose the post-processing on the validation cases; the trained model's predictor with the chosen steps."""
    from medseg.config.settings import evaluation_settings
    from medseg.evaluation.evaluate import validation_label_maps
    from medseg.infer.postprocessing import DENSE_CRF, tries_dense_crf
    from medseg.infer.predictor import Predictor
    from medseg.pipeline.stages import choose_postprocessing_stage

    predictor = Predictor.from_model(run.model.root, steps=[])
    refined: list | None = [] if tries_dense_crf(cfg.postprocessing) else None  # filled with the CRF's maps

    def label_maps() -> tuple[list, list]:
        if cfg.training.fit_on == "train_val":
            log.warning(
                "postprocessing.mode auto chooses on the validation cases, which training.fit_on: train_val "
                "trained on; set postprocessing.mode: on or off to decide without them"
            )
        validating = predictor if refined is None else predictor.with_steps([DENSE_CRF])
        return validation_label_maps(validating, data.subset("val"), evaluation_settings(cfg), refined)

    choice = choose_postprocessing_stage(cfg, label_maps, run, tracker, "val", refined)
    return predictor.with_steps(choice["steps"])


def prepare_run(
    pipeline: Path,
    overrides: list[str],
    folds: int | None = None,
    device: str | None = None,
    resume: str | None = None,
    processes: int | None = None,
) -> tuple[PipelineConfig, Path | None]:
    """The configuration ``medseg run`` runs (``folds`` and ``device`` set as ``--folds`` / ``--device`` do) and, with
    ``resume`` (an MLflow run id or run folder), the run folder to continue with the configuration saved in it."""
    from medseg.config.loading import load_config

    if processes is not None and processes < 1:
        raise ConfigError(f"--nproc {processes}: give at least 1 process (one per GPU, or a few on a CPU)")
    extra = [f"training.folds={folds}"] if folds is not None else []
    extra += [f"training.device={device}", f"inference.device={device}"] if device else []
    cfg = load_config(pipeline, [*overrides, *extra])
    if not resume:
        return cfg, None
    resume_dir = locate_run(cfg, resume)
    saved = load_config(RunLayout(resume_dir).config, overrides)
    if saved.name != cfg.name:
        raise ConfigError(f"--resume {resume}: that run belongs to pipeline {saved.name!r}, not {cfg.name!r}")
    return saved, resume_dir


def locate_run(cfg: PipelineConfig, reference: str) -> Path:
    """The folder of a run to resume, from its MLflow run id or its folder path."""
    run_dir = Path(reference)
    if not run_dir.is_dir():
        tags = build_tracker(cfg.tracking, cfg.name).run_tags(reference)
        if "run_dir" not in tags:
            raise ModelError(f"run {reference}: not a medseg run (no run_dir tag)")
        run_dir = Path(tags["run_dir"])
    last = RunLayout(run_dir).model.last
    if not last.is_file():
        raise ModelError(f"{last}: no checkpoint to resume from")
    return run_dir


def _log_model(cfg: PipelineConfig, network: Any, run: RunLayout, tracker: Tracker) -> str:
    """Log the best network with ``mlflow.pytorch`` (signature, input example, medseg checkpoint inside), and the
    whole predictor as the model MLflow's scoring server serves (``runs:/<id>/serving``, docs/serving.md)."""
    import numpy as np

    from medseg.config.settings import inference_settings
    from medseg.tracking.serving import log_serving_model

    spatial = inference_settings(cfg).working_shape
    example = np.zeros((1, cfg.model.in_channels, *spatial), dtype=np.float32)
    files = [run.model.best, run.model.postprocessing, run.config]
    registered = cfg.tracking.registered_model
    uri = tracker.log_model(network, example, [f for f in files if f.is_file()], registered)
    serving = log_serving_model(tracker, [f for f in files[:2] if f.is_file()], registered)
    log.info(
        "Model logged as %s%s; served by `mlflow models serve -m %s --env-manager local`",
        uri,
        f", registered as {registered}" if registered else "",
        serving,
    )
    return uri


def _new_run_folder(cfg: PipelineConfig, run_name: str | None, gather: bool = False) -> tuple[Path, str]:
    """The folder and name of a new run; DataError if the folder exists or cannot be made. With ``gather`` (one
    fold of a cross-validated run), an existing run folder of the same pipeline is reused."""
    name = run_name or cfg.tracking.run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = cfg.output_root / cfg.name / name
    if gather and RunLayout(run_dir).config.is_file():
        from medseg.config.loading import load_config

        saved = load_config(RunLayout(run_dir).config)
        if saved.training.folds != cfg.training.folds:
            raise DataError(
                f"{run_dir}: a run with training.folds={saved.training.folds}, not {cfg.training.folds}; "
                "choose another run name"
            )
        return run_dir, name
    if run_dir.exists():
        raise DataError(f"{run_dir}: run folder exists already; choose another run name")
    blocking = next((p for p in run_dir.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise DataError(f"{blocking}: is a file, not a folder; cannot create the run folder {run_dir}")
    return run_dir, name


def run_pipeline(
    cfg: PipelineConfig, run_name: str | None = None, resume_dir: Path | None = None, fold: int | None = None
) -> PipelineResult:
    """Run the configured stages end to end; every stage is tracked.

    With ``resume_dir`` (a run folder holding ``model/last.pt``), training continues where it stopped and
    logs into the same MLflow runs. With ``training.folds``, training is k-fold cross-validation and the model
    is the folds' ensemble; ``fold`` trains one fold into the named run (the stages after training run once
    every fold is trained). Started by torchrun (``WORLD_SIZE`` > 1), every rank trains its share with
    DistributedDataParallel; rank 0 alone writes the run folder, tracks and evaluates.
    """
    from medseg.pipeline.crossval import check_fold
    from medseg.runtime.devices import resolve_device

    check_fold(fold, cfg.training.folds)
    if resume_dir is not None and cfg.training.folds:
        raise ConfigError("--resume: not available for cross-validated runs; train a missing fold with --fold i")
    group = join(resolve_device(cfg.training.device, "training.device"))
    if group.distributed and cfg.training.folds:
        raise ConfigError("training.folds: train the folds one per job (--fold i) rather than with several processes")
    try:
        return _run_stages(cfg, run_name, resume_dir, fold, group)
    finally:
        leave(group)


def _run_stages(
    cfg: PipelineConfig, run_name: str | None, resume_dir: Path | None, fold: int | None, group: Ranks
) -> PipelineResult:
    """:func:`run_pipeline` once the process group (if any) is joined."""
    from medseg.infer.backends import require_openvino
    from medseg.infer.crf import require_dense_crf
    from medseg.infer.postprocessing import runs_dense_crf
    from medseg.infer.predictor import Predictor

    ids: dict[str, str] = {}
    if resume_dir is not None:
        run_dir, name = resume_dir, resume_dir.name
    elif group.is_main:
        run_dir, name = _new_run_folder(cfg, run_name, gather=fold is not None)
    run_dir, name = broadcast((run_dir, name) if group.is_main or resume_dir is not None else None, group)
    run = RunLayout(run_dir)
    if run.tracking.is_file():
        ids = json.loads(run.tracking.read_text(encoding="utf-8"))
    # without training, the given model is loaded and checked before any output is written
    predictor = None if "train" in cfg.stages else _compatible_predictor(cfg)
    if "train" in cfg.stages and runs_dense_crf(cfg.postprocessing):  # and the dense CRF's package, before training
        require_dense_crf()
    if cfg.inference.backend == "openvino":  # likewise OpenVINO's
        require_openvino("inference.backend: openvino")
    if "train" in cfg.stages and cfg.model.init_from and resume_dir is None:  # likewise the weights to start from
        from medseg.models.init_from import check_init_from

        check_init_from(cfg.model.init_from, network_spec(cfg))
    if not group.is_main:
        barrier(group)  # rank 0 writes the split first; the others read it
    data = prepare_data(data_settings(cfg)) if reads_dataset(cfg) else None
    if group.is_main:
        barrier(group)
    try:
        cfg = cfg.with_values(data.resolved) if data else cfg  # e.g. the target spacing measured on the training cases
    except ValueError as exc:  # values a dataset's own description gives that this pipeline's model cannot take
        reason = validation_message(exc)
        raise ConfigError(f"{data.root}: the dataset's description does not fit this pipeline ({reason})") from None
    if group.is_main and not run.config.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config, cfg.to_yaml())
    tracker = build_tracker(
        cfg.tracking if group.is_main else cfg.tracking.model_copy(update={"enabled": False}), cfg.name
    )
    result = PipelineResult(run_dir=run_dir, run_id=None)
    tags = {**run_tags(cfg, data), "run_dir": str(run_dir.resolve()), "processes": str(group.world)}
    first_time = "run_id" not in ids and resume_dir is None  # a new run (not resumed, not a further fold)
    with tracker.run(name, tags=tags, run_id=ids.get("run_id")) as run_id:
        result.run_id = run_id
        if group.is_main:
            ids["run_id"] = run_id
            atomic_write_text(run.tracking, json.dumps(ids, indent=1))
            log.info("Run %s (%s), outputs in %s", name, run_id, run_dir)
        if first_time and group.is_main:
            _log_run_inputs(cfg, data, run, tracker)
        model_dir = cfg.model.checkpoint
        if "train" in cfg.stages and cfg.training.folds:
            from medseg.pipeline import crossval

            crossval.train_folds(cfg, data, run, tracker, only=fold)
            predictor = crossval.finish(cfg, data, run, tracker)
            if predictor is None:  # folds still to train: evaluation and prediction wait for the ensemble
                return result
        elif "train" in cfg.stages:
            with tracker.run("train", tags={"stage": "train"}, run_id=ids.get("train_run_id")) as train_id:
                if group.is_main:
                    ids["train_run_id"] = train_id
                    atomic_write_text(run.tracking, json.dumps(ids, indent=1))
                model_dir = _train_stage(cfg, data, run, tracker, resume_dir is not None, group)
            if not group.is_main:
                return result  # post-processing, evaluation and prediction: rank 0 alone
            with tracker.run("postprocess", tags={"stage": "postprocess"}, run_id=ids.get("postprocess_run_id")) as pp:
                ids["postprocess_run_id"] = pp
                atomic_write_text(run.tracking, json.dumps(ids, indent=1))
                predictor = _postprocess_stage(cfg, data, run, tracker)
            result.model_uri = _log_model(cfg, predictor.network, run, tracker)
        predictor = predictor or Predictor.from_model(model_dir)
        if "evaluate" in cfg.stages:
            result.metrics.update(_evaluate_stage(cfg, data, predictor, run, tracker))
            tracker.log_metrics(result.metrics)
        if "predict" in cfg.stages:
            result.failed_cases = _predict_stage(cfg, data, predictor, run, tracker)
    return result


def _compatible_predictor(cfg: PipelineConfig) -> Predictor:
    """The predictor of ``model.checkpoint``; ModelError if it is not a model for this pipeline's images."""
    from medseg.infer.predictor import Predictor

    predictor = Predictor.from_model(cfg.model.checkpoint)
    trained = predictor.settings
    if (trained.spatial_dims, trained.in_channels) != (cfg.spatial_dims, cfg.model.in_channels):
        raise ModelError(
            f"model.checkpoint {cfg.model.checkpoint}: a {trained.spatial_dims}D model with "
            f"{trained.in_channels} input channel(s), but pipeline {cfg.name} has {cfg.spatial_dims}D images "
            f"with {cfg.model.in_channels} channel(s)"
        )
    return predictor


def _log_run_inputs(cfg: PipelineConfig, data: PreparedData | None, run: RunLayout, tracker: Tracker) -> None:
    """Parameters, data check, data set and split of a new run."""
    tracker.log_params(cfg.to_dict())
    if data is None:  # a prediction of inputs outside the dataset
        tracker.log_artifact(run.config)
        return
    report = data.report
    tracker.log_params(
        {
            "data_check": {
                "cases": report.cases,
                "empty_masks": len(report.empty_masks),
                "masks_with_non_binary_pixels": report.masks_with_non_binary_pixels,
                "non_binary_pixels": report.non_binary_pixels,
            }
        }
    )
    tracker.log_dataset(data.name, str(data.root.resolve()), data.fingerprint, data.records)
    tracker.log_artifact(run.config)
    tracker.log_artifact(data.splits_path, "data")
    if data.check is not None and data.check.bad_cases:
        skipped = data.check
        atomic_write_text(run.bad_cases, skipped.csv_text(skipped.errors))
        tracker.set_tags(
            {"bad_cases": ",".join(skipped.bad_cases)[:5000], "bad_case_count": str(len(skipped.bad_cases))}
        )
        tracker.log_artifact(run.bad_cases, "data")


def _evaluate_stage(
    cfg: PipelineConfig, data: PreparedData, predictor: Predictor, run: RunLayout, tracker: Tracker
) -> dict[str, float]:
    from medseg.config.settings import evaluation_settings
    from medseg.evaluation.evaluate import evaluate, summary_metrics

    with tracker.run("evaluate", tags={"stage": "evaluate"}):
        summary = evaluate(predictor, data.subset(cfg.evaluation.split), evaluation_settings(cfg), run.evaluation)
        metrics = summary_metrics(summary)
        tracker.log_params(
            {
                "postprocessing_steps": ",".join(summary["postprocessing_steps"]) or "none",
                "split": cfg.evaluation.split,
                "cases": summary["cases"],
            }
        )
        tracker.log_metrics(metrics)
        tracker.log_artifact(run.evaluation, "evaluation")
    return metrics


def _predict_stage(
    cfg: PipelineConfig, data: PreparedData | None, predictor: Predictor, run: RunLayout, tracker: Tracker
) -> dict[str, str]:
    from medseg.config.settings import dicomweb_source, output_settings
    from medseg.core.layout import PredictionLayout
    from medseg.data.inputs import predict_inputs
    from medseg.outputs.batch import predict_records
    from medseg.outputs.dicomweb import predict_dicomweb

    with tracker.run("predict", tags={"stage": "predict"}):
        pcfg = cfg.prediction
        out_dir = pcfg.output_dir or run.predictions.root
        outputs, pacs = output_settings(cfg), dicomweb_source(cfg)
        if pacs is not None:  # the series a PACS query finds (prediction.dicomweb), stored back with its store
            report = predict_dicomweb(predictor, pacs, out_dir, outputs)
        else:
            records = (
                predict_inputs(pcfg.input, cfg.spatial_dims, cfg.model.in_channels, skipped=True)
                if pcfg.input or data is None
                else data.subset(cfg.evaluation.split)
            )
            report = predict_records(predictor, records, out_dir, outputs, overwrite=True)
        tracker.log_metrics({"predicted_cases": len(report.written), "failed_cases": len(report.failed)})
        layout = PredictionLayout(out_dir)
        tracker.log_artifact(layout.folder(layout.MASKS), "predictions/masks")
        for kind in (layout.OVERLAYS, layout.UNCERTAINTY, layout.MESHES, layout.INSTANCES):
            if layout.folder(kind).is_dir():
                tracker.log_artifact(layout.folder(kind), f"predictions/{kind}")
        for table in (layout.summary, layout.statistics, layout.labels_json, layout.itksnap_labels):
            if table.is_file():
                tracker.log_artifact(table, "predictions")
        if run.curves.is_file():
            tracker.log_artifact(run.curves, "plots")
    return report.failed

"""The settings constructors: the one place where the whole pipeline configuration becomes the small frozen settings
each part reads (a :class:`~medseg.labels.LabelScheme`, ...). Parts take their settings, never the configuration,
so what a function reads is in its signature."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medseg.config.loading import stored_config, validation_message
from medseg.config.schema import PipelineConfig
from medseg.core.errors import ModelError
from medseg.data.settings import DataSettings
from medseg.evaluation.settings import EvaluationSettings
from medseg.infer.settings import InferenceSettings
from medseg.labels import Label, LabelScheme, default_color, parse_code
from medseg.outputs.settings import Outputs
from medseg.training.settings import TrainingSettings
from medseg.transforms.settings import LabelRemap, TransformSettings


def label_scheme(cfg: PipelineConfig) -> LabelScheme:
    """What the model's outputs and label maps mean (``data.labels``, ``data.regions``, ``data.region_order``,
    ``data.ignore_label``, ``model.out_channels``, ``evaluation.threshold``)."""
    data = cfg.data
    configured = data.labels or {}
    by_name = {info.name: value for value, info in configured.items()}
    regions = {
        region: tuple(sorted({int(v) if isinstance(v, int) else by_name[v] for v in members}))
        for region, members in (data.regions or {}).items()
    }
    named = {
        value: Label(
            value, info.name, info.color or default_color(value), parse_code(info.code), parse_code(info.category)
        )
        for value, info in configured.items()
    }
    order = tuple(data.region_order) if data.region_order else None
    return LabelScheme(cfg.model.out_channels, named, regions, order, data.ignore_label, cfg.evaluation.threshold)


def label_remap(cfg: PipelineConfig) -> LabelRemap:
    """How raw label values become training targets (``data.label_mapping``, ``data.foreground_labels``, the regions'
    values, ``data.ignore_label``)."""
    data = cfg.data
    regions = tuple(label_scheme(cfg).regions.values()) if data.regions else None
    foreground = tuple(data.foreground_labels) if data.foreground_labels else None
    return LabelRemap(data.label_mapping, foreground, regions, data.ignore_label)


def transform_settings(cfg: PipelineConfig) -> TransformSettings:
    """What the transform chains read."""
    return TransformSettings(
        cfg.spatial_dims,
        cfg.model.in_channels,
        cfg.preprocessing,
        cfg.augmentation,
        cfg.training.samples_per_volume,
        label_remap(cfg),
    )


def inference_settings(cfg: PipelineConfig) -> InferenceSettings:
    """What a predictor reads (a model's preprocessing, ``inference.*``, labels, ``postprocessing.*``; on a GPU,
    ``training.bf16`` as the model's mixed precision)."""
    return InferenceSettings(
        transform_settings(cfg),
        cfg.inference,
        label_scheme(cfg),
        cfg.postprocessing,
        cfg.training.bf16,
        tuple(cfg.data.modalities),
    )


def stored_inference_settings(
    raw: object, source: Path, backend: str | None = None, device: str | None = None
) -> InferenceSettings:
    """The settings of the configuration saved with a model (any medseg version's: :func:`stored_config`), with
    ``backend`` / ``device`` replacing its ``inference.backend`` / ``inference.device``; ModelError if it is invalid."""
    try:
        config = stored_config(raw, source)
        changes = {"inference.backend": backend, "inference.device": device}
        config = config.with_values({k: v for k, v in changes.items() if v is not None})
    except ValueError as exc:
        detail = validation_message(exc)
        raise ModelError(f"{source}: the configuration stored with the model is invalid ({detail})") from None
    return inference_settings(config)


def stored_data_settings(raw: object, source: Path) -> DataSettings:
    """The data settings of the configuration saved with a model (where its training and validation cases are);
    ModelError if it is invalid."""
    try:
        config = stored_config(raw, source)
    except ValueError as exc:
        detail = validation_message(exc)
        raise ModelError(f"{source}: the configuration stored with the model is invalid ({detail})") from None
    return data_settings(config)


def output_settings(cfg: PipelineConfig) -> Outputs:
    """What the predict stage writes besides the masks (``prediction.*``, ``inference.save_probabilities``)."""
    p = cfg.prediction
    return Outputs(
        formats=tuple(p.formats),
        probabilities=cfg.inference.save_probabilities,
        uncertainty=p.uncertainty,
        statistics=p.statistics,
        meshes=p.meshes,
        mesh_format=p.mesh_format,
        mesh_space=p.mesh_space,
        overlays=p.overlays,
        max_overlays=p.max_overlays,
        instances=p.instances,
        min_instance_size=p.min_instance_size,
        split_touching=p.split_touching,
    )


def dicomweb_source(cfg: PipelineConfig):
    """Where the predict stage reads from a PACS (``prediction.dicomweb``), or None: a ``DicomwebSource``."""
    from medseg.outputs.pacs import DicomwebSource

    d = cfg.prediction.dicomweb
    if d is None:
        return None
    return DicomwebSource(d.url, d.study, d.series, tuple(d.query.items()), tuple(d.channels), d.store, d.ca_bundle)


def evaluation_settings(cfg: PipelineConfig) -> EvaluationSettings:
    """What the evaluate stage reads (the labels, the reference labels' remapping, ``evaluation.*``)."""
    return EvaluationSettings(
        cfg.spatial_dims, label_scheme(cfg), label_remap(cfg), cfg.evaluation.jaccard_threshold, cfg.evaluation.split
    )


def data_settings(cfg: PipelineConfig) -> DataSettings:
    """What the data layer reads (``data.*``, the images' dimensions and channels, ``preprocessing.*``, ``seed``,
    ``training.folds``, ``training.epochs``)."""
    return DataSettings(
        cfg.data,
        cfg.spatial_dims,
        cfg.model.in_channels,
        cfg.preprocessing,
        cfg.seed,
        cfg.training.folds,
        cfg.training.epochs,
    )


def network_spec(cfg: PipelineConfig) -> dict[str, Any]:
    """The arguments that build the network (``model.*``, ``spatial_dims``); stored in every checkpoint."""
    return {
        "name": cfg.model.name,
        "spatial_dims": cfg.spatial_dims,
        "in_channels": cfg.model.in_channels,
        "out_channels": cfg.model.out_channels,
        "args": dict(cfg.model.args),
    }


def training_settings(cfg: PipelineConfig) -> TrainingSettings:
    """What the train stage reads (``training.*``, ``schedule.*``, ``optimizer.*``, ``loss.*``, the network and the
    weights it starts from (``model.init_from``), and the transforms', data layer's and validation's settings); the
    resolved configuration travels with it into the checkpoints."""
    return TrainingSettings(
        cfg.seed,
        network_spec(cfg),
        cfg.training,
        cfg.schedule,
        cfg.optimizer,
        cfg.loss,
        transform_settings(cfg),
        data_settings(cfg),
        inference_settings(cfg),
        cfg.to_dict(),
        cfg.model.init_from,
    )

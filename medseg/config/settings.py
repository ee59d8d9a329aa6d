"""The settings constructors: the one place where the whole pipeline configuration becomes the small frozen settings
each part reads (a :class:`~medseg.labels.LabelScheme`, ...). Parts take their settings, never the configuration,
so what a function reads is in its signature."""

from __future__ import annotations

from medseg.config.schema import PipelineConfig
from medseg.labels import Label, LabelScheme, default_color, parse_code


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

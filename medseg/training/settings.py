"""What the train stage reads, as one small frozen object (:func:`medseg.config.settings.training_settings` builds it
from a pipeline configuration)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medseg.config.schema import LossConfig, OptimizerConfig, ScheduleConfig, TrainingConfig
from medseg.data.settings import DataSettings
from medseg.infer.settings import InferenceSettings
from medseg.transforms.settings import TransformSettings


@dataclass(frozen=True)
class TrainingSettings:
    """``network``: what builds (and, stored in each checkpoint, rebuilds) the network: name, spatial_dims,
    in_channels, out_channels, args; ``training`` / ``schedule`` / ``optimizer`` / ``loss``: their sections;
    ``transforms`` and ``data``: the loaders' preprocessing, augmentation and cache; ``validation``: how validation
    cases are inferred and scored (sliding window, labels, threshold); ``stored``: the resolved configuration saved
    with the model (what a predictor is later built from); ``init_from``: the weights training starts from
    (``model.init_from``, :mod:`medseg.models.init_from`), None for a fresh initialisation."""

    seed: int
    network: dict[str, Any]
    training: TrainingConfig = field(default_factory=TrainingConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    transforms: TransformSettings = field(default_factory=TransformSettings)
    data: DataSettings = field(default_factory=DataSettings)
    validation: InferenceSettings = field(default_factory=InferenceSettings)
    stored: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None

    @property
    def spatial_dims(self) -> int:
        return self.network["spatial_dims"]

"""MONAI transform chains for training, validation and inference: 2D images (:mod:`.image_2d`) and 3D volumes
(:mod:`.volume_3d`). MONAI is imported when a chain is built, not when this package is."""

from __future__ import annotations

from typing import Any

from medseg.config.schema import PipelineConfig
from medseg.transforms.image_2d import image_inference_transforms, image_train_transforms, image_validation_transforms
from medseg.transforms.volume_3d import (
    volume_inference_transforms,
    volume_train_transforms,
    volume_validation_transforms,
)


def train_transforms(cfg: PipelineConfig) -> Any:
    """Preprocessing (cached) + augmentation for training."""
    return volume_train_transforms(cfg) if cfg.spatial_dims == 3 else image_train_transforms(cfg)


def validation_transforms(cfg: PipelineConfig) -> Any:
    """Preprocessing only, image and label at the training grid."""
    return volume_validation_transforms(cfg) if cfg.spatial_dims == 3 else image_validation_transforms(cfg)


def inference_transforms(cfg: PipelineConfig) -> Any:
    """Preprocessing of the image alone, metadata kept to map predictions back."""
    return volume_inference_transforms(cfg) if cfg.spatial_dims == 3 else image_inference_transforms(cfg)

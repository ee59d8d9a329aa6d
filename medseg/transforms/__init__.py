"""MONAI transform chains for training, validation and inference: 2D images (:mod:`.image_2d`) and 3D volumes
(:mod:`.volume_3d`), built from :class:`TransformSettings`. MONAI is imported when a chain is built, not when this
package is."""

from __future__ import annotations

from typing import Any

from medseg.transforms.settings import TransformSettings


def train_transforms(settings: TransformSettings) -> Any:
    """Preprocessing (cached) + augmentation for training."""
    from medseg.transforms.image_2d import image_train_transforms
    from medseg.transforms.volume_3d import volume_train_transforms

    return (volume_train_transforms if settings.spatial_dims == 3 else image_train_transforms)(settings)


def validation_transforms(settings: TransformSettings) -> Any:
    """Preprocessing only, image and label at the training grid."""
    from medseg.transforms.image_2d import image_validation_transforms
    from medseg.transforms.volume_3d import volume_validation_transforms

    return (volume_validation_transforms if settings.spatial_dims == 3 else image_validation_transforms)(settings)


def inference_transforms(settings: TransformSettings) -> Any:
    """Preprocessing of the image alone, metadata kept to map predictions back."""
    from medseg.transforms.image_2d import image_inference_transforms
    from medseg.transforms.volume_3d import volume_inference_transforms

    return (volume_inference_transforms if settings.spatial_dims == 3 else image_inference_transforms)(settings)

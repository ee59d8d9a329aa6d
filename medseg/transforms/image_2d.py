"""MONAI dictionary transforms for 2D images: deterministic preprocessing, then synced augmentation.

The deterministic part ends before the first random transform, so ``CacheDataset`` keeps decoded,
resized images in memory and only augmentation runs each epoch. Inference uses the same
preprocessing on the image alone, and ``Invertd`` maps predictions back to the input's own size.
"""

from __future__ import annotations

import math
from typing import Any

from medseg.config.schema import AugmentationConfig
from medseg.transforms.settings import TransformSettings


def opaque_rgba_as_rgb(image: Any) -> Any:
    """A PIL image with an alpha channel as RGB (the data check lets only fully opaque ones through)."""
    return image.convert("RGB") if image.mode == "RGBA" else image


class ShadesOfGrayd:
    """Colour constancy of an RGB image in [0, 1] (channel first): each channel divided by its Minkowski ``power``-mean
    (the illuminant estimate), normalised so that a grey illuminant leaves the image unchanged; clipped to [0, 1]."""

    def __init__(self, key: str, power: float) -> None:
        self.key, self.power = key, power

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        import torch

        image = data[self.key]
        flat = torch.as_tensor(image).float().flatten(1)
        illuminant = flat.clamp_min(0).pow(self.power).mean(dim=1).pow(1.0 / self.power).clamp_min(1e-6)
        gain = illuminant.norm() / (illuminant * math.sqrt(len(illuminant)))
        out = dict(data)
        out[self.key] = (image * gain.reshape(-1, *([1] * (image.ndim - 1))).to(image.dtype)).clamp(0.0, 1.0)
        return out


def network_grid(settings: TransformSettings) -> tuple[int, int]:
    """The array shape a 2D image is resized to: ``preprocessing.spatial_size`` is (height, width), and MONAI's PIL
    reader loads images as (width, height) arrays."""
    height, width = settings.preprocessing.spatial_size
    return (width, height)


def preprocessing(settings: TransformSettings, keys: tuple[str, ...] = ("image", "label")) -> list[Any]:
    """Load (an opaque RGBA image as RGB), channel-first, scale intensities to [0, 1] (or normalise them as
    ``preprocessing.intensity`` says: zscore, rescale or per channel), remap the mask (>0: 1), resize."""
    from monai.data import PILReader
    from monai.transforms import EnsureChannelFirstd, LoadImaged, Resized, ScaleIntensityRanged

    from medseg.imageio.images import decode_mask
    from medseg.transforms.intensity import Normalisedd, per_channel

    image_reader = PILReader(converter=opaque_rgba_as_rgb) if settings.in_channels == 3 else "PILReader"
    label_reader = PILReader(converter=decode_mask)  # equal RGB channels -> one; JPEG masks thresholded
    transforms: list[Any] = [
        LoadImaged(keys="image", reader=image_reader, image_only=True),
        *([LoadImaged(keys="label", reader=label_reader, image_only=True)] if "label" in keys else []),
        EnsureChannelFirstd(keys=list(keys)),
    ]
    intensity = settings.preprocessing.intensity
    if per_channel(intensity):  # nnU-Net's channel names, or a kind set for 2D: instead of the 0..255 scaling
        transforms.append(Normalisedd("image", intensity.channel_kinds(settings.in_channels), intensity))
    else:
        transforms.append(ScaleIntensityRanged(keys="image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True))
    if settings.preprocessing.color_constancy == "shades_of_gray":
        transforms.append(ShadesOfGrayd("image", settings.preprocessing.color_constancy_power))
    if "label" in keys:
        from medseg.transforms.labels import RemapLabelsd

        transforms.append(RemapLabelsd("label", **settings.labels.arguments()))
    modes = tuple("nearest" if key == "label" else "bilinear" for key in keys)
    antialias = tuple(key != "label" for key in keys)
    transforms.append(
        Resized(keys=list(keys), spatial_size=network_grid(settings), mode=modes, anti_aliasing=antialias)
    )
    return transforms


def augmentation(aug: AugmentationConfig, square: bool = True) -> list[Any]:
    """Random flips, 90-degree rotations, affine, colour/contrast jitter and noise, image and mask in sync."""
    if not aug.enabled:
        return []
    from monai.transforms import (
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = ["image", "label"]
    angle = math.radians(aug.rotate_degrees)
    return [
        RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=0),
        RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=1),
        # quarter turns only on square inputs: on others they transpose the shape and batches cannot be stacked
        *([RandRotate90d(keys=keys, prob=aug.rotate90_prob, max_k=3)] if square else []),
        RandAffined(
            keys=keys,
            prob=aug.affine_prob,
            rotate_range=angle,
            scale_range=aug.scale_range,
            mode=("bilinear", "nearest"),
            padding_mode="reflection",
        ),
        RandScaleIntensityd(keys="image", factors=aug.channel_scale, prob=aug.color_prob, channel_wise=True),
        RandShiftIntensityd(keys="image", offsets=aug.brightness, prob=aug.color_prob),
        RandAdjustContrastd(keys="image", gamma=aug.contrast_gamma, prob=aug.color_prob),
        RandGaussianNoised(keys="image", prob=aug.noise_prob, std=aug.noise_std),
    ]


def image_train_transforms(settings: TransformSettings) -> Any:
    """Preprocessing (cached) + augmentation for training, on plain tensors (no metadata: fast augmentation and
    collation)."""
    from monai.transforms import Compose, EnsureTyped

    from medseg.transforms.untracked import UntrackedCompose

    square = settings.preprocessing.spatial_size[0] == settings.preprocessing.spatial_size[1]
    augment = UntrackedCompose([*augmentation(settings.augmentation, square), EnsureTyped(keys=["image", "label"])])
    return Compose([*preprocessing(settings), augment])


def image_validation_transforms(settings: TransformSettings) -> Any:
    """Preprocessing only, image and mask at training resolution."""
    from monai.transforms import Compose, EnsureTyped

    return Compose([*preprocessing(settings), EnsureTyped(keys=["image", "label"], track_meta=False)])


def image_inference_transforms(settings: TransformSettings) -> Any:
    """Preprocessing of the image alone, metadata kept so ``Invertd`` can undo it."""
    from monai.transforms import Compose

    return Compose(preprocessing(settings, keys=("image",)))

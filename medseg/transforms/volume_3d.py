"""MONAI dictionary transforms for 3D CT/MRI volumes.

load (NIfTI via nibabel; NRRD/MHA/DICOM via SimpleITK) -> channel first (one channel per modality) ->
labels remapped -> canonical orientation -> target spacing -> intensity (CT window / MRI z-score / per channel) ->
foreground crop. Training adds positive/negative patch sampling and 3D augmentation; inference keeps
the metadata so :mod:`medseg.infer.resampling` maps predictions back to the scan's own grid.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from medseg.transforms.settings import TransformSettings


def nonbackground(image: torch.Tensor) -> torch.Tensor:
    """Foreground for MRI cropping: voxels that differ from the background, per channel.

    The background is 0 in raw skull-stripped MRI, and a constant (the value all eight corners share) in
    MRI saved after its own normalisation (BraTS derivatives: about -3.8) or z-scored over non-zero voxels.
    """
    masks = []
    for channel in image:
        corners = channel[tuple(slice(None, None, max(n - 1, 1)) for n in channel.shape)]
        value = corners.flatten()[0]
        masks.append(channel != (value if bool((corners == value).all()) else 0))
    return torch.stack(masks)  # (C, ...): MONAI's bounding box takes any channel


class AboveWindow:
    """Foreground for CT cropping after windowing: anything above the bottom of the window (air)."""

    def __init__(self, bottom: float = 0.0) -> None:
        self.bottom = bottom

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image > self.bottom


def volume_preprocessing(settings: TransformSettings, keys: tuple[str, ...] = ("image", "label")) -> list[Any]:
    """Deterministic steps shared by training, validation and inference."""
    from monai.transforms import (
        CropForegroundd,
        NormalizeIntensityd,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    from medseg.imageio.readers import LoadVolumesd
    from medseg.transforms.intensity import Normalisedd
    from medseg.transforms.labels import RemapLabelsd

    pre = settings.preprocessing
    interpolation = tuple("nearest" if key == "label" else "bilinear" for key in keys)
    transforms: list[Any] = [LoadVolumesd(keys=list(keys), image_only=True, ensure_channel_first=True)]
    if "label" in keys:
        transforms.append(RemapLabelsd("label", **settings.labels.arguments()))
    transforms.append(Orientationd(keys=list(keys), axcodes=pre.orientation))
    if isinstance(pre.spacing, tuple):
        transforms.append(Spacingd(keys=list(keys), pixdim=pre.spacing, mode=interpolation))
    intensity = pre.intensity
    windowed = intensity.kind == "ct" and not intensity.channels
    crop = CropForegroundd(
        keys=list(keys),
        source_key="image",
        margin=4,
        allow_smaller=True,
        select_fn=AboveWindow(intensity.scaled_to[0]) if windowed else nonbackground,
    )
    if intensity.channels or intensity.kind in ("zscore", "rescale"):
        # kinds per channel (nnU-Net's channel names), then crop to what differs from each channel's background
        transforms.append(Normalisedd("image", intensity.channel_kinds(settings.in_channels), intensity))
        transforms.extend([crop] if pre.crop_foreground else [])
    elif windowed:
        low, high = pre.intensity.window
        b_min, b_max = pre.intensity.scaled_to
        transforms.append(
            ScaleIntensityRanged(keys="image", a_min=low, a_max=high, b_min=b_min, b_max=b_max, clip=True)
        )
        transforms.extend([crop] if pre.crop_foreground else [])
    else:  # MRI: z-score over non-zero voxels, then crop to what differs from the (constant) background
        if pre.intensity.kind == "mri":
            transforms.append(NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True))
        transforms.extend([crop] if pre.crop_foreground else [])
    return transforms


def volume_augmentation(settings: TransformSettings) -> list[Any]:
    """Patch sampling around labels, then flips, rotations, scaling, intensity shifts and noise."""
    from monai.transforms import (
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    keys = ["image", "label"]
    patch, intensity = settings.preprocessing.patch_size, settings.preprocessing.intensity
    aug = settings.augmentation
    transforms: list[Any] = [
        SpatialPadd(keys=keys, spatial_size=patch),
        RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=patch,
            pos=1,
            neg=1,
            num_samples=settings.samples_per_volume,
            image_key="image",
            # negatives from inside the body: above air (CT: the window's bottom) or above MRI's zero background
            image_threshold=intensity.scaled_to[0] if intensity.kind == "ct" else 0,
        ),
    ]
    if not aug.enabled:
        return transforms
    angle = math.radians(aug.rotate_degrees)
    return [
        *transforms,
        RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=0),
        RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=1),
        RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=2),
        RandAffined(
            keys=keys,
            prob=aug.affine_prob,
            rotate_range=(angle, angle, angle),
            scale_range=(aug.scale_range,) * 3,
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        RandScaleIntensityd(keys="image", factors=aug.channel_scale, prob=aug.color_prob),
        RandShiftIntensityd(keys="image", offsets=aug.brightness, prob=aug.color_prob),
        RandGaussianNoised(keys="image", prob=aug.noise_prob, std=aug.noise_std),
    ]


def volume_train_transforms(settings: TransformSettings) -> Any:
    """Preprocessing (cached) + patch sampling and augmentation, on plain tensors (no metadata)."""
    from monai.transforms import Compose, EnsureTyped

    from medseg.transforms.untracked import UntrackedCompose

    augment = UntrackedCompose([*volume_augmentation(settings), EnsureTyped(keys=["image", "label"])])
    return Compose([*volume_preprocessing(settings), augment])


def volume_validation_transforms(settings: TransformSettings) -> Any:
    """Whole preprocessed volumes for sliding-window validation."""
    from monai.transforms import Compose, EnsureTyped

    return Compose([*volume_preprocessing(settings), EnsureTyped(keys=["image", "label"], track_meta=False)])


def volume_inference_transforms(settings: TransformSettings) -> Any:
    """Preprocessing of the image alone, metadata kept for ``Invertd``."""
    from monai.transforms import Compose

    return Compose(volume_preprocessing(settings, keys=("image",)))

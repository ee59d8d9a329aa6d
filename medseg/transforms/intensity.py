"""Intensity normalisation per channel, as nnU-Net's channel names choose it: CT windowed and mapped onto
``scaled_to``, MRI z-scored over non-zero voxels, ``zscore`` over the whole image, ``rescale`` min..max onto [0, 1],
``none`` left as read. :class:`Normalised` is the array transform, :class:`Normalisedd` its dictionary form."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from medseg.config.schema import IntensityConfig


def normalise_channel(channel: torch.Tensor, kind: str, intensity: IntensityConfig) -> torch.Tensor:
    """One channel normalised as ``kind`` says, by MONAI's intensity transforms (``intensity`` gives a CT channel's
    window and ``scaled_to``)."""
    from monai.transforms import NormalizeIntensity, ScaleIntensity, ScaleIntensityRange

    if kind == "ct":
        (low, high), (b_low, b_high) = intensity.window, intensity.scaled_to
        return ScaleIntensityRange(low, high, b_low, b_high, clip=True)(channel)
    if kind in ("zscore", "mri"):  # mri: over the non-zero voxels (the head, not the air around it)
        return NormalizeIntensity(nonzero=kind == "mri")(channel)
    if kind == "rescale":
        return ScaleIntensity(minv=0.0, maxv=1.0)(channel)
    return channel  # none


class Normalised:
    """(C, ...) image -> float image, channel ``c`` normalised as ``kinds[c]`` (the metadata of a MetaTensor kept).

    Raises:
        ValueError: an image whose channel count differs from the kinds given.
    """

    def __init__(self, kinds: Sequence[str], intensity: IntensityConfig) -> None:
        self.kinds, self.intensity = list(kinds), intensity

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[0] != len(self.kinds):
            raise ValueError(
                f"preprocessing.intensity.channels lists {len(self.kinds)} kind(s) ({', '.join(self.kinds)}) but "
                f"the image has {image.shape[0]} channel(s)"
            )
        out = image.float().clone()
        for channel, kind in enumerate(self.kinds):
            out[channel] = normalise_channel(out[channel], kind, self.intensity)
        return out


class Normalisedd:
    """:class:`Normalised` on the ``key`` entry of a dictionary."""

    def __init__(self, key: str, kinds: Sequence[str], intensity: IntensityConfig) -> None:
        self.key, self.normalise = key, Normalised(kinds, intensity)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        data = dict(data)
        data[self.key] = self.normalise(data[self.key])
        return data


def per_channel(intensity: IntensityConfig) -> bool:
    """Whether the normalisation is more than medseg's default for its dimensions (kinds per channel, or a kind that
    2D images take instead of their 0..255 scaling)."""
    return bool(intensity.channels) or intensity.kind in ("zscore", "rescale")

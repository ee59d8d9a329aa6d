"""Intensity normalisation as nnU-Net's channel names choose it: ct, zscore, rescale, none and mri per channel,
each checked voxel for voxel against NumPy, in 3D preprocessing and in place of 2D's 0..255 scaling."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from medseg.config.schema import IntensityConfig, PipelineConfig
from medseg.config.settings import transform_settings
from medseg.transforms.intensity import Normalised, normalise_channel

VALUES = np.array([[0.0, 0.0, 2.0], [4.0, 6.0, 100.0]], np.float32)


def zscored(a: np.ndarray) -> np.ndarray:
    return (a - a.mean()) / a.std()


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("zscore", zscored(VALUES)),
        ("rescale", VALUES / 100.0),
        ("none", VALUES),
        ("ct", (np.clip(VALUES, 1.0, 5.0) - 1.0) / 4.0 * 2.0 - 1.0),
        ("mri", np.where(VALUES != 0, (VALUES - VALUES[VALUES != 0].mean()) / VALUES[VALUES != 0].std(), 0.0)),
    ],
)
def test_each_kind_normalises_a_channel_as_nnunet_does(kind: str, expected: np.ndarray) -> None:
    intensity = IntensityConfig(kind="ct", window=(1.0, 5.0), scaled_to=(-1.0, 1.0))
    result = normalise_channel(torch.from_numpy(VALUES), kind, intensity)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_channels_are_normalised_each_by_its_own_kind() -> None:
    image = torch.from_numpy(np.stack([VALUES * 10 - 500, VALUES]))  # CT-like, PET-like
    intensity = IntensityConfig(channels=["ct", "zscore"], window=(-500.0, 500.0), scaled_to=(0.0, 1.0))
    result = Normalised(intensity.channel_kinds(2), intensity)(image).numpy()
    np.testing.assert_allclose(result[0], (np.clip(VALUES * 10 - 500, -500, 500) + 500) / 1000, atol=1e-6)
    np.testing.assert_allclose(result[1], zscored(VALUES), rtol=1e-5)
    with pytest.raises(
        ValueError, match=r"^preprocessing.intensity.channels lists 2 kind\(s\) \(ct, zscore\) but the "
    ):
        Normalised(["ct", "zscore"], intensity)(image[:1])


def test_unknown_or_empty_channel_kinds_are_refused() -> None:
    with pytest.raises(ValidationError, match="channels.1"):
        IntensityConfig(channels=["ct", "pet"])
    with pytest.raises(ValidationError, match="at least 1 item"):
        IntensityConfig(channels=[])


def test_3d_preprocessing_normalises_per_channel(tmp_path: Path) -> None:
    from monai.transforms import Compose

    from medseg.transforms.volume_3d import volume_preprocessing

    ct = np.arange(4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3) * 50 - 1000
    pet = np.arange(4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3) ** 2
    paths = []
    for name, array in (("ct", ct), ("pet", pet)):
        paths.append(str(tmp_path / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(array, np.eye(4)), paths[-1])
    cfg = PipelineConfig(
        name="t",
        spatial_dims=3,
        model={"in_channels": 2},
        preprocessing={
            "intensity": {"channels": ["ct", "zscore"], "window": [-900.0, 600.0], "scaled_to": [-1.0, 2.0]},
            "crop_foreground": False,
        },
    )
    chain = Compose(volume_preprocessing(transform_settings(cfg), keys=("image",)))
    image = np.asarray(chain({"image": paths})["image"])
    np.testing.assert_allclose(image[0], (np.clip(ct, -900, 600) + 900) / 1500 * 3 - 1, atol=1e-5)
    np.testing.assert_allclose(image[1], zscored(pet), rtol=1e-4, atol=1e-5)


def test_2d_zscore_replaces_the_0_255_scaling_and_the_default_keeps_it(tmp_path: Path) -> None:
    from monai.transforms import Compose

    from medseg.transforms.image_2d import preprocessing

    rgb = (np.arange(8 * 8 * 3).reshape(8, 8, 3) * 2).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a_0000.png")
    planar = rgb.transpose(2, 1, 0).astype(np.float32)  # MONAI's PIL reader: channel first, (width, height)
    for intensity, expected in (
        ({"kind": "zscore"}, np.stack([zscored(c) for c in planar])),
        ({}, planar / 255.0),
    ):
        cfg = PipelineConfig(name="t", preprocessing={"spatial_size": [8, 8], "intensity": intensity})
        image = Compose(preprocessing(transform_settings(cfg), keys=("image",)))(
            {"image": str(tmp_path / "a_0000.png")}
        )
        np.testing.assert_allclose(np.asarray(image["image"]), expected, rtol=1e-4, atol=1e-5)

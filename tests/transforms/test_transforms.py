"""Augmentation moves image and mask together; preprocessing binarises and resizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medseg.config.schema import PipelineConfig
from medseg.config.settings import transform_settings
from medseg.transforms import inference_transforms, train_transforms, validation_transforms
from tests.helpers.data import write_pair


@pytest.fixture
def marked_pair(tmp_path: Path) -> dict[str, str]:
    """An image whose red channel is exactly the (asymmetric) mask, so misalignment is measurable."""
    mask = np.zeros((60, 80), np.uint8)
    mask[10:30, 15:60] = 255
    mask[30:50, 15:25] = 255  # an L shape: flips and rotations change it
    image = np.zeros((60, 80, 3), np.uint8)
    image[..., 0] = mask
    image[..., 1] = 90
    write_pair(tmp_path, "case", image, mask)
    return {"image": str(tmp_path / "images" / "case.png"), "label": str(tmp_path / "masks" / "case.png")}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_validation_transforms_binarise_and_resize(marked_pair: dict[str, str]) -> None:
    cfg = PipelineConfig(name="t", preprocessing={"spatial_size": [32, 48]})
    out = validation_transforms(transform_settings(cfg))(marked_pair)
    # spatial_size is (height, width); MONAI's PIL reader holds images as (width, height) arrays
    assert tuple(out["image"].shape) == (3, 48, 32)
    assert tuple(out["label"].shape) == (1, 48, 32)
    assert set(np.unique(out["label"].numpy())) == {0.0, 1.0}
    assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0


@pytest.mark.parametrize("seed", range(8))
def test_geometric_augmentation_keeps_image_and_mask_aligned(marked_pair: dict[str, str], seed: int) -> None:
    aug = {
        "flip_prob": 1.0,
        "rotate90_prob": 1.0,
        "affine_prob": 1.0,
        "rotate_degrees": 40,
        "scale_range": 0.2,
        "color_prob": 0.0,
        "noise_prob": 0.0,
    }
    cfg = PipelineConfig(name="t", preprocessing={"spatial_size": [64, 64]}, augmentation=aug)
    transform = train_transforms(transform_settings(cfg))
    transform.set_random_state(seed=seed)
    out = transform(marked_pair)
    red = out["image"][0].numpy() > 0.5
    label = out["label"][0].numpy() > 0.5
    assert label.sum() > 100
    assert _dice(red, label) > 0.95


def test_augmentation_changes_the_image(marked_pair: dict[str, str]) -> None:
    cfg = PipelineConfig(
        name="t",
        preprocessing={"spatial_size": [64, 64]},
        augmentation={"flip_prob": 1.0, "rotate90_prob": 0.0, "affine_prob": 0.0},
    )
    flipped = train_transforms(transform_settings(cfg))(marked_pair)["label"][0].numpy()
    plain = validation_transforms(transform_settings(cfg))(marked_pair)["label"][0].numpy()
    np.testing.assert_array_equal(flipped, plain[::-1, ::-1])


def test_inference_transforms_record_the_original_size(marked_pair: dict[str, str]) -> None:
    cfg = PipelineConfig(name="t", preprocessing={"spatial_size": [32, 32]})
    out = inference_transforms(transform_settings(cfg))({"image": marked_pair["image"]})
    assert tuple(out["image"].shape) == (3, 32, 32)
    assert [int(v) for v in out["image"].meta["spatial_shape"]] == [80, 60]  # PIL order: width, height


def test_mri_crop_finds_the_brain_on_a_constant_non_zero_background() -> None:
    """Pre-normalised MRI (BraTS derivatives) has a constant non-zero background, e.g. -3.8."""
    from medseg.transforms.volume_3d import nonbackground

    brain = torch.zeros(20, 18, 16, dtype=torch.bool)
    brain[5:15, 4:12, 3:13] = True
    normalised = torch.where(brain, torch.randn(20, 18, 16), torch.tensor(-3.8))
    raw = torch.where(brain, torch.rand(20, 18, 16) + 1, torch.tensor(0.0))
    masks = nonbackground(torch.stack([normalised, raw]))
    assert masks.shape == (2, 20, 18, 16)
    assert torch.equal(masks[0], brain) and torch.equal(masks[1], brain)
    noisy = torch.randn(1, 20, 18, 16)  # corners differ: no constant background, every non-zero voxel counts
    assert torch.equal(nonbackground(noisy)[0], noisy[0] != 0)


def test_augmentation_runs_untracked_and_puts_tracking_back(marked_pair: dict[str, str]) -> None:
    from monai.data import MetaTensor, get_track_meta

    cfg = PipelineConfig(name="t", preprocessing={"spatial_size": [64, 64]}, augmentation={"affine_prob": 1.0})
    transform = train_transforms(transform_settings(cfg))
    transform.set_random_state(seed=0)
    first = transform(marked_pair)
    assert not isinstance(first["image"], MetaTensor) and not isinstance(first["label"], MetaTensor)
    assert get_track_meta()  # inference (Invertd) needs it on again
    assert isinstance(
        inference_transforms(transform_settings(cfg))({"image": marked_pair["image"]})["image"], MetaTensor
    )
    transform.set_random_state(seed=0)  # seeding still reaches the nested random transforms
    np.testing.assert_array_equal(transform(marked_pair)["image"].numpy(), first["image"].numpy())


def test_shades_of_gray_balances_a_colour_cast(tmp_path: Path) -> None:
    from medseg.config.loading import load_config
    from medseg.core.errors import ConfigError
    from medseg.transforms.image_2d import ShadesOfGrayd
    from tests.helpers.paths import REPO

    colour = ["preprocessing.color_constancy=shades_of_gray"]

    rng = np.random.default_rng(0)
    scene = rng.uniform(0.1, 0.6, (1, 40, 50))
    cast = torch.as_tensor(np.concatenate([scene * 1.5, scene, scene * 0.7]), dtype=torch.float32)  # a warm light
    balanced = ShadesOfGrayd("image", power=6.0)({"image": cast})["image"]
    power_means = balanced.flatten(1).pow(6).mean(1).pow(1 / 6)
    torch.testing.assert_close(power_means, power_means.mean().expand(3), rtol=1e-4, atol=0)  # a grey illuminant
    torch.testing.assert_close(balanced[1] / balanced[0], torch.ones(40, 50), rtol=1e-4, atol=0)  # channels alike
    grey = torch.as_tensor(np.concatenate([scene] * 3), dtype=torch.float32)
    torch.testing.assert_close(ShadesOfGrayd("image", 6.0)({"image": grey})["image"], grey)  # nothing to correct
    write_pair(tmp_path, "case", (cast.permute(1, 2, 0).numpy() * 255).astype(np.uint8), np.zeros((40, 50), np.uint8))
    pair = {"image": str(tmp_path / "images" / "case.png"), "label": str(tmp_path / "masks" / "case.png")}
    cfg = PipelineConfig(name="t", preprocessing={"spatial_size": [40, 50], "color_constancy": "shades_of_gray"})
    red, green, blue = (
        validation_transforms(transform_settings(cfg))(pair)["image"].flatten(1).pow(6).mean(1).pow(1 / 6).tolist()
    )
    assert red == pytest.approx(green, rel=0.02) and blue == pytest.approx(green, rel=0.02)
    with pytest.raises(ConfigError, match="preprocessing.color_constancy: shades_of_gray needs 2D RGB images"):
        load_config(REPO / "pipelines" / "skin_lesion.yaml", ["model.in_channels=1", *colour])


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_mask_stored_as_rgb_trains_like_its_grey_channel(tmp_path: Path, marked_pair, suffix: str) -> None:
    """Kvasir-SEG's masks: RGB with equal channels, JPEG-compressed; the label is still one channel of 0/1."""
    grey = np.asarray(Image.open(marked_pair["label"]))
    rgb_mask = tmp_path / f"rgb_mask{suffix}"
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(rgb_mask)
    cfg = PipelineConfig(name="t", preprocessing={"spatial_size": [60, 80]})
    plain = validation_transforms(transform_settings(cfg))(marked_pair)["label"]
    from_rgb = validation_transforms(transform_settings(cfg))({**marked_pair, "label": str(rgb_mask)})["label"]
    assert tuple(from_rgb.shape) == tuple(plain.shape) == (1, 80, 60)
    assert set(np.unique(from_rgb.numpy())) <= {0.0, 1.0}
    assert float((from_rgb == plain).float().mean()) > 0.99  # JPEG may move an edge pixel

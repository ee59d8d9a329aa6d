"""Tests for the synthetic dermoscopy dataset generator."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from skimage.measure import label, regionprops

from medseg.data.synthetic import GENERATOR_VERSION, generate_dermoscopy_dataset, synthesize_case

SIZE = (96, 128)


def _cases(seed: int, n: int, size: tuple[int, int] = SIZE) -> list[tuple[np.ndarray, np.ndarray]]:
    return [synthesize_case(np.random.default_rng(c), size) for c in np.random.SeedSequence(seed).spawn(n)]


@pytest.fixture(scope="module")
def cases40() -> list[tuple[np.ndarray, np.ndarray]]:
    return _cases(0, 40, (192, 256))


def test_same_seed_identical_different_seed_differs() -> None:
    a_img, a_mask = synthesize_case(np.random.default_rng(7), SIZE)
    b_img, b_mask = synthesize_case(np.random.default_rng(7), SIZE)
    c_img, c_mask = synthesize_case(np.random.default_rng(8), SIZE)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_mask, c_mask)


def test_shapes_dtypes_and_fraction(cases40: list[tuple[np.ndarray, np.ndarray]]) -> None:
    fractions = []
    for image, mask in cases40:
        assert image.shape == (192, 256, 3) and image.dtype == np.uint8
        assert mask.shape == (192, 256) and mask.dtype == np.bool_
        fractions.append(mask.mean())
    fractions = np.array(fractions)
    assert np.all(fractions > 0.03) and np.all(fractions < 0.7), fractions
    # sizes actually vary across cases
    assert fractions.max() - fractions.min() > 0.15


def test_non_square_size() -> None:
    image, mask = synthesize_case(np.random.default_rng(3), (80, 200))
    assert image.shape == (80, 200, 3) and mask.shape == (80, 200)
    assert 0.03 < mask.mean() < 0.7


def test_lesion_darker_than_skin(cases40: list[tuple[np.ndarray, np.ndarray]]) -> None:
    ratios = []
    for image, mask in cases40:
        gray = image.astype(np.float64).mean(axis=2)
        assert gray[mask].mean() < gray[~mask].mean()
        ratios.append(gray[mask].mean() / gray[~mask].mean())
    assert np.mean(ratios) < 0.8  # clearly darker on average, not just marginally


def test_mask_single_component_without_holes(cases40: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for _, mask in cases40:
        assert label(mask, connectivity=1).max() == 1
        np.testing.assert_array_equal(ndi.binary_fill_holes(mask), mask)


def test_images_vary_between_cases(cases40: list[tuple[np.ndarray, np.ndarray]]) -> None:
    skin_means = [image[~mask].reshape(-1, 3).mean(axis=0) for image, mask in cases40]
    assert np.ptp(np.array(skin_means)[:, 0]) > 10  # skin tone varies per case
    # boundary is irregular: clearly less convex than an ellipse (solidity 1.0)
    solidity = [regionprops(mask.astype(np.uint8))[0].solidity for _, mask in cases40]
    assert np.median(solidity) < 0.97


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_dataset_layout_and_reuse(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    assert generate_dermoscopy_dataset(out, num_cases=5, image_size=SIZE, seed=1) == out

    images = sorted((out / "images").glob("*.png"))
    masks = sorted((out / "masks").glob("*.png"))
    assert [p.name for p in images] == [f"synth_{i:03d}.png" for i in range(5)]
    assert [p.name for p in masks] == [p.name for p in images]
    for ip, mp in zip(images, masks, strict=True):
        with Image.open(ip) as im, Image.open(mp) as mk:
            assert im.mode == "RGB" and mk.mode == "L"
            assert im.size == mk.size == (SIZE[1], SIZE[0])
            values = set(np.unique(np.asarray(mk)).tolist())
            assert values == {0, 255}

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_cases"] == 5
    assert manifest["image_size"] == list(SIZE)
    assert manifest["seed"] == 1
    assert manifest["version"] == GENERATOR_VERSION

    # the written case equals the in-memory generator for the same per-case seed
    img0, mask0 = _cases(1, 1)[0]
    np.testing.assert_array_equal(np.asarray(Image.open(images[0])), img0)
    np.testing.assert_array_equal(np.asarray(Image.open(masks[0])) == 255, mask0)

    before = _snapshot(out)
    time.sleep(0.02)
    generate_dermoscopy_dataset(out, num_cases=5, image_size=SIZE, seed=1)
    assert _snapshot(out) == before  # reused, nothing rewritten

    generate_dermoscopy_dataset(out, num_cases=3, image_size=SIZE, seed=1)
    assert len(list((out / "images").glob("*.png"))) == 3
    assert len(list((out / "masks").glob("*.png"))) == 3
    assert json.loads((out / "manifest.json").read_text())["num_cases"] == 3

    # no temporary / backup folders left next to the dataset
    assert sorted(os.listdir(tmp_path)) == ["synth"]


def test_generate_dataset_byte_identical(tmp_path: Path) -> None:
    a = generate_dermoscopy_dataset(tmp_path / "a", num_cases=3, image_size=SIZE, seed=4)
    b = generate_dermoscopy_dataset(tmp_path / "b", num_cases=3, image_size=SIZE, seed=4)
    c = generate_dermoscopy_dataset(tmp_path / "c", num_cases=3, image_size=SIZE, seed=5)
    for sub in ("images", "masks"):
        for p in sorted((a / sub).glob("*.png")):
            assert p.read_bytes() == (b / sub / p.name).read_bytes()
    assert (a / "images" / "synth_000.png").read_bytes() != (c / "images" / "synth_000.png").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c"]


def test_rebuilds_incomplete_dataset(tmp_path: Path) -> None:
    out = generate_dermoscopy_dataset(tmp_path / "synth", num_cases=3, image_size=SIZE, seed=0)
    (out / "masks" / "synth_001.png").unlink()
    generate_dermoscopy_dataset(out, num_cases=3, image_size=SIZE, seed=0)
    assert (out / "masks" / "synth_001.png").is_file()
    assert sorted(os.listdir(tmp_path)) == ["synth"]


def test_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_dermoscopy_dataset(out, num_cases=2, image_size=SIZE)
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["mine"]


def test_invalid_num_cases(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_dermoscopy_dataset(tmp_path / "x", num_cases=0)

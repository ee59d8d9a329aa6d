"""Instances (``medseg predict --instances``): synthetic label maps with a known number of separate and touching
blobs give exact counts, sizes, boxes and world centroids; the batch writes the instance map on the mask's grid,
a row per instance in ``statistics.csv`` and overlays with outlines and ids; a regions model is refused before anything
is written."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from skimage.draw import disk
from typer.testing import CliRunner

from medseg.config.schema import PipelineConfig
from medseg.config.settings import inference_settings, output_settings
from medseg.core.errors import ConfigError
from medseg.infer.predictor import Predictor
from medseg.labels import Label
from medseg.outputs.batch import Outputs, predict_folder
from medseg.outputs.instances import Instances, find_instances
from medseg.outputs.statistics import structure_statistics
from medseg.outputs.visualize import PREDICTION_COLOUR
from tests.helpers.models import TINY_UNET_ARGS, ThresholdNet, ct_threshold_predictor

LESION = Label(1, "lesion", (0, 0, 255))
NODULE = Label(2, "nodule", (255, 255, 0))


def instance_rows(
    case: str, found: Instances, labels: list[Label], affine: np.ndarray | None = None
) -> list[dict[str, object]]:
    """The statistics rows of the instances alone (the per-label rows have no instance id)."""
    rows = structure_statistics(case, found.ids > 0, labels, None, [], affine, found)
    return [row for row in rows if row["instance"] != ""]


def table_rows(path: Path) -> list[dict[str, str]]:
    """The instance rows of a statistics.csv."""
    return [row for row in csv.DictReader(path.open()) if row["instance"]]


def disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[disk(centre, radius, shape=shape)] = True
    return mask


def ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius_mm: float, spacing) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    offsets = [(g - c) * s for g, c, s in zip(grid, centre, spacing, strict=True)]
    return sum(o**2 for o in offsets) <= radius_mm**2


def test_separate_blobs_are_counted_and_measured_one_by_one() -> None:
    """Three discs of label 1, a square of label 2 and a 4-pixel speck: four instances, the speck dropped."""
    shape = (60, 80)
    discs = [disc(shape, (12, 12), 6), disc(shape, (40, 20), 8), disc(shape, (15, 60), 5)]
    labels_map = np.zeros(shape, np.uint8)
    for mask in discs:
        labels_map[mask] = 1
    labels_map[40:50, 50:62] = 2
    labels_map[55:57, 75:77] = 1  # 4 pixels, under the minimum size
    found = find_instances(labels_map, [1, 2], min_size=10)
    assert (found.count, found.dropped, found.owners) == (4, 1, (1, 1, 1, 2))
    assert found.ids.dtype == np.uint16 and found.ids.shape == shape
    assert found.ids[56, 76] == 0, "the speck is left out of the map"
    rows = instance_rows("case", found, [LESION, NODULE])
    assert [r["voxels"] for r in rows] == [int(discs[0].sum()), int(discs[2].sum()), int(discs[1].sum()), 120]
    assert [(r["label"], r["instance"]) for r in rows] == [("lesion", 1), ("lesion", 2), ("lesion", 3), ("nodule", 4)]
    square = rows[3]
    assert (square["bbox_min_row"], square["bbox_min_col"], square["bbox_max_row"], square["bbox_max_col"]) == (
        40,
        50,
        49,
        61,
    )
    assert (square["centroid_row"], square["centroid_col"], square["touches_border"]) == (44.5, 55.5, False)
    assert (rows[1]["centroid_row"], rows[1]["centroid_col"]) == (15.0, 60.0)
    assert find_instances(labels_map, [1, 2], min_size=0).count == 5


def test_touching_discs_are_one_instance_unless_split() -> None:
    shape = (50, 70)
    left, right = disc(shape, (25, 22), 11), disc(shape, (25, 42), 11)  # centres 20 px apart: they overlap
    labels_map = (left | right).astype(np.uint8)
    assert find_instances(labels_map, [1]).count == 1
    split = find_instances(labels_map, [1], split_touching=True)
    assert split.count == 2
    assert np.array_equal(split.ids > 0, labels_map > 0), "the watershed keeps every pixel"
    assert split.ids[25, 15] != split.ids[25, 50]
    sizes = np.bincount(split.ids.ravel())[1:]
    assert abs(int(sizes[0]) - int(sizes[1])) <= 0.05 * sizes.sum(), "cut near the middle"
    lone = disc(shape, (25, 30), 12).astype(np.uint8)
    assert find_instances(lone, [1], split_touching=True).count == 1, "a single disc is not cut"
    bar = np.zeros((40, 90), np.uint8)
    bar[15:25, 10:80] = 1  # a 10 x 70 bar: a flat ridge of distance maxima, one object
    assert find_instances(bar, [1], split_touching=True).count == 1, "an elongated object is not cut"
    capsule = (disc((40, 90), (20, 20), 8) | disc((40, 90), (20, 70), 8)).astype(np.uint8)
    capsule[13:28, 20:70] = 1  # two round ends joined by a bar as wide as they are
    assert find_instances(capsule, [1], split_touching=True).count == 1


def test_3d_instances_in_world_coordinates_with_an_oblique_anisotropic_affine() -> None:
    spacing = (0.8, 1.2, 2.5)
    angle = np.radians(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = (-40.0, 12.0, 7.5)
    labels_map = np.zeros((30, 24, 12), np.uint8)
    labels_map[2:6, 3:9, 1:4] = 1  # 4 x 6 x 3 voxels
    labels_map[20:28, 10:14, 5:11] = 1  # 8 x 4 x 6
    labels_map[12, 20, 0] = 1  # one voxel: dropped
    found = find_instances(labels_map, [1], min_size=10, spacing=spacing)
    assert (found.count, found.dropped) == (2, 1)
    rows = instance_rows("ct", found, [LESION], affine)
    first, second = rows
    voxel_mm3 = 0.8 * 1.2 * 2.5
    assert (first["voxels"], second["voxels"]) == (72, 192)
    assert first["volume_ml"] == pytest.approx(72 * voxel_mm3 / 1000, abs=1e-4)
    assert second["volume_ml"] == pytest.approx(192 * voxel_mm3 / 1000, abs=1e-4)
    corners = np.array(
        [
            [lo if bit == 0 else hi for lo, hi, bit in zip((2, 3, 1), (5, 8, 3), bits, strict=True)]
            for bits in np.ndindex(2, 2, 2)
        ]
    )
    world = corners @ affine[:3, :3].T + affine[:3, 3]  # the box in RAS mm, over the index box's corners
    box = [first[f"bbox_{e}_{a}"] for e in ("min", "max") for a in "xyz"]
    assert box == pytest.approx([*world.min(axis=0), *world.max(axis=0)], abs=1e-3)
    expected = affine @ np.array([3.5, 5.5, 2.0, 1.0])
    assert [first[f"centroid_{a}"] for a in "xyz"] == pytest.approx(expected[:3].tolist(), abs=1e-3)
    assert first["touches_border"] is False


def test_3d_touching_balls_split_with_physical_spacing() -> None:
    spacing = (1.0, 1.0, 2.0)
    shape = (40, 24, 14)
    balls = ball(shape, (12, 12, 7), 7.0, spacing) | ball(shape, (25, 12, 7), 7.0, spacing)
    labels_map = balls.astype(np.uint8)
    assert find_instances(labels_map, [1], spacing=spacing).count == 1
    assert find_instances(labels_map, [1], split_touching=True, spacing=spacing).count == 2


@pytest.fixture
def two_blob_scan(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A CT volume with two blocks of 150 HU and a 2-voxel speck, on an anisotropic grid with an offset origin."""
    volume = np.full((20, 18, 12), -500, np.int16)
    volume[2:7, 3:9, 2:6] = 150
    volume[12:18, 10:16, 5:10] = 150
    volume[0, 17, 0:2] = 150
    affine = np.diag([0.9, 1.1, 2.0, 1.0])
    affine[:3, 3] = (-20.0, 10.0, 35.0)
    folder = tmp_path / "scans"
    folder.mkdir()
    nib.save(nib.Nifti1Image(volume, affine), folder / "scan.nii.gz")
    return folder, affine


def test_the_batch_writes_an_instance_map_and_a_statistics_row_per_instance(
    two_blob_scan: tuple[Path, np.ndarray], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder, affine = two_blob_scan
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="medseg.outputs.instances"):
        report = predict_folder(ct_threshold_predictor(), folder, out, Outputs(instances=True))
    assert report.written == ["scan"]
    assert "scan: 2 instance(s); 1 under 10 voxels dropped" in caplog.text
    written = nib.load(out / "instances" / "scan.nii.gz")
    ids = np.asarray(written.dataobj)
    assert written.get_data_dtype() == np.uint16 and np.allclose(written.affine, affine)
    assert set(np.unique(ids)) == {0, 1, 2} and ids[4, 5, 3] == 1 and ids[15, 12, 7] == 2 and ids[0, 17, 0] == 0
    table = list(csv.DictReader((out / "statistics.csv").open()))
    assert [(r["label"], r["instance"], r["components"]) for r in table][0] == ("liver", "", "3"), "per label first"
    rows = table_rows(out / "statistics.csv")
    assert [(r["case"], r["label"], r["instance"], r["voxels"]) for r in rows] == [
        ("scan", "liver", "1", "120"),
        ("scan", "liver", "2", "180"),
    ]
    centroid = affine @ np.array([14.5, 12.5, 7.0, 1.0])
    assert [float(rows[1][f"centroid_{a}"]) for a in "xyz"] == pytest.approx(centroid[:3].tolist())
    assert float(rows[0]["volume_ml"]) == pytest.approx(120 * 0.9 * 1.1 * 2.0 / 1000, abs=1e-4)
    mean = next(key for key in rows[0] if key.startswith("mean_"))  # the one channel's
    assert float(rows[0][mean]) == pytest.approx(150.0), "the instance's own intensities"


def test_a_resumed_batch_adds_the_instances_to_cases_segmented_without_them(
    two_blob_scan: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    folder, _ = two_blob_scan
    out = tmp_path / "out"
    predict_folder(ct_threshold_predictor(), folder, out, Outputs())
    assert not (out / "instances").exists()
    again = predict_folder(ct_threshold_predictor(), folder, out, Outputs(instances=True))
    assert again.written == ["scan"], "the case lacked its instance map, so it is not skipped"
    assert (out / "instances" / "scan.nii.gz").is_file() and len(table_rows(out / "statistics.csv")) == 2
    third = predict_folder(ct_threshold_predictor(), folder, out, Outputs(instances=True))
    assert third.written == [] and len(table_rows(out / "statistics.csv")) == 2, "done: skipped, rows kept"


def test_2d_overlay_draws_instance_outlines_and_ids(tmp_path: Path) -> None:
    """Two touching discs: one instance without --split-touching, two with it; the overlay differs from the one
    without instances."""
    picture = np.zeros((64, 64, 3), np.uint8)
    picture[disc((64, 64), (32, 20), 11) | disc((64, 64), (32, 40), 11)] = 220
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(picture).save(images / "a.png")
    cfg = PipelineConfig(
        name="d2",
        preprocessing={"spatial_size": [64, 64]},
        postprocessing={"mode": "off"},
        data={"labels": {1: {"name": "lesion", "color": [0, 0, 255]}}},
    )
    predictor = Predictor(ThresholdNet((0.5,)), inference_settings(cfg))
    for name, outputs in {
        "plain": Outputs(),
        "whole": Outputs(instances=True),
        "split": Outputs(instances=True, split_touching=True),
    }.items():
        predict_folder(predictor, images, tmp_path / name, outputs)
    split = np.asarray(Image.open(tmp_path / "split" / "instances" / "a.png"))
    assert split.dtype == np.uint16 and set(np.unique(split)) == {0, 1, 2}
    assert len(table_rows(tmp_path / "whole" / "statistics.csv")) == 1
    assert len(table_rows(tmp_path / "split" / "statistics.csv")) == 2
    plain, drawn = (np.asarray(Image.open(tmp_path / n / "overlays" / "a.png")) for n in ("plain", "split"))
    assert plain.shape == drawn.shape and not np.array_equal(plain, drawn)
    cut = (slice(30, 34), slice(28, 33))
    assert (drawn[cut] == PREDICTION_COLOUR).all(axis=-1).any(), "the cut between the discs is outlined"
    assert not (plain[cut] == PREDICTION_COLOUR).all(axis=-1).any(), "without instances the union has no cut"
    assert (drawn[26:38, 15:30] == 255).all(axis=-1).any(), "an id written in white at a centroid"


def test_yaml_prediction_instances_reach_the_outputs() -> None:
    cfg = PipelineConfig(name="y", prediction={"instances": True, "split_touching": True, "min_instance_size": 3})
    outputs = output_settings(cfg)
    assert (outputs.instances, outputs.split_touching, outputs.min_instance_size) == (True, True, 3)


def test_split_touching_alone_is_refused(two_blob_scan: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    folder, _ = two_blob_scan
    with pytest.raises(ConfigError, match=r"^--split-touching \(prediction.split_touching\): needs --instances"):
        predict_folder(ct_threshold_predictor(), folder, tmp_path / "out", Outputs(split_touching=True))
    assert not (tmp_path / "out").exists()


def _regions_checkpoint(path: Path) -> Path:
    """A tiny 3D UNet checkpoint of a regions model (whole = labels 1 and 2, core = label 2)."""
    from medseg.models.checkpoint import save_checkpoint
    from medseg.models.registry import build_network

    cfg = PipelineConfig(
        name="regions",
        spatial_dims=3,
        stages=["predict"],
        model={"in_channels": 1, "out_channels": 2, "args": TINY_UNET_ARGS, "checkpoint": "unused.pt"},
        preprocessing={"patch_size": [16, 16, 16], "intensity": {"kind": "ct"}},
        inference={"backend": "torch"},
        postprocessing={"mode": "off"},
        data={"regions": {"whole": [1, 2], "core": [2]}, "region_order": ["whole", "core"]},
    )
    network = build_network("unet", 3, 1, 2, TINY_UNET_ARGS)
    spec = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "args": TINY_UNET_ARGS}
    save_checkpoint(path, {"state_dict": network.state_dict(), "network": spec, "config": cfg.to_dict(), "epoch": 1})
    return path


def test_instances_of_a_regions_model_are_refused_on_the_cli(
    two_blob_scan: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    from medseg.cli.app import app

    folder, _ = two_blob_scan
    checkpoint = _regions_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["predict", "-m", str(checkpoint), "-i", str(folder), "-o", str(out), "--instances"]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--instances (prediction.instances): this model predicts overlapping regions" in lines[0]
    assert not out.exists(), "nothing written"


def test_a_regions_pipeline_asking_for_instances_is_refused_when_read() -> None:
    from medseg.config.loading import load_config

    regions = Path(__file__).resolve().parents[2] / "pipelines" / "brain_tumor_regions.yaml"
    with pytest.raises(ConfigError, match=r"prediction.instances: this pipeline predicts overlapping regions"):
        load_config(regions, ["prediction.instances=true"])
    assert not load_config(regions).prediction.instances

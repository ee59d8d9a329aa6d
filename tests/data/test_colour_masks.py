"""Colour-coded 2D masks (``data.label_colors`` or CVAT's ``labelmap.txt``) read as cached index masks, and CVAT's
"Segmentation mask 1.1" export as the ``cvat_masks`` layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medseg.config.schema import DataConfig, PipelineConfig
from medseg.config.settings import data_settings
from medseg.core.errors import DataError
from medseg.data.check import check_dataset
from medseg.data.discovery import find_cases
from medseg.data.layouts.base import LayoutSettings
from medseg.data.layouts.colour_masks import read_labelmap
from medseg.data.layouts.registry import choose_layout
from medseg.data.records import Finding

RED, GREEN = (255, 0, 0), (0, 255, 0)
#: CVAT's labelmap.txt as its Segmentation mask 1.1 export writes it
LABELMAP = "# label:color_rgb:parts:actions\nbackground:0,0,0::\npolyp:255,0,0::\ninstrument:0,255,0::\n"
#: the index masks of cases a and b: 0 background, 1 polyp (red), 2 instrument (green)
EXPECTED = {
    "a": np.array([[0, 0, 1, 1], [0, 2, 2, 1], [0, 0, 0, 0]], np.uint8),
    "b": np.array([[1, 1, 1, 0], [0, 0, 0, 0], [2, 2, 0, 0]], np.uint8),
}
PALETTE = np.array([(0, 0, 0), RED, GREEN], np.uint8)


def _settings(cache: Path, **data: Any):
    model = {"in_channels": 3, "out_channels": 3 if "label_mapping" in data else 1}
    return data_settings(PipelineConfig(name="t", spatial_dims=2, model=model, data={"cache_dir": str(cache), **data}))


def _colour_mask(path: Path, index: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(PALETTE[index]).save(path)


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((3, 4, 3), value, np.uint8)).save(path)


def _folders(root: Path) -> None:
    for n, case in enumerate(EXPECTED):
        _image(root / "images" / f"{case}.jpg", 40 + n)
        _colour_mask(root / "masks" / f"{case}.png", EXPECTED[case])


def _labels_of(records: list[dict]) -> dict[str, np.ndarray]:
    return {r["id"]: np.asarray(Image.open(r["label"])) for r in records}


def test_the_cvat_labelmap_is_read_as_cvat_writes_it(tmp_path: Path) -> None:
    (tmp_path / "labelmap.txt").write_text(LABELMAP)
    assert read_labelmap(tmp_path / "labelmap.txt") == {"background": (0, 0, 0), "polyp": RED, "instrument": GREEN}


@pytest.mark.parametrize("table", ["config", "labelmap"])
def test_colour_masks_become_cached_index_masks_once(tmp_path: Path, table: str) -> None:
    root, cache = tmp_path / "ds", tmp_path / "cache"
    _folders(root)
    data: dict[str, Any] = {}
    if table == "config":
        data["label_colors"] = {"background": [0, 0, 0], "polyp": list(RED), "instrument": list(GREEN)}
    else:
        (root / "labelmap.txt").write_text(LABELMAP)
    cases = find_cases(_settings(cache, **data), root)
    assert [r["id"] for r in cases.records] == ["a", "b"]
    assert all(Path(r["label"]).parent.parent == cache / "masks" for r in cases.records)
    labels = _labels_of(cases.records)
    for case, expected in EXPECTED.items():
        np.testing.assert_array_equal(labels[case], expected)
    assert cases.resolved["data.labels"] == {1: "polyp", 2: "instrument"}
    written = {r["label"]: Path(r["label"]).stat().st_mtime_ns for r in cases.records}
    again = find_cases(_settings(cache, **data), root)
    assert again.records == cases.records
    assert {r["label"]: Path(r["label"]).stat().st_mtime_ns for r in again.records} == written  # not redrawn
    report = check_dataset(_settings(cache, label_mapping={1: 1, 2: 2}, **data), root)
    assert report.findings == [] and report.resolved["data.labels"] == {1: "polyp", 2: "instrument"}


def test_data_labels_give_the_values_by_name_and_black_is_background_unlisted(tmp_path: Path) -> None:
    root, cache = tmp_path / "ds", tmp_path / "cache"
    _folders(root)
    colours = {"instrument": list(GREEN), "polyp": list(RED)}  # no background entry: black is 0
    named = {"labels": {1: "polyp", 2: "instrument"}, "label_mapping": {1: 1, 2: 2}}
    records = find_cases(_settings(cache, label_colors=colours, **named), root).records
    labels = _labels_of(records)
    for case, expected in EXPECTED.items():
        np.testing.assert_array_equal(labels[case], expected)
    swapped = _labels_of(find_cases(_settings(cache, label_colors=colours), root).records)  # 1, 2 in table order
    np.testing.assert_array_equal(swapped["a"], np.array([[0, 0, 2, 2], [0, 1, 1, 2], [0, 0, 0, 0]]))


def test_a_colour_the_table_does_not_list_is_one_error_naming_file_colour_and_pixels(tmp_path: Path) -> None:
    root, cache = tmp_path / "ds", tmp_path / "cache"
    _folders(root)
    (root / "labelmap.txt").write_text(LABELMAP)
    mask = root / "masks" / "b.png"
    pixels = PALETTE[EXPECTED["b"]].copy()
    pixels[2, 2:4] = (0, 0, 255)
    pixels[1, 0] = (9, 9, 9)
    Image.fromarray(pixels).save(mask)
    findings: list[Finding] = []
    cases = find_cases(_settings(cache), root, findings)
    assert [r["id"] for r in cases.records] == ["a"]
    unlisted = f"colour 0,0,255 that {root / 'labelmap.txt'} does not list (and 1 more unlisted colour(s))"
    message = f"{mask}: 2 pixel(s) of {unlisted}"
    assert findings == [Finding("error", "b", "unknown colour", message, str(mask))]
    with pytest.raises(DataError) as info:
        find_cases(_settings(cache), root)
    assert str(info.value) == message
    assert check_dataset(_settings(cache), root).bad_cases == ["b"]


def test_a_table_naming_a_label_data_labels_lacks_or_one_colour_twice_is_refused(tmp_path: Path) -> None:
    root, cache = tmp_path / "ds", tmp_path / "cache"
    _folders(root)
    mapped = {"label_mapping": {1: 1, 2: 2}}
    with pytest.raises(DataError) as info:
        find_cases(_settings(cache, label_colors={"polyp": list(RED)}, labels={1: "lesion", 2: "x"}, **mapped), root)
    assert str(info.value) == "data.label_colors: label 'polyp' is not in data.labels (known: lesion, x)"
    with pytest.raises(DataError) as info:
        find_cases(_settings(cache, label_colors={"polyp": [300, 0, 0]}), root)
    assert str(info.value) == "data.label_colors.polyp: colour must be r,g,b with values 0-255, got 300,0,0"
    (root / "labelmap.txt").write_text(LABELMAP + "tumour:255,0,0::\n")
    with pytest.raises(DataError) as info:
        find_cases(_settings(cache), root)
    assert str(info.value) == f"{root / 'labelmap.txt'}: colour 255,0,0 is given to both 'polyp' and 'tumour'"


# --------------------------------------------------------------------------------------------------
# CVAT Segmentation mask 1.1
# --------------------------------------------------------------------------------------------------


def _cvat_export(root: Path) -> None:
    """As CVAT exports a task "with images": labelmap.txt, ImageSets, SegmentationClass, SegmentationObject,
    JPEGImages; c is listed but has no class mask."""
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "labelmap.txt").write_text(LABELMAP)
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("b\na\nc\n")
    for n, case in enumerate(EXPECTED):
        _image(root / "JPEGImages" / f"{case}.jpg", 40 + n)
        _colour_mask(root / "SegmentationClass" / f"{case}.png", EXPECTED[case])
        _colour_mask(root / "SegmentationObject" / f"{case}.png", (EXPECTED[case] > 0).astype(np.uint8))
    _image(root / "JPEGImages" / "c.jpg", 9)


def test_a_cvat_segmentation_mask_export_is_detected_and_read(tmp_path: Path) -> None:
    root, cache = tmp_path / "export", tmp_path / "cache"
    _cvat_export(root)
    assert choose_layout(root, LayoutSettings.of(DataConfig(), 2))[0].name == "cvat_masks"
    findings: list[Finding] = []
    cases = find_cases(_settings(cache), root, findings)
    assert cases.layout == "cvat_masks"
    assert [(r["id"], r["image"]) for r in cases.records] == [
        ("b", str(root / "JPEGImages" / "b.jpg")),
        ("a", str(root / "JPEGImages" / "a.jpg")),
    ]
    labels = _labels_of(cases.records)
    for case, expected in EXPECTED.items():
        np.testing.assert_array_equal(labels[case], expected)
    assert cases.resolved["data.labels"] == {1: "polyp", 2: "instrument"}
    missing = root / "SegmentationClass" / "c.png"
    message = f"{missing}: no class mask for image 'c' (left out)"
    assert findings == [Finding("warning", "c", "unlabelled", message, str(missing))]
    report = check_dataset(_settings(cache, label_mapping={1: 1, 2: 2}), root)
    assert report.layout == "cvat_masks" and report.findings == findings


def test_cvat_export_without_images_takes_them_from_data_images_dir(tmp_path: Path) -> None:
    root, cache = tmp_path / "export", tmp_path / "cache"
    _cvat_export(root)
    (root / "JPEGImages").rename(root / "frames")
    (root / "frames" / "a.jpg").unlink()
    findings: list[Finding] = []
    cases = find_cases(_settings(cache, images_dir="frames"), root, findings)
    assert [r["id"] for r in cases.records] == ["b"]
    mask = root / "SegmentationClass" / "a.png"
    looked = f"{root / 'JPEGImages'} or {root / 'frames'}"
    assert Finding("error", "a", "missing image", f"{mask}: no image a.* in {looked}", str(mask)) in findings

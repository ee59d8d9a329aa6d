"""The layout interface: one table of layouts, each detected on a tiny folder of its kind and listing its cases
through the path ``medseg run`` takes, 2D and 3D alike; one error that names the known layouts; and a new layout
that is one class and one table entry."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medseg.config.schema import DataConfig, PipelineConfig
from medseg.config.settings import data_settings
from medseg.core.errors import DataError
from medseg.data.datalist import build_datalist
from medseg.data.discovery import find_cases
from medseg.data.layouts.base import Cases, Layout, LayoutSettings
from medseg.data.layouts.registry import FALLBACK, LAYOUTS, choose_layout, find_in_layout, get_layout
from medseg.data.records import Finding

IDS = ["a", "b"]


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 12, 3), value, np.uint8)).save(path)


def _mask(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((8, 12), np.uint8)
    mask[2:5, 3:7] = 255
    Image.fromarray(mask).save(path)


def _volume(path: Path, value: float, label: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((8, 8, 6), np.float32)
    array[2:5, 2:5, 1:4] = 1.0 if label else value
    nib.save(nib.Nifti1Image(array, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))


# one tiny folder per layout and kind of data: writes cases a and b, returns the data section that finds them


def _folder_2d(root: Path) -> dict[str, Any]:
    for n, case in enumerate(IDS):
        _image(root / "images" / f"{case}.png", 50 + n)
        _mask(root / "masks" / f"{case}_segmentation.png")
    return {}


def _csv_2d(root: Path) -> dict[str, Any]:
    for n, case in enumerate(IDS):
        _image(root / "photos" / f"{case}.jpg", 50 + n)
        _mask(root / "seg" / f"{case}.png")
    (root / "pairs.csv").write_text("image,mask\n" + "".join(f"photos/{c}.jpg,seg/{c}.png\n" for c in IDS))
    return {}


def _msd_2d(root: Path) -> dict[str, Any]:
    for n, case in enumerate(IDS):
        _image(root / "imagesTr" / f"{case}.png", 50 + n)
        _mask(root / "labelsTr" / f"{case}.png")
    training = [{"image": f"./imagesTr/{c}.png", "label": f"./labelsTr/{c}.png"} for c in IDS]
    (root / "dataset.json").write_text(json.dumps({"training": training}))
    return {}


def _csv_3d(root: Path) -> dict[str, Any]:
    for n, case in enumerate(IDS):
        _volume(root / "ct" / f"{case}.nii.gz", 10 + n)
        _volume(root / "seg" / f"{case}.nii.gz", 0, label=True)
    (root / "pairs.csv").write_text("image,label\n" + "".join(f"ct/{c}.nii.gz,seg/{c}.nii.gz\n" for c in IDS))
    return {}


def _msd_3d(root: Path) -> dict[str, Any]:
    for n, case in enumerate(IDS):
        _volume(root / "imagesTr" / f"{case}_ct.nii.gz", 10 + n)
        _volume(root / "labelsTr" / f"{case}.nii.gz", 0, label=True)
    training = [{"image": [f"./imagesTr/{c}_ct.nii.gz"], "label": f"./labelsTr/{c}.nii.gz"} for c in IDS]
    (root / "dataset.json").write_text(json.dumps({"training": training, "modality": {"0": "CT"}}))
    return {}


def _nnunet_3d(root: Path) -> dict[str, Any]:
    for n, case in enumerate(IDS):
        _volume(root / "imagesTr" / f"{case}_0000.nii.gz", 10 + n)
        _volume(root / "labelsTr" / f"{case}.nii.gz", 0, label=True)
    return {}


def _nnunet_2d(root: Path) -> dict[str, Any]:
    """As nnU-Net v2 ships 2D natural images: one RGB ``_0000.png`` per case, three channel_names."""
    for n, case in enumerate(IDS):
        _image(root / "imagesTr" / f"{case}_0000.png", 50 + n)
        _mask(root / "labelsTr" / f"{case}.png")
    description = {
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": len(IDS),
        "file_ending": ".png",
    }
    (root / "dataset.json").write_text(json.dumps(description))
    return {}


SQUARE = [[1.0, 1.0], [9.0, 1.0], [9.0, 6.0], [1.0, 6.0]]  # a polygon inside _image's 12x8 pictures


def _labelme_2d(root: Path) -> dict[str, Any]:
    for n, case in enumerate(IDS):
        _image(root / f"{case}.png", 50 + n)
        shape = {"label": "lesion", "points": SQUARE, "group_id": None, "shape_type": "polygon", "flags": {}}
        document = {"version": "5.4.1", "flags": {}, "shapes": [shape], "imagePath": f"{case}.png", "imageData": None}
        (root / f"{case}.json").write_text(json.dumps(document))
    return {"cache_dir": str(root.parent / "cache")}


def _coco_2d(root: Path) -> dict[str, Any]:
    images = [{"id": n + 1, "file_name": f"{case}.png", "width": 12, "height": 8} for n, case in enumerate(IDS)]
    for n, case in enumerate(IDS):
        _image(root / "images" / f"{case}.png", 50 + n)
    polygon = [coordinate for point in SQUARE for coordinate in point]
    annotations = [
        {"id": n + 1, "image_id": n + 1, "category_id": 1, "segmentation": [polygon], "iscrowd": 0}
        for n in range(len(IDS))
    ]
    categories = [{"id": 1, "name": "lesion", "supercategory": ""}]
    document = {"images": images, "annotations": annotations, "categories": categories}
    (root / "instances.json").write_text(json.dumps(document))
    return {"cache_dir": str(root.parent / "cache")}


def _cvat_2d(root: Path) -> dict[str, Any]:
    points = ";".join(f"{x:.2f},{y:.2f}" for x, y in SQUARE)
    images = "".join(
        f'<image id="{n}" name="{case}.png" width="12" height="8">'
        f'<polygon label="lesion" occluded="0" points="{points}" z_order="0"></polygon></image>'
        for n, case in enumerate(IDS)
    )
    for n, case in enumerate(IDS):
        _image(root / "images" / f"{case}.png", 50 + n)
    (root / "annotations.xml").write_text(f'<?xml version="1.0" encoding="utf-8"?><annotations>{images}</annotations>')
    return {"cache_dir": str(root.parent / "cache")}


def _cvat_masks_2d(root: Path) -> dict[str, Any]:
    """CVAT's Segmentation mask 1.1 export: labelmap.txt, a case list, colour class masks, the images."""
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\nlesion:250,50,83::\n")
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("".join(f"{c}\n" for c in IDS))
    for n, case in enumerate(IDS):
        _image(root / "JPEGImages" / f"{case}.jpg", 50 + n)
        colour = np.zeros((8, 12, 3), np.uint8)
        colour[2:5, 3:7] = (250, 50, 83)
        (root / "SegmentationClass").mkdir(exist_ok=True)
        Image.fromarray(colour).save(root / "SegmentationClass" / f"{case}.png")
    return {"cache_dir": str(root.parent / "cache")}


def _volumes_3d(root: Path) -> dict[str, Any]:
    for n, case in enumerate(IDS):
        _volume(root / "scans" / f"{case}.nii.gz", 10 + n)
        _volume(root / "segmentations" / f"{case}_seg.nii.gz", 0, label=True)
    return {}


def _folders_3d(root: Path) -> dict[str, Any]:
    for n, case in enumerate(IDS):
        _volume(root / "flair" / f"{case}.nii.gz", 10 + n)
        _volume(root / "labelsTr" / f"{case}.nii.gz", 0, label=True)
    return {"modalities": ["flair"]}


def _list_3d(root: Path) -> dict[str, Any]:
    for n, case in enumerate(IDS):
        _volume(root / "scans" / f"{case}-ct.nii.gz", 10 + n)
        _volume(root / "masks" / f"{case}-liver.nii.gz", 0, label=True)
    return {"cases": [{"id": c, "image": [f"scans/{c}-ct.nii.gz"], "label": f"masks/{c}-liver.nii.gz"} for c in IDS]}


EXAMPLES: list[tuple[str, int, Callable[[Path], dict[str, Any]]]] = [
    ("folder", 2, _folder_2d),
    ("csv", 2, _csv_2d),
    ("csv", 3, _csv_3d),
    ("msd", 2, _msd_2d),
    ("msd", 3, _msd_3d),
    ("nnunet", 2, _nnunet_2d),
    ("labelme", 2, _labelme_2d),
    ("coco", 2, _coco_2d),
    ("cvat", 2, _cvat_2d),
    ("cvat_masks", 2, _cvat_masks_2d),
    ("nnunet", 3, _nnunet_3d),
    ("folders", 3, _folders_3d),
    ("list", 3, _list_3d),
    ("volumes", 3, _volumes_3d),
]


def _config(dims: int, data: dict[str, Any]) -> PipelineConfig:
    return PipelineConfig(name="t", spatial_dims=dims, model={"in_channels": 3 if dims == 2 else 1}, data=data)


def test_every_registered_layout_and_kind_of_data_has_an_example() -> None:
    assert {(name, dims) for name, dims, _ in EXAMPLES} == {
        (name, dims) for name, layout in LAYOUTS.items() for dims in layout.spatial_dims
    }


def test_the_schema_accepts_exactly_the_registered_layouts() -> None:
    assert set(get_args(DataConfig.model_fields["layout"].annotation)) == {"auto", *LAYOUTS}


@pytest.mark.parametrize(("name", "dims", "make"), EXAMPLES, ids=[f"{n}-{d}d" for n, d, _ in EXAMPLES])
def test_each_layout_is_detected_on_a_folder_of_its_kind_and_lists_its_cases(
    tmp_path: Path, name: str, dims: int, make: Callable[[Path], dict[str, Any]]
) -> None:
    root = tmp_path / "ds"
    data = make(root)
    settings = LayoutSettings.of(DataConfig(**data), dims)
    layout = get_layout(name)
    assert layout.name == name and layout.detect(root, settings)
    assert choose_layout(root, settings)[0] is layout  # data.layout: auto
    cfg = _config(dims, data)
    cases = find_cases(data_settings(cfg), root)
    assert cases.layout == name
    assert [r["id"] for r in cases.records] == IDS
    assert all(isinstance(r["image"], str if dims == 2 else list) and Path(r["label"]).is_file() for r in cases.records)
    datalist = build_datalist(data_settings(cfg), root)  # what medseg run uses: every case read and checked
    assert datalist.records == cases.records and not datalist.check.findings
    assert (
        build_datalist(data_settings(_config(dims, {**data, "layout": name})), root).records == cases.records
    )  # named


@pytest.mark.parametrize("dims", [2, 3])
def test_an_empty_folder_is_no_layout_and_auto_falls_back(tmp_path: Path, dims: int) -> None:
    settings = LayoutSettings.of(DataConfig(), dims)
    assert not any(layout.detect(tmp_path, settings) for layout in LAYOUTS.values())
    assert choose_layout(tmp_path, settings)[0].name == FALLBACK[dims]


def test_an_unknown_layout_name_lists_the_known_ones() -> None:
    for name in ("voc", "auto"):
        with pytest.raises(DataError) as info:
            get_layout(name)
        assert str(info.value) == (
            f"unknown data layout {name!r}; known layouts: list, msd, csv, folders, nnunet, cvat, cvat_masks, coco, "
            "labelme, folder, volumes"
        )


def test_a_layout_for_the_other_kind_of_data_is_named(tmp_path: Path) -> None:
    _folder_2d(tmp_path)
    with pytest.raises(DataError) as info:
        find_cases(data_settings(_config(2, {"layout": "folders"})), tmp_path)
    expected = "2D layouts: msd, csv, nnunet, cvat, cvat_masks, coco, labelme, folder"
    assert str(info.value) == f"data.layout 'folders' does not read 2D data; {expected}"


def test_3d_folder_means_auto_and_listed_cases_win(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    cases = _list_3d(root)
    _nnunet_3d(root)
    assert find_cases(data_settings(_config(3, {"layout": "folder"})), root).layout == "nnunet"
    assert (
        find_cases(data_settings(_config(3, {"layout": "msd", **cases})), root).layout == "list"
    )  # no dataset.json needed
    with pytest.raises(DataError) as info:
        find_cases(data_settings(_config(3, {"layout": "list"})), root)
    assert str(info.value) == f"{root}: data.layout is list but data.cases lists no case"


class _LinesLayout(Layout):
    """A layout as the next one will be written: ``cases.txt`` lists ``<image> <label>`` per line."""

    name = "lines"
    spatial_dims = (2,)

    def detect(self, folder: Path, settings: LayoutSettings) -> bool:
        return (folder / "cases.txt").is_file()

    def find(self, folder: Path, settings: LayoutSettings, findings: list[Finding] | None = None) -> Cases:
        source = folder / "cases.txt"
        pairs = [line.split() for line in source.read_text().splitlines()]
        records = [{"id": Path(i).stem, "image": str(folder / i), "label": str(folder / m)} for i, m in pairs]
        return Cases(records, self.name, source)


def test_a_new_layout_is_one_class_and_one_table_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ds"
    _csv_2d(root)
    (root / "pairs.csv").unlink()
    (root / "cases.txt").write_text("photos/b.jpg seg/b.png\nphotos/a.jpg seg/a.png\n")
    monkeypatch.setitem(LAYOUTS, "lines", _LinesLayout())
    settings = LayoutSettings.of(DataConfig(), 2)
    assert [r["id"] for r in find_in_layout(root, replace(settings, layout="lines")).records] == ["b", "a"]
    assert find_in_layout(root, settings).layout == "lines"  # auto: detected


def test_auto_refuses_a_folder_two_layouts_fit_naming_both_and_the_key(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _msd_2d(root)
    _csv_2d(root)  # a pairs.csv beside the MSD dataset.json
    settings = LayoutSettings.of(DataConfig(), 2)
    with pytest.raises(DataError) as error:
        choose_layout(root, settings)
    message = str(error.value)
    assert "msd layout" in message and "csv layout" in message and "set data.layout to msd or csv" in message
    assert "\n" not in message
    chosen, reason = choose_layout(root, LayoutSettings.of(DataConfig(layout="csv"), 2))
    assert chosen.name == "csv" and reason == "data.layout: csv"


def test_the_check_header_says_which_layout_auto_chose_and_why(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    data = _msd_3d(root)
    report = build_datalist(data_settings(_config(3, data)), root).check
    assert report.layout == "msd" and report.reason == f"auto: {LAYOUTS['msd'].evidence}"
    assert f"(msd layout; auto: {LAYOUTS['msd'].evidence})" in report.summary()


def test_every_layout_says_what_auto_found() -> None:
    assert all(layout.evidence != Layout.evidence for layout in LAYOUTS.values())
    assert {name for name, layout in LAYOUTS.items() if layout.by_content} == {"folder", "folders", "volumes"}

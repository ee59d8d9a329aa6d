"""The labelme, COCO and CVAT layouts: annotation files as each tool writes them, drawn pixel for pixel into label
maps, detected by ``auto``, with one-line errors for bad input."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask
from skimage.draw import ellipse as sk_ellipse
from skimage.draw import line as sk_line
from skimage.draw import polygon as sk_polygon

from medseg.config.schema import DataConfig, PipelineConfig
from medseg.config.settings import data_settings
from medseg.core.errors import DataError
from medseg.data.datalist import build_datalist
from medseg.data.layouts.base import LayoutSettings
from medseg.data.layouts.registry import choose_layout, find_in_layout
from medseg.data.records import Finding

H, W = 20, 30


def _png(path: Path, size: tuple[int, int] = (H, W)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 90, np.uint8)).save(path)
    return path


def _b64_png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _settings(tmp_path: Path, **data: object) -> LayoutSettings:
    return LayoutSettings.of(DataConfig(cache_dir=tmp_path / "cache", **data), 2)


def _label(record: dict) -> np.ndarray:
    return np.asarray(Image.open(record["label"]))


def _poly(points: list[list[float]]) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    xy = np.asarray(points, float)
    mask[sk_polygon(xy[:, 1], xy[:, 0], shape=(H, W))] = True
    return mask


def _labelme_shape(label: str, points: list, shape_type: str = "polygon", mask: str | None = None) -> dict:
    return {
        "label": label,
        "points": points,
        "group_id": None,
        "description": "",
        "shape_type": shape_type,
        "flags": {},
        "mask": mask,
    }


def _labelme(folder: Path, stem: str, shapes: list[dict], image: bool = True, data: str | None = None) -> Path:
    if image:
        _png(folder / f"{stem}.png")
    path = folder / f"{stem}.json"
    path.write_text(
        json.dumps(
            {
                "version": "5.4.1",
                "flags": {},
                "shapes": shapes,
                "imagePath": f"{stem}.png" if image else None,
                "imageData": data,
                "imageHeight": H,
                "imageWidth": W,
            },
            indent=2,
        )
    )
    return path


TRIANGLE = [[5.0, 2.0], [25.0, 6.0], [12.0, 17.0]]


# --------------------------------------------------------------------------------------------------
# labelme
# --------------------------------------------------------------------------------------------------


def test_labelme_polygon_and_rectangle_later_shape_wins(tmp_path: Path) -> None:
    _labelme(
        tmp_path, "a", [_labelme_shape("lesion", TRIANGLE), _labelme_shape("ruler", [[2, 3], [10, 8]], "rectangle")]
    )
    cases = find_in_layout(tmp_path, _settings(tmp_path))
    assert cases.layout == "labelme" and [r["id"] for r in cases.records] == ["a"]
    expected = np.zeros((H, W), np.uint8)
    expected[_poly(TRIANGLE)] = 1
    expected[3:9, 2:11] = 2  # the rectangle, corners included, drawn over the polygon
    assert np.array_equal(_label(cases.records[0]), expected)
    assert cases.records[0]["image"] == str(tmp_path / "a.png")


def test_labelme_circle_line_point_and_mask(tmp_path: Path) -> None:
    bitmap = np.zeros((4, 5), np.uint8)
    bitmap[1:3, 1:4] = 1
    shapes = [
        _labelme_shape("a", [[8, 8], [11, 8]], "circle"),
        _labelme_shape("b", [[1, 1], [20, 1], [20, 15]], "linestrip"),
        _labelme_shape("c", [[27, 17]], "point"),
        _labelme_shape("d", [[22, 2], [26, 5]], "mask", mask=_b64_png(bitmap.astype(bool))),
    ]
    _labelme(tmp_path, "a", shapes)
    record = find_in_layout(tmp_path, _settings(tmp_path)).records[0]
    rows, cols = np.mgrid[:H, :W]
    expected = np.zeros((H, W), np.uint8)
    expected[(cols - 8) ** 2 + (rows - 8) ** 2 < 9] = 1
    expected[sk_line(1, 1, 1, 20)] = 2
    expected[sk_line(1, 20, 15, 20)] = 2
    expected[(cols - 27) ** 2 + (rows - 17) ** 2 < 2.5**2] = 3
    expected[3:5, 23:26] = 4
    assert np.array_equal(_label(record), expected)


def test_labelme_wide_lines_and_embedded_image(tmp_path: Path) -> None:
    picture = np.zeros((H, W, 3), np.uint8)
    picture[..., 0] = 200
    _labelme(tmp_path, "emb", [_labelme_shape("x", [[2, 10], [27, 10]], "line")], image=False, data=_b64_png(picture))
    settings = replace(LayoutSettings.of(DataConfig(cache_dir=tmp_path / "cache"), 2), line_width=3)
    record = find_in_layout(tmp_path, settings, []).records[0]
    expected = np.zeros((H, W), np.uint8)
    expected[9:12, 2:28] = 1
    rows, cols = np.mgrid[:H, :W]
    for x in (2, 27):  # round ends: the pixels within half the width of an end
        expected[(cols - x) ** 2 + (rows - 10) ** 2 <= 1.5**2] = 1
    assert np.array_equal(_label(record), expected)
    assert np.array_equal(np.asarray(Image.open(record["image"])), picture)


def test_labelme_values_from_data_labels_unlabelled_image_and_cache_reuse(tmp_path: Path) -> None:
    _labelme(tmp_path, "a", [_labelme_shape("nevus", TRIANGLE)])
    _png(tmp_path / "b.png")  # no annotation
    settings = _settings(tmp_path, labels={4: "lesion", 7: "nevus"})
    findings: list[Finding] = []
    cases = find_in_layout(tmp_path, settings, findings)
    assert [r["id"] for r in cases.records] == ["a"]
    assert set(np.unique(_label(cases.records[0]))) == {0, 7}
    assert [(f.severity, f.case, f.check) for f in findings] == [("warning", "b", "unlabelled")]
    assert "b.png" in findings[0].message
    label = Path(cases.records[0]["label"])
    assert label.parent.parent == tmp_path / "cache" / "annotations"
    stamp = label.stat().st_mtime_ns
    assert find_in_layout(tmp_path, settings, []).records[0]["label"] == str(label)
    assert label.stat().st_mtime_ns == stamp  # re-used, not redrawn


# --------------------------------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------------------------------


def _coco(folder: Path, annotations: list[dict], images: list[dict] | None = None) -> Path:
    for image in images or [{"id": 1, "file_name": "one.png", "width": W, "height": H}]:
        _png(folder / "images" / image["file_name"])
    path = folder / "instances.json"
    description = {
        "info": {"description": "test"},
        "licenses": [],
        "images": images or [{"id": 1, "file_name": "one.png", "width": W, "height": H}],
        "annotations": annotations,
        "categories": [{"id": 3, "name": "lesion", "supercategory": ""}, {"id": 7, "name": "ruler"}],
    }
    path.write_text(json.dumps(description))
    return path


def test_coco_polygon_compressed_and_uncompressed_rle(tmp_path: Path) -> None:
    block = np.zeros((H, W), np.uint8, order="F")
    block[2:6, 3:12] = 1
    compressed = coco_mask.encode(np.asfortranarray(block))
    compressed["counts"] = compressed["counts"].decode()
    small = np.zeros((H, W), np.uint8)
    small[10:14, 20:23] = 1
    flat = small.flatten(order="F")  # column-major runs, starting with background
    changes = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]])) if flat.any() else []
    counts = np.diff(np.r_[0, changes, flat.size]).tolist()
    counts = [c for c in counts if c] if counts[0] else counts
    assert np.array_equal(np.repeat(np.arange(len(counts)) % 2, counts).reshape((W, H)).T, small)
    polygon = [4.0, 8.0, 14.0, 8.0, 14.0, 16.0, 4.0, 16.0]
    _coco(
        tmp_path,
        [
            {"id": 1, "image_id": 1, "category_id": 7, "segmentation": [polygon], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "segmentation": compressed, "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 3, "segmentation": {"size": [H, W], "counts": counts}},
        ],
    )
    assert choose_layout(tmp_path, LayoutSettings.of(DataConfig(), 2))[0].name == "coco"
    cases = find_in_layout(tmp_path, _settings(tmp_path))
    assert cases.layout == "coco" and cases.records[0]["image"] == str(tmp_path / "images" / "one.png")
    reference = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects([polygon], H, W))).astype(bool)
    expected = np.zeros((H, W), np.uint8)
    expected[reference] = 2  # category id 7, second in 'categories'
    expected[2:6, 3:12] = 1  # category id 3, first; drawn later, so it wins
    expected[10:14, 20:23] = 1
    assert np.array_equal(_label(cases.records[0]), expected)
    assert reference[8:16, 5:14].all()


def test_coco_category_by_name_and_missing_image(tmp_path: Path) -> None:
    seg = [[2.0, 2.0, 9.0, 2.0, 9.0, 9.0]]
    path = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 7, "segmentation": seg}])
    record = find_in_layout(tmp_path, _settings(tmp_path, labels={1: "lesion", 2: "ruler"})).records[0]
    assert set(np.unique(_label(record))) == {0, 2}
    description = json.loads(path.read_text())
    description["images"].append({"id": 2, "file_name": "gone.png", "width": W, "height": H})
    description["annotations"].append({"id": 2, "image_id": 2, "category_id": 3, "segmentation": seg})
    path.write_text(json.dumps(description))
    with pytest.raises(DataError, match=r"instances\.json: image 'gone\.png' \(image id 2\) not found") as err:
        find_in_layout(tmp_path, _settings(tmp_path))
    assert "\n" not in str(err.value)
    findings: list[Finding] = []
    assert [r["id"] for r in find_in_layout(tmp_path, _settings(tmp_path), findings).records] == ["one"]
    assert [(f.severity, f.case) for f in findings] == [("error", "gone")]


# --------------------------------------------------------------------------------------------------
# CVAT
# --------------------------------------------------------------------------------------------------

CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>1</id>
      <name>skin</name>
      <labels>
        <label><name>lesion</name><color>#fa3253</color><type>any</type><attributes/></label>
        <label><name>ruler</name><color>#33ddff</color><type>any</type><attributes/></label>
      </labels>
    </task>
  </meta>
  <image id="0" name="one.png" width="30" height="20">
    <box label="ruler" source="manual" occluded="0" xtl="2.00" ytl="3.00" xbr="10.00" ybr="8.00" z_order="1">
    </box>
    <polygon label="lesion" source="manual" occluded="0" points="5.00,2.00;25.00,6.00;12.00,17.00" z_order="0">
    </polygon>
    <ellipse label="lesion" source="manual" occluded="0" cx="24.00" cy="14.00" rx="3.00" ry="2.00" z_order="0">
    </ellipse>
    <mask label="ruler" source="manual" occluded="0" rle="{rle}" left="1" top="15" width="4" height="3" z_order="0">
    </mask>
  </image>
  <image id="1" name="two.png" width="30" height="20">
  </image>
</annotations>
"""


def _cvat(folder: Path, text: str = CVAT) -> Path:
    _png(folder / "images" / "one.png")
    _png(folder / "images" / "two.png")
    path = folder / "annotations.xml"
    path.write_text(text)
    return path


def test_cvat_shapes_z_order_and_unlabelled_image(tmp_path: Path) -> None:
    box = np.array([[0, 1, 1, 0], [0, 0, 1, 1], [0, 1, 1, 1]], bool)  # row by row, starting with background
    _cvat(tmp_path, CVAT.replace("{rle}", "1, 2, 3, 2, 1, 3"))
    assert choose_layout(tmp_path, LayoutSettings.of(DataConfig(), 2))[0].name == "cvat"
    findings: list[Finding] = []
    cases = find_in_layout(tmp_path, _settings(tmp_path), findings)
    assert [r["id"] for r in cases.records] == ["one"]
    assert [(f.severity, f.case, f.check) for f in findings] == [("warning", "two", "unlabelled")]
    expected = np.zeros((H, W), np.uint8)
    expected[_poly(TRIANGLE)] = 1
    expected[sk_ellipse(14, 24, 2, 3, shape=(H, W))] = 1
    expected[15:18, 1:5][box] = 2
    expected[3:9, 2:11] = 2  # z_order 1: over the polygon drawn after it in the file
    assert np.array_equal(_label(cases.records[0]), expected)


# --------------------------------------------------------------------------------------------------
# Detection and bad input
# --------------------------------------------------------------------------------------------------


def test_auto_detects_labelme_and_leaves_folder_datasets_alone(tmp_path: Path) -> None:
    _labelme(tmp_path / "lm", "a", [_labelme_shape("x", TRIANGLE)])
    auto = LayoutSettings.of(DataConfig(), 2)
    assert choose_layout(tmp_path / "lm", auto)[0].name == "labelme"
    _png(tmp_path / "pf" / "images" / "a.png")
    _png(tmp_path / "pf" / "masks" / "a.png")
    assert choose_layout(tmp_path / "pf", auto)[0].name == "folder"


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (
            _labelme_shape("x", [[1, 1], [5, 5]]),
            r"a\.json: shape 1 \('x'\): polygon has 2 point\(s\); needs at least 3",
        ),
        (_labelme_shape("x", [[40, 1], [50, 1], [45, 9]]), r"a\.json: shape 1 \('x'\): polygon .* entirely outside"),
        (_labelme_shape("x", [[1, 1]], "cuboid"), r"a\.json: shape 1 \('x'\): unknown shape type 'cuboid'"),
    ],
    ids=["two points", "outside", "unknown type"],
)
def test_bad_labelme_shapes_one_line(tmp_path: Path, shape: dict, message: str) -> None:
    _labelme(tmp_path, "a", [shape])
    with pytest.raises(DataError, match=message) as err:
        find_in_layout(tmp_path, _settings(tmp_path, layout="labelme"))
    assert "\n" not in str(err.value)
    findings: list[Finding] = []
    assert find_in_layout(tmp_path, _settings(tmp_path, layout="labelme"), findings).records == []
    assert [(f.severity, f.case, f.message) for f in findings] == [("error", "a", str(err.value))]


def test_bad_files_one_line(tmp_path: Path) -> None:
    _labelme(tmp_path / "lm", "a", [_labelme_shape("x", TRIANGLE)])
    (tmp_path / "lm" / "a.png").unlink()
    with pytest.raises(DataError, match=r"a\.json: image 'a\.png' not found beside it"):
        find_in_layout(tmp_path / "lm", _settings(tmp_path, layout="labelme"))
    (tmp_path / "lm" / "a.json").write_text("{not json")
    _png(tmp_path / "lm" / "a.png")
    with pytest.raises(DataError, match=r"a\.json: invalid JSON"):
        find_in_layout(tmp_path / "lm", _settings(tmp_path, layout="labelme"))
    _cvat(tmp_path / "cv", CVAT.replace("{rle}", "1,2").replace("</annotations>", ""))
    with pytest.raises(DataError, match=r"annotations\.xml: invalid XML") as err:
        find_in_layout(tmp_path / "cv", _settings(tmp_path, layout="cvat"))
    assert "\n" not in str(err.value)
    _cvat(tmp_path / "cv", CVAT.replace("{rle}", "1,2"))
    with pytest.raises(DataError, match=r"annotations\.xml: <mask> 4 \('ruler'\): mask rle covers 3"):
        find_in_layout(tmp_path / "cv", _settings(tmp_path, layout="cvat"))


# --------------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------------


def test_build_datalist_on_a_labelme_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default data.cache_dir is relative
    folder = tmp_path / "labelme"
    boxes = {f"case{i}": [[2 + i, 3], [10 + i, 8 + i]] for i in range(4)}
    for stem, corners in boxes.items():
        _labelme(folder, stem, [_labelme_shape("lesion", corners, "rectangle")])
    pipeline = PipelineConfig(name="t", data=DataConfig(cache_dir=tmp_path / "cache"))
    datalist = build_datalist(data_settings(pipeline), folder)
    assert sorted(r["id"] for r in datalist.records) == sorted(boxes)
    for record in datalist.records:
        (x0, y0), (x1, y1) = boxes[record["id"]]
        expected = np.zeros((H, W), np.uint8)
        expected[y0 : y1 + 1, x0 : x1 + 1] = 1
        assert np.array_equal(_label(record), expected)

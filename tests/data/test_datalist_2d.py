"""Behavioural tests for finding and checking 2D image/mask pairs in each layout, through the path ``medseg run``
takes: :func:`medseg.data.datalist.build_datalist` (the check, then the layout)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.config.schema import DataConfig, PipelineConfig
from medseg.config.settings import data_settings
from medseg.core.errors import DataError
from medseg.data.datalist import Datalist, build_datalist
from medseg.data.image_checks import DatalistReport, image_fingerprint
from medseg.data.records import Record
from medseg.imageio.formats import IMAGE_2D_SUFFIXES

SIZE = (12, 8)  # PIL (width, height)
ISIC_SUFFIXES = "a.*, a_segmentation.*, a_mask.*, a_lesion.*"


def save_rgb(path: Path, size: tuple[int, int] = SIZE, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def save_mask(path: Path, size: tuple[int, int] = SIZE, array: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array is None:
        array = np.zeros((size[1], size[0]), np.uint8)
        array[2:5, 3:7] = 255
    Image.fromarray(array).save(path)
    return path


def folder_dataset(root: Path, ids: list[str], image_ext: str = ".png", mask_suffix: str = "") -> Path:
    for case in ids:
        save_rgb(root / "images" / f"{case}{image_ext}")
        save_mask(root / "masks" / f"{case}{mask_suffix}.png")
    return root


def build(root: Path, cfg: DataConfig | None = None, in_channels: int = 3) -> Datalist:
    """The checked datalist of a 2D dataset folder, as ``medseg run`` builds it."""
    pipeline = PipelineConfig(name="t", model={"in_channels": in_channels}, data=cfg or DataConfig())
    return build_datalist(data_settings(pipeline), root)


def build_records(
    root: Path, cfg: DataConfig | None = None, in_channels: int = 3
) -> tuple[list[Record], DatalistReport]:
    datalist = build(root, cfg, in_channels)
    return datalist.records, datalist.report


def data_error(root: Path, cfg: DataConfig | None = None, in_channels: int = 3) -> str:
    with pytest.raises(DataError) as info:
        build(root, cfg, in_channels)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------------


def test_ph2_layout_jpg_images_png_masks_matched_by_id(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "ph2", ["IMD003", "IMD002", "IMD010"], image_ext=".jpg")
    records, report = build_records(root, DataConfig(layout="folder"))
    assert records == [
        {"id": c, "image": str(root / "images" / f"{c}.jpg"), "label": str(root / "masks" / f"{c}.png")}
        for c in ["IMD002", "IMD003", "IMD010"]
    ]
    assert report.cases == 3
    assert report.unmatched_masks == []
    assert report.empty_masks == []
    assert report.non_binary_pixels == 0


def test_isic_segmentation_suffix(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "isic", ["ISIC_0000001", "ISIC_0000002"], mask_suffix="_segmentation")
    records, report = build_records(root, DataConfig())
    assert [r["id"] for r in records] == ["ISIC_0000001", "ISIC_0000002"]
    assert records[0]["label"] == str(root / "masks" / "ISIC_0000001_segmentation.png")
    assert report.cases == 2


def test_first_matching_suffix_wins_and_extra_masks_are_reported(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "d", ["a", "b"])
    save_mask(root / "masks" / "a_segmentation.png")
    save_mask(root / "masks" / "orphan.png")
    records, report = build_records(root, DataConfig())
    assert records[0]["label"] == str(root / "masks" / "a.png")
    assert report.unmatched_masks == ["a_segmentation", "orphan"]
    assert report.cases == 2


def test_custom_folder_names_and_suffixes(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for case in ["x1", "x2", "x3"]:
        save_rgb(root / "img" / f"{case}.bmp")
        save_mask(root / "gt" / f"{case}_lesion.tif")
    cfg = DataConfig(images_dir="img", masks_dir="gt", mask_suffixes=["_lesion"])
    records, _ = build_records(root, cfg)
    assert [(r["id"], Path(r["label"]).name) for r in records] == [
        ("x1", "x1_lesion.tif"),
        ("x2", "x2_lesion.tif"),
        ("x3", "x3_lesion.tif"),
    ]


def test_upper_case_extensions_are_images(tmp_path: Path) -> None:
    root = tmp_path / "d"
    save_rgb(root / "images" / "a.JPG")
    save_mask(root / "masks" / "a.PNG")
    (root / "images" / "notes.txt").write_text("not an image")
    records, _ = build_records(root, DataConfig())
    assert [r["id"] for r in records] == ["a"]


def test_csv_layout_relative_paths(tmp_path: Path) -> None:
    root = tmp_path / "csvset"
    save_rgb(root / "imgs" / "one.png")
    save_mask(root / "gt" / "one_m.png")
    save_rgb(root / "imgs" / "two.jpg")
    save_mask(root / "gt" / "two_m.png")
    (root / "pairs.csv").write_text("image,mask\nimgs/one.png,gt/one_m.png\nimgs/two.jpg,gt/two_m.png\n")
    records, report = build_records(root, DataConfig(layout="csv"))
    assert records == [
        {"id": "one", "image": str(root / "imgs" / "one.png"), "label": str(root / "gt" / "one_m.png")},
        {"id": "two", "image": str(root / "imgs" / "two.jpg"), "label": str(root / "gt" / "two_m.png")},
    ]
    assert report.cases == 2


def test_csv_layout_label_column_and_id_column(tmp_path: Path) -> None:
    root = tmp_path / "csvset"
    save_rgb(root / "a" / "img.png")
    save_mask(root / "a" / "seg.png")
    save_rgb(root / "b" / "img.png")
    save_mask(root / "b" / "seg.png")
    (root / "list.csv").write_text("id,image,label\ncase_a,a/img.png,a/seg.png\ncase_b,b/img.png,b/seg.png\n")
    records, _ = build_records(root, DataConfig(layout="csv", csv_file="list.csv"))
    assert [r["id"] for r in records] == ["case_a", "case_b"]
    assert records[1]["label"] == str(root / "b" / "seg.png")


def test_csv_without_image_and_mask_columns(tmp_path: Path) -> None:
    root = tmp_path / "csvset"
    root.mkdir()
    (root / "pairs.csv").write_text("img,seg\na.png,b.png\n")
    assert data_error(root, DataConfig(layout="csv")) == (
        f"{root / 'pairs.csv'}: expected columns 'image' and 'mask' (or 'label'), got ['img', 'seg']"
    )


def test_csv_without_rows(tmp_path: Path) -> None:
    root = tmp_path / "csvset"
    root.mkdir()
    (root / "pairs.csv").write_text("image,mask\n")
    assert data_error(root, DataConfig(layout="csv")) == f"{root / 'pairs.csv'}: no rows"


def test_csv_listing_a_missing_image(tmp_path: Path) -> None:
    root = tmp_path / "csvset"
    save_mask(root / "m.png")
    (root / "pairs.csv").write_text("image,mask\ngone.png,m.png\n")
    assert data_error(root, DataConfig(layout="csv")) == f"{root / 'gone.png'}: image file not found"


@pytest.mark.parametrize("row", ["a.png", "a.png,"], ids=["short-row", "empty-cell"])
def test_csv_row_without_mask_names_the_csv(tmp_path: Path, row: str) -> None:
    root = tmp_path / "csvset"
    save_rgb(root / "a.png")
    (root / "pairs.csv").write_text(f"image,mask\n{row}\n")
    with pytest.raises(DataError, match="pairs.csv"):
        build_records(root, DataConfig(layout="csv"))


def test_csv_with_utf8_bom(tmp_path: Path) -> None:
    root = tmp_path / "csvset"
    save_rgb(root / "a.png")
    save_mask(root / "a_m.png")
    (root / "pairs.csv").write_bytes("\ufeffimage,mask\na.png,a_m.png\n".encode())
    records, _ = build_records(root, DataConfig(layout="csv"))
    assert [r["id"] for r in records] == ["a"]


def test_csv_column_names_and_cells_are_stripped_and_the_id_is_the_image_name(tmp_path: Path) -> None:
    root = tmp_path / "csvset"
    save_rgb(root / "a.v2.png")
    save_mask(root / "a_m.png")
    (root / "pairs.csv").write_text("image , mask\n a.v2.png , a_m.png \n")
    records, _ = build_records(root, DataConfig(layout="csv"))
    assert records == [{"id": "a.v2", "image": str(root / "a.v2.png"), "label": str(root / "a_m.png")}]


def test_csv_missing_file_and_cells_beyond_the_header(tmp_path: Path) -> None:
    root = tmp_path / "csvset"
    root.mkdir()
    assert data_error(root, DataConfig(layout="csv")) == f"{root / 'pairs.csv'}: CSV file not found"
    (root / "pairs.csv").write_text("img,seg\na.png,b.png,c.png\n")  # the third cell has no column
    assert data_error(root, DataConfig(layout="csv")) == (
        f"{root / 'pairs.csv'}: expected columns 'image' and 'mask' (or 'label'), got ['img', 'seg']"
    )


def test_csv_duplicate_ids_name_the_csv(tmp_path: Path) -> None:
    root = tmp_path / "csvset"
    for case, value in (("a", 10), ("b", 20)):
        save_rgb(root / f"{case}.png", value=value)
        save_mask(root / f"{case}_m.png")
    (root / "pairs.csv").write_text("id,image,mask\nx,a.png,a_m.png\nx,b.png,b_m.png\n")
    assert data_error(root, DataConfig(layout="csv")) == f"{root / 'pairs.csv'}: case id 'x' appears more than once"


def test_msd_dataset_json(tmp_path: Path) -> None:
    root = tmp_path / "Task01"
    entries = []
    for case in ["case_001", "case_002"]:
        save_rgb(root / "imagesTr" / f"{case}.png")
        save_mask(root / "labelsTr" / f"{case}.png")
        entries.append({"image": f"./imagesTr/{case}.png", "label": f"./labelsTr/{case}.png"})
    (root / "dataset.json").write_text(json.dumps({"name": "t", "training": entries, "test": []}))
    records, report = build_records(root, DataConfig(layout="msd"))
    assert [r["id"] for r in records] == ["case_001", "case_002"]
    assert Path(records[0]["image"]) == root / "imagesTr" / "case_001.png"
    assert Path(records[1]["label"]) == root / "labelsTr" / "case_002.png"
    assert report.cases == 2


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ("{", "expected a 'training' list of {image, label} entries (Expecting property name"),
        ('{"name": "x"}', "expected a 'training' list of {image, label} entries ('training')"),
        ('{"training": ["a.png"]}', "expected a 'training' list of {image, label} entries ("),
        ('{"training": []}', "the 'training' list is empty"),
    ],
    ids=["bad-json", "no-training", "strings", "empty"],
)
def test_msd_dataset_json_errors(tmp_path: Path, content: str, detail: str) -> None:
    root = tmp_path / "Task01"
    root.mkdir()
    (root / "dataset.json").write_text(content)
    assert data_error(root, DataConfig(layout="msd")).startswith(f"{root / 'dataset.json'}: {detail}")


def test_msd_id_is_the_image_name_up_to_its_first_dot(tmp_path: Path) -> None:
    root = tmp_path / "Task01"
    save_rgb(root / "img" / "ISIC_1.v2.jpg")
    save_mask(root / "seg" / "ISIC_1_segmentation.png")
    entry = {"image": ["img/ISIC_1.v2.jpg"], "label": "seg/ISIC_1_segmentation.png", "id": "not used in 2D"}
    (root / "dataset.json").write_text(json.dumps({"training": [entry]}))
    records, _ = build_records(root, DataConfig(layout="msd"))
    assert records == [
        {
            "id": "ISIC_1",
            "image": str(root / "img" / "ISIC_1.v2.jpg"),
            "label": str(root / "seg" / "ISIC_1_segmentation.png"),
        }
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"image": "a.png"}, "training entry 0 has no 'label'"),
        ({"label": "a.png"}, "training entry 0 has no 'image'"),
        ({"image": ["a.png", "b.png"], "label": "m.png"}, "training entry 0: 'image' must be one path"),
        ({"image": "a.png", "label": ""}, "training entry 0: 'label' must be a path"),
    ],
    ids=["no-label", "no-image", "two-images", "empty-label"],
)
def test_msd_entry_errors_name_the_entry(tmp_path: Path, entry: dict, message: str) -> None:
    root = tmp_path / "Task01"
    root.mkdir()
    assert data_error(root, DataConfig(layout="msd")) == f"{root / 'dataset.json'}: dataset.json not found"
    (root / "dataset.json").write_text(json.dumps({"training": [entry]}))
    assert data_error(root, DataConfig(layout="msd")) == f"{root / 'dataset.json'}: {message}"


def _three_layouts(root: Path) -> None:
    """Folder layout ids f1, f2; CSV ids c1; MSD ids m1: each layout is told apart by its ids."""
    folder_dataset(root, ["f1", "f2"])
    save_rgb(root / "c" / "c1.png")
    save_mask(root / "c" / "c1_m.png")
    save_rgb(root / "m" / "m1.png")
    save_mask(root / "m" / "m1_m.png")


@pytest.mark.parametrize(
    ("files", "expected"),
    [((), ["f1", "f2"]), (("csv",), ["c1"]), (("msd",), ["m1"])],
    ids=["folder", "csv", "msd"],
)
def test_auto_layout_detection(tmp_path: Path, files: tuple[str, ...], expected: list[str]) -> None:
    root = tmp_path / "d"
    _three_layouts(root)
    if "csv" in files:
        (root / "pairs.csv").write_text("image,mask\nc/c1.png,c/c1_m.png\n")
    if "msd" in files:
        (root / "dataset.json").write_text(json.dumps({"training": [{"image": "m/m1.png", "label": "m/m1_m.png"}]}))
    records, report = build_records(root, DataConfig(layout="auto"))
    assert [r["id"] for r in records] == expected
    assert report.cases == len(expected)


def test_auto_refuses_msd_and_csv_together_and_data_layout_chooses(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _three_layouts(root)
    (root / "pairs.csv").write_text("image,mask\nc/c1.png,c/c1_m.png\n")
    (root / "dataset.json").write_text(json.dumps({"training": [{"image": "m/m1.png", "label": "m/m1_m.png"}]}))
    with pytest.raises(DataError, match=r"both the msd layout .* and the csv layout .* set data.layout to msd or csv"):
        build_records(root, DataConfig(layout="auto"))
    assert [r["id"] for r in build_records(root, DataConfig(layout="msd"))[0]] == ["m1"]


def test_explicit_folder_layout_ignores_csv(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _three_layouts(root)
    (root / "pairs.csv").write_text("image,mask\nc/c1.png,c/c1_m.png\n")
    records, _ = build_records(root, DataConfig(layout="folder"))
    assert [r["id"] for r in records] == ["f1", "f2"]


# --------------------------------------------------------------------------------------------------
# Folder and file errors
# --------------------------------------------------------------------------------------------------


def test_image_without_mask_names_the_image(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "d", ["b"])
    save_rgb(root / "images" / "a.jpg")
    assert data_error(root) == (
        f"{root / 'images' / 'a.jpg'}: no mask found in {root / 'masks'} (tried {ISIC_SUFFIXES})"
    )


def test_mask_of_another_size_names_mask_and_both_sizes(tmp_path: Path) -> None:
    root = tmp_path / "d"
    save_rgb(root / "images" / "a.png", size=(12, 8))
    save_mask(root / "masks" / "a.png", size=(10, 8))
    assert data_error(root) == (f"{root / 'masks' / 'a.png'}: mask size 10x8 differs from image size 12x8 (a.png)")


def test_truncated_image_named(tmp_path: Path) -> None:
    root = tmp_path / "d"
    image = root / "images" / "a.png"
    image.parent.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image)
    image.write_bytes(image.read_bytes()[:2000])
    save_mask(root / "masks" / "a.png", size=(64, 64))
    assert data_error(root).startswith(f"{image}: corrupt or truncated image (")


def test_truncated_jpeg_named(tmp_path: Path) -> None:
    root = tmp_path / "d"
    image = root / "images" / "a.jpg"
    image.parent.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image, quality=95)
    image.write_bytes(image.read_bytes()[:3000])
    save_mask(root / "masks" / "a.png", size=(64, 64))
    assert data_error(root).startswith(f"{image}: corrupt or truncated image (")


def test_text_file_named_png_is_not_an_image(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "d", ["a"])
    (root / "images" / "b.png").write_text("this is not a PNG")
    save_mask(root / "masks" / "b.png")
    assert data_error(root) == f"{root / 'images' / 'b.png'}: not a readable image"


def test_unreadable_mask_named(tmp_path: Path) -> None:
    root = tmp_path / "d"
    save_rgb(root / "images" / "a.png")
    (root / "masks").mkdir()
    (root / "masks" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert data_error(root).startswith(f"{root / 'masks' / 'a.png'}: corrupt or truncated mask (")


def test_text_file_named_png_as_mask(tmp_path: Path) -> None:
    root = tmp_path / "d"
    save_rgb(root / "images" / "a.png")
    (root / "masks").mkdir()
    (root / "masks" / "a.png").write_text("plain text")
    assert data_error(root) == f"{root / 'masks' / 'a.png'}: not a readable image"


def test_empty_images_folder(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "images" / "readme.txt").write_text("x")
    assert data_error(root) == f"{root / 'images'}: no images found (looked for {', '.join(IMAGE_2D_SUFFIXES)})"


def test_missing_dataset_folder(tmp_path: Path) -> None:
    assert data_error(tmp_path / "nope") == f"{tmp_path / 'nope'}: dataset folder not found"


def test_missing_images_folder(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "masks").mkdir(parents=True)
    assert data_error(root) == f"{root / 'images'}: image folder not found"


def test_missing_masks_folder(tmp_path: Path) -> None:
    root = tmp_path / "d"
    save_rgb(root / "images" / "a.png")
    assert data_error(root) == f"{root / 'masks'}: mask folder not found"


def test_duplicate_case_id(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "d", ["a"])
    save_rgb(root / "images" / "a.jpg")
    assert data_error(root) == f"{root}: case id 'a' appears more than once"


def test_grey_image_where_rgb_expected(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.full((SIZE[1], SIZE[0]), 90, np.uint8)).save(root / "images" / "a.png")
    save_mask(root / "masks" / "a.png")
    assert data_error(root) == (
        f"{root / 'images' / 'a.png'}: image mode L (1 channels) but the model expects 3 channel(s) (RGB); "
        "grey-scale: convert it to RGB"
    )
    records, report = build_records(root, DataConfig(), in_channels=1)  # fine for a 1-channel model
    assert report.cases == 1


def test_rgb_image_where_grey_expected(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "d", ["a"])
    assert data_error(root, in_channels=1) == (
        f"{root / 'images' / 'a.png'}: image mode RGB (3 channels) but the model expects 1 channel(s) (L)"
    )


def test_a_colour_coded_mask_is_refused_naming_its_channels(tmp_path: Path) -> None:
    root = tmp_path / "d"
    save_rgb(root / "images" / "a.png")
    (root / "masks").mkdir()
    Image.new("RGBA", SIZE, (255, 0, 0, 255)).save(root / "masks" / "a.png")
    assert data_error(root) == (
        f"{root / 'masks' / 'a.png'}: mask has 4 channels (RGBA) that differ; expected one channel of label values "
        "(or equal colour channels)"
    )


def test_masks_stored_as_rgb_with_equal_channels_read_as_one_channel(tmp_path: Path) -> None:
    """Kvasir-SEG ships its masks so (and as JPEG): the grey channel is the mask."""
    from medseg.imageio.images import decode_mask, open_image

    root = tmp_path / "d"
    save_rgb(root / "images" / "a.png")
    mask = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    mask[2:6, 3:9] = 255
    (root / "masks").mkdir()
    Image.fromarray(mask).save(root / "masks" / "a.png")
    records, report = build_records(root, DataConfig())
    assert report.cases == 1 and records[0]["label"] == str(root / "masks" / "a.png")
    decoded = np.asarray(decode_mask(open_image(root / "masks" / "a.png")))
    np.testing.assert_array_equal(decoded, mask[..., 0])


def test_jpeg_masks_are_thresholded_at_mid_range_with_a_warning_counting_the_lossy_pixels(tmp_path: Path) -> None:
    from medseg.data.check import check_dataset
    from medseg.imageio.images import decode_mask, open_image

    root = tmp_path / "d"
    save_rgb(root / "images" / "a.png", size=(64, 48))
    truth = np.zeros((48, 64), np.uint8)
    truth[10:38, 12:50] = 255
    stored = truth.copy()
    stored[10:38, 50:53] = 128  # an edge drawn soft, as brushes and resizing leave it
    (root / "masks").mkdir()
    Image.fromarray(np.stack([stored] * 3, axis=-1)).save(root / "masks" / "a.jpg", quality=75)
    decoded = np.asarray(decode_mask(open_image(root / "masks" / "a.jpg")))
    assert set(np.unique(decoded)) <= {0, 255}
    assert np.mean(decoded == truth) > 0.95  # only edge pixels may flip
    cfg = PipelineConfig(name="t")
    report = check_dataset(data_settings(cfg), root)
    lossy = [f for f in report.findings if f.check == "lossy mask"]
    assert not report.errors and len(lossy) == 1 and "thresholded at 128" in lossy[0].message


# --------------------------------------------------------------------------------------------------
# Mask content report
# --------------------------------------------------------------------------------------------------


def test_non_binary_pixels_counted_exactly(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "d", ["clean"])
    grey = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    grey[0:3, 0:3] = 255
    grey[5, 0:5] = 128  # 5 anti-aliased edge pixels
    save_rgb(root / "images" / "soft.png")
    save_mask(root / "masks" / "soft.png", array=grey)
    _, report = build_records(root, DataConfig())
    assert report.non_binary_pixels == 5
    assert report.masks_with_non_binary_pixels == 1
    assert report.cases == 2


def test_non_binary_pixels_summed_over_masks_and_empty_masks_listed(tmp_path: Path) -> None:
    root = tmp_path / "d"
    a = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    a[0, 0:3] = [40, 200, 255]  # 2 non-binary
    b = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    b[1, 0:4] = [1, 1, 2, 3]  # top value 3: two pixels of 1 and one of 2 are non-binary
    c = np.zeros((SIZE[1], SIZE[0]), np.uint8)  # empty
    ones = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    ones[2:4, 2:4] = 1  # {0, 1} is binary
    for case, mask in {"a": a, "b": b, "c": c, "ones": ones}.items():
        save_rgb(root / "images" / f"{case}.png")
        save_mask(root / "masks" / f"{case}.png", array=mask)
    _, report = build_records(root, DataConfig())
    assert report.non_binary_pixels == 5
    assert report.masks_with_non_binary_pixels == 2
    assert report.empty_masks == ["c"]
    assert report.cases == 4


def test_sixteen_bit_mask_counted(tmp_path: Path) -> None:
    root = tmp_path / "d"
    save_rgb(root / "images" / "a.png")
    mask = np.zeros((SIZE[1], SIZE[0]), np.uint16)
    mask[0, 0] = 65535
    mask[0, 1] = 300
    save_mask(root / "masks" / "a.png", array=mask)
    _, report = build_records(root, DataConfig())
    assert (report.non_binary_pixels, report.masks_with_non_binary_pixels) == (1, 1)


# --------------------------------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------------------------------


def test_data_fingerprint_stable_and_sensitive_to_size(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "d", ["a", "b", "c"])
    records, _ = build_records(root, DataConfig())
    first = image_fingerprint(records)
    assert len(first) == 16 and all(ch in "0123456789abcdef" for ch in first)
    assert image_fingerprint(records) == first
    assert image_fingerprint(list(reversed(records))) == first  # order of the list does not matter
    assert image_fingerprint(build_records(root, DataConfig())[0]) == first
    assert build(root).fingerprint == first  # what the run records

    image = root / "images" / "b.png"
    before = image.stat().st_size
    save_rgb(image, size=(SIZE[0] * 3, SIZE[1] * 3))
    assert image.stat().st_size != before
    assert image_fingerprint(records) != first


def test_data_fingerprint_changes_with_the_file_list(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "d", ["a", "b", "c"])
    records, _ = build_records(root, DataConfig())
    assert image_fingerprint(records[:2]) != image_fingerprint(records)


def test_data_fingerprint_does_not_depend_on_location(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "d", ["a", "b"])
    copy = Path(shutil.copytree(root, tmp_path / "elsewhere" / "d"))
    assert image_fingerprint(build_records(root, DataConfig())[0]) == image_fingerprint(
        build_records(copy, DataConfig())[0]
    )


# --------------------------------------------------------------------------------------------------
# Image and mask folders found by content
# --------------------------------------------------------------------------------------------------


def test_isic_as_downloaded_needs_no_folder_names(tmp_path: Path) -> None:
    root = tmp_path / "isic"
    for case in ("ISIC_0000000", "ISIC_0000001"):
        save_rgb(root / "ISIC2018_Task1-2_Training_Input" / f"{case}.jpg")
        save_mask(root / "ISIC2018_Task1_Training_GroundTruth" / f"{case}_segmentation.png")
    (root / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt").write_text("CC-0")
    records, report = build_records(root, DataConfig())
    assert [r["id"] for r in records] == ["ISIC_0000000", "ISIC_0000001"]
    assert records[0]["label"] == str(root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000000_segmentation.png")


def test_same_names_in_both_folders_the_folder_named_for_masks_holds_them(tmp_path: Path) -> None:
    root = tmp_path / "cvc"
    for case in ("1", "2", "3"):
        save_rgb(root / "Original" / f"{case}.png")
        save_mask(root / "Ground Truth" / f"{case}.png")
    records, _ = build_records(root, DataConfig())
    assert [Path(r["label"]).parent.name for r in records] == ["Ground Truth"] * 3


def test_two_folders_that_could_each_hold_the_masks_are_named_with_the_keys_that_choose(tmp_path: Path) -> None:
    root = tmp_path / "two"
    for case in ("a", "b"):
        save_rgb(root / "left" / f"{case}.png")
        save_rgb(root / "right" / f"{case}.png")
    assert data_error(root) == (
        f"{root}: the images and masks could be left/ + right/ or right/ + left/; set data.images_dir and "
        "data.masks_dir to choose"
    )

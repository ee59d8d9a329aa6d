"""Behavioural tests for 3D multi-modality datalists in each layout, through the path ``medseg run`` takes:
:func:`medseg.data.datalist.build_datalist` (the check, then the layout)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.config.schema import PipelineConfig
from medseg.config.settings import data_settings
from medseg.core.errors import DataError
from medseg.data.datalist import build_datalist
from medseg.data.discovery import find_cases
from medseg.data.records import Record
from medseg.data.volume_checks import volume_fingerprint
from medseg.imageio.formats import VOLUME_SUFFIXES, volume_id
from tests.helpers.data import write_dicom_series

SHAPE = (8, 8, 6)
AFFINE = np.array([[2.0, 0, 0, -10], [0, 2.0, 0, 5], [0, 0, 3.0, 1], [0, 0, 0, 1]])


def save_volume(path: Path, shape: tuple[int, ...] = SHAPE, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), affine), str(path))
    return path


def folders_dataset(root: Path, ids: list[str], folders: tuple[str, ...] = ("flair", "t1c")) -> Path:
    for case in ids:
        for folder in (*folders, "labelsTr"):
            save_volume(root / folder / f"{case}.nii.gz")
    return root


def config(layout: str, modalities: list[str], in_channels: int | None = None, **data) -> PipelineConfig:
    """A 3D pipeline whose network takes ``in_channels`` (default: one per modality) channels."""
    channels = in_channels or max(1, len(modalities))
    data = {"layout": layout, "modalities": modalities, **data}
    return PipelineConfig(name="t", spatial_dims=3, model={"in_channels": channels}, data=data)


def build(root: Path, layout: str, modalities: list[str], in_channels: int | None = None, **data) -> list[Record]:
    """The checked records of a 3D dataset folder, as ``medseg run`` builds them (every case is read)."""
    return build_datalist(data_settings(config(layout, modalities, in_channels, **data)), root).records


def data_error(root: Path, layout: str, modalities: list[str], in_channels: int | None = None, **data) -> str:
    with pytest.raises(DataError) as info:
        build(root, layout, modalities, in_channels, **data)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------------
# Ids
# --------------------------------------------------------------------------------------------------


def test_volume_id_strips_double_and_single_volume_endings(tmp_path: Path) -> None:
    assert VOLUME_SUFFIXES == (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
    assert volume_id(Path("imagesTr/BRATS_001.nii.gz")) == "BRATS_001"
    assert volume_id(Path("a.b.nii")) == "a.b"
    assert volume_id(Path("case.v2.NII.GZ")) == "case.v2"
    assert [volume_id(Path(f"x{s}")) for s in VOLUME_SUFFIXES] == ["x"] * len(VOLUME_SUFFIXES)
    series = tmp_path / "series.1.nii"
    series.mkdir()
    assert volume_id(series) == "series.1.nii"  # a DICOM series folder keeps its whole name


# --------------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------------


def test_folders_layout_lists_modalities_in_the_given_order(tmp_path: Path) -> None:
    root = folders_dataset(tmp_path / "ds", ["p2", "p1"])
    records = build(root, "folders", ["t1c", "flair"])
    assert records == [
        {
            "id": c,
            "image": [str(root / "t1c" / f"{c}.nii.gz"), str(root / "flair" / f"{c}.nii.gz")],
            "label": str(root / "labelsTr" / f"{c}.nii.gz"),
        }
        for c in ("p1", "p2")
    ]


def test_folders_layout_missing_modality_file_names_the_expected_path(tmp_path: Path) -> None:
    root = folders_dataset(tmp_path / "ds", ["p1", "p2"])
    (root / "t1c" / "p2.nii.gz").unlink()
    assert data_error(root, "folders", ["flair", "t1c"]) == (
        f"{root / 't1c' / 'p2.nii.gz'}: file not found (case 'p2' is in {root / 'flair'} but not in t1c)"
    )


def test_folders_layout_missing_label_names_the_expected_path(tmp_path: Path) -> None:
    root = folders_dataset(tmp_path / "ds", ["p1", "p2"])
    (root / "labelsTr" / "p1.nii.gz").unlink()
    assert data_error(root, "folders", ["flair", "t1c"]) == (
        f"{root / 'labelsTr' / 'p1.nii.gz'}: label file not found for case 'p1'"
    )


def test_folders_layout_missing_modality_folder_and_empty_first_folder(tmp_path: Path) -> None:
    root = folders_dataset(tmp_path / "ds", ["p1"])
    assert data_error(root, "folders", ["flair", "t2"]) == f"{root / 't2'}: modality folder not found"
    (root / "empty").mkdir()
    assert data_error(root, "folders", ["empty", "flair"]) == (
        f"{root / 'empty'}: no volumes found (looked for {', '.join(VOLUME_SUFFIXES)} or DICOM folders)"
    )


def test_folders_layout_same_id_twice_in_a_folder_is_ambiguous(tmp_path: Path) -> None:
    root = folders_dataset(tmp_path / "ds", ["p1"])
    save_volume(root / "flair" / "p1.nii")
    assert data_error(root, "folders", ["flair", "t1c"]) == (
        f"{root / 'flair' / 'p1.nii.gz'}: ambiguous volume, p1.nii has the same id 'p1'"
    )


def test_nnunet_layout_channels_from_files_with_file_ending(tmp_path: Path) -> None:
    root = tmp_path / "Dataset001_Brain"
    for case in ("brain_002", "brain_001"):
        for channel in range(3):
            save_volume(root / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
        save_volume(root / "labelsTr" / f"{case}.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps({"file_ending": ".nii.gz", "channel_names": {"0": "T1", "1": "T2", "2": "FLAIR"}})
    )
    records = build(root, "nnunet", [], in_channels=3)
    assert records == [
        {
            "id": c,
            "image": [str(root / "imagesTr" / f"{c}_{i:04d}.nii.gz") for i in range(3)],
            "label": str(root / "labelsTr" / f"{c}.nii.gz"),
        }
        for c in ("brain_001", "brain_002")
    ]
    assert build(root, "nnunet", ["T1", "T2", "FLAIR"]) == records
    assert data_error(root, "nnunet", ["T1", "T2"], in_channels=3) == (
        f"{root / 'imagesTr'}: 3 channel(s) per case but 2 modalities given (T1, T2)"
    )


def test_nnunet_layout_without_dataset_json_accepts_any_volume_ending(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    save_volume(root / "imagesTr" / "ct_7_0000.nii")
    save_volume(root / "labelsTr" / "ct_7.nii")
    (root / "imagesTr" / "notes.txt").write_text("ignored")
    assert build(root, "nnunet", []) == [
        {
            "id": "ct_7",
            "image": [str(root / "imagesTr" / "ct_7_0000.nii")],
            "label": str(root / "labelsTr" / "ct_7.nii"),
        }
    ]


def test_nnunet_layout_missing_channel_names_case_and_index(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    for case in ("a", "b"):
        save_volume(root / "labelsTr" / f"{case}.nii.gz")
        for channel in (0, 1, 2):
            if (case, channel) != ("b", 1):
                save_volume(root / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
    assert data_error(root, "nnunet", [], in_channels=3) == (
        f"{root / 'imagesTr'}: case 'b' is missing channel 0001 ({root / 'imagesTr' / 'b_0001.nii.gz'} not found)"
    )


def test_nnunet_layout_bad_name_and_missing_label(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    save_volume(root / "imagesTr" / "a_0000.nii.gz")
    save_volume(root / "labelsTr" / "a.nii.gz")
    save_volume(root / "imagesTr" / "b.nii.gz")
    assert data_error(root, "nnunet", []) == (
        f"{root / 'imagesTr' / 'b.nii.gz'}: not an nnU-Net image name (expected <case>_<4-digit channel>.nii.gz)"
    )
    (root / "imagesTr" / "b.nii.gz").rename(root / "imagesTr" / "b_0000.nii.gz")
    assert data_error(root, "nnunet", []) == f"{root / 'labelsTr' / 'b.nii.gz'}: label file not found for case 'b'"


def test_msd_layout_with_list_images(tmp_path: Path) -> None:
    root = tmp_path / "Task01"
    for case in ("BRATS_001", "BRATS_002"):
        for modality in ("flair", "t1"):
            save_volume(root / "imagesTr" / f"{case}_{modality}.nii.gz")
        save_volume(root / "labelsTr" / f"{case}.nii.gz")
    training = [
        {"image": [f"./imagesTr/{c}_flair.nii.gz", f"./imagesTr/{c}_t1.nii.gz"], "label": f"./labelsTr/{c}.nii.gz"}
        for c in ("BRATS_002", "BRATS_001")
    ]
    (root / "dataset.json").write_text(json.dumps({"training": training, "modality": {"0": "FLAIR", "1": "T1"}}))
    records = build(root, "msd", [], in_channels=2)
    assert records == [
        {
            "id": c,
            "image": [str(root / "imagesTr" / f"{c}_flair.nii.gz"), str(root / "imagesTr" / f"{c}_t1.nii.gz")],
            "label": str(root / "labelsTr" / f"{c}.nii.gz"),
        }
        for c in ("BRATS_002", "BRATS_001")
    ]


def test_msd_layout_with_string_images_4d_and_channel_count(tmp_path: Path) -> None:
    root = tmp_path / "Task01"
    save_volume(root / "imagesTr" / "BRATS_001.nii.gz", shape=(*SHAPE, 2))
    save_volume(root / "labelsTr" / "BRATS_001.nii.gz")
    description = {
        "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}],
        "modality": {"0": "FLAIR", "1": "T1"},
    }
    (root / "dataset.json").write_text(json.dumps(description))
    assert build(root, "msd", [], in_channels=2) == [
        {
            "id": "BRATS_001",
            "image": [str(root / "imagesTr" / "BRATS_001.nii.gz")],
            "label": str(root / "labelsTr" / "BRATS_001.nii.gz"),
        }
    ]
    assert data_error(root, "msd", ["FLAIR", "T1", "T1c"]) == (
        "case 'BRATS_001': the image(s) hold 2 channel(s) but 3 modalities are expected (BRATS_001.nii.gz)"
    )


def test_msd_layout_missing_json_and_missing_image_file(tmp_path: Path) -> None:
    root = tmp_path / "Task02"
    save_volume(root / "labelsTr" / "la_003.nii.gz")
    assert data_error(root, "msd", []) == f"{root / 'dataset.json'}: dataset.json not found"
    training = [{"image": "./imagesTr/la_003.nii.gz", "label": "./labelsTr/la_003.nii.gz"}]
    (root / "dataset.json").write_text(json.dumps({"training": training}))
    assert data_error(root, "msd", []) == f"{root / 'imagesTr' / 'la_003.nii.gz'}: image file not found"


def test_msd_layout_id_key_and_mixed_channel_counts(tmp_path: Path) -> None:
    root = tmp_path / "Task01"
    for case in ("BRATS_001", "BRATS_002"):
        save_volume(root / "imagesTr" / f"{case}.nii.gz")
        save_volume(root / "labelsTr" / f"{case}_seg.nii.gz")
    training = [
        {"id": "first", "image": "imagesTr/BRATS_001.nii.gz", "label": "labelsTr/BRATS_001_seg.nii.gz"},
        {"image": ["imagesTr/BRATS_002.nii.gz"], "label": "labelsTr/BRATS_002_seg.nii.gz"},
    ]
    (root / "dataset.json").write_text(json.dumps({"training": training}))
    assert [r["id"] for r in build(root, "msd", [])] == ["first", "BRATS_002_seg"]  # else the label's name
    training[1]["image"] = ["imagesTr/BRATS_002.nii.gz", "imagesTr/BRATS_001.nii.gz"]
    (root / "dataset.json").write_text(json.dumps({"training": training}))
    assert data_error(root, "msd", []) == (
        f"{root / 'dataset.json'}: case 'BRATS_002_seg' lists 2 image(s) but case 'first' lists 1"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "expected a 'training' list of {image, label} entries (Expecting property name"),
        ("[1]", "expected a JSON object, got list"),
        ('{"training": {"a": 1}}', "expected a 'training' list of {image, label} entries ('training' is a dict)"),
        (
            '{"training": ["a.nii.gz"]}',
            "expected a 'training' list of {image, label} entries (training entry 0 is a str)",
        ),
        ('{"training": [{"image": []}]}', "training entry 0: 'image' must be a path or a non-empty list of paths"),
        ('{"training": [{"image": "a.nii.gz"}]}', "training entry 0 has no 'label'"),
        ('{"training": [{"image": "a.nii.gz", "label": 3}]}', "training entry 0: 'label' must be a path"),
    ],
    ids=["bad-json", "not-an-object", "not-a-list", "strings", "no-images", "no-label", "label-not-a-path"],
)
def test_msd_layout_errors_name_the_json_as_in_2d(tmp_path: Path, content: str, message: str) -> None:
    root = tmp_path / "Task01"
    root.mkdir()
    (root / "dataset.json").write_text(content)
    assert data_error(root, "msd", []).startswith(f"{root / 'dataset.json'}: {message}")


def test_csv_layout_one_column_per_modality_with_bom(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for case in ("c1", "c2"):
        for modality in ("flair", "t1c"):
            save_volume(root / modality / f"{case}.nii.gz")
        save_volume(root / "seg" / f"{case}.nii.gz")
    lines = ["id,t1c,flair,label"] + [f"{c},t1c/{c}.nii.gz,flair/{c}.nii.gz,seg/{c}.nii.gz" for c in ("c2", "c1")]
    (root / "pairs.csv").write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    records = build(root, "csv", ["flair", "t1c"])
    assert records == [
        {
            "id": c,
            "image": [str(root / "flair" / f"{c}.nii.gz"), str(root / "t1c" / f"{c}.nii.gz")],
            "label": str(root / "seg" / f"{c}.nii.gz"),
        }
        for c in ("c2", "c1")
    ]


def test_csv_layout_single_image_column_takes_id_from_file_name(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    save_volume(root / "img" / "liver_0.nii.gz")
    save_volume(root / "seg" / "liver_0.nii.gz")
    (root / "list.csv").write_text("image,label\nimg/liver_0.nii.gz,seg/liver_0.nii.gz\n")
    assert build(root, "csv", [], csv_file="list.csv") == [
        {
            "id": "liver_0",
            "image": [str(root / "img" / "liver_0.nii.gz")],
            "label": str(root / "seg" / "liver_0.nii.gz"),
        }
    ]


def test_csv_layout_empty_cell_names_csv_and_row(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for case in ("c1", "c2"):
        save_volume(root / f"{case}_flair.nii.gz")
        save_volume(root / f"{case}_t1c.nii.gz")
        save_volume(root / f"{case}_seg.nii.gz")
    (root / "pairs.csv").write_text(
        "flair,t1c,label\nc1_flair.nii.gz,c1_t1c.nii.gz,c1_seg.nii.gz\nc2_flair.nii.gz,,c2_seg.nii.gz\n"
    )
    assert data_error(root, "csv", ["flair", "t1c"]) == f"{root / 'pairs.csv'}: row 3 has an empty 't1c' cell"
    assert data_error(root, "csv", ["flair", "t2"]) == (
        f"{root / 'pairs.csv'}: expected image column(s) 'flair', 't2' and 'label', got ['flair', 't1c', 'label']"
    )


def test_csv_layout_accepts_dicom_series_folder_without_header_checks(tmp_path: Path) -> None:
    import SimpleITK as sitk

    root = tmp_path / "ds"
    series = sitk.GetImageFromArray(np.zeros((6, 8, 8), np.int16))  # a grid the label does not share: not compared
    write_dicom_series(series, root / "series" / "CT_1", "1.2.826.0.1.3680043.2.1125.7.2", "IM")
    save_volume(root / "CT_1_seg.nii.gz")
    (root / "pairs.csv").write_text("image,label\nseries/CT_1,CT_1_seg.nii.gz\n")
    assert build(root, "csv", []) == [
        {"id": "CT_1", "image": [str(root / "series" / "CT_1")], "label": str(root / "CT_1_seg.nii.gz")}
    ]


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def test_shape_mismatch_names_case_both_files_and_shapes(tmp_path: Path) -> None:
    root = folders_dataset(tmp_path / "ds", ["p1"])
    save_volume(root / "labelsTr" / "p1.nii.gz", shape=(8, 8, 7))
    assert data_error(root, "folders", ["flair", "t1c"]) == (
        f"case 'p1': shape 8x8x6 of {root / 'flair' / 'p1.nii.gz'} differs from shape 8x8x7 of "
        f"{root / 'labelsTr' / 'p1.nii.gz'}"
    )


def test_affine_mismatch_beyond_tolerance_only(tmp_path: Path) -> None:
    root = folders_dataset(tmp_path / "ds", ["p1"])
    nudged = AFFINE.copy()
    nudged[0, 3] += 1e-4
    save_volume(root / "t1c" / "p1.nii.gz", affine=nudged)
    assert len(build(root, "folders", ["flair", "t1c"])) == 1
    nudged[0, 3] += 0.5
    save_volume(root / "t1c" / "p1.nii.gz", affine=nudged)
    message = data_error(root, "folders", ["flair", "t1c"])
    assert message.startswith(
        f"case 'p1': affines differ between {root / 'flair' / 'p1.nii.gz'} and {root / 't1c' / 'p1.nii.gz'} ("
    )
    assert (
        message == message.split(" (")[0] + " (origin differs by 0.5 mm; largest difference 0.5 mm, tolerance 0.001 mm)"
    )


def test_nrrd_and_nifti_of_the_same_grid_agree(tmp_path: Path) -> None:
    import SimpleITK as sitk

    root = folders_dataset(tmp_path / "ds", ["p1"], folders=("flair",))
    (root / "t1c").mkdir()
    sitk.WriteImage(sitk.ReadImage(str(root / "flair" / "p1.nii.gz")), str(root / "t1c" / "p1.nrrd"))
    records = build(root, "folders", ["flair", "t1c"])
    assert records[0]["image"] == [str(root / "flair" / "p1.nii.gz"), str(root / "t1c" / "p1.nrrd")]


def test_unreadable_header_names_the_file(tmp_path: Path) -> None:
    root = folders_dataset(tmp_path / "ds", ["p1"])
    (root / "t1c" / "p1.nii.gz").write_bytes(b"this is not a NIfTI file")
    assert data_error(root, "folders", ["flair", "t1c"]).startswith(
        f"{root / 't1c' / 'p1.nii.gz'}: cannot read the image header ("
    )


def test_missing_and_empty_root(tmp_path: Path) -> None:
    assert data_error(tmp_path / "nope", "folders", ["a"]) == f"{tmp_path / 'nope'}: dataset folder not found"
    (tmp_path / "empty").mkdir()
    assert data_error(tmp_path / "empty", "nnunet", []) == f"{tmp_path / 'empty'}: dataset folder is empty"
    assert data_error(tmp_path / "empty", "auto", []) == f"{tmp_path / 'empty'}: dataset folder is empty"


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for name in ("a/x.nii.gz", "b/x.nii.gz", "a_seg.nii.gz", "b_seg.nii.gz"):
        save_volume(root / name)
    (root / "pairs.csv").write_text("image,label\na/x.nii.gz,a_seg.nii.gz\nb/x.nii.gz,b_seg.nii.gz\n")
    assert data_error(root, "csv", []) == f"{root / 'pairs.csv'}: case id 'x' appears more than once"


def test_a_case_without_its_label_stops_the_file_layouts_and_is_reported_when_listed(tmp_path: Path) -> None:
    root = folders_dataset(tmp_path / "ds", ["p1", "p2"])
    (root / "labelsTr" / "p2.nii.gz").unlink()
    assert data_error(root, "folders", ["flair"]) == (
        f"{root / 'labelsTr' / 'p2.nii.gz'}: label file not found for case 'p2'"
    )
    (root / "pairs.csv").write_text("id,image\nq,flair/p2.nii.gz\n")
    assert data_error(root, "csv", []) == f"{root / 'pairs.csv'}: expected a 'label' column, got ['id', 'image']"
    raw = tmp_path / "raw"
    save_volume(raw / "imagesTr" / "z_0000.nii.gz")
    assert data_error(raw, "nnunet", []) == f"{raw / 'labelsTr'}: label folder not found"
    cases = [
        {"id": "p1", "image": ["flair/p1.nii.gz"], "label": "labelsTr/p1.nii.gz"},
        {"id": "p2", "image": ["flair/p2.nii.gz"]},
    ]
    assert find_cases(
        data_settings(config("list", [], cases=cases)), root
    ).records == [  # listed: kept without its label
        {"id": "p1", "image": [str(root / "flair" / "p1.nii.gz")], "label": str(root / "labelsTr" / "p1.nii.gz")},
        {"id": "p2", "image": [str(root / "flair" / "p2.nii.gz")]},
    ]
    assert data_error(root, "list", [], cases=cases) == "case 'p2': no label file"  # and stopped by the check


def test_volume_fingerprint_tracks_names_and_sizes(tmp_path: Path) -> None:
    root = folders_dataset(tmp_path / "ds", ["p1", "p2"])
    records = build(root, "folders", ["flair", "t1c"])
    first = volume_fingerprint(records)
    assert len(first) == 16 and int(first, 16) >= 0
    assert (
        build_datalist(data_settings(config("folders", ["flair", "t1c"])), root).fingerprint == first
    )  # what the run records
    assert volume_fingerprint(list(reversed(records))) == first
    save_volume(root / "t1c" / "p2.nii.gz", shape=(8, 8, 60))
    assert volume_fingerprint(records) != first


# --------------------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------------------


def test_brats2015_sample_folders_layout(shared_data: Path) -> None:
    root = shared_data / "brats2015-sample"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    records = find_cases(
        data_settings(config("folders", ["imagesTr", "imagesTr_t1c"])), root
    ).records  # none of them read
    assert [r["id"] for r in records] == [f"brats_2013_pat000{n}_1" for n in (1, 2, 3, 5, 6)]
    assert all(len(r["image"]) == 2 and Path(r["label"]).parent == root / "labelsTr" for r in records)
    assert {nib.load(p).shape for r in records for p in (*r["image"], r["label"])} == {(240, 240, 155)}

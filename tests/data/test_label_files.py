"""3D cases labelled with Slicer ``.seg.nrrd`` files train on cached NIfTI label maps on their scans' grids: values
from ``data.labels`` or by first appearance, converted once, a bad file one finding (or one error) naming it."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.config.schema import PipelineConfig
from medseg.config.settings import data_settings
from medseg.core.errors import DataError
from medseg.data.check import check_dataset
from medseg.data.discovery import find_cases
from medseg.data.records import Finding
from medseg.data.settings import DataSettings
from medseg.imageio.headers import read_header
from medseg.imageio.slicer import write_seg_nrrd
from medseg.labels import Label
from tests.helpers.data import AFFINE

SHAPE = (12, 10, 8)
COLOURS = {"liver": (200, 0, 0), "tumour": (0, 200, 0), "spleen": (0, 0, 200)}


def _settings(tmp_path: Path, **data: object) -> DataSettings:
    cfg = PipelineConfig(
        name="t",
        spatial_dims=3,
        model={"in_channels": 1, "out_channels": 3},
        preprocessing={"intensity": {"kind": "ct"}},
        data={"cache_dir": str(tmp_path / "cache"), "label_mapping": {0: 0, 1: 1, 2: 2}, **data},
    )
    return data_settings(cfg)


def _case(image: Path, label: Path, segments: dict[str, int]) -> np.ndarray:
    """A scan and its Slicer segmentation: each segment (name -> value in the file) a block of its own; returns the
    file's label map."""
    rng = np.random.default_rng(len(segments))
    image.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(rng.normal(0, 50, SHAPE).astype(np.float32), AFFINE), image)
    labels_map = np.zeros(SHAPE, np.uint8)
    for value in segments.values():
        labels_map[2 * value : 2 * value + 3, 1:7, 2:6] = value
    labels = [Label(value, name, COLOURS[name]) for name, value in segments.items()]
    label.parent.mkdir(parents=True, exist_ok=True)
    write_seg_nrrd(labels_map, read_header(image), labels, label)
    return labels_map


def _read(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_check_reads_every_seg_nrrd_case_of_an_nnunet_dataset(tmp_path: Path) -> None:
    root = tmp_path / "liver"
    drawn = {
        "case0": _case(root / "imagesTr" / "case0_0000.nii.gz", root / "labelsTr" / "case0.seg.nrrd", {"tumour": 1}),
        "case1": _case(
            root / "imagesTr" / "case1_0000.nii.gz", root / "labelsTr" / "case1.seg.nrrd", {"liver": 1, "tumour": 2}
        ),
        "case2": _case(root / "imagesTr" / "case2_0000.nii.gz", root / "labelsTr" / "case2.seg.nrrd", {"liver": 3}),
    }
    report = check_dataset(_settings(tmp_path, layout="nnunet"), root)
    assert report.errors == [] and [r["id"] for r in report.records] == ["case0", "case1", "case2"]
    assert report.resolved["data.labels"] == {1: "tumour", 2: "liver"}  # in order of first appearance
    renumbered = {  # the files' values -> tumour 1, liver 2
        "case0": drawn["case0"],
        "case1": np.select([drawn["case1"] == 1, drawn["case1"] == 2], [2, 1], 0),
        "case2": np.where(drawn["case2"] == 3, 2, 0),
    }
    for record in report.records:
        label = Path(record["label"])
        assert label.parent.parent == tmp_path / "cache" / "labels" and label.name == f"{record['id']}.nii.gz"
        np.testing.assert_array_equal(_read(record["label"]), renumbered[record["id"]])
        np.testing.assert_allclose(nib.load(label).affine, AFFINE)


def _msd(root: Path) -> Path:
    """An MSD dataset whose labels are .seg.nrrd; case b names a segment data.labels does not list."""
    _case(root / "imagesTr" / "a.nii.gz", root / "labelsTr" / "a.seg.nrrd", {"liver": 1, "tumour": 2})
    _case(root / "imagesTr" / "b.nii.gz", root / "labelsTr" / "b.seg.nrrd", {"spleen": 1})
    _case(root / "imagesTr" / "c.nii.gz", root / "labelsTr" / "c.seg.nrrd", {"tumour": 1})
    training = [{"image": f"imagesTr/{c}.nii.gz", "label": f"labelsTr/{c}.seg.nrrd"} for c in "abc"]
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "training": training}))
    return root


def test_data_labels_name_the_values_and_a_bad_file_is_one_finding(tmp_path: Path) -> None:
    root = _msd(tmp_path / "msd")
    settings = _settings(tmp_path, layout="msd", labels={1: "tumour", 2: "liver"})
    message = f"{root / 'labelsTr' / 'b.seg.nrrd'}: segment 'spleen' is not in data.labels (known: tumour, liver)"
    with pytest.raises(DataError) as info:
        find_cases(settings, root)
    assert str(info.value) == message
    findings: list[Finding] = []
    cases = find_cases(settings, root, findings)
    assert findings == [Finding("error", "b", "label file", message, str(root / "labelsTr" / "b.seg.nrrd"))]
    assert [r["id"] for r in cases.records] == ["a", "c"] and "data.labels" not in cases.resolved
    a = _read(cases.records[0]["label"])
    assert sorted(np.unique(a)) == [0, 1, 2] and (a[2:4, 1:7, 2:6] == 2).all() and (a[4:7, 1:7, 2:6] == 1).all()


def test_label_files_are_converted_once_and_again_for_other_values(tmp_path: Path, monkeypatch) -> None:
    import medseg.data.label_files as label_files

    root = _msd(tmp_path / "msd")
    (root / "labelsTr" / "b.seg.nrrd").unlink()
    _case(root / "imagesTr" / "b.nii.gz", root / "labelsTr" / "b.seg.nrrd", {"liver": 1})
    first = find_cases(_settings(tmp_path, layout="msd"), root)
    assert first.resolved["data.labels"] == {1: "liver", 2: "tumour"}

    def no_conversion(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(label_files, "label_map_on_grid", no_conversion)
    again = find_cases(_settings(tmp_path, layout="msd"), root)
    assert [r["label"] for r in again.records] == [r["label"] for r in first.records]
    monkeypatch.undo()
    swapped = find_cases(_settings(tmp_path, layout="msd", labels={1: "tumour", 2: "liver"}), root)
    assert {Path(r["label"]).parent for r in swapped.records}.isdisjoint(
        {Path(r["label"]).parent for r in first.records}
    )
    np.testing.assert_array_equal(_read(swapped.records[2]["label"]), _read(first.records[2]["label"]) // 2)


def test_dicom_seg_folders_of_listed_cases_and_one_of_another_series(tmp_path: Path) -> None:
    from tests.imageio.test_label_files import OTHER_SERIES, SERIES, ct_series, dicom_seg_of, overlapping_frames

    root = tmp_path / "pacs"
    frames, expected = overlapping_frames()
    seg = dicom_seg_of(ct_series(root / "ct_a"), frames, root / "seg_a" / "seg.dcm", ["liver", "tumour"])
    ct_series(root / "ct_b", OTHER_SERIES)
    cases = [{"id": "good", "image": ["ct_a"], "label": "seg_a"}, {"id": "wrong", "image": ["ct_b"], "label": "seg_a"}]
    report = check_dataset(_settings(tmp_path, cases=cases, labels={1: "liver", 2: "tumour"}), root)
    message = f"{seg}: references series {SERIES}, not the scan's series {OTHER_SERIES} ({root / 'ct_b'})"
    assert [(f.severity, f.case, f.check, f.message) for f in report.errors] == [
        ("error", "wrong", "label file", message)
    ]
    assert [r["id"] for r in report.records] == ["good"]
    np.testing.assert_array_equal(_read(report.records[0]["label"]), expected)

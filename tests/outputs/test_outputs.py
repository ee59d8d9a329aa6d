"""What a prediction batch writes for clinicians and researchers: DICOM-SEG, Slicer .seg.nrrd, label descriptions,
per-structure statistics, probability and entropy maps, meshes. A network with known output (a threshold) makes
every mask exact, so files are checked against the scan's own voxels and geometry."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import trimesh
from PIL import Image

from medseg.config.schema import PipelineConfig
from medseg.config.settings import inference_settings
from medseg.core.errors import ConfigError
from medseg.imageio.headers import dicom_series_files, read_header
from medseg.infer.predictor import Predictor
from medseg.infer.uncertainty import predictive_entropy
from medseg.outputs.batch import Outputs, predict_folder
from tests.helpers.data import write_dicom_series
from tests.helpers.models import ThresholdNet, ct_threshold_predictor

LIVER = {"name": "liver", "color": [221, 130, 101], "code": "SCT:10200004"}
SPACING = (0.9, 1.1, 2.0)
BLOCK = (slice(5, 14), slice(4, 12), slice(3, 9))


def ct_predictor(**data: object) -> Predictor:
    """HU -160..240 -> 0..1: the block (150 HU = 0.775) and nothing else."""
    return ct_threshold_predictor({1: LIVER}, **data)


def ct_volume() -> np.ndarray:
    volume = np.full((20, 18, 12), -500, np.int16)
    volume[BLOCK] = 150
    volume[18:, 0:3, 0:2] = 200  # a second piece, at the border
    return volume


def expected_mask() -> np.ndarray:
    return (ct_volume() > 0).astype(np.uint8)


@pytest.fixture
def nifti_scan(tmp_path: Path) -> Path:
    folder = tmp_path / "nifti"
    folder.mkdir()
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-20.0, 10.0, 35.0)
    nib.save(nib.Nifti1Image(ct_volume(), affine), folder / "scan.nii.gz")
    return folder


@pytest.fixture
def dicom_scan(tmp_path: Path) -> Path:
    """One oblique DICOM series (tilted 5 degrees about y)."""
    image = sitk.GetImageFromArray(ct_volume().transpose(2, 1, 0).copy())
    image.SetSpacing(SPACING)
    image.SetOrigin((4.0, -3.0, 10.0))
    c, s = np.cos(np.radians(5)), np.sin(np.radians(5))
    image.SetDirection((c, 0, s, 0, 1, 0, -s, 0, c))
    write_dicom_series(image, tmp_path / "dicom" / "series", "1.2.826.0.1.3680043.2.1125.9.77", "s")
    return tmp_path / "dicom"


def test_nifti_and_slicer_outputs_with_label_descriptions(nifti_scan: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = predict_folder(ct_predictor(), nifti_scan, out, Outputs(formats=("nifti", "seg.nrrd")))
    assert report.written == ["scan"] and not report.failed
    mask = np.asarray(nib.load(out / "masks" / "scan.nii.gz").dataobj)
    np.testing.assert_array_equal(mask, expected_mask())

    data, header = nrrd.read(str(out / "masks" / "scan.seg.nrrd"))
    np.testing.assert_array_equal(data, expected_mask())
    assert header["Segment0_Name"] == "liver" and header["Segment0_LabelValue"] == "1"
    assert header["Segment0_Color"] == "0.866667 0.509804 0.396078"
    assert header["Segment0_Extent"] == "5 19 0 11 0 8" and header["space"] == "left-posterior-superior"
    written, scan = (
        sitk.ReadImage(str(out / "masks" / "scan.seg.nrrd")),
        sitk.ReadImage(str(nifti_scan / "scan.nii.gz")),
    )
    np.testing.assert_allclose(written.GetOrigin(), scan.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(written.GetSpacing(), scan.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(written.GetDirection(), scan.GetDirection(), atol=1e-6)

    labels = json.loads((out / "labels.json").read_text())
    assert labels["labels"] == [{"value": 1, "name": "liver", "color": [221, 130, 101], "code": "SCT:10200004"}]
    assert (out / "itksnap_labels.txt").read_text().splitlines()[-1].endswith('"liver"')
    again = predict_folder(ct_predictor(), nifti_scan, out, Outputs(formats=("nifti", "seg.nrrd")))
    assert again.skipped == ["scan"]  # both formats exist: finished
    more = predict_folder(ct_predictor(), nifti_scan, out, Outputs(formats=("nifti", "seg.nrrd", "nrrd")))
    assert more.written == ["scan"]  # a format still missing: the case is redone


def test_dicom_seg_frames_map_onto_the_source_slices(dicom_scan: Path, tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom

    out = tmp_path / "out"
    report = predict_folder(ct_predictor(), dicom_scan, out, Outputs(formats=("dicom-seg", "nifti")))
    assert report.written == ["series"], report.failed
    seg = hd.seg.segread(str(out / "masks" / "series.dcm"))
    nifti = np.asarray(nib.load(out / "masks" / "series.nii.gz").dataobj)
    assert nifti.sum() == expected_mask().sum()
    files = dicom_series_files(dicom_scan / "series")
    source_series = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series
    assert [(d.SegmentNumber, d.SegmentLabel) for d in seg.SegmentSequence] == [(1, "liver")]
    code = seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    assert (code.CodingSchemeDesignator, code.CodeValue) == ("SCT", "10200004")
    for index, path in enumerate(files):  # pixel equality with the NIfTI mask on every slice
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        frame = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1])[0, :, :, 0]
        np.testing.assert_array_equal(frame, nifti[:, :, index].T)


def test_dicom_seg_for_a_nifti_input_is_refused_before_anything_is_written(nifti_scan: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as info:
        predict_folder(ct_predictor(), nifti_scan, out, Outputs(formats=("dicom-seg", "stl")))
    message = str(info.value)
    # each problem names the option and the YAML key that ask for the output
    assert (
        "--format (prediction.formats) stl: unknown; choose from input, nifti, nrrd, mha, seg.nrrd, dicom-seg"
        in message
    )
    assert f"--format (prediction.formats) dicom-seg: {nifti_scan / 'scan.nii.gz'} not a DICOM series" in message
    assert "use nifti or seg.nrrd" in message and info.value.exit_code == 2
    assert not out.exists()


def test_statistics_per_case_and_label(nifti_scan: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    predict_folder(ct_predictor(), nifti_scan, out, Outputs(statistics=True))
    rows = list(csv.DictReader((out / "statistics.csv").open()))
    assert len(rows) == 1
    row = rows[0]
    voxels = 9 * 8 * 6 + 2 * 3 * 2
    assert row["case"] == "scan" and row["label"] == "liver" and int(row["voxels"]) == voxels
    assert float(row["volume_ml"]) == pytest.approx(voxels * np.prod(SPACING) / 1000, abs=1e-4)
    assert row["components"] == "2" and row["touches_border"] == "True"  # the second piece is on the edge
    assert float(row["mean_channel0"]) == pytest.approx((432 * 150 + 12 * 200) / voxels, abs=1e-3)
    assert (float(row["min_channel0"]), float(row["max_channel0"])) == (150.0, 200.0)
    # the world box of the voxel centres: x from voxel 5 to 19, y 0..11, z 0..8
    assert float(row["bbox_min_x"]) == pytest.approx(-20 + 5 * 0.9) and float(row["bbox_max_x"]) == pytest.approx(
        -20 + 19 * 0.9
    )
    assert float(row["bbox_max_y"]) == pytest.approx(10 + 11 * 1.1) and float(row["bbox_max_z"]) == pytest.approx(
        35 + 16
    )
    again = predict_folder(ct_predictor(), nifti_scan, out, Outputs(statistics=True))
    assert again.skipped == ["scan"] and len(list(csv.DictReader((out / "statistics.csv").open()))) == 1


def test_uncertainty_is_the_entropy_of_the_written_probabilities(nifti_scan: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    predict_folder(ct_predictor(), nifti_scan, out, Outputs(probabilities=True, uncertainty=True))
    probabilities = np.asarray(nib.load(out / "probabilities" / "scan.nii.gz").dataobj)
    entropy = nib.load(out / "uncertainty" / "scan.nii.gz")
    assert entropy.shape == (20, 18, 12)
    np.testing.assert_allclose(entropy.affine, nib.load(nifti_scan / "scan.nii.gz").affine)
    np.testing.assert_allclose(np.asarray(entropy.dataobj), predictive_entropy(probabilities[None]), atol=1e-6)
    row = next(csv.DictReader((out / "summary.csv").open()))
    assert float(row["mean_entropy"]) == pytest.approx(float(np.asarray(entropy.dataobj).mean()), abs=1e-5)
    assert 0.0 <= float(row["mean_entropy_foreground"]) <= 1.0


@pytest.mark.parametrize("space", ["lps", "ras"])
def test_meshes_are_in_world_coordinates(nifti_scan: Path, tmp_path: Path, space: str) -> None:
    out = tmp_path / "out"
    predict_folder(ct_predictor(), nifti_scan, out, Outputs(meshes=True, mesh_space=space, mesh_format="ply"))
    mesh = trimesh.load(out / "meshes" / "scan_liver.ply", force="mesh")
    header = read_header(nifti_scan / "scan.nii.gz")
    index = np.argwhere(expected_mask())
    half = 0.5 * np.array(SPACING)  # marching cubes puts the surface halfway to the next voxel
    low = header.affine[:3, :3] @ index.min(axis=0) + header.affine[:3, 3] - half
    high = header.affine[:3, :3] @ index.max(axis=0) + header.affine[:3, 3] + half
    if space == "lps":
        low, high = low * [-1, -1, 1], high * [-1, -1, 1]
        low, high = np.minimum(low, high), np.maximum(low, high)
    np.testing.assert_allclose(mesh.bounds, [low, high], atol=1e-4)
    assert mesh.is_watertight and mesh.volume > 0  # closed, outward-facing


def test_2d_probabilities_uncertainty_statistics_and_overlay_legend(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    picture = np.full((40, 50, 3), 40, np.uint8)
    picture[10:30, 15:35] = 220
    Image.fromarray(picture).save(images / "a.png")
    cfg = PipelineConfig(
        name="d2",
        preprocessing={"spatial_size": [40, 50]},
        postprocessing={"mode": "off"},
        data={"labels": {1: {"name": "lesion", "color": [0, 0, 255]}}},
    )
    out = tmp_path / "out"
    report = predict_folder(
        Predictor(ThresholdNet((0.5,)), inference_settings(cfg)),
        images,
        out,
        Outputs(probabilities=True, uncertainty=True, statistics=True),
    )
    assert report.written == ["a"]
    mask = np.asarray(Image.open(out / "masks" / "a.png"))
    np.testing.assert_array_equal(mask > 0, picture[..., 0] > 128)
    probability = np.asarray(Image.open(out / "probabilities" / "a.png"))
    assert probability.shape == (40, 50) and probability[20, 25] == 255 and probability[0, 0] == 0
    assert np.asarray(Image.open(out / "uncertainty" / "a.png")).shape == (40, 50)
    row = next(csv.DictReader((out / "statistics.csv").open()))
    assert row["label"] == "lesion" and row["voxels"] == "400" and row["volume_ml"] == ""
    assert (row["bbox_min_row"], row["bbox_max_col"], row["mean_red"]) == ("10", "34", "220.0")
    overlay = np.asarray(Image.open(out / "overlays" / "a.png"))
    assert (overlay[:14, :40] == 0).all(axis=-1).any(), "the legend's black box"
    with pytest.raises(ConfigError, match=r"--meshes \(prediction.meshes\): a 2D model has no surfaces"):
        predict_folder(
            Predictor(ThresholdNet((0.5,)), inference_settings(cfg)), images, tmp_path / "o2", Outputs(meshes=True)
        )

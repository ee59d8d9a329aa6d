"""Masks written by the 3D predictor lie exactly on the scan (RAS NIfTI, LPS NIfTI, LAS DICOM, NRRD).

Each scan goes through the real inference path (load -> RAS -> resample -> normalise -> crop -> sliding
window -> Invertd -> write); the written mask must have the scan's shape, spacing, origin and direction.
A label pushed through the same preprocessing and inverted back must keep Dice >= 0.99 against itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medseg.config.schema import PipelineConfig
from medseg.config.settings import inference_settings, transform_settings
from medseg.infer.predictor import Predictor
from medseg.models.registry import build_network
from medseg.outputs.batch import predict_records

CASES = {  # scan, reference label (or None), intensity preset
    "ct_ras": ("ct-mr-examples/nifti/example_ct_sm.nii.gz", "ct-mr-examples/nifti/example_seg.nii.gz", "ct"),
    "mr_lps": ("ct-mr-examples/nifti/example_mr_sm.nii.gz", None, "mri"),
    "dicom_las": ("ct-mr-examples/dicom/ct_series", "ct-mr-examples/dicom/ct_series_seg.nii.gz", "ct"),
    "nrrd": ("ct-mr-examples/nrrd/brain1_image.nrrd", "ct-mr-examples/nrrd/brain1_label.nrrd", "mri"),
}
ARGS = {"channels": [4, 8], "strides": [2], "num_res_units": 0}


def _config(kind: str, spacing: list[float] | None = (2.0, 2.5, 3.0)) -> PipelineConfig:
    return PipelineConfig(
        name="geometry",
        spatial_dims=3,
        preprocessing={"spacing": spacing, "intensity": {"kind": kind}, "patch_size": [32, 32, 16]},
        model={"in_channels": 1, "out_channels": 1, "args": ARGS},
        inference={"sw_batch_size": 4, "overlap": 0.25},
    )


def _read(path: Path) -> sitk.Image:
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


@pytest.mark.parametrize("case", sorted(CASES))
def test_predicted_mask_has_the_scan_geometry(case: str, shared_data: Path, tmp_path: Path) -> None:
    scan_rel, _, kind = CASES[case]
    scan = shared_data / scan_rel
    torch.manual_seed(0)
    predictor = Predictor(build_network("unet", 3, 1, 1, ARGS), inference_settings(_config(kind)))
    report = predict_records(predictor, [{"id": case, "image": [str(scan)]}], tmp_path / "out")
    assert report.written == [case], report.failed
    written = next((tmp_path / "out" / "masks").iterdir())
    mask, reference = sitk.ReadImage(str(written)), _read(scan)
    assert mask.GetSize() == reference.GetSize()
    np.testing.assert_allclose(mask.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(mask.GetOrigin(), reference.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(mask.GetDirection(), reference.GetDirection(), atol=1e-5)
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert written.name.endswith(".nrrd" if case == "nrrd" else ".nii.gz")


@pytest.mark.parametrize("grid", ["native", "coarse"])
@pytest.mark.parametrize("case", [c for c in sorted(CASES) if CASES[c][1]])
def test_label_through_preprocessing_and_back_keeps_dice(case: str, grid: str, shared_data: Path) -> None:
    """native: reorient + crop + resample at the scan's own spacing, Dice >= 0.99; coarse (2 x 2.5 x 3 mm),
    where resolution is lost both ways, Dice >= 0.90 (a flip or shift would give far less)."""
    from monai.transforms import Compose, Invertd

    from medseg.data.volume_checks import spacing_in_orientation
    from medseg.imageio.headers import read_header
    from medseg.transforms.volume_3d import volume_preprocessing

    scan_rel, label_rel, kind = CASES[case]
    cfg = _config(kind)
    if grid == "native":
        spacing = spacing_in_orientation(read_header(shared_data / label_rel).affine, "RAS")
        cfg = cfg.with_values({"preprocessing.spacing": spacing})
    preprocess = Compose(volume_preprocessing(transform_settings(cfg)))
    data = preprocess({"image": [str(shared_data / scan_rel)], "label": str(shared_data / label_rel)})
    data["pred"] = data["label"].clone()
    restored = Invertd(keys="pred", transform=preprocess, orig_keys="label", nearest_interp=True)(data)["pred"]
    original = np.asarray(sitk.GetArrayFromImage(_read(shared_data / label_rel))).transpose(2, 1, 0) > 0
    restored = np.asarray(restored[0]) > 0.5
    assert restored.shape == original.shape
    dice = 2 * np.logical_and(restored, original).sum() / (restored.sum() + original.sum())
    assert dice >= (0.99 if grid == "native" else 0.90), dice


@pytest.mark.parametrize("resampled", [True, False], ids=["resampled", "native-spacing"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_slab_resampler_matches_monai_invertd(case: str, resampled: bool, shared_data: Path) -> None:
    """The memory-lean inversion equals MONAI's Invertd (orientation + spacing + crop undone). Without
    resampling, the grids differ by flips and whole-voxel shifts only and voxels are copied, not interpolated."""
    from monai.data import MetaTensor
    from monai.transforms import Compose, Invertd

    from medseg.infer.resampling import _is_whole_voxel_map, resample_to_grid
    from medseg.transforms.volume_3d import volume_preprocessing

    scan_rel, _, kind = CASES[case]
    cfg = _config(kind) if resampled else _config(kind, spacing=None)
    preprocess = Compose(volume_preprocessing(transform_settings(cfg), keys=("image",)))
    data = preprocess({"image": [str(shared_data / scan_rel)]})
    torch.manual_seed(0)
    field = torch.nn.functional.avg_pool3d(torch.rand(1, 1, *data["image"].shape[1:]), 5, 1, 2)[0]
    data["pred"] = MetaTensor(field.clone())
    expected = np.asarray(Invertd("pred", preprocess, orig_keys="image", nearest_interp=False)(data)["pred"])
    meta = data["image"].meta
    shape = tuple(int(n) for n in meta["spatial_shape"])
    crop = next(op for op in data["image"].applied_operations if op["class"] == "CropForeground")
    cropped = tuple(bool(n) for n in crop["extra_info"]["cropped"])
    source_affine, target_affine = np.asarray(meta["affine"]), np.asarray(meta["original_affine"])
    ours = resample_to_grid(field, source_affine, target_affine, shape, cropped, slab_voxels=50_000).numpy()
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    shift = np.eye(4)
    shift[:3, 3] = 1.0
    assert _is_whole_voxel_map(shift @ np.linalg.inv(source_affine) @ target_affine) is not resampled
    interpolated = resample_to_grid(field, source_affine, target_affine, shape, cropped, exact_shortcut=False)
    np.testing.assert_allclose(ours, interpolated.numpy(), atol=1e-5)

"""medseg.imageio: SimpleITK-backed MONAI reader (NRRD / MetaImage / DICOM series) and masks written like a scan.

Geometry is checked against SimpleITK itself, computed here independently of the package: the RAS affine of a
SimpleITK image is ``diag(-1, -1, 1, 1) @ [[direction @ diag(spacing), origin], [0, 0, 0, 1]]`` and its voxel
(x, y, z) is ``GetArrayFromImage(image)[z, y, x]``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImage, LoadImaged, Orientationd, Spacingd

from medseg.core.errors import DataError
from medseg.imageio.readers import SimpleITKReader, load_volume, reader_for
from medseg.imageio.writers import write_mask_like, write_probability_like
from tests.helpers.data import write_dicom_series
from tests.helpers.paths import SHARED_DATA as DATA_ROOT

# name -> (path relative to DATA_ROOT, expected RAS axis codes of the array axes)
REAL = {
    "ct_sm": ("ct-mr-examples/nifti/example_ct_sm.nii.gz", "RAS"),
    "mr_sm": ("ct-mr-examples/nifti/example_mr_sm.nii.gz", "LPS"),
    "dicom": ("ct-mr-examples/dicom/ct_series", "LPS"),
    "brain1": ("ct-mr-examples/nrrd/brain1_image.nrrd", "LAS"),
    "brats": ("brats2015-sample/imagesTr/brats_2013_pat0001_1.nii.gz", "LPS"),
}


def real(relative: str) -> Path:
    """A file of the shared data folder; skips the test when it is absent."""
    path = DATA_ROOT / relative
    if not path.exists():
        pytest.skip(f"shared data {path} not found (set MEDSEG_DATA_ROOT or provide ../shared/data)")
    return path


def ras_affine(image: sitk.Image) -> np.ndarray:
    """Independent LPS -> RAS affine of a 3D SimpleITK image."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def sitk_xyz(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def read_reference(path: Path) -> sitk.Image:
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def probes(shape: tuple[int, ...], n: int = 6) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(7)
    points = [(0, 0, 0), tuple(s - 1 for s in shape), tuple(s // 2 for s in shape), (shape[0] - 1, 0, shape[2] // 3)]
    points += [tuple(int(rng.integers(0, s)) for s in shape) for _ in range(n)]
    return points


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def sitk_volume(shape_xyz: tuple[int, int, int], seed: int, direction: np.ndarray, components: int = 1) -> sitk.Image:
    rng = np.random.default_rng(seed)
    zyx = shape_xyz[::-1] + ((components,) if components > 1 else ())
    image = sitk.GetImageFromArray(rng.integers(-1000, 2000, zyx).astype(np.int16), isVector=components > 1)
    image.SetSpacing((0.8, 1.25, 2.5))
    image.SetOrigin((-31.5, 12.25, 80.0))
    image.SetDirection(direction.ravel().tolist())
    return image


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small volumes with non-trivial geometry, made once for the module."""
    root = tmp_path_factory.mktemp("imageio")
    rng = np.random.default_rng(0)
    oblique = rotation(0.2, -0.35, 0.5)
    paths: dict[str, Path] = {}

    # 20x16x12 NIfTI, oblique, qform == sform (SimpleITK and nibabel agree on its geometry).
    affine = np.eye(4)
    affine[:3, :3] = oblique @ np.diag([1.5, 0.8, 2.0])
    affine[:3, 3] = [-10.0, 20.0, 5.0]
    image = nib.Nifti1Image(rng.integers(-100, 1000, (20, 16, 12)).astype(np.int16), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    paths["nifti"] = root / "oblique.nii.gz"
    nib.save(image, paths["nifti"])

    # Same data, qform (scanner) != sform (aligned): a writer must copy both exactly.
    shifted = affine.copy()
    shifted[:3, 3] += [1.0, 2.0, 3.0]
    image = nib.Nifti1Image(np.asarray(image.dataobj), affine)
    image.set_qform(affine, code=1)
    image.set_sform(shifted, code=2)
    image.header.set_xyzt_units("mm", "sec")
    image.header["cal_max"] = 1000.0
    paths["nifti_qs"] = root / "qform_sform.nii"
    nib.save(image, paths["nifti_qs"])

    flip = np.diag([1.0, -1.0, -1.0]) @ rotation(0.0, 0.0, 0.3)
    for name, suffix, direction in (("mha", ".mha", oblique), ("nrrd", ".nrrd", flip), ("mhd", ".mhd", oblique)):
        paths[name] = root / f"volume_{name}{suffix}"
        sitk.WriteImage(sitk_volume((20, 16, 12), seed=len(paths), direction=direction), str(paths[name]))
    paths["vector"] = root / "vector.mha"
    sitk.WriteImage(sitk_volume((9, 8, 7), seed=3, direction=oblique, components=3), str(paths["vector"]))

    series = sitk_volume((12, 10, 6), seed=4, direction=rotation(0.0, 0.0, 0.3))
    paths["dicom"] = root / "dicom_one"
    write_dicom_series(series, paths["dicom"], "1.2.826.0.1.3680043.2.1125.7.2.1", "a")
    paths["dicom2"] = root / "dicom_two"
    write_dicom_series(series, paths["dicom2"], "1.2.826.0.1.3680043.2.1125.7.2.1", "a")
    write_dicom_series(series[:, :, :4], paths["dicom2"], "1.2.826.0.1.3680043.2.1125.7.2.2", "b")
    return paths


# ------------------------------------------------------------------------------------------------ reader_for


def test_reader_for_dispatch(tmp_path: Path) -> None:
    assert reader_for(Path("a/ct.nii.gz")) == "NibabelReader"
    assert reader_for(Path("a/CT.NII")) == "NibabelReader"
    for name in ("x.nrrd", "x.nhdr", "x.mha", "x.MHD"):
        assert isinstance(reader_for(Path(name)), SimpleITKReader)
    assert isinstance(reader_for(tmp_path), SimpleITKReader)  # a folder is a DICOM series
    assert reader_for(Path("lesion.png")) == "PILReader"
    assert reader_for(Path("lesion.jpg")) == "PILReader"
    with pytest.raises(DataError, match=r"notes\.xyz.*NIfTI.*NRRD.*MetaImage.*DICOM"):
        reader_for(Path("notes.xyz"))
    with pytest.raises(DataError, match=r"slice\.dcm.*folder"):
        reader_for(Path("slice.dcm"))


def test_verify_suffix(tmp_path: Path) -> None:
    reader = SimpleITKReader()
    assert (
        reader.verify_suffix("a.nrrd") and reader.verify_suffix(["a.mha", "b.mhd"]) and reader.verify_suffix(tmp_path)
    )
    assert not reader.verify_suffix("a.nii.gz") and not reader.verify_suffix(["a.mha", "b.png"])


# --------------------------------------------------------------------------------------------- reading geometry


def check_geometry(path: Path, axcodes: str | None = None) -> None:
    """LoadImage with reader_for's reader == SimpleITK (affine to 1e-5, probed voxels, dtype)."""
    reference = read_reference(path)
    image = LoadImage(reader=reader_for(path), image_only=True, dtype=None)(path)
    expected = ras_affine(reference)
    assert tuple(image.shape) == reference.GetSize()
    np.testing.assert_allclose(np.asarray(image.affine), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(image.meta["original_affine"]), expected, atol=1e-5)
    assert tuple(int(s) for s in image.meta["spatial_shape"]) == reference.GetSize()
    assert str(image.meta["space"]) == "RAS"
    assert np.isnan(float(image.meta["original_channel_dim"]))  # "no_channel"
    assert image.meta["filename_or_obj"] == str(path)
    values = sitk_xyz(reference)
    assert image.dtype == torch.from_numpy(values[:1, :1, :1].copy()).dtype  # int16 stays int16
    array = image.numpy()
    for index in probes(array.shape):
        assert array[index] == values[index], index
    if axcodes:
        assert "".join(nib.aff2axcodes(np.asarray(image.affine))) == axcodes


@pytest.mark.parametrize("name", ["nifti", "mha", "nrrd", "mhd", "dicom"])
def test_synthetic_geometry_matches_simpleitk(synthetic: dict[str, Path], name: str) -> None:
    check_geometry(synthetic[name])
    if name != "nifti":  # the oblique direction reaches the affine (not just spacing)
        affine = load_volume(synthetic[name])[1]["affine"]
        assert np.abs(affine[:3, :3] - np.diag(np.diag(affine[:3, :3]))).max() > 0.1


@pytest.mark.parametrize("name", list(REAL))
def test_real_geometry_matches_simpleitk(name: str) -> None:
    relative, axcodes = REAL[name]
    check_geometry(real(relative), axcodes)


def test_nrrd_equals_its_nifti_conversion(tmp_path: Path) -> None:
    nrrd = real("ct-mr-examples/nrrd/brain1_image.nrrd")
    nifti = tmp_path / "brain1.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(nrrd)), str(nifti))
    ours = LoadImage(reader=SimpleITKReader(), image_only=True, dtype=None)(nrrd)
    theirs = LoadImage(reader="NibabelReader", image_only=True, dtype=None)(nifti)
    assert ours.shape == theirs.shape == (256, 256, 25)
    assert ours.dtype == theirs.dtype == torch.int16
    assert torch.equal(ours.as_tensor(), theirs.as_tensor())
    np.testing.assert_allclose(np.asarray(ours.affine), np.asarray(theirs.affine), atol=1e-5)


def test_load_volume_keeps_dtype_and_loadimage_default_casts(synthetic: dict[str, Path]) -> None:
    array, meta = load_volume(synthetic["mha"])
    assert array.dtype == np.int16 and array.shape == (20, 16, 12)
    assert isinstance(meta["affine"], np.ndarray) and meta["affine"].shape == (4, 4)
    assert LoadImage(reader=SimpleITKReader(), image_only=True)(synthetic["mha"]).dtype == torch.float32


def test_loadimaged_channel_first(synthetic: dict[str, Path]) -> None:
    load = Compose(
        [LoadImaged(keys=["image", "label"], reader=SimpleITKReader()), EnsureChannelFirstd(["image", "label"])]
    )
    data = load({"image": synthetic["mha"], "label": synthetic["dicom"]})
    assert data["image"].shape == (1, 20, 16, 12)
    assert data["label"].shape == (1, 12, 10, 6)
    np.testing.assert_allclose(
        np.asarray(data["image"].affine), ras_affine(sitk.ReadImage(str(synthetic["mha"]))), atol=1e-5
    )


def test_vector_image_is_channel_last_then_first(synthetic: dict[str, Path]) -> None:
    reference = sitk.ReadImage(str(synthetic["vector"]))
    array, meta = load_volume(synthetic["vector"])
    assert array.shape == (9, 8, 7, 3) and meta["original_channel_dim"] == -1
    assert tuple(meta["spatial_shape"]) == (9, 8, 7)
    image = LoadImage(reader=SimpleITKReader(), image_only=True, ensure_channel_first=True, dtype=None)(
        synthetic["vector"]
    )
    assert image.shape == (3, 9, 8, 7)
    np.testing.assert_array_equal(image[1].numpy(), sitk.GetArrayFromImage(reference)[..., 1].transpose(2, 1, 0))


def test_list_of_files_stacks_channels(synthetic: dict[str, Path]) -> None:
    path = synthetic["mha"]
    image = LoadImage(reader=SimpleITKReader(), image_only=True, dtype=None)([path, path])
    assert image.shape == (2, 20, 16, 12)
    assert torch.equal(image[0], image[1])


# ---------------------------------------------------------------------------------------------- read errors


def assert_one_line_data_error(path: Path, *patterns: str) -> None:
    with pytest.raises(DataError) as info:
        load_volume(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    for pattern in patterns:
        assert pattern in message, message


def test_truncated_nifti(tmp_path: Path, synthetic: dict[str, Path]) -> None:
    data = synthetic["nifti"].read_bytes()
    for keep in (len(data) // 2, 60):
        path = tmp_path / f"cut{keep}.nii.gz"
        path.write_bytes(data[:keep])
        assert_one_line_data_error(path)


def test_corrupt_sitk_files(tmp_path: Path, synthetic: dict[str, Path]) -> None:
    text = tmp_path / "notes.nrrd"
    text.write_text("this is not an image\n", encoding="utf-8")
    assert_one_line_data_error(text)
    data = synthetic["mha"].read_bytes()
    cut = tmp_path / "cut.mha"
    cut.write_bytes(data[: len(data) - 500])
    assert_one_line_data_error(cut)


def test_folders_without_one_series(tmp_path: Path, synthetic: dict[str, Path]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_data_error(empty, "no DICOM series")
    other = tmp_path / "not_dicom"
    other.mkdir()
    (other / "readme.txt").write_text("x", encoding="utf-8")
    assert_one_line_data_error(other, "no DICOM series")
    assert_one_line_data_error(synthetic["dicom2"], "2 DICOM series")
    with pytest.raises(DataError, match="2 DICOM series"):  # also straight through LoadImage's runtime reader
        LoadImage(image_only=True)(synthetic["dicom2"], reader=SimpleITKReader())


def test_unknown_and_missing_files(tmp_path: Path) -> None:
    unknown = tmp_path / "scan.xyz"
    unknown.write_text("x", encoding="utf-8")
    assert_one_line_data_error(unknown, "unsupported image format")
    assert_one_line_data_error(tmp_path / "missing.nrrd", "not found")


# ------------------------------------------------------------------------------------------ write_mask_like


def check_written_like(output: Path, reference: Path, expected: np.ndarray, pixel_id: int = sitk.sitkUInt8) -> None:
    """SimpleITK sees the output on the reference's exact grid, with the expected voxels."""
    ref = read_reference(reference)
    out = sitk.ReadImage(str(output))
    assert out.GetSize() == ref.GetSize()
    np.testing.assert_allclose(out.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(out.GetOrigin(), ref.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(out.GetDirection(), ref.GetDirection(), atol=1e-5)
    assert out.GetPixelID() == pixel_id
    np.testing.assert_array_equal(sitk_xyz(out), expected)
    # ... and medseg / MONAI see the same affine for both.
    np.testing.assert_allclose(load_volume(output)[1]["affine"], load_volume(reference)[1]["affine"], atol=1e-5)
    leftovers = [p.name for p in output.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


def check_nifti_header(output: Path, reference: Path) -> None:
    ref, out = nib.load(str(reference)).header, nib.load(str(output)).header
    for coded in ("qform", "sform"):
        (ref_matrix, ref_code), (out_matrix, out_code) = (getattr(h, f"get_{coded}")(coded=True) for h in (ref, out))
        assert int(out_code) == int(ref_code)
        if ref_matrix is not None:
            np.testing.assert_allclose(out_matrix, ref_matrix, atol=1e-6)
    np.testing.assert_allclose(out["pixdim"][:4], ref["pixdim"][:4])
    assert out["xyzt_units"] == ref["xyzt_units"]
    assert out.get_data_dtype() == np.uint8
    assert out.get_slope_inter() == (None, None)  # no scaling: labels are stored as they are


def roundtrip(mask: np.ndarray, reference: Path, output: Path) -> None:
    assert write_mask_like(mask, reference, output) == output
    check_written_like(output, reference, mask.astype(np.uint8))
    if output.name.endswith((".nii", ".nii.gz")) and reference.name.endswith((".nii", ".nii.gz")):
        check_nifti_header(output, reference)
        np.testing.assert_array_equal(np.asanyarray(nib.load(str(output)).dataobj), mask)


@pytest.mark.parametrize(
    ("name", "suffix"),
    [("nifti", ".nii.gz"), ("nifti_qs", ".nii.gz"), ("mha", ".mha"), ("nrrd", ".nrrd"), ("mhd", ".mhd")]
    + [("dicom", ".nii.gz"), ("nrrd", ".nhdr"), ("mha", ".nii.gz")],
)
def test_write_mask_like_synthetic(tmp_path: Path, synthetic: dict[str, Path], name: str, suffix: str) -> None:
    image, _ = load_volume(synthetic[name])
    mask = (image > 500).astype(np.uint8) + (image > 1500).astype(np.uint8)  # labels 0, 1, 2
    assert 0 < mask.mean() < 1
    roundtrip(mask, synthetic[name], tmp_path / "out" / f"mask{suffix}")


def test_write_mask_like_nifti_qform_sform_differ(tmp_path: Path, synthetic: dict[str, Path]) -> None:
    """SimpleITK places this file by its qform, nibabel by its sform: both must be copied, not recomputed."""
    reference = synthetic["nifti_qs"]
    output = tmp_path / "mask.nii"
    write_mask_like(np.ones((20, 16, 12), bool), reference, output)
    ref, out = nib.load(str(reference)).header, nib.load(str(output)).header
    for key in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y"):
        assert out[key] == ref[key], key
    for key in ("srow_x", "srow_y", "srow_z"):
        np.testing.assert_array_equal(out[key], ref[key])
    assert ref["cal_max"] == 1000.0 and out["cal_max"] == 0.0


def test_write_mask_like_real(tmp_path: Path) -> None:
    ct = real("ct-mr-examples/nifti/example_ct_sm.nii.gz")
    roundtrip((load_volume(ct)[0] > 200).astype(np.uint8), ct, tmp_path / "ct_bone.nii.gz")
    seg, _ = load_volume(real("ct-mr-examples/nifti/example_seg.nii.gz"))
    assert {1, 5} <= set(np.unique(seg).tolist())
    roundtrip(seg, ct, tmp_path / "ct_seg.nii.gz")
    mr = real("ct-mr-examples/nifti/example_mr_sm.nii.gz")
    roundtrip((load_volume(mr)[0] > 300).astype(np.uint8), mr, tmp_path / "mr_mask.nii.gz")
    brain = real("ct-mr-examples/nrrd/brain1_image.nrrd")
    label, _ = load_volume(real("ct-mr-examples/nrrd/brain1_label.nrrd"))
    assert label.dtype == np.int32 and label.sum() == 4137
    roundtrip(label, brain, tmp_path / "brain1_mask.nrrd")
    brats = real("brats2015-sample/imagesTr/brats_2013_pat0001_1.nii.gz")
    tumour, _ = load_volume(real("brats2015-sample/labelsTr/brats_2013_pat0001_1.nii.gz"))
    assert tumour.dtype == np.float32  # integer-valued float labels are accepted
    roundtrip(tumour, brats, tmp_path / "brats_mask.nii.gz")


def test_write_mask_like_dicom_with_shipped_seg(tmp_path: Path) -> None:
    """ct_series_seg.nii.gz is LAS, the DICOM series LPS: reoriented onto the series grid, it writes back exactly."""
    series = real("ct-mr-examples/dicom/ct_series")
    seg = nib.load(str(real("ct-mr-examples/dicom/ct_series_seg.nii.gz")))
    image, meta = load_volume(series)
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(seg.affine), nib.orientations.io_orientation(meta["affine"])
    )
    on_grid = seg.as_reoriented(transform)
    np.testing.assert_allclose(on_grid.affine, meta["affine"], atol=1e-3)  # now the same voxel grid
    mask = np.asanyarray(on_grid.dataobj)
    assert mask.shape == image.shape == (512, 512, 20)
    assert image[mask > 0].mean() > image[mask == 0].mean() + 500  # the labels sit on the body, not the air
    roundtrip(mask, series, tmp_path / "ct_series_mask.nii.gz")


def test_write_probability_like(tmp_path: Path, synthetic: dict[str, Path]) -> None:
    rng = np.random.default_rng(1)
    prob = rng.random((20, 16, 12)).astype(np.float32)
    for name, suffix in (("nifti", ".nii.gz"), ("mha", ".mha"), ("nrrd", ".nrrd")):
        output = write_probability_like(prob, synthetic[name], tmp_path / f"prob_{name}{suffix}")
        check_written_like(output, synthetic[name], prob, pixel_id=sitk.sitkFloat32)


def test_a_nifti_scans_mask_written_as_nrrd_or_mha_keeps_its_geometry(
    tmp_path: Path, synthetic: dict[str, Path]
) -> None:
    mask = (np.random.default_rng(2).random((20, 16, 12)) > 0.7).astype(np.uint8)
    for suffix in (".nrrd", ".mha"):
        output = write_mask_like(mask, synthetic["nifti"], tmp_path / f"mask{suffix}")
        check_written_like(output, synthetic["nifti"], mask)


def test_write_mask_like_refusals(tmp_path: Path, synthetic: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    reference = synthetic["mha"]
    output = tmp_path / "mask.mha"
    with pytest.raises(DataError, match=r"shape 20x16x11 differs from the reference .*volume_mha\.mha shape 20x16x12"):
        write_mask_like(np.zeros((20, 16, 11), np.uint8), reference, output)
    with pytest.raises(DataError, match="shape 12x16x20"):  # (z, y, x) order is rejected too
        write_mask_like(np.zeros((12, 16, 20), np.uint8), reference, output)
    with pytest.raises(DataError, match="0..255"):
        write_mask_like(np.full((20, 16, 12), 300), reference, output)
    with pytest.raises(DataError, match="non-integer"):
        write_mask_like(np.full((20, 16, 12), 0.5), reference, output)
    with pytest.raises(DataError, match="refusing to overwrite the reference"):
        write_mask_like(np.zeros((20, 16, 12), np.uint8), reference, reference)
    with pytest.raises(DataError, match="unsupported suffix"):
        write_mask_like(np.zeros((20, 16, 12), np.uint8), reference, tmp_path / "mask.png")
    assert list(tmp_path.iterdir()) == []

    # A failing write leaves the previous output intact and no temporary file behind.
    write_mask_like(np.ones((20, 16, 12), np.uint8), reference, output)
    before = output.read_bytes()

    def broken_write(image: sitk.Image, path: str, *args: object, **kwargs: object) -> None:
        Path(path).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken_write)
    with pytest.raises(DataError, match="disk full"):
        write_mask_like(np.zeros((20, 16, 12), np.uint8), reference, output)
    assert output.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.mha"]

    def broken_save(image: object, path: str) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_mask_like(np.zeros((20, 16, 12), np.uint8), synthetic["nifti"], tmp_path / "m.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.mha"]


# ------------------------------------------------------------------------- Orientationd + Spacingd + Invertd


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def invert_roundtrip(image: Path, label: Path, pixdim: tuple[float, float, float]) -> None:
    keys = ["image", "label"]
    preprocess = Compose(
        [
            LoadImaged(keys, reader=reader_for(image)),
            EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes="RAS"),
            Spacingd(keys, pixdim=pixdim, mode=("bilinear", "nearest")),
        ]
    )
    data = preprocess({"image": str(image), "label": str(label)})
    assert "".join(nib.aff2axcodes(np.asarray(data["label"].affine))) == "RAS"
    np.testing.assert_allclose(np.linalg.norm(np.asarray(data["label"].affine)[:3, :3], axis=0), pixdim, atol=1e-4)
    data["pred"] = data["label"].clone()
    inverted = Invertd(keys="pred", transform=preprocess, orig_keys="label", nearest_interp=True)(data)
    original, meta = load_volume(label)
    pred = inverted["pred"]
    assert tuple(pred.shape) == (1, *original.shape)
    np.testing.assert_allclose(np.asarray(pred.affine), meta["affine"], atol=1e-4)
    assert dice(pred[0].numpy(), original) >= 0.99


def test_invert_lps_mr(tmp_path: Path) -> None:
    mr = real("ct-mr-examples/nifti/example_mr_sm.nii.gz")
    label = write_mask_like((load_volume(mr)[0] > 300).astype(np.uint8), mr, tmp_path / "mr_mask.nii.gz")
    invert_roundtrip(mr, label, (2.0, 2.0, 2.5))
    # The same scan as MetaImage, through SimpleITKReader.
    mha = tmp_path / "mr.mha"
    sitk.WriteImage(sitk.ReadImage(str(mr)), str(mha))
    mha_label = write_mask_like(load_volume(label)[0], mha, tmp_path / "mr_mask.mha")
    invert_roundtrip(mha, mha_label, (2.0, 2.0, 2.5))


def test_invert_brain1_nrrd() -> None:
    image = real("ct-mr-examples/nrrd/brain1_image.nrrd")
    invert_roundtrip(image, real("ct-mr-examples/nrrd/brain1_label.nrrd"), (0.7, 0.7, 5.0))


def test_nifti_through_simpleitk_reader(synthetic: dict[str, Path]) -> None:
    """SimpleITKReader.read also accepts NIfTI (ITK reads it): same array and affine as NibabelReader when the
    file's qform and sform agree. (Where they disagree ITK may pick the qform and nibabel the sform.)"""
    paths = [synthetic["nifti"]]
    if (DATA_ROOT / REAL["mr_sm"][0]).exists():
        paths.append(DATA_ROOT / REAL["mr_sm"][0])
    for path in paths:
        ours = LoadImage(reader=SimpleITKReader(), image_only=True, dtype=None)(path)
        theirs = LoadImage(reader="NibabelReader", image_only=True, dtype=None)(path)
        assert torch.equal(ours.as_tensor(), theirs.as_tensor())
        np.testing.assert_allclose(np.asarray(ours.affine), np.asarray(theirs.affine), atol=1e-5)

"""A bad-input corpus, generated in temporary folders and fed to the real command line.

Every kind builds one bad input and runs ``medseg validate``, ``medseg run``, ``medseg run --resume`` or
``medseg predict`` on it (in-process with typer's CliRunner; a few in a real subprocess). A rejected input must
give exactly one line (``error: ...``, or ``failed <case>: ...`` in a prediction batch) naming the file or key
and the problem, a non-zero exit, no traceback, no partial output, and leave the input byte-identical. In a
prediction batch the bad case sits beside a good one, which must still be written. A few kinds are accepted by
design (documented behaviour, with a warning naming the file); they are marked ``accepted``.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medseg.cli.app import app
from medseg.config.schema import DATA_ROOT_ENV
from tests.helpers.data import AFFINE, locale_kept, phantom_case, tiny_overrides
from tests.helpers.paths import REPO

SKIN = REPO / "pipelines" / "skin_lesion.yaml"
BRAIN = REPO / "pipelines" / "brain_tumor_mri.yaml"
MAX_VOXELS_3D = 20_000  # the tiny 3D model refuses larger scans (a phantom has 24 x 24 x 16 = 9,216 voxels)
slow = pytest.mark.slow


# --------------------------------------------------------------------------------------------------
# Shared data and models (built once per module)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medseg.data.synthetic import generate_dermoscopy_dataset

    return generate_dermoscopy_dataset(
        tmp_path_factory.mktemp("d2") / "tiny", num_cases=12, image_size=(64, 96), seed=3
    )


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five one-modality phantom volumes with labels 0/1/2 (float32, as many real label files are)."""
    root = tmp_path_factory.mktemp("d3") / "phantoms"
    rng = np.random.default_rng(0)
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    for index in range(5):
        flair, _, label = phantom_case(rng)
        nib.save(nib.Nifti1Image(flair, AFFINE), root / "imagesTr" / f"case{index}.nii.gz")
        nib.save(nib.Nifti1Image(label, AFFINE), root / "labelsTr" / f"case{index}.nii.gz")
    return root


def run2d_overrides(tmp: Path, data_root: Path, *extra: str) -> list[str]:
    return [*tiny_overrides(tmp, data_root), "training.epochs=1", "tracking.enabled=false", *extra]


def run3d_overrides(tmp: Path, dataset: Path, *extra: str) -> list[str]:
    return [
        f"data.root={dataset.parent}",
        f"data.dataset_dir={dataset.name}",
        "data.modalities=[imagesTr]",
        "model.in_channels=1",
        f"data.split.file={tmp / 'splits.json'}",
        f"output_root={tmp / 'runs'}",
        "preprocessing.patch_size=[16, 16, 16]",
        "model.args.channels=[8, 16, 32]",
        "model.args.strides=[2, 2]",
        "training.epochs=1",
        "training.samples_per_volume=2",
        "training.max_minutes=null",
        "schedule.length=epochs",
        "tracking.enabled=false",
        *extra,
    ]


@pytest.fixture(scope="module")
def model2d(tmp_path_factory: pytest.TempPathFactory, dataset2d: Path) -> Path:
    from medseg.config.loading import load_config
    from medseg.pipeline.run import run_pipeline

    tmp = tmp_path_factory.mktemp("m2")
    cfg = load_config(SKIN, run2d_overrides(tmp, dataset2d, "stages=[train]"))
    return run_pipeline(cfg, run_name="tiny2d").run_dir


@pytest.fixture(scope="module")
def model3d(tmp_path_factory: pytest.TempPathFactory, phantoms: Path) -> Path:
    from medseg.config.loading import load_config
    from medseg.pipeline.run import run_pipeline

    tmp = tmp_path_factory.mktemp("m3")
    cfg = load_config(BRAIN, run3d_overrides(tmp, phantoms, "stages=[train]", f"inference.max_voxels={MAX_VOXELS_3D}"))
    return run_pipeline(cfg, run_name="tiny3d").run_dir


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No data root or tracking store from the caller, cwd in tmp_path, the CLI's logging set-up undone."""
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# --------------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    """One bad input and what the command line must say about it."""

    args: list[str]
    names: str  # the file or key that the message names
    problem: str  # words of the problem that the message holds
    inputs: list[Path]  # files and folders that must be byte-identical afterwards
    absent: list[Path] = field(default_factory=list)  # no partial output: these must not exist afterwards
    exit_code: int = 2
    out: Path | None = None  # predict: the output folder
    good: str | None = None  # predict: the mask of the good case in the batch, which must be written
    accepted: bool = False  # documented behaviour: processed, with a warning naming the file
    subprocess: bool = False  # run in a real interpreter (true exit code and stderr)
    unprivileged: bool = False  # run without root's permission override (for the unreadable file)
    env: dict[str, str] = field(default_factory=dict)


Get = Callable[[str], Path]


def sets(overrides: list[str]) -> list[str]:
    return [part for item in overrides for part in ("--set", item)]


def write_yaml(tmp: Path, text: str) -> Path:
    path = tmp / "pipeline.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def validate(tmp: Path, text: str, names: str, problem: str, **kwargs) -> Scenario:
    path = write_yaml(tmp, text)
    return Scenario(["validate", str(path)], names, problem, [path], **kwargs)


def copy2d(tmp: Path, get: Get) -> Path:
    return Path(shutil.copytree(get("dataset2d"), tmp / "data"))


def run2d(tmp: Path, data: Path, names: str, problem: str, *extra: str, **kwargs) -> Scenario:
    kwargs.setdefault("absent", [] if kwargs.get("accepted") else [tmp / "runs", tmp / "splits.json"])
    return Scenario(["run", str(SKIN), *sets(run2d_overrides(tmp, data, *extra))], names, problem, [data], **kwargs)


def copy3d(tmp: Path, get: Get) -> Path:
    return Path(shutil.copytree(get("phantoms"), tmp / "data" / "phantoms"))


def run3d(tmp: Path, data: Path, names: str, problem: str, *extra: str, **kwargs) -> Scenario:
    kwargs.setdefault("absent", [tmp / "runs", tmp / "splits.json"])
    return Scenario(["run", str(BRAIN), *sets(run3d_overrides(tmp, data, *extra))], names, problem, [data], **kwargs)


def a_label(data: Path) -> tuple[np.ndarray, Path]:
    path = data / "labelsTr" / "case1.nii.gz"
    return np.asarray(nib.load(path).dataobj), path


def an_image(data: Path) -> tuple[np.ndarray, Path]:
    path = data / "imagesTr" / "case1.nii.gz"
    return np.asarray(nib.load(path).dataobj), path


def first_image(data: Path) -> Path:
    return sorted((data / "images").iterdir())[0]


def predict(model: Path | str, source: Path, out: Path, names: str, problem: str, **kwargs) -> Scenario:
    """``medseg predict``; exit code 1 when cases fail, 2 (and no output folder) when the whole call is refused."""
    kwargs.setdefault("exit_code", 1)
    kwargs.setdefault("absent", [out] if kwargs["exit_code"] == 2 else [])
    args = ["predict", "-m", str(model), "-i", str(source), "-o", str(out)]
    return Scenario(args, names, problem, [source, model], out=out, **kwargs)


def batch3d(tmp: Path, get: Get, make_bad: Callable[[Path], Path], problem: str, **kwargs) -> Scenario:
    """A folder with a good scan and a bad one, segmented with the tiny 3D model."""
    scans = tmp / "scans"
    scans.mkdir()
    shutil.copy(get("phantoms") / "imagesTr" / "case0.nii.gz", scans / "good.nii.gz")
    bad = make_bad(scans)
    return predict(get("model3d"), scans, tmp / "out", bad.name, problem, good="good.nii.gz", **kwargs)


def batch2d(tmp: Path, get: Get, make_bad: Callable[[Path], Path], problem: str, **kwargs) -> Scenario:
    """A folder with a good photo and a bad one, segmented with the tiny 2D model."""
    photos = tmp / "photos"
    photos.mkdir()
    shutil.copy(first_image(get("dataset2d")), photos / "good.png")
    bad = make_bad(photos)
    return predict(get("model2d"), photos, tmp / "out", bad.name, problem, good="good.png", **kwargs)


def phantom_scan(get: Get) -> np.ndarray:
    return np.asarray(nib.load(get("phantoms") / "imagesTr" / "case0.nii.gz").dataobj)


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def save_image(path: Path, image: Image.Image, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def truncated(source: Path, target: Path, keep: int) -> Path:
    target.write_bytes(source.read_bytes()[:keep])
    return target


def symlink_loop(path: Path) -> Path:
    path.symlink_to(path.name)  # relative: the link points at itself
    return path


def dicom_two_series(folder: Path) -> Path:
    """A folder holding two DICOM series (4 slices each, different series UIDs)."""
    import SimpleITK as sitk

    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    with locale_kept():  # GDCM leaves the process in the "C" locale after writing positions
        for series, uid in enumerate(("1.2.826.0.1.3680043.2.1125.1", "1.2.826.0.1.3680043.2.1125.2")):
            for z in range(4):
                slice_ = sitk.GetImageFromArray(np.full((8, 10), 10 * z + series, np.int16))
                for tag, value in (
                    ("0020|000e", uid),
                    ("0020|000d", "1.2.826.0.1.3680043.2.1125.9"),
                    ("0008|0018", f"{uid}.{z}"),
                    ("0008|0060", "MR"),
                    ("0020|0013", str(z)),
                    ("0020|0032", f"0\\0\\{z}"),
                ):
                    slice_.SetMetaData(tag, value)
                writer.SetFileName(str(folder / f"s{series}_{z}.dcm"))
                writer.Execute(slice_)
    return folder


def missing_slice(folder: Path) -> Path:
    """The folder's first series without its third slice (the second series removed)."""
    for path in [*folder.glob("s1_*.dcm"), folder / "s0_2.dcm"]:
        path.unlink()
    return folder


def torch_file(path: Path, state: object) -> Path:
    torch.save(state, path)
    return path


class RunsCode:
    """Pickles to a call of os.system: a checkpoint that would run code if loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# Each kind registers (family, builder); a builder makes the bad input under tmp and says what to expect.
# Families: config and data kinds fail in under a second; train, model and mlflow kinds need a trained model,
# start a training or an MLflow store, and are marked slow.
Builder = Callable[[Path, Get], Scenario]
KINDS: dict[str, tuple[str, Builder]] = {}


def kind(family: str) -> Callable[[Builder], Builder]:
    def register(build: Builder) -> Builder:
        KINDS[build.__name__] = (family, build)
        return build

    return register


# ---- pipeline YAML and --set (medseg validate)


@kind("config")
def yaml_unknown_key(t: Path, g: Get) -> Scenario:
    return validate(t, "training:\n  epoch: 3\n", "training.epoch", "unknown key", subprocess=True)


@kind("config")
def region_of_an_unknown_label_name(t: Path, g: Get) -> Scenario:
    text = "spatial_dims: 3\nmodel: {out_channels: 1}\ndata:\n  labels: {1: edema}\n  regions: {core: [necrosis]}\n"
    return validate(t, text, "data.regions.core", "unknown label name 'necrosis'; data.labels names: edema")


@kind("config")
def overlapping_regions_without_an_order(t: Path, g: Get) -> Scenario:
    text = "spatial_dims: 3\nmodel: {out_channels: 2}\ndata:\n  regions: {whole: [1, 2], core: [2]}\n"
    return validate(t, text, "data.region_order", "regions whole and core overlap; give the painting order")


@kind("config")
def label_colour_that_is_not_rgb(t: Path, g: Get) -> Scenario:
    text = "data:\n  labels: {1: {name: lesion, color: [255, 0, 300]}}\n"
    return validate(t, text, "data.labels.1.color", "a colour is three integers 0-255")


@kind("model")
def dicom_seg_asked_for_a_nifti_input(t: Path, g: Get) -> Scenario:
    scans = _mkdir(t / "scans")
    shutil.copy(g("phantoms") / "imagesTr" / "case0.nii.gz", scans / "case0.nii.gz")
    scenario = predict(g("model3d"), scans, t / "out", "case0.nii.gz", "not a DICOM series", exit_code=2)
    scenario.args += ["--format", "dicom-seg"]
    return scenario


@kind("model")
def meshes_asked_of_a_2d_model(t: Path, g: Get) -> Scenario:
    scenario = predict(g("model2d"), _photos(g), t / "out", "--meshes", "meshes need a 3D model", exit_code=2)
    scenario.args += ["--meshes"]
    return scenario


@kind("config")
def yaml_wrong_type(t: Path, g: Get) -> Scenario:
    return validate(t, "training:\n  batch_size: eight\n", "training.batch_size", "valid integer")


@kind("config")
def yaml_negative_epoch_count(t: Path, g: Get) -> Scenario:
    return validate(t, "training:\n  epochs: -3\n", "training.epochs", "greater than 0")


@kind("config")
def yaml_syntax_error(t: Path, g: Get) -> Scenario:
    return validate(t, "training: [1, 2\n", "pipeline.yaml", "invalid YAML")


@kind("config")
def yaml_not_a_mapping(t: Path, g: Get) -> Scenario:
    return validate(t, "- train\n- evaluate\n", "pipeline.yaml", "expected a mapping")


@kind("config")
def yaml_python_object_tag(t: Path, g: Get) -> Scenario:
    text = f"name: !!python/object/apply:os.system ['touch {t / 'pwned'}']\n"
    return validate(t, text, "pipeline.yaml", "invalid YAML", absent=[t / "pwned"])


@kind("config")
def yaml_alias_bomb(t: Path, g: Get) -> Scenario:
    """'Billion laughs': 9^8 list items from 80 bytes of aliases; the error shows the start of the value only."""
    levels = [f"l0: &l0 [{', '.join(['x'] * 9)}]"]
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 8)]
    text = "\n".join(levels) + "\ntraining: {epochs: *l7}\n"
    return validate(t, text, "training.epochs", "valid integer")


@kind("config")
def yaml_binary_file(t: Path, g: Get) -> Scenario:
    path = _write(t / "pipeline.yaml", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01 a JPEG saved as YAML \xfe\xfe")
    return Scenario(["validate", str(path)], "pipeline.yaml", "cannot read", [path])


@kind("config")
def yaml_missing_file(t: Path, g: Get) -> Scenario:
    return Scenario(["validate", str(t / "nope.yaml")], "nope.yaml", "file not found", [])


@kind("config")
def yaml_missing_preset(t: Path, g: Get) -> Scenario:
    return validate(t, "extends: presets/none.yaml\n", "none.yaml", "not found")


@kind("config")
def yaml_unknown_network(t: Path, g: Get) -> Scenario:
    return validate(t, "model:\n  name: resnet9000\n", "model.name", "unknown network")


@kind("config")
def set_unknown_key(t: Path, g: Get) -> Scenario:
    return Scenario(
        ["validate", str(SKIN), "--set", "training.epoch=3"], "--set training.epoch=3", "unknown key", [SKIN]
    )


@kind("config")
def set_negative_epoch_count(t: Path, g: Get) -> Scenario:
    args = ["validate", str(SKIN), "--set", "training.epochs=-1"]
    return Scenario(args, "--set training.epochs=-1: training.epochs", "greater than 0", [SKIN])


# ---- 2D datasets (medseg run): found while the datalist is checked, before any output


@kind("data")
def missing_dataset_path(t: Path, g: Get) -> Scenario:
    return run2d(t, t / "no_such_folder", "no_such_folder", "dataset folder not found")


@kind("data")
def empty_dataset_folder(t: Path, g: Get) -> Scenario:
    return run2d(t, _mkdir(t / "empty"), "empty/images", "image folder not found")


@kind("data")
def folder_of_non_image_files(t: Path, g: Get) -> Scenario:
    return run2d(t, _non_images(t / "notes"), "notes/images", "no images found")


@kind("data")
def image_without_mask(t: Path, g: Get) -> Scenario:
    data = copy2d(t, g)
    (data / "masks" / "synth_003.png").unlink()
    return run2d(t, data, "images/synth_003.png", "no mask found")


@kind("data")
def mask_and_image_of_different_size_2d(t: Path, g: Get) -> Scenario:
    data = _edit(copy2d(t, g) / "masks" / "synth_002.png", lambda m: m.resize((50, 40)))
    return run2d(t, data, "masks/synth_002.png", "differs from image size")


@kind("data")
def grey_scale_image_where_rgb_is_expected(t: Path, g: Get) -> Scenario:
    data = _edit(copy2d(t, g) / "images" / "synth_001.png", lambda i: i.convert("L"))
    return run2d(t, data, "images/synth_001.png", "image mode L")


@kind("train")
def opaque_rgba_png_in_dataset(t: Path, g: Get) -> Scenario:
    """Accepted by design: an RGBA image whose alpha is 255 everywhere is read as RGB, with a warning."""
    data = _edit(copy2d(t, g) / "images" / "synth_001.png", lambda i: i.convert("RGBA"))
    return run2d(t, data, "images/synth_001.png", "fully opaque: read as RGB", "stages=[train]", accepted=True)


@kind("data")
def transparent_rgba_png_in_dataset(t: Path, g: Get) -> Scenario:
    def transparent(image: Image.Image) -> Image.Image:
        rgba = image.convert("RGBA")
        rgba.putpixel((0, 0), (0, 0, 0, 0))
        return rgba

    data = _edit(copy2d(t, g) / "images" / "synth_001.png", transparent)
    return run2d(t, data, "images/synth_001.png", "image mode RGBA with 1 transparent pixel(s)")


@kind("data")
def png_16_bit_in_dataset(t: Path, g: Get) -> Scenario:
    data = _edit(copy2d(t, g) / "images" / "synth_004.png", _sixteen_bit)
    return run2d(t, data, "images/synth_004.png", "image mode I;16")


@kind("data")
def truncated_png_in_dataset(t: Path, g: Get) -> Scenario:
    data = copy2d(t, g)
    _truncate_in_place(data / "images" / "synth_005.png", 300)
    return run2d(t, data, "images/synth_005.png", "corrupt or truncated")


@kind("data")
def non_image_file_with_an_image_name(t: Path, g: Get) -> Scenario:
    data = copy2d(t, g)
    _write(data / "images" / "synth_006.png", b"<html>not a picture</html>")
    return run2d(t, data, "images/synth_006.png", "not a readable image")


@kind("data")
def symlink_loop_in_dataset(t: Path, g: Get) -> Scenario:
    data = copy2d(t, g)
    symlink_loop(data / "images" / "zz_loop.png")
    return run2d(t, data, "images/zz_loop.png", "broken symbolic link")


@kind("data")
def unreadable_image_in_dataset(t: Path, g: Get) -> Scenario:
    data = copy2d(t, g)
    _unreadable(data / "images" / "synth_008.png")
    return run2d(t, data, "images/synth_008.png", "permission denied", subprocess=True, unprivileged=True)


@kind("data")
def case_id_with_dot_dot(t: Path, g: Get) -> Scenario:
    data = _csv_with_id(copy2d(t, g), "../../escape")
    return run2d(t, data, "'../../escape'", "not a plain name", "data.layout=csv")


@kind("data")
def output_folder_is_a_file_run(t: Path, g: Get) -> Scenario:
    _file(t / "runs")
    return run2d(t, copy2d(t, g), "runs", "is a file, not a folder", absent=[t / "splits.json"])


# ---- 3D datasets (medseg run): labels are read before any output; images while the data is cached


@kind("data")
def mask_and_image_of_different_shape_3d(t: Path, g: Get) -> Scenario:
    data = copy3d(t, g)
    label, path = a_label(data)
    save_nifti(path, label[:20])
    return run3d(t, data, "labelsTr/case1.nii.gz", "differs from shape")


@kind("data")
def mask_and_image_with_different_affines(t: Path, g: Get) -> Scenario:
    data = copy3d(t, g)
    label, path = a_label(data)
    save_nifti(path, label, AFFINE @ np.diag([1, 1, 2, 1]))
    return run3d(t, data, "labelsTr/case1.nii.gz", "affines differ")


@kind("data")
def non_integer_label_values(t: Path, g: Get) -> Scenario:
    data = copy3d(t, g)
    label, path = a_label(data)
    save_nifti(path, label * np.float32(0.5))
    return run3d(t, data, "labelsTr/case1.nii.gz", "non-integer values")


@kind("data")
def negative_label_values(t: Path, g: Get) -> Scenario:
    data = copy3d(t, g)
    label, path = a_label(data)
    save_nifti(path, -label)
    return run3d(t, data, "labelsTr/case1.nii.gz", "negative values")


@kind("data")
def truncated_label_nii_gz(t: Path, g: Get) -> Scenario:
    data = copy3d(t, g)
    _truncate_in_place(data / "labelsTr" / "case1.nii.gz", 600)
    return run3d(t, data, "labelsTr/case1.nii.gz", "cannot read image")


@kind("data")
def two_d_nifti_where_3d_is_expected_in_dataset(t: Path, g: Get) -> Scenario:
    data = copy3d(t, g)
    image, path = an_image(data)
    save_nifti(path, image[:, :, 8])
    return run3d(t, data, "imagesTr/case1.nii.gz", "expected a 3D volume, got shape 24x24")


@kind("train")
def label_value_outside_label_mapping(t: Path, g: Get) -> Scenario:
    """Accepted by design: labels that data.label_mapping does not list become background, with a warning."""
    data = copy3d(t, g)
    label, path = a_label(data)
    save_nifti(path, np.where(label == 2, 7, label))
    extra = ("stages=[train]", "model.out_channels=3", "data.label_mapping={1: 1, 2: 2}")
    return run3d(t, data, "7 in case1.nii.gz", "not in data.label_mapping", *extra, accepted=True, absent=[])


@kind("train")
def non_binary_mask_values(t: Path, g: Get) -> Scenario:
    """Accepted by design: 2D masks are binarised at > 0, with a warning naming a mask."""
    data = _edit(copy2d(t, g) / "masks" / "synth_007.png", lambda m: Image.fromarray(_three_levels(m)))
    return run2d(t, data, "masks/synth_007.png", "non-binary", "stages=[train]", accepted=True)


@kind("train")
def nan_voxels_in_training_scan(t: Path, g: Get) -> Scenario:
    """Found when the voxels are cached, before the first epoch: the run folder keeps config.yaml and
    tracking.json, but no checkpoint, metrics or predictions."""
    data = copy3d(t, g)
    image, path = an_image(data)
    save_nifti(path, np.where(image > 1.5, np.nan, image))
    return run3d(t, data, "imagesTr/case1.nii.gz", "NaN or infinite", absent=_no_model(t))


@kind("train")
def truncated_image_nii_gz_in_dataset(t: Path, g: Get) -> Scenario:
    data = copy3d(t, g)
    _truncate_in_place(data / "imagesTr" / "case1.nii.gz", 2000)
    return run3d(t, data, "imagesTr/case1.nii.gz", "cannot read image", absent=_no_model(t))


# ---- models, checkpoints, MLflow ids and output folders (medseg predict / run / run --resume)


def _photos(g: Get) -> Path:
    return g("dataset2d") / "images"


@kind("model")
def missing_checkpoint(t: Path, g: Get) -> Scenario:
    return predict(t / "no_model.pt", _photos(g), t / "out", "no_model.pt", "no checkpoint found", exit_code=2)


@kind("model")
def truncated_checkpoint(t: Path, g: Get) -> Scenario:
    model = truncated(g("model2d") / "model" / "best.pt", t / "cut.pt", 5000)
    problem = "not a readable medseg checkpoint"
    return predict(model, _photos(g), t / "out", "cut.pt", problem, exit_code=2, subprocess=True)


@kind("model")
def checkpoint_of_another_architecture(t: Path, g: Get) -> Scenario:
    """The 2D UNet's weights in a checkpoint that describes a SegResNet."""
    state = torch.load(g("model2d") / "model" / "best.pt", map_location="cpu", weights_only=True)
    state["network"] = {**state["network"], "name": "segresnet", "args": {}}
    model = torch_file(t / "segresnet.pt", state)
    problem = "weights do not fit network segresnet"
    return predict(model, _photos(g), t / "out", "segresnet.pt", problem, exit_code=2)


@kind("model")
def checkpoint_that_would_run_code(t: Path, g: Get) -> Scenario:
    model = torch_file(t / "evil.pt", {"state_dict": {}, "network": RunsCode(t / "pwned")})
    problem = "not a readable medseg checkpoint"
    return predict(model, _photos(g), t / "out", "evil.pt", problem, exit_code=2, absent=[t / "pwned"])


@kind("model")
def torch_file_that_is_not_a_medseg_checkpoint(t: Path, g: Get) -> Scenario:
    model = torch_file(t / "plain.pt", {"weights": torch.zeros(3)})
    return predict(model, _photos(g), t / "out", "plain.pt", "not a medseg checkpoint", exit_code=2)


@kind("model")
def model_of_the_wrong_dimensionality(t: Path, g: Get) -> Scenario:
    extra = ("stages=[evaluate]", f"model.checkpoint={g('model2d')}")
    return run3d(t, g("phantoms"), "model.checkpoint", "a 2D model with 3 input channel(s)", *extra)


@kind("mlflow")
def mlflow_run_id_that_does_not_exist(t: Path, g: Get) -> Scenario:
    run_id = "0123456789abcdef0123456789abcdef"
    args = ["run", str(SKIN), *sets([*tiny_overrides(t, g("dataset2d"))]), "--resume", run_id]
    return Scenario(args, f"run {run_id}", "no such MLflow run", [g("dataset2d")], [t / "runs"])


@kind("mlflow")
def mlflow_model_uri_that_does_not_exist(t: Path, g: Get) -> Scenario:
    uri = "runs:/0123456789abcdef0123456789abcdef/model"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{t / 'store' / 'mlflow.db'}"}
    return predict(uri, _photos(g), t / "out", uri, "cannot fetch the model", exit_code=2, env=env)


@kind("model")
def resume_folder_without_checkpoint(t: Path, g: Get) -> Scenario:
    old = _mkdir(t / "old_run")
    args = ["run", str(SKIN), *sets(run2d_overrides(t, g("dataset2d"))), "--resume", str(old)]
    return Scenario(args, "old_run/model/last.pt", "no checkpoint to resume from", [g("dataset2d"), old], [t / "runs"])


@kind("model")
def output_folder_is_a_file(t: Path, g: Get) -> Scenario:
    out = _file(t / "out")
    return predict(g("model2d"), _photos(g), out, "out", "output folder is a file", exit_code=2, absent=[])


@kind("model")
def output_folder_is_the_input_folder(t: Path, g: Get) -> Scenario:
    photos = _copy_folder(_photos(g), t / "photos")
    problem = "other than the input folder"
    return predict(g("model2d"), photos, photos, "photos", problem, exit_code=2, absent=[photos / "masks"])


@kind("model")
def empty_input_folder(t: Path, g: Get) -> Scenario:
    return predict(g("model2d"), _mkdir(t / "photos"), t / "out", "photos", "no images found", exit_code=2)


@kind("model")
def input_folder_of_non_image_files(t: Path, g: Get) -> Scenario:
    source = _non_images(t / "notes") / "images"
    return predict(g("model2d"), source, t / "out", "notes/images", "no images found", exit_code=2)


@kind("model")
def missing_input_path(t: Path, g: Get) -> Scenario:
    problem = "prediction input not found"
    return predict(g("model2d"), t / "nowhere", t / "out", "nowhere", problem, exit_code=2)


# ---- a bad scan in a batch beside a good one (medseg predict, 3D model)


@kind("model")
def truncated_nii_gz(t: Path, g: Get) -> Scenario:
    source = g("phantoms") / "imagesTr" / "case1.nii.gz"
    return batch3d(t, g, lambda s: truncated(source, s / "bad.nii.gz", 2000), "cannot read image", subprocess=True)


@kind("model")
def non_nifti_file_with_a_nifti_name(t: Path, g: Get) -> Scenario:
    content = b"PK\x03\x04 a zip archive, not NIfTI " * 20
    return batch3d(t, g, lambda s: _write(s / "bad.nii.gz", content), "cannot read the image header")


@kind("model")
def nan_voxels(t: Path, g: Get) -> Scenario:
    scan = phantom_scan(g)
    return batch3d(t, g, lambda s: save_nifti(s / "bad.nii.gz", np.where(scan > 1.5, np.nan, scan)), "NaN or infinite")


@kind("model")
def inf_voxels(t: Path, g: Get) -> Scenario:
    scan = phantom_scan(g)
    return batch3d(t, g, lambda s: save_nifti(s / "bad.nii.gz", np.where(scan > 1.5, -np.inf, scan)), "NaN or infinite")


@kind("model")
def two_d_nifti_where_3d_is_expected(t: Path, g: Get) -> Scenario:
    scan = phantom_scan(g)
    return batch3d(t, g, lambda s: save_nifti(s / "bad.nii.gz", scan[:, :, 8]), "expected a 3D volume")


@kind("model")
def png_given_to_a_3d_model(t: Path, g: Get) -> Scenario:
    photo = _copy(first_image(g("dataset2d")), t / "photo.png")
    return predict(g("model3d"), photo, t / "out", "photo.png", "a 2D image, but the model is 3D")


@kind("model")
def two_channel_scan_for_a_one_channel_model(t: Path, g: Get) -> Scenario:
    scan = np.stack([phantom_scan(g)] * 2, axis=-1)
    problem = "holds 2 channel(s) but the model expects 1"
    return batch3d(t, g, lambda s: save_nifti(s / "bad.nii.gz", scan), problem)


@kind("model")
def dicom_series_with_a_missing_slice(t: Path, g: Get) -> Scenario:
    """(Two series in one folder are two cases now: medseg/imageio/dicom_series.py.)"""
    return batch3d(t, g, lambda s: missing_slice(dicom_two_series(s / "bad")), "not evenly spaced")


@kind("model")
def scan_larger_than_the_configured_limit(t: Path, g: Get) -> Scenario:
    return batch3d(t, g, lambda s: _large_scan_header_only(s / "bad.nii"), "above inference.max_voxels=20,000")


@kind("model")
def symlink_loop_scan(t: Path, g: Get) -> Scenario:
    return batch3d(t, g, lambda s: symlink_loop(s / "bad.nii.gz"), "Too many levels of symbolic links")


@kind("model")
def unreadable_file_permission(t: Path, g: Get) -> Scenario:
    scan = phantom_scan(g)
    make = lambda s: _unreadable(save_nifti(s / "bad.nii.gz", scan))  # noqa: E731
    return batch3d(t, g, make, "Permission denied", subprocess=True, unprivileged=True)


@kind("model")
def all_zero_scan(t: Path, g: Get) -> Scenario:
    """Accepted by design: a uniform scan has nothing to segment; its mask is empty, with a warning."""
    zeros = np.zeros((24, 24, 16), np.float32)
    return batch3d(t, g, lambda s: save_nifti(s / "bad.nii.gz", zeros), "nothing to segment", accepted=True)


# ---- a bad image in a batch beside a good one (medseg predict, 2D model)


@kind("model")
def rgba_png(t: Path, g: Get) -> Scenario:
    image = Image.new("RGBA", (40, 30), (9, 9, 9, 99))
    return batch2d(t, g, lambda p: save_image(p / "bad.png", image), "image mode RGBA")


@kind("model")
def png_16_bit(t: Path, g: Get) -> Scenario:
    image = _sixteen_bit(Image.new("L", (40, 30), 9))
    return batch2d(t, g, lambda p: save_image(p / "bad.png", image), "image mode I;16")


@kind("model")
def grey_scale_png_where_rgb_is_expected(t: Path, g: Get) -> Scenario:
    image = Image.new("L", (40, 30), 90)
    return batch2d(t, g, lambda p: save_image(p / "bad.png", image), "image mode L")


@kind("model")
def truncated_png(t: Path, g: Get) -> Scenario:
    source = first_image(g("dataset2d"))
    return batch2d(t, g, lambda p: truncated(source, p / "bad.png", 200), "corrupt or truncated")


@kind("model")
def text_file_with_a_png_name(t: Path, g: Get) -> Scenario:
    return batch2d(t, g, lambda p: _write(p / "bad.png", b"just some text\n"), "not a readable image")


@kind("model")
def multi_frame_tiff_where_2d_is_expected(t: Path, g: Get) -> Scenario:
    return batch2d(t, g, lambda p: _stack_tiff(p / "bad.tif"), "3 frames (a 3D stack)")


@kind("model")
def nifti_volume_given_to_a_2d_model(t: Path, g: Get) -> Scenario:
    scan = _copy(g("phantoms") / "imagesTr" / "case0.nii.gz", t / "scan.nii.gz")
    return predict(g("model2d"), scan, t / "out", "scan.nii.gz", "a 3D scan, but the model is 2D")


@kind("model")
def all_black_photo(t: Path, g: Get) -> Scenario:
    """Accepted by design, as the all-zero scan: an empty mask of the photo's own size, with a warning."""
    image = Image.new("RGB", (40, 30))
    return batch2d(t, g, lambda p: save_image(p / "bad.png", image), "nothing to segment", accepted=True)


@kind("model")
def symlink_loop_photo(t: Path, g: Get) -> Scenario:
    return batch2d(t, g, lambda p: symlink_loop(p / "bad.png"), "Too many levels of symbolic links")


# ---- small builders used above


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _file(path: Path) -> Path:
    path.write_text("not a folder\n")
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _copy(source: Path, target: Path) -> Path:
    shutil.copy(source, target)
    return target


def _copy_folder(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _truncate_in_place(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


def _non_images(folder: Path) -> Path:
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
        for name in ("notes.txt", "table.csv", "scan.nii.gz.md5"):
            (folder / sub / name).write_text("not an image\n")
    return folder


def _edit(path: Path, edit: Callable[[Image.Image], Image.Image]) -> Path:
    """Rewrite one image of a copied dataset in place; returns the dataset folder."""
    edit(Image.open(path)).save(path)
    return path.parents[1]


def _sixteen_bit(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)


def _three_levels(mask: Image.Image) -> np.ndarray:
    values = np.asarray(mask)
    out = np.where(values > 0, 255, 0).astype(np.uint8)
    out[: out.shape[0] // 2][out[: out.shape[0] // 2] > 0] = 128  # the upper half of the lesion at 128
    return out


def _csv_with_id(data: Path, case_id: str) -> Path:
    images = sorted((data / "images").iterdir())
    with (data / "pairs.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "mask"])
        for index, image in enumerate(images):
            writer.writerow([case_id if index == 3 else image.stem, f"images/{image.name}", f"masks/{image.name}"])
    return data


def _no_model(tmp: Path) -> list[Path]:
    """What a run stopped while caching its data must not have produced."""
    run_dir = tmp / "runs" / "brain_tumor_mri"
    return [run_dir / "*" / "model" / "best.pt", run_dir / "*" / "model" / "last.pt", run_dir / "*" / "predictions"]


def _large_scan_header_only(path: Path) -> Path:
    """A NIfTI header for 40 x 40 x 20 = 32,000 voxels (above the 3D model's limit) with no voxel data at all:
    the limit must be checked from the header, before any voxel is read."""
    full = nib.Nifti1Image(np.zeros((40, 40, 20), np.float32), AFFINE).to_bytes()
    path.write_bytes(full[:352])  # a single-file NIfTI-1 header is 348 bytes + 4 extension flags; voxels follow
    return path


def _stack_tiff(path: Path) -> Path:
    frames = [Image.new("RGB", (40, 30), (30 * i, 60, 90)) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


def _unreadable(path: Path) -> Path:
    path.chmod(0)
    return path


# --------------------------------------------------------------------------------------------------
# Running and checking
# --------------------------------------------------------------------------------------------------


def fingerprint(paths: list[Path]) -> dict[str, str]:
    """sha256 of every file under ``paths`` (links by target, unreadable files by size, mode and mtime)."""
    found: dict[str, str] = {}
    for root in paths:
        if isinstance(root, str) or not (root.exists() or root.is_symlink()):
            continue
        for path in [root] if not root.is_dir() else sorted([root, *root.rglob("*")]):
            if path.is_symlink():
                found[str(path)] = "link -> " + os.readlink(path)
            elif path.is_file():
                try:
                    found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
                except PermissionError:
                    found[str(path)] = "unreadable"
                stat = path.stat()
                found[str(path)] += f" {stat.st_size} {stat.st_mode:o} {stat.st_mtime_ns}"
    return found


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(scenario: Scenario, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Outcome:
    if not scenario.subprocess:
        for key, value in scenario.env.items():
            monkeypatch.setenv(key, value)
        result = CliRunner().invoke(app, scenario.args)
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        return Outcome(result.exit_code, result.stdout, result.stderr)
    env = {k: v for k, v in os.environ.items() if k not in (DATA_ROOT_ENV, "MLFLOW_TRACKING_URI")}
    env.update(scenario.env)
    env["PYTHONPATH"] = str(REPO)
    command = [sys.executable, "-m", "medseg", *scenario.args]
    if scenario.unprivileged and os.geteuid() == 0:
        # root reads any file: drop the capabilities that bypass file permissions (stays uid 0, owner of all files)
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        caps = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", *command]
    done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    return Outcome(done.returncode, done.stdout, done.stderr)


def _params() -> list:
    return [
        pytest.param(name, id=name, marks=[slow] if family in ("train", "model", "mlflow") else [])
        for name, (family, _) in KINDS.items()
    ]


def absent_paths(patterns: list[Path]) -> list[Path]:
    found = []
    for pattern in patterns:
        text = str(pattern)
        if "*" in text:
            anchor = Path(text.split("*")[0])
            found += list(anchor.glob(text[len(str(anchor)) + 1 :])) if anchor.is_dir() else []
        elif pattern.exists() or pattern.is_symlink():
            found.append(pattern)
    return found


@pytest.mark.parametrize("kind", _params())
def test_bad_input(kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    family, build = KINDS[kind]
    scenario = build(tmp_path, request.getfixturevalue)
    before = fingerprint(scenario.inputs)
    outcome = run_cli(scenario, tmp_path, monkeypatch)
    everything = outcome.stdout + outcome.stderr
    assert "Traceback" not in everything, everything
    assert "internal error" not in everything, everything

    if scenario.accepted:
        assert outcome.exit_code == 0, everything
        warnings = [line for line in outcome.stderr.splitlines() if scenario.problem in line]
        assert len(warnings) == 1 and scenario.names in warnings[0], everything
    elif scenario.out is not None and scenario.exit_code == 1:
        # a prediction batch: the bad case is reported on one line, the good one is written
        assert outcome.exit_code == 1, everything
        failed = [line for line in outcome.stderr.splitlines() if line.startswith("failed ")]
        assert len(failed) == 1, everything
        assert scenario.names in failed[0] and scenario.problem in failed[0], failed[0]
        assert not [line for line in outcome.stderr.splitlines() if line.startswith("error:")], everything
        assert "1 failed" in outcome.stdout
    else:
        assert outcome.exit_code == scenario.exit_code, everything
        errors = [line for line in outcome.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, everything
        assert scenario.names in errors[0] and scenario.problem in errors[0], errors[0]
        assert len(errors[0]) < 600, f"a short line: {errors[0][:200]}..."
        if family == "config":
            assert outcome.stdout == ""

    if scenario.out is not None and (scenario.accepted or scenario.exit_code == 1):
        masks = sorted(p.name for p in (scenario.out / "masks").iterdir()) if (scenario.out / "masks").is_dir() else []
        expected = [scenario.good] if scenario.good else []
        if scenario.accepted:  # the bad case's mask too, with the good one's suffix
            expected = sorted([*expected, "bad" + scenario.good.removeprefix("good")])
        assert masks == expected, f"written: {masks}"  # outputs lost: none; nothing written for the bad case
        assert not list(scenario.out.rglob("*.tmp*")), "no temporary files left"
        rows = {row["case"]: row for row in csv.DictReader((scenario.out / "summary.csv").open())}
        if not scenario.accepted and scenario.good:
            assert rows["bad"]["status"] == "failed" and rows["good"]["status"] == "ok"
    assert absent_paths(scenario.absent) == [], "no partial output"
    assert fingerprint(scenario.inputs) == before, "the input is untouched"
    if kind == "all_zero_scan":
        empty = np.asarray(nib.load(scenario.out / "masks" / "bad.nii.gz").dataobj)
        assert empty.shape == (24, 24, 16) and not empty.any(), "a uniform scan gives an empty mask"
    if kind == "all_black_photo":
        empty = np.asarray(Image.open(scenario.out / "masks" / "bad.png"))
        assert empty.shape == (30, 40) and not empty.any(), "a uniform photo gives an empty mask"


def test_the_corpus_is_large_enough() -> None:
    assert len(KINDS) >= 30
    named = " ".join(KINDS)
    for required in (
        "truncated_nii_gz",
        "non_nifti_file_with_a_nifti_name",
        "two_d_nifti_where_3d_is_expected",
        "nifti_volume_given_to_a_2d_model",
        "nan_voxels",
        "all_zero_scan",
        "mask_and_image_of_different_shape_3d",
        "mask_and_image_with_different_affines",
        "non_integer_label_values",
        "rgba_png",
        "png_16_bit",
        "grey_scale_png_where_rgb_is_expected",
        "empty_input_folder",
        "folder_of_non_image_files",
        "unreadable_file_permission",
        "symlink_loop_scan",
        "dicom_series_with_a_missing_slice",
        "scan_larger_than_the_configured_limit",
        "yaml_unknown_key",
        "yaml_wrong_type",
        "yaml_negative_epoch_count",
        "missing_dataset_path",
        "missing_checkpoint",
        "truncated_checkpoint",
        "checkpoint_of_another_architecture",
        "mlflow_run_id_that_does_not_exist",
        "output_folder_is_a_file",
    ):
        assert required in named


# --------------------------------------------------------------------------------------------------
# --debug, security
# --------------------------------------------------------------------------------------------------


def test_debug_shows_the_traceback_in_a_real_process(tmp_path: Path) -> None:
    pipeline = write_yaml(tmp_path, "training:\n  epoch: 3\n")
    env = {k: v for k, v in os.environ.items() if k != DATA_ROOT_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "medseg", "validate", str(pipeline), "--debug"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "ConfigError" in done.stderr


def _calls(tree: ast.AST) -> Iterator[tuple[str, ast.Call]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node


def test_no_code_runs_from_data_files() -> None:
    """torch.load only with weights_only=True, yaml only through safe_load/safe_dump, no eval/exec/pickle."""
    for path in sorted((REPO / "medseg").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name, call in _calls(tree):
            where = f"{path.relative_to(REPO)}:{call.lineno}"
            if name.endswith("torch.load"):
                flags = {kw.arg: ast.unparse(kw.value) for kw in call.keywords}
                assert flags.get("weights_only") == "True", where
            assert name not in {
                "eval",
                "exec",
                "pickle.load",
                "pickle.loads",
                "yaml.load",
                "yaml.unsafe_load",
                "yaml.full_load",
                "yaml.load_all",
            }, where


def test_servers_bind_to_localhost_by_default() -> None:
    import inspect

    from medseg.cli import runs as runs_commands
    from medseg.tracking import ui

    assert ui.DEFAULT_HOST == "127.0.0.1"
    assert inspect.signature(runs_commands.ui).parameters["host"].default == "127.0.0.1"


@slow
def test_case_ids_cannot_write_outside_the_output_folder(tmp_path: Path, model2d: Path, dataset2d: Path) -> None:
    from medseg.infer.predictor import Predictor
    from medseg.outputs.batch import predict_records

    predictor = Predictor.from_model(model2d)
    image = str(first_image(dataset2d))
    out = tmp_path / "deep" / "out"
    ids = ["../../escaped", "..", "a/../../b", "/tmp/absolute", "..\\windows", "ok"]
    report = predict_records(predictor, [{"id": i, "image": image} for i in ids], out)
    assert report.written == ["ok"]
    assert sorted(report.failed) == sorted(ids[:-1])
    assert all("would write outside" in reason for reason in report.failed.values())
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [
        "deep/out/itksnap_labels.txt",
        "deep/out/labels.json",
        "deep/out/masks/ok.png",
        "deep/out/overlays/ok.png",
        "deep/out/summary.csv",
    ]


def test_volume_reader_pairs_images_with_their_own_files(phantoms: Path) -> None:
    """CacheDataset loads cases in threads through one reader: a label read in between (another thread) must not
    cut a two-channel case to one channel (MONAI's NibabelReader keeps the last read's file names)."""
    from medseg.imageio.readers import VolumeReader

    reader = VolumeReader()
    images = reader.read([str(phantoms / "imagesTr" / "case0.nii.gz"), str(phantoms / "imagesTr" / "case1.nii.gz")])
    reader.read(str(phantoms / "labelsTr" / "case0.nii.gz"))
    array, _ = reader.get_data(images)
    assert array.shape == (2, 24, 24, 16)

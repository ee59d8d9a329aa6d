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

from medseg.cli import app
from medseg.config import DATA_ROOT_ENV
from tests.conftest import REPO, tiny_overrides
from tests.test_volume_pipeline import AFFINE, _phantom

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
        flair, _, label = _phantom(rng)
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
        "tracking.enabled=false",
        *extra,
    ]


@pytest.fixture(scope="module")
def model2d(tmp_path_factory: pytest.TempPathFactory, dataset2d: Path) -> Path:
    from medseg.config import load_config
    from medseg.pipeline import run_pipeline

    tmp = tmp_path_factory.mktemp("m2")
    cfg = load_config(SKIN, run2d_overrides(tmp, dataset2d, "stages=[train]"))
    return run_pipeline(cfg, run_name="tiny2d").run_dir


@pytest.fixture(scope="module")
def model3d(tmp_path_factory: pytest.TempPathFactory, phantoms: Path) -> Path:
    from medseg.config import load_config
    from medseg.pipeline import run_pipeline

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
    absent = [tmp / "runs", tmp / "splits.json"]
    return Scenario(
        ["run", str(SKIN), *sets(run2d_overrides(tmp, data, *extra))], names, problem, [data], absent, **kwargs
    )


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


def predict(model: Path, source: Path, out: Path, names: str, problem: str, **kwargs) -> Scenario:
    kwargs.setdefault("exit_code", 1)
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


def torch_file(path: Path, state: object) -> Path:
    torch.save(state, path)
    return path


class RunsCode:
    """Pickles to a call of os.system: a checkpoint that would run code if loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# Each kind: (command family, builder). A builder makes the bad input under tmp and says what to expect.
def kinds() -> dict[str, tuple[str, Callable[[Path, Get], Scenario]]]:
    k: dict[str, tuple[str, Callable[[Path, Get], Scenario]]] = {}

    # ---- pipeline YAML and --set (medseg validate / run)
    k["yaml_unknown_key"] = (
        "validate",
        lambda t, g: validate(t, "training:\n  epoch: 3\n", "training.epoch", "unknown key", subprocess=True),
    )
    k["yaml_wrong_type"] = (
        "validate",
        lambda t, g: validate(t, "training:\n  batch_size: eight\n", "training.batch_size", "valid integer"),
    )
    k["yaml_negative_epoch_count"] = (
        "validate",
        lambda t, g: validate(t, "training:\n  epochs: -3\n", "training.epochs", "greater than 0"),
    )
    k["yaml_syntax_error"] = (
        "validate",
        lambda t, g: validate(t, "training: [1, 2\n", "pipeline.yaml", "invalid YAML"),
    )
    k["yaml_not_a_mapping"] = (
        "validate",
        lambda t, g: validate(t, "- train\n- evaluate\n", "pipeline.yaml", "expected a mapping"),
    )
    k["yaml_python_object_tag"] = (
        "validate",
        lambda t, g: validate(
            t,
            f"name: !!python/object/apply:os.system ['touch {t / 'pwned'}']\n",
            "pipeline.yaml",
            "invalid YAML",
            absent=[t / "pwned"],
        ),
    )
    k["yaml_binary_file"] = (
        "validate",
        lambda t, g: Scenario(
            ["validate", str(truncated(REPO / "README.md", t / "pipeline.yaml", 0))]
            if False
            else ["validate", str(_binary_yaml(t))],
            "pipeline.yaml",
            "cannot read",
            [t / "pipeline.yaml"],
        ),
    )
    k["yaml_missing_file"] = (
        "validate",
        lambda t, g: Scenario(["validate", str(t / "nope.yaml")], "nope.yaml", "file not found", []),
    )
    k["yaml_missing_preset"] = (
        "validate",
        lambda t, g: validate(t, "extends: presets/none.yaml\n", "none.yaml", "not found"),
    )
    k["yaml_unknown_network"] = (
        "validate",
        lambda t, g: validate(t, "model:\n  name: resnet9000\n", "model.name", "unknown network"),
    )
    k["set_unknown_key"] = (
        "validate",
        lambda t, g: Scenario(
            ["validate", str(SKIN), "--set", "training.epoch=3"], "--set training.epoch=3", "unknown key", [SKIN]
        ),
    )
    k["set_negative_epoch_count"] = (
        "validate",
        lambda t, g: Scenario(
            ["validate", str(SKIN), "--set", "training.epochs=-1"], "training.epochs", "greater than 0", [SKIN]
        ),
    )

    # ---- 2D datasets (medseg run)
    k["missing_dataset_path"] = (
        "run",
        lambda t, g: run2d(t, t / "no_such_folder", "no_such_folder", "dataset folder not found"),
    )
    k["empty_dataset_folder"] = (
        "run",
        lambda t, g: (lambda d: run2d(t, d, "images", "image folder not found"))(_mkdir(t / "empty")),
    )
    k["folder_of_non_image_files"] = (
        "run",
        lambda t, g: (lambda d: run2d(t, d, "images", "no images found"))(_non_images(t / "notes")),
    )
    k["image_without_mask"] = (
        "run",
        lambda t, g: (lambda d: run2d(t, d, "synth_003.png", "no mask found"))(
            _unlink(copy2d(t, g), "masks/synth_003.png")
        ),
    )
    k["mask_and_image_of_different_size_2d"] = (
        "run",
        lambda t, g: (lambda d: run2d(t, d, "masks/synth_002.png", "differs from image size"))(
            _edit_mask(copy2d(t, g), "synth_002.png", lambda m: m.resize((50, 40)))
        ),
    )
    k["grey_scale_image_where_rgb_is_expected"] = (
        "run",
        lambda t, g: (lambda d: run2d(t, d, "synth_001.png", "image mode L"))(
            _edit_image(copy2d(t, g), "synth_001.png", lambda i: i.convert("L"))
        ),
    )
    k["rgba_png_in_dataset"] = (
        "run",
        lambda t, g: (lambda d: run2d(t, d, "synth_001.png", "image mode RGBA"))(
            _edit_image(copy2d(t, g), "synth_001.png", lambda i: i.convert("RGBA"))
        ),
    )
    k["png_16_bit_in_dataset"] = (
        "run",
        lambda t, g: (lambda d: run2d(t, d, "synth_004.png", "image mode I;16"))(
            _edit_image(copy2d(t, g), "synth_004.png", lambda i: _sixteen_bit(i))
        ),
    )
    k["truncated_png_in_dataset"] = (
        "run",
        lambda t, g: (lambda d: run2d(t, d, "synth_005.png", "corrupt or truncated"))(
            _truncate_in_place(copy2d(t, g) / "images" / "synth_005.png", 300).parents[1]
        ),
    )
    k["non_image_file_with_an_image_name"] = (
        "run",
        lambda t, g: (lambda d: run2d(t, d, "synth_006.png", "not a readable image"))(
            _overwrite(copy2d(t, g), "images/synth_006.png", b"<html>not a picture</html>")
        ),
    )
    k["symlink_loop_in_dataset"] = (
        "run",
        lambda t, g: (lambda d: run2d(t, d, "zz_loop.png", "broken symbolic link"))(
            _with(copy2d(t, g), lambda d: symlink_loop(d / "images" / "zz_loop.png"))
        ),
    )
    k["case_id_with_dot_dot"] = (
        "run",
        lambda t, g: (lambda d: run2d(t, d, "'../../escape'", "not a plain name", "data.layout=csv"))(
            _csv_with_id(copy2d(t, g), "../../escape")
        ),
    )
    k["output_folder_is_a_file_run"] = (
        "run",
        lambda t, g: (lambda d: run2d(t, d, "runs", "is a file, not a folder", absent=[t / "splits.json"]))(
            _with(copy2d(t, g), lambda d: (t / "runs").write_text("a file\n"))
        ),
    )
    k["non_binary_mask_values"] = (
        "run",
        lambda t, g: (lambda d: run2d(t, d, "masks/synth_007.png", "non-binary", "stages=[train]", accepted=True))(
            _edit_mask(copy2d(t, g), "synth_007.png", lambda m: Image.fromarray(_three_levels(m)))
        ),
    )

    # ---- 3D datasets (medseg run)
    k["mask_and_image_of_different_shape_3d"] = (
        "run",
        lambda t, g: (lambda d: run3d(t, d, "labelsTr/case1.nii.gz", "differs from shape"))(
            _with(copy3d(t, g), lambda d: save_nifti(a_label(d)[1], a_label(d)[0][:20]))
        ),
    )
    k["mask_and_image_with_different_affines"] = (
        "run",
        lambda t, g: (lambda d: run3d(t, d, "labelsTr/case1.nii.gz", "affines differ"))(
            _with(copy3d(t, g), lambda d: save_nifti(a_label(d)[1], a_label(d)[0], AFFINE @ np.diag([1, 1, 2, 1])))
        ),
    )
    k["non_integer_label_values"] = (
        "run",
        lambda t, g: (lambda d: run3d(t, d, "labelsTr/case1.nii.gz", "non-integer values"))(
            _with(copy3d(t, g), lambda d: save_nifti(a_label(d)[1], a_label(d)[0] * np.float32(0.5)))
        ),
    )
    k["negative_label_values"] = (
        "run",
        lambda t, g: (lambda d: run3d(t, d, "labelsTr/case1.nii.gz", "negative values"))(
            _with(copy3d(t, g), lambda d: save_nifti(a_label(d)[1], -a_label(d)[0]))
        ),
    )
    k["label_value_outside_label_mapping"] = (
        "run",
        lambda t, g: (
            lambda d: run3d(
                t,
                d,
                "7 in case1.nii.gz",
                "not in data.label_mapping",
                "stages=[train]",
                "model.out_channels=3",
                "data.label_mapping={1: 1, 2: 2}",
                accepted=True,
                absent=[],
            )
        )(_with(copy3d(t, g), lambda d: save_nifti(a_label(d)[1], np.where(a_label(d)[0] == 2, 7, a_label(d)[0])))),
    )
    k["truncated_label_nii_gz"] = (
        "run",
        lambda t, g: (lambda d: run3d(t, d, "labelsTr/case1.nii.gz", "cannot read image"))(
            _truncate_in_place(copy3d(t, g) / "labelsTr" / "case1.nii.gz", 600).parents[1]
        ),
    )
    k["2d_nifti_where_3d_is_expected_dataset"] = (
        "run",
        lambda t, g: (lambda d: run3d(t, d, "imagesTr/case1.nii.gz", "expected a 3D volume"))(
            _with(copy3d(t, g), lambda d: save_nifti(an_image(d)[1], an_image(d)[0][:, :, 8]))
        ),
    )
    # found only when the voxels are read, while the training data is cached: the run stops before the first
    # epoch; its folder keeps config.yaml and tracking.json, but no checkpoint, metrics or predictions
    k["nan_voxels_in_training_scan"] = (
        "run",
        lambda t, g: (lambda d: run3d(t, d, "imagesTr/case1.nii.gz", "NaN or infinite", absent=_no_model(t)))(
            _with(
                copy3d(t, g),
                lambda d: save_nifti(an_image(d)[1], np.where(an_image(d)[0] > 1.5, np.nan, an_image(d)[0])),
            )
        ),
    )
    k["truncated_image_nii_gz_in_dataset"] = (
        "run",
        lambda t, g: (lambda d: run3d(t, d, "imagesTr/case1.nii.gz", "cannot read image", absent=_no_model(t)))(
            _truncate_in_place(copy3d(t, g) / "imagesTr" / "case1.nii.gz", 2000).parents[1]
        ),
    )

    # ---- models, checkpoints, MLflow and output folders (medseg predict / run / run --resume)
    k["missing_checkpoint"] = (
        "predict",
        lambda t, g: predict(
            t / "no_model.pt",
            g("dataset2d") / "images",
            t / "out",
            "no_model.pt",
            "no checkpoint found",
            exit_code=2,
            absent=[t / "out"],
        ),
    )
    k["truncated_checkpoint"] = (
        "predict",
        lambda t, g: predict(
            truncated(g("model2d") / "model" / "best.pt", t / "cut.pt", 5000),
            g("dataset2d") / "images",
            t / "out",
            "cut.pt",
            "not a readable medseg checkpoint",
            exit_code=2,
            absent=[t / "out"],
            subprocess=True,
        ),
    )
    k["checkpoint_of_another_architecture"] = (
        "predict",
        lambda t, g: predict(
            _other_architecture(g("model2d"), t / "segresnet.pt"),
            g("dataset2d") / "images",
            t / "out",
            "segresnet.pt",
            "weights do not fit network segresnet",
            exit_code=2,
            absent=[t / "out"],
        ),
    )
    k["checkpoint_that_would_run_code"] = (
        "predict",
        lambda t, g: predict(
            torch_file(t / "evil.pt", {"state_dict": {}, "network": RunsCode(t / "pwned")}),
            g("dataset2d") / "images",
            t / "out",
            "evil.pt",
            "not a readable medseg checkpoint",
            exit_code=2,
            absent=[t / "out", t / "pwned"],
        ),
    )
    k["torch_file_that_is_not_a_medseg_checkpoint"] = (
        "predict",
        lambda t, g: predict(
            torch_file(t / "plain.pt", {"weights": torch.zeros(3)}),
            g("dataset2d") / "images",
            t / "out",
            "plain.pt",
            "not a medseg checkpoint",
            exit_code=2,
            absent=[t / "out"],
        ),
    )
    k["model_of_the_wrong_dimensionality"] = (
        "run",
        lambda t, g: run3d(
            t, g("phantoms"), "model.checkpoint", "a 2D model", "stages=[evaluate]", f"model.checkpoint={g('model2d')}"
        ),
    )
    k["mlflow_run_id_that_does_not_exist"] = (
        "resume",
        lambda t, g: Scenario(
            ["run", str(SKIN), *sets(_tracked(t, g)), "--resume", "0123456789abcdef0123456789abcdef"],
            "run 0123456789abcdef0123456789abcdef",
            "no such MLflow run",
            [g("dataset2d")],
            [t / "runs"],
        ),
    )
    k["mlflow_model_uri_that_does_not_exist"] = (
        "predict",
        lambda t, g: predict(
            "runs:/0123456789abcdef0123456789abcdef/model",
            g("dataset2d") / "images",
            t / "out",  # type: ignore[arg-type]
            "runs:/0123456789abcdef0123456789abcdef/model",
            "cannot fetch the model",
            exit_code=2,
            absent=[t / "out"],
            env={"MLFLOW_TRACKING_URI": f"sqlite:///{t / 'store' / 'mlflow.db'}"},
        ),
    )
    k["resume_folder_without_checkpoint"] = (
        "resume",
        lambda t, g: Scenario(
            ["run", str(SKIN), *sets(run2d_overrides(t, g("dataset2d"))), "--resume", str(_mkdir(t / "old_run"))],
            "old_run/model/last.pt",
            "no checkpoint to resume from",
            [g("dataset2d"), t / "old_run"],
            [t / "runs"],
        ),
    )
    k["output_folder_is_a_file"] = (
        "predict",
        lambda t, g: predict(
            g("model2d"), g("dataset2d") / "images", _file(t / "out"), "out", "output folder is a file", exit_code=2
        ),
    )
    k["output_folder_is_the_input_folder"] = (
        "predict",
        lambda t, g: predict(
            g("model2d"),
            _copy_folder(g("dataset2d") / "images", t / "photos"),
            t / "photos",
            "photos",
            "other than the input folder",
            exit_code=2,
        ),
    )
    k["empty_input_folder"] = (
        "predict",
        lambda t, g: predict(
            g("model2d"), _mkdir(t / "photos"), t / "out", "photos", "no images found", exit_code=2, absent=[t / "out"]
        ),
    )
    k["input_folder_of_non_image_files"] = (
        "predict",
        lambda t, g: predict(
            g("model2d"),
            _non_images(t / "notes") / "images",
            t / "out",
            "images",
            "no images found",
            exit_code=2,
            absent=[t / "out"],
        ),
    )
    k["missing_input_path"] = (
        "predict",
        lambda t, g: predict(
            g("model2d"),
            t / "nowhere",
            t / "out",
            "nowhere",
            "prediction input not found",
            exit_code=2,
            absent=[t / "out"],
        ),
    )

    # ---- a bad scan in a batch beside a good one (medseg predict, 3D model)
    k["truncated_nii_gz"] = (
        "predict",
        lambda t, g: batch3d(
            t,
            g,
            lambda s: truncated(g("phantoms") / "imagesTr" / "case1.nii.gz", s / "bad.nii.gz", 2000),
            "cannot read image",
            subprocess=True,
        ),
    )
    k["non_nifti_file_with_a_nifti_name"] = (
        "predict",
        lambda t, g: batch3d(
            t,
            g,
            lambda s: _write(s / "bad.nii.gz", b"PK\x03\x04 a zip, not NIfTI" * 20),
            "cannot read the image header",
        ),
    )
    k["nan_voxels"] = (
        "predict",
        lambda t, g: batch3d(
            t,
            g,
            lambda s: save_nifti(s / "bad.nii.gz", np.where(phantom_scan(g) > 1.5, np.nan, phantom_scan(g))),
            "NaN or infinite",
        ),
    )
    k["inf_voxels"] = (
        "predict",
        lambda t, g: batch3d(
            t,
            g,
            lambda s: save_nifti(s / "bad.nii.gz", np.where(phantom_scan(g) > 1.5, -np.inf, phantom_scan(g))),
            "NaN or infinite",
        ),
    )
    k["2d_nifti_where_3d_is_expected"] = (
        "predict",
        lambda t, g: batch3d(
            t, g, lambda s: save_nifti(s / "bad.nii.gz", phantom_scan(g)[:, :, 8]), "expected a 3D volume"
        ),
    )
    k["png_given_to_a_3d_model"] = (
        "predict",
        lambda t, g: predict(
            g("model3d"),
            _copy(first_image(g("dataset2d")), t / "photo.png"),
            t / "out",
            "photo.png",
            "a 2D image, but the model is 3D",
        ),
    )
    k["two_channel_scan_for_a_one_channel_model"] = (
        "predict",
        lambda t, g: batch3d(
            t,
            g,
            lambda s: save_nifti(s / "bad.nii.gz", np.stack([phantom_scan(g)] * 2, axis=-1)),
            "holds 2 channel(s) but the model expects 1",
        ),
    )
    k["dicom_folder_with_two_series"] = (
        "predict",
        lambda t, g: batch3d(t, g, lambda s: dicom_two_series(s / "bad"), "holds 2 DICOM series"),
    )
    k["scan_larger_than_the_configured_limit"] = (
        "predict",
        lambda t, g: batch3d(t, g, lambda s: _large_scan_header_only(s / "bad.nii"), "above inference.max_voxels"),
    )
    k["symlink_loop_scan"] = (
        "predict",
        lambda t, g: batch3d(t, g, lambda s: symlink_loop(s / "bad.nii.gz"), "Too many levels of symbolic links"),
    )
    k["unreadable_file_permission"] = (
        "predict",
        lambda t, g: batch3d(
            t,
            g,
            lambda s: _unreadable(save_nifti(s / "bad.nii.gz", phantom_scan(g))),
            "Permission denied",
            subprocess=True,
            unprivileged=True,
        ),
    )
    k["all_zero_scan"] = (
        "predict",
        lambda t, g: batch3d(
            t,
            g,
            lambda s: save_nifti(s / "bad.nii.gz", np.zeros((24, 24, 16), np.float32)),
            "nothing to segment",
            exit_code=0,
            accepted=True,
        ),
    )

    # ---- a bad image in a batch beside a good one (medseg predict, 2D model)
    k["rgba_png"] = (
        "predict",
        lambda t, g: batch2d(
            t, g, lambda p: save_image(p / "bad.png", Image.new("RGBA", (40, 30), (9, 9, 9, 99))), "image mode RGBA"
        ),
    )
    k["png_16_bit"] = (
        "predict",
        lambda t, g: batch2d(
            t, g, lambda p: save_image(p / "bad.png", _sixteen_bit(Image.new("L", (40, 30), 9))), "image mode I;16"
        ),
    )
    k["grey_scale_png_where_rgb_is_expected"] = (
        "predict",
        lambda t, g: batch2d(t, g, lambda p: save_image(p / "bad.png", Image.new("L", (40, 30), 90)), "image mode L"),
    )
    k["truncated_png"] = (
        "predict",
        lambda t, g: batch2d(
            t, g, lambda p: truncated(first_image(g("dataset2d")), p / "bad.png", 200), "corrupt or truncated"
        ),
    )
    k["text_file_with_a_png_name"] = (
        "predict",
        lambda t, g: batch2d(t, g, lambda p: _write(p / "bad.png", b"just some text\n"), "not a readable image"),
    )
    k["multi_frame_tiff_where_2d_is_expected"] = (
        "predict",
        lambda t, g: batch2d(t, g, lambda p: _stack_tiff(p / "bad.tif"), "3 frames"),
    )
    k["nifti_volume_given_to_a_2d_model"] = (
        "predict",
        lambda t, g: predict(
            g("model2d"),
            _copy(g("phantoms") / "imagesTr" / "case0.nii.gz", t / "scan.nii.gz"),
            t / "out",
            "scan.nii.gz",
            "a 3D scan, but the model is 2D",
        ),
    )
    k["symlink_loop_photo"] = (
        "predict",
        lambda t, g: batch2d(t, g, lambda p: symlink_loop(p / "bad.png"), "Too many levels of symbolic links"),
    )
    return k


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


def _with(data: Path, action: Callable[[Path], object]) -> Path:
    action(data)
    return data


def _unlink(data: Path, relative: str) -> Path:
    (data / relative).unlink()
    return data


def _overwrite(data: Path, relative: str, content: bytes) -> Path:
    (data / relative).write_bytes(content)
    return data


def _truncate_in_place(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


def _non_images(folder: Path) -> Path:
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
        for name in ("notes.txt", "table.csv", "scan.nii.gz.md5"):
            (folder / sub / name).write_text("not an image\n")
    return folder


def _edit_image(data: Path, name: str, edit: Callable[[Image.Image], Image.Image]) -> Path:
    path = data / "images" / name
    edit(Image.open(path)).save(path)
    return data


def _edit_mask(data: Path, name: str, edit: Callable[[Image.Image], Image.Image]) -> Path:
    path = data / "masks" / name
    edit(Image.open(path)).save(path)
    return data


def _sixteen_bit(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)


def _three_levels(mask: Image.Image) -> np.ndarray:
    values = np.asarray(mask)
    out = np.where(values > 0, 255, 0).astype(np.uint8)
    out[: out.shape[0] // 2][out[: out.shape[0] // 2] > 0] = 128  # the upper half of the lesion at 128
    return out


def _binary_yaml(tmp: Path) -> Path:
    path = tmp / "pipeline.yaml"
    path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01 a JPEG saved as YAML \xfe\xfe")
    return path


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


def _tracked(tmp: Path, get: Get) -> list[str]:
    return [*tiny_overrides(tmp, get("dataset2d")), "training.epochs=1"]


def _other_architecture(run_dir: Path, target: Path) -> Path:
    """The 2D UNet's weights under a checkpoint that describes a SegResNet."""
    state = torch.load(run_dir / "model" / "best.pt", map_location="cpu", weights_only=True)
    state["network"] = {**state["network"], "name": "segresnet", "args": {}}
    return torch_file(target, state)


def _large_scan_header_only(path: Path) -> Path:
    """A NIfTI header for 40 x 40 x 20 = 32,000 voxels (above the 3D model's limit) with no voxel data at all:
    the limit must be checked from the header, before any voxel is read."""
    image = nib.Nifti1Image(np.zeros((40, 40, 20), np.float32), AFFINE)
    full = image.to_bytes()
    path.write_bytes(full[: int(image.header["vox_offset"])])
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

KINDS = kinds()
NEEDS_TRAINING = ("model2d", "model3d", "train")


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
    command = [sys.executable, "-m", "medseg.cli", *scenario.args]
    if scenario.unprivileged and os.geteuid() == 0:
        # root reads any file: drop the capabilities that bypass file permissions (stays uid 0, owner of all files)
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        caps = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", *command]
    done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    return Outcome(done.returncode, done.stdout, done.stderr)


def _params() -> list:
    params = []
    for name, (family, _) in KINDS.items():
        heavy = family in ("predict", "resume") or name.endswith(("_3d", "_dataset")) or "label" in name
        heavy = heavy or name in {
            "non_binary_mask_values",
            "nan_voxels_in_training_scan",
            "model_of_the_wrong_dimensionality",
        }
        heavy = heavy or name.startswith(("mask_and_image",))
        params.append(pytest.param(name, id=name, marks=[slow] if heavy else []))
    return params


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
        assert outcome.exit_code == scenario.exit_code if scenario.out else outcome.exit_code == 0, everything
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
        if family == "validate":
            assert outcome.stdout == ""

    if scenario.out is not None and scenario.out.is_dir():
        masks = sorted(p.name for p in (scenario.out / "masks").iterdir()) if (scenario.out / "masks").is_dir() else []
        expected = [scenario.good] if scenario.good else []
        if scenario.accepted:
            expected = sorted([*expected, "bad.nii.gz"])
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


def test_the_corpus_is_large_enough() -> None:
    assert len(KINDS) >= 30
    named = " ".join(KINDS)
    for required in (
        "truncated_nii_gz",
        "non_nifti_file_with_a_nifti_name",
        "2d_nifti_where_3d_is_expected",
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
        "dicom_folder_with_two_series",
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
        [sys.executable, "-m", "medseg.cli", "validate", str(pipeline), "--debug"],
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

    from medseg import cli, ui

    assert ui.DEFAULT_HOST == "127.0.0.1"
    assert inspect.signature(cli.ui).parameters["host"].default.default == "127.0.0.1"


@slow
def test_case_ids_cannot_write_outside_the_output_folder(tmp_path: Path, model2d: Path, dataset2d: Path) -> None:
    from medseg.inference import Predictor
    from medseg.prediction import predict_images

    predictor = Predictor.from_model(model2d)
    image = str(first_image(dataset2d))
    out = tmp_path / "deep" / "out"
    ids = ["../../escaped", "..", "a/../../b", "/tmp/absolute", "..\\windows", "ok"]
    report = predict_images(predictor, [{"id": i, "image": image} for i in ids], out, overlays=True)
    assert report.written == ["ok"]
    assert sorted(report.failed) == sorted(ids[:-1])
    assert all("would write outside" in reason for reason in report.failed.values())
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["deep/out/masks/ok.png", "deep/out/overlays/ok.png", "deep/out/summary.csv"]

"""``medseg check``: one pass over a dataset finds every planted problem; ``medseg run`` stops on them (all listed)
or leaves the bad cases out under ``data.on_bad_case: skip``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medseg.cli.app import app
from medseg.config.schema import PipelineConfig
from medseg.config.settings import data_settings
from medseg.data.check import check_dataset
from tests.helpers.data import AFFINE, phantom_case, tiny_overrides, write_pair
from tests.helpers.paths import REPO

SIZE = (40, 30)  # PIL (width, height)


def _pair(root: Path, case: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    mask = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    mask[5:20, 8:30] = 255
    write_pair(root, case, image, mask)


@pytest.fixture
def planted_2d(tmp_path: Path) -> Path:
    """Four good cases and one case per planted problem (eleven kinds)."""
    root = tmp_path / "photos"
    for index in range(16):
        _pair(root, f"case{index:02d}", index)
    images, masks = root / "images", root / "masks"
    (images / "case00.png").write_bytes((images / "case00.png").read_bytes()[:200])  # truncated
    (masks / "case01.png").unlink()  # missing mask
    Image.open(masks / "case02.png").resize((20, 10)).save(masks / "case02.png")  # size mismatch
    rgba = Image.open(images / "case03.png").convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 10))
    rgba.save(images / "case03.png")  # transparency
    Image.open(images / "case04.png").convert("L").save(images / "case04.png")  # grey
    Image.open(images / "case05.png").convert("RGBA").save(images / "case05.png")  # opaque alpha: a warning
    Image.fromarray(np.zeros((SIZE[1], SIZE[0]), np.uint8)).save(masks / "case06.png")  # empty mask
    soft = np.asarray(Image.open(masks / "case07.png")).copy()
    soft[0, :5] = 128
    Image.fromarray(soft).save(masks / "case07.png")  # non-binary
    shutil.copy(images / "case09.png", images / "case08.png")  # duplicate image
    colour = np.zeros((*np.asarray(Image.open(masks / "case10.png")).shape, 3), np.uint8)
    colour[..., 0] = np.asarray(Image.open(masks / "case10.png"))
    Image.fromarray(colour).save(masks / "case10.png")  # a colour-coded mask: its channels differ
    Image.fromarray(soft).save(masks / "orphan.png")  # a mask without an image
    return root


EXPECTED_2D = {
    ("error", "case00", "unreadable"),
    ("error", "case01", "missing mask"),
    ("error", "case02", "size mismatch"),
    ("warning", "case02", "non-binary mask"),  # resizing interpolated the mask
    ("error", "case03", "transparency"),
    ("error", "case04", "image mode"),
    ("warning", "case05", "opaque alpha"),
    ("warning", "case06", "empty mask"),
    ("warning", "case07", "non-binary mask"),
    ("warning", "case09", "duplicate image"),
    ("error", "case10", "mask channels"),
    ("warning", "", "unmatched masks"),
}


def test_check_finds_every_planted_2d_problem_in_one_pass(planted_2d: Path) -> None:
    report = check_dataset(data_settings(PipelineConfig(name="t")), planted_2d)
    found = {(f.severity, f.case, f.check) for f in report.findings}
    assert found == EXPECTED_2D
    assert report.bad_cases == ["case00", "case01", "case02", "case03", "case04", "case10"]
    assert len(report.records) == 15 and len(report.good_records) == 10 and report.exit_code == 2  # case01: no pair
    assert all("\n" not in f.message and (f.file == "" or Path(f.file).name in f.message) for f in report.findings)


def test_check_cli_exit_codes_and_report_files(planted_2d: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["check", str(planted_2d), "-o", str(tmp_path / "report.json")])
    assert result.exit_code == 2, result.output
    document = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert document["errors"] == 6 and document["cases"] == 15 and len(document["findings"]) == 12
    assert "6 error(s) in 6 case(s), 6 warning(s)" in result.output

    clean = tmp_path / "clean"
    for index in range(4):
        _pair(clean, f"c{index}", index)
    assert runner.invoke(app, ["check", str(clean)]).exit_code == 0
    Image.fromarray(np.zeros((SIZE[1], SIZE[0]), np.uint8)).save(clean / "masks" / "c0.png")
    warned = runner.invoke(app, ["check", str(clean), "-o", str(tmp_path / "report.csv")])
    assert warned.exit_code == 1, warned.output
    rows = list(csv.DictReader((tmp_path / "report.csv").open(encoding="utf-8")))
    assert [(r["severity"], r["case"], r["check"]) for r in rows] == [("warning", "c0", "empty mask")]


def _volume(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)


def test_check_finds_every_planted_3d_problem_in_one_pass(tmp_path: Path) -> None:
    root = tmp_path / "ct"
    rng = np.random.default_rng(0)
    for index in range(7):
        flair, _, label = phantom_case(rng)
        _volume(root / "imagesTr" / f"case{index}_0000.nii.gz", (flair * 100 - 50).astype(np.float32))
        _volume(root / "labelsTr" / f"case{index}.nii.gz", label)
    shifted = AFFINE.copy()
    shifted[0, 3] += 5.0
    _volume(root / "labelsTr" / "case0.nii.gz", nib.load(root / "labelsTr" / "case0.nii.gz").get_fdata(), shifted)
    _volume(root / "labelsTr" / "case1.nii.gz", np.full((24, 24, 16), 0.5, np.float32))  # not class labels
    _volume(root / "labelsTr" / "case2.nii.gz", np.zeros((24, 24, 16), np.float32))  # empty
    hot = np.full((24, 24, 16), 9000.0, np.float32)
    _volume(root / "imagesTr" / "case3_0000.nii.gz", hot)  # not HU
    coarse = AFFINE.copy()
    coarse[2, 2] *= 5
    _volume(root / "imagesTr" / "case4_0000.nii.gz", np.zeros((24, 24, 16), np.float32), coarse)
    _volume(root / "labelsTr" / "case4.nii.gz", np.zeros((24, 24, 16), np.float32), coarse)
    shutil.copy(root / "imagesTr" / "case6_0000.nii.gz", root / "imagesTr" / "case5_0000.nii.gz")
    cfg = PipelineConfig(
        name="t", spatial_dims=3, model={"in_channels": 1}, preprocessing={"intensity": {"kind": "ct"}}
    )
    report = check_dataset(data_settings(cfg), root)
    found = {(f.severity, f.case, f.check) for f in report.findings}
    assert {
        ("error", "case0", "geometry"),
        ("error", "case1", "label values"),
        ("warning", "case2", "empty label"),
        ("warning", "case3", "intensity"),
        ("warning", "case4", "spacing outlier"),
        ("warning", "case4", "empty label"),
        ("warning", "case6", "duplicate image"),
    } <= found, found
    assert report.bad_cases == ["case0", "case1"]


@pytest.mark.slow
def test_run_lists_all_bad_cases_then_can_skip_them(planted_2d: Path, tmp_path: Path) -> None:
    import mlflow

    runner = CliRunner()
    overrides = [*tiny_overrides(tmp_path, planted_2d), "stages=[train]", "training.epochs=1"]
    sets = [arg for o in overrides for arg in ("--set", o)]
    stopped = runner.invoke(app, ["run", str(REPO / "pipelines" / "skin_lesion.yaml"), *sets])
    assert stopped.exit_code == 2
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "case01.png: no mask found" in errors[0] and "5 more error(s) in 6 case(s)" in errors[0]
    for case in ("case02", "case03", "case04", "case10"):
        assert case in stopped.stderr  # the table lists every bad case
    assert not (tmp_path / "runs").exists()  # nothing written

    skipped = runner.invoke(
        app, ["run", str(REPO / "pipelines" / "skin_lesion.yaml"), *sets, "--set", "data.on_bad_case=skip"]
    )
    assert skipped.exit_code == 0, skipped.output
    (run_dir,) = (tmp_path / "runs" / "skin_lesion").iterdir()
    rows = list(csv.DictReader((run_dir / "bad_cases.csv").open(encoding="utf-8")))
    assert sorted({r["case"] for r in rows}) == ["case00", "case01", "case02", "case03", "case04", "case10"]
    splits = json.loads((tmp_path / "splits.json").read_text(encoding="utf-8"))
    assert sum(len(v) for k, v in splits.items() if k != "seed") == 10
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.tags["bad_case_count"] == "6"

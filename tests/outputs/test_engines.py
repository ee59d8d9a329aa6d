"""The Ray engine and job-array shards give the local engine's outputs: the same masks byte for byte, a corrupt scan
failing its own row only, resume, one summary."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli.app import app
from tests.helpers.models import tiny_unet_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a tiny seeded 3D UNet (random weights: fixed masks to compare engines by)."""
    return tiny_unet_checkpoint(tmp_path_factory.mktemp("model") / "best.pt", "engines")


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(0)
    for index in range(4):
        volume = rng.normal(0, 300, (18, 16, 12)).astype(np.int16)
        nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.2, 2.0, 1.0])), folder / f"case{index}.nii.gz")
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    return folder


def predict(model: Path, scans: Path, out: Path, *extra: str) -> object:
    return CliRunner().invoke(app, ["predict", "-m", str(model), "-i", str(scans), "-o", str(out), *extra])


def summary(path: Path) -> dict[str, str]:
    return {row["case"]: row["status"] for row in csv.DictReader(path.open())}


def test_shards_cover_every_case_once_with_the_local_engines_masks(model: Path, scans: Path, tmp_path: Path) -> None:
    local = predict(model, scans, tmp_path / "local")
    assert local.exit_code == 1  # the broken scan fails; the others are written
    for index in range(3):
        predict(model, scans, tmp_path / "sharded", "--shard", f"{index}/3")
    shards = [summary(tmp_path / "sharded" / f"summary.shard{i}-of-3.csv") for i in range(3)]
    covered = [case for shard in shards for case in shard]
    assert sorted(covered) == sorted(summary(tmp_path / "local" / "summary.csv")) and len(covered) == 5
    for mask in (tmp_path / "local" / "masks").iterdir():
        assert (tmp_path / "sharded" / "masks" / mask.name).read_bytes() == mask.read_bytes()
    bad = predict(model, scans, tmp_path / "x", "--shard", "3/2")
    assert bad.exit_code == 2 and "--shard 3/2: i must be 0..N-1" in bad.output


@pytest.mark.slow
def test_ray_engine_matches_the_local_engine(model: Path, scans: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the distributed extra (Ray) is not installed")
    local = predict(model, scans, tmp_path / "local")
    ray_run = predict(model, scans, tmp_path / "ray", "--engine", "ray", "--workers", "2")
    assert ray_run.exit_code == 1, ray_run.output  # the broken scan fails its own row
    assert summary(tmp_path / "ray" / "summary.csv") == summary(tmp_path / "local" / "summary.csv")
    assert summary(tmp_path / "ray" / "summary.csv")["broken"] == "failed"
    written = sorted(p.name for p in (tmp_path / "ray" / "masks").iterdir())
    assert written == [f"case{i}.nii.gz" for i in range(4)]
    for name in written:  # byte-identical masks
        assert (tmp_path / "ray" / "masks" / name).read_bytes() == (tmp_path / "local" / "masks" / name).read_bytes()
    assert local.exit_code == 1
    # a worker killed mid-write leaves only a temporary file; the rerun removes it, skips what is done, and completes
    (tmp_path / "ray" / "masks" / "case0.nii.gz").unlink()
    (tmp_path / "ray" / "masks" / ".case0.nii.gz.1a2b3c.tmp.nii.gz").write_bytes(b"partial")
    again = predict(model, scans, tmp_path / "ray", "--engine", "ray", "--workers", "2")
    statuses = summary(tmp_path / "ray" / "summary.csv")
    assert statuses == {"case0": "ok", "case1": "skipped", "case2": "skipped", "case3": "skipped", "broken": "failed"}
    assert again.exit_code == 1 and not list((tmp_path / "ray" / "masks").glob(".*"))
    assert (tmp_path / "ray" / "masks" / "case0.nii.gz").read_bytes() == (
        tmp_path / "local" / "masks" / "case0.nii.gz"
    ).read_bytes()


def test_ray_engine_without_the_extra_says_how_to_install_it(
    model: Path, scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    result = predict(model, scans, tmp_path / "out", "--engine", "ray")
    assert result.exit_code == 2
    assert 'Ray is not installed; pip install "medseg[distributed]"' in result.output
    assert not (tmp_path / "out").exists()

"""``medseg convert SRC DST --to nnunet|msd|folder``: prints what it wrote and the label mapping; a bad target is one
line on stderr and exit code 2."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medseg.cli.app import app


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def skin_folder(root: Path) -> Path:
    """Two RGB images with 0/255 masks in medseg's 2D folder layout."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for case in ("a1", "a2"):
        Image.fromarray(np.full((8, 10, 3), 90, np.uint8)).save(root / "images" / f"{case}.png")
        mask = np.zeros((8, 10), np.uint8)
        mask[2:6, 3:7] = 255
        Image.fromarray(mask).save(root / "masks" / f"{case}.png")
    return root


def test_convert_writes_nnunet_and_prints_the_mapping(tmp_path: Path) -> None:
    source = skin_folder(tmp_path / "skin")
    target = tmp_path / "Dataset003_Skin"
    result = CliRunner().invoke(app, ["convert", str(source), str(target), "--to", "nnunet"])
    assert result.exit_code == 0, result.output
    assert "2 case(s) as nnunet" in result.output
    assert "0 -> 0 background, 255 -> 1 label_255" in result.output
    assert json.loads((target / "dataset.json").read_text())["labels"] == {"background": 0, "label_255": 1}
    assert np.asarray(Image.open(target / "labelsTr" / "a2.png")).max() == 1


def test_convert_with_a_layout_and_dims_reads_the_source_as_told(tmp_path: Path) -> None:
    source = skin_folder(tmp_path / "skin")
    args = ["convert", str(source), str(tmp_path / "msd"), "--to", "msd", "--layout", "folder", "--dims", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "msd" / "dataset.json").read_text())["training"][0] == {
        "image": "imagesTr/a1.png",
        "label": "labelsTr/a1.png",
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--to", "nifti"], "--to nifti: expected one of nnunet, msd, folder"),
        (["--to", "msd", "--dims", "4"], "--dims 4: expected 2 or 3"),
        (["--to", "msd", "--layout", "tiff"], "unknown data layout 'tiff'"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, extra: list[str], message: str) -> None:
    source = skin_folder(tmp_path / "skin")
    result = CliRunner().invoke(app, ["convert", str(source), str(tmp_path / "out"), *extra])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_non_empty_target_is_refused(tmp_path: Path) -> None:
    source = skin_folder(tmp_path / "skin")
    result = CliRunner().invoke(app, ["convert", str(source), str(source.parent), "--to", "folder"])
    assert result.exit_code == 2 and "already exists and is not empty" in result.output

"""``medseg plan``: a fingerprint and a commented pipeline YAML that validates and trains as it is."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from medseg.cli.app import app
from medseg.config.loading import load_config
from medseg.planning.fingerprint import Fingerprint
from medseg.planning.planner import pooling_plan, target_spacing
from tests.helpers.data import AFFINE, phantom_case


@pytest.fixture
def phantom_ct(tmp_path: Path) -> Path:
    """Four one-channel 'CT' phantoms in nnU-Net layout (air at -1000 HU), labels 0/1/2."""
    root = tmp_path / "Dataset001_Phantom"
    rng = np.random.default_rng(0)
    for index in range(4):
        flair, _, label = phantom_case(rng)
        hu = np.where(flair > 0, 40 + 30 * flair, -1000).astype(np.float32)
        for folder, name, array in (("imagesTr", f"case{index}_0000", hu), ("labelsTr", f"case{index}", label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, AFFINE), root / folder / f"{name}.nii.gz")
    return root


def test_plan_of_3d_data_is_reproducible_validates_and_explains_itself(phantom_ct: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    outputs = []
    for attempt in ("a", "b"):
        out = tmp_path / attempt / "planned.yaml"
        result = runner.invoke(app, ["plan", str(phantom_ct), "-o", str(out), "--memory-gb", "0.5"])
        assert result.exit_code == 0, result.output
        outputs.append(out.read_text(encoding="utf-8"))
    assert outputs[0] == outputs[1]  # the same data gives the same plan
    cfg = load_config(tmp_path / "a" / "planned.yaml")
    assert cfg.spatial_dims == 3 and cfg.data.layout == "nnunet" and cfg.model.name == "dynunet"
    assert cfg.model.out_channels == 3 and cfg.data.label_mapping == {1: 1, 2: 2}
    assert cfg.preprocessing.spacing == (1.2, 1.0, 1.5)  # the median (isotropic enough: max/min 1.5)
    intensity = cfg.preprocessing.intensity
    assert intensity.kind == "ct" and intensity.window[0] > -1000  # clipped to the foreground, not to air
    assert intensity.scaled_to[0] < 0 < intensity.scaled_to[1]  # z-scores of the window's ends
    fingerprint = json.loads((tmp_path / "a" / "planned.fingerprint.json").read_text(encoding="utf-8"))
    assert fingerprint["modality"] == "ct" and len(fingerprint["cases"]) == 4
    assert set(fingerprint["class_fractions"]) == {"0", "1", "2"}
    text = outputs[0]
    for key in ("spacing:", "patch_size:", "intensity:", "out_channels:", "args:"):
        line = next(line for line in text.splitlines() if line.strip().startswith(key))
        assert "  # " in line, line  # every derived value carries its reason
    patch = cfg.preprocessing.patch_size
    factor = np.prod(np.array(cfg.model.args["strides"]), axis=0)
    assert all(p % f == 0 for p, f in zip(patch, factor, strict=True))


@pytest.mark.slow
def test_plan_of_2d_data_trains_with_medseg_run(tiny_dataset: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out, again = tmp_path / "skin.yaml", tmp_path / "again" / "skin.yaml"
    for target in (out, again):
        assert runner.invoke(app, ["plan", str(tiny_dataset), "-o", str(target)]).exit_code == 0
    assert out.read_text(encoding="utf-8") == again.read_text(encoding="utf-8")  # the same plan twice
    planned = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert planned["preprocessing"]["spatial_size"] == [64, 96] and planned["training"]["batch_size"] == 8
    sets = [
        "training.epochs=1",
        f"output_root={tmp_path / 'runs'}",
        f"data.split.file={tmp_path / 'splits.json'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        "stages=[train]",
    ]
    result = runner.invoke(app, ["run", str(out), *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output


def test_plan_refuses_a_device_it_does_not_have(tiny_dataset: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    result = CliRunner().invoke(app, ["plan", str(tiny_dataset), "-o", str(tmp_path / "p.yaml"), "--device", "cuda"])
    assert result.exit_code == 2 and "--device cuda: expected cpu or cuda[:N] with a CUDA GPU present" in result.stderr


def test_anisotropic_spacing_takes_the_10th_percentile_on_the_coarse_axis() -> None:
    cases = [{"id": str(i), "shape": [256, 256, 40], "spacing": [0.8, 0.8, z]} for i, z in enumerate([3, 4, 5, 5, 6])]
    fingerprint = Fingerprint(3, "ct", 1, cases, median_spacing=[0.8, 0.8, 5.0], anisotropy=5.0 / 0.8)
    spacing, why = target_spacing(fingerprint)
    assert spacing == [0.8, 0.8, pytest.approx(3.4)] and "10th percentile" in why


def test_pooling_stops_at_four_to_eight_voxels_per_axis() -> None:
    strides = pooling_plan([128, 128, 24])
    assert strides[0] == [1, 1, 1]
    assert [s[2] for s in strides[1:]] == [2, 2, 1, 1, 1]  # 24 -> 12 -> 6, then z stays
    assert len(strides) == 6  # 128 pooled five times: 4 voxels


def test_plan_from_a_pipeline_keeps_its_hand_made_sections(tiny_dataset: Path, tmp_path: Path) -> None:
    source = tmp_path / "source.yaml"
    source.write_text(
        yaml.safe_dump(
            {
                "name": "source",
                "data": {"root": str(tiny_dataset.parent), "dataset_dir": tiny_dataset.name},
                "augmentation": {"brightness": 0.05, "noise_prob": 0.0},
                "optimizer": {"lr": 0.003},
                "postprocessing": {"opening": True, "radius": 2},
            }
        ),
        encoding="utf-8",
    )
    out = tmp_path / "planned.yaml"
    result = CliRunner().invoke(app, ["plan", "--pipeline", str(source), "-o", str(out)])
    assert result.exit_code == 0, result.output
    planned = load_config(out)
    assert planned.augmentation.brightness == 0.05 and planned.augmentation.noise_prob == 0.0
    assert planned.optimizer.lr == 0.003
    assert planned.postprocessing.opening and planned.postprocessing.radius == 2
    assert planned.loss == load_config(source).loss  # a default section is not written
    line = next(line for line in out.read_text(encoding="utf-8").splitlines() if line.startswith("optimizer:"))
    assert "as in the source pipeline" in line

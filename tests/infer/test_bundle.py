"""``medseg export --format bundle``: MONAI bundles that run with ``python -m monai.bundle run`` where medseg cannot be
imported, and segment as ``medseg predict`` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medseg.cli.app import app
from medseg.config.loading import load_config
from medseg.config.schema import PipelineConfig
from medseg.core.errors import ModelError
from medseg.core.layout import BEST_CHECKPOINT, POSTPROCESSING_FILE
from medseg.evaluation.metrics import dice_score
from medseg.infer.export import export_model
from medseg.models.checkpoint import save_checkpoint
from medseg.models.registry import build_network
from tests.helpers.data import AFFINE, phantom_case, tiny_overrides
from tests.helpers.paths import REPO
from tests.infer.test_export import ARGS, _checkpoint

pytest.importorskip("fire", reason="python -m monai.bundle run needs fire (pip install -e .[bundle])")
pytest.importorskip("ignite", reason="the bundle's evaluator needs pytorch-ignite (pip install -e .[bundle])")

REQUIRED_METADATA = {
    "version": str,
    "monai_version": str,
    "pytorch_version": str,
    "numpy_version": str,
    "optional_packages_version": dict,
    "task": str,
    "description": str,
    "authors": str,
    "copyright": str,
    "network_data_format": dict,
}
#: enough training for a tiny run to segment something in seconds; without the steps MONAI has no transform for
#: (mirror TTA, closing, opening: left out of bundles, named in test_left_out_steps_are_named_and_baselines_refused)
SEGMENTS_SOMETHING = [
    "optimizer.lr=0.01",
    "inference.tta=false",
    "postprocessing.closing=false",
    "postprocessing.opening=false",
]
TENSOR_KEYS = {"type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data"}


@pytest.fixture(scope="module")
def trained_2d(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny skin-lesion run (2 epochs, post-processing chosen on validation) and three of its images."""
    from medseg.data.synthetic import generate_dermoscopy_dataset
    from medseg.pipeline.run import run_pipeline

    tmp = tmp_path_factory.mktemp("bundle2d")
    dataset = generate_dermoscopy_dataset(tmp / "tiny", num_cases=12, image_size=(64, 96), seed=3)
    overrides = [
        *tiny_overrides(tmp, dataset),
        "stages=[train, postprocess]",
        *SEGMENTS_SOMETHING,
        "training.epochs=15",
    ]
    run_dir = run_pipeline(load_config(REPO / "pipelines" / "skin_lesion.yaml", overrides), run_name="b2d").run_dir
    images = tmp / "images"
    images.mkdir()
    for path in sorted((dataset / "images").iterdir())[:3]:
        (images / path.name).write_bytes(path.read_bytes())
    assert len(list(images.iterdir())) == 3
    return run_dir, images


@pytest.fixture(scope="module")
def trained_3d(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny two-modality brain-tumour run on phantoms (LAS, anisotropic) and two scans named as nnU-Net does."""
    from medseg.pipeline.run import run_pipeline

    tmp = tmp_path_factory.mktemp("bundle3d")
    root, scans = tmp / "brats-like", tmp / "scans"
    rng = np.random.default_rng(0)
    for folder in ("imagesTr", "imagesTr_t1c", "labelsTr", "../scans"):
        (root / folder).mkdir(parents=True)
    for index in range(5):
        flair, t1c, label = phantom_case(rng)
        for folder, array in (("imagesTr", flair), ("imagesTr_t1c", t1c), ("labelsTr", label)):
            nib.save(nib.Nifti1Image(array, AFFINE), root / folder / f"case{index}.nii.gz")
        if index < 2:
            for channel, array in enumerate((flair, t1c)):
                nib.save(nib.Nifti1Image(array, AFFINE), scans / f"case{index}_{channel:04d}.nii.gz")
    overrides = [
        f"data.root={tmp}",
        f"data.dataset_dir={root.name}",
        f"data.split.file={tmp / 'splits.json'}",
        f"output_root={tmp / 'runs'}",
        f"tracking.uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}",
        "stages=[train, postprocess]",
        "preprocessing.spacing=[1.5, 1.5, 1.5]",
        "preprocessing.patch_size=[16, 16, 16]",
        "model.args.channels=[8, 16, 32]",
        "model.args.strides=[2, 2]",
        "training.epochs=2",
        "training.samples_per_volume=2",
        "training.max_minutes=null",
        "schedule.length=epochs",
        "training.bf16=true",
        *SEGMENTS_SOMETHING,
    ]
    run_dir = run_pipeline(load_config(REPO / "pipelines" / "brain_tumor_mri.yaml", overrides), run_name="b3d").run_dir
    return run_dir, scans


def _without_medseg(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python cannot import medseg (a medseg.py that raises comes first on the path)."""
    blocker = tmp_path / "blocked"
    blocker.mkdir(exist_ok=True)
    (blocker / "medseg.py").write_text("raise ImportError('medseg is not importable here')\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    probe = subprocess.run([sys.executable, "-c", "import medseg"], env=env, cwd=tmp_path, capture_output=True)
    assert probe.returncode != 0 and b"medseg is not importable here" in probe.stderr
    return env


def _run_bundle(bundle: Path, inputs: Path, output: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json")]
    command += ["--bundle_root", str(bundle), "--dataset_dir", str(inputs), "--output_dir", str(output)]
    env = _without_medseg(tmp_path)
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _export_and_predict(run_dir: Path, inputs: Path, tmp_path: Path) -> tuple[Path, Path, str]:
    runner = CliRunner()
    bundle = tmp_path / "bundle"
    exported = runner.invoke(app, ["export", str(run_dir), "--format", "bundle", "-o", str(bundle)])
    assert exported.exit_code == 0, exported.output
    predicted = runner.invoke(app, ["predict", "-m", str(run_dir), "-i", str(inputs), "-o", str(tmp_path / "medseg")])
    assert predicted.exit_code == 0, predicted.output
    _run_bundle(bundle, inputs, tmp_path / "monai", tmp_path)
    return bundle, tmp_path / "medseg" / "masks", exported.output


@pytest.mark.slow
def test_2d_bundle_runs_without_medseg_and_matches_predict(trained_2d: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, images = trained_2d
    bundle, ours, output = _export_and_predict(run_dir, images, tmp_path)
    assert f"{bundle} (bundle): parity on 2 random tensors at the working shape (models/model.ts)" in output
    assert f"run with: python -m monai.bundle run --config_file {bundle}/configs/inference.json" in output
    for image in sorted(images.iterdir()):
        theirs = np.asarray(Image.open(tmp_path / "monai" / f"{image.stem}_seg.png"))
        reference = np.asarray(Image.open(ours / f"{image.stem}.png"))
        assert theirs.shape == reference.shape and set(np.unique(theirs)) <= {0, 255}
        assert reference.any(), "the tiny model segments something"
        assert dice_score(theirs > 0, reference > 0) >= 0.99, image.name


@pytest.mark.slow
def test_3d_bundle_runs_without_medseg_and_matches_predict(trained_3d: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, scans = trained_3d
    bundle, ours, _ = _export_and_predict(run_dir, scans, tmp_path)
    for case in ("case0", "case1"):
        theirs = nib.load(tmp_path / "monai" / f"{case}_0000_seg.nii.gz")
        reference = nib.load(ours / f"{case}.nii.gz")
        assert theirs.shape == reference.shape == (24, 24, 16)
        np.testing.assert_allclose(theirs.affine, AFFINE, atol=1e-4)  # back on the scan's own (LAS) grid
        a, b = np.asarray(theirs.dataobj), np.asarray(reference.dataobj)
        assert b.any(), "the tiny model segments something"
        assert dice_score(a > 0, b > 0) >= 0.99, case
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    names = [t["_target_"] for t in inference["preprocessing"]["transforms"]]
    assert names == ["LoadImaged", "Orientationd", "Spacingd", "NormalizeIntensityd", "CropForegroundd"]
    assert inference["inferer"]["_target_"] == "SlidingWindowInferer"
    assert inference["inferer"]["roi_size"] == [16, 16, 16]


@pytest.mark.slow
def test_metadata_key_by_key_and_the_torchscript_file(trained_3d: tuple[Path, Path], tmp_path: Path) -> None:
    from monai.data import load_net_with_metadata

    run_dir, _ = trained_3d
    bundle = export_model(run_dir, "bundle", tmp_path / "b").path
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    for key, kind in REQUIRED_METADATA.items():
        assert isinstance(meta[key], kind), key
    import monai

    assert meta["monai_version"] == monai.__version__ and meta["pytorch_version"] == torch.__version__.split("+")[0]
    assert meta["numpy_version"] == np.__version__
    assert {"nibabel", "pytorch-ignite", "fire"} <= set(meta["optional_packages_version"])
    assert meta["task"] == load_config(run_dir / "config.yaml").description
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert set(image) >= TENSOR_KEYS and set(pred) >= TENSOR_KEYS - {"modality"}
    assert image["modality"] == "MR" and image["num_channels"] == 2 and image["spatial_shape"] == [16, 16, 16]
    assert image["channel_def"] == {"0": "imagesTr", "1": "imagesTr_t1c"} and image["is_patch_data"] is True
    assert pred["format"] == "classes" and pred["num_channels"] == 1 and pred["channel_def"] == {"0": "whole_tumor"}
    assert meta["labels"] == {"0": "background", "1": "whole_tumor"}

    network, embedded, extra = load_net_with_metadata(
        bundle / "models" / "model.ts", more_extra_files=("inference.json",)
    )
    assert embedded["network_data_format"] == meta["network_data_format"]  # metadata.json, as ckpt_export embeds it
    assert json.loads(extra["inference.json"]) == json.loads((bundle / "configs" / "inference.json").read_text())
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert set(weights) == set(network.state_dict())


def test_left_out_steps_are_named_and_baselines_refused(tmp_path: Path) -> None:
    cfg = PipelineConfig(
        name="t2d",
        preprocessing={"spatial_size": [32, 32], "color_constancy": "shades_of_gray"},
        model={"args": ARGS},
        postprocessing={"radius": 1},
    )
    checkpoint = _checkpoint(tmp_path / "run", cfg, ["fill_holes", "opening"])
    result = CliRunner().invoke(app, ["export", str(checkpoint), "--format", "bundle", "-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("left out of inference.json: ")]
    assert notes == [
        "left out of inference.json: preprocessing.color_constancy shades_of_gray: MONAI has no such transform",
        "left out of inference.json: post-processing step opening: MONAI has no opening transform",
    ]
    steps = json.loads((tmp_path / "b" / "configs" / "inference.json").read_text())["postprocessing"]["transforms"]
    assert [t["_target_"] for t in steps] == ["Activationsd", "Invertd", "AsDiscreted", "FillHolesd", "SaveImaged"]
    readme = (tmp_path / "b" / "docs" / "README.md").read_text()
    assert "- post-processing step opening: MONAI has no opening transform" in readme

    baseline = tmp_path / "otsu" / "model" / BEST_CHECKPOINT
    spec = {"name": "otsu", "spatial_dims": 2, "in_channels": 3, "out_channels": 1, "args": {}}
    state = {"state_dict": build_network("otsu", 2, 3, 1, {}).state_dict(), "network": spec}
    save_checkpoint(baseline, {**state, "config": PipelineConfig(name="otsu", model={"name": "otsu"}).to_dict()})
    (baseline.parent / POSTPROCESSING_FILE).write_text(json.dumps({"mode": "auto", "steps": []}), encoding="utf-8")
    result = CliRunner().invoke(app, ["export", str(baseline), "--format", "bundle", "-o", str(tmp_path / "c")])
    assert result.exit_code != 0
    assert result.output.strip().endswith("a classical baseline (otsu) has no network for a MONAI bundle")
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "c").exists()
    with pytest.raises(ModelError, match="--check-input: compares ONNX / TorchScript files end to end, not bundles"):
        export_model(checkpoint, "bundle", tmp_path / "d", check_inputs=tmp_path)
    with pytest.raises(ModelError, match="is not a MONAI bundle"):
        (tmp_path / "notes.txt").write_text("x")
        export_model(checkpoint, "bundle", tmp_path / "notes.txt")

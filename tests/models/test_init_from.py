"""``model.init_from``: a run, a ``.pt`` (DDP / torch.compile prefixes), a ``.ts`` and a MONAI bundle folder give a
pipeline its starting weights; the tensors that fit are loaded, a head for other labels keeps its fresh values; a bad
source is refused in one line before a run folder is written."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medseg.config.loading import load_config
from medseg.models.checkpoint import load_checkpoint, network_from_checkpoint
from medseg.models.init_from import check_init_from, initialise
from medseg.models.registry import build_network
from tests.helpers.data import tiny_overrides
from tests.helpers.paths import REPO

PIPELINE = REPO / "pipelines" / "skin_lesion.yaml"
EXPECTED = "a run folder, a .pt checkpoint, a .ts export or a MONAI bundle folder with models/model.pt or .ts"


def _overrides(root: Path, data: Path, *extra: str) -> list[str]:
    """A tiny 2D run (the train stage, which adds post-processing) writing under ``root``."""
    return [*tiny_overrides(root, data), "stages=[train]", "inference.tta=false", *extra]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medseg.data.synthetic import generate_dermoscopy_dataset

    folder = tmp_path_factory.mktemp("data") / "tiny"
    return generate_dermoscopy_dataset(folder, num_cases=12, image_size=(64, 96), seed=3)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> Path:
    """A binary lesion model trained for 2 epochs."""
    from medseg.pipeline.run import run_pipeline

    root = tmp_path_factory.mktemp("source")
    cfg = load_config(PIPELINE, _overrides(root, dataset, "tracking.enabled=false"))
    return run_pipeline(cfg, run_name="source").run_dir


@pytest.fixture
def logging_kept() -> Iterator[None]:
    """The CLI's logging set-up undone afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_run_starts_a_pipeline_with_a_new_head(
    tmp_path: Path, dataset: Path, source_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two classes from a binary model: the output layer is re-initialised, every other tensor is the source's at
    step 0, and the counts are MLflow params of the train run."""
    import mlflow

    import medseg.training.trainer
    from medseg.pipeline.run import run_pipeline

    at_step_0: dict[str, torch.Tensor] = {}
    real = medseg.training.trainer.initialise

    def spy(network: torch.nn.Module, *args: object) -> object:
        match = real(network, *args)
        at_step_0.update({k: v.clone() for k, v in network.state_dict().items()})
        return match

    monkeypatch.setattr(medseg.training.trainer, "initialise", spy)
    extra = [f"model.init_from={source_run}", "model.out_channels=2", "data.label_mapping={0: 0, 255: 1}"]
    cfg = load_config(PIPELINE, _overrides(tmp_path, dataset, *extra, "training.epochs=1"))
    result = run_pipeline(cfg, run_name="two-classes")

    source = load_checkpoint(source_run / "model" / "best.pt")["state_dict"]
    assert set(at_step_0) == set(source)
    head = {k for k, v in at_step_0.items() if v.shape != source[k].shape}
    assert head and all(k.startswith("model.2.") for k in head)  # the last up-convolution: out_channels
    assert all(torch.equal(v, source[k]) for k, v in at_step_0.items() if k not in head)

    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    parent = client.get_run(result.run_id)
    train = next(r for r in client.search_runs([parent.info.experiment_id]) if r.info.run_name == "train")
    params = train.data.params
    assert params["init_from.tensors_kept"] == str(len(source) - len(head))
    assert params["init_from.tensors_reinitialised"] == str(len(head))
    assert params["init_from.path"] == str(source_run / "model" / "best.pt")
    assert parent.data.params["model.init_from"] == str(source_run)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking.uri)
    monkeypatch.chdir(tmp_path)  # the download cache: mlruns/downloads
    spec = load_checkpoint(result.run_dir / "model" / "best.pt")["network"]
    by_uri = check_init_from(f"runs:/{result.run_id}/model", spec)
    assert (len(by_uri.kept), by_uri.reinitialised) == (len(at_step_0), ())


def test_prefixed_checkpoints_torchscript_and_bundles_give_every_tensor(tmp_path: Path, source_run: Path) -> None:
    checkpoint = load_checkpoint(source_run / "model" / "best.pt")
    weights, spec = checkpoint["state_dict"], checkpoint["network"]
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}}, tmp_path / "ddp.pt")
    torch.save({f"_orig_mod.{k}": v for k, v in weights.items()}, tmp_path / "compiled.pt")
    network = network_from_checkpoint(checkpoint, source_run)
    torch.jit.trace(network, torch.rand(1, 3, 64, 64)).save(str(tmp_path / "model.ts"))  # no medseg metadata
    (tmp_path / "bundle" / "models").mkdir(parents=True)
    (tmp_path / "bundle" / "configs").mkdir()
    (tmp_path / "bundle" / "configs" / "inference.json").write_text('{"network_def": {"_target_": "$exit(1)"}}')
    torch.save(weights, tmp_path / "bundle" / "models" / "model.pt")
    (tmp_path / "deploy_bundle" / "models").mkdir(parents=True)  # TorchScript only, as MONAI Deploy takes it
    shutil.copy(tmp_path / "model.ts", tmp_path / "deploy_bundle" / "models" / "model.ts")

    for source in ("ddp.pt", "compiled.pt", "model.ts", "bundle", "deploy_bundle"):
        match = check_init_from(str(tmp_path / source), spec)
        assert (match.kept, match.reinitialised) == (tuple(weights), ()), source
    fresh = build_network(**spec)
    initialise(fresh, str(tmp_path / "model.ts"), spec["name"], {})
    assert all(torch.equal(v, weights[k]) for k, v in fresh.state_dict().items())


def test_other_preprocessing_is_one_warning_line(
    source_run: Path, dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = load_checkpoint(source_run / "model" / "best.pt")
    spec, same = checkpoint["network"], checkpoint["config"]
    other = load_config(PIPELINE, _overrides(tmp_path, dataset, "preprocessing.spatial_size=[64, 80]")).to_dict()
    with caplog.at_level(logging.WARNING, logger="medseg.models.init_from"):
        initialise(build_network(**spec), str(source_run), spec["name"], same)
        assert not caplog.records
        match = initialise(build_network(**spec), str(source_run), spec["name"], other)
    assert [r.getMessage() for r in caplog.records] == [
        f"model.init_from: {source_run} was trained with other preprocessing (preprocessing.spatial_size (64, 64) -> "
        "(64, 80)); its weights may fit these images less well"
    ]
    assert match.differences == ("preprocessing.spatial_size (64, 64) -> (64, 80)",)


def test_bad_sources_are_refused_in_one_line_before_a_run_folder(
    tmp_path: Path, dataset: Path, logging_kept: None
) -> None:
    from medseg.cli.app import app

    (tmp_path / "notes.txt").write_text("hi\n")  # torch.load: KeyError 105
    (tmp_path / "empty").mkdir()
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "foreign.pt")
    torch.save(
        {"state_dict": {"convInit.conv.weight": torch.zeros(1)}, "network": {"name": "segresnet"}}, tmp_path / "s.pt"
    )
    refusals = {
        "missing": f"{tmp_path / 'missing'} does not exist",
        "empty": f"{tmp_path / 'empty'} is not a model (expected {EXPECTED})",
        "notes.txt": f"{tmp_path / 'notes.txt'} is not a model (expected {EXPECTED}; not a PyTorch file)",
        "foreign.pt": f"no tensor of {tmp_path / 'foreign.pt'} fits this pipeline's unet (none has the same name and "
        "shape)",
        "s.pt": f"{tmp_path / 's.pt'} is a segresnet, this pipeline builds a unet",
    }
    runs = tmp_path / "out"
    for name, message in refusals.items():
        sets = [f"--set={o}" for o in _overrides(runs, dataset, f"model.init_from={tmp_path / name}")]
        result = CliRunner().invoke(app, ["run", str(PIPELINE), *sets])
        assert result.exit_code == 2, (name, result.output)
        assert result.stderr.splitlines() == [f"error: model.init_from: {message}"], name
        assert not (runs / "runs").exists(), name


def test_a_source_without_the_train_stage_is_refused() -> None:
    from medseg.config.schema import PipelineConfig

    with pytest.raises(ValueError, match="model.init_from: the weights training starts from; list the train stage"):
        PipelineConfig(name="t", stages=["predict"], model={"checkpoint": "run", "init_from": "other"})

"""``training.freeze: [encoder]``: every network family names its encoder; frozen parameters take no optimiser step,
and train again after ``training.freeze_epochs`` (a resumed run too: the state follows the epoch)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from medseg.config.loading import load_config
from medseg.config.schema import PipelineConfig
from medseg.config.settings import network_spec
from medseg.core.errors import ConfigError
from medseg.models.checkpoint import load_checkpoint
from medseg.models.registry import ENCODERS, NETWORKS, build_network, encoder_parameters
from medseg.training.callbacks import FreezeEncoder
from tests.helpers.data import tiny_overrides
from tests.helpers.paths import REPO

SMALL = {  # 2D, few channels: only which parameters are the encoder matters here
    "unet": {"channels": (4, 8, 16), "strides": (2, 2)},
    "attention_unet": {"channels": (4, 8, 16), "strides": (2, 2)},
    "dynunet": {"filters": (4, 8, 16)},
    "segresnet": {"init_filters": 8},
    "fcn8s": {"channels": (4, 4, 8, 8, 8), "head_channels": 8},
    "fcn16s": {"channels": (4, 4, 8, 8, 8), "head_channels": 8},
    "fcn32s": {"channels": (4, 4, 8, 8, 8), "head_channels": 8},
    "deeplabv3plus": {"channels": (4, 8, 8, 8), "aspp_channels": 8, "low_level_channels": 4},
    "swin_unetr": {"feature_size": 12},
    "unetr": {"img_size": (32, 32), "hidden_size": 48, "mlp_dim": 96, "num_heads": 2},
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_each_network_family_has_an_encoder_and_a_rest(name: str) -> None:
    network = build_network(name, 2, 3, 2, dict(SMALL.get(name, {})))
    encoder, total = len(encoder_parameters(name, network)), len(list(network.parameters()))
    assert 0 < encoder < total


def test_networks_without_an_encoder_are_refused() -> None:
    assert set(NETWORKS) - set(ENCODERS) == {"otsu", "watershed", "kmeans"}
    with pytest.raises(ValueError, match="training.freeze: network otsu has no encoder defined to freeze"):
        PipelineConfig(name="t", model={"name": "otsu"}, training={"freeze": ["encoder"]})
    with pytest.raises(ConfigError, match="training.freeze: network kmeans has no encoder defined to freeze"):
        encoder_parameters("kmeans", torch.nn.Identity())
    with pytest.raises(ValueError, match="freeze_epochs: set training.freeze too"):
        PipelineConfig(name="t", training={"freeze_epochs": 3})


def test_the_encoder_trains_again_after_freeze_epochs_also_when_resumed() -> None:
    network = build_network("unet", 2, 3, 1, dict(SMALL["unet"]))
    encoder = {id(p) for p in encoder_parameters("unet", network)}

    def trainable_at(callback: FreezeEncoder, epoch: int) -> tuple[bool, bool]:
        callback.on_epoch_start(SimpleNamespace(epoch=epoch, trainer=SimpleNamespace(network=network)))
        flags = {id(p): p.requires_grad for p in network.parameters()}
        return any(flags[i] for i in encoder), all(v for i, v in flags.items() if i not in encoder)

    first_two = FreezeEncoder("unet", epochs=2)
    assert [trainable_at(first_two, epoch) for epoch in (1, 2, 3)] == [(False, True), (False, True), (True, True)]
    resumed = FreezeEncoder("unet", epochs=2)  # a run resumed after epoch 1, then after epoch 2
    assert trainable_at(resumed, 2) == (False, True)
    assert trainable_at(FreezeEncoder("unet", epochs=2), 3) == (True, True)
    assert trainable_at(FreezeEncoder("unet", epochs=None), 500) == (False, True)  # the whole run


def test_a_frozen_encoder_takes_no_step(tmp_path: Path) -> None:
    """Started from known weights (a bundle folder written here), one epoch changes the decoder, not the encoder."""
    from medseg.data.synthetic import generate_dermoscopy_dataset
    from medseg.pipeline.run import run_pipeline

    data = generate_dermoscopy_dataset(tmp_path / "tiny", num_cases=12, image_size=(64, 96), seed=3)
    overrides = [*tiny_overrides(tmp_path, data), "stages=[train]", "inference.tta=false", "tracking.enabled=false"]
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", [*overrides, "training.epochs=1"])
    torch.manual_seed(0)
    start = build_network(**network_spec(cfg)).state_dict()
    (tmp_path / "bundle" / "models").mkdir(parents=True)
    torch.save(start, tmp_path / "bundle" / "models" / "model.pt")

    cfg = cfg.with_values({"model.init_from": str(tmp_path / "bundle"), "training.freeze": ["encoder"]})
    run_dir = run_pipeline(cfg, run_name="frozen").run_dir

    trained = load_checkpoint(run_dir / "model" / "last.pt")["state_dict"]
    network = build_network(**network_spec(cfg))
    names = {id(p): k for k, p in network.named_parameters()}
    encoder = {names[id(p)] for p in encoder_parameters("unet", network)}
    unchanged = {k for k in names.values() if torch.equal(trained[k], start[k])}
    assert encoder and unchanged == encoder


def test_freezing_a_random_encoder_says_so_in_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from medseg.data.synthetic import generate_dermoscopy_dataset
    from medseg.pipeline.run import run_pipeline

    data = generate_dermoscopy_dataset(tmp_path / "tiny", num_cases=12, image_size=(64, 96), seed=3)
    overrides = [*tiny_overrides(tmp_path, data), "stages=[train]", "tracking.enabled=false", "training.epochs=1"]
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", [*overrides, "training.freeze=[encoder]"])
    with caplog.at_level(logging.WARNING, logger="medseg.training.trainer"):
        run_pipeline(cfg, run_name="frozen-random")
    assert [r.getMessage() for r in caplog.records if r.name == "medseg.training.trainer"] == [
        "training.freeze without model.init_from: the frozen encoder keeps its random initialisation"
    ]

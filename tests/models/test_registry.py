"""Every registry network builds in 2D and 3D and runs forward; FCN and DeepLabV3+ on odd sizes; losses, their
weights, and the schedules."""

from __future__ import annotations

import pytest
import torch

from medseg.config.schema import PipelineConfig
from medseg.config.settings import training_settings
from medseg.core.errors import ConfigError
from medseg.models.registry import LOSSES, NETWORKS, build_loss, build_network, network_arguments

SMALL = {
    "unet": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0},
    "attention_unet": {"channels": [4, 8, 16], "strides": [2, 2]},
    "basic_unet_plus_plus": {"features": [4, 4, 8, 16, 32, 4]},
    "dynunet": {"filters": [4, 8, 16]},
    "segresnet": {"init_filters": 8},
    "fcn8s": {"channels": [4, 8, 8, 16, 16], "head_channels": 16},
    "fcn16s": {"channels": [4, 8, 8, 16, 16], "head_channels": 16},
    "fcn32s": {"channels": [4, 8, 8, 16, 16], "head_channels": 16},
    "deeplabv3plus": {"channels": [4, 8, 16, 16], "aspp_channels": 16, "low_level_channels": 8},
    "swin_unetr": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 3, 4]},
    "unetr": {"feature_size": 4, "hidden_size": 48, "mlp_dim": 96, "num_heads": 2},
    "flexible_unet": {"backbone": "efficientnet-b0", "decoder_channels": [16, 8, 8, 4, 4]},
    "segformer": {"widths": [8, 16, 40, 64], "depths": [1, 1, 1, 1], "head_width": 16},
}
TWO_D_ONLY = {"segformer"}


@pytest.mark.parametrize("name", sorted(set(NETWORKS) - {"otsu", "watershed", "kmeans"}))  # (tests/test_classical.py)
@pytest.mark.parametrize("dims", [2, 3])
def test_every_network_builds_and_runs_forward(name: str, dims: int) -> None:
    # sizes each architecture accepts: multiples of 32 (SwinUNETR in 3D: 64, its instance norm needs > 1 voxel)
    size = (64,) * dims if dims == 2 or name == "swin_unetr" else (32,) * dims
    args = dict(SMALL[name])
    if dims == 3 and name in TWO_D_ONLY:
        with pytest.raises(ConfigError, match="segformer is a 2D network"):
            build_network(name, dims, 3, 2, args)
        return
    if name == "unetr":
        args["img_size"] = list(size)
    network = build_network(name, dims, 3, 2, args).eval()
    with torch.no_grad():
        assert network(torch.randn(1, 3, *size)).shape == (1, 2, *size)


@pytest.mark.parametrize("name", ["fcn8s", "fcn16s", "fcn32s", "deeplabv3plus"])
@pytest.mark.parametrize("size", [(67, 93), (33, 41, 29)])
def test_fcn_and_deeplab_keep_odd_input_sizes(name: str, size: tuple[int, ...]) -> None:
    network = build_network(name, len(size), 1, 3, SMALL[name]).eval()
    with torch.no_grad():
        assert network(torch.randn(2, 1, *size)).shape == (2, 3, *size)


def test_the_registry_reports_the_defaults_it_filled_in() -> None:
    filled = network_arguments("deeplabv3plus", 2, 3, 1, {"aspp_channels": 64})
    assert filled == {
        "aspp_channels": 64,
        "channels": (32, 64, 128, 256),
        "rates": (6, 12, 18),
        "low_level_channels": 48,
    }
    assert network_arguments("flexible_unet", 2, 3, 1, {})["pretrained"] is False  # never downloads weights
    with pytest.raises(ConfigError, match="UNETR needs model.args.img_size"):
        build_network("unetr", 3, 1, 1, {})


def test_losses_and_their_weights() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    for name in LOSSES:
        assert torch.isfinite(build_loss(name, 1)(logits, target))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert build_loss("bce", 1)(logits, target).item() == pytest.approx(bce.item(), rel=1e-5)
    from monai.losses import DiceLoss

    dice = DiceLoss(sigmoid=True)(logits, target)
    weighted = build_loss("dice_ce", 1, weights={"dice": 2.0, "ce": 0.5})(logits, target)
    assert weighted.item() == pytest.approx(2.0 * dice.item() + 0.5 * bce.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="loss.weights.focal: dice_ce has no focal term"):
        build_loss("dice_ce", 1, weights={"focal": 1.0})
    many, classes = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 1, 8, 8)).float()
    ce = torch.nn.functional.cross_entropy(many, classes[:, 0].long())
    assert build_loss("ce", 3)(many, classes).item() == pytest.approx(ce.item(), rel=1e-5)
    assert torch.isfinite(build_loss("focal", 3)(many, classes))


def test_boundary_term_adds_the_weighted_distance_to_the_border() -> None:
    square = torch.zeros(1, 1, 32, 32)
    square[..., 8:24, 8:24] = 1.0
    right, wrong = (2 * square - 1) * 30, (1 - 2 * square) * 30  # near-certain logits, right and inverted
    plain = build_loss("dice_ce", 1)
    weighted = build_loss("dice_ce", 1, weights={"dice": 1.0, "ce": 1.0, "boundary": 0.5})
    # right: -(mean distance inside the square, 1 less at the border) over the image; by hand from the 8 rings
    rings = sum(ring * ((16 - 2 * ring) ** 2 - max(14 - 2 * ring, 0) ** 2) for ring in range(8))
    assert weighted(right, square).item() == pytest.approx(plain(right, square).item() - 0.5 * rings / 32**2, abs=1e-4)
    from scipy.ndimage import distance_transform_edt

    outside = distance_transform_edt(square[0, 0].numpy() == 0).sum() / 32**2  # inverted: all of it outside
    assert weighted(wrong, square).item() == pytest.approx(plain(wrong, square).item() + 0.5 * outside, rel=1e-4)
    classes = torch.randint(0, 3, (2, 1, 16, 16)).float()
    assert torch.isfinite(build_loss("dice_ce", 3, weights={"boundary": 0.01})(torch.randn(2, 3, 16, 16), classes))
    with pytest.raises(ConfigError, match="loss.weights.boundary: the boundary term has no ignore label"):
        build_loss("dice_ce", 1, ignore_label=255, weights={"boundary": 0.01})


def test_poly_and_plateau_schedules() -> None:
    from medseg.training.schedules import build_scheduler

    cfg = PipelineConfig(name="s", training={"epochs": 10}, schedule={"name": "poly"})
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    poly = build_scheduler(training_settings(cfg), optimizer, steps_per_epoch=10)
    for _ in range(50):
        optimizer.step()
        poly.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5**0.9)  # halfway through 100 steps
    cfg = cfg.with_values({"schedule.name": "plateau", "schedule.plateau_patience": 1})
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    plateau = build_scheduler(training_settings(cfg), optimizer, steps_per_epoch=10)
    for dice in (0.5, 0.6, 0.6, 0.6):
        plateau.step(dice)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)  # lowered once the Dice stalled


def test_flexible_unet_trained_from_scratch_still_segments_in_eval_mode() -> None:
    # MONAI's EfficientNet BatchNorm momentum (0.01) left eval mode predicting nothing after training from scratch
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")

    def blobs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        centres = torch.randint(20, 44, (n, 2))
        masks = torch.stack([((yy - cy) ** 2 + (xx - cx) ** 2 < 144).float()[None] for cy, cx in centres.tolist()])
        return (0.8 - 0.5 * masks + 0.05 * torch.randn_like(masks)).expand(-1, 3, -1, -1), masks

    network = build_network("flexible_unet", 2, 3, 1, {})
    loss_function = build_loss("dice_ce", out_channels=1)
    optimizer = torch.optim.AdamW(network.parameters(), lr=2e-3)
    for _ in range(40):
        images, masks = blobs(8)
        loss = loss_function(network.train()(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, masks = blobs(8)
    with torch.no_grad():
        predicted = (network.eval()(images) > 0).float()
    dice = 2 * (predicted * masks).sum() / (predicted.sum() + masks.sum())
    assert dice > 0.8


def test_deep_supervision_weights_each_head_and_trains_end_to_end(tmp_path, tiny_dataset) -> None:
    from medseg.config.loading import load_config
    from medseg.models.losses import StackedDeepSupervision
    from medseg.pipeline.run import run_pipeline
    from tests.helpers.data import tiny_overrides
    from tests.helpers.paths import REPO

    args = {"filters": [4, 8, 16], "deep_supervision": True, "deep_supr_num": 1}
    network = build_network("dynunet", 2, 3, 1, args).train()
    torch.manual_seed(0)
    stacked = network(torch.rand(2, 3, 32, 32))
    assert stacked.shape == (2, 2, 1, 32, 32)  # the main output and one head, both at full size
    target = (torch.rand(2, 1, 32, 32) > 0.5).float()
    plain = build_loss("dice_ce", 1)
    expected = plain(stacked[:, 0], target) + 0.5 * plain(stacked[:, 1], target)
    assert StackedDeepSupervision(plain)(stacked, target).item() == pytest.approx(expected.item(), rel=1e-5)
    assert network.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)  # inference: the main output alone
    # memory_format auto: channels-last is left out for DynUNet on CPU (it would segfault; medseg.runtime.steps)
    overrides = [*tiny_overrides(tmp_path, tiny_dataset), "training.memory_format=auto", "stages=[train, evaluate]"]
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", overrides)
    cfg = cfg.with_values({"model.name": "dynunet", "model.args": {**args, "filters": [8, 16, 32]}})
    result = run_pipeline(cfg, run_name="deep")
    import mlflow

    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_run(result.run_id).info.experiment_id
    stages = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert [run.data.params["memory_format"] for run in stages if "memory_format" in run.data.params] == ["contiguous"]
    import csv

    rows = list(csv.DictReader((result.run_dir / "evaluation" / "per_case_metrics.csv").open()))
    assert rows and all(0.0 <= float(row["dice"]) <= 1.0 for row in rows)  # trained on the stacked heads, evaluated


def test_channels_last_hazard_names_the_strided_1x1_convolution() -> None:
    from medseg.runtime.steps import channels_last_hazard

    cpu = torch.device("cpu")
    dynunet = build_network("dynunet", 2, 3, 1, {"filters": [4, 8, 16]})
    assert channels_last_hazard(dynunet, cpu) == "downsamples.0.conv3.conv is a 1x1 convolution with stride (2, 2)"
    assert channels_last_hazard(build_network("dynunet", 3, 1, 1, {"filters": [4, 8, 16]}), cpu) is None  # 3D: fine
    assert channels_last_hazard(build_network("unet", 2, 3, 1, {}), cpu) is None
    assert channels_last_hazard(dynunet, torch.device("cuda")) is None  # a CPU kernel's fault

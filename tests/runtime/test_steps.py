"""The training step in either memory format gives the same loss; ``memory_format: auto`` and ``bf16: auto`` time
the candidates on real batches and keep the fastest; a resumed run keeps the choice."""

from __future__ import annotations

import pytest
import torch

from medseg.models.registry import build_loss, build_network
from medseg.runtime.devices import precision_for
from medseg.runtime.steps import channels_last_format, fastest_step, training_step
from tests.helpers.mlflow_store import stage_run

ARGS = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_steps_match_contiguous_ones(dims: int) -> None:
    torch.manual_seed(0)
    size = (32,) * dims
    batch = {"image": torch.randn(2, 3, *size), "label": (torch.rand(2, 1, *size) > 0.5).float()}
    losses = []
    for memory_format in (None, channels_last_format(dims)):
        torch.manual_seed(1)
        network = build_network("unet", dims, 3, 1, ARGS)
        if memory_format is not None:
            network = network.to(memory_format=memory_format)
        optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
        fp32 = precision_for(torch.device("cpu"), False)
        step = [
            training_step(
                network, batch, build_loss("dice_ce", 1), optimizer, fp32, None, torch.device("cpu"), memory_format
            )
            for _ in range(2)
        ]
        losses.append(step)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_fastest_step_times_every_candidate_and_leaves_the_network_alone() -> None:
    torch.manual_seed(0)
    network = build_network("unet", 2, 3, 1, ARGS)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    batch = {"image": torch.randn(2, 3, 32, 32), "label": (torch.rand(2, 1, 32, 32) > 0.5).float()}
    fp32 = precision_for(torch.device("cpu"), False)
    candidates = [(False, fp32), (True, fp32)]
    chosen, timings = fastest_step(network, batch, build_loss("dice_ce", 1), candidates, torch.device("cpu"), rounds=2)
    assert set(timings) == {"contiguous+fp32", "channels_last+fp32"} and all(t > 0 for t in timings.values())
    assert chosen == candidates[min(range(2), key=lambda i: list(timings.values())[i])]  # the quickest step wins
    for key, value in network.state_dict().items():
        torch.testing.assert_close(value, before[key])  # trials ran on copies


@pytest.mark.slow
def test_memory_format_auto_in_a_tracked_run(tiny_dataset, tmp_path) -> None:

    from medseg.config.loading import load_config
    from medseg.pipeline.run import run_pipeline
    from tests.helpers.data import tiny_overrides
    from tests.helpers.paths import REPO

    overrides = [*tiny_overrides(tmp_path, tiny_dataset), "training.memory_format=auto", "training.epochs=1"]
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", [*overrides, "stages=[train]"])
    result = run_pipeline(cfg, run_name="auto-format")
    train = stage_run(cfg.tracking.uri, result.run_id)
    timed = {k: v for k, v in train.data.params.items() if k.startswith("step_ms.")}
    precision = train.data.params["precision"]  # bf16: true, so only the layouts are timed
    assert set(timed) == {f"step_ms.contiguous_{precision}", f"step_ms.channels_last_{precision}"}
    chosen = train.data.params[
        "memory_format"
    ]  # the fastest; the logged times are rounded to 0.1 ms, so a tie may show
    assert float(timed[f"step_ms.{chosen}_{precision}"]) == min(float(v) for v in timed.values())


@pytest.mark.slow
@pytest.mark.parametrize("native", [True, False])
def test_bf16_auto_times_fp32_against_native_bf16_only(
    tiny_dataset, tmp_path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:

    import medseg.runtime.devices
    import medseg.training.trainer
    from medseg.config.loading import load_config
    from medseg.models.checkpoint import load_checkpoint
    from medseg.pipeline.run import run_pipeline
    from tests.helpers.data import tiny_overrides
    from tests.helpers.paths import REPO

    monkeypatch.setattr(medseg.runtime.devices, "cpu_has_native_bf16", lambda: native)
    overrides = [*tiny_overrides(tmp_path, tiny_dataset), "training.bf16=auto", "training.epochs=1"]
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", [*overrides, "stages=[train]"])
    result = run_pipeline(cfg, run_name="bf16-auto")
    train = stage_run(cfg.tracking.uri, result.run_id)
    timed = {k: float(v) for k, v in train.data.params.items() if k.startswith("step_ms.")}
    saved = load_checkpoint(result.run_dir / "model" / "last.pt")["step"]
    if native:  # both timed, the quicker one trained and recorded for a resume
        assert set(timed) == {"step_ms.contiguous_fp32", "step_ms.contiguous_bf16"}
        precision = train.data.params["precision"]
        assert precision == saved["precision"] and timed[f"step_ms.contiguous_{precision}"] == min(timed.values())
    else:  # emulated bf16 is never tried
        assert timed == {} and train.data.params["precision"] == "fp32" == saved["precision"]
    assert saved["channels_last"] is False

    def no_timing(*args, **kwargs):
        raise AssertionError("a resumed run times the steps again")

    monkeypatch.setattr(medseg.training.trainer, "fastest_step", no_timing)
    resumed_cfg = load_config(result.run_dir / "config.yaml", ["training.epochs=2"])
    run_pipeline(resumed_cfg, resume_dir=result.run_dir)
    assert load_checkpoint(result.run_dir / "model" / "last.pt")["step"] == saved

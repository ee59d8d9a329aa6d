"""``medseg plan --minutes``: candidates timed on this machine, chosen by the stated rule, recorded in the YAML and the
fingerprint; plans from a 3D nnU-Net dataset and a 2D labelme set train; bad budgets are one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from medseg.cli.app import app
from medseg.config.loading import load_config
from medseg.core.errors import ConfigError
from medseg.planning.minutes import MIN_EPOCHS, MIN_SAMPLES, required_epochs, steps_per_epoch
from medseg.planning.planner import training_cases
from tests.data.test_nnunet import volumes_3d


def labelme_set(folder: Path, count: int = 8) -> Path:
    """``count`` 40x48 PNGs with a labelme polygon each (the lesion a bright rectangle)."""
    import numpy as np

    folder.mkdir(parents=True)
    for index in range(count):
        image = np.full((40, 48, 3), 60 + 10 * index, np.uint8)
        image[10:30, 12:36] = 200
        Image.fromarray(image).save(folder / f"img{index}.png")
        shape = {"label": "lesion", "points": [[12, 10], [36, 10], [36, 30], [12, 30]], "shape_type": "polygon"}
        description = {"version": "5.4.1", "flags": {}, "shapes": [{**shape, "group_id": None, "flags": {}}]}
        description |= {"imagePath": f"img{index}.png", "imageData": None, "imageHeight": 40, "imageWidth": 48}
        (folder / f"img{index}.json").write_text(json.dumps(description), encoding="utf-8")
    return folder


def plan(folder: Path, out: Path, *options: str):
    return CliRunner().invoke(app, ["plan", str(folder), "-o", str(out), *options])


def train_one_epoch(planned: Path, tmp_path: Path) -> None:
    sets = [
        "training.epochs=1",
        "training.bf16=true",  # bf16 where native, untimed (as tests/helpers/data.py tiny_overrides)
        f"output_root={tmp_path / 'runs'}",
        f"data.split.file={tmp_path / planned.stem}-splits.json",
        f"tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        "stages=[train]",
    ]
    result = CliRunner().invoke(app, ["run", str(planned), *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output


def test_the_rule_asks_every_case_seen_min_epochs_times_and_enough_steps() -> None:
    assert steps_per_epoch(2, 98, 8) == 12 and steps_per_epoch(2, 5, 8) == 1  # full batches, as the loader
    assert steps_per_epoch(3, 3, 2) == 3  # one volume a step
    assert required_epochs(2, 98) == -(-MIN_SAMPLES[2] // 98) > MIN_EPOCHS  # PH2: the images-seen floor decides
    assert required_epochs(3, 3, 2) == -(-MIN_SAMPLES[3] // 6)  # BraTS' 3 training volumes, 2 patches each
    assert required_epochs(3, 3, 1) == 2 * required_epochs(3, 3, 2)  # one patch fewer a volume buys nothing
    assert required_epochs(2, 10_000) == MIN_EPOCHS  # a large dataset: each case seen MIN_EPOCHS times


def modelled_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step seconds from a cost model instead of the clock: pixels x batch x first width (1e-8 s a unit)."""

    def fake(cfg, size, batch, device, give_up_after=None):
        width = cfg.model.args["channels"][0]
        return 0.0, [1e-8 * size[0] * size[1] * batch * width]

    monkeypatch.setattr("medseg.planning.minutes.time_training_step", fake)


@pytest.mark.parametrize(
    ("minutes", "chosen"),
    [
        (60.0, "unet 32-320 (6 levels) 256x256 batch 8"),  # everything fits: the largest input, the widest
        (9.0, "unet 16-320 (6 levels) 256x256 batch 8"),  # the full input, with the widest network that fits
        (3.0, "unet 8-256 (6 levels) 192x192 batch 8"),  # no network fits the full input: a smaller one
    ],
)
def test_the_rule_takes_the_largest_input_then_the_largest_network(
    monkeypatch: pytest.MonkeyPatch, minutes: float, chosen: str
) -> None:
    from medseg.config.schema import PipelineConfig
    from medseg.planning.minutes import MinutesSearch

    modelled_steps(monkeypatch)
    base = PipelineConfig(name="t", preprocessing={"spatial_size": [256, 256]}, training={"batch_size": 8})
    assert MinutesSearch(base, minutes, "cpu", 98).choose().label == chosen


def test_the_cheapest_candidate_when_none_leaves_the_rules_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg.config.schema import PipelineConfig
    from medseg.planning.minutes import MinutesSearch

    modelled_steps(monkeypatch)
    base = PipelineConfig(name="t", preprocessing={"spatial_size": [256, 256]}, training={"batch_size": 8})
    cheapest = MinutesSearch(base, 0.1, "cpu", 98).choose()  # 6 s: 38 epochs of the cheapest, 300 asked
    assert cheapest.label == "unet 8-128 (5 levels) 128x128 batch 8" and not cheapest.fits
    with pytest.raises(ConfigError, match=r"^--minutes 0.001: too short for one epoch of the smallest candidate"):
        MinutesSearch(base, 0.001, "cpu", 98).choose()
    assert training_cases(150, 0.15, 0.2) == 98 and training_cases(6, 0.2, 0.2) == 4  # as make_splits cuts


@pytest.mark.slow
def test_plans_for_minutes_from_nnunet_and_labelme_record_their_timing_and_train(tmp_path: Path) -> None:
    for folder, out in (
        (volumes_3d(tmp_path / "Dataset001_Tumour"), tmp_path / "nnunet.yaml"),
        (labelme_set(tmp_path / "labelme"), tmp_path / "labelme.yaml"),
    ):
        result = plan(folder, out, "--minutes", "1")
        assert result.exit_code == 0, result.output
        assert "timed " in result.output and "chose " in result.output  # how long the search took, said
        cfg = load_config(out)
        assert cfg.training.max_minutes == 1 and cfg.schedule.length == "max_minutes"
        assert cfg.training.keep == "final" and cfg.training.early_stopping_patience is None
        assert cfg.inference.tta is (cfg.spatial_dims == 2)
        timing = json.loads(out.with_name(f"{out.stem}.fingerprint.json").read_text(encoding="utf-8"))["timing"]
        assert timing["machine"] and timing["search_seconds"] > 0 and timing["threads"] >= 1
        chosen = next(c for c in timing["candidates"] if c["label"] == timing["chosen"])
        assert chosen["model_args"] == cfg.model.args and chosen["warmup_seconds"] > 0
        assert chosen["fits"] or "epochs fit 1 min, the rule asks" in result.output  # a loaded CPU: said
        text = out.read_text(encoding="utf-8")
        assert f"on {timing['machine']}" in text and text.count("# candidate: ") == len(timing["candidates"])
        assert "<- chosen" in text
        train_one_epoch(out, tmp_path)
    assert load_config(tmp_path / "nnunet.yaml").model.name == "unet"  # the minutes plan: MONAI UNet in 3D too
    assert load_config(tmp_path / "labelme.yaml").data.layout == "labelme"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--minutes", "0"], "--minutes 0: expected a positive number of minutes"),
        (["--minutes", "-3"], "--minutes -3: expected a positive number of minutes"),
        (["--minutes", "0.000001"], "--minutes 1e-06: too short for one epoch of the smallest candidate (unet "),
    ],
)
def test_a_budget_too_small_is_one_line_exit_2(tmp_path: Path, options: list[str], message: str) -> None:
    result = plan(labelme_set(tmp_path / "labelme"), tmp_path / "p.yaml", *options)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len([line for line in result.stderr.splitlines() if " INFO " not in line]) == 1  # one line, and the log
    assert "positive" in message or " s an epoch measured)" in result.stderr  # the smallest epoch time, said


def test_plan_without_minutes_times_nothing(tmp_path: Path) -> None:
    result = plan(labelme_set(tmp_path / "labelme"), tmp_path / "p.yaml")
    assert result.exit_code == 0, result.output
    cfg = load_config(tmp_path / "p.yaml")
    assert cfg.training.max_minutes is None and "# candidate" not in (tmp_path / "p.yaml").read_text(encoding="utf-8")
    assert json.loads((tmp_path / "p.fingerprint.json").read_text(encoding="utf-8"))["timing"] == {}

"""Behavioural tests for pipeline configuration loading (medseg.config.schema)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medseg.config.loading import load_config, parse_override
from medseg.config.schema import DATA_ROOT_ENV, PipelineConfig
from medseg.config.settings import data_settings
from medseg.core.errors import ConfigError, MedsegError
from tests.helpers.paths import REPO

PIPELINES = sorted((REPO / "pipelines").glob("*.yaml")) + sorted((REPO / "pipelines").glob("*.yml"))


@pytest.fixture(autouse=True)
def _no_data_root_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not depend on the caller's $MEDSEG_DATA_ROOT."""
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message, "ConfigError messages are one line"
    return message


def source_of(message: str) -> Path:
    """The file a message blames: the text before the first ': '."""
    return Path(message.split(": ", 1)[0]).resolve()


# --------------------------------------------------------------------------------------------------
# Defaults and a valid file
# --------------------------------------------------------------------------------------------------


def test_minimal_file_gets_defaults_and_name_from_file_stem(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "my-pipe.yaml", "training:\n  epochs: 3\n"))
    assert isinstance(cfg, PipelineConfig)
    assert cfg.name == "my-pipe"
    assert cfg.training.epochs == 3
    assert cfg.training.batch_size == 8
    assert cfg.stages == ["train", "postprocess", "evaluate", "predict"]
    assert cfg.model.name == "unet"
    assert cfg.data.root is None


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "empty.yaml", ""))
    assert cfg.name == "empty"
    assert cfg.training.epochs == 40
    assert cfg.seed == 42


def test_stages_are_put_in_pipeline_order(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "p.yaml", "stages: [predict, train]\n"))
    assert cfg.stages == ["train", "postprocess", "predict"]  # a trained model's post-processing is decided with it


def test_postprocess_is_a_stage_of_the_model_this_run_trains(tmp_path: Path) -> None:
    written = write(tmp_path / "p.yaml", "stages: [postprocess, evaluate]\nmodel: {checkpoint: m.pt}\n")
    assert "postprocess chooses the steps for the model this run trains; list train too" in config_error(written)
    explicit = load_config(write(tmp_path / "q.yaml", "stages: [train, postprocess]\n"))
    assert explicit.stages == ["train", "postprocess"]


def test_model_name_is_case_insensitive(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "p.yaml", "model:\n  name: UNet\n"))
    assert cfg.model.name == "unet"


# --------------------------------------------------------------------------------------------------
# Schema errors: unknown keys, wrong types, bad values
# --------------------------------------------------------------------------------------------------


def test_unknown_key_names_file_dotted_key_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "training:\n  epoch: 3\n")
    assert config_error(path) == f"{path}: training.epoch: unknown key; did you mean 'epochs'?"


def test_unknown_top_level_key_suggests_section(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "trainig:\n  epochs: 3\n")
    assert config_error(path) == f"{path}: trainig: unknown key; did you mean 'training'?"


def test_unknown_deeply_nested_key_suggests_sibling(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "data:\n  split:\n    sed: 1\n")
    assert config_error(path) == f"{path}: data.split.sed: unknown key; did you mean 'seed'?"


def test_unknown_key_without_close_match_lists_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "optimizer:\n  zzz: 1\n")
    assert config_error(path) == f"{path}: optimizer.zzz: unknown key; allowed keys: name, lr, weight_decay"


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "training:\n  epochs: abc\n")
    message = config_error(path)
    assert message.startswith(f"{path}: training.epochs: Input should be a valid integer")
    assert message.endswith("(got 'abc')")


def test_negative_epochs_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "training:\n  epochs: -1\n")
    assert config_error(path) == f"{path}: training.epochs: Input should be greater than 0 (got -1)"


def test_probability_above_one_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "augmentation:\n  flip_prob: 1.5\n")
    assert config_error(path) == f"{path}: augmentation.flip_prob: Input should be less than or equal to 1 (got 1.5)"


def test_unknown_model_name_lists_choices(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "model:\n  name: resnet\n")
    assert config_error(path) == (
        f"{path}: model.name: unknown network 'resnet'; choose one of "
        "attention_unet, basic_unet_plus_plus, deeplabv3plus, dynunet, fcn16s, fcn32s, fcn8s, flexible_unet, kmeans, "
        "otsu, segformer, segresnet, swin_unetr, unet, unetr, watershed (got 'resnet')"
    )


def test_unknown_loss_name_lists_choices(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "loss:\n  name: hinge\n")
    assert config_error(path) == (
        f"{path}: loss.name: unknown loss 'hinge'; choose one of bce, ce, dice, dice_ce, dice_focal, focal, tversky "
        "(got 'hinge')"
    )


def test_unknown_stage_names_list_index(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "stages: [train, foo]\n")
    expected = "Input should be 'train', 'postprocess', 'evaluate' or 'predict' (got 'foo')"
    assert config_error(path) == f"{path}: stages.1: {expected}"


def test_duplicate_stage_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "stages: [train, train]\n")
    assert config_error(path) == f"{path}: stages: a stage is listed twice (got ['train', 'train'])"


def test_split_fractions_must_leave_training_cases(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "data:\n  split:\n    val_fraction: 0.5\n    test_fraction: 0.4\n")
    assert config_error(path) == (
        f"{path}: data.split: val_fraction + test_fraction must be below 0.9 to leave cases for training"
    )


def test_invalid_pipeline_name_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "name: 'has space'\n")
    message = config_error(path)
    assert message.startswith(f"{path}: name: String should match pattern")
    assert message.endswith("(got 'has space')")


def test_union_field_error_names_the_real_key(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "training:\n  bf16: maybe\n")
    message = config_error(path)
    assert message.startswith(f"{path}: training.bf16: ")
    assert "training.bf16.bool" not in message
    assert "valid boolean" in message and "'auto'" in message  # both alternatives of the union are named


def test_stages_without_train_need_a_checkpoint(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "stages: [evaluate, predict]\n")
    message = config_error(path)
    assert message.startswith(f"{path}: ")
    assert "without the train stage, set model.checkpoint" in message


def test_stages_without_train_accepted_with_checkpoint(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "stages: [predict]\nmodel:\n  checkpoint: runs/x/model.pt\n")
    cfg = load_config(path)
    assert cfg.stages == ["predict"]
    assert cfg.model.checkpoint == Path("runs/x/model.pt")


def test_config_error_is_a_medseg_error_with_exit_code_2(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "training:\n  epoch: 3\n")
    with pytest.raises(MedsegError) as info:
        load_config(path)
    assert isinstance(info.value, ConfigError)
    assert info.value.exit_code == 2


# --------------------------------------------------------------------------------------------------
# Reading files: YAML syntax, top-level type, missing files
# --------------------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "training:\n  epochs: 3\n batch_size: 4\n")
    message = config_error(path)
    assert message.startswith(f"{path}: line 3, column 2: invalid YAML: ")


def test_top_level_list_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "- training\n- data\n")
    assert config_error(path) == f"{path}: expected a mapping of sections at the top level, got list"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert config_error(path) == f"{path}: file not found"


def test_folder_instead_of_file(tmp_path: Path) -> None:
    assert config_error(tmp_path) == f"{tmp_path}: is a folder; expected a pipeline YAML file"


# --------------------------------------------------------------------------------------------------
# extends: presets
# --------------------------------------------------------------------------------------------------


def test_extends_merges_preset_and_file_overrides_it(tmp_path: Path) -> None:
    write(
        tmp_path / "configs" / "base.yaml",
        "training:\n  epochs: 7\n  batch_size: 2\noptimizer:\n  lr: 0.1\nmodel:\n  args:\n    num_res_units: 1\n",
    )
    path = write(
        tmp_path / "pipelines" / "p.yaml",
        "extends: ../configs/base.yaml\ntraining:\n  batch_size: 4\nmodel:\n  args:\n    channels: [8, 16]\n",
    )
    cfg = load_config(path)
    assert cfg.training.epochs == 7  # from the preset
    assert cfg.training.batch_size == 4  # the file wins
    assert cfg.optimizer.lr == 0.1
    assert cfg.model.args == {"num_res_units": 1, "channels": [8, 16]}  # mappings merge deeply


def test_extends_list_later_preset_wins(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "training:\n  epochs: 5\n  batch_size: 3\n")
    write(tmp_path / "b.yaml", "training:\n  epochs: 6\n")
    cfg = load_config(write(tmp_path / "p.yaml", "extends: [a.yaml, b.yaml]\n"))
    assert (cfg.training.epochs, cfg.training.batch_size) == (6, 3)


def test_nested_presets_merge(tmp_path: Path) -> None:
    write(tmp_path / "c.yaml", "training:\n  epochs: 7\n  batch_size: 2\n")
    write(tmp_path / "b.yaml", "extends: c.yaml\noptimizer:\n  lr: 0.1\n")
    cfg = load_config(write(tmp_path / "a.yaml", "extends: b.yaml\ntraining:\n  batch_size: 4\n"))
    assert (cfg.training.epochs, cfg.training.batch_size, cfg.optimizer.lr) == (7, 4, 0.1)


def test_error_inside_preset_names_the_preset(tmp_path: Path) -> None:
    base = write(tmp_path / "configs" / "base.yaml", "training:\n  epoch: 3\n")
    path = write(tmp_path / "pipelines" / "p.yaml", "extends: ../configs/base.yaml\nname: p\n")
    message = config_error(path)
    assert source_of(message) == base.resolve()
    assert message.endswith(": training.epoch: unknown key; did you mean 'epochs'?")


def test_bad_value_inside_preset_names_the_preset_not_the_file(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", "augmentation:\n  flip_prob: 1.5\n")
    path = write(tmp_path / "p.yaml", "extends: base.yaml\ntraining:\n  epochs: 3\n")
    message = config_error(path)
    assert source_of(message) == base.resolve()
    assert "augmentation.flip_prob" in message


def test_value_overridden_by_file_is_blamed_on_the_file(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "training:\n  epochs: 3\n")
    path = write(tmp_path / "p.yaml", "extends: base.yaml\ntraining:\n  epochs: 0\n")
    assert config_error(path) == f"{path}: training.epochs: Input should be greater than 0 (got 0)"


def test_error_inside_nested_preset_names_the_innermost_preset(tmp_path: Path) -> None:
    inner = write(tmp_path / "c.yaml", "training:\n  epoch: 3\n")
    write(tmp_path / "b.yaml", "extends: c.yaml\noptimizer:\n  lr: 0.1\n")
    path = write(tmp_path / "a.yaml", "extends: b.yaml\n")
    assert source_of(config_error(path)) == inner.resolve()


def test_missing_preset(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "extends: nope.yaml\n")
    assert config_error(path) == f"{path}: extends: preset {tmp_path / 'nope.yaml'} not found"


def test_extends_must_be_path_or_list_of_paths(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "extends: {a: 1}\n")
    assert config_error(path) == f"{path}: extends: expected a preset path or a list of paths"


def test_extends_cycle_detected(tmp_path: Path) -> None:
    write(tmp_path / "x.yaml", "extends: y.yaml\n")
    write(tmp_path / "y.yaml", "extends: x.yaml\n")
    message = config_error(tmp_path / "x.yaml")
    assert "extends itself in a cycle" in message
    x, y = (tmp_path / "x.yaml").resolve(), (tmp_path / "y.yaml").resolve()
    assert message.endswith(f"({x} -> {y} -> {x})")


def test_self_extends_detected(tmp_path: Path) -> None:
    path = write(tmp_path / "x.yaml", "extends: x.yaml\n")
    resolved = path.resolve()
    assert config_error(path) == f"{path}: extends itself in a cycle ({resolved} -> {resolved})"


def test_diamond_extends_is_not_a_cycle(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "training:\n  epochs: 9\n")
    write(tmp_path / "l.yaml", "extends: base.yaml\n")
    write(tmp_path / "r.yaml", "extends: base.yaml\n")
    cfg = load_config(write(tmp_path / "p.yaml", "extends: [l.yaml, r.yaml]\n"))
    assert cfg.training.epochs == 9


# --------------------------------------------------------------------------------------------------
# --set overrides
# --------------------------------------------------------------------------------------------------


def test_overrides_are_typed(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "training:\n  epochs: 3\n")
    cfg = load_config(
        path,
        [
            "training.epochs=5",
            "training.bf16=false",
            "model.args.channels=[8, 16]",
            "augmentation.flip_prob=0.25",
            "training.max_minutes=null",
            "data.mask_suffixes=[_m]",
        ],
    )
    assert cfg.training.epochs == 5 and isinstance(cfg.training.epochs, int)
    assert cfg.training.bf16 is False
    assert cfg.model.args == {"channels": [8, 16]}
    assert cfg.augmentation.flip_prob == 0.25
    assert cfg.training.max_minutes is None
    assert cfg.data.mask_suffixes == ["_m"]


def test_override_beats_file_and_preset_and_last_override_wins(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "training:\n  epochs: 7\n  batch_size: 2\n")
    path = write(tmp_path / "p.yaml", "extends: base.yaml\ntraining:\n  epochs: 3\n")
    cfg = load_config(path, ["training.epochs=11", "training.epochs=12"])
    assert (cfg.training.epochs, cfg.training.batch_size) == (12, 2)


def test_override_value_may_contain_equals(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "p.yaml", ""), ["description=a=b"])
    assert cfg.description == "a=b"


def test_bad_override_value_names_the_override(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "training:\n  epochs: 3\n")
    message = config_error(path, ["training.epochs=abc"])
    assert message.startswith("--set training.epochs=abc: training.epochs: Input should be a valid integer")
    assert message.endswith("(got 'abc')")


def test_unknown_override_key_names_the_override(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "")
    assert config_error(path, ["training.epoch=3"]) == (
        "--set training.epoch=3: training.epoch: unknown key; did you mean 'epochs'?"
    )


@pytest.mark.parametrize("text", ["training.epochs", "=5", "training..epochs=5", ".epochs=5"])
def test_malformed_override(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "p.yaml", "")
    assert config_error(path, [text]) == f"--set {text}: expected key.path=value, e.g. training.epochs=5"


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("a.b=3") == (("a", "b"), 3)
    assert parse_override("a=true") == (("a",), True)
    assert parse_override("a=[1, 2]") == (("a",), [1, 2])
    assert parse_override("a=") == (("a",), None)
    assert parse_override(" a.b =x") == (("a", "b"), "x")
    assert parse_override("a=[1, 2") == (("a",), "[1, 2")  # unparseable YAML stays a string


# --------------------------------------------------------------------------------------------------
# $MEDSEG_DATA_ROOT
# --------------------------------------------------------------------------------------------------


def test_data_root_env_fills_unset_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "data"))
    cfg = load_config(write(tmp_path / "p.yaml", ""))
    assert cfg.data.root == tmp_path / "data"


def test_data_root_env_does_not_replace_configured_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "env"))
    cfg = load_config(write(tmp_path / "p.yaml", f"data:\n  root: {tmp_path / 'file'}\n"))
    assert cfg.data.root == tmp_path / "file"
    cfg = load_config(tmp_path / "p.yaml", [f"data.root={tmp_path / 'set'}"])
    assert cfg.data.root == tmp_path / "set"


def test_empty_data_root_env_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, "")
    assert load_config(write(tmp_path / "p.yaml", "")).data.root is None


def test_data_root_unset_without_env(tmp_path: Path) -> None:
    assert load_config(write(tmp_path / "p.yaml", "")).data.root is None


# --------------------------------------------------------------------------------------------------
# Round trip and the shipped pipelines
# --------------------------------------------------------------------------------------------------


def test_to_yaml_round_trips_through_load_config(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "training:\n  epochs: 3\n  max_minutes: 2.5\n")
    cfg = load_config(
        path,
        [
            f"data.root={tmp_path / 'data'}",
            "data.synthetic.image_size=[32, 48]",
            "augmentation.contrast_gamma=[0.9, 1.1]",
            "stages=[predict, train]",
            "model.checkpoint=runs/m.pt",
            "model.args.channels=[8, 16]",
        ],
    )
    text = cfg.to_yaml()
    assert yaml.safe_load(text) == cfg.to_dict()
    again = load_config(write(tmp_path / "dumped.yaml", text))
    assert again == cfg
    assert again.to_yaml() == text
    assert again.name == "p"
    assert again.data.synthetic.image_size == (32, 48)
    assert again.stages == ["train", "postprocess", "predict"]


def test_pipelines_folder_is_not_empty() -> None:
    assert PIPELINES, f"no pipeline YAML files in {REPO / 'pipelines'}"


@pytest.mark.parametrize("pipeline", PIPELINES, ids=[p.name for p in PIPELINES])
def test_every_shipped_pipeline_loads_and_builds(pipeline: Path, tmp_path: Path) -> None:
    from medseg.models.registry import build_loss, build_network

    cfg = load_config(pipeline)
    assert cfg.name
    import torch

    from medseg.config.settings import transform_settings
    from medseg.transforms import inference_transforms, train_transforms, validation_transforms

    net = build_network(cfg.model.name, cfg.spatial_dims, cfg.model.in_channels, cfg.model.out_channels, cfg.model.args)
    loss = build_loss(cfg.loss.name, cfg.model.out_channels, cfg.loss.args)
    batch = torch.rand(1, cfg.model.in_channels, *([32] * cfg.spatial_dims))
    with torch.no_grad():
        logits = net.eval()(batch)
    assert tuple(logits.shape) == (1, cfg.model.out_channels, *([32] * cfg.spatial_dims))
    target = torch.zeros(1, 1, *([32] * cfg.spatial_dims))
    assert float(loss(logits, target)) >= 0.0
    for build in (train_transforms, validation_transforms, inference_transforms):
        assert build(transform_settings(cfg)).transforms
    again = load_config(write(tmp_path / "dumped.yaml", cfg.to_yaml()))
    assert again == cfg


def test_skin_lesion_pipeline_values() -> None:
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml")
    assert cfg.name == "skin_lesion"
    assert cfg.training.epochs == 654 and cfg.training.max_minutes == 10  # the pipeline overrides the preset
    assert cfg.training.early_stopping_patience is None and cfg.inference.tta
    assert cfg.training.batch_size == 8  # from configs/dermoscopy_2d.yaml
    assert cfg.optimizer.lr == 0.002
    assert cfg.model.args["channels"] == [8, 16, 32, 64, 128, 256]  # the plan's, over the preset's 16-256
    assert cfg.model.args["strides"] == [2, 2, 2, 2, 2] and cfg.preprocessing.spatial_size == (224, 288)
    assert cfg.model.args["num_res_units"] == 2  # from the preset
    assert cfg.data.layout == "folder"
    assert cfg.data.dataset_dir == "ph2"


def test_a_validated_config_cannot_change_and_resolved_values_make_a_new_one() -> None:
    import pydantic

    cfg = PipelineConfig(name="frozen")
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.training.epochs = 3
    resolved = cfg.with_values({"training.epochs": 3, "preprocessing.spacing": (1.0, 1.0, 2.5)})
    assert (resolved.training.epochs, resolved.preprocessing.spacing) == (3, (1.0, 1.0, 2.5))
    assert (cfg.training.epochs, cfg.preprocessing.spacing) == (40, None)
    with pytest.raises(pydantic.ValidationError):
        cfg.with_values({"training.epochs": 0})
    assert cfg.loss.weights is None  # a key under an unset mapping starts it
    assert cfg.with_values({"loss.weights.boundary": 0.01}).loss.weights == {"boundary": 0.01}


def test_prepare_data_returns_what_it_resolved_without_changing_the_config(tmp_path: Path) -> None:
    from medseg.data.dataset import prepare_data

    cfg = PipelineConfig(
        name="demo",
        training={"epochs": 40},
        data={"synthetic": {"num_cases": 8, "image_size": [32, 48], "cache_dir": tmp_path, "epochs": 2}},
    ).with_values({"data.split.file": str(tmp_path / "splits.json")})
    data = prepare_data(data_settings(cfg))
    assert data.synthetic and data.resolved == {"training.epochs": 2}
    assert cfg.training.epochs == 40


def test_an_empty_mapping_override_clears_the_mapping(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "model:\n  args: {channels: [8, 16], strides: [2]}\n")
    assert load_config(path, ["model.args={}"]).model.args == {}
    assert load_config(path, ["model.args={num_res_units: 1}"]).model.args == {
        "channels": [8, 16],
        "strides": [2],
        "num_res_units": 1,
    }, "a non-empty mapping still merges"


# --------------------------------------------------------------------------------------------------
# model.args belong to model.name
# --------------------------------------------------------------------------------------------------


def test_a_layer_that_names_another_network_drops_the_earlier_arguments(tmp_path: Path) -> None:
    preset = write(tmp_path / "preset.yaml", "model: {name: unet, args: {channels: [8, 16], num_res_units: 1}}\n")
    same = write(tmp_path / "same.yaml", f"extends: {preset.name}\nmodel: {{args: {{channels: [4, 8]}}}}\n")
    other = write(
        tmp_path / "other.yaml", f"extends: {preset.name}\nmodel: {{name: fcn8s, args: {{head_channels: 8}}}}\n"
    )
    assert load_config(same).model.args == {"channels": [4, 8], "num_res_units": 1}  # the same network: merged
    assert load_config(other).model.args == {"head_channels": 8}
    assert load_config(same, ["model.name=UNet"]).model.args == {"channels": [4, 8], "num_res_units": 1}
    assert load_config(same, ["model.name=dynunet"]).model.args == {}
    assert load_config(same, ["model.name=dynunet", "model.args.filters=[8, 16]"]).model.args == {"filters": [8, 16]}


def test_an_unset_name_is_the_default_network(tmp_path: Path) -> None:
    preset = write(tmp_path / "p.yaml", "model: {args: {channels: [8, 16]}}\n")
    assert load_config(preset, ["model.name=fcn8s"]).model.args == {}
    assert load_config(preset, ["model.name=unet"]).model.args == {"channels": [8, 16]}


def test_with_values_drops_the_arguments_of_a_renamed_network(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "p.yaml", "model: {args: {channels: [8, 16]}}\n"))
    assert cfg.with_values({"model.name": "fcn8s"}).model.args == {}
    assert cfg.with_values({"model.name": "fcn8s", "model.args": {"head_channels": 8}}).model.args == {
        "head_channels": 8
    }
    assert cfg.with_values({"training.epochs": 3}).model.args == {"channels": [8, 16]}

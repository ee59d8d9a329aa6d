"""Named labels, region-based labels, the ignore label: configuration errors, painting and decoding regions, the
masked loss, the entropy map, and the label description files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medseg.config.loading import load_config
from medseg.config.schema import PipelineConfig
from medseg.config.settings import label_scheme
from medseg.core.errors import ConfigError
from medseg.infer.uncertainty import entropy_summary, predictive_entropy
from medseg.transforms.labels import RemapLabels
from tests.helpers.paths import REPO

BRATS_LABELS = {1: "necrosis", 2: "edema", 3: "non_enhancing", 4: "enhancing"}
BRATS_REGIONS = {
    "whole_tumor": ["necrosis", "edema", "non_enhancing", "enhancing"],
    "tumor_core": [1, 3, 4],
    "enhancing_tumor": ["enhancing"],
}


def regions_config(**data: object) -> PipelineConfig:
    return PipelineConfig(
        name="regions",
        spatial_dims=3,
        model={"in_channels": 2, "out_channels": 3},
        data={"labels": BRATS_LABELS, "regions": BRATS_REGIONS, **data},
    )


def config_error(tmp_path, text: str) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_brats_regions_paint_whole_tumour_as_edema_core_as_necrosis_enhancing_last() -> None:
    cfg = regions_config(region_order=["whole_tumor", "tumor_core", "enhancing_tumor"])
    assert label_scheme(cfg).paint_order() == [(0, 2), (1, 1), (2, 4)]
    assert [label.name for label in label_scheme(cfg).output_labels()] == ["necrosis", "edema", "enhancing"]
    assert label_scheme(cfg).channel_names() == ["whole_tumor", "tumor_core", "enhancing_tumor"]
    assert [(s.name, s.values) for s in label_scheme(cfg).structures()] == [
        ("whole_tumor", (1, 2, 3, 4)),
        ("tumor_core", (1, 3, 4)),
        ("enhancing_tumor", (4,)),
    ]
    # nested probabilities: WT everywhere in the middle, TC in a part of it, ET in a part of that
    probs = np.zeros((3, 6, 1, 1), np.float32)
    probs[0, 1:5] = 0.9
    probs[1, 2:4] = 0.8
    probs[2, 3] = 0.7
    painted = label_scheme(cfg).discretise(probs)
    assert painted[:, 0, 0].tolist() == [0, 2, 1, 4, 2, 0]
    masks = label_scheme(cfg).structure_masks(painted)  # decoding the painted map gives the regions back
    for channel, name in enumerate(["whole_tumor", "tumor_core", "enhancing_tumor"]):
        np.testing.assert_array_equal(masks[name], probs[channel] > 0.5)


def test_region_targets_are_one_channel_per_region_and_the_ignore_label_survives() -> None:
    raw = torch.tensor([[0, 1, 2, 3, 4, 255]])
    targets = RemapLabels(regions=[(1, 2, 3, 4), (1, 3, 4), (4,)], ignore=255)(raw)
    assert targets.shape == (3, 6)
    assert targets[:, :5].tolist() == [[0, 1, 1, 1, 1], [0, 1, 0, 1, 1], [0, 0, 0, 0, 1]]
    assert targets[:, 5].tolist() == [255, 255, 255]
    classes = RemapLabels(mapping={1: 1, 2: 2}, ignore=255)(raw)
    assert classes.tolist() == [[0, 1, 2, 0, 0, 255]]
    binary = RemapLabels(ignore=255)(raw)
    assert binary.tolist() == [[0, 1, 1, 1, 1, 255]]


def test_label_mistakes_are_all_named_at_once(tmp_path) -> None:
    message = config_error(
        tmp_path,
        """
name: p
spatial_dims: 3
model: {in_channels: 2, out_channels: 2}
data:
  labels: {1: necrosis, 2: edema, 4: enhancing}
  regions: {whole_tumor: [necrosis, edema, enhancing], core: [necrosis, tumour]}
""",
    )
    assert "data.regions.core: unknown label name 'tumour'; data.labels names: edema, enhancing, necrosis" in message
    assert "model.out_channels is 2 but data.regions lists 2 regions" not in message
    assert "data.region_order: regions whole_tumor and core overlap" in message
    assert "region_order: [whole_tumor, core]" in message
    assert message.startswith(str(tmp_path / "p.yaml"))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("labels: {1: {name: liver, color: [300, 0, 0]}}", "a colour is three integers 0-255, e.g. [220, 80, 60]"),
        ("labels: {1: {name: liver, color: [1, 2]}}", "a colour is three integers 0-255"),
        ("labels: {1: {color: [1, 2, 3]}}", "data.labels.1.name: Field required"),
        ("labels: {1: liver, 2: spleen}", "data.labels: 2 not a class of this model (classes 1..1"),
        ("labels: {1: liver}\n  regions: {a: [liver], b: [2]}", "model.out_channels is 1 but data.regions lists 2"),
        ("labels: {1: {name: liver, code: 10200004}}", "data.labels.1.code: String should match pattern"),
        ("region_order: [a]", "data.region_order: set data.regions too"),
    ],
)
def test_bad_labels_get_one_line_naming_the_key(tmp_path, data: str, expected: str) -> None:
    text = f"name: p\nspatial_dims: 3\nmodel: {{in_channels: 1}}\ndata:\n  {data}\n"
    assert expected in config_error(tmp_path, text)


def test_out_channels_must_match_the_regions(tmp_path) -> None:
    text = "name: p\nspatial_dims: 3\nmodel: {in_channels: 1, out_channels: 2}\n"
    text += "data:\n  regions: {a: [1], b: [2], c: [3]}\n"
    assert "model.out_channels is 2 but data.regions lists 3 regions (one sigmoid channel per region)" in config_error(
        tmp_path, text
    )


def test_a_region_covered_by_later_ones_is_refused() -> None:
    with pytest.raises(ValueError, match="region whole is covered by later regions"):
        regions_config(
            regions={"whole": [1, 2], "one": [1], "two": [2]},
            region_order=["whole", "one", "two"],
            labels=None,
        )


def test_shipped_pipelines_name_their_labels() -> None:
    for name, expected in [
        ("skin_lesion.yaml", ["lesion"]),
        ("ct_liver.yaml", ["liver"]),
        ("brain_tumor_mri.yaml", ["whole_tumor"]),
        ("brain_tumor_regions.yaml", ["necrosis", "edema", "enhancing"]),
    ]:
        cfg = load_config(REPO / "pipelines" / name)
        assert [label.name for label in label_scheme(cfg).output_labels()] == expected, name
    regions = load_config(REPO / "pipelines" / "brain_tumor_regions.yaml")
    assert [s.key for s in label_scheme(regions).structures()] == ["whole_tumor", "tumor_core", "enhancing_tumor"]


def test_label_description_files() -> None:
    cfg = PipelineConfig(
        name="liver",
        spatial_dims=3,
        model={"in_channels": 1, "out_channels": 3},
        data={
            "label_mapping": {5: 1, 1: 2},
            "labels": {1: {"name": "liver", "color": [220, 80, 60], "code": "SCT:10200004"}, 2: "spleen"},
        },
    )
    document = label_scheme(cfg).document()
    assert document["labels"][0] == {"value": 1, "name": "liver", "color": [220, 80, 60], "code": "SCT:10200004"}
    assert document["labels"][1]["name"] == "spleen" and len(document["labels"][1]["color"]) == 3
    json.dumps(document)
    lines = label_scheme(cfg).itksnap_text().splitlines()
    assert lines[-2].split()[:7] == ["1", "220", "80", "60", "1", "1", "1"] and lines[-2].endswith('"liver"')
    assert lines[-1].endswith('"spleen"') and '"Clear Label"' in lines[-3]


def test_mean_dice_leaves_out_the_ignore_label() -> None:
    cfg = PipelineConfig(name="ign", spatial_dims=3, model={"in_channels": 1}, data={"ignore_label": 255})
    truth = np.array([0, 1, 1, 255, 255, 0])
    assert label_scheme(cfg).mean_dice(np.array([0, 1, 1, 1, 1, 0]), truth) == pytest.approx(
        1.0
    )  # the extra voxels are unlabelled
    assert label_scheme(cfg).mean_dice(np.array([0, 1, 0, 0, 0, 0]), truth) == pytest.approx(2 / 3)


def test_masked_loss_ignores_unannotated_voxels_and_equals_dice_ce_without_them() -> None:
    from monai.losses import DiceCELoss

    from medseg.models.registry import build_loss

    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 6, 6, 6), torch.randint(0, 3, (2, 1, 6, 6, 6)).float()
    plain = DiceCELoss(softmax=True, to_onehot_y=True)(logits, target)
    masked = build_loss("dice_ce", 3, ignore_label=255)
    assert masked(logits, target).item() == pytest.approx(plain.item(), rel=1e-5)
    partial = target.clone()
    partial[:, :, :3] = 255
    scrambled = logits.clone()
    scrambled[:, :, :3] = 50 * torch.randn_like(scrambled[:, :, :3])
    assert masked(scrambled, partial).item() == pytest.approx(masked(logits, partial).item(), rel=1e-6)
    with pytest.raises(ConfigError, match="data.ignore_label needs loss dice_ce"):
        build_loss("tversky", 3, ignore_label=255)


def test_region_loss_is_dice_plus_per_channel_bce() -> None:
    from monai.losses import DiceLoss

    from medseg.models.registry import build_loss

    torch.manual_seed(1)
    logits, target = torch.randn(2, 3, 5, 5, 5), (torch.rand(2, 3, 5, 5, 5) > 0.5).float()
    expected = DiceLoss(sigmoid=True)(logits, target) + torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target
    )
    assert build_loss("dice_ce", 3, multilabel=True)(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_predictive_entropy_is_one_at_even_odds_and_zero_when_certain() -> None:
    binary = predictive_entropy(np.array([[0.5, 1.0, 0.0, 0.25]], np.float32))
    np.testing.assert_allclose(binary, [1.0, 0.0, 0.0, 0.811278], atol=1e-4)
    softmax = predictive_entropy(np.array([[1 / 3, 1.0], [1 / 3, 0.0], [1 / 3, 0.0]], np.float32))
    np.testing.assert_allclose(softmax, [1.0, 0.0], atol=1e-4)
    regions = predictive_entropy(np.array([[0.5], [1.0]], np.float32), multilabel=True)
    np.testing.assert_allclose(regions, [0.5], atol=1e-4)
    summary = entropy_summary(np.array([0.0, 1.0, 0.5, 0.5]), np.array([False, True, True, False]))
    assert summary == {"mean_entropy": 0.5, "mean_entropy_foreground": 0.75}
    assert entropy_summary(np.zeros(3), np.zeros(3, bool))["mean_entropy_foreground"] == ""


def test_a_label_scheme_stands_alone_without_a_pipeline_configuration() -> None:
    from medseg.labels import Label, LabelScheme

    binary = LabelScheme()
    assert [(label.value, label.name) for label in binary.output_labels()] == [(1, "foreground")]
    assert binary.discretise(np.array([[[0.2, 0.7]]])).tolist() == [[0, 1]]
    brats = LabelScheme(3, {4: Label(4, "enhancing", (255, 0, 0))}, {"wt": (1, 2, 4), "tc": (1, 4), "et": (4,)})
    assert brats.multilabel and brats.paint_order() == [(0, 2), (1, 1), (2, 4)]
    assert [label.name for label in brats.output_labels()] == ["label_1", "label_2", "enhancing"]

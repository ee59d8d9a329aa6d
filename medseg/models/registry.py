"""The one place where a name from YAML becomes a network or a loss.

MONAI is imported inside the builders so that importing this module (and ``medseg --help``) stays fast.
Every network returns logits; activations live in the loss and in post-processing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from medseg.core.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn


class UnknownArguments(ValueError):
    """``model.args`` names arguments the network does not take."""


def _construct(network_class: type, *positional: Any, **arguments: Any) -> Any:
    """``network_class(*positional, **arguments)``, after checking every argument name against its signature, so
    that all unknown ones are named at once together with those it takes (a TypeError names only the first)."""
    parameters = inspect.signature(network_class).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        bound = list(parameters)[: len(positional)]
        unknown = sorted(set(arguments) - set(parameters))
        if unknown:
            given = {*bound, "spatial_dims", "in_channels", "out_channels", "stride"}  # medseg sets these itself
            takes = [name for name, p in parameters.items() if name not in given and p.kind is not p.VAR_POSITIONAL]
            raise UnknownArguments(f"does not take {', '.join(unknown)}; it takes {', '.join(takes)}")
    return network_class(*positional, **arguments)


def _unet(spatial_dims: int, in_channels: int, out_channels: int, args: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import UNet

    args.setdefault("channels", (16, 32, 64, 128, 256))
    args.setdefault("strides", (2,) * (len(args["channels"]) - 1))
    args.setdefault("num_res_units", 2)
    args.setdefault("norm", "batch")
    return _construct(UNet, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **args)


def _attention_unet(spatial_dims: int, in_channels: int, out_channels: int, args: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    args.setdefault("channels", (16, 32, 64, 128, 256))
    args.setdefault("strides", (2,) * (len(args["channels"]) - 1))
    return _construct(
        AttentionUnet, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **args
    )


def _basic_unet_plus_plus(spatial_dims: int, in_channels: int, out_channels: int, args: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import BasicUNetPlusPlus

    from medseg.models.networks import FirstOutput

    args.setdefault("features", (16, 16, 32, 64, 128, 16))
    net = _construct(
        BasicUNetPlusPlus, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **args
    )
    return FirstOutput(net)


def _dynunet(spatial_dims: int, in_channels: int, out_channels: int, args: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import DynUNet

    levels = len(args.get("filters") or (16, 32, 64, 128, 256))
    args.setdefault("filters", (16, 32, 64, 128, 256)[:levels])
    args.setdefault("kernel_size", [3] * levels)
    args.setdefault("strides", [1] + [2] * (levels - 1))
    args.setdefault("upsample_kernel_size", args["strides"][1:])
    args.setdefault("res_block", True)
    return _construct(DynUNet, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **args)


def _segresnet(spatial_dims: int, in_channels: int, out_channels: int, args: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import SegResNet

    args.setdefault("init_filters", 16)
    return _construct(SegResNet, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **args)


def _fcn(stride: int) -> Callable[..., nn.Module]:
    def build(spatial_dims: int, in_channels: int, out_channels: int, args: dict[str, Any]) -> nn.Module:
        from medseg.models.networks import FCN

        args.setdefault("channels", (16, 32, 64, 128, 256))
        args.setdefault("convs_per_stage", (2, 2, 3, 3, 3))
        args.setdefault("head_channels", 256)
        return _construct(FCN, spatial_dims, in_channels, out_channels, stride=stride, **args)

    return build


def _deeplabv3plus(spatial_dims: int, in_channels: int, out_channels: int, args: dict[str, Any]) -> nn.Module:
    from medseg.models.networks import DeepLabV3Plus

    args.setdefault("channels", (32, 64, 128, 256))
    args.setdefault("rates", (6, 12, 18))
    args.setdefault("aspp_channels", 128)
    args.setdefault("low_level_channels", 48)
    return _construct(DeepLabV3Plus, spatial_dims, in_channels, out_channels, **args)


def _segformer(spatial_dims: int, in_channels: int, out_channels: int, args: dict[str, Any]) -> nn.Module:
    from medseg.models.segformer import SegFormer

    args.setdefault("size", "b0")
    return _construct(SegFormer, spatial_dims, in_channels, out_channels, **args)


def _swin_unetr(spatial_dims: int, in_channels: int, out_channels: int, args: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    args.setdefault("feature_size", 24)  # inputs must be divisible by 32 (patches / image sizes)
    return _construct(SwinUNETR, in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims, **args)


def _unetr(spatial_dims: int, in_channels: int, out_channels: int, args: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import UNETR

    if "img_size" not in args:
        raise ValueError("UNETR needs model.args.img_size: the patch size (3D) or preprocessing.spatial_size (2D)")
    args.setdefault("feature_size", 16)
    args.setdefault("hidden_size", 384)
    args.setdefault("mlp_dim", 1536)
    args.setdefault("num_heads", 6)
    return _construct(UNETR, in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims, **args)


def _flexible_unet(spatial_dims: int, in_channels: int, out_channels: int, args: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import FlexibleUNet
    from torch.nn.modules.batchnorm import _BatchNorm

    args.setdefault("backbone", "efficientnet-b0")
    args["pretrained"] = False  # nothing is ever downloaded
    network = _construct(FlexibleUNet, in_channels, out_channels, spatial_dims=spatial_dims, **args)
    # MONAI's EfficientNet keeps TensorFlow's BatchNorm momentum 0.01, made for fine-tuning pretrained weights: from
    # scratch its running statistics trail the weights so far that eval mode predicted nothing on PH2 (validation
    # Dice 0.0 while training loss fell). PyTorch's 0.1 tracks them (measured: eval Dice 0.97 vs 0.0, 40 steps).
    for module in network.modules():
        if isinstance(module, _BatchNorm):
            module.momentum = 0.1
    return network


def _classical(method: str) -> Callable[..., nn.Module]:
    def build(spatial_dims: int, in_channels: int, out_channels: int, args: dict[str, Any]) -> nn.Module:
        from medseg.models.classical import GRID, ClassicalSegmenter

        if spatial_dims != 2 or out_channels != 1:
            raise ValueError(f"{method} is a binary 2D baseline (spatial_dims 2, out_channels 1)")
        for name, values in GRID[method].items():
            args.setdefault(name, values[0])
        return _construct(ClassicalSegmenter, method, **args)

    return build


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "unet": _unet,
    "attention_unet": _attention_unet,
    "basic_unet_plus_plus": _basic_unet_plus_plus,
    "dynunet": _dynunet,
    "segresnet": _segresnet,
    "fcn8s": _fcn(8),
    "fcn16s": _fcn(16),
    "fcn32s": _fcn(32),
    "deeplabv3plus": _deeplabv3plus,
    "segformer": _segformer,
    "swin_unetr": _swin_unetr,
    "unetr": _unetr,
    "flexible_unet": _flexible_unet,
    # classical baselines (scikit-image; fitted by grid search in the train stage)
    "otsu": _classical("otsu"),
    "watershed": _classical("watershed"),
    "kmeans": _classical("kmeans"),
}

#: networks that take only some inputs, checked with the configuration: name -> (the spatial_dims they take, the
#: multiple each side of preprocessing.spatial_size must be: SegFormer's four stages downsample 32 times)
INPUT_REQUIREMENTS: dict[str, tuple[int, int]] = {"segformer": (2, 32)}


#: ``training.freeze: [encoder]``: per network, the parameters (a pattern over ``named_parameters()`` names) of its
#: encoder, the contracting path a pretrained network shares across tasks; the rest (decoder, heads) keep training.
#: MONAI's UNet / AttentionUnet nest each level in ``submodule``: the down block is index 0, the bottom a named block.
ENCODERS: dict[str, str] = {
    "unet": r"model\.(1\.submodule\.)*(0\.|[a-z])",
    "attention_unet": r"model\.(0\.|1\.(submodule\.1\.)*submodule\.(0\.|[a-z]))",
    "basic_unet_plus_plus": r"network\.conv_\d_0\.",
    "dynunet": r"(input_block|downsamples|bottleneck)\.",
    "segresnet": r"(convInit|down_layers)\.",
    "fcn8s": r"stages\.",
    "fcn16s": r"stages\.",
    "fcn32s": r"stages\.",
    "deeplabv3plus": r"(stem|low_level|encoder)\.",
    "segformer": r"encoder\.",
    "swin_unetr": r"(swinViT|encoder\d+)\.",
    "unetr": r"(vit|encoder\d)\.",
    "flexible_unet": r"encoder\.",
}


def encoder_parameters(name: str, network: nn.Module) -> list[torch.nn.Parameter]:
    """The parameters of ``network``'s encoder (:data:`ENCODERS`); ConfigError for a network without one."""
    import re

    if name not in ENCODERS:
        raise ConfigError(
            f"training.freeze: network {name} has no encoder defined to freeze (defined for {', '.join(ENCODERS)})"
        )
    pattern = re.compile(ENCODERS[name])
    return [parameter for key, parameter in network.named_parameters() if pattern.match(key)]


def _activation(out_channels: int, multilabel: bool = False) -> dict[str, bool]:
    """Sigmoid on a 1-channel output (binary) or on region channels (multi-label), softmax over one-hot labels
    otherwise."""
    return {"sigmoid": True} if out_channels == 1 or multilabel else {"softmax": True, "to_onehot_y": True}


def _dice_ce(out_channels: int, multilabel: bool = False, **args: Any) -> nn.Module:
    from monai.losses import DiceCELoss

    return DiceCELoss(**_activation(out_channels, multilabel), **args)


def _dice_focal(out_channels: int, multilabel: bool = False, **args: Any) -> nn.Module:
    from monai.losses import DiceFocalLoss

    return DiceFocalLoss(**_activation(out_channels, multilabel), **args)


def _tversky(out_channels: int, multilabel: bool = False, **args: Any) -> nn.Module:
    from monai.losses import TverskyLoss

    args.setdefault("alpha", 0.3)
    args.setdefault("beta", 0.7)
    return TverskyLoss(**_activation(out_channels, multilabel), **args)


def _dice(out_channels: int, multilabel: bool = False, **args: Any) -> nn.Module:
    from monai.losses import DiceLoss

    return DiceLoss(**_activation(out_channels, multilabel), **args)


def _ce(out_channels: int, multilabel: bool = False, **args: Any) -> nn.Module:
    """Plain cross-entropy: BCE on sigmoid outputs, softmax CE over classes."""
    if out_channels == 1 or multilabel:
        from medseg.models.losses import MaskedDiceCELoss

        return MaskedDiceCELoss(sigmoid=True, lambda_dice=0.0, lambda_ce=1.0, **args)
    from monai.losses import DiceCELoss

    return DiceCELoss(**_activation(out_channels), lambda_dice=0.0, lambda_ce=1.0, **args)


def _focal(out_channels: int, multilabel: bool = False, **args: Any) -> nn.Module:
    from monai.losses import FocalLoss

    args.setdefault("gamma", 2.0)
    softmax = not (out_channels == 1 or multilabel)
    return FocalLoss(to_onehot_y=softmax, use_softmax=softmax, **args)


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "dice_ce": _dice_ce,
    "dice_focal": _dice_focal,
    "dice": _dice,
    "ce": _ce,
    "bce": _ce,
    "focal": _focal,
    "tversky": _tversky,
}
#: ``loss.weights`` keys -> the MONAI loss arguments they set
LOSS_WEIGHTS = {"dice": "lambda_dice", "ce": "lambda_ce", "bce": "lambda_ce", "focal": "lambda_focal"}
COMBINED_TERMS = {"dice_ce": ("dice", "ce", "bce"), "dice_focal": ("dice", "focal")}
#: a ``loss.weights`` term any loss takes: MONAI's BoundaryLoss (Kervadec et al. 2019) added with that weight
BOUNDARY_TERM = "boundary"


def build_network(
    name: str,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    args: dict[str, Any] | None = None,
    filled: bool = False,
) -> Any:
    """Instantiate a registered network (with ``filled``: and the arguments with the registry's defaults filled in);
    bad arguments become a :class:`ConfigError`. Builders fill their defaults into the ``args`` they are given."""
    try:
        builder = NETWORKS[name]
    except KeyError:
        raise ConfigError(f"model.name: unknown network {name!r}; choose one of {', '.join(NETWORKS)}") from None
    arguments = dict(args or {})
    try:
        network = builder(spatial_dims, in_channels, out_channels, arguments)
    except UnknownArguments as exc:
        raise ConfigError(f"model.args: {name} {exc}") from None
    except (TypeError, ValueError, AssertionError, IndexError, KeyError) as exc:
        raise ConfigError(f"model.args: cannot build {name}: {exc}") from None
    return (network, arguments) if filled else network


def network_arguments(name: str, spatial_dims: int, in_channels: int, out_channels: int, args: dict[str, Any]) -> dict:
    """The arguments a registered network is built with: the given ones plus the defaults the registry fills in."""
    return build_network(name, spatial_dims, in_channels, out_channels, args, filled=True)[1]


def build_loss(
    name: str,
    out_channels: int,
    args: dict[str, Any] | None = None,
    multilabel: bool = False,
    ignore_label: int | None = None,
    weights: dict[str, float] | None = None,
) -> nn.Module:
    """Instantiate a registered loss for a network with ``out_channels`` outputs (``multilabel``: one sigmoid per
    region channel: Dice + per-channel BCE); with ``ignore_label``, voxels holding it are left out (``dice_ce``
    only)."""
    try:
        builder = LOSSES[name]
    except KeyError:
        raise ConfigError(f"loss.name: unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None
    if ignore_label is not None and name != "dice_ce":
        raise ConfigError(f"loss.name: data.ignore_label needs loss dice_ce (a masked Dice + CE), not {name}")
    args = dict(args or {})
    weights = dict(weights or {})
    boundary = weights.pop(BOUNDARY_TERM, 0.0)
    if boundary and ignore_label is not None:
        raise ConfigError("loss.weights.boundary: the boundary term has no ignore label; drop it or data.ignore_label")
    for term, weight in weights.items():
        terms = COMBINED_TERMS.get(name, ())
        if term not in terms:
            known = "; ".join(f"{loss}: {', '.join(parts)}" for loss, parts in COMBINED_TERMS.items())
            raise ConfigError(
                f"loss.weights.{term}: {name} has no {term} term (weighted terms: {known}; any loss: {BOUNDARY_TERM})"
            )
        args[LOSS_WEIGHTS[term]] = float(weight)
    try:
        if name == "dice_ce" and (ignore_label is not None or (multilabel and out_channels > 1)):
            from medseg.models.losses import MaskedDiceCELoss

            return MaskedDiceCELoss(ignore_label, **_activation(out_channels, multilabel), **args)
        loss = builder(out_channels, multilabel, **args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"loss.args: cannot build {name}: {exc}") from None
    if not boundary:
        return loss
    from monai.losses import BoundaryLoss

    from medseg.models.losses import WithBoundaryTerm

    activation = _activation(out_channels, multilabel)
    return WithBoundaryTerm(loss, BoundaryLoss(include_background="sigmoid" in activation, **activation), boundary)

"""The one place where a name from YAML becomes a network or a loss.

MONAI is imported inside the builders so that importing this module (and ``medseg --help``) stays fast.
Every network returns logits; activations live in the loss and in post-processing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from medseg.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


def _unet(spatial_dims: int, in_channels: int, out_channels: int, **args: Any) -> nn.Module:
    from monai.networks.nets import UNet

    args.setdefault("channels", (16, 32, 64, 128, 256))
    args.setdefault("strides", (2,) * (len(args["channels"]) - 1))
    args.setdefault("num_res_units", 2)
    args.setdefault("norm", "batch")
    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **args)


def _attention_unet(spatial_dims: int, in_channels: int, out_channels: int, **args: Any) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    args.setdefault("channels", (16, 32, 64, 128, 256))
    args.setdefault("strides", (2,) * (len(args["channels"]) - 1))
    return AttentionUnet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **args)


def _basic_unet_plus_plus(spatial_dims: int, in_channels: int, out_channels: int, **args: Any) -> nn.Module:
    from monai.networks.nets import BasicUNetPlusPlus

    from medseg.networks import FirstOutput

    args.setdefault("features", (16, 16, 32, 64, 128, 16))
    net = BasicUNetPlusPlus(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **args)
    return FirstOutput(net)


def _dynunet(spatial_dims: int, in_channels: int, out_channels: int, **args: Any) -> nn.Module:
    from monai.networks.nets import DynUNet

    levels = len(args.get("filters") or (16, 32, 64, 128, 256))
    args.setdefault("filters", (16, 32, 64, 128, 256)[:levels])
    args.setdefault("kernel_size", [3] * levels)
    args.setdefault("strides", [1] + [2] * (levels - 1))
    args.setdefault("upsample_kernel_size", args["strides"][1:])
    args.setdefault("res_block", True)
    return DynUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **args)


def _segresnet(spatial_dims: int, in_channels: int, out_channels: int, **args: Any) -> nn.Module:
    from monai.networks.nets import SegResNet

    args.setdefault("init_filters", 16)
    return SegResNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **args)


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "unet": _unet,
    "attention_unet": _attention_unet,
    "basic_unet_plus_plus": _basic_unet_plus_plus,
    "dynunet": _dynunet,
    "segresnet": _segresnet,
}


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


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "dice_ce": _dice_ce,
    "dice_focal": _dice_focal,
    "tversky": _tversky,
}


def build_network(
    name: str, spatial_dims: int, in_channels: int, out_channels: int, args: dict[str, Any] | None = None
) -> nn.Module:
    """Instantiate a registered network; bad arguments become a :class:`ConfigError`."""
    try:
        builder = NETWORKS[name]
    except KeyError:
        raise ConfigError(f"model.name: unknown network {name!r}; choose one of {', '.join(NETWORKS)}") from None
    try:
        return builder(spatial_dims, in_channels, out_channels, **dict(args or {}))
    except (TypeError, ValueError, AssertionError, IndexError) as exc:
        raise ConfigError(f"model.args: cannot build {name}: {exc}") from None


def build_loss(
    name: str,
    out_channels: int,
    args: dict[str, Any] | None = None,
    multilabel: bool = False,
    ignore_label: int | None = None,
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
    try:
        if name == "dice_ce" and (ignore_label is not None or (multilabel and out_channels > 1)):
            from medseg.losses import MaskedDiceCELoss

            return MaskedDiceCELoss(ignore_label, **_activation(out_channels, multilabel), **dict(args or {}))
        return builder(out_channels, multilabel, **dict(args or {}))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"loss.args: cannot build {name}: {exc}") from None

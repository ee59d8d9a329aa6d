"""Small network wrappers used by the registry."""

from __future__ import annotations

import torch
from torch import nn


class FirstOutput(nn.Module):
    """Wrap a network that returns a list of outputs (deep supervision) and keep the first."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return out[0] if isinstance(out, (list, tuple)) else out


def _conv(spatial_dims: int, in_channels: int, out_channels: int, kernel: int = 3, dilation: int = 1) -> nn.Module:
    """Conv + batch norm + ReLU (MONAI's ``Convolution`` block), size-preserving."""
    from monai.networks.blocks import Convolution

    return Convolution(
        spatial_dims, in_channels, out_channels, kernel_size=kernel, dilation=dilation, norm="batch", act="relu"
    )


def _resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return nn.functional.interpolate(x, size=size, mode=mode, align_corners=False)


class FCN(nn.Module):
    """FCN-32s / 16s / 8s (Long, Shelhamer and Darrell, 2015) on a VGG-style encoder, 2D or 3D.

    Five stages of ``convs_per_stage`` 3x3 convolutions and a 2x max pool; the 7x7 "fc6/fc7" layers as
    convolutions on the last stage; 1x1 score layers on the last (32s), fourth (16s) and third (8s) stages, summed
    after upsampling to each other's exact size (any input size works), then upsampled to the input. No pretrained
    weights (none are downloaded).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 8,
        channels: tuple[int, ...] = (16, 32, 64, 128, 256),
        convs_per_stage: tuple[int, ...] = (2, 2, 3, 3, 3),
        head_channels: int = 256,
    ) -> None:
        super().__init__()
        if stride not in (8, 16, 32):
            raise ValueError(f"FCN stride must be 8, 16 or 32, got {stride}")
        if len(channels) != 5 or len(convs_per_stage) != 5:
            raise ValueError("FCN takes five encoder stages: channels and convs_per_stage of length 5")
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        stages, previous = [], in_channels
        for width, count in zip(channels, convs_per_stage, strict=True):
            layers = [_conv(spatial_dims, previous if i == 0 else width, width) for i in range(count)]
            stages.append(nn.Sequential(*layers, pool(2, ceil_mode=True)))
            previous = width
        self.stages = nn.ModuleList(stages)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        dropout = nn.Dropout2d if spatial_dims == 2 else nn.Dropout3d
        self.head = nn.Sequential(  # fc6 / fc7 as convolutions
            _conv(spatial_dims, channels[4], head_channels, kernel=7 if spatial_dims == 2 else 3),
            dropout(0.5),
            _conv(spatial_dims, head_channels, head_channels, kernel=1),
            dropout(0.5),
        )
        self.stride = stride
        self.score_last = conv(head_channels, out_channels, 1)
        self.score_pool4 = conv(channels[3], out_channels, 1) if stride <= 16 else None
        self.score_pool3 = conv(channels[2], out_channels, 1) if stride == 8 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size, features = x.shape[2:], []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        score = self.score_last(self.head(x))
        if self.score_pool4 is not None:
            skip = self.score_pool4(features[3])
            score = _resize(score, skip.shape[2:]) + skip
        if self.score_pool3 is not None:
            skip = self.score_pool3(features[2])
            score = _resize(score, skip.shape[2:]) + skip
        return _resize(score, tuple(size))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ (Chen et al., 2018), 2D or 3D: a residual encoder (MONAI ``ResidualUnit``s) to output stride 16,
    the last stage dilated; ASPP (MONAI ``SimpleASPP``: a 1x1 and three 3x3 atrous branches at ``rates``) plus an
    image-level pooling branch; a decoder that fuses the upsampled ASPP features with 1x1-reduced low-level
    (stride 4) features. No pretrained weights."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: tuple[int, ...] = (32, 64, 128, 256),
        rates: tuple[int, ...] = (6, 12, 18),
        aspp_channels: int = 128,
        low_level_channels: int = 48,
    ) -> None:
        super().__init__()
        from monai.networks.blocks import ResidualUnit, SimpleASPP

        if len(channels) != 4:
            raise ValueError("DeepLabV3+ takes four encoder stages (channels of length 4)")
        self.stem = _conv(spatial_dims, in_channels, channels[0])
        strides, dilations = (2, 2, 2, 2), (1, 1, 1, 2)
        stages, previous = [], channels[0]
        for width, stride, dilation in zip(channels, strides, dilations, strict=True):
            stride = stride if dilation == 1 else 1  # the last stage keeps stride 16 and dilates instead
            stages.append(
                ResidualUnit(spatial_dims, previous, width, strides=stride, subunits=2, norm="batch", act="relu")
            )
            if dilation > 1:
                stages.append(_conv(spatial_dims, width, width, dilation=dilation))
            previous = width
        self.low_level = nn.Sequential(*stages[:2])  # stride 4
        self.encoder = nn.Sequential(*stages[2:])  # stride 16
        branch = aspp_channels // 4
        self.aspp = SimpleASPP(
            spatial_dims, channels[-1], branch, kernel_sizes=(1, 3, 3, 3), dilations=(1, *rates), acti_type="RELU"
        )
        pooling = nn.AdaptiveAvgPool2d(1) if spatial_dims == 2 else nn.AdaptiveAvgPool3d(1)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.image_pool = nn.Sequential(pooling, conv(channels[-1], branch, 1), nn.ReLU())
        self.project = _conv(spatial_dims, branch * 5, aspp_channels, kernel=1)
        self.reduce = _conv(spatial_dims, channels[1], low_level_channels, kernel=1)
        self.decoder = nn.Sequential(
            _conv(spatial_dims, aspp_channels + low_level_channels, aspp_channels),
            _conv(spatial_dims, aspp_channels, aspp_channels),
            conv(aspp_channels, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        low = self.low_level(self.stem(x))
        deep = self.encoder(low)
        pooled = self.image_pool(deep).expand(-1, -1, *deep.shape[2:])
        context = self.project(torch.cat([self.aspp(deep), pooled], dim=1))
        fused = torch.cat([_resize(context, low.shape[2:]), self.reduce(low)], dim=1)
        return _resize(self.decoder(fused), tuple(size))

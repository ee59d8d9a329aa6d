"""SegFormer (Xie et al., 2021): a Mix Transformer encoder and the all-MLP decoder, 2D, trained from scratch.

The encoder has four stages; each embeds overlapping patches (a strided convolution: 7x7 stride 4, then 3x3 stride
2) and runs transformer blocks of efficient self-attention (keys and values from a grid reduced by 8, 4, 2, 1) and a
Mix-FFN (a 3x3 depth-wise convolution between the MLP's two linear layers, the positional cue). The decoder projects
each stage to one width, upsamples to 1/4 of the input, concatenates, fuses with a 1x1 convolution, and classifies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: the input side multiple: the four stages downsample by 4, 2, 2, 2
MULTIPLE = 32
#: the paper's sizes (MiT-B0..B2 and their decoder widths); heads, reductions and the MLP ratio are shared
SIZES: dict[str, dict[str, tuple[int, ...] | int]] = {
    "b0": {"widths": (32, 64, 160, 256), "depths": (2, 2, 2, 2), "head_width": 256},
    "b1": {"widths": (64, 128, 320, 512), "depths": (2, 2, 2, 2), "head_width": 256},
    "b2": {"widths": (64, 128, 320, 512), "depths": (3, 4, 6, 3), "head_width": 768},
}
HEADS = (1, 2, 5, 8)
REDUCTIONS = (8, 4, 2, 1)
MLP_RATIO = 4


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)


def _grid(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W) on the grid of ``like``."""
    return tokens.transpose(1, 2).reshape(like.shape[0], -1, like.shape[2], like.shape[3])


class OverlapPatchEmbedding(nn.Module):
    """A strided convolution whose kernel overlaps its neighbours (kernel 2 * stride - 1), then a LayerNorm."""

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        kernel = 2 * stride - 1
        self.projection = nn.Conv2d(in_channels, width, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens and the grid they lie on."""
        grid = self.projection(x)
        return self.norm(_tokens(grid)), grid


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a grid reduced ``reduction`` times per side (a
    ``reduction`` x ``reduction`` convolution with that stride, then a LayerNorm): attention costs N^2 / R^2."""

    def __init__(self, width: int, heads: int, reduction: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"a stage width ({width}) must be a multiple of its heads ({heads})")
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.output = nn.Linear(width, width)
        self.reduce = nn.Conv2d(width, width, reduction, stride=reduction) if reduction > 1 else None
        self.reduce_norm = nn.LayerNorm(width) if reduction > 1 else None

    def forward(self, tokens: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        batch, count, width = tokens.shape
        context = tokens
        if self.reduce is not None:
            context = self.reduce_norm(_tokens(self.reduce(_grid(tokens, grid))))
        query = self.query(tokens).reshape(batch, count, self.heads, -1).transpose(1, 2)
        key, value = self.key_value(context).reshape(batch, -1, 2, self.heads, width // self.heads).unbind(2)
        attended = F.scaled_dot_product_attention(query, key.transpose(1, 2), value.transpose(1, 2))
        return self.output(attended.transpose(1, 2).reshape(batch, count, width))


class MixFFN(nn.Module):
    """Linear -> 3x3 depth-wise convolution -> GELU -> linear: the convolution gives the tokens their position."""

    def __init__(self, width: int, ratio: int = MLP_RATIO) -> None:
        super().__init__()
        hidden = width * ratio
        self.expand = nn.Linear(width, hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.contract = nn.Linear(hidden, width)

    def forward(self, tokens: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        hidden = self.expand(tokens)
        hidden = _tokens(self.depthwise(_grid(hidden, grid)))
        return self.contract(F.gelu(hidden))


class MixTransformerBlock(nn.Module):
    """Pre-norm attention and Mix-FFN, each a residual branch with stochastic depth (MONAI ``DropPath``)."""

    def __init__(self, width: int, heads: int, reduction: int, drop_path: float) -> None:
        super().__init__()
        from monai.networks.layers import DropPath

        self.attention_norm = nn.LayerNorm(width)
        self.attention = EfficientSelfAttention(width, heads, reduction)
        self.ffn_norm = nn.LayerNorm(width)
        self.ffn = MixFFN(width)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, tokens: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.drop_path(self.attention(self.attention_norm(tokens), grid))
        return tokens + self.drop_path(self.ffn(self.ffn_norm(tokens), grid))


class MixTransformerStage(nn.Module):
    """Patch embedding, ``depth`` blocks and a LayerNorm; returns a (B, C, H, W) feature map."""

    def __init__(
        self, in_channels: int, width: int, stride: int, depth: int, heads: int, reduction: int, drop_paths: list[float]
    ) -> None:
        super().__init__()
        self.embedding = OverlapPatchEmbedding(in_channels, width, stride)
        self.blocks = nn.ModuleList(MixTransformerBlock(width, heads, reduction, p) for p in drop_paths[:depth])
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.embedding(x)
        for block in self.blocks:
            tokens = block(tokens, grid)
        return _grid(self.norm(tokens), grid)


class SegFormer(nn.Module):
    """SegFormer: a Mix Transformer (MiT) encoder and the all-MLP decoder; logits at the input size.

    Args:
        spatial_dims: must be 2.
        in_channels: image channels.
        out_channels: classes (1: binary, sigmoid).
        size: ``b0``, ``b1`` or ``b2``: the paper's widths, depths and decoder width.
        widths, depths, heads: per stage (four each), overriding ``size``'s.
        head_width: the decoder's width, overriding ``size``'s.
        drop_path: the stochastic depth rate of the last block (rising linearly from 0 over the blocks).
        dropout: the decoder's dropout before the classifier.

    Raises:
        ValueError: on 3D, an unknown size, stages not four, or (in ``forward``) an image side not a multiple of 32.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        size: str = "b0",
        widths: tuple[int, ...] | None = None,
        depths: tuple[int, ...] | None = None,
        heads: tuple[int, ...] = HEADS,
        head_width: int | None = None,
        drop_path: float = 0.1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        from monai.networks.blocks import Convolution

        if spatial_dims != 2:
            raise ValueError(f"segformer is a 2D network (spatial_dims 2), not spatial_dims {spatial_dims}")
        if size not in SIZES:
            raise ValueError(f"size {size!r}: choose one of {', '.join(SIZES)}")
        widths = tuple(widths or SIZES[size]["widths"])
        depths = tuple(depths or SIZES[size]["depths"])
        head_width = int(head_width or SIZES[size]["head_width"])
        if not len(widths) == len(depths) == len(heads) == len(REDUCTIONS):
            raise ValueError("widths, depths and heads: four stages each")
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        previous, stages = in_channels, []
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            stride = 4 if i == 0 else 2
            stages.append(
                MixTransformerStage(previous, width, stride, depth, heads[i], REDUCTIONS[i], rates[starts[i] :])
            )
            previous = width
        self.encoder = nn.ModuleList(stages)
        # the all-MLP decoder: a per-pixel linear layer (1x1 convolution) per scale to head_width
        self.projections = nn.ModuleList(nn.Conv2d(width, head_width, 1) for width in widths)
        self.fuse = Convolution(
            2, head_width * len(widths), head_width, kernel_size=1, norm="batch", act="relu", bias=False
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(head_width, out_channels, 1)
        self.apply(_initialise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        if not torch.jit.is_tracing() and (height % MULTIPLE or width % MULTIPLE):
            raise ValueError(f"segformer takes height and width multiples of {MULTIPLE}, not {height}x{width}")
        projected = []
        for stage, project in zip(self.encoder, self.projections, strict=True):
            x = stage(x)
            projected.append(project(x))
        quarter = projected[0].shape[2:]
        upsampled = [F.interpolate(p, size=quarter, mode="bilinear", align_corners=False) for p in projected[1:]]
        fused = self.fuse(torch.cat([*upsampled[::-1], projected[0]], dim=1))  # the deepest scale first, as the paper
        logits = self.classifier(self.dropout(fused))
        return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)


def _initialise(module: nn.Module) -> None:
    """The paper's initialisation: truncated normal (std 0.02) linear layers, He-normal convolutions (fan out)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)

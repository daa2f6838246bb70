"""Building blocks of our U-Net: conv -> norm -> activation, stacked into stages.

The layout follows nnU-Net / MONAI DynUNet (convolutions without bias because a
normalisation follows, affine instance norm, leaky ReLU 0.01, He initialisation), so
our U-Net and DynUNet with the same kernels, strides and filters are the same network
and can be timed side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ConfigError

NORMS = ("instance", "batch", "group", "none")
ACTIVATIONS = ("leakyrelu", "relu", "gelu")


def as_tuple(value: int | Sequence[int], spatial_dims: int, what: str) -> tuple[int, ...]:
    """Broadcast an int to ``spatial_dims`` entries; check a sequence has that many.

    A 2D / 2.5D plan's (z, y, x) entry with z == 1 is accepted for a 2D network as (y, x).
    """
    if isinstance(value, int):
        return (value,) * spatial_dims
    out = tuple(int(v) for v in value)
    if spatial_dims == 2 and len(out) == 3 and out[0] == 1:
        out = out[1:]
    if len(out) != spatial_dims:
        raise ConfigError(f"{what}: expected {spatial_dims} values (one per spatial axis), found {out}")
    return out


def conv_nd(spatial_dims: int) -> Callable[..., nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    if spatial_dims == 2:
        return nn.Conv2d
    if spatial_dims == 3:
        return nn.Conv3d
    raise ConfigError(f"spatial_dims must be 2 or 3, found {spatial_dims}")


def conv_transpose_nd(spatial_dims: int) -> Callable[..., nn.Module]:
    return nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d


def norm_layer(norm: str, spatial_dims: int, channels: int, num_groups: int = 8) -> nn.Module:
    """Normalisation by name: instance (affine), batch, group (``num_groups`` or fewer) or none."""
    if norm == "instance":
        cls_i = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d
        return cls_i(channels, affine=True)
    if norm == "batch":
        cls_b = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        return cls_b(channels)
    if norm == "group":
        groups = min(num_groups, channels)
        while channels % groups:
            groups -= 1
        return nn.GroupNorm(groups, channels)
    if norm == "none":
        return nn.Identity()
    raise ConfigError(f"unknown normalisation {norm!r}; expected one of {', '.join(NORMS)}")


def activation_layer(activation: str) -> nn.Module:
    if activation == "leakyrelu":
        return nn.LeakyReLU(0.01, inplace=True)
    if activation == "relu":
        return nn.ReLU(inplace=True)
    if activation == "gelu":
        return nn.GELU()
    raise ConfigError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")


class ConvNormAct(nn.Sequential):
    """Convolution (``same`` padding for odd kernels) -> normalisation -> activation."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        norm: str = "instance",
        activation: str = "leakyrelu",
        dropout: float = 0.0,
    ):
        padding = tuple(k // 2 for k in kernel_size)
        # No bias: a normalisation follows (as nnU-Net and DynUNet); keep it when there is none.
        conv = conv_nd(spatial_dims)(
            in_channels,
            out_channels,
            tuple(kernel_size),
            stride=tuple(stride),
            padding=padding,
            bias=norm == "none",
        )
        layers: list[nn.Module] = [conv]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout) if spatial_dims == 2 else nn.Dropout3d(dropout))
        layers += [norm_layer(norm, spatial_dims, out_channels), activation_layer(activation)]
        super().__init__(*layers)


class ConvStage(nn.Sequential):
    """``num_convs`` ConvNormAct blocks; the first one may be strided (downsampling)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        num_convs: int = 2,
        norm: str = "instance",
        activation: str = "leakyrelu",
        dropout: float = 0.0,
    ):
        ones = (1,) * spatial_dims
        blocks = [
            ConvNormAct(
                spatial_dims,
                in_channels if i == 0 else out_channels,
                out_channels,
                kernel_size,
                stride if i == 0 else ones,
                norm,
                activation,
                dropout,
            )
            for i in range(num_convs)
        ]
        super().__init__(*blocks)


class ResidualStage(nn.Module):
    """A ConvStage with an identity path around it (nnU-Net's ResEnc "BasicBlockD" idea).

    ``x -> convs (the last one without its activation) + shortcut(x) -> activation``.
    The shortcut averages over the stride when the stage downsamples and projects with a
    1 x 1 convolution + normalisation when the channel count changes, so a strided,
    widening stage stays residual. Written here because MONAI's residual blocks
    (``UnetResBlock``) hold exactly two convolutions and a different shortcut, and our
    U-Net's stages take ``num_convs``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        num_convs: int = 2,
        norm: str = "instance",
        activation: str = "leakyrelu",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.body = ConvStage(
            spatial_dims, in_channels, out_channels, kernel_size, stride, num_convs, norm, activation, dropout
        )
        # the last block's activation moves after the sum
        self.body[-1] = nn.Sequential(*list(self.body[-1].children())[:-1])
        shortcut: list[nn.Module] = []
        if any(s != 1 for s in stride):
            pool: Callable[..., nn.Module] = nn.AvgPool2d if spatial_dims == 2 else nn.AvgPool3d
            shortcut.append(pool(tuple(stride), tuple(stride), ceil_mode=True, count_include_pad=False))
        if in_channels != out_channels:
            shortcut += [
                conv_nd(spatial_dims)(in_channels, out_channels, 1, bias=norm == "none"),
                norm_layer(norm, spatial_dims, out_channels),
            ]
        self.shortcut = nn.Sequential(*shortcut)
        self.activation = activation_layer(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


def padded_size(size: int, divisor: int) -> int:
    """Smallest multiple of ``divisor`` >= ``size``, and >= 2 x ``divisor`` when pooling.

    The coarsest level then has >= 2 voxels along each pooled axis, which instance
    normalisation needs (it cannot normalise a single voxel).
    """
    if divisor <= 1:
        return size
    return max(-(-size // divisor) * divisor, 2 * divisor)


def pad_high(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Zero-pad the trailing spatial axes of ``x`` at their high end up to ``sizes``."""
    extra = [s - n for s, n in zip(sizes, x.shape[2:], strict=True)]
    if not any(extra):
        return x
    # F.pad takes (last-axis low, last-axis high, ..., first-axis low, first-axis high).
    return F.pad(x, [v for e in reversed(extra) for v in (0, e)])


def init_weights(module: nn.Module) -> None:
    """He (Kaiming) normal initialisation with a=0.01 for convolutions, as nnU-Net."""
    if isinstance(module, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.ConvTranspose3d):
        nn.init.kaiming_normal_(module.weight, a=0.01)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "ConvNormAct",
    "ConvStage",
    "ResidualStage",
    "activation_layer",
    "as_tuple",
    "conv_nd",
    "conv_transpose_nd",
    "count_parameters",
    "init_weights",
    "norm_layer",
    "pad_high",
    "padded_size",
]

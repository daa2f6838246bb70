"""Our U-Net for 2D, 2.5D (a 2D network whose input channels are neighbouring slices) and 3D.

Configurable depth (through the per-level pooling), base features, normalisation,
per-axis pooling for anisotropic data (e.g. ``(1, 2, 2)`` on 3 mm slices until the
in-plane spacing catches up), optional deep supervision (off by default). Returns
logits.

With ``downsample="conv"`` (default) and ``upsample="transpose"`` the network is the
nnU-Net / MONAI DynUNet topology: with uniform kernels, the same strides and filters
give exactly DynUNet's parameter count, which the benchmark uses to time both side by
side. With per-level kernels (1x3x3 on thick slices) the decoders differ slightly:
DynUNet's decoder at level l uses level l+1's kernel, ours level l's (as nnU-Net v2).

Input sizes that are not divisible by the total stride per axis are handled: the
input is zero-padded at the high end of each axis to the next multiple (and to at
least two voxels at the coarsest level, which instance normalisation needs) and the
logits are cropped back, so the output always has the input's spatial shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ConfigError
from medseg.models.blocks import (
    ConvStage,
    ResidualStage,
    as_tuple,
    conv_nd,
    conv_transpose_nd,
    init_weights,
    pad_high,
    padded_size,
)


def pooling_schedule(
    patch_size: Sequence[int],
    spacing: Sequence[float],
    max_depth: int = 5,
    min_size: int = 4,
) -> list[tuple[int, ...]]:
    """Per-level pooling strides for a 2D or 3D patch (nnU-Net's anisotropy rule).

    The rule lives in :func:`medseg.preprocessing.plan.pooling_schedule`, which the plan
    stores; this adapter accepts 2 or 3 axes for networks built outside a plan.

    >>> pooling_schedule((21, 128, 128), (3.0, 0.5, 0.5), max_depth=4)
    [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    """
    pools, _ = _plan_schedule(patch_size, spacing, max_depth, min_size)
    return pools


def conv_kernel_schedule(spacing: Sequence[float], pooling: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Per-level kernel sizes: 3 on axes within 2x of the finest spacing, 1 on thick axes.

    One entry per level (``len(pooling) + 1``), as nnU-Net: a thick axis gets 3 x 3
    in-plane convolutions until its neighbours' spacing catches up.
    """
    current = [float(s) for s in spacing]
    kernels: list[tuple[int, ...]] = []
    for level in range(len(pooling) + 1):
        smallest = min(current)
        kernels.append(tuple(3 if c / smallest < 2.0 else 1 for c in current))
        if level < len(pooling):
            current = [c * s for c, s in zip(current, pooling[level], strict=True)]
    return kernels


def _plan_schedule(
    patch_size: Sequence[int], spacing: Sequence[float], max_depth: int, min_size: int
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    from medseg.preprocessing.plan import pooling_schedule as plan_pooling

    if len(patch_size) != len(spacing) or len(spacing) not in (2, 3):
        raise ConfigError(
            f"patch size {tuple(patch_size)} and spacing {tuple(spacing)} must have the same number of axes (2 or 3)"
        )
    if any(s <= 0 for s in spacing) or any(p <= 0 for p in patch_size):
        raise ConfigError(
            f"patch size and spacing must be positive, found {tuple(patch_size)}, {tuple(spacing)}"
        )
    if len(spacing) == 2:
        pools, kernels = plan_pooling(
            (1, *patch_size), (1.0, *spacing), spatial_dims=2, max_depth=max_depth, min_size=min_size
        )
        return [p[1:] for p in pools], [k[1:] for k in kernels]
    pools3, kernels3 = plan_pooling(
        patch_size, spacing, spatial_dims=3, max_depth=max_depth, min_size=min_size
    )
    return list(pools3), list(kernels3)


def default_features(base: int, levels: int, spatial_dims: int, max_features: int | None = None) -> list[int]:
    """``base * 2**level`` capped at 320 (3D) or 512 (2D), as nnU-Net."""
    cap = max_features if max_features is not None else (320 if spatial_dims == 3 else 512)
    return [min(base * 2**level, cap) for level in range(levels)]


class UNet(nn.Module):
    """Encoder-decoder with skip connections; ``len(pooling) + 1`` resolution levels.

    Args:
        spatial_dims: 2 (2D and 2.5D) or 3.
        in_channels: image channels (2.5D: slices x image channels).
        out_channels: classes including background.
        features: base feature count (doubled per level, capped by ``max_features``)
            or one count per level.
        pooling: per-level strides (ints or per-axis tuples), e.g.
            ``[(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]``; default ``depth`` x 2.
        depth: number of poolings when ``pooling`` is not given.
        kernel_sizes: per-level kernel sizes (int or per-axis tuple); default 3.
        norm: "instance" (default), "batch", "group" or "none".
        activation: "leakyrelu" (default, slope 0.01), "relu" or "gelu".
        convs_per_stage: convolutions per encoder and decoder stage.
        downsample: "conv" (strided first convolution, default) or "maxpool".
        upsample: "transpose" (default) or "linear" (bi/trilinear + 1x1 convolution).
        deep_supervision: in training mode return a list of logits, full resolution
            first then each coarser decoder level; in eval mode always one tensor.
        dropout: channel dropout probability after each convolution.
        residual_encoder: encoder stages with an identity shortcut around their
            convolutions (as nnU-Net's residual-encoder U-Net); the decoder stays plain.
        encoder_blocks: stages (each ``convs_per_stage`` convolutions, residual or not)
            per encoder level, e.g. ``[1, 3, 4, 6]`` as nnU-Net's ResEnc M; default one.
            Deeper levels are cheap on a CPU: the full-resolution stage dominates.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: int | Sequence[int] = 32,
        pooling: Sequence[int | Sequence[int]] | None = None,
        depth: int = 4,
        kernel_sizes: Sequence[int | Sequence[int]] | None = None,
        max_features: int | None = None,
        norm: str = "instance",
        activation: str = "leakyrelu",
        convs_per_stage: int = 2,
        downsample: str = "conv",
        upsample: str = "transpose",
        deep_supervision: bool = False,
        dropout: float = 0.0,
        residual_encoder: bool = False,
        encoder_blocks: Sequence[int] | None = None,
    ):
        super().__init__()
        conv_nd(spatial_dims)  # validates spatial_dims
        if in_channels < 1 or out_channels < 1:
            raise ConfigError(
                f"in_channels and out_channels must be >= 1, found {in_channels}, {out_channels}"
            )
        if downsample not in ("conv", "maxpool"):
            raise ConfigError(f"downsample must be 'conv' or 'maxpool', found {downsample!r}")
        if upsample not in ("transpose", "linear"):
            raise ConfigError(f"upsample must be 'transpose' or 'linear', found {upsample!r}")
        if convs_per_stage < 1:
            raise ConfigError(f"convs_per_stage must be >= 1, found {convs_per_stage}")
        if pooling is None:
            if depth < 0:
                raise ConfigError(f"depth must be >= 0, found {depth}")
            pooling = [2] * depth
        strides = [as_tuple(p, spatial_dims, f"pooling level {i}") for i, p in enumerate(pooling)]
        if any(s < 1 for st in strides for s in st):
            raise ConfigError(f"pooling strides must be >= 1, found {strides}")
        levels = len(strides) + 1
        if kernel_sizes is None:
            kernel_sizes = [3] * levels
        if len(kernel_sizes) != levels:
            raise ConfigError(
                f"kernel_sizes: expected {levels} entries (one per level), found {len(kernel_sizes)}"
            )
        kernels = [as_tuple(k, spatial_dims, f"kernel size level {i}") for i, k in enumerate(kernel_sizes)]
        if any(k % 2 == 0 for kk in kernels for k in kk):
            raise ConfigError(f"kernel sizes must be odd, found {kernels}")
        blocks_per_level = [1] * levels if encoder_blocks is None else [int(b) for b in encoder_blocks]
        if len(blocks_per_level) != levels or min(blocks_per_level) < 1:
            raise ConfigError(
                f"encoder_blocks: expected {levels} counts >= 1 (one per level), found {list(encoder_blocks or [])}"
            )
        if isinstance(features, int):
            feats = default_features(features, levels, spatial_dims, max_features)
        else:
            feats = [int(f) for f in features]
            if len(feats) != levels:
                raise ConfigError(f"features: expected {levels} entries (one per level), found {len(feats)}")

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = tuple(feats)
        self.strides = tuple(strides)
        self.kernel_sizes = tuple(kernels)
        self.deep_supervision = deep_supervision
        divisor = [1] * spatial_dims
        for st in strides:
            divisor = [d * s for d, s in zip(divisor, st, strict=True)]
        self.divisor: tuple[int, ...] = tuple(divisor)

        ones = (1,) * spatial_dims

        def conv_stage(cin: int, cout: int, kernel: tuple[int, ...], stride: tuple[int, ...]) -> ConvStage:
            return ConvStage(
                spatial_dims, cin, cout, kernel, stride, convs_per_stage, norm, activation, dropout
            )

        self.encoder = nn.ModuleList()
        pool_cls = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        encoder_cls = ResidualStage if residual_encoder else ConvStage

        def encoder_stage(
            level: int, cin: int, cout: int, kernel: tuple[int, ...], stride: tuple[int, ...]
        ) -> nn.Module:
            blocks = [
                encoder_cls(
                    spatial_dims,
                    cin if b == 0 else cout,
                    cout,
                    kernel,
                    stride if b == 0 else ones,
                    convs_per_stage,
                    norm,
                    activation,
                    dropout,
                )
                for b in range(blocks_per_level[level])
            ]
            return blocks[0] if len(blocks) == 1 else nn.Sequential(*blocks)

        for level in range(levels):
            cin = in_channels if level == 0 else feats[level - 1]
            stride = ones if level == 0 else strides[level - 1]
            if downsample == "conv" or level == 0:
                stage: nn.Module = encoder_stage(level, cin, feats[level], kernels[level], stride)
            else:
                stage = nn.Sequential(
                    pool_cls(stride, stride),
                    encoder_stage(level, cin, feats[level], kernels[level], ones),
                )
            self.encoder.append(stage)

        self.upsamplers = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        conv_cls = conv_nd(spatial_dims)
        for level in reversed(range(levels - 1)):
            cin, cout, stride = feats[level + 1], feats[level], strides[level]
            if upsample == "transpose":
                up: nn.Module = conv_transpose_nd(spatial_dims)(cin, cout, stride, stride=stride, bias=False)
            else:
                mode = "bilinear" if spatial_dims == 2 else "trilinear"
                up = nn.Sequential(
                    nn.Upsample(scale_factor=tuple(float(s) for s in stride), mode=mode, align_corners=False),
                    conv_cls(cin, cout, 1, bias=False),
                )
            self.upsamplers.append(up)
            self.decoder.append(conv_stage(2 * cout, cout, kernels[level], ones))
            if deep_supervision or level == 0:
                self.heads.append(conv_cls(cout, out_channels, 1, bias=True))
        if levels == 1:
            self.heads.append(conv_cls(feats[0], out_channels, 1, bias=True))
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects input (batch, {self.in_channels}, {' x '.join(['n'] * self.spatial_dims)}), "
                f"found {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        padded = [padded_size(n, d) for n, d in zip(spatial, self.divisor, strict=True)]
        x = pad_high(x, padded)
        skips: list[torch.Tensor] = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        outputs: list[torch.Tensor] = []
        with_heads = self.deep_supervision and self.training
        head_iter = iter(self.heads)
        for i, (up, dec) in enumerate(zip(self.upsamplers, self.decoder, strict=True)):
            x = dec(torch.cat((skips.pop(), up(x)), dim=1))
            last = i == len(self.decoder) - 1
            if self.deep_supervision:
                head = next(head_iter)
                if with_heads or last:
                    outputs.append(head(x))
            elif last:
                outputs.append(next(head_iter)(x))
        if not self.decoder:
            outputs.append(self.heads[0](x))
        outputs.reverse()  # full resolution first
        if tuple(padded) != spatial:
            outputs = [self._crop(o, spatial, padded) for o in outputs]
        return outputs if with_heads else outputs[0]

    @staticmethod
    def _crop(out: torch.Tensor, spatial: tuple[int, ...], padded: list[int]) -> torch.Tensor:
        """Crop logits of a padded input back; a coarser output keeps ceil(n / its stride)."""
        scale = [p // o for p, o in zip(padded, out.shape[2:], strict=True)]
        keep = [math.ceil(n / s) for n, s in zip(spatial, scale, strict=True)]
        return out[(slice(None), slice(None), *(slice(0, k) for k in keep))]


__all__ = ["UNet", "conv_kernel_schedule", "default_features", "pooling_schedule"]

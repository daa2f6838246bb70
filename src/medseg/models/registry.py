"""Model registry: a name -> constructor dict (our U-Net plus MONAI networks).

Every constructor takes ``(spatial_dims, in_channels, out_channels, **kwargs)`` and
returns an ``nn.Module`` that maps ``(batch, in_channels, *spatial)`` to logits
``(batch, out_channels, *spatial)`` of the same spatial size. Every constructor accepts
the plan's ``patch_size`` and ``spacing`` keywords: "unet" and "dynunet" derive their
pooling from them, "unetr" takes its fixed input size from ``patch_size``, the others
ignore them (they pad any size). Other keywords are each network's own.

Input sizes: our U-Net pads internally (see :mod:`medseg.models.unet`). MONAI networks
that need sizes divisible by some factor (DynUNet: product of strides; SegResNet: 2**(levels-1);
UNet++: 16; SwinUNETR and FlexibleUNet: 32) are wrapped in :class:`PadToDivisible`,
which zero-pads the high end of each axis (to at least twice the factor) and crops
the logits back. UNETR's
positional embedding fixes its input size: any other size raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from medseg.errors import ConfigError
from medseg.models.blocks import as_tuple, count_parameters, pad_high, padded_size
from medseg.models.unet import UNet, conv_kernel_schedule, default_features, pooling_schedule

ModelConstructor = Callable[..., nn.Module]

MODES = ("2d", "2.5d", "3d")


def spatial_dims_for_mode(mode: str) -> int:
    """2 for "2d" and "2.5d" (a 2D network), 3 for "3d"."""
    if mode not in MODES:
        raise ConfigError(f"unknown model mode {mode!r}; expected one of {', '.join(MODES)}")
    return 3 if mode == "3d" else 2


def model_input_channels(mode: str, image_channels: int, num_slices: int = 1) -> int:
    """Network input channels: 2.5D stacks ``num_slices`` neighbouring slices of every image channel.

    The sampler orders them slice-major: channel ``s * image_channels + c`` is image
    channel ``c`` of the ``s``-th slice of the slab (slice offset ``s - num_slices // 2``).
    """
    spatial_dims_for_mode(mode)
    if image_channels < 1:
        raise ConfigError(f"image_channels must be >= 1, found {image_channels}")
    if mode == "2.5d":
        if num_slices < 1 or num_slices % 2 == 0:
            raise ConfigError(f"2.5D needs an odd number of slices >= 1, found {num_slices}")
        return image_channels * num_slices
    if num_slices != 1:
        raise ConfigError(f"num_slices must be 1 for mode {mode!r}, found {num_slices}")
    return image_channels


class PadToDivisible(nn.Module):
    """Zero-pad the input to a multiple of ``divisor`` per axis and crop the logits back.

    Axes are padded to at least ``2 * divisor`` so the coarsest level keeps two voxels
    (instance normalisation cannot normalise one).

    With ``fixed_size`` the network only accepts that size (UNETR) and anything else
    raises a ``ValueError`` that names both sizes.
    """

    def __init__(
        self,
        net: nn.Module,
        spatial_dims: int,
        divisor: Sequence[int] | int = 1,
        fixed_size: Sequence[int] | None = None,
        list_output: bool = False,
    ):
        super().__init__()
        self.net = net
        self.spatial_dims = spatial_dims
        self.divisor = (divisor,) * spatial_dims if isinstance(divisor, int) else tuple(divisor)
        self.fixed_size = None if fixed_size is None else tuple(int(s) for s in fixed_size)
        self.list_output = list_output

    def forward(self, x: torch.Tensor) -> Any:
        spatial = tuple(x.shape[2:])
        if len(spatial) != self.spatial_dims:
            raise ValueError(
                f"expected input with {self.spatial_dims} spatial axes, found shape {tuple(x.shape)}"
            )
        if self.fixed_size is not None and spatial != self.fixed_size:
            raise ValueError(
                f"{type(self.net).__name__} was built for input size {self.fixed_size}, found {spatial}"
            )
        padded = tuple(padded_size(n, d) for n, d in zip(spatial, self.divisor, strict=True))
        out = self.net(pad_high(x, padded))
        if self.list_output:  # UNet++ returns a list; the last is the deepest (final) output
            out = list(out) if self.training and len(out) > 1 else out[-1]
        if padded != spatial:
            index = (..., *(slice(0, n) for n in spatial))
            out = [o[index] for o in out] if isinstance(out, list) else out[index]
        return out


def _derive_topology(
    patch_size: Sequence[int] | None,
    spacing: Sequence[float] | None,
    spatial_dims: int,
    max_depth: int,
    min_size: int,
    what: str,
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    if patch_size is None:
        raise ConfigError(f"{what}: patch_size is needed to derive the pooling (or give pooling/strides)")
    if len(patch_size) != spatial_dims:
        raise ConfigError(
            f"{what}: patch_size {tuple(patch_size)} must have {spatial_dims} entries for spatial_dims={spatial_dims}"
        )
    spacing = (1.0,) * spatial_dims if spacing is None else spacing
    pooling = pooling_schedule(patch_size, spacing, max_depth=max_depth, min_size=min_size)
    return pooling, conv_kernel_schedule(spacing, pooling)


def _build_unet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    patch_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    max_depth: int = 5,
    min_size: int = 4,
    pooling: Sequence[int | Sequence[int]] | None = None,
    kernel_sizes: Sequence[int | Sequence[int]] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Our U-Net; with ``patch_size`` (and ``spacing``) the pooling and kernels follow nnU-Net's rule."""
    if pooling is None and patch_size is not None:
        pooling, derived_kernels = _derive_topology(
            patch_size, spacing, spatial_dims, max_depth, min_size, "unet"
        )
        kernel_sizes = derived_kernels if kernel_sizes is None else kernel_sizes
    return UNet(spatial_dims, in_channels, out_channels, pooling=pooling, kernel_sizes=kernel_sizes, **kwargs)


def _build_dynunet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    patch_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    max_depth: int = 5,
    min_size: int = 4,
    pooling: Sequence[int | Sequence[int]] | None = None,
    kernel_sizes: Sequence[int | Sequence[int]] | None = None,
    features: int | Sequence[int] = 32,
    max_features: int | None = None,
    norm: str = "instance",
    deep_supervision: bool = False,
    deep_supr_num: int = 1,
    res_block: bool = False,
) -> nn.Module:
    """MONAI DynUNet (nnU-Net-like): explicit ``pooling`` / ``kernel_sizes`` (as our U-Net) or
    derived from ``patch_size`` and ``spacing``.

    With the same features, pooling and uniform kernels it is our U-Net layer for layer
    (same parameter count). With per-level kernels they differ slightly: DynUNet's
    decoder stage at level ``l`` uses level ``l + 1``'s kernel, ours (and nnU-Net v2's)
    level ``l``'s.
    """
    from monai.networks.nets import DynUNet

    if pooling is None:
        pooling, kernels = _derive_topology(patch_size, spacing, spatial_dims, max_depth, min_size, "dynunet")
        kernel_sizes = kernels if kernel_sizes is None else kernel_sizes
    strides_all = [(1,) * spatial_dims] + [as_tuple(p, spatial_dims, "dynunet pooling") for p in pooling]
    if kernel_sizes is None:
        kernel_sizes = [3] * len(strides_all)
    if len(kernel_sizes) != len(strides_all):
        raise ConfigError(
            f"dynunet: kernel_sizes needs {len(strides_all)} entries (one per level), found {len(kernel_sizes)}"
        )
    kernel_size = [as_tuple(k, spatial_dims, "dynunet kernel size") for k in kernel_sizes]
    norms: dict[str, str | tuple] = {
        "instance": ("INSTANCE", {"affine": True}),
        "batch": "BATCH",
        "group": ("GROUP", {"num_groups": 8}),
    }
    if norm not in norms:
        raise ConfigError(f"dynunet: norm must be one of {', '.join(norms)}, found {norm!r}")
    levels = len(strides_all)
    filters = (
        default_features(features, levels, spatial_dims, max_features)
        if isinstance(features, int)
        else list(features)
    )
    net = DynUNet(
        spatial_dims,
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        strides=strides_all,
        upsample_kernel_size=strides_all[1:],
        filters=filters,
        norm_name=norms[norm],
        deep_supervision=deep_supervision,
        deep_supr_num=deep_supr_num,
        res_block=res_block,
    )
    divisor = [1] * spatial_dims
    for st in strides_all:
        divisor = [d * s for d, s in zip(divisor, st, strict=True)]
    return PadToDivisible(net, spatial_dims, divisor)


def _build_segresnet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    patch_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    init_filters: int = 8,
    blocks_down: Sequence[int] = (1, 2, 2, 4),
    blocks_up: Sequence[int] = (1, 1, 1),
    norm: str | tuple = ("GROUP", {"num_groups": 8}),
    dropout_prob: float | None = None,
) -> nn.Module:
    from monai.networks.nets import SegResNet

    net = SegResNet(
        spatial_dims=spatial_dims,
        init_filters=init_filters,
        in_channels=in_channels,
        out_channels=out_channels,
        blocks_down=tuple(blocks_down),
        blocks_up=tuple(blocks_up),
        norm=norm,
        dropout_prob=dropout_prob,
    )
    return PadToDivisible(net, spatial_dims, 2 ** (len(blocks_down) - 1))


def _build_unetr(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    patch_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    feature_size: int = 16,
    hidden_size: int = 768,
    mlp_dim: int = 3072,
    num_heads: int = 12,
    norm_name: str | tuple = "instance",
    dropout_rate: float = 0.0,
) -> nn.Module:
    """MONAI UNETR; ``patch_size`` (each axis a multiple of 16) is its fixed input size."""
    from monai.networks.nets import UNETR

    if patch_size is None or len(patch_size) != spatial_dims:
        raise ConfigError(
            f"unetr: patch_size with {spatial_dims} entries is required (the ViT has a fixed input size), "
            f"found {patch_size}"
        )
    if any(p % 16 for p in patch_size):
        raise ConfigError(f"unetr: patch_size must be a multiple of 16 per axis, found {tuple(patch_size)}")
    net = UNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        img_size=tuple(patch_size),
        feature_size=feature_size,
        hidden_size=hidden_size,
        mlp_dim=mlp_dim,
        num_heads=num_heads,
        norm_name=norm_name,
        dropout_rate=dropout_rate,
        spatial_dims=spatial_dims,
    )
    return PadToDivisible(net, spatial_dims, 1, fixed_size=patch_size)


def _build_swinunetr(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    patch_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    feature_size: int = 24,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int = 7,
    use_checkpoint: bool = False,
    use_v2: bool = False,
) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    net = SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        feature_size=feature_size,
        depths=tuple(depths),
        num_heads=tuple(num_heads),
        window_size=window_size,
        use_checkpoint=use_checkpoint,
        spatial_dims=spatial_dims,
        use_v2=use_v2,
    )
    return PadToDivisible(net, spatial_dims, 32)


def _build_unetplusplus(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    patch_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    features: Sequence[int] = (32, 32, 64, 128, 256, 32),
    deep_supervision: bool = False,
    norm: str | tuple = ("instance", {"affine": True}),
    upsample: str = "deconv",
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI BasicUNetPlusPlus (UNet++, nested dense skips); returns a tensor, not MONAI's list."""
    from monai.networks.nets import BasicUNetPlusPlus

    net = BasicUNetPlusPlus(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        features=tuple(features),
        deep_supervision=deep_supervision,
        norm=norm,
        upsample=upsample,
        dropout=dropout,
    )
    return PadToDivisible(net, spatial_dims, 16, list_output=True)


def _build_flexunet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    patch_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    backbone: str = "efficientnet-b0",
    pretrained: bool = False,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    norm: str | tuple = ("batch", {"eps": 1e-3, "momentum": 0.1}),
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI FlexibleUNet with an EfficientNet (or ResNet) encoder, randomly initialised."""
    from monai.networks.nets import FlexibleUNet

    if pretrained:
        raise ConfigError(
            "flexunet: pretrained=True would download ImageNet weights; medseg builds networks offline "
            "(load weights from a local checkpoint instead)"
        )
    net = FlexibleUNet(
        in_channels=in_channels,
        out_channels=out_channels,
        backbone=backbone,
        pretrained=False,
        decoder_channels=tuple(decoder_channels),
        spatial_dims=spatial_dims,
        norm=norm,
        dropout=dropout,
    )
    return PadToDivisible(net, spatial_dims, 32)


MODELS: dict[str, ModelConstructor] = {
    "unet": _build_unet,
    "dynunet": _build_dynunet,
    "segresnet": _build_segresnet,
    "unetr": _build_unetr,
    "swinunetr": _build_swinunetr,
    "unetplusplus": _build_unetplusplus,
    "flexunet": _build_flexunet,
}


def build_model(
    name: str, spatial_dims: int, in_channels: int, out_channels: int, **kwargs: Any
) -> nn.Module:
    """Build a registered network; unknown names and arguments raise ``ConfigError``."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; expected one of {', '.join(sorted(MODELS))}")
    if spatial_dims not in (2, 3):
        raise ConfigError(f"model {name!r}: spatial_dims must be 2 or 3, found {spatial_dims}")
    if in_channels < 1 or out_channels < 1:
        raise ConfigError(
            f"model {name!r}: in_channels and out_channels must be >= 1, found {in_channels}, {out_channels}"
        )
    try:
        return MODELS[name](spatial_dims, in_channels, out_channels, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: {exc}") from exc
    except (ValueError, AssertionError) as exc:
        raise ConfigError(f"model {name!r}: invalid arguments {kwargs}: {exc}") from exc


__all__ = [
    "MODELS",
    "MODES",
    "ModelConstructor",
    "PadToDivisible",
    "build_model",
    "count_parameters",
    "model_input_channels",
    "spatial_dims_for_mode",
]

"""Segmentation networks: our 2D / 2.5D / 3D U-Net and MONAI networks, through one registry."""

from medseg.models.blocks import count_parameters
from medseg.models.registry import (
    MODELS,
    MODES,
    PadToDivisible,
    build_model,
    model_input_channels,
    spatial_dims_for_mode,
)
from medseg.models.unet import UNet, conv_kernel_schedule, pooling_schedule

__all__ = [
    "MODELS",
    "MODES",
    "PadToDivisible",
    "UNet",
    "build_model",
    "conv_kernel_schedule",
    "count_parameters",
    "model_input_channels",
    "pooling_schedule",
    "spatial_dims_for_mode",
]

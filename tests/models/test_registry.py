"""Model registry: every network builds, keeps the input's spatial shape, counts parameters."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from medseg.errors import ConfigError
from medseg.models import MODELS, build_model, count_parameters, model_input_channels, spatial_dims_for_mode
from medseg.models.unet import UNet

torch.set_num_threads(1)

# Tiny configurations so that every network builds and runs in well under a second.
TINY: dict[str, dict[str, Any]] = {
    "unet": {"features": 4, "depth": 2},
    "dynunet": {"patch_size": (16, 16, 16), "features": 4, "max_depth": 2},
    "segresnet": {"init_filters": 8, "blocks_down": (1, 1, 1), "blocks_up": (1, 1)},
    "unetr": {
        "patch_size": (16, 16, 16),
        "feature_size": 4,
        "hidden_size": 24,
        "mlp_dim": 32,
        "num_heads": 2,
    },
    "swinunetr": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "window_size": 2},
    "unetplusplus": {"features": (4, 4, 4, 4, 4, 4)},
    "flexunet": {"decoder_channels": (8, 8, 8, 8, 8)},
}

# Parameter counts of the tiny configurations (in_channels 2, 3 classes): a change in a
# network's construction (ours or MONAI's) shows up here.
TINY_PARAMS = {
    (2, "unet"): 7511,
    (2, "dynunet"): 7511,
    (2, "segresnet"): 36859,
    (2, "unetr"): 120415,
    (2, "swinunetr"): 1425915,
    (2, "unetplusplus"): 7592,
    (2, "flexunet"): 5369771,
    (3, "unet"): 21543,
    (3, "dynunet"): 21543,
    (3, "segresnet"): 108571,
    (3, "unetr"): 405103,
    (3, "swinunetr"): 3731667,
    (3, "unetplusplus"): 21432,
    (3, "flexunet"): 6111515,
}


def tiny_kwargs(name: str, spatial_dims: int) -> dict[str, Any]:
    kwargs = dict(TINY[name])
    if "patch_size" in kwargs:
        kwargs["patch_size"] = kwargs["patch_size"][:spatial_dims]
    return kwargs


def test_registry_lists_the_documented_networks() -> None:
    assert set(MODELS) == {"unet", "dynunet", "segresnet", "unetr", "swinunetr", "unetplusplus", "flexunet"}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", sorted(TINY))
def test_each_network_returns_logits_of_the_input_shape(name: str, spatial_dims: int) -> None:
    torch.manual_seed(0)
    net = build_model(name, spatial_dims, 2, 3, **tiny_kwargs(name, spatial_dims)).eval()
    assert count_parameters(net) == TINY_PARAMS[(spatial_dims, name)]
    # sizes that divide by no network's factor (UNETR: its fixed patch size)
    spatial = (16,) * spatial_dims if name == "unetr" else (20, 17, 33)[-spatial_dims:]
    with torch.no_grad():
        out = net(torch.randn(2, 2, *spatial))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 3, *spatial)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_network_accepts_the_plans_patch_size_and_spacing(name: str) -> None:
    kwargs = tiny_kwargs(name, 2)
    kwargs["patch_size"] = (32, 32)  # instance norm needs > 1 voxel at the coarsest level
    net = build_model(name, 2, 1, 2, spacing=(0.7, 0.7), **kwargs).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_padding_wrapper_does_not_change_divisible_inputs() -> None:
    torch.manual_seed(0)
    net = build_model("dynunet", 2, 1, 2, patch_size=(16, 16), features=4, max_depth=2).eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.net(x))  # type: ignore[operator]
        # a 15 x 15 input is padded to 16 x 16 inside and cropped back
        assert net(x[..., :15, :15]).shape == (1, 2, 15, 15)


def test_dynunet_topology_follows_patch_and_spacing() -> None:
    net = build_model("dynunet", 3, 1, 5, patch_size=(21, 128, 128), spacing=(3.0, 0.5, 0.5), max_depth=4)
    dyn = net.net  # type: ignore[union-attr]
    assert [tuple(s) for s in dyn.strides] == [(1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert [tuple(k) for k in dyn.kernel_size] == [(1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)]
    assert dyn.filters == [32, 64, 128, 256, 320]


def test_our_unet_derives_the_same_topology() -> None:
    net = build_model(
        "unet", 3, 1, 5, features=16, patch_size=(21, 128, 128), spacing=(3.0, 0.5, 0.5), max_depth=4
    )
    assert isinstance(net, UNet)
    assert net.strides == ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))
    assert net.kernel_sizes[0] == (1, 3, 3)
    assert net.features == (16, 32, 64, 128, 256)


def test_dynunet_with_our_unets_arguments_is_the_same_network() -> None:
    pooling = [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    ours = build_model("unet", 3, 1, 5, features=16, pooling=pooling)
    dyn = build_model("dynunet", 3, 1, 5, features=16, pooling=pooling)
    assert count_parameters(ours) == count_parameters(dyn) == 5_635_973
    batch_ours = build_model("unet", 2, 1, 2, features=4, depth=2, norm="batch")
    batch_dyn = build_model("dynunet", 2, 1, 2, features=4, pooling=[2, 2], norm="batch")
    assert count_parameters(batch_ours) == count_parameters(batch_dyn)


def test_two_d_networks_accept_a_2d_plans_zyx_entries() -> None:
    plan_pooling = [(1, 2, 2), (1, 2, 2)]
    plan_kernels = [(1, 3, 3)] * 3
    ours = build_model("unet", 2, 1, 2, features=4, pooling=plan_pooling, kernel_sizes=plan_kernels)
    assert isinstance(ours, UNet) and ours.strides == ((2, 2), (2, 2))
    dyn = build_model("dynunet", 2, 1, 2, features=4, pooling=plan_pooling, kernel_sizes=plan_kernels)
    assert count_parameters(dyn) == count_parameters(ours)
    with pytest.raises(ConfigError, match="expected 2 values"):
        build_model("unet", 2, 1, 2, pooling=[(2, 2, 2)])


def test_unetplusplus_deep_supervision_returns_a_list_in_training() -> None:
    net = build_model("unetplusplus", 2, 1, 2, features=(4, 4, 4, 4, 4, 4), deep_supervision=True)
    outs = net.train()(torch.randn(1, 1, 20, 20))
    assert isinstance(outs, list) and len(outs) == 4
    assert all(o.shape == (1, 2, 20, 20) for o in outs)
    assert net.eval()(torch.randn(1, 1, 20, 20)).shape == (1, 2, 20, 20)


def test_unetr_rejects_other_input_sizes() -> None:
    net = build_model("unetr", 2, 1, 2, **tiny_kwargs("unetr", 2))
    with pytest.raises(ValueError, match=r"built for input size \(16, 16\), found \(32, 16\)"):
        net(torch.randn(1, 1, 32, 16))


def test_build_model_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown model 'vnet'"):
        build_model("vnet", 3, 1, 2)
    with pytest.raises(ConfigError, match=r"model 'segresnet'.*unexpected keyword argument 'depth'"):
        build_model("segresnet", 3, 1, 2, depth=3)
    with pytest.raises(ConfigError, match="spatial_dims must be 2 or 3"):
        build_model("unet", 1, 1, 2)
    with pytest.raises(ConfigError, match="in_channels and out_channels must be >= 1"):
        build_model("unet", 2, 0, 2)
    with pytest.raises(ConfigError, match="pretrained=True would download"):
        build_model("flexunet", 2, 1, 2, pretrained=True)
    with pytest.raises(ConfigError, match="patch_size with 3 entries is required"):
        build_model("unetr", 3, 1, 2)
    with pytest.raises(ConfigError, match="multiple of 16"):
        build_model("unetr", 2, 1, 2, patch_size=(24, 24))
    with pytest.raises(ConfigError, match="kernel_sizes needs 3 entries"):
        build_model("dynunet", 2, 1, 2, pooling=[2, 2], kernel_sizes=[3, 3])
    with pytest.raises(ConfigError, match="dynunet: norm must be one of"):
        build_model("dynunet", 2, 1, 2, pooling=[2], norm="layer")
    with pytest.raises(ConfigError, match="patch_size is needed"):
        build_model("dynunet", 3, 1, 2)
    with pytest.raises(ConfigError, match="num_groups"):
        build_model("segresnet", 3, 1, 2, init_filters=4)


def test_two_and_a_half_d_channel_arithmetic() -> None:
    assert spatial_dims_for_mode("2d") == spatial_dims_for_mode("2.5d") == 2
    assert spatial_dims_for_mode("3d") == 3
    assert model_input_channels("2d", 2) == 2
    assert model_input_channels("3d", 3) == 3
    in_channels = model_input_channels("2.5d", image_channels=2, num_slices=5)
    assert in_channels == 10
    net = build_model("unet", spatial_dims_for_mode("2.5d"), in_channels, 4, features=4, depth=2)
    assert net(torch.randn(3, 10, 24, 24)).shape == (3, 4, 24, 24)
    with pytest.raises(ConfigError, match="odd number of slices"):
        model_input_channels("2.5d", 1, 4)
    with pytest.raises(ConfigError, match="num_slices must be 1"):
        model_input_channels("2d", 1, 3)
    with pytest.raises(ConfigError, match="unknown model mode '4d'"):
        spatial_dims_for_mode("4d")

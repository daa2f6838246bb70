"""Our U-Net: pooling schedule, parameter counts, shapes, odd sizes, deep supervision, residual encoder."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DynUNet
from torch import nn

from medseg.errors import ConfigError
from medseg.models import UNet, build_model, conv_kernel_schedule, count_parameters, pooling_schedule
from medseg.models.blocks import ResidualStage

torch.set_num_threads(1)

EXERCISE_POOLING = [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]


def test_pooling_schedule_waits_for_thick_axes_and_stops_at_min_size() -> None:
    # 3 mm slices, 0.5 mm in-plane: two in-plane poolings before z joins (0.5 -> 1 -> 2 vs 3 mm)
    assert pooling_schedule((21, 128, 128), (3.0, 0.5, 0.5), max_depth=4) == EXERCISE_POOLING
    # z (21 -> 10.5 -> 5.25) stops when fewer than 2 x min_size voxels remain
    assert pooling_schedule((21, 128, 128), (3.0, 0.5, 0.5), max_depth=6) == [
        *EXERCISE_POOLING,
        (1, 2, 2),
    ]
    assert pooling_schedule((64, 64, 64), (1.0, 1.0, 1.0)) == [(2, 2, 2)] * 4  # 64 -> 4 voxels
    assert pooling_schedule((256, 256), (0.8, 0.8), max_depth=5) == [(2, 2)] * 5
    # exactly 2x thicker waits one level, then all axes pool together
    assert pooling_schedule((32, 64, 64), (2.0, 1.0, 1.0), max_depth=3) == [(1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert pooling_schedule((8, 8), (1.0, 1.0), min_size=8) == []


def test_pooling_schedule_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="same number of axes"):
        pooling_schedule((32, 32), (1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="must be positive"):
        pooling_schedule((32, 32, 32), (1.0, 0.0, 1.0))


def test_conv_kernels_are_in_plane_until_spacing_catches_up() -> None:
    assert conv_kernel_schedule((3.0, 0.5, 0.5), EXERCISE_POOLING) == [
        (1, 3, 3),
        (1, 3, 3),
        (3, 3, 3),
        (3, 3, 3),
        (3, 3, 3),
    ]


def test_parameter_count_by_hand() -> None:
    net = UNet(2, 1, 2, features=(2, 4), depth=1)
    enc0 = (1 * 2 * 9 + 4) + (2 * 2 * 9 + 4)  # conv(no bias) + affine instance norm, twice
    enc1 = (2 * 4 * 9 + 8) + (4 * 4 * 9 + 8)
    up = 4 * 2 * 2 * 2  # transposed conv 2x2, no bias
    dec0 = (4 * 2 * 9 + 4) + (2 * 2 * 9 + 4)
    head = 2 * 2 + 2  # 1x1 conv with bias
    assert count_parameters(net) == enc0 + enc1 + up + dec0 + head == 448


def test_exercise_unet_has_dynunets_parameters_and_keeps_the_input_shape() -> None:
    net = UNet(3, 1, 5, features=16, pooling=EXERCISE_POOLING)
    assert net.features == (16, 32, 64, 128, 256)
    dyn = DynUNet(
        3,
        1,
        5,
        kernel_size=[3] * 5,
        strides=[(1, 1, 1), *EXERCISE_POOLING],
        upsample_kernel_size=EXERCISE_POOLING,
        filters=list(net.features),
    )
    assert count_parameters(net) == count_parameters(dyn) == 5_635_973
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 21, 128, 128))  # 21 slices: not a multiple of 4, padded inside
    assert out.shape == (1, 5, 21, 128, 128)


@pytest.mark.parametrize("norm", ["instance", "batch", "group", "none"])
@pytest.mark.parametrize(("downsample", "upsample"), [("conv", "transpose"), ("maxpool", "linear")])
def test_variants_keep_odd_input_shapes(norm: str, downsample: str, upsample: str) -> None:
    net = UNet(
        3,
        2,
        3,
        features=4,
        pooling=[(1, 2, 2), (2, 2, 2)],
        norm=norm,
        downsample=downsample,
        upsample=upsample,
    )
    expected_norm = {"instance": nn.InstanceNorm3d, "batch": nn.BatchNorm3d, "group": nn.GroupNorm}.get(norm)
    if expected_norm is not None:
        assert any(isinstance(m, expected_norm) for m in net.modules())
    out = net(torch.randn(2, 2, 5, 13, 10))
    assert out.shape == (2, 3, 5, 13, 10)


def test_deep_supervision_returns_coarser_logits_in_training_only() -> None:
    pooling = [(1, 2, 2), (2, 2, 2), (2, 2, 2)]  # one output per decoder stage, not the bottleneck
    net = UNet(3, 1, 4, features=4, pooling=pooling, deep_supervision=True)
    outs = net.train()(torch.randn(1, 1, 7, 20, 18))
    assert isinstance(outs, list)
    assert [tuple(o.shape[2:]) for o in outs] == [(7, 20, 18), (7, 10, 9), (4, 5, 5)]
    out = net.eval()(torch.randn(1, 1, 7, 20, 18))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 4, 7, 20, 18)


def test_inputs_smaller_than_the_total_stride_still_work_with_instance_norm() -> None:
    net = UNet(2, 1, 2, features=4, depth=4).eval()  # total stride 16: a 16 x 16 input would end at 1 x 1
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 9)).shape == (1, 2, 16, 9)


def test_depth_zero_is_a_plain_conv_stack() -> None:
    net = UNet(2, 3, 2, features=4, depth=0)
    assert net(torch.randn(1, 3, 9, 7)).shape == (1, 2, 9, 7)


def test_unet_rejects_bad_configuration_and_input() -> None:
    with pytest.raises(ConfigError, match="spatial_dims must be 2 or 3"):
        UNet(4, 1, 2)
    with pytest.raises(ConfigError, match="expected 3 values"):
        UNet(3, 1, 2, pooling=[(2, 2)])
    with pytest.raises(ConfigError, match="kernel_sizes: expected 3 entries"):
        UNet(2, 1, 2, depth=2, kernel_sizes=[3, 3])
    with pytest.raises(ConfigError, match="odd"):
        UNet(2, 1, 2, depth=1, kernel_sizes=[3, 4])
    with pytest.raises(ConfigError, match="unknown normalisation 'layer'"):
        UNet(2, 1, 2, norm="layer")
    with pytest.raises(ConfigError, match="downsample"):
        UNet(2, 1, 2, downsample="avg")
    net = UNet(2, 3, 2, features=4, depth=1)
    with pytest.raises(ValueError, match=r"expects input \(batch, 3, n x n\)"):
        net(torch.randn(1, 2, 8, 8))


def test_unet_learns_a_square_in_a_few_steps() -> None:
    torch.manual_seed(0)
    image = torch.zeros(1, 1, 16, 16)
    image[..., 4:10, 5:12] = 1.0
    labels = (image[:, 0] > 0).long()
    net = UNet(2, 1, 2, features=8, depth=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(image + 0.1 * torch.randn_like(image)), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    net.eval()
    with torch.no_grad():
        assert (net(image).argmax(1) == labels).float().mean() > 0.95


def test_residual_encoder_adds_only_the_projection_shortcuts() -> None:
    plain = UNet(2, 1, 2, features=(2, 4), depth=1)
    res = UNet(2, 1, 2, features=(2, 4), depth=1, residual_encoder=True)
    # 1 -> 2 and 2 -> 4 channels: a 1x1 conv (no bias) + affine instance norm each
    assert count_parameters(res) - count_parameters(plain) == (1 * 2 + 4) + (2 * 4 + 8)
    assert sum(isinstance(m, ResidualStage) for m in res.modules()) == 2
    assert not any(isinstance(m, ResidualStage) for m in res.decoder.modules())


def test_residual_stage_with_a_silent_body_passes_the_pooled_input() -> None:
    stage = ResidualStage(3, 3, 3, (3, 3, 3), (1, 2, 2), num_convs=3)
    for m in stage.body.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.zeros_(m.weight)
    x = torch.randn(2, 3, 5, 8, 6)
    expected = nn.functional.leaky_relu(nn.functional.avg_pool3d(x, (1, 2, 2)), 0.01)
    assert torch.allclose(stage(x), expected, atol=1e-6)
    # the shortcut is what moves the output when the body is silent
    assert not torch.allclose(stage(x), nn.functional.leaky_relu(x[:, :, :, ::2, ::2], 0.01))


@pytest.mark.parametrize("downsample", ["conv", "maxpool"])
def test_residual_encoder_keeps_odd_anisotropic_shapes_and_deep_supervision(downsample: str) -> None:
    pooling = [(1, 2, 2), (2, 2, 2), (2, 2, 2)]
    net = UNet(
        3,
        1,
        3,
        features=4,
        pooling=pooling,
        deep_supervision=True,
        residual_encoder=True,
        downsample=downsample,
    )
    outs = net.train()(torch.randn(2, 1, 7, 20, 18))
    assert [tuple(o.shape[2:]) for o in outs] == [(7, 20, 18), (7, 10, 9), (4, 5, 5)]
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_residual_encoder_through_the_registry_and_channels_last() -> None:
    net = build_model("unet", 3, 1, 2, features=4, pooling=[(1, 2, 2), (2, 2, 2)], residual_encoder=True)
    assert any(isinstance(m, ResidualStage) for m in net.modules())
    x = torch.randn(1, 1, 6, 16, 12)
    net.eval()
    with torch.no_grad():
        ref = net(x)
        last = net.to(memory_format=torch.channels_last_3d)(x.to(memory_format=torch.channels_last_3d))
    assert torch.allclose(ref, last, atol=1e-5)


def test_encoder_blocks_stack_stages_per_level() -> None:
    net = UNet(
        3, 1, 2, features=4, pooling=[(1, 2, 2), (2, 2, 2)], residual_encoder=True, encoder_blocks=[1, 2, 3]
    )
    assert [sum(isinstance(m, ResidualStage) for m in stage.modules()) for stage in net.encoder] == [1, 2, 3]
    one = UNet(3, 1, 2, features=4, pooling=[(1, 2, 2), (2, 2, 2)], residual_encoder=True)
    # each extra block at level l: two 3x3x3 convs f_l -> f_l (no bias) + two affine norms, no projection
    extra = 1 * (2 * (8 * 8 * 27 + 16)) + 2 * (2 * (16 * 16 * 27 + 32))
    assert count_parameters(net) - count_parameters(one) == extra
    out = net.train()(torch.randn(1, 1, 5, 13, 10))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 5, 13, 10)
    plain = UNet(2, 1, 2, features=4, depth=1, encoder_blocks=[2, 1], downsample="maxpool")
    assert plain(torch.randn(1, 1, 9, 8)).shape == (1, 2, 9, 8)
    with pytest.raises(ConfigError, match="encoder_blocks: expected 3 counts"):
        UNet(3, 1, 2, features=4, pooling=[2, 2], encoder_blocks=[1, 2])
    with pytest.raises(ConfigError, match="encoder_blocks"):
        UNet(3, 1, 2, features=4, pooling=[2, 2], encoder_blocks=[1, 0, 2])

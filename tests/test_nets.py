"""The networks: the parameter counts the issue specifies, shapes at every scale, the discriminator's sizes."""

import math

import pytest
import torch

from trainer.config import build_config
from trainer.errors import UserError
from trainer.nets import (
    RRDBNet,
    SRResNet,
    VGGDiscriminator,
    build_discriminator,
    build_generator,
)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_parameter_counts_at_x4():
    assert n_params(SRResNet(upscale=4)) == 1_517_571  # ESRGAN's MSRResNet, no BN
    assert n_params(RRDBNet(upscale=4)) == 16_697_987  # ESRGAN's RRDBNet


def test_srresnet_batchnorm_adds_two_norms_per_block():
    with_bn = SRResNet(batchnorm=True)
    norms = [m for m in with_bn.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 2 * 16
    assert n_params(with_bn) - n_params(SRResNet()) == sum(n_params(m) for m in norms)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_generators_upscale_by_the_factor(scale):
    x = torch.rand(2, 3, 7, 9)
    for net in (SRResNet(scale, num_feat=16, num_blocks=2), RRDBNet(scale, num_feat=16, num_blocks=1, growth=8)):
        assert net(x).shape == (2, 3, 7 * scale, 9 * scale)


def test_x3_uses_a_single_upsampling_step():
    convs = RRDBNet(3, num_feat=16, num_blocks=1, growth=8).conv_up
    assert len(convs) == 1
    assert len(RRDBNet(4, num_feat=16, num_blocks=1, growth=8).conv_up) == 2


def test_unsupported_scale_is_refused():
    with pytest.raises(ValueError, match="upscale=8"):
        SRResNet(8)


def test_build_generator_follows_the_config():
    assert isinstance(build_generator(build_config({"arch": "srgan", "model.num_blocks": 2})), SRResNet)
    esr = build_generator(build_config({"arch": "esrgan", "model.num_blocks": 1, "model.num_feat": 16}))
    assert isinstance(esr, RRDBNet) and len(esr.body) == 1


def test_discriminator_is_esrgans_at_128():
    d = VGGDiscriminator(128)
    # ESRGAN's VGGStyleDiscriminator128: per stage a 3x3 conv then a 4x4 stride-2 conv; Linear(512*4*4, 100)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512, 512, 512]
    assert [c.stride[0] for c in convs] == [1, 2] * 5
    assert d.classifier[1].in_features == 512 * 4 * 4
    assert d(torch.rand(3, 3, 128, 128)).shape == (3, 1)


def test_smaller_discriminator_differs_only_in_the_first_linear_layer():
    small, full = VGGDiscriminator(32), VGGDiscriminator(128)
    assert small.classifier[1].in_features == 512
    assert n_params(full) - n_params(small) == (512 * 16 - 512) * 100
    assert small(torch.rand(2, 3, 32, 32)).shape == (2, 1)
    with pytest.raises(ValueError, match="32x32"):
        small(torch.rand(2, 3, 64, 64))
    assert build_discriminator(build_config({"preset": "smoke"})).input_size == 32


def test_discriminator_size_must_be_a_multiple_of_32():
    with pytest.raises(UserError, match="input_size=48"):
        VGGDiscriminator(48)


# --------------------------------------------------------------------------- model.skip, model.init


@pytest.mark.parametrize("net", [SRResNet, RRDBNet])
def test_bilinear_skip_adds_the_upsampled_input_and_no_parameters(net):
    small = {"num_feat": 8, "num_blocks": 1} | ({"growth": 4} if net is RRDBNet else {})
    torch.manual_seed(0)
    plain = net(4, skip="none", **small)
    torch.manual_seed(0)
    skipped = net(4, skip="bilinear", **small)
    assert n_params(plain) == n_params(skipped)
    x = torch.rand(1, 3, 6, 5)
    up = torch.nn.functional.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    torch.testing.assert_close(skipped(x), plain(x) + up)
    with pytest.raises(UserError, match="model.skip='cubic'"):
        net(4, skip="cubic", **small)(x)


def test_full_size_parameter_counts_do_not_depend_on_the_skip():
    assert n_params(SRResNet(skip="bilinear")) == 1_517_571
    assert n_params(RRDBNet(num_blocks=2, skip="bilinear")) == n_params(RRDBNet(num_blocks=2))


def conv_groups(net: RRDBNet) -> dict[str, list[torch.nn.Conv2d]]:
    dense = [c for m in net.modules() if type(m).__name__ == "DenseBlock" for c in m.convs]
    outer = [net.conv_first, net.conv_body, *net.conv_up, net.conv_hr, net.conv_last]
    return {"dense": dense, "outer": outer}


def weight_std_over_kaiming(conv: torch.nn.Conv2d) -> float:
    """The weights' std relative to Kaiming-normal's sqrt(2 / fan_in)."""
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return float(conv.weight.detach().std()) / math.sqrt(2 / fan_in)


def test_rrdbnet_init_scales_only_the_dense_block_convs_by_default():
    torch.manual_seed(0)
    groups = conv_groups(RRDBNet(num_blocks=2))
    for conv in groups["dense"]:  # 0.1 * Kaiming, zero bias (BasicSR's default_init_weights(..., 0.1))
        assert weight_std_over_kaiming(conv) == pytest.approx(0.1, rel=0.1) and not conv.bias.any()
    for conv in groups["outer"]:  # PyTorch's default: U(+-1/sqrt(fan_in)), std = Kaiming's / sqrt(6)
        assert weight_std_over_kaiming(conv) == pytest.approx(1 / math.sqrt(6), rel=0.1) and conv.bias.any()


def test_rrdbnet_init_all_convs_scales_every_conv():
    torch.manual_seed(0)
    net = RRDBNet(num_blocks=2, init="all_convs")
    for conv in [c for group in conv_groups(net).values() for c in group]:
        assert weight_std_over_kaiming(conv) == pytest.approx(0.1, rel=0.1) and not conv.bias.any()
    with pytest.raises(UserError, match="model.init='xavier'"):
        RRDBNet(num_blocks=1, init="xavier")


def test_srresnet_scales_every_conv_as_msrresnet_does():
    torch.manual_seed(0)
    for conv in [m for m in SRResNet().modules() if isinstance(m, torch.nn.Conv2d)]:
        assert weight_std_over_kaiming(conv) == pytest.approx(0.1, rel=0.1) and not conv.bias.any()


def test_build_generator_passes_skip_and_init():
    cfg = build_config({"arch": "esrgan", "model.num_blocks": 1, "model.skip": "bilinear", "model.init": "all_convs"})
    net = build_generator(cfg)
    assert net.skip == "bilinear" and not net.state_dict()["conv_first.bias"].any()
    assert build_generator(build_config({"model.num_blocks": 1})).skip == "none"

"""RaGAN (eq. 3), the extractors (eqs. 4-5) and the DP loss (eqs. 8-9), with random-init extractors
(no ImageNet weights exist on these machines; the identities tested hold for any weights)."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.errors import UserError
from trainer.losses import (
    DualPerceptualLoss,
    ResNetStages,
    discriminator_loss,
    generator_adversarial_loss,
    imagenet_normalize,
    ragan_loss,
)


def make_loss(seed: int = 0, **kw) -> DualPerceptualLoss:
    torch.manual_seed(seed)
    return DualPerceptualLoss(weights="random", **kw)


@pytest.fixture(scope="module")
def dp() -> DualPerceptualLoss:
    return make_loss(mu=0.5, beta="beta2_4")


@pytest.fixture
def images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)


# --------------------------------------------------------------------------- RaGAN


def test_ragan_matches_eq3_written_out():
    real, fake = torch.randn(5, 1), torch.randn(5, 1)
    d_ra = lambda a, b: torch.sigmoid(a - b.mean())  # noqa: E731  eq. (3)
    expected = -0.5 * (torch.log(d_ra(real, fake)).mean() + torch.log(1 - d_ra(fake, real)).mean())
    torch.testing.assert_close(ragan_loss(real, fake), expected)


def test_ragan_generator_loss_is_the_swapped_discriminator_loss():
    real, fake = torch.randn(4, 1), torch.randn(4, 1)
    assert ragan_loss(real + 3, fake) < math.log(2) < ragan_loss(fake, real + 3)
    torch.testing.assert_close(ragan_loss(torch.zeros(3, 1), torch.zeros(3, 1)), torch.tensor(math.log(2)))


# --------------------------------------------------------------------------- extractors


@pytest.mark.parametrize(
    "beta,stages,channels", [("beta1_3", 1, 256), ("beta2_4", 2, 512), ("beta3_6", 3, 1024), ("beta4_3", 4, 2048)]
)
def test_resnet_is_truncated_after_the_betas_stage(beta, stages, channels):
    net = ResNetStages("random", beta)
    assert len(net.stages) == stages
    stage = net.stages[-1]
    assert isinstance(stage, torch.nn.Sequential)
    last = stage[-1]  # the beta's bottleneck is the last of its stage: layer1.2, layer2.3, ...
    assert len(stage) == {"beta1_3": 3, "beta2_4": 4, "beta3_6": 6, "beta4_3": 3}[beta]
    out = net(torch.rand(1, 3, 64, 64))[-1]
    assert out.shape[1] == channels == last.conv3.out_channels
    assert out.min() >= 0  # taken after the bottleneck's ReLU (eq. 5)
    assert not any(p.requires_grad for p in net.parameters()) and not net.training


def test_vgg_extractor_stops_at_conv5_4_before_relu(dp):
    layers = list(dp.vgg)
    assert len(layers) == 35 and isinstance(layers[-1], torch.nn.Conv2d) and layers[-1].out_channels == 512
    assert sum(isinstance(m, torch.nn.Conv2d) for m in layers) == 16
    assert dp.vgg(torch.rand(1, 3, 32, 32)).min() < 0  # pre-activation features can be negative


# --------------------------------------------------------------------------- DP loss


def test_gradient_is_vgg_plus_weighted_resnet_gradient(dp, images):
    sr, hr = images
    sr.requires_grad_(True)
    out = dp(sr, hr)
    assert set(out) == {"total", "vgg", "res", "weight"}
    assert not out["weight"].requires_grad
    (g_total,) = torch.autograd.grad(out["total"], sr, retain_graph=True)
    (g_vgg,) = torch.autograd.grad(out["vgg"], sr, retain_graph=True)
    (g_res,) = torch.autograd.grad(out["res"], sr)
    torch.testing.assert_close(g_total, g_vgg + out["weight"] * g_res)
    assert g_res.abs().sum() > 0 and out["weight"] > 0


def test_weight_is_eq9_ratio_over_mu(images):
    sr, hr = images
    loss = make_loss(c=1e-3)
    for mu in (0.5, -2.0, 10.0):
        loss.mu = mu
        out = loss(sr, hr)
        expected = (out["vgg"] + 1e-3) / (out["res"] + 1e-3) / mu
        torch.testing.assert_close(out["weight"], expected)
        torch.testing.assert_close(out["total"], out["vgg"] + expected * out["res"])


def test_mu_inf_is_exactly_the_vgg_loss(images):
    sr, hr = images
    vgg_only = make_loss(seed=3, mu=math.inf)
    assert vgg_only.resnet is None  # no ResNet is built or run
    out = vgg_only(sr, hr)
    expected = F.l1_loss(vgg_only.vgg(imagenet_normalize(sr)), vgg_only.vgg(imagenet_normalize(hr)))
    assert torch.equal(out["total"], expected) and torch.equal(out["vgg"], expected)
    assert float(out["res"]) == 0 and float(out["weight"]) == 0
    assert torch.equal(make_loss(seed=3, mu=0.5)(sr, hr)["vgg"], expected)  # same VGG term as DP with the same weights
    assert make_loss(seed=3, mode="vgg").resnet is None


def test_no_gradient_reaches_the_extractors_or_the_hr_image(dp, images):
    sr, hr = images
    sr.requires_grad_(True)
    hr.requires_grad_(True)
    dp(sr, hr)["total"].backward()
    assert sr.grad is not None and hr.grad is None
    params = list(dp.parameters())
    assert params and all(p.grad is None and not p.requires_grad for p in params)


def test_extractors_stay_in_eval_mode(dp):
    dp.train()
    assert dp.training and not dp.vgg.training and not dp.resnet.training
    assert all(not m.training for m in dp.resnet.modules())


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"mu": 0.0}, "mu=0.0"),
        ({"mu": math.nan}, "mu=nan"),
        ({"beta": "beta5_1"}, "beta='beta5_1'.*beta1_3"),
        ({"mode": "both"}, "mode='both'"),
        ({"variant": "theirs"}, "variant='theirs'"),
        ({"c": 0.0}, "c=0.0"),
    ],
)
def test_bad_settings_are_user_errors(kw, match):
    with pytest.raises(UserError, match=match):
        DualPerceptualLoss(weights="random", **kw)


def test_static_mode_uses_the_fixed_weight(images):
    out = make_loss(mode="static", static_weight=0.25, mu=math.inf)(*images)
    assert float(out["weight"]) == 0.25
    torch.testing.assert_close(out["total"], out["vgg"] + 0.25 * out["res"])


def test_published_code_variant(images):
    """The released code: sums stages 1..m on unnormalised input, ResNet in train mode, no c."""
    sr, hr = images
    loss = make_loss(seed=5, beta="beta3_6", variant="published_code").train()
    resnet = loss.resnet
    assert resnet is not None and resnet.training and not loss.vgg.training
    out = loss(sr, hr)
    per_stage = [F.l1_loss(a, b) for a, b in zip(resnet(sr), resnet(hr))]  # raw [0, 1] input
    assert len(per_stage) == 3
    torch.testing.assert_close(out["res"], sum(per_stage))
    torch.testing.assert_close(out["weight"], out["vgg"] / out["res"] / 0.5)
    resnet.eval()  # what the paper variant computes: last stage only, normalised input, eval mode
    paper = F.l1_loss(resnet(imagenet_normalize(sr))[-1], resnet(imagenet_normalize(hr))[-1])
    assert not torch.allclose(out["res"], paper)


# --------------------------------------------------------------------------- loss.gan: vanilla | ragan

LN3 = math.log(3.0)  # sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4


def test_vanilla_gan_losses_match_hand_computed_values():
    real, fake = torch.tensor([[0.0], [LN3]]), torch.tensor([[0.0], [-LN3]])
    # D: mean(-log s(0), -log s(ln3)) + mean(-log(1 - s(0)), -log(1 - s(-ln3))) = (ln2 + ln4/3)/2 * 2
    torch.testing.assert_close(discriminator_loss("vanilla", real, fake), torch.tensor(math.log(8 / 3)))
    # G: mean(-log s(0), -log s(-ln3)) = (ln2 + ln4) / 2; D(y) plays no part
    expected_g = torch.tensor(1.5 * math.log(2))
    torch.testing.assert_close(generator_adversarial_loss("vanilla", real, fake), expected_g)
    torch.testing.assert_close(generator_adversarial_loss("vanilla", real + 5, fake), expected_g)


def test_ragan_losses_match_hand_computed_values():
    real, fake = torch.full((2, 1), LN3), torch.zeros(2, 1)
    # D: real - mean(fake) = ln3 -> -log(3/4); fake - mean(real) = -ln3 -> -log(1 - 1/4); halves sum to ln(4/3)
    for detach in (True, False):
        torch.testing.assert_close(discriminator_loss("ragan", real, fake, detach), torch.tensor(math.log(4 / 3)))
    # G (roles swapped): fake - mean(real) = -ln3 -> -log(1/4); real - mean(fake) = ln3 -> -log(1 - 3/4): ln 4
    torch.testing.assert_close(generator_adversarial_loss("ragan", real, fake), torch.tensor(math.log(4)))


@pytest.mark.parametrize("detach,through_mean", [(True, 0.0), (False, 1 / 16)])
def test_ragan_discriminator_gradient_through_the_other_sides_mean(detach, through_mean):
    real, fake = torch.full((2, 1), LN3, requires_grad=True), torch.zeros(2, 1, requires_grad=True)
    discriminator_loss("ragan", real, fake, detach_means=detach).backward()
    # own term: 0.5 * (s(x) - label) / N = 0.5 * (1/4) / 2 = 1/16 for each fake logit (-1/16 for real);
    # the other term reaches it only through its undetached mean: 0.5 * (1 - 3/4) * (1/N) = 1/16 more
    torch.testing.assert_close(fake.grad, torch.full((2, 1), 1 / 16 + through_mean))
    torch.testing.assert_close(real.grad, torch.full((2, 1), -1 / 16 - through_mean))


def test_generator_ragan_loss_reaches_only_the_fake_logits():
    real, fake = torch.full((2, 1), LN3, requires_grad=True), torch.zeros(2, 1, requires_grad=True)
    generator_adversarial_loss("ragan", real, fake).backward()
    assert real.grad is None  # D(y) is a constant for the generator
    # own term: 0.5 * (s(-ln3) - 1) / 2 = -3/16; through mean(fake) in the real term: 0.5 * s(ln3) * (-1/2) / 2 = -3/16
    torch.testing.assert_close(fake.grad, torch.full((2, 1), -3 / 8))


def test_unknown_gan_is_refused():
    with pytest.raises(UserError, match="loss.gan='wgan'.*vanilla, ragan"):
        discriminator_loss("wgan", torch.zeros(1, 1), torch.zeros(1, 1))

"""The benchmark's reference models are what they claim to be: a correct Glow and a ResNet-18 of our size.

No timings here (``make bench`` prints them); these check the mathematics of the yardsticks, so that
a ratio against them compares like with like.
"""

from __future__ import annotations

import math

import pytest
import torch

from _flow_checks import flatten_output, perturb_parameters
from ood_core.bench import Comparison, compare
from ood_core.bench_reference import ReferenceGlow, ReferenceResNet18, reference_glow_loss
from ood_core.classifiers import ResNet18Cifar
from ood_core.flows import Glow, GlowConfig, gaussian_log_prob

torch.set_num_threads(1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ready(shape, levels, affine, seed=0, steps=2, width=8) -> tuple[ReferenceGlow, torch.Tensor]:
    """A float64 reference Glow, ActNorm initialised on a batch, every parameter perturbed."""
    torch.manual_seed(seed)
    model = ReferenceGlow(shape, levels, steps, width, affine=affine).double()
    x_init = torch.randn((6, *shape), generator=_gen(seed + 1), dtype=torch.float64) * 0.3
    with torch.no_grad():
        model(x_init)
    perturb_parameters(model, 0.05, _gen(seed + 2))
    return model, x_init


@pytest.mark.parametrize("shape,levels,affine", [((1, 4, 4), 2, True), ((3, 4, 4), 2, False), ((3, 8, 8), 3, True)])
def test_reference_glow_is_invertible_with_the_autograd_logdet(shape, levels, affine):
    model, _ = _ready(shape, levels, affine)
    x = torch.randn((2, *shape), generator=_gen(7), dtype=torch.float64) * 0.3
    zs, log_pz, logdet = model(x)
    assert logdet.shape == (2,) and log_pz.shape == (2,)
    assert flatten_output(zs).shape == x.flatten(1).shape
    torch.testing.assert_close(model.inverse(zs), x, atol=1e-10, rtol=1e-10)

    x1 = x[:1]

    def flat(v: torch.Tensor) -> torch.Tensor:
        return flatten_output(model(v.view(x1.shape))[0]).reshape(-1)

    jac = torch.autograd.functional.jacobian(flat, x1.reshape(-1))
    sign, log_abs_det = torch.linalg.slogdet(jac)
    assert sign != 0
    torch.testing.assert_close(logdet[0], log_abs_det, atol=1e-9, rtol=1e-9)
    if not affine:  # additive coupling: only ActNorm and the 1x1 convolutions change volume
        _, _, logdet_other = model(x * 2.0 + 0.1)
        torch.testing.assert_close(logdet_other, logdet, atol=1e-12, rtol=0)


def test_reference_glow_prior_and_loss_closed_forms():
    model, _ = _ready((1, 8, 8), 2, True)
    x = torch.randn((3, 1, 8, 8), generator=_gen(3), dtype=torch.float64) * 0.3
    zs, log_pz, logdet = model(x)
    # the top prior is the zero-init convolution of zeros: its bias; check log_pz against it by hand
    top = model.blocks[-1]
    bias = top.prior.conv.bias * torch.exp(3.0 * top.prior.scale.flatten())
    mean, log_sd = bias.view(1, -1, 1, 1).chunk(2, dim=1)
    split = model.blocks[0]
    kept = model.blocks[0](x)[0]
    split_mean, split_log_sd = split.prior(kept).chunk(2, dim=1)
    expected = (gaussian_log_prob(zs[0], split_mean, split_log_sd)
                + gaussian_log_prob(zs[1], mean.expand_as(zs[1]), log_sd.expand_as(zs[1])))
    torch.testing.assert_close(log_pz, expected)
    # bits/dim of the discrete data: -(log p - D log 256) / (D ln 2)
    bpd = reference_glow_loss(model, x)
    torch.testing.assert_close(bpd, (-(log_pz + logdet - 64 * math.log(256)) / (64 * math.log(2))).mean())


def test_reference_actnorm_initialises_to_zero_mean_unit_std():
    torch.manual_seed(0)
    model = ReferenceGlow((1, 8, 8), 1, 1, 4).double()
    x = torch.randn((16, 1, 8, 8), generator=_gen(0), dtype=torch.float64) * 3.0 + 1.0
    squeezed = x.view(16, 1, 4, 2, 4, 2).permute(0, 1, 3, 5, 2, 4).reshape(16, 4, 4, 4)
    with torch.no_grad():
        model(x)
    actnorm = model.blocks[0].steps[0].actnorm
    y, _ = actnorm(squeezed)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3)), torch.ones(4, dtype=torch.float64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape,levels", [((1, 28, 28), 2), ((3, 32, 32), 3)])
def test_reference_glow_has_the_size_of_ours(shape, levels):
    """Same latent shapes; parameters differ only where the designs do (bias vs ActNorm in the coupling net)."""
    torch.manual_seed(0)
    width, steps = 64, 8
    ours = Glow(GlowConfig(image_shape=shape, levels=levels, steps=steps, width=width))
    ref = ReferenceGlow(shape, levels, steps, width)
    with torch.no_grad():
        zs, _, _ = ref(torch.rand(2, *shape) - 0.5)
    assert [tuple(z.shape[1:]) for z in zs] == ours.latent_shapes()
    n_ours = sum(p.numel() for p in ours.parameters())
    n_ref = sum(p.numel() for p in ref.parameters())
    # ours: two ActNorms (2 * 2 * width) per coupling net where the reference has two biases (2 * width);
    # ours: a per-channel top prior (2 C); the reference: a zero-input 3x3 convolution C -> 2 C with
    # bias and output scale (18 C^2 + 2 C + 2 C)
    c = ours.latent_shapes()[-1][0]
    assert n_ours - n_ref == levels * steps * 2 * width - (18 * c * c + 2 * c)


def test_reference_resnet18_matches_ours_in_size_and_shapes():
    torch.manual_seed(0)
    ours, ref = ResNet18Cifar(width=16), ReferenceResNet18(width=16)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    shapes = sorted(tuple(p.shape) for p in ours.parameters())
    assert shapes == sorted(tuple(p.shape) for p in ref.parameters())
    assert ref(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_comparison_ratio_is_the_median_of_paired_rounds():
    c = Comparison(ours=(10.0, 30.0, 20.0), reference=(10.0, 10.0, 40.0))
    assert c.ratios == (1.0, 3.0, 0.5) and c.ratio == 1.0
    calls = []
    out = compare(lambda: calls.append("a"), lambda: calls.append("b"), batch=1, device=torch.device("cpu"),
                  seconds=0.0, rounds=2)
    assert len(out.ours) == len(out.reference) == 2
    # warm-up, then A A B B (round 0: ours first), then B B A A (round 1: reference first)
    assert calls == ["a", "b", "a", "a", "b", "b", "b", "b", "a", "a"]

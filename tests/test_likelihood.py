"""Tests of ood_core.likelihood against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from _flow_checks import perturb_parameters
from ood_core.flows import Glow, GlowConfig, initialize_actnorm
from ood_core.likelihood import (
    bits_per_dim,
    dequantize,
    flow_log_likelihood,
    preprocess,
    reduce_bits,
    score_flow,
)

torch.set_num_threads(1)

LN2 = math.log(2.0)


def _images(shape=(4, 3, 4, 4), seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)


class UniformOnUnitCube(nn.Module):
    """Density 1 on [0, 1)^D, i.e. on the Glow input space [-0.5, 0.5)^D."""

    def log_prob_parts(self, x):
        assert (x >= -0.5).all() and (x < 0.5).all()
        zeros = x.new_zeros(x.shape[0])
        return zeros, zeros


class IdentityFlowStandardNormal(nn.Module):
    """z = x, prior N(0, I): log p(x) = sum log N(x_i; 0, 1), logdet = 0."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))  # sets device/dtype

    def log_prob_parts(self, x):
        log_pz = (-0.5 * x**2 - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
        return log_pz, x.new_zeros(x.shape[0])


# --------------------------------------------------------------------------------------------
# dequantize / preprocess
# --------------------------------------------------------------------------------------------


def test_dequantize_is_deterministic_in_the_seed_and_keeps_its_input():
    x = _images()
    original = x.clone()
    a = dequantize(x, torch.Generator().manual_seed(1))
    b = dequantize(x, torch.Generator().manual_seed(1))
    c = dequantize(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(dequantize(x), dequantize(x))  # default: fresh generator seeded 0
    assert torch.equal(dequantize(x), dequantize(x, torch.Generator().manual_seed(0)))
    assert torch.equal(x, original) and x.dtype == torch.uint8
    assert a.dtype == torch.get_default_dtype() and a.shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dequantize_stays_in_its_bin(dtype):
    x = torch.arange(256, dtype=torch.uint8).repeat(64).view(64, 1, 16, 16)
    y = dequantize(x, torch.Generator().manual_seed(3), dtype=dtype)
    assert y.dtype == dtype
    assert (y >= 0).all() and (y < 1).all()
    assert torch.equal(torch.floor(y * 256).to(torch.uint8), x)
    # the noise is not degenerate: roughly uniform offsets inside the bins
    offsets = (y.double() * 256 - x.double()).flatten()
    assert 0.45 < offsets.mean() < 0.55 and offsets.min() < 0.01 and offsets.max() > 0.99


def test_dequantize_clamps_when_rounding_would_reach_the_next_bin(monkeypatch):
    # u = 1 - 2**-40 makes (255 + u) / 256 round to 1.0 in float32; the result must stay in bin 255.
    real_rand = torch.rand

    def almost_one(*args, **kwargs):
        return torch.full_like(real_rand(*args, **kwargs), 1 - 2**-40)

    monkeypatch.setattr(torch, "rand", almost_one)
    x = torch.tensor([[[[0, 17, 254, 255]]]], dtype=torch.uint8)
    assert torch.tensor((255 + 1 - 2**-40) / 256, dtype=torch.float32).item() == 1.0
    y = dequantize(x, dtype=torch.float32)
    assert (y < 1).all()
    assert torch.equal(torch.floor(y * 256).to(torch.uint8), x)
    torch.testing.assert_close(y, (x.double() + 1) / 256, atol=1e-7, rtol=0, check_dtype=False)


def test_dequantize_n_bits_and_type_errors():
    x = torch.tensor([[[[0, 31]]]], dtype=torch.uint8)
    y = dequantize(x, n_bits=5)
    assert torch.equal(torch.floor(y * 32).to(torch.uint8), x)
    with pytest.raises(ValueError, match="reduce_bits"):
        dequantize(torch.tensor([[[[32]]]], dtype=torch.uint8), n_bits=5)
    torch.testing.assert_close(reduce_bits(torch.tensor([0, 7, 8, 255], dtype=torch.uint8), 5),
                               torch.tensor([0, 0, 1, 31], dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        dequantize(torch.rand(1, 1, 2, 2))
    with pytest.raises(TypeError, match="uint8"):
        dequantize(np.zeros((1, 1, 2, 2), dtype=np.uint8))


def test_preprocess_is_dequantize_minus_half():
    x = _images()
    y = preprocess(x, torch.Generator().manual_seed(4))
    assert torch.equal(y, dequantize(x, torch.Generator().manual_seed(4)) - 0.5)
    assert (y >= -0.5).all() and (y < 0.5).all()


# --------------------------------------------------------------------------------------------
# bits/dim and the discrete likelihood
# --------------------------------------------------------------------------------------------


def test_bits_per_dim_closed_form():
    ll = torch.tensor([-3072 * 8 * LN2, 0.0, -LN2])
    torch.testing.assert_close(bits_per_dim(ll, 3072), torch.tensor([8.0, 0.0, 1.0 / 3072]))
    with pytest.raises(ValueError):
        bits_per_dim(ll, 0)


@pytest.mark.parametrize("n_bits", [8, 5])
def test_uniform_density_gives_exactly_n_bits_per_dim(n_bits):
    x = reduce_bits(_images((3, 3, 4, 4)), n_bits)
    result = flow_log_likelihood(UniformOnUnitCube(), x, n_bits=n_bits)
    d = 3 * 4 * 4
    torch.testing.assert_close(result["bpd"], torch.full((3,), float(n_bits)), atol=1e-6, rtol=0)
    torch.testing.assert_close(result["log_px"], torch.full((3,), -d * n_bits * LN2))
    torch.testing.assert_close(result["bpd_pz"], torch.zeros(3))
    n_bits_each = torch.full((3,), float(n_bits))
    torch.testing.assert_close(result["bpd_logdet"], n_bits_each, atol=1e-6, rtol=0)


def test_identity_flow_with_standard_normal_prior_matches_closed_form():
    x = _images((5, 1, 4, 4))
    result = flow_log_likelihood(IdentityFlowStandardNormal(), x, torch.Generator().manual_seed(9))
    v = dequantize(x, torch.Generator().manual_seed(9), dtype=torch.float64) - 0.5
    log_density = torch.distributions.Normal(0.0, 1.0).log_prob(v).flatten(1).sum(1)
    d = 16
    expected_log_px = log_density - d * 8 * LN2
    torch.testing.assert_close(result["log_px"], expected_log_px)
    torch.testing.assert_close(result["log_pz"], log_density)
    volume = torch.full((5,), -d * 8 * LN2, dtype=torch.float64)
    torch.testing.assert_close(result["logdet"], volume)
    torch.testing.assert_close(result["bpd"], -expected_log_px / (d * LN2))
    # all-128 image: x_in = u / 256 in [0, 1/256), log N(x_in) ~ -0.5 log(2 pi) per dim,
    # so bpd ~ 8 + 0.5 log2(2 pi)
    mid = torch.full((1, 1, 4, 4), 128, dtype=torch.uint8)
    bpd_mid = flow_log_likelihood(IdentityFlowStandardNormal(), mid)["bpd"].item()
    assert abs(bpd_mid - (8 + 0.5 * math.log2(2 * math.pi))) < 1e-4


def _tiny_glow(seed=0) -> Glow:
    torch.manual_seed(seed)
    model = Glow(GlowConfig(image_shape=(3, 8, 8), levels=2, steps=2, width=8))
    initialize_actnorm(model, preprocess(_images((8, 3, 8, 8), seed=seed + 50)))
    perturb_parameters(model, 0.03, torch.Generator().manual_seed(seed + 1))
    return model


def test_glow_likelihood_decomposition():
    model = _tiny_glow()
    x = _images((4, 3, 8, 8), seed=1)
    result = flow_log_likelihood(model, x, torch.Generator().manual_seed(2))
    d = 3 * 8 * 8
    for key in ("log_px", "log_pz", "logdet", "bpd", "bpd_pz", "bpd_logdet"):
        assert result[key].shape == (4,) and torch.isfinite(result[key]).all()
    assert torch.equal(result["bpd"], result["bpd_pz"] + result["bpd_logdet"])
    torch.testing.assert_close(result["bpd"], bits_per_dim(result["log_px"], d))
    torch.testing.assert_close(result["log_px"], result["log_pz"] + result["logdet"])
    # the flow's own log-det plus the constant volume of the /256 scaling
    v = preprocess(x, torch.Generator().manual_seed(2))
    log_pz, flow_logdet = model.log_prob_parts(v)
    torch.testing.assert_close(result["log_pz"], log_pz)
    torch.testing.assert_close(result["logdet"], flow_logdet - d * 8 * LN2)
    torch.testing.assert_close(result["log_px"], model.log_prob(v) - d * 8 * LN2)


def test_score_flow_is_repeatable_and_restores_training_mode():
    model = _tiny_glow()
    model.train()
    x = _images((10, 3, 8, 8), seed=3)
    a = score_flow(model, x, batch_size=4, seed=0)
    b = score_flow(model, x.numpy(), batch_size=4, seed=0)
    c = score_flow(model, x, batch_size=4, seed=1)
    assert model.training
    assert set(a) == {"log_px", "log_pz", "logdet", "bpd", "bpd_pz", "bpd_logdet"}
    for key in a:
        assert isinstance(a[key], np.ndarray) and a[key].shape == (10,)
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["bpd"], c["bpd"])
    np.testing.assert_array_equal(a["bpd"], a["bpd_pz"] + a["bpd_logdet"])
    np.testing.assert_array_equal(a["log_px"], a["log_pz"] + a["logdet"])
    # one batch with the per-call generator equals flow_log_likelihood with the same seed
    whole = score_flow(model, x, batch_size=64, seed=7)
    with torch.no_grad():
        direct = flow_log_likelihood(model.eval(), x, torch.Generator().manual_seed(7))
    for key in ("log_pz", "logdet"):
        np.testing.assert_array_equal(whole[key], direct[key].double().numpy())
    for key in ("log_px", "bpd", "bpd_pz", "bpd_logdet"):
        np.testing.assert_allclose(whole[key], direct[key].double().numpy(), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# per-level terms (DoSE statistics)
# --------------------------------------------------------------------------------------------


def _float64_glow(levels=3, learn_prior=True, seed=0) -> Glow:
    torch.manual_seed(seed)
    config = GlowConfig(image_shape=(3, 8, 8), levels=levels, steps=2, width=8, learn_prior=learn_prior)
    model = Glow(config).double()
    initialize_actnorm(model, preprocess(_images((8, 3, 8, 8), seed=seed + 50), dtype=torch.float64))
    perturb_parameters(model, 0.03, torch.Generator().manual_seed(seed + 1))
    return model


@pytest.mark.parametrize("levels,learn_prior", [(3, True), (2, False), (1, True)])
def test_per_level_terms_sum_to_log_pz_and_match_the_latents(levels, learn_prior):
    model = _float64_glow(levels, learn_prior)
    x = _images((5, 3, 8, 8), seed=4)
    result = flow_log_likelihood(model, x, torch.Generator().manual_seed(3), per_level=True)
    level_keys = [f"log_pz_level{i}" for i in range(levels)]
    assert set(result) == {"log_px", "log_pz", "logdet", "bpd", "bpd_pz", "bpd_logdet", "z_sqnorm", *level_keys}
    total = sum(result[k] for k in level_keys)
    torch.testing.assert_close(total, result["log_pz"], atol=1e-10, rtol=0)
    # ||z||^2 of the latents forward returns, on the same dequantised input
    v = preprocess(x, torch.Generator().manual_seed(3), dtype=torch.float64)
    zs, _ = model(v)
    torch.testing.assert_close(result["z_sqnorm"], sum(z.flatten(1).pow(2).sum(1) for z in zs))
    # the top level's term is its prior's Gaussian log-density
    top = zs[-1]
    mean = model.top_mean if learn_prior else torch.zeros((), dtype=torch.float64)
    std = model.top_log_std.exp() if learn_prior else torch.ones((), dtype=torch.float64)
    expected_top = torch.distributions.Normal(mean.expand_as(top), std.expand_as(top)).log_prob(top).flatten(1).sum(1)
    torch.testing.assert_close(result[level_keys[-1]], expected_top)


def test_score_flow_per_level_keeps_the_other_entries_bit_identical():
    model = _tiny_glow()  # float32, as trained models are
    x = _images((10, 3, 8, 8), seed=3)
    plain = score_flow(model, x, batch_size=4, seed=2)
    extended = score_flow(model, x, batch_size=4, seed=2, per_level=True)
    assert set(extended) == set(plain) | {"log_pz_level0", "log_pz_level1", "z_sqnorm"}
    for key in plain:
        np.testing.assert_array_equal(extended[key], plain[key])
    for key in ("log_pz_level0", "log_pz_level1", "z_sqnorm"):
        assert extended[key].dtype == np.float64 and extended[key].shape == (10,)
    # float32 pieces cast to float64: the sum agrees to float32 rounding
    np.testing.assert_allclose(extended["log_pz_level0"] + extended["log_pz_level1"], plain["log_pz"], rtol=1e-5)
    assert (extended["z_sqnorm"] > 0).all()
    # the hooks are gone afterwards
    assert all(not level.split._forward_hooks for level in model.levels if level.split is not None)


def test_per_level_needs_a_multiscale_glow():
    with pytest.raises(TypeError, match="per_level"):
        flow_log_likelihood(IdentityFlowStandardNormal(), _images((2, 1, 4, 4)), per_level=True)
    with pytest.raises(TypeError, match="per_level"):
        score_flow(IdentityFlowStandardNormal(), _images((2, 1, 4, 4)), per_level=True)

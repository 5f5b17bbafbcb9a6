"""Mathematical tests of ood_core.analysis (Nalisnick et al. §5): Hessian terms, closed form, graying."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from _flow_checks import perturb_parameters
from ood_core import analysis as an
from ood_core.data import channel_stats, to_grayscale
from ood_core.flows import Glow, GlowConfig, initialize_actnorm

torch.set_num_threads(1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class GaussianDensity(nn.Module):
    """A "flow" whose ``log_prob`` is ``log N(vec(x); mean, cov)``: its Hessian is ``-cov^-1`` everywhere."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor) -> None:
        super().__init__()
        self.shape = tuple(mean.shape)
        self.register_buffer("mean", mean.double())
        self.register_buffer("precision", torch.linalg.inv(cov.double()))
        self.register_buffer("log_det_cov", torch.linalg.slogdet(cov.double())[1])

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        d = (x - self.mean).flatten(1)
        maha = ((d @ self.precision) * d).sum(1)
        return -0.5 * (maha + self.log_det_cov + d.shape[1] * math.log(2 * math.pi))


def _random_cov(dim: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    a = torch.randn(dim, dim, generator=_gen(seed), dtype=torch.float64)
    return scale * (a @ a.T / dim + 0.5 * torch.eye(dim, dtype=torch.float64))


def _exact_hessian(model: nn.Module, x0: torch.Tensor) -> torch.Tensor:
    shape = tuple(x0.shape)
    return torch.autograd.functional.hessian(lambda v: model.log_prob(v.view(1, *shape)).sum(),
                                             x0.reshape(-1).double())


def _exact_gradient(model: nn.Module, x0: torch.Tensor) -> torch.Tensor:
    x = x0.double()[None].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model.log_prob(x).sum(), x)
    return g[0].reshape(-1)


def _tiny_glow(coupling: str = "affine", levels: int = 2, shape=(1, 4, 4), seed: int = 0, scale: float = 0.2,
               lu: bool = True, learn_prior: bool = True) -> Glow:
    torch.manual_seed(seed)
    model = Glow(GlowConfig(shape, levels=levels, steps=2, width=4, coupling=coupling, lu=lu,
                            learn_prior=learn_prior)).double()
    initialize_actnorm(model, torch.rand(16, *shape, generator=_gen(seed), dtype=torch.float64) - 0.5)
    perturb_parameters(model, scale, _gen(seed + 1))
    return model.eval()


# --------------------------------------------------------------------------------------------
# Hutchinson, first order and the mean-shift term
# --------------------------------------------------------------------------------------------


def test_hutchinson_matches_gaussian_closed_form_within_three_standard_errors():
    shape = (2, 2, 3)
    dim = 12
    cov = _random_cov(dim, seed=1)
    model = GaussianDensity(torch.zeros(shape), cov)
    delta_var = torch.randn(shape, generator=_gen(2), dtype=torch.float64)  # mixed signs
    expected = -0.5 * float(torch.trace(torch.linalg.inv(cov) @ torch.diag(delta_var.flatten())))
    # the autograd Hessian of the toy density is -cov^-1, as the closed form assumes
    torch.testing.assert_close(_exact_hessian(model, torch.zeros(shape)), -torch.linalg.inv(cov))
    result = an.hutchinson_trace_term(model, torch.full(shape, 0.3), delta_var, n_probes=3000, generator=_gen(3))
    assert result.n_samples == 3000 and result.stderr > 0
    assert abs(result.estimate - expected) < 3 * result.stderr
    # and the standard error is honest: it is close to the estimator's exact standard deviation
    m = torch.linalg.inv(cov) @ torch.diag(delta_var.flatten())
    sym = 0.5 * (m + m.T)
    exact_sd = 0.5 * math.sqrt(2 * float((sym**2).sum() - (torch.diagonal(sym) ** 2).sum()))
    assert result.stderr == pytest.approx(exact_sd / math.sqrt(3000), rel=0.1)


def test_hutchinson_is_exact_when_hessian_times_d_is_diagonal():
    shape = (1, 2, 3)
    variances = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    model = GaussianDensity(torch.zeros(shape), torch.diag(variances))
    delta_var = torch.randn(shape, generator=_gen(5), dtype=torch.float64)
    result = an.hutchinson_trace_term(model, torch.zeros(shape), delta_var, n_probes=8, generator=_gen(6))
    expected = -0.5 * float((delta_var.flatten() / variances).sum())
    assert result.estimate == pytest.approx(expected, rel=1e-12)
    assert result.stderr == pytest.approx(0.0, abs=1e-12)


def test_hutchinson_batched_deltas_equal_single_calls_with_the_same_probes():
    model = _tiny_glow()
    x0 = torch.zeros(1, 4, 4, dtype=torch.float64)
    deltas = torch.randn(3, 1, 4, 4, generator=_gen(7), dtype=torch.float64)
    batched = an.hutchinson_trace_term(model, x0, deltas, n_probes=10, generator=_gen(8))
    assert batched.estimate.shape == (3,)
    for i in range(3):
        single = an.hutchinson_trace_term(model, x0, deltas[i], n_probes=10, generator=_gen(8), batch_size=3)
        assert single.estimate == pytest.approx(batched.estimate[i], rel=1e-10)
        assert single.stderr == pytest.approx(batched.stderr[i], rel=1e-10)


def test_hutchinson_on_a_glow_agrees_with_the_exact_hessian_trace():
    model = _tiny_glow("affine")
    x0 = 0.1 * torch.randn(1, 4, 4, generator=_gen(9), dtype=torch.float64)
    delta_var = torch.rand(1, 4, 4, generator=_gen(10), dtype=torch.float64) - 0.3
    hessian = _exact_hessian(model, x0)
    assert (hessian - hessian.T).abs().max() < 1e-8
    off_diagonal = hessian - torch.diag(torch.diagonal(hessian))
    assert off_diagonal.abs().max() > 1e-3  # the test is not trivially exact
    expected = 0.5 * float(torch.trace(hessian @ torch.diag(delta_var.flatten())))
    result = an.hutchinson_trace_term(model, x0, delta_var, n_probes=600, generator=_gen(11))
    assert abs(result.estimate - expected) < 3 * result.stderr


def test_hvp_first_order_and_mean_shift_terms_match_autograd():
    model = _tiny_glow("affine", seed=3)
    shape = (1, 4, 4)
    x0 = 0.1 * torch.randn(shape, generator=_gen(12), dtype=torch.float64)
    hessian, grad = _exact_hessian(model, x0), _exact_gradient(model, x0)
    vectors = torch.randn(5, *shape, generator=_gen(13), dtype=torch.float64)
    hv = an.hessian_vector_products(model, x0, vectors, batch_size=2)
    torch.testing.assert_close(hv.flatten(1), vectors.flatten(1) @ hessian, rtol=1e-8, atol=1e-10)

    delta = torch.randn(shape, generator=_gen(14), dtype=torch.float64)
    assert an.first_order_term(model, x0, delta) == pytest.approx(float(grad @ delta.flatten()), rel=1e-10)
    many = an.first_order_term(model, x0, torch.stack([delta, 2 * delta]))
    np.testing.assert_allclose(many, [float(grad @ delta.flatten()), 2 * float(grad @ delta.flatten())], rtol=1e-10)

    mean_q, mean_p = vectors[0] * 0.1, vectors[1] * 0.1
    a, b = (mean_q - x0).flatten(), (mean_p - x0).flatten()
    expected = 0.5 * float(a @ hessian @ a - b @ hessian @ b)
    assert an.mean_shift_term(model, x0, mean_q, mean_p) == pytest.approx(expected, rel=1e-8)


def test_derivatives_leave_the_callers_model_untouched():
    model = _tiny_glow("additive").float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    an.hutchinson_trace_term(model, torch.zeros(1, 4, 4), torch.ones(1, 4, 4), n_probes=4)
    an.first_order_term(model, torch.zeros(1, 4, 4), torch.ones(1, 4, 4))
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------------------------
# The paper's closed form for CV-Glow
# --------------------------------------------------------------------------------------------


def _cv_glow_where_the_paper_holds(sigma: float, seed: int = 0) -> Glow:
    """One level, diagonal 1x1 convs, constant (zero) couplings, prior N(m, sigma^2): a linear CV-Glow."""
    torch.manual_seed(seed)
    shape = (3, 4, 4)
    model = Glow(GlowConfig(shape, levels=1, steps=2, width=4, coupling="additive", lu=False)).double()
    initialize_actnorm(model, torch.rand(8, *shape, dtype=torch.float64) - 0.5)
    g = _gen(seed + 1)
    with torch.no_grad():
        for step in model.levels[0].steps:
            step.actnorm.log_scale.copy_(0.3 * torch.randn(step.actnorm.log_scale.shape, generator=g,
                                                           dtype=torch.float64))
            step.actnorm.bias.copy_(torch.randn(step.actnorm.bias.shape, generator=g, dtype=torch.float64))
            diag = 0.5 + torch.rand(12, generator=g, dtype=torch.float64)
            signs = torch.where(torch.rand(12, generator=g) < 0.5, -1.0, 1.0).double()
            step.invconv.weight_matrix.copy_(torch.diag(signs * diag))
        model.top_mean.copy_(torch.randn(model.top_mean.shape, generator=g, dtype=torch.float64))
        model.top_log_std.fill_(math.log(sigma))
    return model.eval()


@pytest.mark.parametrize("sigma", [1.0, 0.7])
def test_closed_form_equals_the_exact_hessian_where_the_papers_assumptions_hold(sigma):
    model = _cv_glow_where_the_paper_holds(sigma)
    shape = (3, 4, 4)
    x0 = 0.2 * torch.randn(shape, generator=_gen(20), dtype=torch.float64)
    var_id = 0.01 * torch.rand(shape, generator=_gen(21), dtype=torch.float64)
    var_ood = 0.01 * torch.rand(shape, generator=_gen(22), dtype=torch.float64)
    hessian = _exact_hessian(model, x0)
    # a linear flow into an isotropic Gaussian with diagonal 1x1 convs: the Hessian is diagonal
    torch.testing.assert_close(hessian, torch.diag(torch.diagonal(hessian)), rtol=0, atol=1e-10)

    closed = an.cv_glow_closed_form(model, var_ood, var_id, sigma=sigma)
    # the per-channel curvature is the Hessian diagonal, read through the squeeze
    squeezed_diag, _ = model.levels[0].squeeze(torch.diagonal(hessian).view(1, *shape))
    for c in range(12):
        torch.testing.assert_close(squeezed_diag[0, c], torch.full_like(squeezed_diag[0, c], closed.curvature[c]))
    exact_gap = 0.5 * float(torch.diagonal(hessian) @ (var_ood - var_id).flatten())
    assert closed.gap_nats == pytest.approx(exact_gap, rel=1e-10)
    assert closed.gap_bpd == pytest.approx(exact_gap / (48 * math.log(2)), rel=1e-12)
    hutch = an.hutchinson_trace_term(model, x0, var_ood - var_id, n_probes=4, generator=_gen(23))
    assert hutch.estimate == pytest.approx(closed.gap_nats, rel=1e-9)
    assert an.effective_prior_sigma(model, x0[None]) == pytest.approx(sigma, rel=1e-12)
    # lower OOD variance everywhere -> predicted gap > 0 (OOD favoured), as the paper argues
    assert an.cv_glow_closed_form(model, 0.5 * var_id, var_id, sigma=sigma).gap_nats > 0


def test_channel_gains_and_gap_against_a_hand_computation():
    model = _tiny_glow("additive", levels=2, shape=(3, 4, 4), seed=4, scale=0.3)
    level = model.levels[0]
    weights = model.invconv_weights()
    assert len(weights) == 4  # 2 levels x 2 steps; only the first level's two enter the formula
    expected = []
    for c in range(12):
        product = 1.0
        for k in range(2):
            w = weights[k].detach()
            a = math.exp(float(level.steps[k].actnorm.log_scale.detach().flatten()[c]))
            product *= a * sum(float(w[j, c]) for j in range(12))
        expected.append(product)
    np.testing.assert_allclose(an.channel_gains(model), expected, rtol=1e-12)
    unfolded = [math.prod(sum(float(weights[k].detach()[j, c]) for j in range(12)) for k in range(2))
                for c in range(12)]
    np.testing.assert_allclose(an.channel_gains(model, fold_actnorm=False), unfolded, rtol=1e-12)

    var_id = torch.rand(3, 4, 4, generator=_gen(30), dtype=torch.float64)
    var_ood = torch.rand(3, 4, 4, generator=_gen(31), dtype=torch.float64)
    sigma = 1.3
    delta = var_ood - var_id
    gap = 0.0
    for c in range(3):
        for i in range(2):
            for j in range(2):
                gap += -0.5 / sigma**2 * expected[4 * c + 2 * i + j] ** 2 * float(delta[c, i::2, j::2].sum())
    closed = an.cv_glow_closed_form(model, var_ood, var_id, sigma=sigma)
    assert closed.gap_nats == pytest.approx(gap, rel=1e-12)
    np.testing.assert_allclose(closed.curvature, -np.asarray(expected) ** 2 / sigma**2, rtol=1e-12)
    np.testing.assert_allclose(closed.curvature_input, closed.curvature.reshape(3, 4).mean(1), rtol=1e-12)


def test_closed_form_validates_its_inputs():
    model = _cv_glow_where_the_paper_holds(1.0)
    good = torch.zeros(3, 4, 4)
    with pytest.raises(ValueError, match="C, H, W"):
        an.cv_glow_closed_form(model, torch.zeros(3, 4, 5), good)
    with pytest.raises(ValueError, match="sigma"):
        an.cv_glow_closed_form(model, good, good, sigma=0.0)
    assert an.cv_glow_closed_form(model, good, good).gap_nats == 0.0


def test_effective_prior_sigma_is_one_for_a_fixed_prior():
    model = _tiny_glow("additive", learn_prior=False)
    assert an.effective_prior_sigma(model, torch.zeros(2, 1, 4, 4, dtype=torch.float64)) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------
# Moments and the table
# --------------------------------------------------------------------------------------------


def _images(n: int, shape, seed: int, low: int = 0, high: int = 256) -> torch.Tensor:
    return torch.randint(low, high, (n, *shape), generator=_gen(seed)).to(torch.uint8)


def test_model_space_moments_against_hand_formulas():
    x = _images(50, (3, 4, 4), seed=40)
    torch.testing.assert_close(an.model_space_mean(x), (x.double().mean(0) + 0.5) / 256 - 0.5)
    torch.testing.assert_close(an.pixel_variance(x), x.double().var(0, unbiased=False) / 256**2)


def test_second_order_table_is_exact_for_a_gaussian_density():
    """For a Gaussian the second-order expansion is exact: every prediction must equal the measurement.

    Diagonal covariance, so eq. (5) with per-pixel variances plus the mean-shift term is exact too,
    and the Hutchinson estimate has zero variance.
    """
    shape = (1, 3, 3)
    variances = torch.linspace(0.01, 0.05, 9, dtype=torch.float64)
    model = GaussianDensity(torch.full(shape, 0.05), torch.diag(variances))
    sets = {"id": _images(40, shape, seed=41, low=60, high=200), "ood": _images(30, shape, seed=42, low=100, high=160)}
    centres = {k: (x.double() + 0.5) / 256 - 0.5 for k, x in sets.items()}
    bpd = {k: (-model.log_prob(c) / (9 * math.log(2))).numpy() for k, c in centres.items()}
    table = an.second_order_table(model, sets, "id", bpd=bpd, n_probes=4, n_taylor=40, names={"ood": "OOD set"})
    row = table.loc["OOD set"]
    measured = float(bpd["id"].mean() - bpd["ood"].mean())
    assert row["measured"] == pytest.approx(measured, rel=1e-12)
    assert row["eq. (5), diag. Σ: 1st + 2nd"] + row["mean-shift term"] == pytest.approx(measured, rel=1e-9)
    assert row["Taylor, full Σ"] == pytest.approx(measured, rel=1e-9)
    assert row["± s.e."] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(row["closed form (σ=1)"])  # not a Glow
    assert measured > 0  # the OOD set has the lower variance here: it is favoured


def test_second_order_table_on_glows():
    sets = {"ID": _images(12, (1, 4, 4), seed=50), "OOD": _images(10, (1, 4, 4), seed=51, low=100, high=150)}
    cv = an.second_order_table(_tiny_glow("additive"), sets, "ID", n_probes=6)
    assert np.isfinite(cv.loc["OOD", "closed form (σ=1)"]) and np.isfinite(cv.loc["OOD", "closed form (learned σ)"])
    affine = an.second_order_table(_tiny_glow("affine"), sets, "ID", n_probes=6)
    assert np.isnan(affine.loc["OOD", "closed form (σ=1)"])
    assert list(affine.index) == ["OOD"] and "Taylor, full Σ" not in affine.columns


def test_variance_table_fractions_and_ratios():
    x_id = _images(40, (1, 4, 4), seed=60)
    x_low = (x_id // 2 + 64).to(torch.uint8)  # half the spread: a quarter of the variance, up to rounding
    table = an.variance_table({"id": x_id, "low": x_low}, "id")
    assert table.loc[("id", 0), "variance ratio to ID"] == pytest.approx(1.0)
    assert table.loc[("low", 0), "fraction of pixels with lower variance than ID"] == 1.0
    assert table.loc[("low", 0), "variance ratio to ID"] == pytest.approx(0.25, abs=0.02)


# --------------------------------------------------------------------------------------------
# Graying
# --------------------------------------------------------------------------------------------


def test_blend_gray_endpoints_and_input_untouched():
    x = _images(6, (3, 5, 5), seed=70)
    original = x.clone()
    assert torch.equal(an.blend_gray(x, 0.0), x)
    full = an.blend_gray(x, 1.0)
    assert torch.equal(full, to_grayscale(x))
    assert torch.equal(full[:, 0], full[:, 1]) and torch.equal(full[:, 1], full[:, 2])
    half = an.blend_gray(x, 0.5)
    expected = (0.5 * x.double() + 0.5 * to_grayscale(x).double()).round().to(torch.uint8)
    assert half.dtype == torch.uint8 and torch.equal(half, expected)
    assert torch.equal(x, original)
    assert an.blend_gray(x, 0.0).data_ptr() != x.data_ptr()


def test_blend_gray_lowers_the_spread_between_channels_monotonically():
    x = _images(20, (3, 6, 6), seed=71)
    spreads = [float(an.blend_gray(x, a).double().std(1).mean()) for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(s1 > s2 for s1, s2 in zip(spreads, spreads[1:])) and spreads[-1] == 0.0


def test_blend_gray_validates_alpha_and_input():
    x = _images(2, (3, 2, 2), seed=72)
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            an.blend_gray(x, alpha)
    with pytest.raises(TypeError):
        an.blend_gray(x.float(), 0.5)
    gray_input = _images(2, (1, 2, 2), seed=73)
    assert torch.equal(an.blend_gray(gray_input, 0.7), gray_input)


def test_graying_table_columns_and_reference_row():
    x = _images(16, (3, 4, 4), seed=74)
    model = _tiny_glow("additive", levels=1, shape=(3, 4, 4)).float()
    table = an.graying_table(model, x, (0.0, 0.5, 1.0), batch_size=8)
    assert list(table.index) == [0.0, 0.5, 1.0]
    assert table.loc[0.0, "measured gain"] == 0.0 and table.loc[0.0, "closed-form gain"] == pytest.approx(0.0)
    assert table.loc[0.0, "mean per-pixel variance"] == pytest.approx(
        float(np.mean(channel_stats(x)["pixel_var"])), rel=1e-12)
    np.testing.assert_allclose(table["measured gain"], table.loc[0.0, "mean bpd"] - table["mean bpd"])


def test_channel_curvature_is_the_mean_hessian_diagonal_per_squeezed_channel():
    model = _tiny_glow("affine", levels=1, shape=(1, 4, 4), seed=6)
    x0 = 0.1 * torch.randn(1, 4, 4, generator=_gen(80), dtype=torch.float64)
    diag = torch.diagonal(_exact_hessian(model, x0)).view(1, 1, 4, 4)
    squeezed, _ = model.levels[0].squeeze(diag)
    expected = squeezed[0].mean((1, 2)).numpy()
    result = an.channel_curvature(model, x0, n_probes=400, generator=_gen(81))
    assert result.estimate.shape == (4,)
    assert np.all(np.abs(result.estimate - expected) < 3 * result.stderr + 1e-12)
    # exact (zero variance) for a diagonal Gaussian: curvature -1/variance per channel
    variances = torch.arange(1.0, 17.0, dtype=torch.float64)
    gaussian = GaussianDensity(torch.zeros(1, 4, 4), torch.diag(variances))
    exact = an.channel_curvature(gaussian, torch.zeros(1, 4, 4), n_probes=3, generator=_gen(82))
    squeezed_var, _ = model.levels[0].squeeze((-1.0 / variances).view(1, 1, 4, 4))
    np.testing.assert_allclose(exact.estimate, squeezed_var[0].mean((1, 2)).numpy(), rtol=1e-12)


def test_graying_table_uses_given_scores():
    x = _images(8, (3, 4, 4), seed=75)
    model = _tiny_glow("affine", levels=1, shape=(3, 4, 4)).float()
    given = {0.0: np.full(8, 5.0), 1.0: np.full(8, 4.5)}
    table = an.graying_table(model, x, (0.0, 1.0), bpd=given)
    assert table.loc[1.0, "measured gain"] == pytest.approx(0.5)
    assert np.isnan(table.loc[1.0, "closed-form gain"])  # affine: no closed form

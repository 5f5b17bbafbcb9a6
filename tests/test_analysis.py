"""Mathematical tests of ood_core.second_order, graying and flow_diagnostics (Nalisnick et al. §5: Hessian
terms, closed form, graying; Kirichenko et al.: couplings and latents)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from _flow_checks import perturb_parameters
from ood_core import flow_diagnostics as fd, graying as gr, second_order as so
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
    result = so.hutchinson_trace_term(model, torch.full(shape, 0.3), delta_var, n_probes=3000, generator=_gen(3))
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
    result = so.hutchinson_trace_term(model, torch.zeros(shape), delta_var, n_probes=8, generator=_gen(6))
    expected = -0.5 * float((delta_var.flatten() / variances).sum())
    assert result.estimate == pytest.approx(expected, rel=1e-12)
    assert result.stderr == pytest.approx(0.0, abs=1e-12)


def test_hutchinson_batched_deltas_equal_single_calls_with_the_same_probes():
    model = _tiny_glow()
    x0 = torch.zeros(1, 4, 4, dtype=torch.float64)
    deltas = torch.randn(3, 1, 4, 4, generator=_gen(7), dtype=torch.float64)
    batched = so.hutchinson_trace_term(model, x0, deltas, n_probes=10, generator=_gen(8))
    assert batched.estimate.shape == (3,)
    for i in range(3):
        single = so.hutchinson_trace_term(model, x0, deltas[i], n_probes=10, generator=_gen(8), batch_size=3)
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
    result = so.hutchinson_trace_term(model, x0, delta_var, n_probes=600, generator=_gen(11))
    assert abs(result.estimate - expected) < 3 * result.stderr


def test_hvp_first_order_and_mean_shift_terms_match_autograd():
    model = _tiny_glow("affine", seed=3)
    shape = (1, 4, 4)
    x0 = 0.1 * torch.randn(shape, generator=_gen(12), dtype=torch.float64)
    hessian, grad = _exact_hessian(model, x0), _exact_gradient(model, x0)
    vectors = torch.randn(5, *shape, generator=_gen(13), dtype=torch.float64)
    hv = so.hessian_vector_products(model, x0, vectors, batch_size=2)
    torch.testing.assert_close(hv.flatten(1), vectors.flatten(1) @ hessian, rtol=1e-8, atol=1e-10)

    delta = torch.randn(shape, generator=_gen(14), dtype=torch.float64)
    assert so.first_order_term(model, x0, delta) == pytest.approx(float(grad @ delta.flatten()), rel=1e-10)
    many = so.first_order_term(model, x0, torch.stack([delta, 2 * delta]))
    np.testing.assert_allclose(many, [float(grad @ delta.flatten()), 2 * float(grad @ delta.flatten())], rtol=1e-10)

    mean_q, mean_p = vectors[0] * 0.1, vectors[1] * 0.1
    a, b = (mean_q - x0).flatten(), (mean_p - x0).flatten()
    expected = 0.5 * float(a @ hessian @ a - b @ hessian @ b)
    assert so.mean_shift_term(model, x0, mean_q, mean_p) == pytest.approx(expected, rel=1e-8)


def test_derivatives_leave_the_callers_model_untouched():
    model = _tiny_glow("additive").float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    so.hutchinson_trace_term(model, torch.zeros(1, 4, 4), torch.ones(1, 4, 4), n_probes=4)
    so.first_order_term(model, torch.zeros(1, 4, 4), torch.ones(1, 4, 4))
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

    closed = so.cv_glow_closed_form(model, var_ood, var_id, sigma=sigma)
    # the per-channel curvature is the Hessian diagonal, read through the squeeze
    squeezed_diag, _ = model.levels[0].squeeze(torch.diagonal(hessian).view(1, *shape))
    for c in range(12):
        torch.testing.assert_close(squeezed_diag[0, c], torch.full_like(squeezed_diag[0, c], closed.curvature[c]))
    exact_gap = 0.5 * float(torch.diagonal(hessian) @ (var_ood - var_id).flatten())
    assert closed.gap_nats == pytest.approx(exact_gap, rel=1e-10)
    assert closed.gap_bpd == pytest.approx(exact_gap / (48 * math.log(2)), rel=1e-12)
    hutch = so.hutchinson_trace_term(model, x0, var_ood - var_id, n_probes=4, generator=_gen(23))
    assert hutch.estimate == pytest.approx(closed.gap_nats, rel=1e-9)
    assert so.effective_prior_sigma(model, x0[None]) == pytest.approx(sigma, rel=1e-12)
    # lower OOD variance everywhere -> predicted gap > 0 (OOD favoured), as the paper argues
    assert so.cv_glow_closed_form(model, 0.5 * var_id, var_id, sigma=sigma).gap_nats > 0


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
    np.testing.assert_allclose(so.channel_gains(model), expected, rtol=1e-12)
    unfolded = [math.prod(sum(float(weights[k].detach()[j, c]) for j in range(12)) for k in range(2))
                for c in range(12)]
    np.testing.assert_allclose(so.channel_gains(model, fold_actnorm=False), unfolded, rtol=1e-12)

    var_id = torch.rand(3, 4, 4, generator=_gen(30), dtype=torch.float64)
    var_ood = torch.rand(3, 4, 4, generator=_gen(31), dtype=torch.float64)
    sigma = 1.3
    delta = var_ood - var_id
    gap = 0.0
    for c in range(3):
        for i in range(2):
            for j in range(2):
                gap += -0.5 / sigma**2 * expected[4 * c + 2 * i + j] ** 2 * float(delta[c, i::2, j::2].sum())
    closed = so.cv_glow_closed_form(model, var_ood, var_id, sigma=sigma)
    assert closed.gap_nats == pytest.approx(gap, rel=1e-12)
    np.testing.assert_allclose(closed.curvature, -np.asarray(expected) ** 2 / sigma**2, rtol=1e-12)
    np.testing.assert_allclose(closed.curvature_input, closed.curvature.reshape(3, 4).mean(1), rtol=1e-12)


def test_closed_form_validates_its_inputs():
    model = _cv_glow_where_the_paper_holds(1.0)
    good = torch.zeros(3, 4, 4)
    with pytest.raises(ValueError, match="C, H, W"):
        so.cv_glow_closed_form(model, torch.zeros(3, 4, 5), good)
    with pytest.raises(ValueError, match="sigma"):
        so.cv_glow_closed_form(model, good, good, sigma=0.0)
    assert so.cv_glow_closed_form(model, good, good).gap_nats == 0.0


def test_effective_prior_sigma_is_one_for_a_fixed_prior():
    model = _tiny_glow("additive", learn_prior=False)
    assert so.effective_prior_sigma(model, torch.zeros(2, 1, 4, 4, dtype=torch.float64)) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------
# Moments and the table
# --------------------------------------------------------------------------------------------


def _images(n: int, shape, seed: int, low: int = 0, high: int = 256) -> torch.Tensor:
    return torch.randint(low, high, (n, *shape), generator=_gen(seed)).to(torch.uint8)


def test_model_space_moments_against_hand_formulas():
    x = _images(50, (3, 4, 4), seed=40)
    torch.testing.assert_close(so.model_space_mean(x), (x.double().mean(0) + 0.5) / 256 - 0.5)
    torch.testing.assert_close(so.pixel_variance(x), x.double().var(0, unbiased=False) / 256**2)


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
    table = so.second_order_table(model, sets, "id", bpd=bpd, n_probes=4, n_taylor=40, names={"ood": "OOD set"})
    row = table.loc["OOD set"]
    measured = float(bpd["id"].mean() - bpd["ood"].mean())
    assert row["measured"] == pytest.approx(measured, rel=1e-12)
    assert row["eq. (5), diag. Σ: 1st + 2nd"] + row["mean-shift term"] == pytest.approx(measured, rel=1e-9)
    assert row["Taylor, full Σ"] == pytest.approx(measured, rel=1e-9)
    assert row["± s.e."] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(row["closed form (σ=1)"])  # not a Glow
    assert measured > 0  # the OOD set has the lower variance here: it is favoured


def _closed_form_by_hand(model, var_ood, var_id, sigma):
    """Nalisnick et al. eq. (6) written out: ``-(1/(2 sigma^2)) sum_c (prod_k sum_j u_kcj a_kc)^2 sum_hw dvar``, bits/dim.

    ``u_kcj = W_k[j, c]`` (column sums of PyTorch's ``[out, in]`` 1x1-conv matrices), ActNorm scales ``a_kc``
    folded in, ``c`` the squeezed channel ``4 c_in + 2 i + j`` of input channel ``c_in`` at offset ``(i, j)``.
    """
    level = model.levels[0]
    weights = model.invconv_weights()[:len(level.steps)]
    gains = np.ones(4 * var_id.shape[0])
    for step, w in zip(level.steps, weights):
        gains = gains * (w.detach().double().sum(0) * step.actnorm.log_scale.detach().double().flatten().exp()).numpy()
    dvar = (var_ood - var_id).double()
    total = 0.0
    for c in range(var_id.shape[0]):
        for i in range(2):
            for j in range(2):
                total += gains[4 * c + 2 * i + j] ** 2 * float(dvar[c, i::2, j::2].sum())
    return -total / (2 * sigma**2) / (var_id.numel() * math.log(2))


def test_second_order_table_on_glows():
    """The table's closed-form columns are eq. (6) computed by hand, its measured gap the mean bits/dim of
    score_flow, and eq. (5) the sum of its two terms -- values, not only finiteness."""
    from ood_core.likelihood import score_flow

    sets = {"ID": _images(12, (1, 4, 4), seed=50), "OOD": _images(10, (1, 4, 4), seed=51, low=100, high=150)}
    model = _tiny_glow("additive")
    cv = so.second_order_table(model, sets, "ID", n_probes=6)
    var_id, var_ood = so.pixel_variance(sets["ID"]), so.pixel_variance(sets["OOD"])
    row = cv.loc["OOD"]
    assert row["closed form (σ=1)"] == pytest.approx(_closed_form_by_hand(model, var_ood, var_id, 1.0), rel=1e-10)
    sigma = cv.attrs["sigma_learned"]
    assert np.isfinite(sigma) and sigma > 0
    assert row["closed form (learned σ)"] == pytest.approx(_closed_form_by_hand(model, var_ood, var_id, sigma),
                                                           rel=1e-10)
    assert row["closed form (learned σ)"] == pytest.approx(row["closed form (σ=1)"] / sigma**2, rel=1e-10)
    assert row["closed form (σ=1)"] > 0  # the OOD set has the smaller per-pixel variance: the formula favours it
    bpd = {k: score_flow(model, x, seed=0)["bpd"] for k, x in sets.items()}
    assert row["measured"] == pytest.approx(float(bpd["ID"].mean() - bpd["OOD"].mean()), rel=1e-10)
    assert row["eq. (5), diag. Σ: 1st + 2nd"] == pytest.approx(row["1st order"] + row["2nd order, diag. Σ (Hutchinson)"],
                                                               rel=1e-12)
    affine = so.second_order_table(_tiny_glow("affine"), sets, "ID", n_probes=6)
    assert np.isnan(affine.loc["OOD", "closed form (σ=1)"])
    assert list(affine.index) == ["OOD"] and "Taylor, full Σ" not in affine.columns


def test_variance_table_fractions_and_ratios():
    x_id = _images(40, (1, 4, 4), seed=60)
    x_low = (x_id // 2 + 64).to(torch.uint8)  # half the spread: a quarter of the variance, up to rounding
    table = so.variance_table({"id": x_id, "low": x_low}, "id")
    assert table.loc[("id", 0), "variance ratio to ID"] == pytest.approx(1.0)
    assert table.loc[("low", 0), "fraction of pixels with lower variance than ID"] == 1.0
    assert table.loc[("low", 0), "variance ratio to ID"] == pytest.approx(0.25, abs=0.02)


# --------------------------------------------------------------------------------------------
# Graying
# --------------------------------------------------------------------------------------------


def test_blend_gray_endpoints_and_input_untouched():
    x = _images(6, (3, 5, 5), seed=70)
    original = x.clone()
    assert torch.equal(gr.blend_gray(x, 0.0), x)
    full = gr.blend_gray(x, 1.0)
    assert torch.equal(full, to_grayscale(x))
    assert torch.equal(full[:, 0], full[:, 1]) and torch.equal(full[:, 1], full[:, 2])
    half = gr.blend_gray(x, 0.5)
    expected = (0.5 * x.double() + 0.5 * to_grayscale(x).double()).round().to(torch.uint8)
    assert half.dtype == torch.uint8 and torch.equal(half, expected)
    assert torch.equal(x, original)
    assert gr.blend_gray(x, 0.0).data_ptr() != x.data_ptr()


def test_blend_gray_lowers_the_spread_between_channels_monotonically():
    x = _images(20, (3, 6, 6), seed=71)
    spreads = [float(gr.blend_gray(x, a).double().std(1).mean()) for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(s1 > s2 for s1, s2 in zip(spreads, spreads[1:])) and spreads[-1] == 0.0


def test_blend_gray_validates_alpha_and_input():
    x = _images(2, (3, 2, 2), seed=72)
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            gr.blend_gray(x, alpha)
    with pytest.raises(TypeError):
        gr.blend_gray(x.float(), 0.5)
    gray_input = _images(2, (1, 2, 2), seed=73)
    assert torch.equal(gr.blend_gray(gray_input, 0.7), gray_input)


def test_graying_table_columns_and_reference_row():
    x = _images(16, (3, 4, 4), seed=74)
    model = _tiny_glow("additive", levels=1, shape=(3, 4, 4)).float()
    table = gr.graying_table(model, x, (0.0, 0.5, 1.0), batch_size=8)
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
    result = so.channel_curvature(model, x0, n_probes=400, generator=_gen(81))
    assert result.estimate.shape == (4,)
    assert np.all(np.abs(result.estimate - expected) < 3 * result.stderr + 1e-12)
    # exact (zero variance) for a diagonal Gaussian: curvature -1/variance per channel
    variances = torch.arange(1.0, 17.0, dtype=torch.float64)
    gaussian = GaussianDensity(torch.zeros(1, 4, 4), torch.diag(variances))
    exact = so.channel_curvature(gaussian, torch.zeros(1, 4, 4), n_probes=3, generator=_gen(82))
    squeezed_var, _ = model.levels[0].squeeze((-1.0 / variances).view(1, 1, 4, 4))
    np.testing.assert_allclose(exact.estimate, squeezed_var[0].mean((1, 2)).numpy(), rtol=1e-12)


def test_graying_table_uses_given_scores():
    x = _images(8, (3, 4, 4), seed=75)
    model = _tiny_glow("affine", levels=1, shape=(3, 4, 4)).float()
    given = {0.0: np.full(8, 5.0), 1.0: np.full(8, 4.5)}
    table = gr.graying_table(model, x, (0.0, 1.0), bpd=given)
    assert table.loc[1.0, "measured gain"] == pytest.approx(0.5)
    assert np.isnan(table.loc[1.0, "closed-form gain"])  # affine: no closed form


# --------------------------------------------------------------------------------------------
# The linearised exact curvature: where the closed form stops holding
# --------------------------------------------------------------------------------------------


def _linear_cv_glow(weights, log_scales=None, sigma: float = 1.0, seed: int = 0) -> Glow:
    """A one-level CV-Glow on 1x4x4 images (4 squeezed channels) whose steps are exactly linear.

    The 1x1 convolutions are ``weights`` (``[out, in]``), the ActNorm log-scales ``log_scales``
    (zero by default) with random biases; the couplings keep their zero-initialised output
    convolution, so ``t = 0``; the top prior is ``N(m, sigma^2 I)`` with a random ``m``.
    """
    torch.manual_seed(seed)
    shape = (1, 4, 4)
    model = Glow(GlowConfig(shape, levels=1, steps=len(weights), width=4, coupling="additive", lu=False)).double()
    initialize_actnorm(model, torch.rand(8, *shape, generator=_gen(seed), dtype=torch.float64) - 0.5)
    g = _gen(seed + 1)
    with torch.no_grad():
        for k, step in enumerate(model.levels[0].steps):
            step.invconv.weight_matrix.copy_(torch.as_tensor(weights[k], dtype=torch.float64))
            step.actnorm.log_scale.copy_(torch.zeros(1, 4, 1, 1, dtype=torch.float64) if log_scales is None else
                                         torch.as_tensor(log_scales[k], dtype=torch.float64).view(1, 4, 1, 1))
            step.actnorm.bias.copy_(torch.randn(1, 4, 1, 1, generator=g, dtype=torch.float64))
        model.top_mean.copy_(torch.randn(model.top_mean.shape, generator=g, dtype=torch.float64))
        model.top_log_std.fill_(math.log(sigma))
    return model.eval()


def _squeezed_hessian_diagonal(model: Glow, seed: int = 90) -> np.ndarray:
    """The exact Hessian diagonal of ``log p`` at a random point, per squeezed channel (constant over its pixels)."""
    x0 = 0.2 * torch.randn(1, 4, 4, generator=_gen(seed), dtype=torch.float64)
    diag = torch.diagonal(_exact_hessian(model, x0)).view(1, 1, 4, 4)
    squeezed, _ = model.levels[0].squeeze(diag)
    per_pixel = squeezed[0].flatten(1)
    torch.testing.assert_close(per_pixel, per_pixel[:, :1].expand_as(per_pixel), rtol=0, atol=1e-10)  # linear flow
    return per_pixel[:, 0].numpy()


# pi(c) = c + 1 (mod 4), a 4-cycle; W = diag(d) P sends channel c to pi(c) with gain d[pi(c)]
_CYCLE = [1, 2, 3, 0]


def _scaled_cycle(d) -> torch.Tensor:
    w = torch.zeros(4, 4, dtype=torch.float64)
    for c, target in enumerate(_CYCLE):
        w[target, c] = d[target]
    return w


@pytest.mark.parametrize("sigma", [1.0, 0.6])
def test_k1_scaled_permutation_uses_column_sums_not_row_sums(sigma):
    d = [1.0, 2.0, 3.0, 4.0]
    w = _scaled_cycle(d)
    # by hand: column c holds one entry d[c + 1], row j one entry d[j]
    assert w.sum(0).tolist() == [2.0, 3.0, 4.0, 1.0] and w.sum(1).tolist() == [1.0, 2.0, 3.0, 4.0]
    model = _linear_cv_glow([w], sigma=sigma)
    hessian = _squeezed_hessian_diagonal(model)
    by_hand = -np.array([2.0, 3.0, 4.0, 1.0]) ** 2 / sigma**2
    np.testing.assert_allclose(hessian, by_hand, rtol=1e-10)
    zero = torch.zeros(1, 4, 4, dtype=torch.float64)
    closed = so.cv_glow_closed_form(model, zero, zero, sigma=sigma)
    exact = so.cv_glow_linearised_exact(model, zero, zero, sigma=sigma)
    np.testing.assert_allclose(closed.curvature, by_hand, rtol=1e-12)  # column sums: right
    np.testing.assert_allclose(exact.curvature, by_hand, rtol=1e-12)
    # one entry per column: |column sum| = column norm, so the two agree at K = 1 ...
    assert closed.form == so.CLOSED_FORM and exact.form == so.LINEARISED_EXACT
    # ... while row sums (the transposed index convention) would give -(1, 4, 9, 16) / sigma^2
    row_sums = -np.array([1.0, 2.0, 3.0, 4.0]) ** 2 / sigma**2
    assert np.abs(hessian - row_sums).max() > 5.0 / sigma**2


def test_k2_scaled_permutations_closed_form_follows_the_wrong_channel():
    d1, d2 = [1.0, 2.0, 3.0, 4.0], [0.5, -1.5, 2.5, 1.0]
    model = _linear_cv_glow([_scaled_cycle(d1), _scaled_cycle(d2)])
    # the flow sends c -> pi(c) -> pi(pi(c)): the exact gain is d1[pi(c)] * d2[pi(pi(c))];
    # the closed form multiplies the column sums of column c at both steps: d1[pi(c)] * d2[pi(c)]
    exact_by_hand = np.array([d1[_CYCLE[c]] * d2[_CYCLE[_CYCLE[c]]] for c in range(4)])
    closed_by_hand = np.array([d1[_CYCLE[c]] * d2[_CYCLE[c]] for c in range(4)])
    np.testing.assert_allclose(exact_by_hand, [2.0 * 2.5, 3.0 * 1.0, 4.0 * 0.5, 1.0 * -1.5])
    np.testing.assert_allclose(so.channel_gains(model), closed_by_hand, rtol=1e-12)
    np.testing.assert_allclose(so.channel_norms(model), np.abs(exact_by_hand), rtol=1e-12)
    np.testing.assert_allclose(_squeezed_hessian_diagonal(model), -exact_by_hand**2, rtol=1e-10)
    assert np.abs(closed_by_hand**2 - exact_by_hand**2).max() > 1.0


def test_k1_mixing_matrix_closed_form_differs_from_the_exact_hessian():
    # a 45-degree rotation (times sqrt 2) on channels 0, 1 and a diagonal on 2, 3; ActNorm scales a
    w = torch.tensor([[1.0, 1.0, 0.0, 0.0], [-1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 3.0]],
                     dtype=torch.float64)
    a = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    sigma = 0.8
    model = _linear_cv_glow([w], log_scales=[torch.log(a)], sigma=sigma)
    # by hand, with the step's map W diag(a):
    #   column sums x a:  (1 - 1) 0.5 = 0,  (1 + 1) 1 = 2,  2 * 2 = 4,  3 * 1.5 = 4.5
    #   column norms x a: sqrt 2 * 0.5,     sqrt 2 * 1,     4,          4.5
    closed_by_hand = -np.array([0.0, 4.0, 16.0, 20.25]) / sigma**2
    exact_by_hand = -np.array([0.5, 2.0, 16.0, 20.25]) / sigma**2
    np.testing.assert_allclose(so.linearised_jacobian(model), (w * a).numpy(), rtol=1e-12)
    np.testing.assert_allclose(_squeezed_hessian_diagonal(model), exact_by_hand, rtol=1e-10)
    var_id = torch.rand(1, 4, 4, generator=_gen(91), dtype=torch.float64)
    var_ood = torch.rand(1, 4, 4, generator=_gen(92), dtype=torch.float64)
    closed = so.cv_glow_closed_form(model, var_ood, var_id, sigma=sigma)
    exact = so.cv_glow_linearised_exact(model, var_ood, var_id, sigma=sigma)
    np.testing.assert_allclose(closed.curvature, closed_by_hand, atol=1e-12)
    np.testing.assert_allclose(exact.curvature, exact_by_hand, rtol=1e-12)
    # the linearised exact gap is the exact 1/2 Tr(H diag(dvar)) of this linear flow
    hessian = _exact_hessian(model, torch.zeros(1, 4, 4, dtype=torch.float64))
    exact_gap = 0.5 * float(torch.diagonal(hessian) @ (var_ood - var_id).flatten())
    assert exact.gap_nats == pytest.approx(exact_gap, rel=1e-10)
    assert abs(closed.gap_nats - exact_gap) > 1e-3 * abs(exact_gap)
    np.testing.assert_allclose(exact.gains, np.sqrt(-exact_by_hand) * sigma, rtol=1e-12)


def test_linearised_exact_equals_the_closed_form_for_diagonal_convolutions_only():
    model = _cv_glow_where_the_paper_holds(0.7)
    var_id = 0.01 * torch.rand(3, 4, 4, generator=_gen(93), dtype=torch.float64)
    var_ood = 0.01 * torch.rand(3, 4, 4, generator=_gen(94), dtype=torch.float64)
    closed = so.cv_glow_closed_form(model, var_ood, var_id, sigma=0.7)
    exact = so.cv_glow_linearised_exact(model, var_ood, var_id, sigma=0.7)
    np.testing.assert_allclose(exact.curvature, closed.curvature, rtol=1e-12)
    assert exact.gap_nats == pytest.approx(closed.gap_nats, rel=1e-12)
    np.testing.assert_allclose(exact.curvature_input, closed.curvature_input, rtol=1e-12)
    # a Glow with random rotations: they differ
    glow = _tiny_glow("additive", levels=1, shape=(3, 4, 4), seed=4)
    zero = torch.zeros(3, 4, 4, dtype=torch.float64)
    assert np.abs(so.cv_glow_closed_form(glow, zero, zero).curvature
                  - so.cv_glow_linearised_exact(glow, zero, zero).curvature).max() > 1e-2


def test_depth_factors_on_a_two_by_two_hand_example():
    w1 = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    w2 = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    closed, exact = so.depth_factors([w1, w2])
    # K = 1: column sums (1, 3), column norms^2 (1, 5); K = 2: W2 W1 = [[0, 1], [1, 3]], column sums of W2 (1, 2)
    np.testing.assert_allclose(closed, [[1.0, 9.0], [1.0, 36.0]], rtol=1e-15)
    np.testing.assert_allclose(exact, [[1.0, 5.0], [1.0, 10.0]], rtol=1e-15)
    # with ActNorm scales a1 = (2, 1), a2 = (1, 0.5): W1 diag(a1) = [[2, 2], [0, 1]];
    # W2 diag(a2) W1 diag(a1) = [[0, 0.5], [2, 2.5]]
    closed, exact = so.depth_factors([w1, w2], [torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.5])])
    np.testing.assert_allclose(closed, [[4.0, 9.0], [4.0, 9.0]], rtol=1e-15)
    np.testing.assert_allclose(exact, [[4.0, 5.0], [4.0, 6.5]], rtol=1e-15)
    with pytest.raises(ValueError, match="square"):
        so.depth_factors([torch.ones(2, 3)])
    with pytest.raises(ValueError, match="scales"):
        so.depth_factors([w1], [torch.ones(3)])


def test_expected_log_column_sum_sq_closed_form_and_monte_carlo():
    assert so.expected_log_column_sum_sq(1) == pytest.approx(0.0, abs=1e-12)  # W = +-1
    # C = 2: s = cos t + sin t = sqrt 2 cos(t - pi/4), E log s^2 = log 2 + E log cos^2 = log 2 - 2 log 2
    assert so.expected_log_column_sum_sq(2) == pytest.approx(-math.log(2.0), rel=1e-12)
    assert so.expected_log_column_sum_sq(12) == pytest.approx(-1.18472, abs=1e-5)
    from scipy.special import digamma  # the digamma form, for odd and even C

    for c in (3, 4, 5, 12, 13, 48):
        assert so.expected_log_column_sum_sq(c) == pytest.approx(math.log(c) + digamma(0.5) - digamma(c / 2), rel=1e-12)
    assert so.expected_log_column_sum_sq(4) == pytest.approx(-1.0, rel=1e-12)
    first_columns = torch.stack([w.sum(0)[0] for w in so.glow_init_invconv_weights(12, 3000, seed=3)]) ** 2
    log_s2 = torch.log(first_columns)
    assert abs(float(log_s2.mean()) - so.expected_log_column_sum_sq(12)) < 3 * float(log_s2.std()) / math.sqrt(3000)
    assert float(first_columns.mean()) == pytest.approx(1.0, abs=3 * float(first_columns.std()) / math.sqrt(3000))
    with pytest.raises(ValueError, match="positive"):
        so.expected_log_column_sum_sq(0)


def test_glow_init_weights_are_the_layers_own_and_leave_the_rng_alone():
    from ood_core.flows import InvConv1x1

    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    weights = so.glow_init_invconv_weights(6, 3, seed=11)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(11)
    layers = [InvConv1x1(6, lu=True) for _ in range(3)]
    for w, layer in zip(weights, layers):
        torch.testing.assert_close(w, layer.weight().detach().double())
        torch.testing.assert_close(w.T @ w, torch.eye(6, dtype=torch.float64), atol=1e-6, rtol=0)


def test_depth_shrinkage_table_exact_factor_is_one_for_rotations_and_matches_the_model():
    table = so.depth_shrinkage_table(k_max=4, num_channels=8, seeds=(0, 1))
    assert set(table.columns) == {"weights", "seed", "K", "channel", "quantity", "factor"}
    assert len(table) == 2 * 4 * 8 * 2
    rand = table[table["weights"] == so.RANDOM_WEIGHTS]
    exact = rand[rand["quantity"] == "linearised exact"]["factor"]
    np.testing.assert_allclose(exact, 1.0, atol=1e-5)  # float32 LU factors of a rotation
    closed = rand[rand["quantity"] == "closed form (column sums)"]
    # K = 1: sum_c (1^T W e_c)^2 = |W^T 1|^2 = C for an orthogonal W, so the channel mean is exactly 1
    np.testing.assert_allclose(closed[closed["K"] == 1].groupby("seed")["factor"].mean(), 1.0, atol=1e-5)
    assert table.attrs["mean_log_column_sum_sq"] == pytest.approx(so.expected_log_column_sum_sq(8))

    model = _tiny_glow("additive", levels=2, shape=(3, 4, 4), seed=4, scale=0.3)
    with_model = so.depth_shrinkage_table(model, seeds=(0,))
    trained = with_model[with_model["weights"] == so.TRAINED_WEIGHTS]
    assert set(trained["seed"]) == {-1} and trained["K"].max() == 2
    closed_k, exact_k = so.depth_factors(*so._first_level_linear_steps(model, True))
    pivot = trained.pivot_table(index=["K", "channel"], columns="quantity", values="factor")
    np.testing.assert_allclose(pivot["closed form (column sums)"].to_numpy(), closed_k.ravel(), rtol=1e-12)
    np.testing.assert_allclose(pivot["linearised exact"].to_numpy(), exact_k.ravel(), rtol=1e-12)
    # the last row is the model's whole first level: the closed form's gains and the exact norms
    np.testing.assert_allclose(closed_k[-1], so.channel_gains(model) ** 2, rtol=1e-12)
    np.testing.assert_allclose(exact_k[-1], so.channel_norms(model) ** 2, rtol=1e-12)
    with pytest.raises(ValueError, match="k_max"):
        so.depth_shrinkage_table(model, k_max=3)
    with pytest.raises(ValueError, match="without a model"):
        so.depth_shrinkage_table()


def test_second_order_and_curvature_tables_carry_the_linearised_exact_columns():
    sets = {"ID": _images(12, (1, 4, 4), seed=95), "OOD": _images(10, (1, 4, 4), seed=96, low=100, high=150)}
    model = _tiny_glow("additive")
    table = so.second_order_table(model, sets, "ID", n_probes=4)
    var_id, var_ood = so.pixel_variance(sets["ID"]), so.pixel_variance(sets["OOD"])
    sigma = table.attrs["sigma_learned"]
    assert table.loc["OOD", "linearised exact (σ=1)"] == pytest.approx(
        so.cv_glow_linearised_exact(model, var_ood, var_id, 1.0).gap_bpd, rel=1e-12)
    assert table.loc["OOD", "linearised exact (learned σ)"] == pytest.approx(
        so.cv_glow_linearised_exact(model, var_ood, var_id, sigma).gap_bpd, rel=1e-12)
    assert table.loc["OOD", "closed form (learned σ)"] == pytest.approx(
        so.cv_glow_closed_form(model, var_ood, var_id, sigma).gap_bpd, rel=1e-12)
    affine = so.second_order_table(_tiny_glow("affine"), sets, "ID", n_probes=4)
    assert np.isnan(affine.loc["OOD", "linearised exact (σ=1)"])

    x0 = so.model_space_mean(sets["ID"])
    curv = so.curvature_table(model, x0, n_probes=6, generator=_gen(97))
    zero = torch.zeros(1, 4, 4, dtype=torch.float64)
    np.testing.assert_allclose(curv["linearised exact (σ=1)"],
                               so.cv_glow_linearised_exact(model, zero, zero).curvature)
    np.testing.assert_allclose(curv["closed form (learned σ)"] * curv.attrs["sigma_learned"] ** 2,
                               so.cv_glow_closed_form(model, zero, zero).curvature, rtol=1e-12)
    hutch = so.channel_curvature(model, x0, n_probes=6, generator=_gen(97))
    np.testing.assert_allclose(curv["Hessian diagonal (Hutchinson)"], hutch.estimate, rtol=1e-12)
    assert list(curv["input channel"]) == [0, 0, 0, 0]


# --------------------------------------------------------------------------------------------
# Where the bits go
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coupling", ["affine", "additive"])
def test_log_prob_contributions_sum_to_the_scored_bits_per_dim(coupling):
    from ood_core.likelihood import score_flow

    model = _tiny_glow(coupling, levels=2, shape=(3, 4, 4), seed=7, scale=0.05)
    x = _images(7, (3, 4, 4), seed=98)
    bits = fd.log_prob_contributions(model, x, seed=3, batch_size=3)
    scored = score_flow(model, x, batch_size=3, seed=3)
    np.testing.assert_allclose(bits.sum(axis=1).to_numpy(), scored["bpd"], rtol=1e-12, atol=1e-10)
    layer_bits = bits.loc[:, bits.columns.get_level_values("term").isin(["actnorm", "invconv", "coupling"])]
    np.testing.assert_allclose(layer_bits.sum(axis=1).to_numpy() + 8.0, scored["bpd_logdet"], rtol=1e-12, atol=1e-10)
    assert (bits[(-1, fd.INPUT_SCALING)] == 8.0).all()
    # ActNorm of level 0 by hand: -(H W sum_k sum_c log a_kc) / (D ln 2), H = W = 2 after the squeeze
    actnorm = sum(float(step.actnorm.log_scale.detach().sum()) for step in model.levels[0].steps) * 4
    np.testing.assert_allclose(bits[(0, "actnorm")], -actnorm / (48 * math.log(2)), rtol=1e-12)
    if coupling == "additive":
        assert (bits[(0, "coupling")] == 0).all() and (bits[(1, "coupling")] == 0).all()
    table = fd.log_prob_breakdown(model, x, seed=3, batch_size=3)
    assert table["bits/dim"].sum() == pytest.approx(scored["bpd"].mean(), rel=1e-12)
    assert table.attrs["bpd"] == pytest.approx(scored["bpd"].mean(), rel=1e-12)
    # -1/2 log 2 pi per latent dimension, whatever the image
    assert table.loc[(0, "prior_constant"), "nats per dim"] == pytest.approx(-0.5 * math.log(2 * math.pi))
    assert table.loc[(0, "prior_constant"), "dims"] == 24 and table.loc[(1, "prior_constant"), "dims"] == 24


def test_log_prob_breakdown_quadratic_term_is_half_the_squared_standardised_latent():
    model = _tiny_glow("additive", levels=2, shape=(1, 4, 4), learn_prior=False)
    x = _images(5, (1, 4, 4), seed=99)
    table = fd.log_prob_breakdown(model, x, seed=0, batch_size=5)
    from ood_core.likelihood import preprocess

    zs, _ = model(preprocess(x, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    for level, z in enumerate(zs):
        assert table.loc[(level, "prior_quadratic"), "nats per dim"] == pytest.approx(
            -0.5 * float((z.detach() ** 2).mean()), rel=1e-12)
        assert table.loc[(level, "prior_log_std"), "bits/dim"] == 0.0


def test_prior_fit_table_against_the_breakdown_and_a_fixed_prior():
    model = _tiny_glow("affine", levels=2, shape=(3, 4, 4), seed=11, scale=0.05)
    x = _images(6, (3, 4, 4), seed=107)
    fit = fd.prior_fit_table(model, x, seed=2, batch_size=4)
    breakdown = fd.log_prob_breakdown(model, x, seed=2, batch_size=4)
    for level in (0, 1):
        assert fit.loc[level, "mean ((z-μ)/σ)²"] == pytest.approx(
            -2 * breakdown.loc[(level, "prior_quadratic"), "nats per dim"], rel=1e-10)
        assert fit.loc[level, "log σ min"] <= fit.loc[level, "log σ median"] <= fit.loc[level, "log σ max"]
        assert 0.01 <= fit.loc[level, "top share"] <= 1.0
    assert np.isnan(fit.loc[1, "rms conditioner"]) and fit.loc[0, "rms conditioner"] > 0
    # the top prior is per channel: its log σ range is that of the parameter
    top = model.top_log_std.detach()
    assert fit.loc[1, "log σ min"] == pytest.approx(float(top.min()))
    assert fit.loc[1, "log σ max"] == pytest.approx(float(top.max()))

    fixed = _tiny_glow("additive", levels=2, shape=(1, 4, 4), learn_prior=False, scale=0.05)
    table = fd.prior_fit_table(fixed, x[:, :1], seed=0, batch_size=6, top_share=1.0)
    from ood_core.likelihood import preprocess

    zs, _ = fixed(preprocess(x[:, :1], generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    for level, z in enumerate(zs):
        z = z.detach()
        assert table.loc[level, "rms μ"] == 0.0 and table.loc[level, "log σ max"] == 0.0
        assert table.loc[level, "rms z"] == pytest.approx(float(z.pow(2).mean().sqrt()), rel=1e-12)
        assert table.loc[level, "mean ((z-μ)/σ)²"] == pytest.approx(float(z.pow(2).mean()), rel=1e-12)
        assert table.loc[level, "top share"] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------
# Kirichenko et al.: couplings and latents
# --------------------------------------------------------------------------------------------


def test_latent_reconstruction_keeps_or_swaps_latents_exactly():
    model = _tiny_glow("affine", levels=2, shape=(3, 4, 4), seed=8, scale=0.05)
    x, other = _images(3, (3, 4, 4), seed=100), _images(3, (3, 4, 4), seed=101)
    centres = (x.double() + 0.5) / 256 - 0.5
    both = fd.latent_reconstruction(model, x, keep_levels=(0, 1), donor_uint8=other)
    torch.testing.assert_close(both, centres, atol=1e-9, rtol=0)
    torch.testing.assert_close(fd.latent_reconstruction(model, x, (0, 1)), centres, atol=1e-9, rtol=0)
    swapped = fd.latent_reconstruction(model, x, keep_levels=(), donor_uint8=other)
    torch.testing.assert_close(swapped, (other.double() + 0.5) / 256 - 0.5, atol=1e-9, rtol=0)
    # keep level 0, prior mean for the top: re-encoding gives back the kept latent and the top prior mean
    fine = fd.latent_reconstruction(model, x, keep_levels=(0,), temperature=0.0)
    zs_x, _ = model(centres)
    zs_fine, _ = model(fine)
    torch.testing.assert_close(zs_fine[0], zs_x[0], atol=1e-9, rtol=0)
    torch.testing.assert_close(zs_fine[1], model.top_mean.detach().expand_as(zs_fine[1]), atol=1e-9, rtol=0)
    assert (fine - centres).abs().max() > 1e-3  # the top latent did change
    # mixed: level 0 of x, level 1 of the donor, is what the flow's inverse makes of them
    zs_other, _ = model((other.double() + 0.5) / 256 - 0.5)
    expected, _ = model.inverse([zs_x[0], zs_other[1]])
    torch.testing.assert_close(fd.latent_reconstruction(model, x, (0,), donor_uint8=other), expected)
    # nothing kept: the prior mean image, the same for every input
    prior_image = fd.latent_reconstruction(model, x, keep_levels=())
    torch.testing.assert_close(prior_image, model.sample(3, temperature=0.0).detach())
    torch.testing.assert_close(prior_image, prior_image[:1].expand_as(prior_image))
    with pytest.raises(ValueError, match="keep_levels"):
        fd.latent_reconstruction(model, x, (2,))
    with pytest.raises(ValueError, match="donor"):
        fd.latent_reconstruction(model, x, (0,), donor_uint8=other[:2])


def test_reconstruction_table_mse_and_psnr_by_hand():
    model = _tiny_glow("additive", levels=2, shape=(1, 4, 4), seed=9, scale=0.05)
    sets = {"a": _images(4, (1, 4, 4), seed=102), "b": _images(3, (1, 4, 4), seed=103, low=100, high=140)}
    table = fd.reconstruction_table(model, sets, keeps=[(0,), (0, 1)], names={"b": "B set"}, batch_size=3)
    assert list(table.index) == [("a", (0,)), ("a", (0, 1)), ("B set", (0,)), ("B set", (0, 1))]
    centres = (sets["a"].double() + 0.5) / 256 - 0.5
    rec = fd.latent_reconstruction(model, sets["a"], (0,))
    mse = ((rec.clamp(-0.5, 0.5) - centres) ** 2).flatten(1).mean(1)
    assert table.loc[("a", (0,)), "MSE"] == pytest.approx(float(mse.mean()), rel=1e-10)
    assert table.loc[("a", (0,)), "PSNR (dB)"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-10)
    assert table.loc[("a", (0, 1)), "MSE"] < 1e-18 and table.loc[("a", (0,)), "images"] == 4
    assert table["non-finite"].sum() == 0
    default = fd.reconstruction_table(model, {"a": sets["a"]})
    assert list(default.index) == [("a", (0,)), ("a", (1,)), ("a", ())]


def test_coupling_view_prediction_output_and_pullback():
    model = _tiny_glow("affine", levels=2, shape=(1, 4, 4), seed=10, scale=0.05)
    x = _images(2, (1, 4, 4), seed=104)
    centres = (x.double() + 0.5) / 256 - 0.5
    for level, step in [(0, 0), (0, 1), (1, 1)]:
        h, zs = fd._encode_to_coupling(model, centres, level, step)
        torch.testing.assert_close(fd._decode_from_coupling(model, h, zs, level, step), centres, atol=1e-10, rtol=0)
        view = fd.coupling_view(model, x, level, step)
        coupling = model.levels[level].steps[step].coupling
        y, _ = coupling(h)
        torch.testing.assert_close(view.output, y[:, coupling.num_a:].detach())
        torch.testing.assert_close(torch.cat([view.conditioner, view.target], 1), h.detach())
        torch.testing.assert_close(view.prediction, -view.shift)
        torch.testing.assert_close(view.output, (view.target - view.prediction) * torch.exp(view.log_scale))
        # the pulled-back image carries exactly [x_a, prediction] into this coupling
        h_pred, _ = fd._encode_to_coupling(model, view.predicted_image, level, step)
        torch.testing.assert_close(h_pred, torch.cat([view.conditioner, view.prediction], 1), atol=1e-9, rtol=0)
        centred = view.target - view.target.mean((2, 3), keepdim=True)
        r2 = 1 - ((view.target - view.prediction) ** 2).flatten(1).sum(1) / (centred**2).flatten(1).sum(1)
        np.testing.assert_allclose(view.explained, r2.numpy(), rtol=1e-12)
        # image-space arrangement: each half fills as many pixels as it has values, the rest is NaN
        assert int(torch.isfinite(view.conditioner_image).sum()) == view.conditioner.numel()
        assert int(torch.isfinite(view.target_image).sum()) == view.target.numel()
        assert not (torch.isfinite(view.conditioner_image) & torch.isfinite(view.target_image)).any()
    # level 0, one gray channel: x_a = squeezed channels 0, 1 = the top row of each 2x2 block
    view = fd.coupling_view(model, x, 0, 0)
    assert torch.isfinite(view.conditioner_image[:, 0, 0::2]).all()
    assert torch.isnan(view.conditioner_image[:, 0, 1::2]).all()
    torch.testing.assert_close(view.conditioner_image[:, 0, 0::2, 0::2], view.conditioner[:, 0])
    torch.testing.assert_close(view.conditioner_image[:, 0, 0::2, 1::2], view.conditioner[:, 1])
    torch.testing.assert_close(view.target_image[:, 0, 1::2, 1::2], view.target[:, 1])
    with pytest.raises(ValueError, match="step"):
        fd.coupling_view(model, x, 0, 2)


def test_zero_initialised_additive_coupling_predicts_nothing_and_features_to_image_inverts_the_squeeze():
    torch.manual_seed(0)
    model = Glow(GlowConfig((3, 4, 4), levels=2, steps=1, width=4, coupling="additive")).double()
    initialize_actnorm(model, torch.rand(8, 3, 4, 4, generator=_gen(105), dtype=torch.float64) - 0.5)
    x = _images(2, (3, 4, 4), seed=106)
    view = fd.coupling_view(model, x, 0, 0)
    assert torch.equal(view.prediction, torch.zeros_like(view.prediction))
    torch.testing.assert_close(view.predicted_image.shape, x.shape)
    assert view.log_scale is None and torch.equal(view.scale_image[torch.isfinite(view.scale_image)],
                                                  torch.ones(view.target.numel(), dtype=torch.float64))
    centres = (x.double() + 0.5) / 256 - 0.5
    squeezed, _ = model.levels[0].squeeze(centres)
    torch.testing.assert_close(fd.features_to_image(model, 0, squeezed), centres, atol=0, rtol=0)
    latents = fd.latent_images(model, x)
    zs, _ = model(centres)
    for image, z in zip(latents, zs):
        assert image.shape == x.shape and int(torch.isfinite(image).sum()) == z.numel()
    assert not torch.isfinite(latents[0] + latents[1]).any()  # the levels' latents tile the image
    assert int((torch.isfinite(latents[0]) | torch.isfinite(latents[1])).sum()) == x.numel()

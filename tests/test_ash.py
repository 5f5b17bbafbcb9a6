"""ASH and ReAct on hand-made tensors: the maths of Djurisic et al. 2023, sec. 3."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ood_core import ash
from ood_core.ash import (
    SHAPERS,
    ash_b,
    ash_b_global,
    ash_p,
    ash_p_global,
    ash_rand,
    ash_s,
    ash_s_global,
    global_threshold,
    make_shaper,
    num_kept,
    react,
    react_threshold,
)

LOCAL = [ash_p, ash_b, ash_s, ash_rand]


@pytest.fixture
def feats() -> torch.Tensor:
    # two samples, ten non-negative entries with distinct values
    return torch.tensor(
        [
            [0.0, 3.0, 1.0, 7.0, 2.0, 9.0, 4.0, 0.5, 6.0, 5.0],
            [8.0, 0.0, 0.0, 1.0, 3.0, 2.0, 0.25, 4.0, 0.0, 6.0],
        ]
    )


def test_num_kept_formula():
    assert num_kept(10, 65) == 4  # round(6.5) = 6 (half to even, like numpy.round)
    assert num_kept(342, 95) == 342 - 325
    assert num_kept(2048, 90) == 2048 - 1843
    assert num_kept(10, 0) == 10 and num_kept(10, 100) == 0


@pytest.mark.parametrize("fn", LOCAL)
@pytest.mark.parametrize("p", [0, 30, 65, 90, 100])
def test_exactly_k_kept_and_they_are_the_largest(fn, p, feats):
    feats = feats + 0.1  # strictly positive, so "kept" and "non-zero" coincide (ties remain)
    out = fn(feats, p)
    k = num_kept(10, p)
    kept = out != 0
    if fn is ash_rand:  # a U(0, 10) draw is never exactly 0 in practice; check positions
        kept = out > 0
    assert kept.sum(dim=1).tolist() == [k, k]
    for row in range(2):
        expected = set(torch.sort(feats[row], descending=True, stable=True).indices[:k].tolist())
        assert set(kept[row].nonzero().flatten().tolist()) == expected


def test_ash_p_values(feats):
    out = ash_p(feats, 70)  # k = 3
    torch.testing.assert_close(out[0], torch.tensor([0, 0, 0, 7.0, 0, 9.0, 0, 0, 6.0, 0]))
    torch.testing.assert_close(out[1], torch.tensor([8.0, 0, 0, 0, 0, 0, 0, 4.0, 0, 6.0]))
    torch.testing.assert_close(ash_p(feats, 0), feats)
    assert torch.count_nonzero(ash_p(feats, 100)) == 0


def test_ties_broken_by_lower_index():
    x = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0]])
    out = ash_p(x, 60)  # k = 2 of the three tied 2.0s
    assert out.tolist() == [[0.0, 2.0, 2.0, 0.0, 0.0]]
    assert ash_p(torch.zeros(1, 4) + 1.0, 50).tolist() == [[1.0, 1.0, 0.0, 0.0]]


@pytest.mark.parametrize("p", [0, 50, 65, 90])
def test_ash_b_preserves_sum_and_binarises(p, feats):
    out = ash_b(feats, p)
    k = num_kept(10, p)
    torch.testing.assert_close(out.sum(dim=1), feats.sum(dim=1))
    for row in range(2):
        values = out[row][out[row] != 0]
        torch.testing.assert_close(values, torch.full((k,), float(feats[row].sum() / k)))


@pytest.mark.parametrize("p", [0, 50, 65, 90])
def test_ash_s_equals_pruned_times_exp_ratio(p, feats):
    pruned = ash_p(feats, p)
    s1, s2 = feats.sum(dim=1), pruned.sum(dim=1)
    expected = pruned * torch.exp(s1 / s2)[:, None]
    torch.testing.assert_close(ash_s(feats, p), expected)
    # by hand for the first sample at p = 80 (k = 2 keeps 9 and 7): s1 = 37.5, s2 = 16
    out = ash_s(feats, 80)[0]
    assert out[5].item() == pytest.approx(9.0 * math.exp(37.5 / 16.0), rel=1e-6)


def test_p100_is_all_zeros_without_nan(feats):
    for fn in LOCAL:
        out = fn(feats, 100)
        assert torch.isfinite(out).all() and torch.count_nonzero(out) == 0
    # s2 = 0 with kept entries all zero: ASH-S returns the (zero) pruned tensor, not NaN
    zeros_kept = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    assert ash_s(zeros_kept, 50).tolist() == [[0.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("fn", LOCAL)
def test_input_unchanged_local(fn, feats):
    x4 = feats.reshape(2, 10, 1, 1).clone()
    for x in (feats, x4):
        before = x.clone()
        fn(x, 65)
        assert torch.equal(x, before)


def test_input_unchanged_global_and_react(feats):
    before = feats.clone()
    for fn in (ash_p_global, ash_b_global, ash_s_global, react):
        out = fn(feats, 3.0)
        assert out.data_ptr() != feats.data_ptr()
    assert torch.equal(feats, before)


@pytest.mark.parametrize("fn", LOCAL)
@pytest.mark.parametrize("bad", [-0.1, 100.5, float("nan"), 150])
def test_bad_percentile_raises(fn, bad, feats):
    with pytest.raises(ValueError, match="percent"):
        fn(feats, bad)


def test_bad_percentile_raises_everywhere(feats):
    for call in (
        lambda: make_shaper("ash_s", 101),
        lambda: global_threshold(feats, -1),
        lambda: react_threshold(feats, 200),
        lambda: num_kept(10, 100.01),
    ):
        with pytest.raises(ValueError, match="percent"):
            call()


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        ash_p(torch.ones(3), 50)
    with pytest.raises(ValueError):
        ash_p(torch.ones(2, 3, 4), 50)
    with pytest.raises(TypeError):
        ash_p(torch.ones(2, 3, dtype=torch.int64), 50)


@pytest.mark.parametrize("fn", [ash_p, ash_b, ash_s])
def test_2d_and_4d_agree(fn, feats):
    out4 = fn(feats.reshape(2, 10, 1, 1), 65)
    assert out4.shape == (2, 10, 1, 1)
    torch.testing.assert_close(out4.reshape(2, 10), fn(feats, 65))


def test_4d_threshold_runs_over_c_h_w():
    x = torch.arange(2 * 2 * 2 * 2, dtype=torch.float32).reshape(2, 2, 2, 2)
    out = ash_p(x, 75)  # n = 8 per sample, k = 2: the last two entries in flat order
    assert out.reshape(2, 8).ne(0).nonzero()[:, 1].tolist() == [6, 7, 6, 7]
    torch.testing.assert_close(ash_b(x, 75).sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))


def test_ash_rand_reproducible_and_in_range(feats):
    a = ash_rand(feats, 50, generator=torch.Generator().manual_seed(3))
    b = ash_rand(feats, 50, generator=torch.Generator().manual_seed(3))
    c = ash_rand(feats, 50, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    kept = ash_p(feats, 50) != 0
    assert ((a[kept] >= 0.0) & (a[kept] < 10.0)).all() and (a[~kept] == 0).all()
    d = ash_rand(feats, 50, generator=torch.Generator().manual_seed(3), low=2.0, high=3.0)
    assert ((d[kept] >= 2.0) & (d[kept] <= 3.0)).all()
    with pytest.raises(ValueError):
        ash_rand(feats, 50, low=3.0, high=2.0)


def test_global_threshold_is_percentile_of_all_values(feats):
    assert global_threshold(feats, 50) == pytest.approx(float(np.percentile(feats.numpy(), 50)))
    assert global_threshold(feats.numpy(), 100) == 9.0
    assert react_threshold(feats, 90) == global_threshold(feats, 90)
    with pytest.raises(ValueError):
        global_threshold(torch.tensor([1.0, float("nan")]), 50)


def test_global_variants_prune_below_threshold(feats):
    out = ash_p_global(feats, 4.0)
    torch.testing.assert_close(out, torch.where(feats >= 4.0, feats, torch.zeros_like(feats)))
    b = ash_b_global(feats, 4.0)
    torch.testing.assert_close(b.sum(dim=1), feats.sum(dim=1))
    assert (b[0][b[0] != 0] == feats[0].sum() / 5).all()  # sample 0 keeps 4, 5, 6, 7, 9
    s = ash_s_global(feats, 4.0)
    torch.testing.assert_close(s, out * torch.exp(feats.sum(1) / out.sum(1))[:, None])
    nothing_kept = ash_b_global(feats, 100.0)
    assert torch.count_nonzero(nothing_kept) == 0
    assert torch.isfinite(ash_s_global(feats, 100.0)).all()


def test_global_and_local_differ_on_constructed_case():
    # sample 0 is "hot", sample 1 "cold": a global threshold keeps many of 0's and none of 1's,
    # the per-sample top-k keeps the same number in each
    x = torch.tensor([[5.0, 6.0, 7.0, 8.0], [0.1, 0.2, 0.3, 0.4]])
    threshold = global_threshold(x, 50)  # median of all eight values: 2.7
    local, glob = ash_p(x, 50), ash_p_global(x, threshold)
    assert (local != 0).sum(dim=1).tolist() == [2, 2]
    assert (glob != 0).sum(dim=1).tolist() == [4, 0]
    assert not torch.equal(local, glob)


def test_react_clips_from_above():
    x = torch.tensor([[-1.0, 0.5, 2.0, 3.0]])
    assert react(x, 1.0).tolist() == [[-1.0, 0.5, 1.0, 1.0]]
    assert react(x.reshape(1, 4, 1, 1), 1.0).shape == (1, 4, 1, 1)


def test_make_shaper_composes(feats):
    assert set(SHAPERS) == {"ash_p", "ash_b", "ash_s", "ash_rand", "scale"}
    shaper = make_shaper("ash_s", 65)
    torch.testing.assert_close(shaper(feats), ash_s(feats, 65))
    torch.testing.assert_close(make_shaper("scale", 65)(feats), ash.scale(feats, 65))
    rand = make_shaper("ash_rand", 50, generator=torch.Generator().manual_seed(0), high=1.0)
    assert rand(feats).max() <= 1.0
    with pytest.raises(ValueError, match="unknown shaper"):
        make_shaper("ash_x", 50)


def test_gradients_flow_through_kept_entries(feats):
    x = feats.clone().requires_grad_(True)
    ash_p(x, 70).sum().backward()
    assert x.grad.sum().item() == 6.0  # 3 kept per sample, 2 samples
    assert ash.__doc__ and "percent" in ash.__doc__


def test_ash_s_scale_is_capped_so_extreme_samples_stay_finite(caplog):
    """Much pruned mass and a sliver kept: s1/s2 = 901 would overflow exp() to inf in float32.

    The cap is per dtype now (``max_log_scale``; 60 for float32 as before), it is logged, and
    ``capped``/``capped_fraction`` report it; float64 activations carry the exact factor.
    """
    x = torch.tensor([[0.9] * 1000 + [1.0]])
    with caplog.at_level("WARNING", logger="ood_core.ash"):
        y = ash.ash_s_global(x, threshold=0.95)
    assert "cap" in caplog.text
    assert torch.isfinite(y).all()
    assert ash.max_log_scale(torch.float32) == pytest.approx(60.0, abs=1e-9)
    assert y[0, -1].item() == pytest.approx(math.exp(ash.max_log_scale(torch.float32)), rel=1e-5)
    assert (y[0, :-1] == 0).all()
    r = ash.ash_s_global_exponent(x, 0.95)
    assert r.item() == pytest.approx(901.0)
    assert ash.capped(r, torch.float32).tolist() == [True]
    assert ash.capped_fraction(r, torch.float64) == 1.0  # 901 > ~681: even float64 caps
    # a ratio float32 cannot carry but float64 can: exact in float64
    x2 = torch.tensor([[0.9] * 100 + [1.0]], dtype=torch.float64)
    y2 = ash.ash_s_global(x2, threshold=0.95)
    assert y2[0, -1].item() == pytest.approx(math.exp(91.0), rel=1e-12)
    # below the cap the paper's formula is untouched
    x2 = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.allclose(ash.ash_s(x2, 50), torch.tensor([[0.0, 0.0, 3.0, 4.0]]) * math.exp(10 / 7))


def test_ash_s_exponent_matches_the_scale_used_by_ash_s():
    x = torch.rand(5, 40)
    e = ash.ash_s_exponent(x, 90)
    pruned = ash.ash_p(x, 90)
    assert torch.allclose(ash.ash_s(x, 90), pruned * torch.exp(e)[:, None])
    assert torch.allclose(e, x.sum(1) / pruned.sum(1))

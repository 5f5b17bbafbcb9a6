"""The discretised logistic mixture: exact normalisation by enumeration, channel order, sampling."""

import itertools
import math

import pytest
import torch

from ood_core import discretized as dl


def _all_pixels(levels: int, channels: int) -> torch.Tensor:
    """Every pixel value combination as a [levels**channels, C, 1, 1] uint8 batch."""
    combos = list(itertools.product(range(levels), repeat=channels))
    return torch.tensor(combos, dtype=torch.uint8).reshape(-1, channels, 1, 1)


@pytest.mark.parametrize("channels,n_bits,n_mix", [(1, 3, 1), (1, 8, 3), (3, 2, 2), (3, 3, 1), (2, 2, 4)])
def test_probabilities_sum_to_one_over_every_pixel_value(channels, n_bits, n_mix):
    torch.manual_seed(channels * 10 + n_bits)
    params = torch.randn(1, dl.n_params(n_mix, channels), 1, 1, dtype=torch.float64) * 2
    values = _all_pixels(2**n_bits, channels)
    lp = dl.log_prob(params.expand(len(values), -1, -1, -1), values, n_mix, n_bits)
    assert torch.logsumexp(lp, 0).item() == pytest.approx(0.0, abs=1e-9)


def test_extreme_scales_stay_finite_and_normalised():
    # A very sharp component (log s at the floor) far from the data and a very wide one.
    params = torch.zeros(1, dl.n_params(2, 1), 1, 1, dtype=torch.float64)
    params[0, 2], params[0, 3] = 0.95, -0.9  # means
    params[0, 4], params[0, 5] = -20.0, 3.0  # log scales (the first is clamped to -7)
    values = _all_pixels(256, 1)
    lp = dl.log_prob(params.expand(256, -1, -1, -1), values, 2, 8)
    assert torch.isfinite(lp).all()
    assert torch.logsumexp(lp, 0).item() == pytest.approx(0.0, abs=1e-9)


def test_single_logistic_matches_the_hand_computed_bin_probability():
    mu, log_s, v, n_bits = 0.1, math.log(0.3), 130, 8
    params = torch.tensor([0.0, mu, log_s], dtype=torch.float64).reshape(1, 3, 1, 1)
    x = 2 * v / 255 - 1
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    expected = math.log(sig((x + 1 / 255 - mu) / 0.3) - sig((x - 1 / 255 - mu) / 0.3))
    got = dl.log_prob(params, torch.tensor([[[[v]]]], dtype=torch.uint8), 1, n_bits).item()
    assert got == pytest.approx(expected, rel=1e-10)


def test_channel_c_mean_depends_only_on_earlier_channels():
    torch.manual_seed(0)
    n_mix, channels = 2, 3
    _, means, _, coeffs = dl.split_params(torch.randn(1, dl.n_params(n_mix, channels), 2, 2), n_mix, channels)
    x = torch.rand(1, channels, 2, 2, requires_grad=True)
    m = dl.channel_means(means, coeffs, x)
    for c in range(channels):
        (g,) = torch.autograd.grad(m[:, :, c].sum(), x, retain_graph=True)
        assert torch.all(g[:, c:] == 0), f"channel {c} mean sees channel >= {c}"
        if c:
            assert torch.any(g[:, :c] != 0)


def test_samples_follow_the_mixture():
    torch.manual_seed(0)
    params = torch.randn(1, dl.n_params(2, 3), 1, 1, dtype=torch.float64)
    n_bits = 2
    values = _all_pixels(4, 3)
    p = dl.log_prob(params.expand(len(values), -1, -1, -1), values, 2, n_bits).exp()
    draws = dl.sample(params.expand(20000, -1, -1, -1), 2, 3, n_bits, generator=torch.Generator().manual_seed(1))
    index = (draws[:, 0, 0, 0].long() * 16 + draws[:, 1, 0, 0].long() * 4 + draws[:, 2, 0, 0].long())
    freq = torch.bincount(index, minlength=64).double() / len(index)
    assert (freq - p).abs().max().item() < 0.02


def test_bad_shapes_and_dtypes_raise():
    with pytest.raises(ValueError, match="need"):
        dl.log_prob(torch.zeros(1, 5, 1, 1), torch.zeros(1, 1, 1, 1, dtype=torch.uint8), 2)
    with pytest.raises(TypeError, match="uint8"):
        dl.to_unit_range(torch.zeros(1, 1, 1, 1))
    with pytest.raises(ValueError, match="fit"):
        dl.to_unit_range(torch.full((1, 1, 1, 1), 9, dtype=torch.uint8), n_bits=3)

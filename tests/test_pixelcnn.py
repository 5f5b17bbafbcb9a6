"""Gated PixelCNN: strict pixel causality (Jacobians), channel order, exact normalisation by
enumeration, sampling frequencies, training and round trips."""

import itertools
import json
import math

import pytest
import torch

from ood_core import discretized as dl
from ood_core.pixelcnn import PixelCNN, PixelCNNConfig, nll_bpd


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread avoids OpenMP hand-offs that cost milliseconds per op
    when the two cores are shared with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(shape, width=6, layers=2, n_mix=2, n_bits=8, kernel_size=3, seed=0, noise=0.3):
    """A small float64 model with every parameter perturbed (no zero weights, non-trivial output)."""
    torch.manual_seed(seed)
    model = PixelCNN(PixelCNNConfig(shape, width=width, layers=layers, kernel_size=kernel_size, n_mix=n_mix,
                                    n_bits=n_bits)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    return model


def _all_images(shape, n_bits):
    """Every image of the given shape as a uint8 batch, [L**D, C, H, W]."""
    d = math.prod(shape)
    combos = list(itertools.product(range(2**n_bits), repeat=d))
    return torch.tensor(combos, dtype=torch.uint8).reshape(-1, *shape)


def _raster_after(i, h, w):
    """Boolean [H, W] mask of the pixels at raster index >= i."""
    return (torch.arange(h * w) >= i).reshape(h, w)


# -- 1. causality of the network over pixels ---------------------------------------------------

@pytest.mark.parametrize("shape,layers,k", [((1, 5, 5), 2, 3), ((3, 5, 5), 2, 3), ((3, 4, 7), 3, 3),
                                             ((2, 6, 3), 1, 3), ((3, 6, 9), 1, 5)])
def test_params_at_pixel_depend_only_on_earlier_pixels(shape, layers, k):
    c, h, w = shape
    model = _model(shape, layers=layers, kernel_size=k, seed=c * 100 + h * 10 + w)
    torch.manual_seed(1)
    x = (torch.rand(1, c, h, w, dtype=torch.float64) * 2 - 1).requires_grad_()
    out = model.forward_float(x)
    assert out.shape == (1, dl.n_params(2, c), h, w)
    proj = torch.randn_like(out)  # a random projection of all the parameters at a pixel
    half, kh = k // 2, k // 2 + 1
    left = kh + layers * half  # pixels seen to the left on the current row
    up, side = kh + layers * half, half + layers * half  # rows above, and columns to each side there
    for i in range(h * w):
        r, col = divmod(i, w)
        (g,) = torch.autograd.grad((out[0, :, r, col] * proj[0, :, r, col]).sum(), x, retain_graph=True)
        g = g[0]  # [C, H, W]
        after = _raster_after(i, h, w)
        # pixel i itself (every channel) and everything after it: exactly zero
        assert torch.all(g[:, after] == 0), f"pixel {(r, col)} sees pixel i or a later one"
        # the receptive field is real: the left neighbours, and the rows above on both sides --
        # including the above-right pixels (no blind spot)
        expected = [(r, cc) for cc in range(max(0, col - left), col)]
        expected += [(rr, cc) for rr in range(max(0, r - up), r)
                     for cc in range(max(0, col - side), min(w, col + side + 1))]
        for rr, cc in expected:
            assert torch.all(g[:, rr, cc] != 0), f"pixel {(r, col)} does not see {(rr, cc)} (all channels)"
        if r > 0 and col + 1 < w:
            assert (r - 1, col + 1) in expected
    # the very first pixel sees nothing at all: its parameters are constants
    (g0,) = torch.autograd.grad(out[0, :, 0, 0].sum(), x)
    assert torch.all(g0 == 0)


@pytest.mark.parametrize("layers,k", [(2, 3), (1, 5), (3, 3)])
def test_a_row_needs_only_rows_above_rows(layers, k):
    """What :meth:`PixelCNN.sample` relies on: row i's parameters from rows i - rows_above .. i
    alone equal those of the whole image, and one row fewer is not enough."""
    shape = (2, 13, 6)
    model = _model(shape, layers=layers, kernel_size=k, seed=layers + k)
    assert model.rows_above == k // 2 + 1 + layers * (k // 2)
    torch.manual_seed(0)
    x = torch.rand(2, *shape, dtype=torch.float64) * 2 - 1
    full = model.forward_float(x)
    for row in range(shape[1]):
        top = max(0, row - model.rows_above)
        part = model.forward_float(x[:, :, top:row + 1])[:, :, -1]
        assert torch.allclose(part, full[:, :, row], rtol=0, atol=1e-12)
        if row - model.rows_above - 1 >= 0:  # the crop is tight: one row fewer changes the result
            short = model.forward_float(x[:, :, top + 1:row + 1])[:, :, -1]
            assert not torch.allclose(short, full[:, :, row], rtol=0, atol=1e-6)


def test_forward_scales_uint8_and_equals_forward_float():
    model = _model((3, 4, 4), n_bits=5)
    x = torch.randint(0, 32, (3, 3, 4, 4), dtype=torch.uint8)
    expected = model.forward_float(x.double() * (2 / 31) - 1)
    assert torch.allclose(model(x), expected, rtol=0, atol=1e-12)
    assert model(x).dtype == torch.float64


# -- 2. the likelihood: per-pixel causality and channel order inside a pixel -------------------

@pytest.mark.parametrize("shape", [(1, 4, 5), (3, 5, 4)])
def test_pixel_log_prob_is_unchanged_by_later_pixels(shape):
    c, h, w = shape
    model = _model(shape, seed=7)
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (2, c, h, w), dtype=torch.uint8, generator=gen)
    lp = model.log_prob_pixels(x)
    assert lp.shape == (2, h, w)
    for i in range(h * w):
        after = _raster_after(i + 1, h, w)  # strictly after pixel i
        if not after.any():
            continue
        x2 = x.clone()
        noise = torch.randint(0, 256, x.shape, dtype=torch.uint8, generator=gen)
        x2[:, :, after] = noise[:, :, after]
        assert not torch.equal(x2, x)
        lp2 = model.log_prob_pixels(x2)
        before_or_at = ~after
        assert torch.equal(lp2[:, before_or_at], lp[:, before_or_at]), f"pixel {i} depends on a later pixel"
        # ... while changing pixel i itself does change its conditional
        x3 = x.clone()
        r, col = divmod(i, w)
        x3[:, 0, r, col] = (x[:, 0, r, col].long() + 128).remainder(256).to(torch.uint8)
        assert torch.all(model.log_prob_pixels(x3)[:, r, col] != lp[:, r, col])


def test_channel_means_follow_the_channel_order_inside_a_pixel():
    c, h, w = 3, 4, 4
    n_mix = 3
    model = _model((c, h, w), n_mix=n_mix, seed=11)
    torch.manual_seed(2)
    x = (torch.rand(1, c, h, w, dtype=torch.float64) * 2 - 1).requires_grad_()
    params = model.forward_float(x)
    _, means, _, coeffs = dl.split_params(params, n_mix, c)
    assert coeffs.abs().min() > 1e-3  # the couplings are active, so "earlier channels matter" is testable
    m = dl.channel_means(means, coeffs, x)  # [1, K, C, H, W]: what the mixture uses for x
    for i in (0, 5, 10, 15):
        r, col = divmod(i, w)
        after = _raster_after(i + 1, h, w)
        for ch in range(c):
            for k in range(n_mix):
                (g,) = torch.autograd.grad(m[0, k, ch, r, col], x, retain_graph=True)
                g = g[0]
                assert torch.all(g[ch:, r, col] == 0), f"mean of channel {ch} sees channel >= {ch} of its pixel"
                assert torch.all(g[:ch, r, col] != 0), f"mean of channel {ch} ignores earlier channels"
                assert torch.all(g[:, after] == 0)


# -- 3. exact normalisation by enumeration -----------------------------------------------------

class _LeakyPixelCNN(PixelCNN):
    """A deliberately broken model whose means at pixel i see pixel i itself (shows the
    enumeration test has power)."""

    def forward_float(self, x):
        params = super().forward_float(x)
        k, c = self.config.n_mix, self.config.image_shape[0]
        leak = torch.zeros_like(params)
        leak[:, k:k + k * c] = 0.9 * x.repeat(1, k, 1, 1)
        return params + leak


@pytest.mark.parametrize("shape,n_bits,n_mix", [((1, 2, 2), 2, 2), ((3, 1, 2), 1, 3), ((3, 2, 2), 1, 2),
                                               ((2, 2, 1), 2, 1)])
def test_probabilities_sum_to_one_over_every_image(shape, n_bits, n_mix):
    model = _model(shape, n_bits=n_bits, n_mix=n_mix, seed=sum(shape) + n_bits, noise=0.5)
    images = _all_images(shape, n_bits)
    with torch.no_grad():
        lp = model.log_prob(images)
    assert lp.shape == (len(images),) and torch.isfinite(lp).all()
    assert lp.std() > 0.5  # a non-trivial distribution, not (near-)uniform
    assert torch.logsumexp(lp, 0).item() == pytest.approx(0.0, abs=1e-9)
    # the per-pixel conditionals also sum to one: marginalising the last pixel leaves P(x_<last)
    assert torch.allclose(model.log_prob_pixels(images).sum((1, 2)), lp, rtol=0, atol=1e-12)


def test_enumeration_detects_a_model_that_sees_the_current_pixel():
    shape, n_bits = (1, 2, 2), 2
    torch.manual_seed(0)
    leaky = _LeakyPixelCNN(PixelCNNConfig(shape, width=6, layers=2, n_mix=2, n_bits=n_bits)).double()
    with torch.no_grad():
        lp = leaky.log_prob(_all_images(shape, n_bits))
    assert abs(torch.logsumexp(lp, 0).item()) > 0.05


# -- 4. sampling -------------------------------------------------------------------------------

def test_sample_shape_range_and_determinism():
    model = _model((3, 3, 4), n_bits=3, seed=5).float()
    s1 = model.sample(5, generator=torch.Generator().manual_seed(0))
    s2 = model.sample(5, generator=torch.Generator().manual_seed(0))
    s3 = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert s1.dtype == torch.uint8 and s1.shape == (5, 3, 3, 4)
    assert int(s1.max()) < 8
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)
    assert torch.isfinite(model.log_prob(s1)).all()
    with pytest.raises(ValueError, match="positive int"):
        model.sample(0)


@pytest.mark.parametrize("shape,n_bits", [((1, 1, 2), 2), ((3, 1, 2), 1)])
def test_sample_frequencies_match_the_model_probabilities(shape, n_bits):
    model = _model(shape, n_bits=n_bits, seed=21, noise=0.5)
    images = _all_images(shape, n_bits)
    with torch.no_grad():
        probs = model.log_prob(images).exp()
    n = 20000
    samples = model.sample(n, generator=torch.Generator().manual_seed(0))
    weights = 2 ** (n_bits * torch.arange(math.prod(shape) - 1, -1, -1))  # index in _all_images order
    index = (samples.reshape(n, -1).long() * weights).sum(1)
    counts = torch.bincount(index, minlength=len(images)).double()
    expected = n * probs
    chi2 = ((counts - expected) ** 2 / expected.clamp_min(1e-3)).sum().item()
    dof = len(images) - 1
    assert chi2 < dof + 6 * math.sqrt(2 * dof), (chi2, dof)  # ~6 sigma of the chi-square with dof
    assert (counts / n - probs).abs().max() < 0.02


# -- 5. training and input validation -----------------------------------------------------------

def test_untrained_model_is_near_uniform_and_finite():
    for shape in [(1, 8, 8), (3, 8, 8)]:
        torch.manual_seed(0)
        model = PixelCNN(PixelCNNConfig(shape, width=16, layers=2))
        x = torch.randint(0, 256, (8, *shape), dtype=torch.uint8)
        bpd = nll_bpd(model, (x,)).item()
        assert math.isfinite(bpd) and 7.5 < bpd < 9.0


def test_nll_bpd_definition_and_a_few_adam_steps_reduce_it():
    torch.manual_seed(0)
    model = PixelCNN(PixelCNNConfig((1, 6, 6), width=8, layers=2, n_mix=2))
    x = torch.zeros(4, 1, 6, 6, dtype=torch.uint8)
    x[:, :, :, 3:] = 200
    x[1::2] = 255 - x[1::2]
    loss = nll_bpd(model, (x, torch.zeros(4)))
    assert loss.item() == pytest.approx((-model.log_prob(x) / (36 * math.log(2))).mean().item(), rel=1e-6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(25):
        opt.zero_grad()
        loss = nll_bpd(model, (x,))
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert nll_bpd(model, (x,)).item() < first - 1.0


def test_bad_inputs_raise_helpful_errors():
    model = PixelCNN(PixelCNNConfig((1, 4, 4), width=4, layers=1, n_mix=1, n_bits=3))
    with pytest.raises(TypeError, match="uint8"):
        model.log_prob(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="image_shape"):
        model.log_prob(torch.zeros(2, 1, 4, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match="image_shape"):
        model.log_prob(torch.zeros(1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3 bits"):
        model.log_prob(torch.full((2, 1, 4, 4), 9, dtype=torch.uint8))
    with pytest.raises(ValueError, match="odd"):
        PixelCNNConfig((1, 4, 4), kernel_size=4)
    with pytest.raises(ValueError, match="odd"):
        PixelCNNConfig((1, 4, 4), kernel_size=1)
    with pytest.raises(ValueError, match="image_shape"):
        PixelCNNConfig((4, 4))
    with pytest.raises(ValueError, match="width"):
        PixelCNNConfig((1, 4, 4), width=0)
    with pytest.raises(ValueError, match="n_bits"):
        PixelCNNConfig((1, 4, 4), n_bits=9)
    with pytest.raises(TypeError, match="PixelCNNConfig"):
        PixelCNN({"image_shape": (1, 4, 4)})


# -- 6. round trips ------------------------------------------------------------------------------

def test_config_and_state_dict_round_trips():
    cfg = PixelCNNConfig((3, 5, 4), width=8, layers=3, kernel_size=5, n_mix=2, n_bits=6)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["image_shape"] == [3, 5, 4]
    assert PixelCNNConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown"):
        PixelCNNConfig.from_dict({**d, "depth": 3})
    torch.manual_seed(0)
    a = PixelCNN(cfg)
    b = PixelCNN(PixelCNNConfig.from_dict(d))
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 64, (2, 3, 5, 4), dtype=torch.uint8)
    assert torch.equal(a(x), b(x)) and torch.equal(a.log_prob(x), b.log_prob(x))

"""The VAE's bounds: IWAE_k increases in k towards the exact log P(x) (computed by quadrature over
a 1-d latent), the ELBO sits below it, the KL is the closed form; plus determinism, validation,
round trips, training and sampling."""

import itertools
import json
import math

import pytest
import torch

from ood_core import discretized as dl
from ood_core.vae import VAE, VAEConfig, gaussian_kl, negative_elbo_bpd

LOG_2PI = math.log(2 * math.pi)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: a second thread only adds synchronisation, which is very slow when
    another process holds the other core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _perturbed_model(config: VAEConfig, seed: int, scale: float = 0.3, enc_head: float = 0.3) -> VAE:
    """A random float64 model whose q(z|x) and p(x|z) are far from their initial, nearly trivial
    state (the decoder clearly depends on z, q is not the posterior) but not extreme."""
    torch.manual_seed(seed)
    model = VAE(config).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
        model.enc_head.weight.mul_(enc_head)
    return model.eval()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# 1. IWAE_k is non-decreasing in k in expectation and E[IWAE_1] = ELBO
# --------------------------------------------------------------------------------------------


def test_iwae_increases_with_k_in_expectation_and_iwae1_matches_the_elbo():
    config = VAEConfig((1, 4, 4), latent=2, width=8, n_mix=2, n_bits=8)
    model = _perturbed_model(config, seed=1, scale=0.2, enc_head=1.0)
    with torch.no_grad():  # q(z|x) e times wider than it was: a clear gap for the IWAE to close
        model.enc_head.bias[config.latent:] += 1.0
    x = model.sample(3, _gen(0))
    reps = 300
    x_rep = x.repeat(reps, 1, 1, 1)  # every row an independent draw for its image
    g = _gen(1)
    with torch.no_grad():
        draws = {k: model.iwae(x_rep, k, g, chunk=16).reshape(reps, len(x)) for k in (1, 4, 16, 64)}
        elbo = torch.stack([model.elbo(x_rep, g).reshape(reps, len(x)) for _ in range(4)]).flatten(0, 1)
    mean = {k: v.mean(0) for k, v in draws.items()}
    se = {k: v.std(0) / math.sqrt(reps) for k, v in draws.items()}
    ks = sorted(draws)
    for a, b in zip(ks, ks[1:]):
        tol = 3 * torch.sqrt(se[a] ** 2 + se[b] ** 2)
        assert (mean[b] >= mean[a] - tol).all(), (a, b, mean[a], mean[b], tol)
    # The gap is real: IWAE_64 is significantly above IWAE_1 (strictly increasing overall).
    assert (mean[64] - mean[1] > 3 * torch.sqrt(se[1] ** 2 + se[64] ** 2)).all()
    # E[IWAE_1] = E[log p(x|z) + log p(z) - log q(z|x)] = E[log p(x|z)] - KL = ELBO.
    elbo_mean, elbo_se = elbo.mean(0), elbo.std(0) / math.sqrt(len(elbo))
    assert (torch.abs(mean[1] - elbo_mean) < 4 * torch.sqrt(se[1] ** 2 + elbo_se**2)).all()
    # The analytic-KL ELBO has lower variance than the one-sample log q estimate.
    assert (elbo.std(0) <= draws[1].std(0)).all()


def test_iwae_with_k1_uses_the_same_sample_as_the_elbo():
    config = VAEConfig((1, 4, 4), latent=3, width=8)
    model = _perturbed_model(config, seed=5)
    x = model.sample(4, _gen(0))
    with torch.no_grad():
        parts = model.elbo_parts(x, _gen(7))
        iw1 = model.iwae(x, 1, _gen(7))
        mu, log_std = model.encode(x)
    eps = torch.randn(mu.shape, generator=_gen(7), dtype=torch.float64)
    z = mu + log_std.exp() * eps
    log_pz = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(1)
    log_q = (-0.5 * eps**2 - log_std - 0.5 * LOG_2PI).sum(1)
    torch.testing.assert_close(iw1, parts["log_px_z"] + log_pz - log_q)
    torch.testing.assert_close(parts["elbo"], parts["log_px_z"] - parts["kl"])


# --------------------------------------------------------------------------------------------
# 2. Exact case: 1-d latent, binary 4x4 images; log P(x) by quadrature
# --------------------------------------------------------------------------------------------

_Z = torch.linspace(-8.0, 8.0, 401, dtype=torch.float64)  # trapezoid rule; the integrand is ~0 at the ends
_LOG_H = math.log(float(_Z[1] - _Z[0]))
_LOG_PRIOR = -0.5 * _Z**2 - 0.5 * LOG_2PI


@pytest.fixture(scope="module")
def exact_model():
    return _perturbed_model(VAEConfig((1, 4, 4), latent=1, width=4, n_mix=1, n_bits=1), seed=0)


def _log_px_given_grid(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x | z) for every image of ``x`` and every grid point, ``[B, G]``, via the model's path."""
    with torch.no_grad():
        params = model.decode(_Z[:, None])
    return torch.stack([dl.log_prob(params, xi.expand(len(_Z), -1, -1, -1), 1, 1) for xi in x])


def _log_marginal(log_px_z: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(log_px_z + _LOG_PRIOR + _LOG_H, dim=-1)


def test_iwae_approaches_the_exact_log_likelihood_from_below(exact_model):
    model = exact_model
    x = torch.cat([model.sample(3, _gen(11)), torch.zeros(1, 1, 4, 4, dtype=torch.uint8)])
    lp = _log_px_given_grid(model, x)
    log_p = _log_marginal(lp)
    with torch.no_grad():
        mu, log_std = model.encode(x)
        reps = 8  # independent IWAE_1000 draws per image, in one call
        iwae = model.iwae(x.repeat(reps, 1, 1, 1), 1000, _gen(0), chunk=250).reshape(reps, len(x))
        elbo_mc = model.elbo(x.repeat(2000, 1, 1, 1), _gen(100)).reshape(2000, len(x))
    # Exact ELBO by the same quadrature: E_q log p(x|z) - KL.
    log_q = -0.5 * ((_Z - mu) / log_std.exp()) ** 2 - log_std - 0.5 * LOG_2PI  # [B, G]
    elbo_exact = (log_q.exp() * lp).sum(1) * math.exp(_LOG_H) - gaussian_kl(mu, log_std)
    gap = log_p - elbo_exact
    assert (gap > 0).all() and gap.max() > 0.1  # non-trivial: q is not the posterior
    # The one-sample ELBO estimator is unbiased for the exact ELBO.
    se = elbo_mc.std(0) / math.sqrt(len(elbo_mc))
    assert (torch.abs(elbo_mc.mean(0) - elbo_exact) < 4 * se).all()
    # IWAE_1000 is not above log P(x) beyond its Monte Carlo noise, and closes at least 80 % of the
    # ELBO's gap; its noise is small enough for that to mean something.
    iw_mean, iw_se = iwae.mean(0), iwae.std(0) / math.sqrt(reps)
    assert (iw_se < 0.05).all(), iw_se
    assert (iw_mean < log_p + 4 * iw_se).all(), (iw_mean, log_p, iw_se)
    assert (iw_mean > log_p - 0.2 * gap - 4 * iw_se).all(), (iw_mean, log_p, gap, iw_se)


def test_quadrature_marginal_is_normalised_over_every_image(exact_model):
    model = exact_model
    with torch.no_grad():
        params = model.decode(_Z[:, None])  # [G, 3, 4, 4]
    zeros = torch.zeros(len(_Z), 1, 4, 4, dtype=torch.uint8)
    lp0 = dl.log_prob_pixels(params, zeros, 1, 1).flatten(1)  # [G, 16]: log p(pixel = 0 | z)
    lp1 = dl.log_prob_pixels(params, zeros + 1, 1, 1).flatten(1)
    torch.testing.assert_close(torch.logaddexp(lp0, lp1), torch.zeros_like(lp0), atol=1e-12, rtol=0)
    # Every binary 4x4 image; given z the pixels are independent, so log p(x|z) = sum of pixel terms.
    images = torch.tensor(list(itertools.product((0, 1), repeat=16)), dtype=torch.float64)  # [65536, 16]
    # ... which is what the model computes (spot check of the shortcut on a few images).
    some = torch.randperm(len(images), generator=_gen(0))[:5]
    direct = _log_px_given_grid(model, images[some].to(torch.uint8).reshape(-1, 1, 4, 4))
    torch.testing.assert_close(images[some] @ (lp1 - lp0).T + lp0.sum(1), direct)
    log_p = torch.cat([_log_marginal(chunk @ (lp1 - lp0).T + lp0.sum(1)) for chunk in images.split(8192)])
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-9)
    # ELBO <= log P(x), with the model's own encoder, on a random quarter of the images.
    some = torch.randperm(len(images), generator=_gen(1))[: len(images) // 4]
    with torch.no_grad():
        mu, log_std = model.encode(images[some].to(torch.uint8).reshape(-1, 1, 4, 4))
    # E_q log p(x|z) exactly by quadrature, for all these images at once: E_q[lp0_i(z)], E_q[lp1_i(z)].
    w = torch.softmax(-0.5 * ((_Z - mu) / log_std.exp()) ** 2, dim=1)  # q on the grid, normalised
    e_log_px = images[some] * (w @ lp1) + (1 - images[some]) * (w @ lp0)
    elbo = e_log_px.sum(1) - gaussian_kl(mu, log_std)
    assert (elbo <= log_p[some] + 1e-9).all()


# --------------------------------------------------------------------------------------------
# 3. KL closed form
# --------------------------------------------------------------------------------------------


def test_gaussian_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, log_std = torch.randn(5, 7, dtype=torch.float64) * 2, torch.randn(5, 7, dtype=torch.float64)
    q = torch.distributions.Normal(mu, log_std.exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(gaussian_kl(mu, log_std), torch.distributions.kl_divergence(q, p).sum(-1))
    assert torch.equal(gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)), torch.zeros(3))


def test_elbo_parts_kl_is_the_closed_form_of_the_encoder_output(monkeypatch):
    model = VAE(VAEConfig((1, 4, 4), latent=2, width=4))
    mu = torch.tensor([[1.0, -2.0], [0.0, 0.0]])
    log_std = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    monkeypatch.setattr(model, "encode", lambda x: (mu, log_std))
    x = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    parts = model.elbo_parts(x, _gen(0))
    # 1/2 (1 + 1 - 1 - 0) + 1/2 (4 + 4 - 1 - 2 log 2) for the first row; 0 for the standard normal.
    expected = torch.tensor([0.5 + 0.5 * (7.0 - 2 * math.log(2.0)), 0.0])
    torch.testing.assert_close(parts["kl"], expected)


# --------------------------------------------------------------------------------------------
# 4. Plumbing
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return VAE(VAEConfig((3, 8, 8), latent=4, width=8, n_mix=2)).eval()


def _images(n, shape=(3, 8, 8), seed=0, top=256):
    return torch.randint(0, top, (n, *shape), dtype=torch.uint8, generator=_gen(seed))


def test_shapes_determinism_and_chunk_invariance(small):
    x = _images(5)
    with torch.no_grad():
        parts = small.elbo_parts(x, _gen(1))
        assert set(parts) == {"log_px_z", "kl", "elbo"}
        assert all(v.shape == (5,) and torch.isfinite(v).all() for v in parts.values())
        assert torch.equal(small.elbo(x, _gen(1)), parts["elbo"])
        assert not torch.equal(small.elbo(x, _gen(2)), parts["elbo"])
        iw = small.iwae(x, 10, _gen(3), chunk=4)
        assert iw.shape == (5,)
        assert torch.equal(small.iwae(x, 10, _gen(3), chunk=4), iw)
        torch.testing.assert_close(small.iwae(x, 10, _gen(3), chunk=64), iw)  # same samples, other batching
        mu, log_std = small.encode(x)
        assert mu.shape == log_std.shape == (5, 4)
        assert small.decode(mu).shape == (5, dl.n_params(2, 3), 8, 8)
    # Global RNG when no generator is given.
    torch.manual_seed(9)
    a = small.elbo(x)
    torch.manual_seed(9)
    assert torch.equal(small.elbo(x), a)


def test_untrained_model_is_sane(small):
    x = _images(16)
    with torch.no_grad():
        parts = small.elbo_parts(x, _gen(0))
    assert (parts["kl"] < 1.0).all()  # q starts near the prior
    bpd = -parts["elbo"] / (3 * 8 * 8 * math.log(2))
    assert ((bpd > 8.0) & (bpd < 10.0)).all()  # uniform noise: 8 bits/dim is the best possible


def test_bad_inputs_raise_helpful_errors(small):
    x = _images(2)
    with pytest.raises(TypeError, match="uint8"):
        small.elbo(x.float())
    with pytest.raises(ValueError, match="image_shape"):
        small.elbo(_images(2, shape=(1, 8, 8)))
    with pytest.raises(ValueError, match="image_shape"):
        small.elbo(x[0])
    with pytest.raises(ValueError, match="k must be"):
        small.iwae(x, 0)
    with pytest.raises(ValueError, match="chunk"):
        small.iwae(x, 2, chunk=0)
    with pytest.raises(ValueError, match=r"z must be shaped \[B, 4\]"):
        small.decode(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="divisible by 4"):
        VAEConfig((1, 28, 30))
    with pytest.raises(ValueError, match="n_bits"):
        VAEConfig((1, 8, 8), n_bits=9)
    with pytest.raises(ValueError, match="latent"):
        VAEConfig((1, 8, 8), latent=0)
    with pytest.raises(ValueError, match="image_shape"):
        VAEConfig((8, 8))
    with pytest.raises(TypeError, match="VAEConfig"):
        VAE({"image_shape": (1, 8, 8)})
    three_bit = VAE(VAEConfig((1, 4, 4), latent=2, width=4, n_bits=3))
    with pytest.raises(ValueError, match="3 bits"):
        three_bit.elbo(torch.full((1, 1, 4, 4), 8, dtype=torch.uint8))


def test_config_dict_round_trip():
    config = VAEConfig([3, 32, 32], latent=16, width=32, n_mix=5, n_bits=5)
    assert config.image_shape == (3, 32, 32) and config.num_dims == 3 * 32 * 32
    assert VAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown VAEConfig keys"):
        VAEConfig.from_dict({**config.to_dict(), "depth": 3})


def test_state_dict_round_trip_gives_identical_outputs(small, tmp_path):
    torch.save({"config": small.config.to_dict(), "state": small.state_dict()}, tmp_path / "vae.pt")
    saved = torch.load(tmp_path / "vae.pt", weights_only=True)
    clone = VAE(VAEConfig.from_dict(saved["config"]))
    clone.load_state_dict(saved["state"])
    clone.eval()
    x = _images(4)
    with torch.no_grad():
        assert torch.equal(clone.iwae(x, 5, _gen(0)), small.iwae(x, 5, _gen(0)))
        assert torch.equal(clone.sample(3, _gen(1)), small.sample(3, _gen(1)))


def test_adam_steps_reduce_the_negative_elbo():
    torch.manual_seed(0)
    model = VAE(VAEConfig((1, 8, 8), latent=4, width=8))
    # Two structured images (bars) the model can learn quickly.
    x = torch.zeros(8, 1, 8, 8, dtype=torch.uint8)
    x[::2, :, :, :4] = 250
    x[1::2, :, :4, :] = 200

    def loss_at_fixed_noise():
        with torch.no_grad():
            return (-model.elbo(x, _gen(0)) / (64 * math.log(2))).mean().item()

    before = loss_at_fixed_noise()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = negative_elbo_bpd(model, (x, torch.zeros(8)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = loss_at_fixed_noise()
    assert math.isfinite(losses[0]) and losses[0] == pytest.approx(before, rel=0.05)
    assert after < before - 0.5, (before, after)
    # The loss is bits/dim of -ELBO, as documented.
    with torch.no_grad():
        torch.manual_seed(1)
        direct = negative_elbo_bpd(model, x)
        torch.manual_seed(1)
        assert direct.item() == pytest.approx((-model.elbo(x)).mean().item() / (64 * math.log(2)), rel=1e-6)


def test_samples_are_uint8_in_range():
    model = VAE(VAEConfig((2, 4, 8), latent=3, width=4, n_mix=3, n_bits=3))
    s = model.sample(6, _gen(0))
    assert s.dtype == torch.uint8 and s.shape == (6, 2, 4, 8)
    assert int(s.max()) <= 7
    assert torch.equal(model.sample(6, _gen(0)), s)
    with pytest.raises(ValueError, match="n must be"):
        model.sample(0)


def test_bf16_autocast_keeps_the_likelihood_in_float32(small):
    x = _images(4)
    with torch.no_grad():
        ref = small.elbo(x, _gen(0))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = small.elbo(x, _gen(0))
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, ref, rtol=0.02, atol=0.0)

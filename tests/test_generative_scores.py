"""Generative-model OOD scores: closed forms, hand-computed cases and the properties each paper relies on."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ood_core.generative_scores import (
    _encode,
    compressed_bits,
    ensemble_log_likelihood,
    estimate_entropy,
    format_ci,
    input_complexity_score,
    input_complexity_statistic,
    likelihood_ratio,
    perturb_pixels,
    seed_spread,
    typicality_auroc_by_batch_size,
    typicality_scores,
    verdict,
    waic,
)

CODECS = ("png", "webp", "lzma")


def _noise_images(n: int, c: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _constant_images(n: int, c: int, size: int = 16, value: int = 117) -> torch.Tensor:
    return torch.full((n, c, size, size), value, dtype=torch.uint8)


# ------------------------------------------------------------------------- likelihood ratio


def test_likelihood_ratio_of_identical_models_is_zero_and_hand_case():
    log_p = np.array([-3000.5, -1234.0, -10.25])
    np.testing.assert_array_equal(likelihood_ratio(log_p, log_p.copy()), np.zeros(3))
    np.testing.assert_allclose(likelihood_ratio(torch.tensor([1.0, 2.0]), [0.5, 3.0]), [0.5, -1.0])
    with pytest.raises(ValueError, match="same examples"):
        likelihood_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        likelihood_ratio([1.0, float("nan")], [1.0, 2.0])


def test_perturb_pixels_rate_zero_is_identity_and_input_untouched():
    x = _noise_images(3, 3, size=8)
    before = x.clone()
    out = perturb_pixels(x, 0.0, torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    out_all = perturb_pixels(x, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(x, before)  # never written into
    assert not torch.equal(out_all, x)


@pytest.mark.parametrize("channels", [1, 3])
def test_perturb_pixels_rate_one_changes_almost_every_location(channels):
    x = _noise_images(8, channels, size=16)
    out, mask = perturb_pixels(x, 1.0, torch.Generator().manual_seed(2), return_mask=True)
    assert mask.shape == (8, 1, 16, 16) and bool(mask.all())
    unchanged = (out == x).all(dim=1).double().mean().item()  # a location whose channels all kept their value
    # a fresh uniform value equals the old one with probability 1/256 per channel
    assert unchanged < (0.02 if channels == 1 else 1e-3)


def test_perturb_pixels_replaces_all_channels_of_a_location_together():
    x = _noise_images(16, 3, size=16)
    out, mask = perturb_pixels(x, 0.5, torch.Generator().manual_seed(3), return_mask=True)
    # locations not selected are copied exactly in every channel
    keep = ~mask.expand_as(x)
    assert torch.equal(out[keep], x[keep])
    assert 0.4 < mask.double().mean().item() < 0.6
    changed_per_location = (out != x).sum(dim=1)  # [N, H, W] in 0..3
    selected = mask[:, 0]
    # a selected location has all 3 channels redrawn: fewer than 3 change only by coincidence
    # (1/256 per channel); an independent per-channel mask would leave ~3/4 of them partial
    partial = ((changed_per_location > 0) & (changed_per_location < 3)).double().mean().item()
    assert partial < 0.03
    assert (changed_per_location[selected] == 3).double().mean().item() > 0.97


def test_perturb_pixels_deterministic_with_seeded_generator_and_numpy_in_numpy_out():
    x = _noise_images(4, 3, size=8)
    a = perturb_pixels(x, 0.3, torch.Generator().manual_seed(7))
    b = perturb_pixels(x, 0.3, torch.Generator().manual_seed(7))
    c = perturb_pixels(x, 0.3, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    x_np = x.numpy().copy()
    out_np = perturb_pixels(x_np, 0.3, torch.Generator().manual_seed(7))
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.uint8
    np.testing.assert_array_equal(out_np, a.numpy())
    np.testing.assert_array_equal(x_np, x.numpy())
    with pytest.raises(ValueError, match="probability"):
        perturb_pixels(x, 1.5)
    with pytest.raises(TypeError, match="uint8"):
        perturb_pixels(x.float(), 0.1)


# ------------------------------------------------------------------------------- typicality


def test_estimate_entropy_is_the_mean_nll():
    assert estimate_entropy([1.0, 2.0, 6.0]) == 3.0


def test_typicality_batch_at_the_entropy_scores_zero_the_maximum():
    nll = np.array([1.0, 3.0, 0.0, 8.0])  # batch means 2.0 and 4.0
    scores = typicality_scores(nll, train_entropy=2.0, batch_size=2)
    np.testing.assert_array_equal(scores, [0.0, -2.0])
    assert scores.max() == 0.0 and np.all(scores <= 0.0)
    # the remainder is dropped: 5 examples in batches of 2 give 2 scores
    assert typicality_scores(np.append(nll, 100.0), 2.0, 2).shape == (2,)


def test_typicality_batch_size_one_is_minus_abs_distance():
    nll = np.array([3.5, 2.0, 5.0, 2.75])
    np.testing.assert_allclose(typicality_scores(nll, 3.0, 1), -np.abs(nll - 3.0))
    # with a generator the same values come in a shuffled order
    shuffled = typicality_scores(nll, 3.0, 1, generator=np.random.default_rng(0))
    np.testing.assert_allclose(np.sort(shuffled), np.sort(-np.abs(nll - 3.0)))


def test_typicality_random_batches_are_seeded_and_valid():
    nll = np.arange(10.0)
    a = typicality_scores(nll, 4.5, 3, generator=np.random.default_rng(5), n_batches=50)
    b = typicality_scores(nll, 4.5, 3, generator=np.random.default_rng(5), n_batches=50)
    assert a.shape == (50,) and np.array_equal(a, b)
    # a batch of 3 distinct values of 0..9 has mean in [1, 8]
    assert np.all(-a <= 3.5)
    with pytest.raises(ValueError, match="generator"):
        typicality_scores(nll, 4.5, 3, n_batches=5)
    with pytest.raises(ValueError, match="batch_size"):
        typicality_scores(nll, 4.5, 11)


def test_typicality_auroc_increases_with_batch_size():
    rng = np.random.default_rng(0)
    entropy = 3.0
    id_nll = rng.normal(entropy, 1.0, 2000)
    ood_nll = rng.normal(entropy - 0.5, 1.0, 2000)  # slightly *more* likely on average, as in Nalisnick et al.
    table = typicality_auroc_by_batch_size(id_nll, ood_nll, entropy, [1, 10, 50], seed=0)
    assert list(table.columns) == ["batch_size", "AUROC", "n_batches_id", "n_batches_ood"]
    assert table["batch_size"].tolist() == [1, 10, 50]
    assert table["n_batches_id"].tolist() == [2000, 200, 40]
    aurocs = table["AUROC"].to_numpy()
    assert np.all(np.diff(aurocs) > 0), aurocs
    assert aurocs[0] < 65 and aurocs[-1] > 95
    # rows depend on (seed, M) only
    again = typicality_auroc_by_batch_size(id_nll, ood_nll, entropy, [50], seed=0)
    assert again["AUROC"].iloc[0] == aurocs[-1]


# ------------------------------------------------------------------------ input complexity


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("channels", [1, 3])
def test_compressed_bits_positive_and_noise_costs_more_than_constant(codec, channels):
    noise = compressed_bits(_noise_images(3, channels), codec)
    constant = compressed_bits(_constant_images(3, channels), codec)
    assert noise.dtype == np.int64 and noise.shape == (3,)
    assert np.all(constant > 0) and np.all(noise % 8 == 0)
    assert np.all(noise > constant)
    # uniform noise is incompressible: at least ~the raw 8 bits per value
    assert np.all(noise >= 0.95 * 8 * channels * 16 * 16)
    # numpy input gives the same lengths
    np.testing.assert_array_equal(compressed_bits(_noise_images(3, channels).numpy(), codec), noise)


@pytest.mark.parametrize("codec", ["png", "webp"])
@pytest.mark.parametrize("channels", [1, 3])
def test_image_codecs_are_lossless(codec, channels):
    image = _noise_images(1, channels, size=12)[0].permute(1, 2, 0).numpy()
    decoded = Image.open(io.BytesIO(_encode(np.ascontiguousarray(image), codec)))
    decoded = np.asarray(decoded.convert("L" if channels == 1 else "RGB"))
    np.testing.assert_array_equal(decoded.reshape(image.shape), image)


def test_compressed_bits_rejects_bad_input():
    with pytest.raises(ValueError, match="codec"):
        compressed_bits(_constant_images(1, 1), "jpeg")
    with pytest.raises(ValueError, match="C = 1 or 3"):
        compressed_bits(torch.zeros(1, 2, 4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        compressed_bits(torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize("codec", CODECS)
def test_input_complexity_closed_form_and_ordering(codec):
    images = torch.cat([_constant_images(2, 3), _noise_images(2, 3)])
    dims = 3 * 16 * 16
    log_px = np.full(4, -6.0 * dims * math.log(2.0))  # 6 bits/dim for every image
    score = input_complexity_score(log_px, images, codec)
    expected = (log_px / math.log(2.0) + compressed_bits(images, codec)) / dims
    np.testing.assert_allclose(score, expected)
    np.testing.assert_allclose(input_complexity_statistic(log_px, images, codec), -score)
    # equal likelihoods: the simple (constant) images are the suspicious ones (large S, low score)
    assert score[:2].max() < score[2:].min()
    with pytest.raises(ValueError, match="entries"):
        input_complexity_score(log_px[:3], images, codec)


# -------------------------------------------------------------------------------- ensembles


def test_waic_identical_members_is_the_mean_and_hand_case():
    member = np.array([-10.0, -2.5, 3.0])
    np.testing.assert_allclose(waic(np.stack([member] * 4)), member)
    # members 0 and 2: mean 1, variance 1 (ddof=0) or 2 (ddof=1)
    np.testing.assert_allclose(waic([[0.0], [2.0]]), [0.0])
    np.testing.assert_allclose(waic(torch.tensor([[0.0], [2.0]]), ddof=1), [-1.0])
    with pytest.raises(ValueError, match="2-D"):
        waic(member)


def test_ensemble_log_likelihood_log_mean_exp():
    member = np.array([-5000.0, -1.0, 7.0])  # -5000 would underflow without the max shift
    np.testing.assert_allclose(ensemble_log_likelihood(np.stack([member] * 3)), member)
    np.testing.assert_allclose(ensemble_log_likelihood([[0.0], [2.0]]), [math.log((1.0 + math.exp(2.0)) / 2.0)])
    np.testing.assert_allclose(ensemble_log_likelihood([[-3000.0], [-3000.0 + math.log(3.0)]]), [-3000.0 + math.log(2.0)])


# -------------------------------------------------------------------------------- reporting


def test_seed_spread_and_format_ci():
    assert seed_spread([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    mean, std, n = seed_spread(np.array([4.0]))
    assert (mean, n) == (4.0, 1) and math.isnan(std)
    assert format_ci(91.2, 89.8, 92.5) == "91.2 [89.8, 92.5]"
    assert format_ci(91.234, 89.75, 92.5, digits=2) == "91.23 [89.75, 92.50]"
    with pytest.raises(ValueError, match="order"):
        format_ci(1.0, 2.0, 1.0)


def test_verdict_truth_table():
    assert verdict(True, True) == "reproduced"
    assert verdict(True, False) == "reproduced"
    assert verdict(False, True) == "partly"
    assert verdict(False, False) == "not"
    assert verdict(np.float64(96.0) >= 95, np.float64(96.0) >= 85) == "reproduced"
    with pytest.raises(TypeError, match="bool"):
        verdict(96.0, True)

"""Generative-model OOD scores: closed forms, hand-computed cases and the properties each paper relies on."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neighbors import KernelDensity
from sklearn.svm import OneClassSVM

from ood_core.generative_scores import (
    FLOW_DOSE_STATISTICS,
    VAE_DOSE_STATISTICS,
    DoSE,
    _encode,
    compressed_bits,
    dose_statistics,
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
    waic,
)
from ood_core.metrics import auroc

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
    assert mask.shape == (8, channels, 16, 16) and bool(mask.all())
    unchanged = (out == x).all(dim=1).double().mean().item()  # a location whose channels all kept their value
    # a fresh uniform value equals the old one with probability 1/256 per channel
    assert unchanged < (0.02 if channels == 1 else 1e-3)


def test_perturb_pixels_sub_pixels_independently_as_ren_et_al():
    """Ren et al.'s ``mutate_x``: every channel value of every pixel is replaced on its own with probability mu,
    by a value uniform on {0..255}. Checked on 307,200 sub-pixels: the fraction per channel, the independence
    of the channels of one pixel (how many of its 3 are replaced is Binomial(3, mu)) and the replaced values."""
    from scipy import stats

    mu = 0.2
    x = _noise_images(400, 3, size=16)
    out, mask = perturb_pixels(x, mu, torch.Generator().manual_seed(11), return_mask=True)
    assert mask.shape == x.shape
    assert torch.equal(out[~mask], x[~mask])  # what is not selected is copied
    per_channel = mask.double().mean(dim=(0, 2, 3))
    n_per_channel = mask[:, 0].numel()
    se = math.sqrt(mu * (1 - mu) / n_per_channel)
    assert torch.all((per_channel - mu).abs() < 4 * se), per_channel
    counts = np.bincount(mask.sum(dim=1).flatten().numpy(), minlength=4)  # replaced channels per pixel: 0..3
    expected = stats.binom.pmf(np.arange(4), 3, mu) * counts.sum()
    assert stats.chisquare(counts, expected).pvalue > 1e-3, (counts, expected)
    both = (mask[:, 0] & mask[:, 1]).double().mean().item()
    assert abs(both - mu**2) < 4 * math.sqrt(mu**2 * (1 - mu**2) / n_per_channel)  # P(two channels) = mu^2
    values = np.bincount(out[mask].numpy().astype(np.int64), minlength=256)  # uniform on 0..255
    assert stats.chisquare(values).pvalue > 1e-3
    assert not torch.equal(perturb_pixels(x, mu, torch.Generator().manual_seed(11), unit="pixel"), out)
    with pytest.raises(ValueError, match="sub-pixels"):
        perturb_pixels(x, mu, unit="channel")


def test_perturb_pixels_by_pixel_replaces_all_channels_of_a_location_together():
    x = _noise_images(16, 3, size=16)
    out, mask = perturb_pixels(x, 0.5, torch.Generator().manual_seed(3), unit="pixel", return_mask=True)
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


def _correlated_stats(n: int, seed: int, shift: float = 0.0, column: int = 1) -> dict[str, np.ndarray]:
    """Three statistics on very different scales, the first two correlated (like log p(x) and
    log p(z)), with an optional shift of ``shift`` standard deviations in one of them."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 3))
    base[:, 1] = 0.8 * base[:, 0] + 0.6 * base[:, 1]
    base[:, column] += shift
    scale = np.array([300.0, 50.0, 2.0])
    offset = np.array([-8000.0, -7000.0, 10.0])
    values = base * scale + offset
    return {"log_px": values[:, 0], "log_pz": values[:, 1], "logdet": values[:, 2]}


def _standardised(holdout: dict, test: dict) -> tuple[np.ndarray, np.ndarray]:
    h = np.stack(list(holdout.values()), axis=1)
    t = np.stack([test[k] for k in holdout], axis=1)
    mean, std = h.mean(axis=0), h.std(axis=0)
    return (h - mean) / std, (t - mean) / std


@pytest.mark.parametrize("rule", ["scott", "silverman"])
def test_dose_joint_kde_equals_sklearn_on_the_standardised_statistics(rule):
    holdout, test = _correlated_stats(400, 0), _correlated_stats(50, 1, shift=1.5)
    dose = DoSE("joint_kde", bandwidth=rule).fit(holdout)
    z_holdout, z_test = _standardised(holdout, test)
    n, d = z_holdout.shape
    expected_h = n ** (-1 / (d + 4)) if rule == "scott" else (n * (d + 2) / 4) ** (-1 / (d + 4))
    assert dose.bandwidth_ == pytest.approx(expected_h, rel=1e-12)
    reference = KernelDensity(kernel="gaussian", bandwidth=rule).fit(z_holdout)
    assert reference.bandwidth_ == pytest.approx(dose.bandwidth_, rel=1e-12)  # sklearn's rule is the same
    scores = dose.score(test)
    assert scores.dtype == np.float64 and scores.shape == (50,)
    np.testing.assert_allclose(scores, reference.score_samples(z_test), rtol=1e-12, atol=1e-10)
    fixed = DoSE("joint_kde", bandwidth=0.7).fit(holdout).score(test)
    np.testing.assert_allclose(fixed, KernelDensity(bandwidth=0.7).fit(z_holdout).score_samples(z_test), rtol=1e-12)


@pytest.mark.parametrize("rule", ["scott", "silverman", 0.7])
def test_dose_default_is_the_papers_sum_of_per_statistic_log_densities(rule):
    """Morningstar et al.'s DoSE_KDE: one 1-D KDE per statistic, their log-densities summed -- checked against
    scipy's gaussian_kde, an implementation independent of the scikit-learn estimator DoSE uses."""
    from scipy.stats import gaussian_kde

    holdout, test = _correlated_stats(400, 0), _correlated_stats(50, 1, shift=1.5)
    dose = DoSE(bandwidth=rule).fit(holdout)
    assert dose.method == "kde"
    z_holdout, z_test = _standardised(holdout, test)
    n = len(z_holdout)
    h = {"scott": n ** (-1 / 5), "silverman": (n * 3 / 4) ** (-1 / 5)}.get(rule, rule)  # 1-D rules
    np.testing.assert_allclose(dose.bandwidth_, [h] * 3, rtol=1e-12)
    expected = np.zeros(len(z_test))
    for s in range(3):
        # gaussian_kde's kernel std is factor * (sample std, ddof=1); ours is h on population-standardised data
        factor = h / z_holdout[:, s].std(ddof=1)
        expected += gaussian_kde(z_holdout[:, s], bw_method=factor).logpdf(z_test[:, s])
    np.testing.assert_allclose(dose.score(test), expected, rtol=1e-10, atol=1e-10)
    joint = DoSE("joint_kde", bandwidth=rule).fit(holdout).score(test)
    assert not np.allclose(joint, dose.score(test))  # the correlated statistics make the two differ


def test_dose_kde_is_the_gaussian_kernel_formula_by_hand():
    holdout = {"a": np.array([0.0, 1.0, 3.0]), "b": np.array([2.0, -1.0, 5.0])}
    test = {"a": np.array([0.5, 10.0]), "b": np.array([1.0, 0.0])}
    dose = DoSE("joint_kde", bandwidth=0.8).fit(holdout)
    z_holdout, z_test = _standardised(holdout, test)
    sq = ((z_test[:, None, :] - z_holdout[None, :, :]) ** 2).sum(-1)
    by_hand = np.log(np.mean(np.exp(-sq / (2 * 0.8**2)), axis=1)) - np.log(2 * math.pi * 0.8**2)
    np.testing.assert_allclose(dose.score(test), by_hand, rtol=1e-12)
    per_statistic = sum(np.log(np.mean(np.exp(-(z_test[:, None, s] - z_holdout[None, :, s]) ** 2 / (2 * 0.8**2)),
                                       axis=1)) - 0.5 * np.log(2 * math.pi * 0.8**2) for s in range(2))
    np.testing.assert_allclose(DoSE(bandwidth=0.8).fit(holdout).score(test), per_statistic, rtol=1e-12)


def test_dose_cv_bandwidth_is_sklearns_grid_search_and_near_scott_for_gaussian_data():
    rng = np.random.default_rng(3)
    holdout = rng.normal(size=(600, 2)) * [5.0, 0.1]
    dose = DoSE("joint_kde", bandwidth="cv").fit(holdout)
    z = (holdout - holdout.mean(0)) / holdout.std(0)
    scott = 600 ** (-1 / 6)
    search = GridSearchCV(KernelDensity(), {"bandwidth": scott * np.geomspace(0.1, 10, 21)},
                          cv=KFold(5, shuffle=True, random_state=0)).fit(z)
    assert dose.bandwidth_ == pytest.approx(search.best_params_["bandwidth"], rel=1e-12)
    # for Gaussian statistics the normal-reference rule is close to the likelihood-CV optimum
    assert 0.5 < dose.bandwidth_ / scott < 2.0


def test_dose_ocsvm_equals_sklearn_decision_function():
    holdout, test = _correlated_stats(300, 0), _correlated_stats(40, 2, shift=2.0)
    dose = DoSE("ocsvm").fit(holdout)
    z_holdout, z_test = _standardised(holdout, test)
    reference = OneClassSVM(kernel="rbf", nu=0.1, gamma="scale").fit(z_holdout)
    assert reference._gamma == pytest.approx(1 / 3, rel=1e-9)  # "scale" is 1 / S on standardised data
    np.testing.assert_allclose(dose.score(test), reference.decision_function(z_test), rtol=1e-9, atol=1e-12)
    other = DoSE("ocsvm", nu=0.3, gamma=0.5).fit(holdout).score(test)
    np.testing.assert_allclose(other, OneClassSVM(nu=0.3, gamma=0.5).fit(z_holdout).decision_function(z_test),
                               rtol=1e-9, atol=1e-12)
    # about nu of the hold-out points lie outside the learned support (decision < 0)
    assert 0.05 < np.mean(dose.score(holdout) < 0) < 0.15


@pytest.mark.parametrize("method", ["kde", "joint_kde", "ocsvm"])
def test_dose_prefers_the_holdout_mean_to_a_far_point_on_either_side(method):
    holdout = _correlated_stats(500, 0)
    dose = DoSE(method).fit(holdout)
    mean = {k: np.array([v.mean()]) for k, v in holdout.items()}
    for sign in (+1, -1):  # higher *and* lower likelihood than the ID data are atypical
        far = {k: np.array([v.mean() + sign * 6 * v.std()]) for k, v in holdout.items()}
        assert dose.score(mean)[0] > dose.score(far)[0]


@pytest.mark.parametrize("method", ["kde", "joint_kde", "ocsvm"])
def test_dose_auroc_near_one_when_a_statistic_separates_and_chance_when_none_does(method):
    holdout = _correlated_stats(1000, 0)
    id_test = _correlated_stats(1000, 1)
    dose = DoSE(method).fit(holdout)
    # OOD shifted by 5 std in logdet only: log p(x) alone would not see it
    ood = _correlated_stats(1000, 2, shift=5.0, column=2)
    assert auroc(dose.score(id_test), dose.score(ood)) > 0.99
    # a shift *up* in the likelihood-like statistic is flagged as well
    ood_up = _correlated_stats(1000, 3, shift=-5.0, column=1)
    assert auroc(dose.score(id_test), dose.score(ood_up)) > 0.99
    # same distribution: chance (AUROC std ~0.013 for 1000 vs 1000)
    same = _correlated_stats(1000, 4)
    assert 0.45 < auroc(dose.score(id_test), dose.score(same)) < 0.55


def test_dose_statistics_must_match_those_seen_by_fit():
    holdout, test = _correlated_stats(100, 0), _correlated_stats(10, 1)
    dose = DoSE().fit(holdout)
    assert dose.statistic_names_ == ("log_px", "log_pz", "logdet") and dose.n_statistics_ == 3
    reordered = {k: test[k] for k in ("logdet", "log_px", "log_pz")}
    np.testing.assert_array_equal(dose.score(reordered), dose.score(test))  # matched by name
    with pytest.raises(ValueError, match=r"missing \['logdet'\]"):
        dose.score({k: test[k] for k in ("log_px", "log_pz")})
    with pytest.raises(ValueError, match="unexpected"):
        dose.score({**test, "z_sqnorm": test["logdet"]})
    with pytest.raises(ValueError, match="named statistics"):
        dose.score(np.stack(list(test.values()), axis=1))
    unnamed = DoSE().fit(np.stack(list(holdout.values()), axis=1))
    assert unnamed.statistic_names_ is None
    with pytest.raises(ValueError, match="3 statistics"):
        unnamed.score(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="unnamed"):
        unnamed.score(test)
    with pytest.raises(ValueError, match="1-D"):
        unnamed.score(np.zeros(3))
    with pytest.raises(ValueError, match="same examples"):
        dose.score({**test, "logdet": test["logdet"][:5]})
    with pytest.raises(ValueError, match="NaN"):
        dose.score({**test, "logdet": np.full(10, np.nan)})


def test_dose_estimator_rules():
    dose = DoSE("kde", bandwidth="cv")
    assert vars(dose) == {"method": "kde", "bandwidth": "cv", "nu": 0.1, "gamma": "scale"}
    with pytest.raises(NotFittedError, match="fit"):
        DoSE().score(np.zeros((2, 2)))
    holdout = _correlated_stats(50, 0)
    copy = {k: v.copy() for k, v in holdout.items()}
    fitted = DoSE().fit(holdout)
    assert isinstance(fitted, DoSE)
    for key in holdout:  # inputs are never modified
        np.testing.assert_array_equal(holdout[key], copy[key])
    learned = {k for k in vars(fitted) if k.endswith("_")}
    assert learned == {"statistic_names_", "n_statistics_", "mean_", "scale_", "bandwidth_", "estimator_"}
    np.testing.assert_allclose(fitted.mean_, [v.mean() for v in holdout.values()])
    np.testing.assert_allclose(fitted.scale_, [v.std() for v in holdout.values()])
    for bad in (DoSE("gmm"), DoSE(bandwidth="auto"), DoSE(bandwidth=0.0), DoSE(bandwidth=True),
                DoSE("ocsvm", nu=0.0), DoSE("ocsvm", gamma=-1.0)):
        with pytest.raises(ValueError):
            bad.fit(holdout)
    with pytest.raises(ValueError, match="constant"):
        DoSE().fit({**holdout, "logdet": np.full(50, 3.0)})
    with pytest.raises(ValueError, match="at least 2"):
        DoSE().fit(np.zeros((1, 2)))


def test_dose_statistics_picks_each_models_statistics():
    n = 6
    rng = np.random.default_rng(0)
    flow = {k: rng.normal(size=n) for k in ("log_px", "log_pz", "logdet", "bpd", "bpd_pz", "bpd_logdet")}
    assert list(dose_statistics(flow)) == list(FLOW_DOSE_STATISTICS)
    per_level = {**flow, "log_pz_level1": rng.normal(size=n), "log_pz_level0": rng.normal(size=n),
                 "z_sqnorm": rng.normal(size=n)}
    assert list(dose_statistics(per_level)) == ["log_px", "log_pz_level0", "log_pz_level1", "logdet", "z_sqnorm"]
    vae = {k: rng.normal(size=n) for k in ("log_px", "elbo", "log_px_z", "kl", "bpd", "bpd_elbo")}
    assert list(dose_statistics(vae)) == list(VAE_DOSE_STATISTICS)
    assert list(dose_statistics({"log_px": rng.normal(size=n), "bpd": rng.normal(size=n)})) == ["log_px"]
    picked = dose_statistics(vae, keys=["kl", "elbo"])
    assert list(picked) == ["kl", "elbo"] and picked["kl"].dtype == np.float64
    picked["kl"][0] = 123.0
    assert vae["kl"][0] != 123.0  # copies
    with pytest.raises(KeyError, match="available"):
        dose_statistics(flow, keys=["log_px", "kl"])
    with pytest.raises(ValueError, match="log_pz_level0"):
        dose_statistics({**flow, "log_pz_level1": rng.normal(size=n)})
    with pytest.raises(ValueError, match="same examples"):
        dose_statistics({"log_px": np.zeros(3), "log_pz": np.zeros(4), "logdet": np.zeros(3)})


def test_dose_on_score_flow_output_end_to_end():
    from _flow_checks import perturb_parameters
    from ood_core.flows import Glow, GlowConfig, initialize_actnorm
    from ood_core.likelihood import preprocess, score_flow

    torch.manual_seed(0)
    model = Glow(GlowConfig(image_shape=(1, 8, 8), levels=2, steps=1, width=4))
    images = _noise_images(40, 1, size=8, seed=5)
    initialize_actnorm(model, preprocess(images[:16]))
    perturb_parameters(model, 0.02, torch.Generator().manual_seed(1))
    stats = dose_statistics(score_flow(model, images, batch_size=20, per_level=True))
    assert list(stats) == ["log_px", "log_pz_level0", "log_pz_level1", "logdet", "z_sqnorm"]
    dose = DoSE().fit({k: v[:30] for k, v in stats.items()})
    constant = dose_statistics(score_flow(model, _constant_images(5, 1, size=8), per_level=True))
    # constant images are far from the noise images' statistics
    assert dose.score(constant).max() < dose.score({k: v[30:] for k, v in stats.items()}).min()

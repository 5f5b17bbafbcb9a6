"""Detectors that came after ASH: SCALE, GEN, KNN, ViM, fDBD, NNGuide, MaxLogit.

Each is checked twice: against pytorch-ood 0.4.0 on the same features (the oracle), and against
mathematics of our own (closed forms, geometry). pytorch-ood returns *outlier* scores, higher =
more OOD; ours are higher = more ID, so most comparisons read ``ours == -theirs``. Its
percentiles are fractions (``p / 100`` here). Where it departs from a paper (GEN's clamp, ASH-S
in float32 at high percentiles) the test follows the paper and pins the documented relation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from torch import nn
from torch.nn import functional as F

from ood_core import ash
from ood_core.scores import (
    FDBD,
    KNN,
    NNGuide,
    ViM,
    ash_energy,
    ash_global_energy,
    energy,
    exp_scaled_energy,
    gen,
    max_logit,
    vim_default_dim,
)

pood = pytest.importorskip("pytorch_ood.detector")
from pytorch_ood.detector.ash import ash_s as pood_ash_s  # noqa: E402
from pytorch_ood.detector.scale import scale as pood_scale  # noqa: E402

D, K = 32, 6


class LinearClassifier(nn.Module):
    """The classifier contract on features directly: ``features`` is the identity, ``head = fc``."""

    def __init__(self, in_features: int = D, num_classes: int = K, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(in_features, num_classes)

    def features(self, x, shaping=None):
        return x

    def head(self, f):
        return self.fc(f)

    def forward(self, x):
        return self.head(self.features(x))


def _class_features(n: int, generator: torch.Generator, spread: float = 0.6) -> torch.Tensor:
    """Non-negative features in K loose clusters (one hot-ish direction per class)."""
    centres = 2.0 * torch.rand(K, D, generator=generator)
    labels = torch.arange(n) % K
    noise = spread * torch.randn(n, D, generator=generator)
    return torch.relu(centres[labels] + noise)


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    train = _class_features(600, g)
    test_id = _class_features(40, g)
    test_ood = torch.relu(1.5 * torch.randn(40, D, generator=g))  # no cluster structure
    return {"train": train, "test": torch.cat([test_id, test_ood])}


@pytest.fixture(scope="module")
def model(data) -> LinearClassifier:
    """A softmax regression head fitted to the K clusters (deterministic, full-batch)."""
    clf = LinearClassifier()
    labels = torch.arange(len(data["train"])) % K
    optimiser = torch.optim.Adam(clf.parameters(), lr=0.05)
    for _ in range(200):
        optimiser.zero_grad()
        F.cross_entropy(clf(data["train"]), labels).backward()
        optimiser.step()
    return clf.eval()


def _labels(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.long)  # pytorch-ood: labels >= 0 mark ID samples


# ------------------------------------------------------------------------------------- SCALE


@pytest.mark.parametrize("p", [10, 65, 90, 95])
def test_scale_matches_pytorch_ood(p, model, data):
    f = data["test"]
    theirs = pood_scale(f.reshape(*f.shape, 1, 1), p / 100.0).reshape(f.shape)  # fraction, 4-D
    torch.testing.assert_close(ash.scale(f, p), theirs, rtol=2e-6, atol=1e-6)
    detector = pood.SCALE(backbone=None, head=lambda m: model.fc(m.flatten(1)), percentile=p / 100.0)
    outlier = detector.predict_feature_maps(f.reshape(*f.shape, 1, 1))
    # pytorch-ood: -energy in float32; ours: +energy in float64
    torch.testing.assert_close(ash_energy(model, f, "scale", p), -outlier.double(), rtol=1e-5, atol=1e-5)


def test_scale_is_ash_s_without_pruning(data):
    x = data["test"]
    before = x.clone()
    for p in (50, 90, 95):  # k >= 1 of 32 entries
        scaled, shaped, pruned = ash.scale(x, p), ash.ash_s(x, p), ash.ash_p(x, p)
        kept = pruned != 0
        # same factor exp(s1/s2): on kept entries SCALE equals ASH-S; elsewhere it keeps x * factor
        torch.testing.assert_close(torch.where(kept, scaled, torch.zeros_like(scaled)), shaped)
        factor = torch.exp(ash.ash_s_exponent(x.double(), p))[:, None]
        torch.testing.assert_close(scaled.double(), x.double() * factor, rtol=1e-6, atol=0)
    # p = 0 keeps everything: s2 = s1, factor e
    torch.testing.assert_close(ash.scale(x, 0), x * math.e)
    assert torch.equal(x, before)
    torch.testing.assert_close(ash.make_shaper("scale", 80)(x), ash.scale(x, 80))
    torch.testing.assert_close(ash.scale(x.reshape(-1, D, 1, 1), 80).reshape(x.shape), ash.scale(x, 80))
    with pytest.raises(ValueError, match="percent"):
        ash.scale(x, 0.5 * 300)


def test_scale_factor_does_not_depend_on_tie_breaking():
    x = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]])  # k = 2 at p = 60: {2, one of the 1s}
    torch.testing.assert_close(ash.scale(x, 60), x * math.exp(5.0 / 3.0))


# ----------------------------------------------------------------------- ASH-S over the sweep


def _closed_form_ash_energy(f: np.ndarray, w: np.ndarray, b: np.ndarray, p: float, prune: bool):
    """energy(W (x_hat e^r) + b) in float64 numpy, from the definitions, one sample at a time."""
    out, exponents = [], []
    n = f.shape[1]
    k = n - int(np.round(n * p / 100.0))
    for row in f:
        top = np.argsort(-row, kind="stable")[:k]
        kept = np.zeros_like(row)
        kept[top] = row[top]
        r = row.sum() / kept.sum()
        base = kept if prune else row
        logits = math.exp(r) * (w @ base) + b
        m = logits.max()
        out.append(m + math.log(np.exp(logits - m).sum()))
        exponents.append(r)
    return np.array(out), np.array(exponents)


def test_ash_s_at_p99_on_512d_is_the_exact_uncapped_energy(caplog):
    """p = 99, n = 512: k = 5 and s1/s2 near n/k ~ 100 for spread (average-pooled-like) features.

    The float32 shaper has to cap the exponent at 60 (exp(100) ~ 3e43 overflows float32);
    ash_energy evaluates exp(r) (W x_hat) + b in float64 and matches the closed form exactly.
    """
    g = torch.Generator().manual_seed(3)
    f = 1.0 + 0.1 * torch.rand(16, 512, generator=g)  # float32, every unit active: r ~ 98
    clf = LinearClassifier(512, 10, seed=4).eval()
    w = clf.fc.weight.detach().double().numpy()
    b = clf.fc.bias.detach().double().numpy()
    exact, r = _closed_form_ash_energy(f.double().numpy(), w, b, 99, prune=True)
    assert ash.num_kept(512, 99) == 5
    assert r.min() > 90  # every sample beyond float32's exp range (exp(88.7) = float32 max)
    ours = ash_energy(clf, f, "ash_s", 99)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), exact, rtol=1e-12)
    assert np.abs(exact).max() > torch.finfo(torch.float32).max  # not representable in float32
    # the reporting functions: the float32 cap binds for every sample, float64's for none
    exponent = ash.ash_s_exponent(f, 99)
    np.testing.assert_allclose(exponent.double().numpy(), r, rtol=1e-6)
    assert ash.capped_fraction(exponent, torch.float32) == 1.0
    assert ash.capped_fraction(exponent, torch.float64) == 0.0
    # the float32 tensor path is the capped method: exp(60) instead of exp(r), and it says so
    with caplog.at_level("WARNING", logger="ood_core.ash"):
        capped = energy(clf.head(ash.ash_s(f, 99)))
    assert "cap" in caplog.text
    assert torch.isfinite(capped).all()
    assert (capped.double() - ours).abs().min() > 1.0
    # pytorch-ood's ASH-S computes exp(r) in float32: inf * kept entries and 0 * inf = NaN
    theirs = pood_ash_s(f.reshape(16, 512, 1, 1), 0.99)
    assert not torch.isfinite(theirs).all()
    # SCALE at p = 99: the same exponent on the unpruned features
    exact_scale, _ = _closed_form_ash_energy(f.double().numpy(), w, b, 99, prune=False)
    np.testing.assert_allclose(ash_energy(clf, f, "scale", 99).numpy(), exact_scale, rtol=1e-12)


def test_ash_s_exact_energy_agrees_with_the_float32_shaper_below_the_cap(model, data):
    f = data["test"]
    for p in (50, 90):
        assert ash.capped_fraction(ash.ash_s_exponent(f, p), torch.float32) == 0.0
        torch.testing.assert_close(
            ash_energy(model, f, "ash_s", p), energy(model.head(ash.ash_s(f, p))).double(),
            rtol=1e-5, atol=1e-5,
        )
    assert set(ash.EXP_SCALED_PARTS) <= set(ash.SHAPERS)


def test_global_ash_s_energy_is_exact_in_float64():
    x = torch.tensor([[0.9] * 200 + [1.0], [0.5, 2.0, 3.0] + [0.1] * 198])
    clf = LinearClassifier(201, 3, seed=5).eval()
    t = 0.95
    r = ash.ash_s_global_exponent(x, t)
    assert r[0].item() == pytest.approx(181.0)
    assert ash.capped(r, torch.float32).tolist() == [True, False]
    pruned = torch.where(x >= t, x, torch.zeros_like(x)).double()
    w, b = clf.fc.weight.detach().double(), clf.fc.bias.detach().double()
    logits = torch.exp(r)[:, None] * (pruned @ w.T) + b
    torch.testing.assert_close(
        ash_global_energy(clf, x, "ash_s", t), torch.logsumexp(logits, 1), rtol=1e-12, atol=0
    )
    torch.testing.assert_close(
        ash_global_energy(clf, x, "ash_p", t), energy(clf.head(ash.ash_p_global(x, t)))
    )
    with pytest.raises(ValueError, match="global ASH"):
        ash_global_energy(clf, x, "scale", t)


def test_exp_scaled_energy_caps_only_where_float64_overflows(caplog):
    clf = LinearClassifier(4, 2, seed=6).eval()
    base = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    r = torch.tensor([650.0, 800.0], dtype=torch.float64)
    with caplog.at_level("WARNING", logger="ood_core.scores"):
        out = exp_scaled_energy(clf, base, r)
    assert torch.isfinite(out).all() and "float64" in caplog.text
    w, b = clf.fc.weight.detach().double(), clf.fc.bias.detach().double()
    cap = ash.max_log_scale(torch.float64)
    assert 680 < cap < 682
    expected = torch.logsumexp(torch.exp(r.clamp(max=cap))[:, None] * (base.double() @ w.T) + b, 1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=0)


def test_exact_path_refuses_a_head_that_is_not_fc():
    class DropoutHead(LinearClassifier):
        def head(self, f):
            return self.fc(F.dropout(f, 0.5, self.training))

    clf = DropoutHead(D, K)
    f = torch.rand(8, D, generator=torch.Generator().manual_seed(7)) + 0.1
    with pytest.raises(ValueError, match="eval mode"):
        ash_energy(clf.train(), f, "ash_s", 90)
    ash_energy(clf.eval(), f, "ash_s", 90)  # dropout off: head == fc


# --------------------------------------------------------------------------------------- GEN


def test_gen_matches_pytorch_ood_where_its_clamp_is_inactive():
    g = torch.Generator().manual_seed(8)
    logits = (2.0 * torch.randn(50, 8, generator=g)).double()
    p = logits.softmax(1)
    assert p.min() > 1e-7 and p.max() < 1 - 1e-7  # pytorch-ood's clamp does nothing here
    for m in (None, 3):
        theirs = pood.GEN.score(logits, gamma=0.1, M=m)
        # theirs: the *mean* over the top-M terms, an outlier score; ours: minus the *sum*
        m_eff = 8 if m is None else m
        torch.testing.assert_close(gen(logits, 0.1, m), -m_eff * theirs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gen(logits, 0.1, 100), gen(logits, 0.1))  # M > K: all classes


def test_gen_pytorch_ood_clamp_departs_from_the_paper():
    """pytorch-ood clamps p to [1e-7, 1 - 1e-7]; the paper and official code do not.

    Two confident samples, logit gaps 20 and 25: every probability lies outside the clamp range,
    so pytorch-ood gives both the same score; the paper's formula ranks the gap-25 one as more ID.
    """
    logits = torch.tensor([[20.0, 0.0, 0.0, 0.0], [25.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    theirs = pood.GEN.score(logits, gamma=0.1)
    assert theirs[0].item() == theirs[1].item()
    ours = gen(logits, 0.1)
    assert ours[1] > ours[0]
    # and ours is the paper's sum, by hand: p_top = 1/(1+3e^-g), p_j = e^-g/(1+3e^-g)
    for row, gap in enumerate((20.0, 25.0)):
        z = 1.0 + 3.0 * math.exp(-gap)
        p_top, p_j = 1.0 / z, math.exp(-gap) / z
        g_sum = (p_top * (3.0 * math.exp(-gap) / z)) ** 0.1 + 3.0 * (p_j * (1.0 - p_j)) ** 0.1
        assert ours[row].item() == pytest.approx(-g_sum, rel=1e-12)


def test_gen_is_maximal_for_one_hot_and_accurate_for_confident_samples():
    g = torch.Generator().manual_seed(9)
    one_hot = torch.tensor([[800.0, 0.0, 0.0, 0.0, 0.0]])
    assert gen(one_hot).item() == pytest.approx(0.0, abs=1e-30)
    others = gen(torch.randn(100, 5, generator=g))
    assert (others < gen(one_hot)).all() and (others <= 0).all()
    # uniform softmax: -K (1/K)^g (1 - 1/K)^g
    assert gen(torch.zeros(2, 5), 0.5)[0].item() == pytest.approx(-5 * (0.2 * 0.8) ** 0.5, rel=1e-6)
    # gap 40: 1 - p_top ~ 4e-17 is below float64's epsilon next to 1; log-space keeps it
    gap = 40.0
    logits = torch.tensor([[gap, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    log_rest = math.log(4.0) - gap  # log of the other classes' total weight (top weight 1)
    log_z = math.log1p(math.exp(log_rest))
    top_term = math.exp(0.1 * ((0.0 - log_z) + (log_rest - log_z)))
    p_j = math.exp(-gap - log_z)
    expected = -(top_term + 4.0 * (p_j * (1.0 - p_j)) ** 0.1)
    assert gen(logits).item() == pytest.approx(expected, rel=1e-12)
    assert top_term > 1e-2  # the term a float (1 - p) would round to exactly 0


def test_gen_rejects_bad_arguments():
    logits = torch.randn(3, 4)
    before = logits.clone()
    gen(logits, 0.1, 2)
    assert torch.equal(logits, before)
    with pytest.raises(ValueError, match="gamma"):
        gen(logits, 0.0)
    with pytest.raises(ValueError, match="top_m"):
        gen(logits, 0.1, 0)
    with pytest.raises(ValueError, match="two classes"):
        gen(torch.randn(3, 1))
    with pytest.raises(ValueError):
        gen(torch.randn(3))


# ------------------------------------------------------------------------------------ MaxLogit


def test_max_logit_is_minus_pytorch_ood():
    logits = torch.randn(20, 7, generator=torch.Generator().manual_seed(10))
    torch.testing.assert_close(max_logit(logits), -pood.MaxLogit.score(logits))


# ----------------------------------------------------------------------------------------- KNN


@pytest.mark.parametrize("k", [1, 5, 50])
def test_knn_matches_pytorch_ood(k, data):
    train, test = data["train"], data["test"]
    theirs = pood.KNN(None, k=k).fit_features(train, _labels(len(train))).predict_features(test)
    ours = KNN(k=k).fit(train).score(test)
    # theirs: +distance to the k-th neighbour (sklearn); ours: -distance
    torch.testing.assert_close(ours.double(), -theirs, rtol=1e-5, atol=1e-6)
    assert ours.dtype == torch.float32 and ours.shape == (len(test),)


def test_knn_closed_form_and_bank_points(data):
    train, test = data["train"], data["test"]
    detector = KNN(k=7, batch_size=13).fit(train)
    z = F.normalize(test.double(), dim=1)
    bank = F.normalize(train.double(), dim=1)
    expected = torch.cdist(z, bank).sort(dim=1).values[:, 6]
    torch.testing.assert_close(detector.kth_distance(test), expected, rtol=1e-6, atol=1e-7)
    # chunking does not change the result
    torch.testing.assert_close(KNN(k=7, batch_size=1000).fit(train).score(test), detector.score(test))
    # k = 1 on points of the bank (any positive rescaling: features are normalised): distance 0
    nearest = KNN(k=1).fit(train)
    assert nearest.kth_distance(train[:20]).abs().max().item() < 1e-7
    assert nearest.kth_distance(3.0 * train[:20]).abs().max().item() < 1e-6
    # a zero feature stays zero: distance 1 to every unit vector
    assert nearest.kth_distance(torch.zeros(1, D)).item() == pytest.approx(1.0)


def test_knn_validates_and_leaves_inputs_alone(data):
    train = data["train"]
    before = train.clone()
    with pytest.raises(NotFittedError, match="fit"):
        KNN().score(train)
    detector = KNN(k=3).fit(train)
    detector.score(train[:5])
    assert torch.equal(train, before)
    assert detector.bank_.data_ptr() != train.data_ptr()
    with pytest.raises(ValueError, match="columns"):
        detector.score(torch.rand(2, D + 1))
    with pytest.raises(ValueError, match="at least k"):
        KNN(k=10).fit(train[:5])
    with pytest.raises(ValueError, match="positive integer"):
        KNN(k=0).fit(train)
    with pytest.raises(ValueError, match="NaN"):
        KNN(k=1).fit(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        KNN(k=1).fit(torch.rand(4))
    from_numpy = KNN(k=3).fit(train.numpy()).score(train[:5].numpy())
    np.testing.assert_allclose(from_numpy, detector.score(train[:5]))


# ----------------------------------------------------------------------------------------- ViM


def test_vim_matches_pytorch_ood(model, data):
    train, test = data["train"], data["test"]
    theirs = pood.ViM(None, d=12, w=model.fc.weight, b=model.fc.bias)
    theirs.fit_features(train, _labels(len(train)))
    ours = ViM(dim=12).fit(train, model)
    assert ours.alpha_ == pytest.approx(theirs.alpha, rel=1e-4)
    # theirs: alpha * residual - energy (float32 eigh); ours: energy - alpha * residual (float64)
    torch.testing.assert_close(
        ours.score(model, test).double(), -theirs.predict_features(test).double(), rtol=1e-4, atol=1e-4
    )


def test_vim_geometry(model, data):
    train, test = data["train"], data["test"]
    vim = ViM(dim=10).fit(train, model)
    w, b = model.fc.weight.detach().double(), model.fc.bias.detach().double()
    # the origin u makes every logit vanish (K < D: W has full row rank)
    torch.testing.assert_close(w @ vim.origin_ + b, torch.zeros(K, dtype=torch.float64), atol=1e-10, rtol=0)
    # the principal subspace: top-10 eigenvectors of X^T X / N with X = x - u (not mean-centred)
    x = train.double() - vim.origin_
    eigenvalues, eigenvectors = np.linalg.eigh((x.T @ x).numpy() / len(x))
    top = torch.from_numpy(eigenvectors[:, -10:])
    projector = vim.principal_components_ @ vim.principal_components_.T
    torch.testing.assert_close(projector, top @ top.T, atol=1e-8, rtol=0)
    # the residual is orthogonal to the subspace and completes the projection
    residual = vim.residual(test)
    assert (residual @ vim.principal_components_).abs().max() < 1e-10
    centred = test.double() - vim.origin_
    torch.testing.assert_close(residual + centred @ projector, centred, atol=1e-10, rtol=0)
    torch.testing.assert_close(vim.residual_norm(test), residual.norm(dim=1), atol=1e-10, rtol=0)
    # alpha: the train max logits' sum over the train residual norms' sum
    max_logits = model.fc(train).detach().double().amax(dim=1)
    train_residuals = vim.residual_norm(train).sum().item()
    assert vim.alpha_ * train_residuals == pytest.approx(max_logits.sum().item(), rel=1e-9)
    # and the score is energy minus the virtual logit
    expected = torch.logsumexp(model.fc(test).double(), dim=1) - vim.alpha_ * residual.norm(dim=1)
    torch.testing.assert_close(vim.score(model, test).double(), expected, rtol=1e-6, atol=1e-5)


def test_vim_dimension_rules_and_errors(model, data):
    assert [vim_default_dim(d) for d in (4096, 2048, 768, 512, 342)] == [1000, 1000, 512, 256, 171]
    assert ViM().fit(data["train"], model).dim_ == D // 2
    with pytest.raises(ValueError, match="smaller than the feature width"):
        ViM(dim=D).fit(data["train"], model)
    with pytest.raises(NotFittedError):
        ViM(dim=4).score(model, data["test"])
    with pytest.raises(ValueError, match="columns"):
        ViM(dim=4).fit(torch.rand(10, D + 2), model)
    with pytest.raises(TypeError, match="fc"):
        ViM(dim=4).fit(data["train"], nn.Sequential(nn.Linear(D, K)))


# ---------------------------------------------------------------------------------------- fDBD


def test_fdbd_matches_pytorch_ood(model, data):
    train, test = data["train"], data["test"]
    theirs = pood.fDBD(None, model.fc).fit_features(train).predict_features(test)
    ours = FDBD().fit(train).score(model, test)
    # theirs: -(mean boundary distance / ||z - mu||); the official code sums instead of averaging,
    # i.e. (K - 1) times ours, the same ranking
    torch.testing.assert_close(ours.double(), -theirs.double(), rtol=1e-5, atol=1e-6)


def test_fdbd_distance_is_the_geometric_distance_to_the_decision_boundary():
    clf = LinearClassifier(2, 2, seed=0).eval()
    with torch.no_grad():
        clf.fc.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.5]]))
        clf.fc.bias.copy_(torch.tensor([0.25, -0.25]))  # exact in float32
    train = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])  # mean (1, 1)
    points = torch.tensor([[3.0, -1.0], [-2.0, 0.5], [0.5, 4.0]], dtype=torch.float64)
    detector = FDBD().fit(train)
    distances = detector.boundary_distances(clf, points)
    normal = torch.tensor([2.0, 1.5], dtype=torch.float64)  # w_0 - w_1
    offset = 0.5  # b_0 - b_1
    for z, d in zip(points, distances):
        signed = (normal @ z + offset) / normal.norm()
        foot = z - signed * normal / normal.norm()  # orthogonal projection onto the boundary
        assert (normal @ foot + offset).abs().item() < 1e-12  # on the boundary: equal logits
        assert d.max().item() == pytest.approx((z - foot).norm().item(), rel=1e-12)
        assert d.min().item() == 0.0  # the predicted class itself
        # no point of the boundary line is closer
        direction = torch.tensor([-1.5, 2.0], dtype=torch.float64) / 2.5
        t = torch.linspace(-50, 50, 20001, dtype=torch.float64)
        line = foot[None, :] + t[:, None] * direction[None, :]
        assert (line - z).norm(dim=1).min().item() >= d.max().item() - 1e-12
    spread = (points - torch.tensor([1.0, 1.0], dtype=torch.float64)).norm(dim=1)
    torch.testing.assert_close(detector.score(clf, points), distances.sum(dim=1) / spread)


def test_fdbd_averages_over_the_other_classes_and_validates(model, data):
    detector = FDBD().fit(data["train"])
    test = data["test"]
    distances = detector.boundary_distances(model, test)
    predicted = model.fc(test).argmax(dim=1)
    assert (distances.gather(1, predicted[:, None]) == 0).all()
    spread = (test.double() - data["train"].double().mean(0)).norm(dim=1)
    torch.testing.assert_close(
        detector.score(model, test).double(), distances.sum(1) / (K - 1) / spread, rtol=1e-6, atol=0
    )
    with pytest.raises(NotFittedError):
        FDBD().score(model, test)
    with pytest.raises(ValueError, match="fitted on"):
        FDBD().fit(torch.rand(5, D + 1)).score(model, test)
    twin = LinearClassifier(D, 2)
    with torch.no_grad():
        twin.fc.weight[1] = twin.fc.weight[0]
    with pytest.raises(ValueError, match="identical weight"):
        FDBD().fit(data["train"]).score(twin, test)


# ------------------------------------------------------------------------------------- NNGuide


@pytest.mark.parametrize("k", [1, 10, 50])
def test_nnguide_matches_pytorch_ood(k, model, data):
    train, test = data["train"], data["test"]
    with torch.no_grad():
        train_logits, test_logits = model.fc(train), model.fc(test)
    theirs = pood.NNGuide(None, model.fc, k=k).fit_features(train, _labels(len(train)))
    ours = NNGuide(k=k).fit(train, train_logits)
    # theirs: -(energy * guidance); ours: +(energy * guidance)
    torch.testing.assert_close(
        ours.score(test, test_logits).double(), -theirs.predict_features(test).double(), rtol=1e-5, atol=1e-5
    )


def test_nnguide_closed_form_and_bank(model, data):
    train, test = data["train"], data["test"]
    with torch.no_grad():
        train_logits, test_logits = model.fc(train), model.fc(test)
    detector = NNGuide(k=8, batch_size=7).fit(train, train_logits)
    confidence = torch.logsumexp(train_logits.double(), dim=1)
    bank = F.normalize(train.double(), dim=1) * confidence[:, None]
    torch.testing.assert_close(detector.bank_.double(), bank, rtol=1e-6, atol=1e-6)
    # neighbours by the scaled similarity, mean of the top 8, times the test energy
    sims = F.normalize(test.double(), dim=1) @ bank.T
    guidance = sims.sort(dim=1, descending=True).values[:, :8].mean(dim=1)
    torch.testing.assert_close(detector.guidance(test), guidance, rtol=1e-6, atol=1e-6)
    expected = torch.logsumexp(test_logits.double(), dim=1) * guidance
    torch.testing.assert_close(detector.score(test, test_logits).double(), expected, rtol=1e-5, atol=1e-5)
    # k = N: the mean over the whole bank
    full = NNGuide(k=len(train)).fit(train, train_logits)
    torch.testing.assert_close(full.guidance(test), sims.mean(dim=1), rtol=1e-6, atol=1e-6)


def test_nnguide_bank_fraction_is_a_seeded_subsample(model, data):
    train = data["train"]
    with torch.no_grad():
        logits = model.fc(train)
    a = NNGuide(k=5, bank_fraction=0.25, seed=3).fit(train, logits)
    b = NNGuide(k=5, bank_fraction=0.25, seed=3).fit(train, logits)
    c = NNGuide(k=5, bank_fraction=0.25, seed=4).fit(train, logits)
    assert len(a.bank_indices_) == 150 and len(set(a.bank_indices_.tolist())) == 150
    assert torch.equal(a.bank_indices_, b.bank_indices_) and not torch.equal(a.bank_indices_, c.bank_indices_)
    idx = a.bank_indices_
    expected = F.normalize(train[idx].double(), dim=1) * torch.logsumexp(logits[idx].double(), 1)[:, None]
    torch.testing.assert_close(a.bank_.double(), expected, rtol=1e-6, atol=1e-6)


def test_nnguide_validates(model, data):
    train = data["train"]
    with torch.no_grad():
        logits = model.fc(train)
    before = train.clone()
    with pytest.raises(NotFittedError):
        NNGuide().score(train, logits)
    with pytest.raises(ValueError, match="logit rows"):
        NNGuide(k=2).fit(train, logits[:-1])
    with pytest.raises(ValueError, match="bank_fraction"):
        NNGuide(bank_fraction=0.0).fit(train, logits)
    with pytest.raises(ValueError, match="needs at least k"):
        NNGuide(k=10, bank_fraction=0.01).fit(train, logits)  # 6 samples in the bank
    detector = NNGuide(k=3).fit(train, logits)
    with pytest.raises(ValueError, match="logit rows"):
        detector.score(train[:4], logits[:3])
    assert torch.equal(train, before)


# ------------------------------------------------------------------------------- conventions


def test_every_detector_returns_cpu_scores_higher_for_id(model, data):
    """On clustered ID features vs structureless OOD ones every detector ranks ID higher."""
    from sklearn.metrics import roc_auc_score

    train, test = data["train"], data["test"]
    with torch.no_grad():
        train_logits, test_logits = model.fc(train), model.fc(test)
    is_id = np.r_[np.ones(40), np.zeros(40)]
    auroc = {}
    results = {
        "knn": KNN(k=10).fit(train).score(test),
        "vim": ViM(dim=12).fit(train, model).score(model, test),
        "fdbd": FDBD().fit(train).score(model, test),
        "nnguide": NNGuide(k=10).fit(train, train_logits).score(test, test_logits),
    }
    for name, s in results.items():
        assert s.shape == (80,) and s.device.type == "cpu" and s.dtype == torch.float32, name
        auroc[name] = roc_auc_score(is_id, s.numpy())
    # measured: knn 0.99, vim 0.73, fdbd 0.72, nnguide 0.63
    assert min(auroc.values()) > 0.6, auroc

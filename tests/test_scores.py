"""OOD scores: sign convention (higher = more ID), identities between methods, detector rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from torch import nn
from torch.nn import functional as F

from ood_core.ash import ash_s, make_shaper, react
from ood_core.scores import (
    DICE,
    Mahalanobis,
    ReAct,
    ash_energy,
    ash_react,
    compute_logits_and_features,
    energy,
    logits_from_features,
    max_logit,
    msp,
    odin,
)


class TinyClassifier(nn.Module):
    """The classifier contract in miniature: [B, 3, 2, 2] images -> 8 features -> 3 logits."""

    stages = ("penultimate",)

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(12, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 3)

    def features(self, x, shaping=None):
        f = F.relu(self.bn(self.body(x.flatten(1))))
        if shaping and "penultimate" in shaping:
            f = shaping["penultimate"](f)
        return f

    def head(self, f):
        return self.fc(f)

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture
def model() -> TinyClassifier:
    torch.manual_seed(0)
    return TinyClassifier().eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(6, 3, 2, 2, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def train_features() -> torch.Tensor:
    return torch.rand(50, 8, generator=torch.Generator().manual_seed(2)) * 3.0


PEAKED = torch.tensor([[10.0, 0.0, 0.0]])
FLAT = torch.tensor([[1.0, 1.0, 1.0]])


@pytest.mark.parametrize("score", [msp, max_logit, energy])
def test_peaked_beats_flat(score):
    # the peaked logits also have the larger max and logsumexp; a flat row with a larger mean
    # level would beat it under max_logit/energy, which is expected and not tested here
    both = torch.cat([PEAKED, FLAT])
    out = score(both)
    assert out.shape == (2,)
    assert out[0] > out[1]


def test_logit_scores_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    torch.testing.assert_close(msp(logits), torch.tensor([0.5, 0.75]))
    torch.testing.assert_close(max_logit(logits), torch.tensor([0.0, math.log(3.0)]))
    torch.testing.assert_close(energy(logits), torch.tensor([math.log(2.0), math.log(4.0)]))
    torch.testing.assert_close(energy(logits[:1], temperature=2.0), torch.tensor([2.0 * math.log(2.0)]))
    with pytest.raises(ValueError):
        energy(logits, temperature=0.0)
    with pytest.raises(ValueError):
        msp(torch.zeros(3))


def test_logits_from_features_and_ash_energy(model, train_features):
    f = train_features[:5]
    torch.testing.assert_close(logits_from_features(model, f), model.fc(f))
    shaper = make_shaper("ash_s", 75)
    torch.testing.assert_close(logits_from_features(model, f, shaper), model.fc(ash_s(f, 75)))
    # ASH-S/SCALE energies come back in float64 (exact past float32's range; test_successors)
    expected = energy(model.fc(ash_s(f, 75))).double()
    torch.testing.assert_close(ash_energy(model, f, "ash_s", 75), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ash_energy(model, f.numpy(), "ash_s", 75), expected, rtol=1e-5, atol=1e-5)
    before = f.clone()
    ash_energy(model, f, "ash_b", 50)
    assert torch.equal(f, before)


def test_react_not_fitted_then_percentile_100_is_energy(model, train_features):
    with pytest.raises(NotFittedError, match="fit"):
        ReAct().score(model, train_features)
    detector = ReAct(percentile=100).fit(train_features)
    assert detector.threshold_ == pytest.approx(float(train_features.max()))
    torch.testing.assert_close(
        detector.score(model, train_features), energy(model.fc(train_features))
    )


def test_react_clips_and_composes_with_ash(model, train_features):
    detector = ReAct(percentile=50)
    assert detector.fit(train_features) is detector
    c = float(np.percentile(train_features.numpy(), 50))
    assert detector.threshold_ == pytest.approx(c)
    f = train_features[:7]
    torch.testing.assert_close(detector.score(model, f), energy(model.fc(f.clamp(max=c))))
    shaper = make_shaper("ash_s", 50)
    combined = detector.score(model, f, shaper=shaper)
    torch.testing.assert_close(combined, energy(model.fc(ash_s(react(f, c), 50))))
    torch.testing.assert_close(
        ash_react(model, f, c, "ash_s", 50), combined.double(), rtol=1e-5, atol=1e-5
    )


def test_dice_not_fitted_then_percentile_0_is_energy(model, train_features):
    with pytest.raises(NotFittedError, match="fit"):
        DICE().score(model, train_features)
    detector = DICE(percentile=0).fit(train_features, model)
    assert bool(detector.mask_.all())
    torch.testing.assert_close(
        detector.score(model, train_features), energy(model.fc(train_features))
    )


def test_dice_sparsifies_by_contribution(model, train_features):
    detector = DICE(percentile=75)
    assert detector.fit(train_features, model) is detector
    w, b = model.fc.weight.detach(), model.fc.bias.detach()
    contribution = w.double() * train_features.double().mean(dim=0)
    mask = contribution >= np.percentile(contribution.numpy(), 75)
    assert torch.equal(detector.mask_, mask)
    assert int(mask.sum()) == 6  # 24 weights, the top quarter
    f = train_features[:4]
    expected = energy(f @ (w * mask).T + b)
    torch.testing.assert_close(detector.score(model, f), expected)
    # ASH before the sparsified layer; the fitted layer itself is accepted too
    shaper = make_shaper("ash_p", 50)
    torch.testing.assert_close(
        detector.score(model, f, shaper=shaper), energy(shaper(f) @ (w * mask).T + b)
    )
    assert torch.equal(DICE(75).fit(train_features, model.fc).mask_, mask)
    with pytest.raises(ValueError):
        detector.score(nn.Linear(8, 5), f)


def _two_class_data():
    offsets = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]], dtype=torch.float64)
    features = torch.cat([offsets, offsets + 10.0])
    labels = np.array([3, 3, 3, 3, 7, 7, 7, 7])
    return features, labels


def test_mahalanobis_by_hand():
    features, labels = _two_class_data()
    detector = Mahalanobis()
    with pytest.raises(NotFittedError, match="fit"):
        detector.score(features)
    assert detector.fit(features, labels) is detector
    assert detector.classes_.tolist() == [3, 7]
    torch.testing.assert_close(detector.class_means_, torch.tensor([[0.0, 0.0], [10.0, 10.0]], dtype=torch.float64))
    # tied MLE covariance diag(0.5, 2): d((1, 1), mu_0) = 1 / 0.5 + 1 / 2 = 2.5
    queries = torch.tensor([[1.0, 1.0], [10.0, 10.0], [5.0, 5.0]], dtype=torch.float64)
    torch.testing.assert_close(detector.score(queries), torch.tensor([-2.5, 0.0, -62.5], dtype=torch.float64))
    scores = detector.score(queries.float())
    assert scores.dtype == torch.float32 and scores[1] > scores[0] > scores[2]


def test_odin_leaves_input_and_params_alone(model, images):
    before = images.clone()
    model.train()
    out = odin(model, images, temperature=1000.0, epsilon=0.0014, batch_size=4)
    assert out.shape == (6,) and torch.isfinite(out).all()
    assert torch.equal(images, before)
    assert all(p.grad is None for p in model.parameters())
    assert model.training  # mode restored
    assert ((out > 1 / 3 - 1e-6) & (out <= 1.0)).all()


def test_odin_without_perturbation_is_tempered_msp(model, images):
    with torch.no_grad():
        expected = msp(model(images) / 1000.0)
    torch.testing.assert_close(odin(model, images, epsilon=0.0), expected)
    as_uint8 = (images * 255).round().to(torch.uint8)
    torch.testing.assert_close(
        odin(model, as_uint8, epsilon=0.0), odin(model, as_uint8.float() / 255, epsilon=0.0)
    )


def test_odin_perturbation_raises_the_score(model, images):
    # the step follows the gradient of log S_yhat, so a small step increases max softmax
    model = model.double()
    x = images.double()
    plain = odin(model, x, temperature=1.0, epsilon=0.0)
    perturbed = odin(model, x, temperature=1.0, epsilon=1e-3)
    assert (perturbed > plain).all()


def test_compute_logits_and_features(model, images):
    model.train()
    f_all, l_all = compute_logits_and_features(model, images, batch_size=64)
    f_bat, l_bat = compute_logits_and_features(model, images, batch_size=4)
    assert model.training  # mode restored
    assert f_all.shape == (6, 8) and l_all.shape == (6, 3)
    torch.testing.assert_close(f_all, f_bat)
    torch.testing.assert_close(l_all, l_bat)
    torch.testing.assert_close(l_all, model.fc(f_all).detach())
    as_uint8 = (images * 255).round().to(torch.uint8)
    f_u8, _ = compute_logits_and_features(model, as_uint8.numpy(), batch_size=4)
    f_fl, _ = compute_logits_and_features(model, as_uint8.float() / 255)
    torch.testing.assert_close(f_u8, f_fl)
    shaped, _ = compute_logits_and_features(model, images, shaping={"penultimate": make_shaper("ash_p", 50)})
    assert ((shaped != 0).sum(dim=1) <= 4).all()
    with pytest.raises(TypeError):
        compute_logits_and_features(model, images.to(torch.int32))


def test_cpu_batches_are_channels_last_and_agree_with_contiguous():
    # oneDNN convolutions are faster channels-last on a CPU; the features must be the network's own
    from ood_core.classifiers import ClassifierConfig, build_classifier

    torch.manual_seed(0)
    net = build_classifier(ClassifierConfig("resnet_cifar", depth=8, width=8)).eval()
    images = torch.rand(5, 3, 32, 32)
    first_conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    seen = []
    hook = first_conv.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        features, logits = compute_logits_and_features(net, images, batch_size=2)
        assert len(seen) == 3
        odin(net, images, epsilon=0.0014, batch_size=2)
        assert len(seen) == 3 + 6  # ODIN: the gradient pass and the scoring pass per batch
    finally:
        hook.remove()
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x in seen)
    with torch.no_grad():
        expected = net.features(images.contiguous())
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, net.head(expected), rtol=1e-5, atol=1e-5)

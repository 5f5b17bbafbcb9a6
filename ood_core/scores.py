"""OOD scores for classifiers: every score is a ``[B]`` tensor where **higher = more in-distribution**.

Logit scores (pure functions of a ``[B, K]`` logit tensor):

* :func:`msp` -- maximum softmax probability (Hendrycks & Gimpel 2017);
* :func:`max_logit` -- maximum logit (Hendrycks et al. 2022);
* :func:`energy` -- negative free energy ``T logsumexp(f / T)`` (Liu et al. 2020, eq. 5 with
  the sign flipped so that higher is more ID). ASH scores with it at ``T = 1``;
* :func:`gen` -- negative generalized entropy over the top-M softmax probabilities (GEN, Liu et
  al. 2023).

Scores that run a classifier use the contract of :mod:`ood_core.classifiers`:
``classifier.features(x) -> [B, D]`` (penultimate, post-pooling), ``classifier.head(f) -> logits``
and the final linear layer at ``classifier.fc``. Activation shaping is composed in between:
``energy(head(shaper(features)))`` (ASH, Djurisic et al. 2023), with ReAct clipping before the
shaper (:class:`ReAct`) or DICE's sparsified head after it (:class:`DICE`).

ASH-S and SCALE multiply features by ``exp(s1 / s2)``, which overflows float32 at high
percentiles; :func:`ash_energy` evaluates their energy in float64 from the factored form
(:func:`exp_scaled_energy`), exactly up to an exponent of ~681 (see :mod:`ood_core.ash`).

Fitted detectors (:class:`ReAct`, :class:`DICE`, :class:`Mahalanobis` and the later
:class:`KNN`, :class:`ViM`, :class:`FDBD`, :class:`NNGuide`) follow scikit-learn's estimator
rules: ``__init__`` stores hyperparameters only, ``fit`` returns ``self``, learned state ends in
``_`` and scoring before fitting raises :class:`sklearn.exceptions.NotFittedError`. The later
detectors work on the CPU, never modify their inputs and return ``[B]`` CPU tensors in the
features' floating dtype (float32 for integer input).

pytorch-ood 0.4.0 serves as the test oracle for GEN, KNN, ViM, fDBD, NNGuide, SCALE and MaxLogit
(``tests/test_successors.py``); it returns outlier scores (higher = more OOD), the negatives of
ours, and its GEN departs from the paper (see :func:`gen`).
"""

from __future__ import annotations

import os
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from sklearn.covariance import EmpiricalCovariance
from sklearn.exceptions import NotFittedError
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm  # plain text bars: no ipywidgets needed in notebooks

from ood_core import ash as _ash
from ood_core.ash import _check_percentile, make_shaper, react, react_threshold

__all__ = [
    "DICE",
    "FDBD",
    "KNN",
    "Mahalanobis",
    "NNGuide",
    "ReAct",
    "ViM",
    "ash_energy",
    "ash_global_energy",
    "ash_react",
    "compute_logits_and_features",
    "energy",
    "exp_scaled_energy",
    "exp_scaled_logits",
    "gen",
    "logits_from_features",
    "max_logit",
    "msp",
    "odin",
    "vim_default_dim",
]

logger = logging.getLogger(__name__)

Shaper = Callable[[Tensor], Tensor]


# ------------------------------------------------------------------------------------ helpers


def _check_logits(logits: Tensor) -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(f"expected logits as a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"expected logits shaped [B, K]; got {tuple(logits.shape)}")
    return logits


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _as_tensor(values: Any) -> Tensor:
    if isinstance(values, Tensor):
        return values
    return torch.as_tensor(np.asarray(values))


def _features_on(module: nn.Module, features: Any) -> Tensor:
    """Features as a float tensor on the module's device (numpy arrays accepted)."""
    f = _as_tensor(features)
    if f.dim() != 2:
        raise ValueError(f"expected features shaped [B, D]; got {tuple(f.shape)}")
    if not f.is_floating_point():
        f = f.float()
    return f.to(_module_device(module))


def _to_unit_float(images: Tensor) -> Tensor:
    """uint8 images become float32 in [0, 1]; floating images pass through unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)  # the division writes into the fresh float copy only
    if images.is_floating_point():
        return images
    raise TypeError(
        f"images must be uint8 (0..255) or float in [0, 1]; got dtype {images.dtype}"
    )


def _network_batch(images: Tensor, device: torch.device) -> Tensor:
    """A batch of images as float on ``device``, channels-last on a CPU: oneDNN's convolutions run faster
    in that layout (measured on 2 cores, features at batch 64: DenseNet-BC-100 1.4-1.7x, AirbenchNet
    1.9x, ResNet-56 1.1-1.3x; ``make bench``); the outputs agree with the contiguous layout to
    float32 rounding (~5e-6 on logits)."""
    batch = _to_unit_float(images).to(device)
    if batch.device.type == "cpu" and batch.dim() == 4:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch


def _as_images(images: Any) -> Tensor:
    x = _as_tensor(images)
    if x.dim() != 4:
        raise ValueError(f"expected images shaped [B, C, H, W]; got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("got an empty batch of images")
    return x


def _final_linear(classifier: nn.Module) -> nn.Linear:
    fc = classifier if isinstance(classifier, nn.Linear) else getattr(classifier, "fc", None)
    if not isinstance(fc, nn.Linear):
        raise TypeError(
            "expected a classifier whose final layer is an nn.Linear attribute named `fc` "
            "(see ood_core.classifiers), or that nn.Linear itself"
        )
    return fc


def _require_fitted(estimator: Any, attribute: str, fit_signature: str) -> None:
    if not hasattr(estimator, attribute):
        name = type(estimator).__name__
        raise NotFittedError(
            f"This {name} instance is not fitted yet: call {name}(...).fit({fit_signature}) "
            "on in-distribution training data before scoring."
        )


def _feature_matrix(
    values: Any, name: str, width: int | None = None, *, fitting: bool = False
) -> Tensor:
    """``values`` as a detached 2-D floating CPU tensor ``[N, D]`` (integers become float32).

    ``fitting`` also requires at least one row and finite values. Never writes into ``values``.
    """
    t = _as_tensor(values)
    if t.dim() != 2:
        raise ValueError(f"expected {name} shaped [N, D]; got {tuple(t.shape)}")
    if width is not None and t.shape[1] != width:
        raise ValueError(
            f"expected {name} with {width} columns (the width seen in fit); got {tuple(t.shape)}"
        )
    t = t.detach().cpu()
    if not t.is_floating_point():
        t = t.float()
    if fitting:
        if t.shape[0] == 0:
            raise ValueError(f"cannot fit on zero rows of {name}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contain NaN or inf; fix them before fitting")
    return t


def _out_dtype(t: Tensor) -> torch.dtype:
    """Scores come back in the features' floating dtype (float32 below float32's precision)."""
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def _head_logits(classifier: nn.Module, features: Tensor) -> Tensor:
    """``classifier.head(features)`` (or ``fc`` for a bare ``nn.Linear``) without gradients, on CPU."""
    head = classifier.head if hasattr(classifier, "head") else _final_linear(classifier)
    out = []
    with torch.no_grad():
        for start in range(0, max(features.shape[0], 1), 4096):
            batch = _features_on(classifier, features[start : start + 4096])
            out.append(head(batch).detach().cpu())
    return torch.cat(out)


def _l2_normalise(f: Tensor) -> Tensor:
    """Rows divided by their L2 norm; an all-zero row stays zero (``F.normalize``, eps 1e-12)."""
    return F.normalize(f, p=2.0, dim=1, eps=1e-12)


# ------------------------------------------------------------------------------- logit scores


def msp(logits: Tensor) -> Tensor:
    """Maximum softmax probability, ``max_k softmax(f)_k`` (Hendrycks & Gimpel 2017)."""
    return torch.softmax(_check_logits(logits), dim=1).amax(dim=1)


def max_logit(logits: Tensor) -> Tensor:
    """Maximum logit, ``max_k f_k`` (Hendrycks et al. 2022, "MaxLogit")."""
    return _check_logits(logits).amax(dim=1)


def energy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Energy score ``T * logsumexp(f / T)`` = ``-E(x; f)`` (Liu et al. 2020, eqs. 4-5).

    Liu et al. define the free energy ``E = -T logsumexp(f / T)``; this returns its negative so
    that higher is more ID. ASH, ReAct and DICE all use ``T = 1``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    return temperature * torch.logsumexp(_check_logits(logits) / temperature, dim=1)


def gen(logits: Tensor, gamma: float = 0.1, top_m: int | None = None) -> Tensor:
    """GEN (Liu, Lochman & Zach, CVPR 2023, "GEN: Pushing the Limits of Softmax-Based OOD Detection").

    The generalized entropy of the softmax ``p = softmax(f)`` over its ``M`` largest entries,

        ``G_gamma(p) = sum_{i in top-M} p_i^gamma (1 - p_i)^gamma``   (their eq. 6-7),

    returned as ``-G_gamma(p)`` so that higher = more ID (the official code returns ``-scores``
    too). ``top_m=None`` sums over all ``K`` classes; ``top_m > K`` is the same (OpenOOD sweeps
    ``M`` up to 1000 on 10-class sets). The paper uses ``gamma = 0.1`` and ``M = 100`` on
    ImageNet. The maximum, 0, is reached by a one-hot softmax.

    Computed in float64 from log-probabilities, ``p^g (1-p)^g = exp(g (log p + log(1 - p)))``,
    with ``log(1 - p_top) = logsumexp`` of the other logits minus the logsumexp of all: a
    confident sample (``p_top`` within 1e-8 of 1) keeps its ``(1 - p_top)^gamma`` instead of
    rounding it to 0. Returned in the logits' dtype and device.

    Departure of pytorch-ood 0.4.0's ``GEN``: it averages instead of summing (a constant factor
    ``1/M``, same ranking) and clamps ``p`` to ``[1e-7, 1 - 1e-7]``, which neither the paper nor
    the official code does: every logit gap above ~16 then gives the same score.
    """
    _check_logits(logits)
    if logits.shape[1] < 2:
        raise ValueError(f"GEN needs at least two classes; got logits shaped {tuple(logits.shape)}")
    if isinstance(gamma, bool) or not float(gamma) > 0:
        raise ValueError(f"gamma must be > 0; got {gamma!r}")
    num_classes = logits.shape[1]
    m = num_classes if top_m is None else min(_check_positive_int(top_m, "top_m"), num_classes)
    z = logits.double()
    log_total = torch.logsumexp(z, dim=1, keepdim=True)
    log_p = z - log_total
    # log(1 - p) = log1p(-p) is accurate for p <= 1/2, i.e. for every class but possibly the top
    log_q = torch.log1p(-torch.exp(log_p))
    top = z.argmax(dim=1, keepdim=True)
    others = z.scatter(1, top, float("-inf"))
    log_q = log_q.scatter(1, top, torch.logsumexp(others, dim=1, keepdim=True) - log_total)
    if m < num_classes:
        keep = torch.topk(log_p, m, dim=1).indices
        log_p, log_q = log_p.gather(1, keep), log_q.gather(1, keep)
    g = torch.exp(float(gamma) * (log_p + log_q)).sum(dim=1)
    return (-g).to(logits.dtype)


# ------------------------------------------------------------------------------------- ODIN


def odin(
    model: nn.Module,
    x: Any,
    temperature: float = 1000.0,
    epsilon: float = 0.0014,
    *,
    batch_size: int = 256,
) -> Tensor:
    """ODIN (Liang, Li & Srikant 2018, eqs. 1-2): MSP at temperature ``T`` after input preprocessing.

    ``x_tilde = x - epsilon * sign(-grad_x log S_yhat(x; T))``, with ``S(x; T) = softmax(f(x) / T)``
    and ``yhat`` the predicted class; the score is ``max_k S_k(x_tilde; T)``.

    **Units of epsilon.** The perturbation is taken in the model's input space: ``x`` is an image
    in [0, 1] (``uint8`` is accepted and divided by 255) and our models normalise internally, so
    ``epsilon`` is in [0, 1] pixel units. A step of ``epsilon`` in pixel units is a step of
    ``epsilon / std_c`` on the normalised input of channel ``c``. The ODIN reference code steps on
    the normalised input by the gradient sign *divided by the channel std*, i.e. exactly
    ``epsilon`` in pixel units, so the paper's values (0.0014 for DenseNet on CIFAR-10) carry over
    unchanged. A step ``eps_norm`` taken on the normalised input *without* that division
    corresponds to ``epsilon = eps_norm * std_c`` here. ``x_tilde`` is not clipped to [0, 1]
    (neither is it in the reference code).

    The model runs in eval mode (its previous mode is restored afterwards), gradients are taken
    with respect to the input only (no ``.grad`` is left on parameters) and ``x`` is not modified.
    Runs in batches of ``batch_size`` on the model's device; returns a ``[B]`` tensor on the CPU.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    images = _as_images(x)
    device = _module_device(model)
    was_training = model.training
    model.eval()
    scores = []
    try:
        starts = range(0, images.shape[0], batch_size)
        for start in tqdm(starts, desc="ODIN", leave=False, disable=len(starts) == 1 or bool(os.environ.get("TQDM_DISABLE"))):
            batch = _network_batch(images[start : start + batch_size], device)
            if epsilon != 0:
                with torch.enable_grad():
                    probe = batch.detach().clone().requires_grad_(True)
                    log_probs = torch.log_softmax(model(probe) / temperature, dim=1)
                    # max over classes of log S_k is log S_yhat; summing keeps samples independent
                    (grad,) = torch.autograd.grad(log_probs.amax(dim=1).sum(), probe)
                batch = batch - epsilon * torch.sign(-grad)
            with torch.no_grad():
                scores.append(msp(model(batch) / temperature).cpu())
    finally:
        model.train(was_training)
    return torch.cat(scores)


# ------------------------------------------------------------------- classifier-based scores


def logits_from_features(
    classifier: nn.Module, features: Any, shaper: Shaper | None = None
) -> Tensor:
    """``classifier.head(shaper(features))`` (``shaper`` defaults to the identity)."""
    f = _features_on(classifier, features)
    if shaper is not None:
        f = shaper(f)
    return classifier.head(f)


def _float64_device(device: torch.device) -> torch.device:
    return torch.device("cpu") if device.type == "mps" else device  # MPS has no float64


def _check_head_is_fc(classifier: nn.Module, fc: nn.Linear, probe: Tensor) -> None:
    """Raise unless ``classifier.head`` equals its ``fc`` on ``probe`` (an affine head)."""
    if classifier is fc or not hasattr(classifier, "head") or probe.shape[0] == 0:
        return
    with torch.no_grad():
        got, want = classifier.head(probe), fc(probe)
    scale = float(want.abs().max()) if want.numel() else 1.0
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * max(scale, 1.0)):
        raise ValueError(
            "the float64 ASH-S/SCALE energy uses logits = exp(r) * (W x_hat) + b, which needs "
            "classifier.head(f) == classifier.fc(f); this head differs (is the model in eval "
            "mode? dropout changes the head in training mode). For another head use "
            "energy(classifier.head(ood_core.ash.ash_s(f, p))), whose exponent is capped at "
            "ood_core.ash.max_log_scale(f.dtype)."
        )


def exp_scaled_logits(classifier: nn.Module, base: Any, log_scale: Any, mask: Tensor | None = None) -> Tensor:
    """``head(base * exp(r))`` in float64 for a linear head: the uncapped logits of ASH-S/SCALE.

    With ``head(f) = W f + b`` (the classifier's ``fc``; ``W * mask`` for DICE's sparsified layer),
    ``head(base * e^r) = e^r (W base) + b``: evaluated in float64, this is the paper's formula for
    exponents ``r`` up to :func:`ood_core.ash.max_log_scale` of float64 (~681; float32 would
    overflow past ~88). Above that even float64 overflows: ``r`` is capped there, with a logged
    warning (:func:`ood_core.ash.capped` says where). ``base`` ``[B, D]`` and ``r`` ``[B]`` come
    from :func:`ood_core.ash.ash_s_parts`, :func:`~ood_core.ash.scale_parts` or
    :func:`~ood_core.ash.ash_s_global_parts`. ``classifier`` is a model with ``fc`` and ``head``
    (checked to agree on ``base``: eval mode) or an ``nn.Linear``. Returns float64 ``[B, K]`` on
    the classifier's device (CPU for MPS), since the logits can exceed float32's range.
    """
    fc = _final_linear(classifier)
    x_hat = _features_on(fc, base)
    r = _as_tensor(log_scale).detach()
    if r.shape != (x_hat.shape[0],):
        raise ValueError(f"expected log_scale shaped [{x_hat.shape[0]}]; got {tuple(r.shape)}")
    _check_head_is_fc(classifier, fc, x_hat.to(fc.weight.dtype))
    device = _float64_device(x_hat.device)
    r = r.to(device=device, dtype=torch.float64)
    cap = _ash.max_log_scale(torch.float64)
    over = r > cap
    if bool(over.any()):
        logger.warning(
            "exp_scaled_logits: exponent above %.1f for %d of %d samples (max %.1f): even float64 "
            "logits would overflow; those samples use exp(%.1f)",
            cap, int(over.sum()), over.numel(), float(r.max()), cap,
        )
    weight = fc.weight.detach().to(device=device, dtype=torch.float64)
    if mask is not None:
        weight = weight * mask.to(device=device, dtype=torch.float64)
    bias = (
        fc.bias.detach().to(device=device, dtype=torch.float64)
        if fc.bias is not None
        else torch.zeros(weight.shape[0], dtype=torch.float64, device=device)
    )
    direction = x_hat.to(device=device, dtype=torch.float64) @ weight.T
    return torch.exp(r.clamp(max=cap))[:, None] * direction + bias


def exp_scaled_energy(classifier: nn.Module, base: Any, log_scale: Any) -> Tensor:
    """``energy(head(base * exp(r)))`` in float64: the logsumexp of :func:`exp_scaled_logits`."""
    return torch.logsumexp(exp_scaled_logits(classifier, base, log_scale), dim=1)


def ash_energy(
    classifier: nn.Module,
    features: Any,
    method: str = "ash_s",
    percentile: float = 95.0,
    **shaper_kwargs: Any,
) -> Tensor:
    """ASH score (Djurisic et al. 2023, sec. 3): ``energy(head(ASH_method(features, p)))``, ``T = 1``.

    ``method`` is a key of :data:`ood_core.ash.SHAPERS`; ``p = 95`` with ASH-S is the official
    CIFAR setting, ``p = 90`` the ImageNet one. ``method="scale"`` gives SCALE (Xu et al. 2024).
    For the exponential shapers (``ash_s``, ``scale``: :data:`ood_core.ash.EXP_SCALED_PARTS`) the
    energy is computed exactly in float64 by :func:`exp_scaled_energy` and returned as float64
    (at p = 99 on 512-d features it reaches ~1e44); the other methods return the logits' dtype.
    """
    if method in _ash.EXP_SCALED_PARTS:
        if shaper_kwargs:
            raise TypeError(f"{method} takes no extra arguments; got {sorted(shaper_kwargs)}")
        p = _check_percentile(percentile)
        base, r = _ash.EXP_SCALED_PARTS[method](_features_on(classifier, features), p)
        return exp_scaled_energy(classifier, base, r)
    shaper = make_shaper(method, percentile, **shaper_kwargs)
    return energy(logits_from_features(classifier, features, shaper))


def ash_global_energy(
    classifier: nn.Module, features: Any, method: str, threshold: float
) -> Tensor:
    """ASH with one global threshold (the paper's local-vs-global ablation), scored by energy.

    ``method`` is ``"ash_p"``, ``"ash_b"`` or ``"ash_s"``; ``threshold`` comes from
    :func:`ood_core.ash.global_threshold`. ASH-S goes through :func:`exp_scaled_energy` (float64,
    uncapped up to an exponent of ~681; a global threshold can leave ``s1 / s2`` in the hundreds);
    ASH-P/B return ``energy(head(shaped))`` in the logits' dtype.
    """
    f = _features_on(classifier, features)
    if method == "ash_s":
        return exp_scaled_energy(classifier, *_ash.ash_s_global_parts(f, threshold))
    shapers = {"ash_p": _ash.ash_p_global, "ash_b": _ash.ash_b_global}
    if method not in shapers:
        raise ValueError(f"unknown global ASH method {method!r}; choose ash_p, ash_b or ash_s")
    return energy(classifier.head(shapers[method](f, threshold)))


def ash_react(
    classifier: nn.Module,
    features: Any,
    threshold: float,
    method: str = "ash_s",
    percentile: float = 90.0,
    **shaper_kwargs: Any,
) -> Tensor:
    """ASH after ReAct clipping: ``energy(head(ASH_method(min(features, c), p)))``.

    ``threshold`` is ReAct's ``c`` (see :func:`ood_core.ash.react_threshold`); the same as
    ``ReAct(...).fit(train).score(classifier, features, shaper=make_shaper(method, p))``, except
    that ASH-S and SCALE are scored in float64 without the exponent cap, as in :func:`ash_energy`.
    """
    clipped = react(_features_on(classifier, features), threshold)
    return ash_energy(classifier, clipped, method, percentile, **shaper_kwargs)


class ReAct:
    """ReAct (Sun, Guo & Li 2021): energy of the logits of clipped features, ``min(f, c)``.

    ``c`` is the ``percentile``-th percentile of ID training features (90 in the paper).
    ``score(classifier, features, shaper)`` = ``energy(head(shaper(min(features, c))))``: an
    ASH shaper, if given, is applied after clipping.
    """

    def __init__(self, percentile: float = 90.0) -> None:
        self.percentile = percentile

    def __repr__(self) -> str:
        return f"ReAct(percentile={self.percentile!r})"

    def fit(self, train_features: Any) -> ReAct:
        """Learn ``threshold_`` from ID training features (any shape; all entries pooled)."""
        self.threshold_ = react_threshold(train_features, self.percentile)
        return self

    def transform(self, features: Tensor) -> Tensor:
        """The clipped features ``min(features, threshold_)``."""
        _require_fitted(self, "threshold_", "train_features")
        return react(features, self.threshold_)

    def score(self, classifier: nn.Module, features: Any, shaper: Shaper | None = None) -> Tensor:
        """``energy(head(shaper(min(features, threshold_))))``, a ``[B]`` tensor."""
        _require_fitted(self, "threshold_", "train_features")
        clipped = self.transform(_features_on(classifier, features))
        return energy(logits_from_features(classifier, clipped, shaper))


class DICE:
    """DICE (Sun & Li 2022): energy with a sparsified final layer.

    ``fit`` forms the contribution matrix ``V = W * mean(f_train)`` (``W`` the ``[K, D]`` weight
    of ``classifier.fc``, broadcast over classes) and keeps the weights whose contribution is at
    or above the ``percentile``-th percentile of all ``K * D`` entries of ``V``: ``mask_ =
    V >= quantile_p(V)``. The score is ``energy(f @ (W * mask_).T + b)`` with the classifier's
    bias ``b``. The reference code keeps ``V > quantile_p(V)`` (strict); ``>=`` differs only for
    contributions exactly at the quantile and makes ``percentile = 0`` keep every weight, so DICE
    at 0 is exactly the energy score. A ``shaper`` passed to ``score`` is applied to the features
    before the sparsified layer (ASH + DICE).
    """

    def __init__(self, percentile: float = 90.0) -> None:
        self.percentile = percentile

    def __repr__(self) -> str:
        return f"DICE(percentile={self.percentile!r})"

    def fit(self, train_features: Any, classifier: nn.Module) -> DICE:
        """Learn ``mean_features_``, ``contribution_``, ``threshold_`` and ``mask_``.

        ``classifier`` is a model with an ``nn.Linear`` at ``.fc``, or that layer itself.
        """
        p = _check_percentile(self.percentile)
        fc = _final_linear(classifier)
        f = _as_tensor(train_features).detach()
        if f.dim() != 2 or f.shape[1] != fc.in_features:
            raise ValueError(
                f"expected training features shaped [N, {fc.in_features}]; got {tuple(f.shape)}"
            )
        if f.shape[0] == 0:
            raise ValueError("cannot fit DICE on zero training features")
        mean = f.double().mean(dim=0).cpu()
        contribution = fc.weight.detach().double().cpu() * mean[None, :]
        threshold = float(np.percentile(contribution.numpy().ravel(), p))
        self.mean_features_ = mean.float()
        self.contribution_ = contribution
        self.threshold_ = threshold
        self.mask_ = contribution >= threshold
        logger.debug("DICE keeps %d of %d weights", int(self.mask_.sum()), self.mask_.numel())
        return self

    def logits(self, classifier: nn.Module, features: Any, shaper: Shaper | None = None) -> Tensor:
        """``shaper(f) @ (W * mask_).T + b`` with ``classifier.fc``'s weight and bias."""
        _require_fitted(self, "mask_", "train_features, classifier")
        fc = _final_linear(classifier)
        if tuple(fc.weight.shape) != tuple(self.mask_.shape):
            raise ValueError(
                f"DICE was fitted on a {tuple(self.mask_.shape)} layer; this classifier's fc is "
                f"{tuple(fc.weight.shape)}"
            )
        f = _features_on(fc, features)
        if shaper is not None:
            f = shaper(f)
        mask = self.mask_.to(device=fc.weight.device, dtype=fc.weight.dtype)
        return F.linear(f, fc.weight * mask, fc.bias)

    def score(self, classifier: nn.Module, features: Any, shaper: Shaper | None = None) -> Tensor:
        """``energy(shaper(f) @ (W * mask_).T + b)``, a ``[B]`` tensor."""
        return energy(self.logits(classifier, features, shaper))


class Mahalanobis:
    """Mahalanobis score (Lee et al. 2018, eq. 2) on penultimate features, without preprocessing.

    ``fit`` estimates class means ``mu_c`` and one shared (tied) covariance ``Sigma`` (maximum
    likelihood, pooled over the class-centred features; its pseudo-inverse via
    :class:`sklearn.covariance.EmpiricalCovariance`). The score is

        ``-min_c (f - mu_c)^T Sigma^+ (f - mu_c)``,

    the negative *squared* Mahalanobis distance to the closest class mean, as in Lee et al.;
    its ranking (hence every metric) equals that of the unsquared distance. This is the plain
    variant: no input perturbation and no ensemble over layers (Lee et al.'s full method).
    """

    def __repr__(self) -> str:
        return "Mahalanobis()"

    def fit(self, features: Any, labels: Any) -> Mahalanobis:
        """Learn ``classes_``, ``class_means_`` ``[C, D]`` and ``precision_`` ``[D, D]``."""
        x = _as_tensor(features).detach().cpu().double().numpy()
        y = _as_tensor(labels).detach().cpu().numpy().reshape(-1)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"expected non-empty features shaped [N, D]; got {x.shape}")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"got {x.shape[0]} feature rows but {y.shape[0]} labels")
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain NaN or inf")
        classes, index = np.unique(y, return_inverse=True)
        means = np.stack([x[index == c].mean(axis=0) for c in range(len(classes))])
        centred = x - means[index]
        covariance = EmpiricalCovariance(assume_centered=True).fit(centred)
        self.classes_ = classes
        self.class_means_ = torch.from_numpy(means)
        self.precision_ = torch.from_numpy(np.asarray(covariance.precision_))
        return self

    def distances(self, features: Any) -> Tensor:
        """Squared Mahalanobis distances ``[B, C]`` to every class mean (float64)."""
        _require_fitted(self, "precision_", "features, labels")
        f = _as_tensor(features).detach()
        if f.dim() != 2 or f.shape[1] != self.class_means_.shape[1]:
            raise ValueError(
                f"expected features shaped [B, {self.class_means_.shape[1]}]; got {tuple(f.shape)}"
            )
        f = f.double()
        precision = self.precision_.to(f.device)
        means = self.class_means_.to(f.device)
        # (f - mu)^T P (f - mu) = f^T P f - 2 f^T P mu + mu^T P mu, without a [B, C, D] tensor
        fp = f @ precision
        return (
            (fp * f).sum(dim=1, keepdim=True)
            - 2.0 * fp @ means.T
            + ((means @ precision) * means).sum(dim=1)[None, :]
        ).clamp(min=0.0)

    def score(self, features: Any) -> Tensor:
        """``-min_c`` squared Mahalanobis distance, a ``[B]`` tensor (features' dtype if float)."""
        f = _as_tensor(features)
        out = -self.distances(f).amin(dim=1)
        return out.to(f.dtype) if f.is_floating_point() else out


# ------------------------------------------------------------------ detectors that came after ASH


def _top_k_similarities(
    queries: Tensor, bank: Tensor, k: int, batch_size: int
) -> tuple[Tensor, Tensor]:
    """The ``k`` largest inner products of each query row with the bank rows, and their indices.

    Exact search in chunks of ``batch_size`` queries: peak memory is the bank plus one
    ``[batch_size, N]`` similarity block (51 MB for 256 x 50,000 in float32). Values sorted
    descending, ``[B, k]`` each.
    """
    values, indices = [], []
    for start in range(0, queries.shape[0], batch_size):
        sims = queries[start : start + batch_size] @ bank.T
        top = torch.topk(sims, k, dim=1, largest=True, sorted=True)
        values.append(top.values)
        indices.append(top.indices)
    if not values:
        empty = queries.new_zeros((0, k))
        return empty, empty.long()
    return torch.cat(values), torch.cat(indices)


class KNN:
    """Deep nearest neighbours (Sun, Ming, Zhu & Li, ICML 2022, "OOD Detection with Deep Nearest Neighbors").

    Features are L2-normalised, ``z = f / ||f||``; the score is minus the Euclidean distance from
    ``z`` to its ``k``-th nearest normalised ID training feature,

        ``score(x) = -|| z - z_(k) ||_2``   (their eq. 2 and sec. 3: higher = more ID).

    The official code searches with faiss ``IndexFlatL2``, which returns *squared* distances, so
    it scores ``-||z - z_(k)||^2``: the same ranking (every metric equal). pytorch-ood 0.4.0
    returns ``+||z - z_(k)||``. The paper uses ``k = 50`` on CIFAR-10 (all 50,000 training
    images), 200 on CIFAR-100 and 1000 on ImageNet (with a 1 % sample of the training set).

    The search is exact and runs in torch (no faiss): inner products of normalised vectors in
    chunks of ``batch_size`` queries select the ``k`` nearest, and the ``k``-th distance is then
    recomputed as the norm of the difference in float64 (no ``2 - 2 cos`` cancellation, so a bank
    point queried with ``k = 1`` scores exactly 0). Peak memory: the bank (``N x D`` in the
    training features' dtype: 100 MB for 50,000 x 512 float32) plus ``batch_size x N`` similarities.
    An all-zero feature stays zero after normalisation (distance 1 to every unit vector).
    """

    def __init__(self, k: int = 50, batch_size: int = 256) -> None:
        self.k = k
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"KNN(k={self.k!r}, batch_size={self.batch_size!r})"

    def fit(self, train_features: Any) -> KNN:
        """Store ``bank_`` ``[N, D]``: the L2-normalised ID training features (a copy)."""
        k = _check_positive_int(self.k, "k")
        _check_positive_int(self.batch_size, "batch_size")
        f = _feature_matrix(train_features, "train_features", fitting=True)
        if f.shape[0] < k:
            raise ValueError(f"k={k} needs at least k training features; got {f.shape[0]}")
        self.bank_ = _l2_normalise(f).contiguous()
        self.n_features_in_ = f.shape[1]
        return self

    def kth_distance(self, features: Any) -> Tensor:
        """``||z - z_(k)||_2`` per row, float64 ``[B]`` (``z`` the normalised features)."""
        _require_fitted(self, "bank_", "train_features")
        f = _feature_matrix(features, "features", self.n_features_in_)
        z = _l2_normalise(f.to(self.bank_.dtype))
        _, indices = _top_k_similarities(z, self.bank_, int(self.k), int(self.batch_size))
        kth = self.bank_[indices[:, -1]] if indices.shape[0] else self.bank_[:0]
        return (z.double() - kth.double()).norm(dim=1)

    def score(self, features: Any) -> Tensor:
        """``-||z - z_(k)||_2``, a ``[B]`` CPU tensor in the features' dtype (higher = more ID)."""
        f = _as_tensor(features)
        return (-self.kth_distance(f)).to(_out_dtype(f))


def vim_default_dim(feature_dim: int) -> int:
    """ViM's principal-subspace size as the official code picks it from the feature width ``D``.

    1000 if ``D >= 2048``, 512 if ``D >= 768``, otherwise ``D // 2`` (Wang et al. 2022, sec. 4 and
    the official repository).
    """
    d = _check_positive_int(feature_dim, "feature_dim")
    if d >= 2048:
        return 1000
    if d >= 768:
        return 512
    return d // 2


class ViM:
    """ViM (Wang, Li, Zhang & Zhang, CVPR 2022, "ViM: Out-Of-Distribution with Virtual-logit Matching").

    ``fit`` on ID training features ``x`` and the classifier's final layer ``W x + b``:

    * the origin ``u = -pinv(W) b`` (where the logits vanish), their sec. 3.3;
    * the principal subspace ``P``: the ``dim`` eigenvectors with the largest eigenvalues of
      ``X^T X / N`` with ``X = x - u`` (the features centred at ``u``, not at their mean, as in
      the paper and the official code's ``EmpiricalCovariance(assume_centered=True)``);
    * the residual ``x^{P-perp} = (I - P P^T)(x - u)``, its norm being the virtual logit's base;
    * ``alpha = sum_i max_k l_ik / sum_i ||x_i^{P-perp}||`` over the training set (eq. 7, the
      mean of the maximum logits over the mean residual norm).

    ``score = logsumexp(l) - alpha ||x^{P-perp}||`` (the log-probability of the ID classes
    against the virtual logit, up to a monotone transform; higher = more ID). pytorch-ood 0.4.0
    returns its negative. ``dim=None`` uses :func:`vim_default_dim`; ``0 < dim < D`` is required
    (pytorch-ood silently replaces a too-large ``d`` by ``D // 2``; this raises instead).
    Linear algebra in float64; the logits are ``classifier.head(x)``.
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim

    def __repr__(self) -> str:
        return f"ViM(dim={self.dim!r})"

    def fit(self, train_features: Any, classifier: nn.Module) -> ViM:
        """Learn ``origin_``, ``principal_components_`` ``[D, dim]``, ``residual_basis_`` and ``alpha_``."""
        fc = _final_linear(classifier)
        width = fc.in_features
        f = _feature_matrix(train_features, "train_features", width, fitting=True)
        dim = vim_default_dim(width) if self.dim is None else _check_positive_int(self.dim, "dim")
        if not dim < width:
            raise ValueError(
                f"dim must be smaller than the feature width {width} (the residual would be "
                f"empty); got dim={dim}. ViM's official rule: ood_core.scores.vim_default_dim({width}) "
                f"= {vim_default_dim(width)}"
            )
        weight = fc.weight.detach().cpu().double()
        bias = (
            fc.bias.detach().cpu().double()
            if fc.bias is not None
            else torch.zeros(weight.shape[0], dtype=torch.float64)
        )
        origin = -(torch.linalg.pinv(weight) @ bias)
        second_moment = torch.zeros(width, width, dtype=torch.float64)
        for start in range(0, f.shape[0], 8192):  # float64 copies one chunk at a time
            centred = f[start : start + 8192].double() - origin
            second_moment += centred.T @ centred
        second_moment /= f.shape[0]
        _, eigenvectors = torch.linalg.eigh(second_moment)  # ascending eigenvalues
        self.origin_ = origin
        self.dim_ = dim
        self.principal_components_ = eigenvectors[:, width - dim :].contiguous()
        self.residual_basis_ = eigenvectors[:, : width - dim].contiguous()
        self.n_features_in_ = width
        train_residual = self.residual_norm(f)
        max_logit_train = _head_logits(classifier, f).double().amax(dim=1)
        if not float(train_residual.sum()) > 0:
            raise ValueError(
                "the training features have no residual outside the principal subspace "
                "(they span at most dim directions around u); lower dim"
            )
        self.alpha_ = float(max_logit_train.sum() / train_residual.sum())
        return self

    def residual(self, features: Any) -> Tensor:
        """``x^{P-perp} = (I - P P^T)(x - u)``, float64 ``[B, D]``."""
        _require_fitted(self, "residual_basis_", "train_features, classifier")
        f = _feature_matrix(features, "features", self.n_features_in_).double()
        return ((f - self.origin_) @ self.residual_basis_) @ self.residual_basis_.T

    def residual_norm(self, features: Any) -> Tensor:
        """``||x^{P-perp}||_2``, float64 ``[B]`` (computed in the residual basis)."""
        _require_fitted(self, "residual_basis_", "train_features, classifier")
        f = _feature_matrix(features, "features", self.n_features_in_)
        out = [
            ((f[s : s + 8192].double() - self.origin_) @ self.residual_basis_).norm(dim=1)
            for s in range(0, max(f.shape[0], 1), 8192)
        ]
        return torch.cat(out)

    def score(self, classifier: nn.Module, features: Any) -> Tensor:
        """``logsumexp(head(x)) - alpha_ ||x^{P-perp}||``, a ``[B]`` CPU tensor (higher = more ID)."""
        _require_fitted(self, "alpha_", "train_features, classifier")
        fc = _final_linear(classifier)
        if fc.in_features != self.n_features_in_:
            raise ValueError(
                f"ViM was fitted on {self.n_features_in_}-d features; this classifier's fc takes "
                f"{fc.in_features}"
            )
        f = _feature_matrix(features, "features", self.n_features_in_)
        logits = _head_logits(classifier, f).double()
        out = torch.logsumexp(logits, dim=1) - self.alpha_ * self.residual_norm(f)
        return out.to(_out_dtype(f))


class FDBD:
    """fDBD (Liu & Qin, ICML 2024, "Fast Decision Boundary based Out-of-Distribution Detector").

    For features ``z`` with logits ``l = W z + b`` (the classifier's ``fc``) and predicted class
    ``c = argmax_j l_j``, the distance from ``z`` to the decision boundary between ``c`` and ``j``
    (the hyperplane ``(w_c - w_j)^T z + b_c - b_j = 0``) is

        ``d_j(z) = |(w_c - w_j)^T z + (b_c - b_j)| / ||w_c - w_j||_2``,

    and the score is the mean over the ``K - 1`` other classes, regularised by the distance to the
    mean ``mu`` of the ID training features (their eq. 5):

        ``score(z) = (1 / (K - 1)) sum_{j != c} d_j(z) / ||z - mu||_2``   (higher = more ID).

    The official code sums instead of averaging (a constant factor ``K - 1``, same ranking);
    pytorch-ood 0.4.0 averages and returns the negative. Hyperparameter-free. Two classes with
    identical weight vectors have no (or an everywhere) boundary: scoring raises. ``||z - mu||``
    is clamped at 1e-12 (a feature at the training mean would divide by zero). Ties for the top
    logit go to the lowest class index. Computed in float64.
    """

    def __repr__(self) -> str:
        return "FDBD()"

    def fit(self, train_features: Any) -> FDBD:
        """Learn ``train_mean_`` ``[D]`` (float64)."""
        f = _feature_matrix(train_features, "train_features", fitting=True)
        self.train_mean_ = f.double().mean(dim=0)
        self.n_features_in_ = f.shape[1]
        return self

    def _layer(self, classifier: nn.Module) -> tuple[Tensor, Tensor]:
        fc = _final_linear(classifier)
        if fc.in_features != self.n_features_in_:
            raise ValueError(
                f"FDBD was fitted on {self.n_features_in_}-d features; this classifier's fc "
                f"takes {fc.in_features}"
            )
        if fc.out_features < 2:
            raise ValueError("fDBD needs at least two classes (a decision boundary)")
        weight = fc.weight.detach().cpu().double()
        bias = (
            fc.bias.detach().cpu().double()
            if fc.bias is not None
            else torch.zeros(weight.shape[0], dtype=torch.float64)
        )
        return weight, bias

    def boundary_distances(self, classifier: nn.Module, features: Any) -> Tensor:
        """``d_j(z)`` for every class ``j``, float64 ``[B, K]``; 0 at the predicted class."""
        _require_fitted(self, "train_mean_", "train_features")
        weight, bias = self._layer(classifier)
        z = _feature_matrix(features, "features", self.n_features_in_).double()
        logits = z @ weight.T + bias
        top, predicted = logits.max(dim=1)
        # pairwise ||w_c - w_j|| without the Gram-matrix shortcut (no cancellation for close rows)
        norms = torch.cdist(weight, weight, compute_mode="donot_use_mm_for_euclid_dist")
        off_diagonal = ~torch.eye(weight.shape[0], dtype=torch.bool)
        if bool((norms[off_diagonal] == 0).any()):
            raise ValueError("two classes of the classifier's fc have identical weight vectors")
        norms = norms.masked_fill(~off_diagonal, 1.0)
        return (top[:, None] - logits).abs() / norms[predicted]

    def score(self, classifier: nn.Module, features: Any) -> Tensor:
        """``mean_{j != c} d_j(z) / ||z - mu||``, a ``[B]`` CPU tensor (higher = more ID)."""
        f = _as_tensor(features)
        distances = self.boundary_distances(classifier, f)
        z = _feature_matrix(f, "features", self.n_features_in_).double()
        spread = (z - self.train_mean_).norm(dim=1).clamp(min=1e-12)
        mean_distance = distances.sum(dim=1) / (distances.shape[1] - 1)
        return (mean_distance / spread).to(_out_dtype(f))


class NNGuide:
    """NNGuide (Park, Jung & Teoh, ICCV 2023, "Nearest Neighbor Guidance for Out-of-Distribution Detection").

    ``fit`` builds a bank from ID training features ``f_i`` and logits ``l_i``: each normalised
    feature scaled by its confidence, ``b_i = s(l_i) f_i / ||f_i||``, with the energy
    ``s(l) = logsumexp(l)`` as the confidence (the paper's and official code's choice for
    classifier-based scores). For a test sample the guidance is the mean of the ``k`` largest
    inner products with the bank, ``G(x) = mean_{top-k over i} <f / ||f||, b_i>`` (faiss
    ``IndexFlatIP`` on the scaled bank in the official code: the neighbours are chosen by the
    *scaled* similarity ``s(l_i) cos(f, f_i)``, not by the cosine alone), and

        ``score(x) = s(l(x)) * G(x)``   (their eq. 4-6; higher = more ID).

    Choices, following the official code: ``k = 10`` (its default; OpenOOD uses 100); the bank is
    a random ``bank_fraction`` of the training set (official: 1 % of ImageNet, drawn with a fixed
    seed; the default here keeps every training sample, as for CIFAR-sized sets), taken as the
    first ``int(N * bank_fraction)`` of a permutation from ``torch.Generator().manual_seed(seed)``.
    pytorch-ood 0.4.0 implements the same score with the opposite sign and no subsampling. The
    search is exact, in chunks of ``batch_size`` queries (see :class:`KNN`).
    """

    def __init__(
        self, k: int = 10, bank_fraction: float = 1.0, seed: int = 0, batch_size: int = 256
    ) -> None:
        self.k = k
        self.bank_fraction = bank_fraction
        self.seed = seed
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return (
            f"NNGuide(k={self.k!r}, bank_fraction={self.bank_fraction!r}, seed={self.seed!r}, "
            f"batch_size={self.batch_size!r})"
        )

    def fit(self, train_features: Any, train_logits: Any) -> NNGuide:
        """Learn ``bank_`` ``[n, D]`` (confidence-scaled normalised features) and ``bank_indices_``."""
        k = _check_positive_int(self.k, "k")
        _check_positive_int(self.batch_size, "batch_size")
        if isinstance(self.bank_fraction, bool) or not 0.0 < float(self.bank_fraction) <= 1.0:
            raise ValueError(f"bank_fraction must be in (0, 1]; got {self.bank_fraction!r}")
        f = _feature_matrix(train_features, "train_features", fitting=True)
        logits = _feature_matrix(train_logits, "train_logits", fitting=True)
        if logits.shape[0] != f.shape[0]:
            raise ValueError(
                f"got {f.shape[0]} training feature rows but {logits.shape[0]} logit rows"
            )
        n = f.shape[0] if float(self.bank_fraction) == 1.0 else int(f.shape[0] * float(self.bank_fraction))
        if n < k:
            raise ValueError(
                f"the bank holds {n} samples (bank_fraction={self.bank_fraction} of {f.shape[0]}); "
                f"k={k} needs at least k"
            )
        if n == f.shape[0]:
            indices = torch.arange(n)
            rows, row_logits = f, logits
        else:
            generator = torch.Generator().manual_seed(int(self.seed))
            indices = torch.randperm(f.shape[0], generator=generator)[:n]
            rows, row_logits = f[indices], logits[indices]
        bank = torch.empty(n, f.shape[1], dtype=f.dtype)
        for start in range(0, n, 8192):  # float64 one chunk at a time
            stop = start + 8192
            confidence = torch.logsumexp(row_logits[start:stop].double(), dim=1)
            bank[start:stop] = _l2_normalise(rows[start:stop].double()) * confidence[:, None]
        self.bank_ = bank
        self.bank_indices_ = indices
        self.n_features_in_ = f.shape[1]
        return self

    def guidance(self, features: Any) -> Tensor:
        """``G(x)``: the mean of the ``k`` largest ``<f / ||f||, b_i>``, float64 ``[B]``."""
        _require_fitted(self, "bank_", "train_features, train_logits")
        f = _feature_matrix(features, "features", self.n_features_in_)
        z = _l2_normalise(f.to(self.bank_.dtype))
        values, _ = _top_k_similarities(z, self.bank_, int(self.k), int(self.batch_size))
        return values.double().mean(dim=1)

    def score(self, features: Any, logits: Any) -> Tensor:
        """``logsumexp(logits) * G(x)``, a ``[B]`` CPU tensor (higher = more ID)."""
        f = _as_tensor(features)
        z = _feature_matrix(logits, "logits")
        if z.shape[0] != f.shape[0]:
            raise ValueError(f"got {f.shape[0]} feature rows but {z.shape[0]} logit rows")
        out = torch.logsumexp(z.double(), dim=1) * self.guidance(f)
        return out.to(_out_dtype(f))


# ------------------------------------------------------------------------ batched inference


def compute_logits_and_features(
    classifier: nn.Module,
    x_uint8_or_float: Any,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    *,
    shaping: Mapping[str, Shaper] | None = None,
) -> tuple[Tensor, Tensor]:
    """Penultimate features ``[N, D]`` and logits ``[N, K]`` for a stack of images.

    ``x_uint8_or_float`` is ``[N, C, H, W]``, ``uint8`` (divided by 255 batch by batch) or float
    in [0, 1] (torch or numpy). Runs in eval mode under ``no_grad`` (the classifier's previous
    mode is restored) on ``device``: the classifier's own device when ``None``; otherwise the
    classifier is moved there. ``shaping`` is passed to ``classifier.features`` (stage-wise
    activation shaping); the logits are ``head(features)``. Returns float32 CPU tensors.
    """
    images = _as_images(x_uint8_or_float)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if device is None:
        device = _module_device(classifier)
    else:
        classifier.to(device)
    was_training = classifier.training
    classifier.eval()
    features, logits = [], []
    try:
        with torch.no_grad():
            starts = range(0, images.shape[0], batch_size)
            for start in tqdm(starts, desc="features", leave=False, disable=len(starts) == 1 or bool(os.environ.get("TQDM_DISABLE"))):
                batch = _network_batch(images[start : start + batch_size], device)
                f = classifier.features(batch, shaping=shaping)
                features.append(f.float().cpu())
                logits.append(classifier.head(f).float().cpu())
    finally:
        classifier.train(was_training)
    return torch.cat(features), torch.cat(logits)

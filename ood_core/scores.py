"""OOD scores for classifiers: every score is a ``[B]`` tensor where **higher = more in-distribution**.

Logit scores (pure functions of a ``[B, K]`` logit tensor):

* :func:`msp` -- maximum softmax probability (Hendrycks & Gimpel 2017);
* :func:`max_logit` -- maximum logit (Hendrycks et al. 2022);
* :func:`energy` -- negative free energy ``T logsumexp(f / T)`` (Liu et al. 2020, eq. 5 with
  the sign flipped so that higher is more ID). ASH scores with it at ``T = 1``.

Scores that run a classifier use the contract of :mod:`ood_core.classifiers`:
``classifier.features(x) -> [B, D]`` (penultimate, post-pooling), ``classifier.head(f) -> logits``
and the final linear layer at ``classifier.fc``. Activation shaping is composed in between:
``energy(head(shaper(features)))`` (ASH, Djurisic et al. 2023), with ReAct clipping before the
shaper (:class:`ReAct`) or DICE's sparsified head after it (:class:`DICE`).

Fitted detectors (:class:`ReAct`, :class:`DICE`, :class:`Mahalanobis`) follow scikit-learn's
estimator rules: ``__init__`` stores hyperparameters only, ``fit`` returns ``self``, learned state
ends in ``_`` and scoring before fitting raises :class:`sklearn.exceptions.NotFittedError`.
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

from ood_core.ash import _check_percentile, make_shaper, react, react_threshold

__all__ = [
    "DICE",
    "Mahalanobis",
    "ReAct",
    "ash_energy",
    "ash_react",
    "compute_logits_and_features",
    "energy",
    "logits_from_features",
    "max_logit",
    "msp",
    "odin",
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
            batch = _to_unit_float(images[start : start + batch_size]).to(device)
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


def ash_energy(
    classifier: nn.Module,
    features: Any,
    method: str = "ash_s",
    percentile: float = 95.0,
    **shaper_kwargs: Any,
) -> Tensor:
    """ASH score (Djurisic et al. 2023, sec. 3): ``energy(head(ASH_method(features, p)))``, ``T = 1``.

    ``method`` is a key of :data:`ood_core.ash.SHAPERS`; ``p = 95`` with ASH-S is the official
    CIFAR setting, ``p = 90`` the ImageNet one.
    """
    shaper = make_shaper(method, percentile, **shaper_kwargs)
    return energy(logits_from_features(classifier, features, shaper))


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
    ``ReAct(...).fit(train).score(classifier, features, shaper=make_shaper(method, p))``.
    """
    shaper = make_shaper(method, percentile, **shaper_kwargs)
    clipped = react(_features_on(classifier, features), threshold)
    return energy(logits_from_features(classifier, clipped, shaper))


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
                batch = _to_unit_float(images[start : start + batch_size]).to(device)
                f = classifier.features(batch, shaping=shaping)
                features.append(f.float().cpu())
                logits.append(classifier.head(f).float().cpu())
    finally:
        classifier.train(was_training)
    return torch.cat(features), torch.cat(logits)

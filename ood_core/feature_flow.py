"""A normalizing flow on classifier features (Kirichenko, Izmailov & Wilson, NeurIPS 2020).

Kirichenko et al. ("Why normalizing flows fail to detect out-of-distribution data") show that a
flow trained on images spends its capacity on local pixel correlations that every natural image
shares, which is why its likelihood ranks SVHN above CIFAR-10; the same kind of flow trained on
the *embeddings* of a classifier (its penultimate features) models semantic content and
detects OOD inputs well. This module is that flow, for ``[B, D]`` feature vectors.

Direction and contract
----------------------
As in :mod:`ood_core.flows`: ``forward(x) -> (z, logdet)`` maps features to the latent (the
density direction) with ``logdet = log|det dz/dx|`` shaped ``[B]``; ``inverse(z) -> (x,
logdet)`` maps back with ``logdet = -log|det dz/dx|``. The base density is ``N(0, I_D)``, so
``log p(x) = log N(z; 0, I) + logdet`` in nats, of the **raw** features.

Architecture
------------
``x -> standardise -> [ActNorm -> invertible linear map -> affine coupling] x n_layers -> z``:

* **Standardisation** ``u = (x - mean) / std`` with the mean and (population) std of the ID
  training features, stored as buffers (set by :meth:`FeatureFlow.fit_standardization`), its
  log-det ``-sum(log std)`` included in ``logdet`` so that densities are of the raw features.
* **ActNorm** and the **invertible linear map** are Glow's :class:`ood_core.flows.ActNorm`
  (data-dependent initialisation, the flag a buffer) and :class:`ood_core.flows.InvConv1x1`
  (LU parameterisation, Glow eq. 10; permutation and signs as buffers) applied to the vector
  seen as a ``[B, D, 1, 1]`` image: a 1x1 convolution on one pixel *is* the linear map
  ``z = W x``, and the log-dets reduce to ``sum(log_scale)`` and ``log|det W|``.
* **Coupling**: Glow's :class:`ood_core.flows.Coupling` with an MLP (:class:`CouplingMLP`) in
  place of the CNN.
  ``x_a`` = the first ``D // 2`` entries, ``x_b`` the rest; ``h = MLP(x_a)``;
  ``"affine"``: ``t = h[:, 0::2]``, ``s = sigmoid(h[:, 1::2] + 2)``, ``y_b = (x_b + t) * s``,
  ``logdet = sum log s``; ``"additive"``: ``y_b = x_b + h``, ``logdet = 0``.

Choices, following :mod:`ood_core.flows` (and the official Glow code) rather than RealNVP
----------------------------------------------------------------------------------------------
* **Sigmoid scale** ``s = sigmoid(h + 2)`` in ``(0, 1)`` instead of RealNVP's ``exp(tanh(.))``:
  bounded, so one coupling can never blow a feature up; ActNorm supplies any needed growth.
* **Zero initialisation**: the MLP's last linear layer starts at zero and is multiplied by a
  per-output ``exp(3 * logs)`` factor (Glow's ``conv2d_zeros``), so every coupling starts as a
  constant scaling by ``sigmoid(2) ~ 0.88`` (affine) or the identity (additive).
* The MLP is ``Linear -> ReLU`` repeated ``n_hidden`` times, then the zero-initialised layer,
  with ordinary biases (Glow's coupling network uses ActNorm in place of the first biases).
* Kirichenko et al. use RealNVP on embeddings; we keep Glow's step (ActNorm and an LU linear
  map between couplings, which also replaces RealNVP's alternating masks).

Training: :func:`feature_flow_nll` is a ``loss_fn`` for :func:`ood_core.train.train` and
:func:`initialize_feature_flow` its ``init_fn``. Scoring: :func:`feature_flow_scores`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from tqdm import tqdm  # plain text bars: no ipywidgets needed in notebooks

from ood_core.flows import COUPLINGS, ActNorm, Coupling, InvConv1x1, initialize_actnorm

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureFlow",
    "FeatureFlowConfig",
    "FeatureFlowStep",
    "CouplingMLP",
    "feature_flow_nll",
    "feature_flow_scores",
    "initialize_feature_flow",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class FeatureFlowConfig:
    """Hyperparameters of a :class:`FeatureFlow`; rebuild by keyword from :meth:`to_dict`.

    Attributes
    ----------
    dim: ``D``, the feature dimension (at least 2: a coupling splits the vector in two).
    n_layers: flow steps, each ``ActNorm -> linear map -> coupling``.
    hidden: width of the coupling MLP's hidden layers.
    n_hidden: number of hidden ``Linear -> ReLU`` layers of the coupling MLP.
    coupling: ``"affine"`` (sigmoid scale) or ``"additive"`` (volume-preserving coupling).
    lu: LU-parameterised linear map (``log|det W| = sum log|s|``); ``False`` stores ``W``.

    The feature mean and std are data, not hyperparameters: they live in the model's buffers.
    """

    dim: int
    n_layers: int = 8
    hidden: int = 256
    n_hidden: int = 2
    coupling: str = "affine"
    lu: bool = True

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "hidden", "n_hidden"):
            if not _is_positive_int(getattr(self, name)):
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.dim < 2:
            raise ValueError(f"dim must be >= 2 (a coupling splits the features in two), got {self.dim}")
        if self.coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {self.coupling!r}")
        if not isinstance(self.lu, bool):
            raise ValueError(f"lu must be a bool, got {self.lu!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of all fields; inverse of :meth:`from_dict`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureFlowConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown FeatureFlowConfig keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(d))


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def _as_pixel(x: torch.Tensor) -> torch.Tensor:
    """``[B, D] -> [B, D, 1, 1]``: a vector as a one-pixel image for Glow's channel layers."""
    return x[:, :, None, None]


class ZeroLinear(nn.Module):
    """Linear layer initialised to zero, output scaled by ``exp(3 * logs)`` per output unit.

    The vector analogue of :class:`ood_core.flows.ZeroConv2d` (the official Glow
    ``conv2d_zeros``): the coupling it ends starts as a constant.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.logs = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * torch.exp(3.0 * self.logs)


class CouplingMLP(nn.Sequential):
    """The coupling network on vectors: ``(Linear -> ReLU) x n_hidden`` then :class:`ZeroLinear`.

    The ``net`` of a :class:`ood_core.flows.Coupling` on ``[B, D]`` features (see the module
    docstring); ``width`` is the hidden width.
    """

    def __init__(self, in_features: int, out_features: int, width: int, n_hidden: int = 2) -> None:
        layers: list[nn.Module] = []
        width_in = in_features
        for _ in range(n_hidden):
            layers += [nn.Linear(width_in, width), nn.ReLU()]
            width_in = width
        layers.append(ZeroLinear(width_in, out_features))
        super().__init__(*layers)


class FeatureFlowStep(nn.Module):
    """One step on ``[B, D]``: Glow's ActNorm -> invertible linear map (LU) -> coupling with a :class:`CouplingMLP`."""

    def __init__(self, config: FeatureFlowConfig) -> None:
        super().__init__()
        self.actnorm = ActNorm(config.dim)
        self.linear = InvConv1x1(config.dim, lu=config.lu)
        self.coupling = Coupling(config.dim, config.hidden, config.coupling,
                                 net=functools.partial(CouplingMLP, n_hidden=config.n_hidden))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, logdet = self.actnorm(_as_pixel(x))
        h, ld = self.linear(h)
        h, ld_coupling = self.coupling(h.flatten(1))
        return h, logdet + ld + ld_coupling

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, logdet = self.coupling.inverse(z)
        h, ld = self.linear.inverse(_as_pixel(h))
        h, ld_actnorm = self.actnorm.inverse(h)
        return h.flatten(1), logdet + ld + ld_actnorm


# --------------------------------------------------------------------------------------------
# The flow
# --------------------------------------------------------------------------------------------


class FeatureFlow(nn.Module):
    """Glow-style flow on ``[B, D]`` classifier features with a standard normal base.

    ``forward(x) -> (z, logdet)``, ``inverse(z) -> (x, logdet)`` (``[B]`` log-dets that include
    the standardisation), ``log_prob(x) = log N(z; 0, I) + logdet`` in nats, ``[B]``.

    Before use, call :meth:`fit_standardization` with the ID training features (it sets the
    ``feature_mean`` and ``feature_std`` buffers and the ``standardized`` flag, all saved in
    the ``state_dict``); any pass before that raises ``RuntimeError``. The ActNorm layers
    initialise themselves on the first ``forward`` batch, or explicitly with
    :func:`initialize_feature_flow` (the trainer's ``init_fn``).
    """

    def __init__(self, config: FeatureFlowConfig) -> None:
        super().__init__()
        if not isinstance(config, FeatureFlowConfig):
            raise TypeError(
                f"FeatureFlow takes a FeatureFlowConfig, got {type(config).__name__}; "
                "use FeatureFlow.from_config_dict(dict) to build from a dict"
            )
        self.config = config
        self.register_buffer("feature_mean", torch.zeros(config.dim))
        self.register_buffer("feature_std", torch.ones(config.dim))
        self.register_buffer("standardized", torch.tensor(False))
        self.steps = nn.ModuleList(FeatureFlowStep(config) for _ in range(config.n_layers))
        # Python-side copy of the flag (as ActNorm keeps one), so that a forward pass on an
        # accelerator does not wait on the device to read the buffer; refreshed on load.
        self._standardized_cache: bool | None = None

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._standardized_cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def _is_standardized(self) -> bool:
        if self._standardized_cache is None:
            self._standardized_cache = bool(self.standardized)
        return self._standardized_cache

    def is_initialized(self) -> bool:
        """Standardisation set and every ActNorm initialised (ready to score)."""
        return self._is_standardized() and all(
            m._is_initialized() for m in self.modules() if isinstance(m, ActNorm)
        )

    @classmethod
    def from_config_dict(cls, d: Mapping[str, Any]) -> FeatureFlow:
        """Build from the JSON-friendly dict of :meth:`FeatureFlowConfig.to_dict`."""
        return cls(FeatureFlowConfig.from_dict(d))

    @property
    def num_dims(self) -> int:
        return self.config.dim

    @torch.no_grad()
    def fit_standardization(self, features: Any) -> FeatureFlow:
        """Set ``feature_mean`` / ``feature_std`` from ID training features ``[N, D]``; returns ``self``.

        The population std (``ddof=0``) is computed in float64. A feature whose std is zero
        (e.g. a ReLU unit that never fires) has no density to model and raises ``ValueError``
        naming it: drop such columns (``keep = features.std(0) > 0``) before building the flow.
        The input is not modified.
        """
        f = _features_tensor(features, self.config.dim).double()
        if f.shape[0] < 2:
            raise ValueError(f"need at least 2 feature vectors to standardise, got {f.shape[0]}")
        mean = f.mean(0)
        std = f.std(0, unbiased=False)
        constant = torch.nonzero(~(std > 0)).flatten().tolist()
        if constant:
            raise ValueError(
                f"feature(s) {constant[:10]}{'...' if len(constant) > 10 else ''} are constant on the training "
                "features; drop them (keep = features.std(0) > 0) and build the flow with the new dim"
            )
        self.feature_mean.copy_(mean.to(self.feature_mean.dtype))
        self.feature_std.copy_(std.to(self.feature_std.dtype))
        self.standardized.fill_(True)
        self._standardized_cache = True
        return self

    def _check(self, x: torch.Tensor) -> None:
        if not self._is_standardized():
            raise RuntimeError(
                "FeatureFlow has no feature standardisation yet: call "
                "model.fit_standardization(train_features) first (or load a saved state_dict)"
            )
        if x.dim() != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"FeatureFlow expects features shaped [B, {self.config.dim}], got {tuple(x.shape)}")

    def _standardization_logdet(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.log(self.feature_std).sum() * x.new_ones(x.shape[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        h = (x - self.feature_mean) / self.feature_std
        logdet = self._standardization_logdet(x)
        for step in self.steps:
            h, ld = step(h)
            logdet = logdet + ld
        return h, logdet

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(z)
        h = z
        logdet = z.new_zeros(z.shape[0])
        for step in reversed(self.steps):
            h, ld = step.inverse(h)
            logdet = logdet + ld
        x = h * self.feature_std + self.feature_mean
        return x, logdet - self._standardization_logdet(z)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x) = sum_i log N(z_i; 0, 1) + log|det dz/dx|`` in nats, ``[B]``."""
        z, logdet = self(x)
        return -0.5 * (z.pow(2) + _LOG_2PI).sum(1) + logdet

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` feature vectors ``x = f^{-1}(z)``, ``z ~ N(0, I)``, ``[n, D]`` on the model's device."""
        reference = self.feature_mean
        if generator is None:
            z = torch.randn(n, self.config.dim, device=reference.device, dtype=reference.dtype)
        else:
            z = torch.randn(n, self.config.dim, generator=generator, device=generator.device, dtype=reference.dtype)
        return self.inverse(z.to(reference.device))[0]


# --------------------------------------------------------------------------------------------
# Training and scoring
# --------------------------------------------------------------------------------------------


def feature_flow_nll(model: FeatureFlow, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``loss_fn`` for :func:`ood_core.train.train`: mean NLL per dimension, ``-mean_b log p(x_b) / D`` (nats).

    ``batch[0]`` holds raw features ``[B, D]`` (e.g. a ``TensorDataset`` of features); the
    flow must have its standardisation set (:meth:`FeatureFlow.fit_standardization`).
    Dividing by ``D`` makes learning rates comparable across feature sizes.
    """
    x = batch[0]
    return -model.log_prob(x).mean() / x.shape[1]


def initialize_feature_flow(model: FeatureFlow, batch: tuple[torch.Tensor, ...]) -> None:
    """``init_fn`` for :func:`ood_core.train.train`: data-dependent ActNorm initialisation on ``batch[0]``."""
    initialize_actnorm(model, batch[0])


def _features_tensor(features: Any, dim: int) -> torch.Tensor:
    if isinstance(features, torch.Tensor):
        f = features.detach()
    else:
        f = torch.as_tensor(np.asarray(features))
    if f.dim() != 2 or f.shape[1] != dim:
        raise ValueError(f"expected features shaped [N, {dim}], got {tuple(f.shape)}")
    if not f.is_floating_point():
        raise TypeError(f"features must be floating point, got dtype {f.dtype}")
    if not torch.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    return f


def feature_flow_scores(model: FeatureFlow, features: Any, batch_size: int = 4096) -> np.ndarray:
    """``log p(x)`` of each feature vector under the flow, float64 ``[N]`` (nats); higher = more ID.

    The OOD score of Kirichenko et al. (2020, Sec. 8): the likelihood of a flow trained on ID
    classifier features. ``features`` is ``[N, D]`` (torch or numpy, float; never modified),
    cast to the model's dtype and device batch by batch. Runs in eval mode under
    ``torch.no_grad()`` (the training flag is restored).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    f = _features_tensor(features, model.config.dim)
    if f.shape[0] == 0:
        raise ValueError("features is empty")
    if not model.is_initialized():
        # Otherwise the first scored batch would initialise ActNorm from test data.
        raise RuntimeError(
            "the flow is not trained: set its standardisation (fit_standardization) and train it "
            "(ood_core.train.train with init_fn=initialize_feature_flow), or load a trained state_dict"
        )
    reference = model.feature_mean
    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            starts = range(0, f.shape[0], batch_size)
            quiet = len(starts) == 1 or bool(os.environ.get("TQDM_DISABLE"))
            for start in tqdm(starts, desc="feature flow", leave=False, disable=quiet):
                batch = f[start : start + batch_size].to(device=reference.device, dtype=reference.dtype)
                out.append(model.log_prob(batch).double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()

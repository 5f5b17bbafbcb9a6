"""Nalisnick et al. (2019, arXiv:1810.09136) §5: the second-order analysis of the likelihood gap.

Expanding ``log p(x)`` to second order around a point ``x0`` and taking expectations under the
OOD distribution ``q`` and the data distribution ``p*`` gives their eq. (5)::

    E_q[log p(x)] - E_p*[log p(x)]
        ~= grad log p(x0)^T (E_q[x] - E_p*[x])  +  1/2 Tr{ Hess log p(x0) (Sigma_q - Sigma_p*) }.

This module evaluates both terms for any flow, the paper's closed form of the second term for
constant-volume Glow, and the graying transform of their Sec. 5.2 experiment. Beside the closed
form it computes the exact curvature of the same linear flow and shows where the closed form's
column-sum simplification stops holding (it shrinks geometrically with the number of steps).

Two diagnoses of *why* a flow ranks OOD data high sit here too: the split of an image's bits/dim
into the terms of ``log p`` by level and layer (:func:`log_prob_breakdown`), and Kirichenko et
al. (NeurIPS 2020, "Why normalizing flows fail to detect out-of-distribution data"): what a
coupling layer's network predicts (:func:`coupling_view`) and how much of an image its fine
latents alone carry (:func:`latent_reconstruction`, :func:`reconstruction_table`).

Conventions (used by every function here)
-----------------------------------------
* **Space.** ``log p`` is ``model.log_prob(x)`` in nats, on the model input space
  ``x = pixel / 256 - 0.5`` (plus dequantisation noise; see :mod:`ood_core.likelihood`). Means
  and variances passed in are on that scale. :func:`model_space_mean` and :func:`pixel_variance`
  convert ``uint8`` images. ``ood_core.data.channel_stats`` reports variances on the
  ``pixel / 255`` scale: multiply by ``(255 / 256)**2`` to get here.
* **Dequantisation.** Uniform noise adds the same variance ``1 / (12 * 256**2)`` to every pixel
  of every set, so it cancels in ``Sigma_q - Sigma_p*``; the variances here leave it out.
* **Sign.** Every gap is ``E_q[log p] - E_p*[log p]``: **positive means the OOD set is
  favoured** (higher likelihood). In bits/dim it is ``gap_nats / (D ln 2)``, which equals
  ``mean bpd(ID) - mean bpd(OOD)`` for the measured gap.
* **Default expansion point.** ``x0`` is the mean ID image in model space (the ID training mean
  in the book). With ``x0 = E_p*[x]`` the expansion of eq. (5) drops one more second-order term,
  ``1/2 dmu^T H dmu`` with ``dmu = E_q[x] - E_p*[x]``; :func:`mean_shift_term` computes it (for a
  general ``x0``) so the tables can show how much it matters.
* **Precision.** Derivatives are taken on a float64 copy of the model (the caller's model is
  never modified), except on devices without float64 (MPS), where float32 is kept.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from ood_core import data as data_mod
from ood_core import likelihood, units

log = logging.getLogger(__name__)

__all__ = [
    "ClosedForm",
    "TraceEstimate",
    "model_space_mean",
    "pixel_variance",
    "channel_gains",
    "effective_prior_sigma",
    "cv_glow_closed_form",
    "CLOSED_FORM",
    "LINEARISED_EXACT",
    "linearised_jacobian",
    "channel_norms",
    "cv_glow_linearised_exact",
    "depth_factors",
    "expected_log_column_sum_sq",
    "glow_init_invconv_weights",
    "SHRINKAGE_QUANTITIES",
    "TRAINED_WEIGHTS",
    "RANDOM_WEIGHTS",
    "depth_shrinkage_table",
    "curvature_table",
    "rademacher_probes",
    "hessian_vector_products",
    "hutchinson_trace_term",
    "channel_curvature",
    "first_order_term",
    "mean_shift_term",
    "taylor_expectation",
    "second_order_table",
    "variance_table",
    "blend_gray",
    "graying_table",
    "INPUT_SCALING",
    "TERM_LABELS",
    "log_prob_contributions",
    "log_prob_breakdown",
    "prior_fit_table",
    "CouplingView",
    "features_to_image",
    "coupling_view",
    "latent_images",
    "latent_reconstruction",
    "reconstruction_table",
]

_PIXEL_BINS = 256.0


# --------------------------------------------------------------------------------------------
# Data moments in model space
# --------------------------------------------------------------------------------------------


def model_space_mean(x_uint8: torch.Tensor) -> torch.Tensor:
    """Mean image ``E[(k + u) / 256 - 0.5] = (mean k + 0.5) / 256 - 0.5``, float64 ``[C, H, W]``.

    The expectation over the dequantisation noise ``u ~ U[0, 1)`` is taken exactly.
    """
    _check_images(x_uint8)
    mean_k = x_uint8.double().mean(0)
    return (mean_k + 0.5) / _PIXEL_BINS - 0.5


def pixel_variance(x_uint8: torch.Tensor) -> torch.Tensor:
    """Per-pixel variance across images on the model scale (``pixel / 256``), float64 ``[C, H, W]``.

    ``ood_core.data.channel_stats(x)["pixel_var"] * (255 / 256)**2`` (population variance). The
    dequantisation noise's ``1 / (12 * 256**2)`` is not included (it cancels in differences).
    """
    _check_images(x_uint8)
    var_unit = data_mod.channel_stats(x_uint8)["pixel_var"]  # on pixel / 255
    return torch.from_numpy(var_unit * (255.0 / _PIXEL_BINS) ** 2)


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4 or len(x) == 0:
        raise TypeError("expected a non-empty uint8 tensor [N, C, H, W] (e.g. ood_core.data.load(...).x)")


# --------------------------------------------------------------------------------------------
# The paper's closed form for constant-volume Glow
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClosedForm:
    """Nalisnick et al.'s CV-Glow closed form (their eq. 6), mapped onto the first level of our Glow.

    The same container holds the *linearised exact* curvature of the same linear flow
    (:func:`cv_glow_linearised_exact`); ``form`` says which one it is.

    Attributes
    ----------
    gains: ``[4C]`` per squeezed channel of the first level: ``Pi_k sum_j u_{k,c,j}`` (closed
        form, :func:`channel_gains`) or ``||M e_c||`` (linearised exact, :func:`channel_norms`).
    curvature: ``[4C]`` ``-gains**2 / sigma**2``, the per-channel second derivative.
    curvature_input: ``[C]`` the curvature averaged over the four squeezed channels that hold
        each input channel (a 2x2 block's four offsets).
    delta_var_sum: ``[4C]`` ``sum_{h,w} (sigma^2_q - sigma^2_p*)`` per squeezed channel.
    gap_nats, gap_bpd: predicted ``E_q[log p] - E_p*[log p]`` (positive = OOD favoured).
    sigma: the latent scale used.
    """

    gains: np.ndarray
    curvature: np.ndarray
    curvature_input: np.ndarray
    delta_var_sum: np.ndarray
    gap_nats: float
    gap_bpd: float
    sigma: float
    form: str = "closed form"


#: ``ClosedForm.form`` of :func:`cv_glow_closed_form` and of :func:`cv_glow_linearised_exact`.
CLOSED_FORM = "closed form"
LINEARISED_EXACT = "linearised exact"


def _first_level(model: nn.Module):
    levels = getattr(model, "levels", None)
    if levels is None or not hasattr(model, "invconv_weights"):
        raise TypeError("the closed form needs an ood_core.flows.Glow (levels of ActNorm -> 1x1 conv -> coupling)")
    return levels[0]


def channel_gains(model: nn.Module, fold_actnorm: bool = True) -> np.ndarray:
    """``g_c = Pi_k sum_j u_{k,c,j}`` over the ``K`` steps of the first level, ``[4C]`` float64.

    Index convention: the paper writes the 1x1-conv weights as ``u_{k,c,j}`` with ``c`` the
    channel whose curvature is computed, i.e. the *input* channel, as in TensorFlow's
    ``[in, out]`` kernel layout of the authors' code. Our weights (``model.invconv_weights()``)
    are PyTorch ``[out, in]`` matrices ``W_k``, so ``u_{k,c,j} = W_k[j, c]`` and the sum is the
    **column sum** ``sum_j W_k[j, c]``: the change in the sum of all output channels when input
    channel ``c`` moves by one.

    ``fold_actnorm``: each step applies ActNorm ``x -> a_k * x + b_k`` before its 1x1 conv (the
    paper's CV-Glow analysis has no ActNorm), so the linear map of a step is
    ``W_k diag(a_k)``; folding multiplies column ``c`` by ``a_k[c]``.
    """
    level = _first_level(model)
    n_steps = len(level.steps)
    weights = model.invconv_weights()[:n_steps]  # (level, step) order: the first level's steps
    gains = None
    with torch.no_grad():
        for step, w in zip(level.steps, weights):
            col_sums = w.detach().double().sum(0)
            if fold_actnorm:
                col_sums = col_sums * torch.exp(step.actnorm.log_scale.detach().double().flatten())
            gains = col_sums if gains is None else gains * col_sums
    return gains.cpu().numpy()


def effective_prior_sigma(model: nn.Module, x: torch.Tensor) -> float:
    """``sigma_eff = (mean_i 1 / sigma_i^2)^(-1/2)`` over all latent dimensions of a Glow at ``x``.

    ``sigma_i`` are the prior standard deviations of every latent (conditional priors at the
    splits, the learned per-channel prior at the top), averaged over the batch ``x`` (model
    space, ``[B, C, H, W]``). The paper's latent is ``N(0, sigma^2 I)`` and its curvature scales
    with ``1 / sigma^2``; this is the single ``sigma`` with the same mean curvature. A model
    with ``learn_prior=False`` gives exactly 1.
    """
    _first_level(model)
    x = x.to(next(model.parameters()).device, next(model.parameters()).dtype)
    inv_var_sum = 0.0
    count = 0
    with torch.no_grad():
        for out in model.walk(x):
            if out.z is not None:
                _, log_std = out.level.split.prior_params(out.h)
                inv_var_sum += float(torch.exp(-2.0 * log_std.double()).sum())
                count += log_std.numel()
        h = out.h
        top_log_std = model.top_log_std if model.top_log_std is not None else torch.zeros(1, h.shape[1], 1, 1)
        per_channel = torch.exp(-2.0 * top_log_std.double()).flatten()
        inv_var_sum += float(per_channel.sum()) * h.shape[0] * h.shape[2] * h.shape[3]
        count += h.numel()
    return float((inv_var_sum / count) ** -0.5)


def cv_glow_closed_form(model: nn.Module, var_ood: torch.Tensor, var_id: torch.Tensor, sigma: float = 1.0,
                        fold_actnorm: bool = True) -> ClosedForm:
    """The paper's closed-form second-order gap for constant-volume Glow (Nalisnick et al. eq. 6).

    This is **the paper's approximation**, evaluated as stated::

        curvature_c = -(1 / sigma^2) (Pi_k sum_j u_{k,c,j})^2
        gap = -(1 / (2 sigma^2)) sum_c (Pi_k sum_j u_{k,c,j})^2 sum_{h,w} (sigma^2_{q,h,w,c} - sigma^2_{p*,h,w,c})

    It assumes a single-scale flow of ``K`` steps (1x1 conv + additive coupling) into a latent
    ``N(0, sigma^2 I)``, equal means (the first-order term vanishes), and it drops the coupling
    networks' derivatives: an additive coupling's Jacobian has identity diagonal blocks, and the
    off-diagonal block ``dt / dx_a`` is ignored. It is exact only when every 1x1 conv is diagonal
    and the couplings are constant (tested in ``tests/test_analysis.py``). Even for the linear
    flow it describes (couplings as the identity) it is exact only for diagonal 1x1 convolutions:
    :func:`cv_glow_linearised_exact` gives that flow's exact curvature, and
    :func:`depth_shrinkage_table` shows the column-sum product shrinking geometrically with ``K``.

    How it is mapped onto our multi-scale Glow (:mod:`ood_core.flows`):

    * **First level only.** The data are squeezed (``[C, H, W] -> [4C, H/2, W/2]``, channel
      ``4c + 2i + j`` = input channel ``c`` at offset ``(i, j)``) and go through the first
      level's ``K`` steps; ``c`` runs over these ``4C`` squeezed channels and ``var_*`` are
      squeezed the same way. Later levels (after the split and a second squeeze, which mixes
      spatial positions into channels) are not in the formula.
    * **ActNorm folded in** (``fold_actnorm=True``): see :func:`channel_gains`.
    * **sigma**: 1 (our priors' initial ``N(0, I)``, the default), or the learned prior's scale
      via :func:`effective_prior_sigma`.

    ``var_ood``, ``var_id``: per-pixel variances ``[C, H, W]`` on the model input scale
    (:func:`pixel_variance`). Returns a :class:`ClosedForm` with the per-channel curvature and
    the predicted gap in nats and bits/dim (positive = OOD favoured).
    """
    return _curvature_form(model, var_ood, var_id, sigma, lambda: channel_gains(model, fold_actnorm=fold_actnorm),
                           CLOSED_FORM)


def _curvature_form(model: nn.Module, var_ood: torch.Tensor, var_id: torch.Tensor, sigma: float, gains_fn,
                    form: str) -> ClosedForm:
    """``curvature = -gains**2 / sigma**2`` per squeezed channel and ``gap = 1/2 sum_c curvature_c sum_{h,w} dvar``."""
    var_ood = torch.as_tensor(var_ood, dtype=torch.float64).cpu()
    var_id = torch.as_tensor(var_id, dtype=torch.float64).cpu()
    shape = tuple(model.config.image_shape)
    if tuple(var_ood.shape) != shape or tuple(var_id.shape) != shape:
        raise ValueError(f"var_ood and var_id must be [C, H, W] = {shape}, got {tuple(var_ood.shape)}, "
                         f"{tuple(var_id.shape)}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if getattr(model.config, "coupling", "additive") != "additive":
        log.warning("%s on a %s-coupling Glow: it assumes constant volume", form, model.config.coupling)
    level = _first_level(model)
    gains = gains_fn()
    squeezed, _ = level.squeeze((var_ood - var_id)[None])  # [1, 4C, H/2, W/2]; Squeeze is dtype-agnostic
    delta_var_sum = squeezed[0].sum((1, 2)).numpy()
    curvature = -(gains**2) / sigma**2
    gap_nats = 0.5 * float((curvature * delta_var_sum).sum())
    num_dims = int(np.prod(shape))
    return ClosedForm(gains=gains, curvature=curvature, curvature_input=curvature.reshape(shape[0], 4).mean(1),
                      delta_var_sum=delta_var_sum, gap_nats=gap_nats, gap_bpd=gap_nats / (num_dims * units.LN2),
                      sigma=float(sigma), form=form)


# --------------------------------------------------------------------------------------------
# Where the closed form stops holding: the linearised exact curvature and depth shrinkage
# --------------------------------------------------------------------------------------------


def _first_level_linear_steps(model: nn.Module, fold_actnorm: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The first level's 1x1-conv matrices ``W_k`` (``[out, in]``) and ActNorm scales ``a_k`` (ones when
    not folded), float64 on the CPU, in the order they are applied."""
    level = _first_level(model)
    weights = [w.detach().double().cpu() for w in model.invconv_weights()[: len(level.steps)]]
    scales = [torch.exp(step.actnorm.log_scale.detach().double().cpu().flatten()) if fold_actnorm
              else torch.ones(w.shape[1], dtype=torch.float64) for step, w in zip(level.steps, weights)]
    return weights, scales


def linearised_jacobian(model: nn.Module, fold_actnorm: bool = True) -> np.ndarray:
    """``M = W_K diag(a_K) ... W_1 diag(a_1)``, the ``[4C, 4C]`` Jacobian of the first level's linear part.

    The flow the closed form describes (:func:`cv_glow_closed_form`): the ``K`` steps of the
    first level with every coupling taken as the identity (an additive coupling whose network's
    derivative is dropped), acting on the ``4C`` squeezed channels of each spatial position.
    ``W_k`` are PyTorch ``[out, in]`` matrices (:meth:`ood_core.flows.Glow.invconv_weights`),
    ``a_k = exp(log_scale)`` the ActNorm scales (``fold_actnorm=False``: ``a_k = 1``). Float64.
    """
    weights, scales = _first_level_linear_steps(model, fold_actnorm)
    jac = torch.eye(weights[0].shape[0], dtype=torch.float64)
    for w, a in zip(weights, scales):
        jac = w @ (a[:, None] * jac)
    return jac.numpy()


def channel_norms(model: nn.Module, fold_actnorm: bool = True) -> np.ndarray:
    """``||M e_c||``, the column norms of :func:`linearised_jacobian`, ``[4C]`` float64.

    For a linear flow ``z = M x + b`` into ``N(m, sigma^2 I)``, ``Hess_x log p = -M^T M / sigma^2``,
    whose diagonal is ``-||M e_c||^2 / sigma^2``: the exact curvature of channel ``c``, which the
    closed form replaces by ``-(Pi_k 1^T W_k diag(a_k) e_c)^2 / sigma^2`` (:func:`channel_gains`).
    The two agree when every ``W_k`` is diagonal; for a general ``W`` the closed form sums the
    column's entries (with signs) where the exact curvature takes their Euclidean norm, and it
    follows channel ``c`` through every step instead of the channels ``W_k`` actually sends it to.
    """
    return np.linalg.norm(linearised_jacobian(model, fold_actnorm), axis=0)


def cv_glow_linearised_exact(model: nn.Module, var_ood: torch.Tensor, var_id: torch.Tensor, sigma: float = 1.0,
                             fold_actnorm: bool = True) -> ClosedForm:
    """The exact second-order gap of the closed form's own linear flow (no column-sum simplification).

    Same flow, mapping, ``sigma`` and inputs as :func:`cv_glow_closed_form` (first level's ``K``
    steps on the ``4C`` squeezed channels, ActNorm folded, couplings as the identity, latent
    ``N(m, sigma^2 I)``), but the per-channel curvature is the exact Hessian diagonal of that
    linear flow (:func:`channel_norms`)::

        curvature_c = -||W_K diag(a_K) ... W_1 diag(a_1) e_c||^2 / sigma^2
        gap = 1/2 sum_c curvature_c sum_{h,w} (sigma^2_{q,h,w,c} - sigma^2_{p*,h,w,c})

    With per-pixel (diagonal) variances only the Hessian's diagonal enters eq. (5)'s trace, and
    the 1x1 convolutions act on each position separately, so this gap is *exact* for the linear
    flow: what remains between it and the network's Hutchinson estimate is the coupling
    networks, the later levels and the prior's structure; what lies between it and the closed
    form is the column-sum simplification alone. Equal to :func:`cv_glow_closed_form` when every
    1x1 convolution is diagonal. Returns a :class:`ClosedForm` with ``form = "linearised exact"``.
    """
    return _curvature_form(model, var_ood, var_id, sigma, lambda: channel_norms(model, fold_actnorm=fold_actnorm),
                           LINEARISED_EXACT)


def depth_factors(weights, scales=None) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form and linearised-exact per-channel factors of the first ``k`` steps, ``k = 1..K``.

    ``weights``: ``K`` matrices ``W_k`` (``[C, C]``, PyTorch ``[out, in]``); ``scales``: ``K``
    ActNorm scale vectors ``a_k`` (``[C]``; default ones). Returns two ``[K, C]`` float64 arrays;
    row ``k - 1`` holds, for each channel ``c``:

    * ``closed[k-1, c] = (Pi_{i<=k} sum_j W_i[j, c] a_i[c])^2``, the closed form's
      ``(Pi_i sum_j u_{i,c,j})^2`` (Nalisnick et al. eq. 6, column sums);
    * ``exact[k-1, c] = ||W_k diag(a_k) ... W_1 diag(a_1) e_c||^2``, the linearised exact value.

    Both are the curvature times ``-sigma^2``.
    """
    weights = [torch.as_tensor(w, dtype=torch.float64).cpu() for w in weights]
    if not weights or any(w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape != weights[0].shape for w in weights):
        raise ValueError("weights must be a non-empty list of square [C, C] matrices of one size")
    channels = weights[0].shape[0]
    if scales is None:
        scales = [torch.ones(channels, dtype=torch.float64)] * len(weights)
    scales = [torch.as_tensor(a, dtype=torch.float64).cpu().flatten() for a in scales]
    if len(scales) != len(weights) or any(a.shape != (channels,) for a in scales):
        raise ValueError(f"scales must be {len(weights)} vectors of length {channels}, one per weight matrix")
    closed, exact = [], []
    gains = torch.ones(channels, dtype=torch.float64)
    jac = torch.eye(channels, dtype=torch.float64)
    for w, a in zip(weights, scales):
        gains = gains * w.sum(0) * a
        jac = w @ (a[:, None] * jac)
        closed.append(gains**2)
        exact.append((jac**2).sum(0))
    return torch.stack(closed).numpy(), torch.stack(exact).numpy()


def expected_log_column_sum_sq(num_channels: int) -> float:
    """``E log (sum_j W_jc)^2`` for a random orthogonal ``C x C`` matrix ``W`` (Haar, or Glow's QR init).

    A column ``w`` of a random rotation is uniform on the unit sphere, so with ``u = 1 / sqrt(C)``
    (a unit vector) ``s = sum_j w_j = sqrt(C) u^T w`` and ``(u^T w)^2 ~ Beta(1/2, (C - 1)/2)``::

        E[s^2]     = C * (1 / C) = 1
        E[log s^2] = log C + psi(1/2) - psi(C/2)       (psi: digamma)
                   = log C - 2 log 2 - sum_{k=1}^{C/2 - 1} 1/k          (C even)
                   = log C - sum_{k=1}^{(C-1)/2} 2/(2k - 1)             (C odd)

    which is negative: by Jensen, ``E log s^2 < log E s^2 = 0`` since ``s^2`` is not constant
    (-1.18 for C = 12; -> psi(1/2) + log 2 = -1.27 as C grows; 0 for C = 1, where W = +-1). A
    product of ``K`` independent such factors has mean 1 but geometric mean
    ``exp(K E log s^2)``: the closed form's ``(Pi_k sum_j W_k[j, c])^2`` of a Glow at
    initialisation is typically ``e^{-1.18 K}`` for 12 channels, while the exact
    ``||W_K ... W_1 e_c||^2`` of orthogonal matrices is exactly 1. (QR of a Gaussian matrix
    without a sign correction is not Haar, but each column is uniform on the sphere up to its
    sign, which ``s^2`` does not see.)
    """
    if not isinstance(num_channels, (int, np.integer)) or num_channels < 1:
        raise ValueError(f"num_channels must be a positive int, got {num_channels!r}")
    c = int(num_channels)
    if c % 2 == 0:
        return math.log(c) - 2.0 * units.LN2 - math.fsum(1.0 / k for k in range(1, c // 2))
    return math.log(c) - math.fsum(2.0 / (2 * k - 1) for k in range(1, (c - 1) // 2 + 1))


def glow_init_invconv_weights(num_channels: int, k: int, seed: int, lu: bool = True) -> list[torch.Tensor]:
    """``k`` 1x1-conv matrices exactly as :class:`ood_core.flows.InvConv1x1` initialises them.

    Each is a fresh ``InvConv1x1(num_channels, lu)``'s ``weight()`` (QR of a Gaussian matrix, then
    its LU factors when ``lu``), drawn from the global generator seeded with ``seed`` inside a
    forked RNG state (the caller's random state is left as it was). Float64, ``[C, C]``.
    """
    from ood_core.flows import InvConv1x1

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            return [InvConv1x1(num_channels, lu=lu).weight().double() for _ in range(k)]


#: ``quantity`` values of :func:`depth_shrinkage_table`; ``weights`` values.
SHRINKAGE_QUANTITIES = ("closed form (column sums)", "linearised exact")
TRAINED_WEIGHTS = "trained, first level"
RANDOM_WEIGHTS = "random orthogonal (Glow init)"


def depth_shrinkage_table(model: nn.Module | None = None, k_max: int | None = None, num_channels: int | None = None,
                          seeds=(0, 1, 2, 3, 4), fold_actnorm: bool = True, lu: bool = True) -> pd.DataFrame:
    """How the closed form's per-channel factor shrinks with the number of steps ``K``, beside the exact one.

    For ``K = 1 .. k_max`` (prefixes of the steps), per channel ``c``, the closed form's
    ``(Pi_{k<=K} sum_j u_{k,c,j})^2`` and the linearised exact ``||Pi_{k<=K} W_k diag(a_k) e_c||^2``
    (:func:`depth_factors`; both are ``-sigma^2`` times a curvature), for

    * ``model`` (optional): the first level's trained 1x1 weights and ActNorm scales
      (``fold_actnorm``), ``k_max`` at most its ``K``; ``weights = "trained, first level"``,
      ``seed = -1``;
    * ``seeds``: random 1x1 weights exactly as Glow initialises them
      (:func:`glow_init_invconv_weights`: random rotations, LU-parameterised when ``lu``), no
      ActNorm, ``num_channels`` of them (default: the model's ``4C``);
      ``weights = "random orthogonal (Glow init)"``.

    For orthogonal ``W_k`` the exact factor is 1 at every depth, while the closed form's is a
    product of independent factors with mean 1 and mean log :func:`expected_log_column_sum_sq`
    ``< 0``: it shrinks geometrically with ``K``. Returns a tidy DataFrame, one row per
    (weights, seed, K, channel, quantity), columns ``weights, seed, K, channel, quantity, factor``
    (``quantity`` in :data:`SHRINKAGE_QUANTITIES`), for a log-scale plot of ``factor`` against ``K``;
    ``attrs`` holds ``num_channels``, ``mean_log_column_sum_sq`` (exact) and
    ``mean_log_column_sum_sq_sampled`` (over the random matrices' columns).
    """
    rows = []
    if model is not None:
        weights, scales = _first_level_linear_steps(model, fold_actnorm)
        k_max = len(weights) if k_max is None else k_max
        if not 1 <= k_max <= len(weights):
            raise ValueError(f"k_max must be in 1..{len(weights)} (the model's steps per level), got {k_max}")
        num_channels = weights[0].shape[0] if num_channels is None else num_channels
        rows.append((TRAINED_WEIGHTS, -1, depth_factors(weights[:k_max], scales[:k_max])))
    if k_max is None or num_channels is None:
        raise ValueError("without a model, give k_max and num_channels")
    log_col_sq = []
    for seed in seeds:
        weights = glow_init_invconv_weights(num_channels, k_max, int(seed), lu=lu)
        log_col_sq.append(torch.log(torch.stack([w.sum(0) for w in weights]) ** 2).flatten())
        rows.append((RANDOM_WEIGHTS, int(seed), depth_factors(weights)))
    frames = []
    for source, seed, (closed, exact) in rows:
        for quantity, values in zip(SHRINKAGE_QUANTITIES, (closed, exact)):
            k_idx, c_idx = np.meshgrid(np.arange(values.shape[0]), np.arange(values.shape[1]), indexing="ij")
            frames.append(pd.DataFrame({"weights": source, "seed": seed, "K": k_idx.ravel() + 1,
                                        "channel": c_idx.ravel(), "quantity": quantity, "factor": values.ravel()}))
    table = pd.concat(frames, ignore_index=True)
    table.attrs.update({"num_channels": int(num_channels),
                        "mean_log_column_sum_sq": expected_log_column_sum_sq(int(num_channels)),
                        "mean_log_column_sum_sq_sampled": float(torch.cat(log_col_sq).mean()) if log_col_sq
                        else float("nan")})
    return table


# --------------------------------------------------------------------------------------------
# Autograd derivatives of log p at x0, for any flow
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceEstimate:
    """A Monte Carlo estimate (float, or an array for several targets at once) and its standard error."""

    estimate: float | np.ndarray
    stderr: float | np.ndarray
    n_samples: int


def _derivative_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` in float64 (float32 on MPS), in eval mode; the caller's model is untouched."""
    twin = copy.deepcopy(model)
    device = next((p.device for p in twin.parameters()), torch.device("cpu"))
    if device.type != "mps":
        twin = twin.double()
    twin.eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float64


def _as_batch(t: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, bool]:
    """``t`` as ``[Q, *shape]`` and whether it was a single ``shape`` tensor."""
    t = torch.as_tensor(t)
    if tuple(t.shape) == shape:
        return t[None], True
    if t.ndim == len(shape) + 1 and tuple(t.shape[1:]) == shape:
        return t, False
    raise ValueError(f"expected a tensor shaped {shape} or [Q, *{shape}], got {tuple(t.shape)}")


def rademacher_probes(shape: tuple[int, ...], n: int, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` i.i.d. Rademacher vectors (entries +-1 with probability 1/2), ``[n, *shape]``, on the CPU."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, (n, *shape), generator=generator, device=generator.device)
    return (2 * bits - 1).to(dtype).cpu()


def _hvp(twin: nn.Module, x0: torch.Tensor, vectors: torch.Tensor,
         batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad log p(x0), [H v for v in vectors])`` with ``H = Hess log p(x0)``, by double backprop.

    A batch of copies of ``x0`` goes through the model at once; the log-densities of a flow's
    examples are independent, so the gradient of their sum gives each copy's gradient, and the
    gradient of ``sum_b g_b . v_b`` gives each copy's ``H v_b``.
    """
    device, dtype = _device_dtype(twin)
    x0 = x0.to(device, dtype)
    out = []
    grad = None
    for chunk in tqdm(vectors.split(batch_size), desc="Hessian-vector products", leave=False):
        chunk = chunk.to(device, dtype)
        x = x0.expand(len(chunk), *x0.shape).clone().requires_grad_(True)
        (g,) = torch.autograd.grad(twin.log_prob(x).sum(), x, create_graph=True)
        (hv,) = torch.autograd.grad((g * chunk).sum(), x)
        out.append(hv.detach())
        if grad is None:
            grad = g[0].detach()
    return grad, torch.cat(out)


def hessian_vector_products(model: nn.Module, x0: torch.Tensor, vectors: torch.Tensor,
                            batch_size: int = 16) -> torch.Tensor:
    """``H v`` for each ``v`` in ``vectors`` (``[P, C, H, W]``), ``H = Hess_x log p(x0)`` (nats), float64."""
    x0 = torch.as_tensor(x0)
    vectors, _ = _as_batch(vectors, tuple(x0.shape))
    _, hv = _hvp(_derivative_copy(model), x0, vectors, batch_size)
    return hv.double().cpu()


def hutchinson_trace_term(model: nn.Module, x0: torch.Tensor, delta_var: torch.Tensor, n_probes: int = 64,
                          generator: torch.Generator | None = None, batch_size: int = 16) -> TraceEstimate:
    """Hutchinson estimate of ``1/2 Tr{Hess log p(x0) diag(delta_var)}`` (nats) and its standard error.

    For Rademacher probes ``v`` (``E[v v^T] = I``), ``E[v^T H D v] = Tr(H D)`` with
    ``D = diag(delta_var)``; each probe costs one Hessian-vector product (double backprop through
    ``model.log_prob``), and ``v^T H D v = (H v) . (D v)`` since ``H`` is symmetric. The estimate
    is the mean over probes, the standard error ``std / sqrt(n_probes)``. When ``H D`` is diagonal
    the estimator is exact (every probe gives the same value).

    Works for any flow with ``log_prob(x) -> [B]`` (nats) on ``x0``'s shape. ``delta_var`` is
    ``[C, H, W]`` (``Sigma_q - Sigma_p*`` per pixel, model scale) or ``[Q, C, H, W]`` for several
    pairs evaluated with the same probes (``estimate`` and ``stderr`` are then ``[Q]`` arrays).
    ``generator`` (CPU) draws the probes; default seed 0.
    """
    x0 = torch.as_tensor(x0, dtype=torch.float64)
    deltas, single = _as_batch(torch.as_tensor(delta_var, dtype=torch.float64), tuple(x0.shape))
    probes = rademacher_probes(tuple(x0.shape), n_probes, generator)
    _, hv = _hvp(_derivative_copy(model), x0, probes, batch_size)
    per_probe = 0.5 * (hv.double().cpu() * probes).flatten(1) @ deltas.flatten(1).T  # [P, Q]
    est = per_probe.mean(0).numpy()
    se = (per_probe.std(0, unbiased=True) / math.sqrt(n_probes)).numpy() if n_probes > 1 else np.full_like(est, np.nan)
    if single:
        return TraceEstimate(float(est[0]), float(se[0]), n_probes)
    return TraceEstimate(est, se, n_probes)


def channel_curvature(model: nn.Module, x0: torch.Tensor, n_probes: int = 64,
                      generator: torch.Generator | None = None, batch_size: int = 16) -> TraceEstimate:
    """Mean Hessian diagonal of ``log p`` at ``x0`` over each squeezed channel, ``[4C]`` (nats), by Hutchinson.

    Squeezed channel ``4c + 2i + j`` is input channel ``c`` at offset ``(i, j)`` of each 2x2 block
    (:class:`ood_core.flows.Squeeze`), the channels :func:`cv_glow_closed_form` reports its
    ``curvature`` for; this is the model's actual value of that quantity,
    ``mean_{h,w} d^2 log p / dx_{c,h,w}^2``, estimated as ``E[v (H v)]`` over Rademacher probes
    (one set of probes for all channels).
    """
    x0 = torch.as_tensor(x0, dtype=torch.float64)
    channels, height, width = x0.shape
    if height % 2 or width % 2:
        raise ValueError(f"channel_curvature needs even height and width, got {height}x{width}")
    masks = torch.zeros(4 * channels, channels, height, width, dtype=torch.float64)
    for c in range(channels):
        for i in range(2):
            for j in range(2):
                masks[4 * c + 2 * i + j, c, i::2, j::2] = 1.0
    per_pixel = masks.flatten(1).sum(1).numpy() / 2.0  # hutchinson returns 1/2 Tr(H diag(mask))
    result = hutchinson_trace_term(model, x0, masks, n_probes, generator, batch_size)
    return TraceEstimate(result.estimate / per_pixel, result.stderr / per_pixel, n_probes)


def first_order_term(model: nn.Module, x0: torch.Tensor, delta_mean: torch.Tensor) -> float | np.ndarray:
    """``grad log p(x0)^T delta_mean`` (nats), with ``delta_mean = E_q[x] - E_p*[x]`` in model space.

    ``delta_mean`` is ``[C, H, W]`` (returns a float) or ``[Q, C, H, W]`` (returns a ``[Q]`` array).
    """
    x0 = torch.as_tensor(x0, dtype=torch.float64)
    deltas, single = _as_batch(torch.as_tensor(delta_mean, dtype=torch.float64), tuple(x0.shape))
    twin = _derivative_copy(model)
    device, dtype = _device_dtype(twin)
    x = x0.to(device, dtype)[None].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(twin.log_prob(x).sum(), x)
    values = (deltas.flatten(1) @ grad.double().cpu().flatten()).numpy()
    return float(values[0]) if single else values


def mean_shift_term(model: nn.Module, x0: torch.Tensor, mean_q: torch.Tensor, mean_p: torch.Tensor,
                    batch_size: int = 16) -> float | np.ndarray:
    """``1/2 [(mu_q - x0)^T H (mu_q - x0) - (mu_p - x0)^T H (mu_p - x0)]`` (nats), ``H = Hess log p(x0)``.

    The second-order term that eq. (5) leaves out: ``E[(x - x0)(x - x0)^T] = Sigma + (mu - x0)(mu - x0)^T``,
    so the exact second-order expansion of the gap is eq. (5) plus this term. It is
    ``1/2 dmu^T H dmu`` when ``x0 = mu_p``. ``mean_q`` may be ``[Q, C, H, W]`` (one per OOD set).
    """
    x0 = torch.as_tensor(x0, dtype=torch.float64)
    shape = tuple(x0.shape)
    means_q, single = _as_batch(torch.as_tensor(mean_q, dtype=torch.float64), shape)
    offsets = torch.cat([means_q, torch.as_tensor(mean_p, dtype=torch.float64).reshape(1, *shape)]) - x0
    _, hv = _hvp(_derivative_copy(model), x0, offsets, batch_size)
    quad = 0.5 * (hv.double().cpu() * offsets).flatten(1).sum(1).numpy()
    values = quad[:-1] - quad[-1]
    return float(values[0]) if single else values


def taylor_expectation(model: nn.Module, x0: torch.Tensor, x_uint8: torch.Tensor, batch_size: int = 16
                       ) -> TraceEstimate:
    """``E_x[grad^T (x - x0) + 1/2 (x - x0)^T H (x - x0)]`` over the images ``x_uint8`` (nats).

    The full second-order Taylor model of ``log p(x) - log p(x0)`` averaged over a set, with the
    **full** covariance of the data (pixel correlations included), not only the per-pixel
    variances of eq. (5). One Hessian-vector product per image, at pixel-bin centres
    ``(k + 0.5) / 256 - 0.5`` (the dequantisation noise adds the same to every set). The
    difference of two sets' values is the second-order prediction of their gap; the standard
    error is that of the mean over images.
    """
    _check_images(x_uint8)
    x0 = torch.as_tensor(x0, dtype=torch.float64)
    offsets = (x_uint8.double() + 0.5) / _PIXEL_BINS - 0.5 - x0
    grad, hv = _hvp(_derivative_copy(model), x0, offsets, batch_size)
    flat = offsets.flatten(1)
    values = flat @ grad.double().cpu().flatten() + 0.5 * (hv.double().cpu().flatten(1) * flat).sum(1)
    se = float(values.std(unbiased=True) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return TraceEstimate(float(values.mean()), se, len(values))


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def second_order_table(model: nn.Module, sets: Mapping[str, torch.Tensor], id_key: str,
                       bpd: Mapping[str, np.ndarray] | None = None, x0: torch.Tensor | None = None,
                       n_probes: int = 64, n_taylor: int = 0, generator: torch.Generator | None = None,
                       names: Mapping[str, str] | None = None, batch_size: int = 16,
                       seed: int = 0) -> pd.DataFrame:
    """Predicted vs measured ``E_q[log p] - E_p*[log p]`` per OOD set, in bits/dim (positive = OOD favoured).

    ``sets``: ``{key: uint8 images [N, C, H, W]}`` in the model's shape; ``sets[id_key]`` is the
    ID sample ``p*``, every other entry an OOD sample ``q``. ``bpd``: per-example bits/dim per
    key (the measured scores; scored here with :func:`ood_core.likelihood.score_flow` when
    ``None``). ``x0``: expansion point in model space (default: the mean of ``sets[id_key]``).
    ``names``: display names per key.

    Columns, all in bits/dim (nats / (D ln 2)):

    * ``measured``: ``mean bpd(ID) - mean bpd(OOD)``;
    * ``closed form (σ=1)``, ``closed form (learned σ)``: :func:`cv_glow_closed_form` with
      sigma 1 and :func:`effective_prior_sigma` at ``x0``; NaN for affine couplings (not
      constant volume, where the paper gives no closed form);
    * ``linearised exact (σ=1)``, ``linearised exact (learned σ)``: :func:`cv_glow_linearised_exact`,
      the same linear flow's exact gap (no column-sum simplification), same sigmas, NaN likewise;
    * ``1st order``: :func:`first_order_term`; ``2nd order, diag. Σ (Hutchinson)`` and its
      ``± s.e.``: :func:`hutchinson_trace_term` with the per-pixel variances, i.e. the diagonal of
      ``Sigma_q - Sigma_p*`` as in the paper's closed form (one set of ``n_probes`` probes shared
      by all pairs);
    * ``eq. (5), diag. Σ: 1st + 2nd``: the paper's expansion with diagonal covariances;
    * ``mean-shift term``: :func:`mean_shift_term`, what eq. (5) leaves out;
    * with ``n_taylor > 0``: ``Taylor, full Σ`` and ``± s.e. (Taylor)``: the difference of
      :func:`taylor_expectation` over the first ``n_taylor`` images of each set: the complete
      second-order expansion (eq. (5) with the full pixel covariance, plus the mean-shift term).
      Its standard error treats the two sets as independent samples (conservative for paired sets).
    """
    if id_key not in sets:
        raise KeyError(f"id_key {id_key!r} not in sets ({list(sets)})")
    ood_keys = [k for k in sets if k != id_key]
    if not ood_keys:
        raise ValueError("sets needs at least one OOD set besides the ID set")
    names = dict(names or {})
    num_dims = int(np.prod(sets[id_key].shape[1:]))
    to_bpd = 1.0 / (num_dims * units.LN2)
    if bpd is None:
        bpd = {k: likelihood.score_flow(model, x, seed=seed)["bpd"] for k, x in sets.items()}
    x_id = sets[id_key]
    mean_id, var_id = model_space_mean(x_id), pixel_variance(x_id)
    x0 = mean_id if x0 is None else torch.as_tensor(x0, dtype=torch.float64)
    means = torch.stack([model_space_mean(sets[k]) for k in ood_keys])
    variances = torch.stack([pixel_variance(sets[k]) for k in ood_keys])
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)

    first = np.atleast_1d(first_order_term(model, x0, means - mean_id))
    trace = hutchinson_trace_term(model, x0, variances - var_id, n_probes, generator, batch_size)
    shift = np.atleast_1d(mean_shift_term(model, x0, means, mean_id, batch_size))
    constant_volume = getattr(getattr(model, "config", None), "coupling", None) == "additive"
    sigma_learned = effective_prior_sigma(_derivative_copy(model), x0[None]) if constant_volume else float("nan")
    taylor_id = taylor_expectation(model, x0, x_id[:n_taylor], batch_size) if n_taylor > 0 else None

    rows = []
    for i, key in enumerate(ood_keys):
        row = {"OOD set": names.get(key, key),
               "measured": float(np.mean(bpd[id_key]) - np.mean(bpd[key]))}
        for name, form in (("closed form", cv_glow_closed_form), ("linearised exact", cv_glow_linearised_exact)):
            for label, sigma in (("σ=1", 1.0), ("learned σ", sigma_learned)):
                row[f"{name} ({label})"] = (form(model, variances[i], var_id, sigma).gap_bpd if constant_volume
                                            else float("nan"))
        row["1st order"] = first[i] * to_bpd
        row["2nd order, diag. Σ (Hutchinson)"] = trace.estimate[i] * to_bpd
        row["± s.e."] = trace.stderr[i] * to_bpd
        row["eq. (5), diag. Σ: 1st + 2nd"] = row["1st order"] + row["2nd order, diag. Σ (Hutchinson)"]
        row["mean-shift term"] = shift[i] * to_bpd
        if taylor_id is not None:
            t = taylor_expectation(model, x0, sets[key][:n_taylor], batch_size)
            row["Taylor, full Σ"] = (t.estimate - taylor_id.estimate) * to_bpd
            row["± s.e. (Taylor)"] = math.hypot(t.stderr, taylor_id.stderr) * to_bpd
        rows.append(row)
    table = pd.DataFrame(rows).set_index("OOD set")
    table.attrs.update({"sigma_learned": sigma_learned, "n_probes": n_probes, "n_taylor": n_taylor})
    return table


def curvature_table(model: nn.Module, x0: torch.Tensor, sigma_learned: float | None = None, n_probes: int = 64,
                    generator: torch.Generator | None = None, batch_size: int = 16) -> pd.DataFrame:
    """Per squeezed channel of the first level: closed form, linearised exact and the network's curvature (nats).

    One row per squeezed channel ``4c + 2i + j`` (index ``squeezed channel``, column
    ``input channel`` = ``c``); columns ``closed form (σ=1)``, ``closed form (learned σ)``
    (:func:`cv_glow_closed_form`), ``linearised exact (σ=1)``, ``linearised exact (learned σ)``
    (:func:`cv_glow_linearised_exact`), ``Hessian diagonal (Hutchinson)`` and ``± s.e.``
    (:func:`channel_curvature` at ``x0``, model space ``[C, H, W]``). ``sigma_learned`` defaults
    to :func:`effective_prior_sigma` at ``x0``. The three are the same quantity, the mean of
    ``d^2 log p / dx_{c,h,w}^2`` over the channel's pixels, under three sets of assumptions.
    """
    x0 = torch.as_tensor(x0, dtype=torch.float64)
    if sigma_learned is None:
        sigma_learned = effective_prior_sigma(_derivative_copy(model), x0[None])
    zero = torch.zeros(tuple(model.config.image_shape), dtype=torch.float64)
    closed = cv_glow_closed_form(model, zero, zero).curvature
    exact = cv_glow_linearised_exact(model, zero, zero).curvature
    hessian = channel_curvature(model, x0, n_probes=n_probes, generator=generator, batch_size=batch_size)
    table = pd.DataFrame({"input channel": np.arange(len(closed)) // 4,
                          "closed form (σ=1)": closed, "closed form (learned σ)": closed / sigma_learned**2,
                          "linearised exact (σ=1)": exact, "linearised exact (learned σ)": exact / sigma_learned**2,
                          "Hessian diagonal (Hutchinson)": hessian.estimate, "± s.e.": hessian.stderr})
    table.index.name = "squeezed channel"
    table.attrs.update({"sigma_learned": float(sigma_learned), "n_probes": n_probes})
    return table


def variance_table(sets: Mapping[str, torch.Tensor], id_key: str, names: Mapping[str, str] | None = None
                   ) -> pd.DataFrame:
    """Per-channel mean and per-pixel variance of each set beside the ID set (Nalisnick et al. Fig. 5's statistics).

    One row per (set, channel), on the ``[0, 1]`` (``pixel / 255``) scale of
    :func:`ood_core.data.channel_stats`: the channel mean, the mean over pixels of the per-pixel
    variance across images, its ratio to the ID set's, and the fraction of pixel locations where
    the set's variance is below the ID set's ("sits inside" the ID data when close to 1).
    """
    names = dict(names or {})
    ref = data_mod.channel_stats(sets[id_key])
    rows = []
    for key, x in sets.items():
        st = data_mod.channel_stats(x)
        for c in range(x.shape[1]):
            var, ref_var = st["pixel_var"][c], ref["pixel_var"][c]
            rows.append({"set": names.get(key, key), "channel": c, "mean": st["mean"][c],
                         "mean per-pixel variance": var.mean(),
                         "variance ratio to ID": var.mean() / ref_var.mean(),
                         "fraction of pixels with lower variance than ID": float((var < ref_var).mean())})
    return pd.DataFrame(rows).set_index(["set", "channel"])


# --------------------------------------------------------------------------------------------
# Graying (their Sec. 5.2)
# --------------------------------------------------------------------------------------------


def blend_gray(x_uint8: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) x + alpha gray(x)``, rounded to ``uint8`` (a new tensor; the input is untouched).

    ``gray`` is :func:`ood_core.data.to_grayscale` (BT.601 luma, repeated to the input's channels),
    so ``alpha = 0`` returns ``x`` exactly and ``alpha = 1`` returns ``to_grayscale(x)`` exactly
    (three equal channels). One-channel images are returned unchanged (copied) for every alpha.
    """
    _check_images(x_uint8)
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    gray = data_mod.to_grayscale(x_uint8, channels=x_uint8.shape[1])
    mixed = (1.0 - alpha) * x_uint8.double() + alpha * gray.double()
    return mixed.round().clamp(0, 255).to(torch.uint8)


def graying_table(model: nn.Module, x_uint8: torch.Tensor, alphas: tuple[float, ...] | list[float], seed: int = 0,
                  batch_size: int = 256, sigma: float = 1.0,
                  bpd: Mapping[float, np.ndarray] | None = None) -> pd.DataFrame:
    """Mean bits/dim of ``blend_gray(x, alpha)`` for each alpha, with the blended data's variance.

    Columns: ``mean bpd`` and its standard error over images; ``measured gain`` =
    ``mean bpd(alpha = 0) - mean bpd(alpha)`` (positive = graying raised the likelihood; the same
    dequantisation noise for every alpha); ``mean per-pixel variance`` on the ``[0, 1]`` scale;
    and for a constant-volume Glow ``closed-form gain`` = :func:`cv_glow_closed_form` of the
    blended set against the original (NaN for affine couplings). The first alpha should be 0.
    ``bpd``: per-example bits/dim of each blended set keyed by alpha, when already scored
    (otherwise scored here with :func:`ood_core.likelihood.score_flow`, ``seed``, ``batch_size``).
    """
    _check_images(x_uint8)
    rows = []
    var_0 = pixel_variance(x_uint8)
    constant_volume = getattr(getattr(model, "config", None), "coupling", None) == "additive"
    for alpha in alphas:
        xb = blend_gray(x_uint8, alpha)
        scores = (np.asarray(bpd[alpha]) if bpd is not None else
                  likelihood.score_flow(model, xb, batch_size=batch_size, seed=seed)["bpd"])
        var_b = pixel_variance(xb)
        rows.append({"alpha": float(alpha), "mean bpd": scores.mean(),
                     "s.e.": scores.std(ddof=1) / math.sqrt(len(scores)) if len(scores) > 1 else float("nan"),
                     "mean per-pixel variance": float(var_b.mean()) * (_PIXEL_BINS / 255.0) ** 2,
                     "closed-form gain": (cv_glow_closed_form(model, var_b, var_0, sigma).gap_bpd
                                          if constant_volume else float("nan"))})
    table = pd.DataFrame(rows).set_index("alpha")
    reference = table["mean bpd"].iloc[0]
    table.insert(2, "measured gain", reference - table["mean bpd"])
    return table


# --------------------------------------------------------------------------------------------
# Where the bits go: log p split by level and layer
# --------------------------------------------------------------------------------------------

#: ``term`` of :func:`log_prob_contributions` for the constant ``-D n_bits ln 2`` of the ``/ 2**n_bits`` scaling.
INPUT_SCALING = "input_scaling"
#: Display labels of the terms (:data:`ood_core.flows.PRIOR_TERMS`, :data:`ood_core.flows.LAYER_TERMS`).
TERM_LABELS = {"prior_constant": "log p(z): -½ log 2π", "prior_log_std": "log p(z): -log σ",
               "prior_quadratic": "log p(z): -½ ((z-μ)/σ)²", "actnorm": "log-det ActNorm",
               "invconv": "log-det 1x1 conv", "coupling": "log-det coupling", INPUT_SCALING: "input scaling 2^-n_bits"}


def _glow_model(model: nn.Module):
    if not hasattr(model, "log_prob_terms") or not hasattr(model, "levels"):
        raise TypeError("this needs an ood_core.flows.Glow (with log_prob_terms and levels); got "
                        f"{type(model).__name__}")
    return model


def log_prob_contributions(model: nn.Module, x_uint8: torch.Tensor, seed: int = 0, batch_size: int = 256,
                           n_bits: int | None = None) -> pd.DataFrame:
    """Per image, every additive term of its bits/dim, by level and layer type (a ``[N, terms]`` DataFrame).

    ``bpd = -log P(k) / (D ln 2)`` with ``log P(k) = log p(z) + log|det dz/dx| - D n_bits ln 2``
    (:mod:`ood_core.likelihood`) is split into the terms of :meth:`ood_core.flows.Glow.log_prob_terms`,
    summed over the steps of a level: per level, the prior's ``-½ log 2π``, ``-log σ`` and
    ``-½ ((z-μ)/σ)²`` parts and the ActNorm, 1x1-conv and coupling log-dets; plus the constant of
    the input scaling (``level = -1``, term :data:`INPUT_SCALING`, exactly ``n_bits``). Each
    column is ``-term / (D ln 2)``: its contribution to the bits/dim (positive = costs bits), so
    a row sums to the image's bits/dim, equal to :func:`ood_core.likelihood.score_flow`'s ``bpd``
    for the same ``seed`` and ``batch_size`` (the same dequantisation noise).

    Columns: a MultiIndex ``(level, term)`` with 0-based levels (the top latent's prior under the
    last level) and ``term`` in ``ood_core.flows.PRIOR_TERMS + LAYER_TERMS`` (display names in
    :data:`TERM_LABELS`). Float64; eval mode and ``no_grad`` (the training flag is restored).
    """
    from ood_core.flows import LAYER_TERMS, PRIOR_TERMS

    model = _glow_model(model)
    _check_images(x_uint8)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n_bits = getattr(model.config, "n_bits", 8) if n_bits is None else n_bits
    device, dtype = _device_dtype(model)
    num_dims = int(np.prod(x_uint8.shape[1:]))
    generator = torch.Generator().manual_seed(seed)  # drawn batch by batch, as score_flow does
    columns = [(level, kind) for level in range(len(model.levels)) for kind in PRIOR_TERMS + LAYER_TERMS]
    blocks = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(x_uint8), batch_size), desc="log p terms", leave=False):
                batch = x_uint8[start:start + batch_size]
                x = likelihood.preprocess(batch.to(device), generator=generator, n_bits=n_bits, dtype=dtype)
                sums = {key: np.zeros(len(batch)) for key in columns}
                for term in model.log_prob_terms(x):
                    sums[(term.level, term.kind)] += term.value.double().cpu().numpy()
                blocks.append(pd.DataFrame(sums))
    finally:
        model.train(was_training)
    nats = pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame(columns=columns, dtype=float)
    nats.columns = pd.MultiIndex.from_tuples(columns, names=["level", "term"])
    bits = -nats / (num_dims * units.LN2)
    bits[(-1, INPUT_SCALING)] = float(n_bits)  # -(-D n_bits ln 2) / (D ln 2)
    return bits


def log_prob_breakdown(model: nn.Module, x_uint8: torch.Tensor, seed: int = 0, batch_size: int = 256,
                       n_bits: int | None = None) -> pd.DataFrame:
    """Which term of ``log p`` makes a set's bits/dim: the mean of :func:`log_prob_contributions` per term.

    One row per ``(level, term)`` (0-based level; ``-1`` for the input scaling), columns
    ``label`` (:data:`TERM_LABELS`), ``bits/dim`` (mean contribution over the images, summing
    to the mean bits/dim), ``s.e.``, ``median``, ``dims`` (latent dimensions of that level for
    prior terms, ``D`` otherwise) and ``nats per dim``: the mean term in nats divided by
    ``dims``. For ``prior_quadratic`` that is ``-½ mean((z-μ)/σ)²`` over the level's latents
    (``-½`` for a latent that fits its prior), for ``prior_log_std`` ``-mean log σ``: a bits/dim
    in the millions shows up as a standardised latent of size ~``sqrt(2 ln 2 * bpd)``, and these
    two columns give a first hint whether a latent exploded or a prior scale collapsed
    (:func:`prior_fit_table` tells them apart). ``attrs``: ``bpd`` (the mean total) and ``num_dims``.
    """
    model = _glow_model(model)
    bits = log_prob_contributions(model, x_uint8, seed=seed, batch_size=batch_size, n_bits=n_bits)
    num_dims = int(np.prod(x_uint8.shape[1:]))
    latent_dims = [int(np.prod(shape)) for shape in model.latent_shapes()]
    rows = []
    for (level, term), values in bits.items():
        values = values.to_numpy()
        dims = latent_dims[level] if term.startswith("prior_") else num_dims
        mean = float(values.mean())
        rows.append({"level": level, "term": term, "label": TERM_LABELS[term], "bits/dim": mean,
                     "s.e.": float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan"),
                     "median": float(np.median(values)), "dims": dims,
                     "nats per dim": -mean * num_dims * units.LN2 / dims})
    table = pd.DataFrame(rows).set_index(["level", "term"])
    table.attrs.update({"bpd": float(bits.to_numpy().sum(1).mean()), "num_dims": num_dims})
    return table


def _latents_with_priors(model: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Per level ``(z, mean, log_std, conditioner)``: the latent, its prior's parameters and the kept
    half they are computed from (``None`` for the top latent's unconditional prior)."""
    latents = []
    for out in model.walk(x):
        if out.z is not None:
            latents.append((out.z, *out.level.split.prior_params(out.h), out.h))
    latents.append((out.h, *model._top_prior_params(out.h), None))
    return latents


def prior_fit_table(model: nn.Module, x_uint8: torch.Tensor, seed: int = 0, batch_size: int = 256,
                    n_bits: int | None = None, top_share: float = 0.01) -> pd.DataFrame:
    """How each level's latent sits in its prior: separates an exploded latent from a collapsed prior scale.

    The quadratic term of :func:`log_prob_breakdown`, ``-½ ((z - μ) / σ)²``, can be huge because
    ``z - μ`` is huge or because the learned (conditional) prior's ``σ`` is tiny somewhere. Per
    level (0-based, the top latent last), pooled over all images and latent dimensions (same
    dequantisation as :func:`ood_core.likelihood.score_flow` for ``seed`` and ``batch_size``):

    * ``rms z``, ``rms μ``, ``rms (z-μ)``; ``rms conditioner``: the kept half the conditional
      prior's network reads (NaN at the top, whose prior is a constant per channel);
    * ``log σ min``, ``log σ median``, ``log σ max``;
    * ``mean ((z-μ)/σ)²`` (``= -2 x`` the breakdown's ``nats per dim`` of ``prior_quadratic``;
      about 1 when the latent fits its prior);
    * ``top share``: the fraction of ``sum ((z-μ)/σ)²`` carried by its largest ``top_share``
      (default 1 %) entries: close to 1 when a few dimensions with a collapsed ``σ`` carry it.
    """
    model = _glow_model(model)
    _check_images(x_uint8)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0 < top_share <= 1:
        raise ValueError(f"top_share must be in (0, 1], got {top_share}")
    n_bits = getattr(model.config, "n_bits", 8) if n_bits is None else n_bits
    device, dtype = _device_dtype(model)
    generator = torch.Generator().manual_seed(seed)
    pooled: list[dict[str, list[torch.Tensor]]] = [{} for _ in model.levels]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(x_uint8), batch_size):
                batch = x_uint8[start:start + batch_size].to(device)
                x = likelihood.preprocess(batch, generator=generator, n_bits=n_bits, dtype=dtype)
                for store, (z, mean, log_std, cond) in zip(pooled, _latents_with_priors(model, x)):
                    parts = {"z": z, "mean": mean, "log_std": log_std}
                    if cond is not None:
                        parts["cond"] = cond
                    for key, value in parts.items():
                        store.setdefault(key, []).append(value.double().flatten().cpu())
    finally:
        model.train(was_training)
    rows = []
    for level, store in enumerate(pooled):
        z, mean, log_std = (torch.cat(store[k]) for k in ("z", "mean", "log_std"))
        quad = ((z - mean) * torch.exp(-log_std)) ** 2
        top = max(1, int(round(top_share * quad.numel())))
        rms = lambda t: float(t.pow(2).mean().sqrt())  # noqa: E731
        rows.append({"level": level, "rms z": rms(z), "rms μ": rms(mean), "rms (z-μ)": rms(z - mean),
                     "rms conditioner": rms(torch.cat(store["cond"])) if "cond" in store else float("nan"),
                     "log σ min": float(log_std.min()), "log σ median": float(log_std.median()),
                     "log σ max": float(log_std.max()), "mean ((z-μ)/σ)²": float(quad.mean()),
                     "top share": float(torch.topk(quad, top).values.sum() / quad.sum())})
    return pd.DataFrame(rows).set_index("level")


# --------------------------------------------------------------------------------------------
# Kirichenko et al. (NeurIPS 2020): what the couplings and the latents learn
# --------------------------------------------------------------------------------------------


def _bin_centres(model: nn.Module, x_uint8: torch.Tensor) -> torch.Tensor:
    """``(k + 0.5) / 2**n_bits - 0.5`` on the model's device and dtype (no noise: for pictures and reconstructions)."""
    _check_images(x_uint8)
    n_bits = getattr(model.config, "n_bits", 8)
    expected = tuple(model.config.image_shape)
    if tuple(x_uint8.shape[1:]) != expected:
        raise ValueError(f"images must be [N, {expected}] for this model, got {tuple(x_uint8.shape)}")
    k = likelihood.reduce_bits(x_uint8, n_bits) if n_bits < 8 else x_uint8
    device, dtype = _device_dtype(model)
    return ((k.double() + 0.5) / 2**n_bits - 0.5).to(device, dtype)


def _level_channels(model: nn.Module) -> list[tuple[int, int]]:
    """``(channels inside the level, channels kept after its split)`` per level."""
    out = []
    channels = model.config.image_shape[0]
    for level in model.levels:
        inside = 4 * channels
        channels = level.split.num_kept if level.split is not None else inside
        out.append((inside, channels))
    return out


def features_to_image(model: nn.Module, level: int, features: torch.Tensor, channels: slice | None = None
                      ) -> torch.Tensor:
    """Place level-``level`` features where the squeezes took them from: ``[B, C, H, W]``, NaN elsewhere.

    ``features`` (``[B, n, h, w]``) fill channels ``channels`` (default: the first ``n``) of the
    level's ``[B, C_l, H / 2^(l+1), W / 2^(l+1)]`` tensor; every other channel, and at each
    lower level the channels its split removed, is NaN; then the squeezes are undone
    (:class:`ood_core.flows.Squeeze`: channel ``4c + 2i + j`` <- offset ``(i, j)`` of channel
    ``c``). This is an *arrangement*, exact only for the layout: after a 1x1 convolution a
    channel is a learned mixture of the ``4 C_{l-1}`` values of its 2x2 block, not one pixel.
    """
    model = _glow_model(model)
    sizes = _level_channels(model)
    if not 0 <= level < len(sizes):
        raise ValueError(f"level must be in 0..{len(sizes) - 1}, got {level}")
    inside = sizes[level][0]
    channels = channels if channels is not None else slice(0, features.shape[1])
    b, _, h, w = features.shape
    full = features.new_full((b, inside, h, w), float("nan"))
    full[:, channels] = features
    for index in range(level, -1, -1):
        full, _ = model.levels[index].squeeze.inverse(full)
        if index > 0:
            below_inside = sizes[index - 1][0]
            pad = full.new_full((b, below_inside - full.shape[1], *full.shape[2:]), float("nan"))
            full = torch.cat([full, pad], dim=1)
    return full


def _check_step(model: nn.Module, level: int, step: int) -> None:
    if not 0 <= level < len(model.levels):
        raise ValueError(f"level must be in 0..{len(model.levels) - 1}, got {level}")
    if not 0 <= step < len(model.levels[level].steps):
        raise ValueError(f"step must be in 0..{len(model.levels[level].steps) - 1}, got {step}")


def _encode_to_coupling(model: nn.Module, x: torch.Tensor, level: int, step: int
                        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The input of coupling ``(level, step)`` and the latents split off below ``level``."""
    below = list(itertools.islice(model.walk(x), level))  # the levels below run whole
    zs = [out.z for out in below]
    h = below[-1].h if below else x
    lvl = model.levels[level]
    h, _ = lvl.squeeze(h)
    for flow_step in lvl.steps[:step]:
        h, _ = flow_step(h)
    h, _ = lvl.steps[step].actnorm(h)
    h, _ = lvl.steps[step].invconv(h)
    return h, zs


def _decode_from_coupling(model: nn.Module, h: torch.Tensor, zs: list[torch.Tensor], level: int, step: int
                          ) -> torch.Tensor:
    """Invert :func:`_encode_to_coupling`: from a coupling input back to the image."""
    flow_step = model.levels[level].steps[step]
    h, _ = flow_step.invconv.inverse(h)
    h, _ = flow_step.actnorm.inverse(h)
    for index in range(level, -1, -1):
        lvl = model.levels[index]
        first = step if index == level else len(lvl.steps)
        for k in range(first - 1, -1, -1):
            h, _ = lvl.steps[k].inverse(h)
        h, _ = lvl.squeeze.inverse(h)
        if index > 0:
            h, _ = model.levels[index - 1].split.inverse((h, zs[index - 1]))
    return h


@dataclass(frozen=True)
class CouplingView:
    """What one coupling layer sees, predicts and transforms, for a batch (Kirichenko et al. 2020, Sec. 5).

    Feature space (the coupling's own ``[B, ., h, w]`` tensors at level ``level``):
    ``conditioner`` ``x_a`` (first ``C_l // 2`` channels: passed through, fed to the network),
    ``target`` ``x_b`` (the other channels, transformed), ``shift`` ``t``, ``log_scale`` ``log s``
    (``None`` for additive couplings), ``prediction`` ``= -t`` (the value of ``x_b`` the layer
    maps to zero: ``y_b = (x_b + t) s = (x_b - prediction) s``), ``output`` ``y_b``.

    Image space, ``[B, C, H, W]``: ``image`` (the input, model space);
    ``conditioner_image``, ``target_image``, ``prediction_image``, ``scale_image`` (``s``; ones
    for additive): the feature tensors placed by :func:`features_to_image` (NaN outside their
    half; an arrangement, not pixel values, after the first 1x1 convolution);
    ``predicted_image``: the exact inverse of the flow up to this layer from ``[x_a, prediction]``
    in place of ``[x_a, x_b]``, i.e. the image whose ``x_b`` the network would have predicted
    exactly (equal to ``image`` where the prediction is perfect).

    ``explained``: per image ``1 - ||x_b - prediction||^2 / ||x_b - mean_hw(x_b)||^2`` (``R^2``
    of the prediction against each channel's spatial mean; 1 = predicted exactly).
    """

    level: int
    step: int
    coupling: str
    conditioner: torch.Tensor
    target: torch.Tensor
    shift: torch.Tensor
    log_scale: torch.Tensor | None
    prediction: torch.Tensor
    output: torch.Tensor
    image: torch.Tensor
    conditioner_image: torch.Tensor
    target_image: torch.Tensor
    prediction_image: torch.Tensor
    scale_image: torch.Tensor
    predicted_image: torch.Tensor
    explained: np.ndarray


def coupling_view(model: nn.Module, x_uint8: torch.Tensor, level: int = 0, step: int = 0) -> CouplingView:
    """The coupling layer ``(level, step)`` of a Glow on images: input half, network prediction, target half.

    Kirichenko et al. (NeurIPS 2020, "Why normalizing flows fail to detect out-of-distribution
    data", Sec. 5) show that a coupling layer's ``s``/``t`` network learns to predict the pixels
    its mask hides from their visible neighbours, a local pixel correlation that holds for any
    natural image, so it transforms in- and out-of-distribution images alike. Their RealNVP uses
    checkerboard and channel masks on pixels. **Our Glow's coupling is a channel split** after
    squeezes and learned 1x1 convolutions (:class:`ood_core.flows.Coupling`): ``x_a`` = the first
    ``C_l // 2`` channels of the step's input (after ActNorm and the 1x1 convolution), ``x_b`` =
    the rest. At level 0, before any 1x1 convolution, squeezed channel ``4c + 2i + j`` is
    offset ``(i, j)`` of input channel ``c`` in each 2x2 block, so for a gray image the split
    would be "top row of each 2x2 block" (``x_a``) vs "bottom row" (``x_b``); the 1x1 convolution
    replaces that fixed split by learned mixtures of the block's values (Glow's generalisation of
    RealNVP's channel permutation). So ``x_a`` and ``x_b`` are features: at level 0, step 0,
    linear mixtures of one 2x2 block (``2^(l+1)``-pixel blocks at level ``l``); later steps mix in
    the neighbourhood through the coupling networks' 3x3 convolutions. The "prediction" is of
    such features, not of pixels; ``predicted_image`` maps it back to pixels exactly.

    Images are taken at their bin centres ``(k + 0.5) / 256 - 0.5`` (no dequantisation noise).
    Returns a :class:`CouplingView` (float tensors on the CPU, detached).
    """
    model = _glow_model(model)
    _check_step(model, level, step)
    x = _bin_centres(model, x_uint8)
    with torch.no_grad():
        h, zs = _encode_to_coupling(model, x, level, step)
        coupling = model.levels[level].steps[step].coupling
        num_a = coupling.num_a
        x_a, x_b = h[:, :num_a], h[:, num_a:]
        shift, log_scale = coupling._shift_and_log_scale(x_a)
        prediction = -shift
        residual = x_b - prediction
        output = residual if log_scale is None else residual * torch.exp(log_scale)
        predicted_image = _decode_from_coupling(model, torch.cat([x_a, prediction], dim=1), zs, level, step)
        centred = x_b - x_b.mean((2, 3), keepdim=True)
        explained = 1.0 - residual.double().pow(2).flatten(1).sum(1) / centred.double().pow(2).flatten(1).sum(1)
        b_slice = slice(num_a, h.shape[1])
        scale = torch.ones_like(x_b) if log_scale is None else torch.exp(log_scale)
        views = {"conditioner_image": features_to_image(model, level, x_a),
                 "target_image": features_to_image(model, level, x_b, b_slice),
                 "prediction_image": features_to_image(model, level, prediction, b_slice),
                 "scale_image": features_to_image(model, level, scale, b_slice)}

    def cpu(t):
        return None if t is None else t.detach().cpu()

    return CouplingView(level=level, step=step, coupling=coupling.coupling, conditioner=cpu(x_a), target=cpu(x_b),
                        shift=cpu(shift), log_scale=cpu(log_scale), prediction=cpu(prediction), output=cpu(output),
                        image=cpu(x), predicted_image=cpu(predicted_image), explained=explained.cpu().numpy(),
                        **{k: cpu(v) for k, v in views.items()})


def latent_images(model: nn.Module, x_uint8: torch.Tensor) -> list[torch.Tensor]:
    """Each level's latent placed in image space (:func:`features_to_image`), ``[B, C, H, W]`` per level.

    The split latent of level ``l`` holds the last ``C_l - C_l // 2`` channels of the level's
    output; the top latent all of its channels. Kirichenko et al. (2020, Sec. 4) show that a
    flow's latents keep the image's local structure (they look like the image) for in- and
    out-of-distribution inputs alike. Images at their bin centres; float tensors on the CPU.
    """
    model = _glow_model(model)
    x = _bin_centres(model, x_uint8)
    with torch.no_grad():
        zs, _ = model(x)
    out = []
    for level, z in enumerate(zs):
        inside = _level_channels(model)[level][0]
        out.append(features_to_image(model, level, z, slice(inside - z.shape[1], inside)).cpu())
    return out


def latent_reconstruction(model: nn.Module, x_uint8: torch.Tensor, keep_levels, donor_uint8: torch.Tensor | None = None,
                          temperature: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Encode, keep the latents of ``keep_levels``, replace the others, decode: ``[B, C, H, W]`` in model space.

    ``keep_levels``: 0-based levels whose latents are kept (level ``l``'s latent is
    ``model(x)[0][l]``: the split latents from the finest level up, the top latent last). The
    others are replaced by

    * ``donor_uint8`` given: the latents of those images (same batch size): the exact latents of
      another image, so that keeping nothing decodes the donor and keeping everything ``x``;
    * otherwise: draws from the prior, top-down and conditioned on the latents above
      (:meth:`ood_core.flows.Glow.decode`), ``mean + temperature * std * eps``; the default
      ``temperature = 0`` takes the prior mean (deterministic). Keeping nothing gives the
      prior's image (:meth:`ood_core.flows.Glow.sample`), the same for every input: the
      baseline a kept level has to beat.

    Kirichenko et al. (2020) argue that a flow's fine latents carry the image's local structure
    whatever the dataset: keeping only level 0 and resetting the coarser levels should still give
    a recognisable image, for OOD inputs as well as ID ones. Images are taken at their bin centres.
    Float tensor on the CPU.
    """
    model = _glow_model(model)
    n_levels = len(model.levels)
    if generator is None:  # the noise is drawn even at temperature 0: keep the global RNG out of it
        generator = torch.Generator(device=_device_dtype(model)[0]).manual_seed(0)
    keep = sorted({int(k) for k in keep_levels})
    if any(not 0 <= k < n_levels for k in keep):
        raise ValueError(f"keep_levels must be within 0..{n_levels - 1}, got {list(keep_levels)}")
    x = _bin_centres(model, x_uint8)
    with torch.no_grad():
        zs, _ = model(x)
        if donor_uint8 is not None:
            if len(donor_uint8) != len(x_uint8):
                raise ValueError(f"donor_uint8 must hold as many images as x_uint8 ({len(x_uint8)}), "
                                 f"got {len(donor_uint8)}")
            donor, _ = model(_bin_centres(model, donor_uint8))
            mixed = [zs[k] if k in keep else donor[k] for k in range(n_levels)]
            out, _ = model.inverse(mixed)
        elif not keep:  # nothing kept: the prior's image at this temperature (the prior mean image at 0)
            out = model.sample(len(x), temperature=temperature, generator=generator)
        else:
            mixed = [zs[k] if k in keep else None for k in range(n_levels)]
            out = model.decode(mixed, temperature=temperature, generator=generator)
    return out.cpu()


def reconstruction_table(model: nn.Module, sets, keeps=None, temperature: float = 0.0, seed: int = 0,
                         names=None, batch_size: int = 256) -> pd.DataFrame:
    """Per image set and kept levels: how close :func:`latent_reconstruction` stays to the images.

    ``sets``: ``{key: uint8 images}``; ``keeps``: tuples of kept levels (default: each level
    alone, e.g. ``(0,), (1,), ...``). Per image, on the ``[0, 1]`` pixel scale (the model space
    shifted by 0.5), with the reconstruction clamped to the valid range
    ``[-0.5, 0.5]``::

        MSE  = mean_{c,h,w} (clamp(x_rec) - x)^2,     PSNR = 10 log10(1 / MSE)  (dB)

    Rows: ``(set, kept levels)``; columns ``MSE``, ``s.e. (MSE)``, ``PSNR (dB)`` (mean of the
    per-image PSNR), ``s.e. (PSNR)``, ``images`` and ``non-finite``: reconstructions with a NaN
    (an inverse pass can overflow when the kept and replaced latents do not fit together, e.g.
    for noise images); the statistics are over the finite ones (NaN when there are none). The
    default ``keeps`` are each level alone and ``()`` (nothing kept: the prior mean image, the
    baseline). Compare ID and OOD sets: a kept level that restores OOD images as well as ID
    ones carries generic local structure, Kirichenko et al.'s point, not the ID data's semantics.
    Replaced latents: the prior at ``temperature`` (0 = the prior mean), seeded by ``seed``.
    """
    model = _glow_model(model)
    names = dict(names or {})
    n_levels = len(model.levels)
    keeps = [tuple(k) for k in (keeps if keeps is not None else [(level,) for level in range(n_levels)] + [()])]
    rows = []
    for key, x_uint8 in sets.items():
        _check_images(x_uint8)
        for keep in keeps:
            generator = torch.Generator(device=_device_dtype(model)[0]).manual_seed(seed)
            mse = []
            for start in range(0, len(x_uint8), batch_size):
                batch = x_uint8[start:start + batch_size]
                rec = latent_reconstruction(model, batch, keep, temperature=temperature, generator=generator)
                target = _bin_centres(model, batch).cpu()
                mse.append((rec.clamp(-0.5, 0.5) - target).double().pow(2).flatten(1).mean(1))
            mse = torch.cat(mse).numpy()
            finite = np.isfinite(mse)
            mse_ok = mse[finite]
            psnr = 10.0 * np.log10(1.0 / np.maximum(mse_ok, 1e-300))
            n = len(mse_ok)
            nan = float("nan")
            rows.append({"set": names.get(key, key), "kept levels": keep,
                         "MSE": float(mse_ok.mean()) if n else nan,
                         "s.e. (MSE)": float(mse_ok.std(ddof=1) / math.sqrt(n)) if n > 1 else nan,
                         "PSNR (dB)": float(psnr.mean()) if n else nan,
                         "s.e. (PSNR)": float(psnr.std(ddof=1) / math.sqrt(n)) if n > 1 else nan,
                         "images": len(mse), "non-finite": int((~finite).sum())})
    return pd.DataFrame(rows).set_index(["set", "kept levels"])

"""Nalisnick et al. (2019, arXiv:1810.09136) §5: the second-order analysis of the likelihood gap.

Expanding ``log p(x)`` to second order around a point ``x0`` and taking expectations under the
OOD distribution ``q`` and the data distribution ``p*`` gives their eq. (5)::

    E_q[log p(x)] - E_p*[log p(x)]
        ~= grad log p(x0)^T (E_q[x] - E_p*[x])  +  1/2 Tr{ Hess log p(x0) (Sigma_q - Sigma_p*) }.

This module evaluates both terms for any flow and the paper's closed form of the second term for
constant-volume Glow. Beside the closed form it computes the exact curvature of the same linear
flow and shows where the closed form's column-sum simplification stops holding (it shrinks
geometrically with the number of steps). The graying experiment of their Sec. 5.2 is
:mod:`ood_core.graying`; the diagnoses of *why* a flow ranks OOD data high (the bits/dim by level
and layer, Kirichenko et al.'s couplings and latents) are :mod:`ood_core.flow_diagnostics`.

Conventions (used by every function here and in :mod:`ood_core.graying`)
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

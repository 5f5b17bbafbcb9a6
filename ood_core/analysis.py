"""Nalisnick et al. (2019, arXiv:1810.09136) §5: the second-order analysis of the likelihood gap.

Expanding ``log p(x)`` to second order around a point ``x0`` and taking expectations under the
OOD distribution ``q`` and the data distribution ``p*`` gives their eq. (5)::

    E_q[log p(x)] - E_p*[log p(x)]
        ~= grad log p(x0)^T (E_q[x] - E_p*[x])  +  1/2 Tr{ Hess log p(x0) (Sigma_q - Sigma_p*) }.

This module evaluates both terms for any flow, the paper's closed form of the second term for
constant-volume Glow, and the graying transform of their Sec. 5.2 experiment.

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
from ood_core import likelihood

log = logging.getLogger(__name__)

__all__ = [
    "ClosedForm",
    "TraceEstimate",
    "model_space_mean",
    "pixel_variance",
    "channel_gains",
    "effective_prior_sigma",
    "cv_glow_closed_form",
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
]

_LN2 = math.log(2.0)
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

    Attributes
    ----------
    gains: ``[4C]`` ``Pi_k sum_j u_{k,c,j}`` per squeezed channel of the first level.
    curvature: ``[4C]`` ``-gains**2 / sigma**2``, the paper's per-channel second derivative.
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
        h = x
        for level in model.levels:
            h, _ = level.squeeze(h)
            for step in level.steps:
                h, _ = step(h)
            if level.split is not None:
                (h, _), _ = level.split(h)
                _, log_std = level.split.prior_params(h)
                inv_var_sum += float(torch.exp(-2.0 * log_std.double()).sum())
                count += log_std.numel()
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
    and the couplings are constant (tested in ``tests/test_analysis.py``).

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
    var_ood = torch.as_tensor(var_ood, dtype=torch.float64).cpu()
    var_id = torch.as_tensor(var_id, dtype=torch.float64).cpu()
    shape = tuple(model.config.image_shape)
    if tuple(var_ood.shape) != shape or tuple(var_id.shape) != shape:
        raise ValueError(f"var_ood and var_id must be [C, H, W] = {shape}, got {tuple(var_ood.shape)}, "
                         f"{tuple(var_id.shape)}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if getattr(model.config, "coupling", "additive") != "additive":
        log.warning("cv_glow_closed_form on a %s-coupling Glow: the closed form assumes constant volume",
                    model.config.coupling)
    level = _first_level(model)
    gains = channel_gains(model, fold_actnorm=fold_actnorm)
    squeezed, _ = level.squeeze((var_ood - var_id)[None])  # [1, 4C, H/2, W/2]; Squeeze is dtype-agnostic
    delta_var_sum = squeezed[0].sum((1, 2)).numpy()
    curvature = -(gains**2) / sigma**2
    gap_nats = 0.5 * float((curvature * delta_var_sum).sum())
    num_dims = int(np.prod(shape))
    return ClosedForm(gains=gains, curvature=curvature, curvature_input=curvature.reshape(shape[0], 4).mean(1),
                      delta_var_sum=delta_var_sum, gap_nats=gap_nats, gap_bpd=gap_nats / (num_dims * _LN2),
                      sigma=float(sigma))


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
    to_bpd = 1.0 / (num_dims * _LN2)
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
        if constant_volume:
            row["closed form (σ=1)"] = cv_glow_closed_form(model, variances[i], var_id, 1.0).gap_bpd
            row["closed form (learned σ)"] = cv_glow_closed_form(model, variances[i], var_id, sigma_learned).gap_bpd
        else:
            row["closed form (σ=1)"] = row["closed form (learned σ)"] = float("nan")
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

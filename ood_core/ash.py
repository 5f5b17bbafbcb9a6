"""Activation shaping: ASH (Djurisic et al. 2023, arXiv 2209.09858) and ReAct (Sun et al. 2021).

Every function here is pure: it returns a new tensor and never writes into the caller's one (the
official ASH code prunes in place and accepts only 4-D tensors). Inputs are either ``[B, C]``
(penultimate features after global pooling) or ``[B, C, H, W]`` (a feature map); for a 4-D
input the per-sample statistics run over all ``n = C * H * W`` entries, as in the official code.

Percentiles are in **percent**, ``0 <= p <= 100`` (pytorch-ood takes a fraction; multiply it by
100). For a sample with ``n`` entries the local (per-sample) ASH variants keep

    k = n - round(n * p / 100)

entries: the ``k`` largest, ties broken by position (the lower flat index wins), so the result is
deterministic. ``round`` is Python's round-half-to-even, which matches ``numpy.round`` used by
the official code. With ``x_hat`` the pruned tensor (kept entries unchanged, the rest zero),
``s1 = sum(x)`` and ``s2 = sum(x_hat)`` per sample, ASH section 3 defines

* ASH-P: ``x_hat``;
* ASH-B: ``s1 / k`` at every kept position (the per-sample sum is preserved);
* ASH-S: ``x_hat * exp(s1 / s2)`` (the exponential of the ratio, not the ratio);
* ASH-RAND: ``U(low, high)`` draws at kept positions (the paper uses ``U(0, 10)``).

The global variants (the paper's "local vs global threshold" ablation) prune every entry below a
single threshold fitted on ID training activations instead of a per-sample top-k.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SHAPERS",
    "ash_b",
    "ash_b_global",
    "ash_p",
    "ash_p_global",
    "ash_rand",
    "ash_s",
    "ash_s_global",
    "global_threshold",
    "make_shaper",
    "num_kept",
    "react",
    "react_threshold",
]


def _check_percentile(percentile: float) -> float:
    """Return ``percentile`` as a float, or raise if it is not a percentage in [0, 100]."""
    if isinstance(percentile, bool):
        raise TypeError("percentile must be a number in percent (0..100), not a bool")
    try:
        p = float(percentile)
    except (TypeError, ValueError) as err:
        raise TypeError(f"percentile must be a number in percent (0..100); got {percentile!r}") from err
    if not 0.0 <= p <= 100.0:  # also rejects NaN
        raise ValueError(
            f"percentile must be in percent, 0 <= percentile <= 100; got {percentile!r}. "
            "(If you have a fraction such as pytorch-ood's 0.65, pass 100 * fraction.)"
        )
    return p


def _per_sample_view(x: Tensor) -> Tensor:
    """Check ``x`` and return it reshaped to ``[B, n]`` (possibly a view: never written into)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (2, 4):
        raise ValueError(
            f"expected activations shaped [B, C] or [B, C, H, W]; got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got dtype {x.dtype}")
    return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # -1 fails for an empty batch


def num_kept(n: int, percentile: float) -> int:
    """Number of entries the local ASH variants keep out of ``n``: ``n - round(n * p / 100)``."""
    p = _check_percentile(percentile)
    return int(n - round(n * p / 100.0))


def _top_k_mask(flat: Tensor, k: int) -> Tensor:
    """Boolean ``[B, n]`` mask of the ``k`` largest entries per row, ties to the lower index.

    A stable descending sort keeps equal values in their original order, which makes the choice
    among ties deterministic (``torch.topk`` makes no such promise).
    """
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return mask
    if k >= flat.shape[1]:
        return ~mask
    order = torch.sort(flat.detach(), dim=1, descending=True, stable=True).indices[:, :k]
    return mask.scatter_(1, order, True)


def _local_mask(x: Tensor, percentile: float) -> tuple[Tensor, Tensor, int]:
    flat = _per_sample_view(x)
    k = num_kept(flat.shape[1], percentile)
    return flat, _top_k_mask(flat, k), k


#: Cap on the exponent ``s1 / s2`` of ASH-S. With a *global* threshold (or extreme inputs) only a
#: sliver of a sample's activation mass can survive, ``s1 / s2`` reaches the hundreds and
#: ``exp`` overflows to ``inf`` in float32 (seen on MNIST under a CIFAR-10 ResNet-18), which turns
#: the energy into NaN. ``exp(60) ~ 1e26`` keeps logits finite in float32; at the paper's local
#: percentiles ``s1 / s2 <= n / k`` (20 at p = 95) and the cap never binds.
MAX_LOG_SCALE = 60.0


def _exp_ratio_scale(flat: Tensor, pruned: Tensor) -> Tensor:
    """Per-sample ``exp(min(s1 / s2, MAX_LOG_SCALE))`` shaped ``[B, 1]``; factor 1 where ``s2 == 0``.

    ``s2 == 0`` happens when nothing is kept (p = 100) or every kept entry is zero. The formula
    would give ``0 * exp(+-inf)`` = NaN there; we return the pruned tensor unscaled instead, which
    for non-negative (post-ReLU) activations is the all-zero vector. See :data:`MAX_LOG_SCALE`.
    """
    s1 = flat.sum(dim=1, keepdim=True)
    s2 = pruned.sum(dim=1, keepdim=True)
    empty = s2 == 0
    ratio = torch.where(empty, torch.zeros_like(s1), s1 / torch.where(empty, torch.ones_like(s2), s2))
    return torch.exp(ratio.clamp(max=MAX_LOG_SCALE))


def ash_s_exponent(x: Tensor, percentile: float) -> Tensor:
    """The per-sample exponent ``s1 / s2`` of ASH-S (before the cap), shaped ``[B]``.

    ``s1``: sum of the activations; ``s2``: sum of the kept top-k. Large when a sample's mass is
    spread over many units (pruning removes much of it), close to 1 when it is concentrated. NaN
    where ``s2 == 0``. Used to explain when ASH-S helps: it raises the energy of spread samples.
    """
    flat, mask, _ = _local_mask(x, percentile)
    s1 = flat.sum(dim=1)
    s2 = torch.where(mask, flat, torch.zeros_like(flat)).sum(dim=1)
    return s1 / torch.where(s2 == 0, torch.full_like(s2, float("nan")), s2)


def ash_p(x: Tensor, percentile: float) -> Tensor:
    """ASH-P: per sample keep the ``k = n - round(n p / 100)`` largest entries, zero the rest.

    ``p = 0`` returns a copy of ``x``; ``p = 100`` returns zeros.
    """
    flat, mask, _ = _local_mask(x, percentile)
    return torch.where(mask, flat, torch.zeros_like(flat)).reshape(x.shape)


def ash_b(x: Tensor, percentile: float) -> Tensor:
    """ASH-B: binarise the kept entries to ``s1 / k`` (``s1`` the per-sample sum of ``x``).

    The per-sample sum is preserved: ``k * (s1 / k) = s1``. With ``k = 0`` (p = 100) the result
    is all zeros.
    """
    flat, mask, k = _local_mask(x, percentile)
    if k == 0:
        return torch.zeros_like(x)
    fill = (flat.sum(dim=1, keepdim=True) / k).expand_as(flat)
    return torch.where(mask, fill, torch.zeros_like(flat)).reshape(x.shape)


def ash_s(x: Tensor, percentile: float) -> Tensor:
    """ASH-S: the ASH-P tensor scaled per sample by ``exp(s1 / s2)``.

    ``s1`` is the sum of ``x`` and ``s2`` the sum after pruning. Where ``s2 == 0`` (for instance
    ``p = 100``) the scale factor is taken to be 1, so the result is the pruned tensor (zeros for
    non-negative activations) rather than NaN. Large ``s1 / s2`` can overflow to ``inf``; for
    post-ReLU features ``s1 / s2 <= n / k`` keeps it moderate at the percentiles the paper uses.
    """
    flat, mask, _ = _local_mask(x, percentile)
    pruned = torch.where(mask, flat, torch.zeros_like(flat))
    return (pruned * _exp_ratio_scale(flat, pruned)).reshape(x.shape)


def ash_rand(
    x: Tensor,
    percentile: float,
    generator: torch.Generator | None = None,
    low: float = 0.0,
    high: float = 10.0,
) -> Tensor:
    """ASH-RAND: kept positions (as in ASH-P) get independent ``U(low, high)`` draws.

    One uniform value is drawn for every entry of ``x`` (in flat order, from ``generator`` and on
    the generator's device) and only the kept ones are used, so a freshly seeded generator always
    gives the same result for the same ``x`` and percentile.
    """
    if not low <= high:
        raise ValueError(f"need low <= high for U(low, high); got low={low}, high={high}")
    flat, mask, _ = _local_mask(x, percentile)
    draw_device = generator.device if generator is not None else flat.device
    u = torch.rand(flat.shape, generator=generator, device=draw_device, dtype=torch.float32)
    values = (low + (high - low) * u).to(device=flat.device, dtype=flat.dtype)
    return torch.where(mask, values, torch.zeros_like(flat)).reshape(x.shape)


# --------------------------------------------------------------------------- global thresholds


def _flat_numpy(activations: Any) -> np.ndarray:
    if isinstance(activations, Tensor):
        t = activations.detach()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        arr = t.cpu().numpy()
    else:
        arr = np.asarray(activations)
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError("cannot fit a threshold on an empty set of activations")
    if not np.all(np.isfinite(arr)):
        raise ValueError("training activations contain NaN or inf; fix the features first")
    return arr


def global_threshold(train_activations: Any, percentile: float) -> float:
    """The ``p``-th percentile of all ID training activation values (every sample, every entry).

    Computed with ``numpy.percentile`` (linear interpolation), as ReAct's code does. Used by the
    ``*_global`` ASH variants: pruning below it removes about ``p`` % of training entries overall,
    but a varying share per sample (the paper's ablation finds the per-sample threshold better).
    """
    p = _check_percentile(percentile)
    return float(np.percentile(_flat_numpy(train_activations), p))


def _global_mask(x: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    flat = _per_sample_view(x)
    return flat, flat >= threshold


def ash_p_global(x: Tensor, threshold: float) -> Tensor:
    """ASH-P with a fixed threshold: keep entries ``>= threshold``, zero the rest."""
    flat, mask = _global_mask(x, threshold)
    return torch.where(mask, flat, torch.zeros_like(flat)).reshape(x.shape)


def ash_b_global(x: Tensor, threshold: float) -> Tensor:
    """ASH-B with a fixed threshold: kept entries (``>= threshold``) become ``s1 / k_i``.

    ``k_i`` is the number of entries sample ``i`` keeps; a sample that keeps none becomes zeros.
    """
    flat, mask = _global_mask(x, threshold)
    kept = mask.sum(dim=1, keepdim=True)
    fill = flat.sum(dim=1, keepdim=True) / kept.clamp(min=1).to(flat.dtype)
    return torch.where(mask, fill.expand_as(flat), torch.zeros_like(flat)).reshape(x.shape)


def ash_s_global(x: Tensor, threshold: float) -> Tensor:
    """ASH-S with a fixed threshold: pruned tensor times ``exp(s1 / s2)`` (factor 1 if ``s2 == 0``)."""
    flat, mask = _global_mask(x, threshold)
    pruned = torch.where(mask, flat, torch.zeros_like(flat))
    return (pruned * _exp_ratio_scale(flat, pruned)).reshape(x.shape)


# --------------------------------------------------------------------------------------- ReAct


def react(x: Tensor, threshold: float) -> Tensor:
    """ReAct (Sun, Guo & Li 2021, eq. 1): ``min(x, c)`` elementwise; any shape."""
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    return x.clamp(max=threshold)


def react_threshold(train_activations: Any, percentile: float = 90.0) -> float:
    """ReAct's clipping threshold ``c``: the ``p``-th percentile of ID training activations.

    The ReAct paper uses ``p = 90``. Identical to :func:`global_threshold`.
    """
    return global_threshold(train_activations, percentile)


# ------------------------------------------------------------------------------------ registry

SHAPERS: dict[str, Callable[..., Tensor]] = {
    "ash_p": ash_p,
    "ash_b": ash_b,
    "ash_s": ash_s,
    "ash_rand": ash_rand,
}


def make_shaper(name: str, percentile: float, **kwargs: Any) -> Callable[[Tensor], Tensor]:
    """A one-argument shaper ``x -> SHAPERS[name](x, percentile, **kwargs)`` for composition.

    The percentile is checked here, so a bad value fails when the shaper is built rather than
    in the middle of scoring. ``kwargs`` go to the shaper (``generator``, ``low``, ``high`` for
    ``ash_rand``).
    """
    if name not in SHAPERS:
        raise ValueError(f"unknown shaper {name!r}; choose one of {sorted(SHAPERS)}")
    p = _check_percentile(percentile)
    return functools.partial(SHAPERS[name], percentile=p, **kwargs)

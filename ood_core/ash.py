"""Activation shaping: ASH (Djurisic et al. 2023, arXiv 2209.09858), SCALE (Xu et al. 2024) and ReAct.

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
* ASH-RAND: ``U(low, high)`` draws at kept positions (the paper uses ``U(0, 10)``);
* SCALE (Xu et al., ICLR 2024, arXiv 2310.00227, eq. 3): ``x * exp(s1 / s2)``, ASH-S's factor on
  the *unpruned* tensor (the top-k only defines ``s2``).

**The exponent ``r = s1 / s2``.** For non-negative activations ``1 <= r <= n / k``; at p = 99 on
a 512-d feature (k = 5) ``r`` can reach ``n / k ~ 102`` (spread, average-pooled-like features come
close) and ``exp(102) ~ 2e44`` no longer fits in float32 (largest finite value ~3.4e38, i.e.
``r < 88.7``). The exponent is always computed in float64. The
shapers that return a tensor (:func:`ash_s`, :func:`scale`, :func:`ash_s_global`) must
materialise ``x_hat * exp(r)`` in the input's dtype, so they cap ``r`` at
:func:`max_log_scale` of that dtype (60 for float32, ~681 for float64) and log a warning when the
cap binds; :func:`capped` and :func:`capped_fraction` report where and how often. The energy
score does not need the scaled tensor: for a linear head ``W x + b``,
``logits = exp(r) * (W x_hat) + b``, which :func:`ood_core.scores.exp_scaled_energy` evaluates in
float64 from the factored form returned by :func:`ash_s_parts` / :func:`scale_parts` /
:func:`ash_s_global_parts`. :func:`ood_core.scores.ash_energy` uses it, so ASH-S and SCALE
energies follow the paper's formula over the whole percentile sweep (up to ``r ~ 681``, where
even float64 logits would overflow).

The global variants (the paper's "local vs global threshold" ablation) prune every entry below a
single threshold fitted on ID training activations instead of a per-sample top-k.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "EXP_SCALED_PARTS",
    "LOG_HEADROOM",
    "SHAPERS",
    "SHAPER_REGISTRY",
    "SHAPER_TITLES",
    "Shaper",
    "ash_b",
    "ash_b_global",
    "ash_p",
    "ash_p_global",
    "ash_rand",
    "ash_s",
    "ash_s_exponent",
    "ash_s_global",
    "ash_s_global_exponent",
    "ash_s_global_parts",
    "ash_s_parts",
    "capped",
    "capped_fraction",
    "global_threshold",
    "make_shaper",
    "max_log_scale",
    "num_kept",
    "react",
    "react_threshold",
    "register_shaper",
    "scale",
    "scale_parts",
    "unregister_shaper",
]

logger = logging.getLogger(__name__)


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


#: ``ln`` of the factor left between ``exp(cap)`` and a dtype's largest finite value, so that
#: ``W (x_hat * exp(r)) + b`` stays finite for ``|W x_hat|`` up to ``e^28.7 ~ 3e12``. Chosen so the
#: float32 cap is 60 (``exp(60) ~ 1e26``), the value this module has always used for float32.
LOG_HEADROOM = math.log(torch.finfo(torch.float32).max) - 60.0


def max_log_scale(dtype: torch.dtype = torch.float32) -> float:
    """The largest exponent ``r`` the tensor-returning shapers apply when materialising in ``dtype``.

    ``ln(finfo(dtype).max) - LOG_HEADROOM``: 60.0 for float32 and bfloat16, ~681.1 for float64.
    float16 (``ln max ~ 11.1``) gets half its range, ~5.5. Above the cap :func:`ash_s`,
    :func:`scale` and :func:`ash_s_global` use ``exp(cap)`` instead of ``exp(r)``, which changes
    the method; the float64 energy of :func:`ood_core.scores.exp_scaled_energy` is exact up to
    ``max_log_scale(torch.float64)``.
    """
    if not dtype.is_floating_point:
        raise TypeError(f"expected a floating-point dtype, got {dtype}")
    log_max = math.log(torch.finfo(dtype).max)
    return max(log_max - LOG_HEADROOM, log_max / 2.0)


def capped(log_scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Boolean ``[B]``: where the exponent ``r`` exceeds :func:`max_log_scale` of ``dtype``.

    ``log_scale`` is an exponent from :func:`ash_s_exponent` (also SCALE's),
    :func:`ash_s_global_exponent` or the second element of an ``*_parts`` function. NaN (nothing
    kept) counts as not capped.
    """
    if not isinstance(log_scale, Tensor):
        raise TypeError(f"expected a torch.Tensor of exponents, got {type(log_scale).__name__}")
    return log_scale.detach().double() > max_log_scale(dtype)


def capped_fraction(log_scale: Tensor, dtype: torch.dtype = torch.float32) -> float:
    """Fraction of samples whose exponent exceeds the cap for ``dtype`` (0.0 for an empty batch).

    For example ``capped_fraction(ash_s_exponent(features, 99), torch.float32)`` says how many
    samples ``energy(head(ash_s(features, 99)))`` in float32 would score with a changed method.
    """
    mask = capped(log_scale, dtype)
    return float(mask.double().mean()) if mask.numel() else 0.0


def _log_scale(flat: Tensor, kept: Tensor) -> Tensor:
    """``s1 / s2`` per sample in float64 (0 where ``s2 == 0``, i.e. a factor of 1), shaped ``[B]``.

    ``flat`` is ``[B, n]`` and ``kept`` the same with pruned entries zero; both sums run in
    float64 (a float32 ``s2`` would put a relative error of ~1e-7 * r on ``exp(r)``).

    ``s2 == 0`` happens when nothing is kept (p = 100) or every kept entry is zero. The formula
    would give ``0 * exp(+-inf)`` = NaN there; the factor 1 returns the pruned tensor instead,
    which for non-negative (post-ReLU) activations is the all-zero vector.
    """
    s1 = flat.double().sum(dim=1)
    s2 = kept.double().sum(dim=1)
    empty = s2 == 0
    return torch.where(empty, torch.zeros_like(s1), s1 / torch.where(empty, torch.ones_like(s2), s2))


def _materialise(base: Tensor, log_scale: Tensor, what: str) -> Tensor:
    """``base * exp(min(r, max_log_scale(base.dtype)))`` per sample, in ``base``'s dtype."""
    cap = max_log_scale(base.dtype)
    over = log_scale > cap
    if bool(over.any()):
        logger.warning(
            "%s: the exponent s1/s2 exceeds %.1f (the %s cap) for %d of %d samples (max %.1f); "
            "those samples use exp(%.1f) instead of exp(s1/s2). Score with "
            "ood_core.scores.ash_energy (float64 energy) or pass float64 activations.",
            what, cap, base.dtype, int(over.sum()), over.numel(), float(log_scale.max()), cap,
        )
    factor = torch.exp(log_scale.clamp(max=cap)).to(device=base.device, dtype=base.dtype)
    return base * factor.reshape((-1,) + (1,) * (base.dim() - 1))


def ash_s_exponent(x: Tensor, percentile: float) -> Tensor:
    """The per-sample exponent ``s1 / s2`` of ASH-S and SCALE (before any cap), shaped ``[B]``.

    ``s1``: sum of the activations; ``s2``: sum of the kept top-k. Large when a sample's mass is
    spread over many units (pruning removes much of it), close to 1 when it is concentrated. NaN
    where ``s2 == 0``. Used to explain when ASH-S helps: it raises the energy of spread samples.
    Computed in float64 and returned in ``x``'s dtype.
    """
    flat, mask, _ = _local_mask(x, percentile)
    s1 = flat.double().sum(dim=1)
    s2 = torch.where(mask, flat, torch.zeros_like(flat)).double().sum(dim=1)
    ratio = s1 / torch.where(s2 == 0, torch.full_like(s2, float("nan")), s2)
    return ratio.to(x.dtype)


def ash_s_parts(x: Tensor, percentile: float) -> tuple[Tensor, Tensor]:
    """ASH-S in factored form: ``(x_hat, r)`` with ``ASH-S(x) = x_hat * exp(r)`` exactly.

    ``x_hat`` is the ASH-P tensor (shape and dtype of ``x``), ``r = s1 / s2`` the float64
    exponent ``[B]`` (0 where ``s2 == 0``). Nothing is capped: the caller decides how to evaluate
    ``exp(r)`` (see :func:`ood_core.scores.exp_scaled_energy`).
    """
    flat, mask, _ = _local_mask(x, percentile)
    pruned = torch.where(mask, flat, torch.zeros_like(flat))
    return pruned.reshape(x.shape), _log_scale(flat, pruned)


def scale_parts(x: Tensor, percentile: float) -> tuple[Tensor, Tensor]:
    """SCALE in factored form: ``(x, r)`` with ``SCALE(x) = x * exp(r)``; ``r`` as in ASH-S.

    The first element is a copy of ``x`` (never the caller's tensor), ``r`` the float64 ``[B]``
    exponent ``s1 / s2`` (0 where ``s2 == 0``).
    """
    flat, mask, _ = _local_mask(x, percentile)
    kept = torch.where(mask, flat, torch.zeros_like(flat))
    return x.clone(), _log_scale(flat, kept)


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
    """ASH-S: the ASH-P tensor scaled per sample by ``exp(s1 / s2)`` (ASH sec. 3).

    ``s1`` is the sum of ``x`` and ``s2`` the sum after pruning. Where ``s2 == 0`` (for instance
    ``p = 100``) the scale factor is taken to be 1, so the result is the pruned tensor (zeros for
    non-negative activations) rather than NaN. The result is in ``x``'s dtype, so the exponent is
    capped at :func:`max_log_scale` of that dtype (60 for float32, which on 512-d features can
    bind only from p = 99, where ``n / k = 102``; 51 at p = 98) with a logged warning; :func:`ood_core.scores.ash_energy` scores without the
    cap.
    """
    return _materialise(*ash_s_parts(x, percentile), what="ASH-S")


def scale(x: Tensor, percentile: float) -> Tensor:
    """SCALE (Xu et al., ICLR 2024, "Scaling for Training Time and Post-hoc OOD Detection Enhancement").

    ``x * exp(s1 / s2)``: ASH-S's per-sample factor (``s1`` the sum of ``x``, ``s2`` the sum of
    its ``k = n - round(n p / 100)`` largest entries) applied to the **unpruned** tensor (their
    eq. 3; the official code and pytorch-ood's ``SCALE`` do the same). ``s2`` does not depend on
    how ties are broken. As for :func:`ash_s`: factor 1 where ``s2 == 0``, exponent capped at
    :func:`max_log_scale` of ``x``'s dtype; :func:`ood_core.scores.ash_energy` with
    ``method="scale"`` scores without the cap.
    """
    return _materialise(*scale_parts(x, percentile), what="SCALE")


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


def ash_s_global_parts(x: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Global-threshold ASH-S in factored form ``(x_hat, r)``: ``x_hat * exp(r)``, uncapped.

    ``x_hat`` keeps entries ``>= threshold``; ``r = s1 / s2`` in float64 (0 where ``s2 == 0``).
    """
    flat, mask = _global_mask(x, threshold)
    pruned = torch.where(mask, flat, torch.zeros_like(flat))
    return pruned.reshape(x.shape), _log_scale(flat, pruned)


def ash_s_global_exponent(x: Tensor, threshold: float) -> Tensor:
    """The exponent ``s1 / s2`` of :func:`ash_s_global` (float64 ``[B]``, NaN where ``s2 == 0``).

    With a global threshold a sample can keep a sliver of its mass, so ``r`` reaches the hundreds
    (seen on MNIST under a CIFAR-10 ResNet-18); pass it to :func:`capped_fraction`.
    """
    flat, mask = _global_mask(x, threshold)
    s2 = torch.where(mask, flat, torch.zeros_like(flat)).double().sum(dim=1)
    return flat.double().sum(dim=1) / torch.where(s2 == 0, torch.full_like(s2, float("nan")), s2)


def ash_s_global(x: Tensor, threshold: float) -> Tensor:
    """ASH-S with a fixed threshold: pruned tensor times ``exp(s1 / s2)`` (factor 1 if ``s2 == 0``).

    In ``x``'s dtype, with the exponent capped at :func:`max_log_scale` of that dtype (a global
    threshold can leave ``s1 / s2`` in the hundreds, where float32 overflows and the energy would
    be NaN); :func:`ood_core.scores.ash_global_energy` scores without the cap.
    """
    return _materialise(*ash_s_global_parts(x, threshold), what="global ASH-S")


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


@dataclass(frozen=True)
class Shaper:
    """A registered activation shaper: the one entry everything else about it derives from.

    ``fn(x, percentile, **kwargs)`` shapes a tensor; ``title`` names it in tables (``"ASH-S"``; detector
    titles add the percentile, ``"ASH-S@95"``); ``percentile`` is its default in detector specs;
    ``exp_parts`` (``(x, percentile) -> (base, r)`` with ``fn(x, p) = base * exp(r)``) marks the
    exp-scaled shapers, which :func:`ood_core.scores.ash_energy` and the detectors score in float64;
    ``seeded`` shapers draw random numbers and take a ``generator``. :data:`SHAPERS`,
    :data:`EXP_SCALED_PARTS`, :data:`SHAPER_TITLES`, the detector specs of :mod:`ood_core.detectors` and
    ``classifier_study.SHAPER_NAMES`` are views of :data:`SHAPER_REGISTRY`.
    """

    name: str
    title: str
    fn: Callable[..., Tensor]
    percentile: float
    doc: str = ""
    exp_parts: Callable[[Tensor, float], tuple[Tensor, Tensor]] | None = None
    seeded: bool = False

    def __post_init__(self):
        _check_percentile(self.percentile)

    def shape(self, x: Tensor, percentile: float, seed: int = 0) -> tuple[Tensor, Tensor | None]:
        """``(base, r)``: the factored form of an exp-scaled shaper, else ``(fn(x, p), None)``.

        A seeded shaper draws from a generator seeded with ``seed`` afresh on every call.
        """
        if self.exp_parts is not None:
            return self.exp_parts(x, percentile)
        kw = {"generator": torch.Generator().manual_seed(seed)} if self.seeded else {}
        return self.fn(x, percentile, **kw), None


#: Every shaper, by the name used in detector specs (``"ash_s@95"``), in registration order
#: (:func:`register_shaper` adds more).
SHAPER_REGISTRY: dict[str, Shaper] = {s.name: s for s in (
    Shaper("ash_p", "ASH-P", ash_p, 90.0, "ASH-P (Djurisic et al. 2023)"),
    Shaper("ash_b", "ASH-B", ash_b, 95.0, "ASH-B (Djurisic et al. 2023)"),
    Shaper("ash_s", "ASH-S", ash_s, 95.0, "ASH-S (Djurisic et al. 2023)", exp_parts=ash_s_parts),
    Shaper("ash_rand", "ASH-RAND", ash_rand, 90.0, "ASH-RAND (Djurisic et al. 2023), U(0, 10) at kept positions",
           seeded=True),
    Shaper("scale", "SCALE", scale, 85.0, "SCALE (Xu et al. 2024): ASH-S's exp(s1/s2) on the unpruned features",
           exp_parts=scale_parts),
)}


def register_shaper(shaper: Shaper) -> Shaper:
    """Add ``shaper`` to :data:`SHAPER_REGISTRY` (and so to every view of it); a taken name is refused."""
    if shaper.name in SHAPER_REGISTRY:
        raise ValueError(f"a shaper named {shaper.name!r} is already registered")
    SHAPER_REGISTRY[shaper.name] = shaper
    return shaper


def unregister_shaper(name: str) -> Shaper:
    """Remove and return the shaper ``name`` (tests that register one clean up with it)."""
    if name not in SHAPER_REGISTRY:
        raise ValueError(f"no shaper {name!r} is registered; registered: {', '.join(SHAPER_REGISTRY)}")
    return SHAPER_REGISTRY.pop(name)


class _View(Mapping):
    """A read-only mapping ``{name: field of the shaper}`` over :data:`SHAPER_REGISTRY`, always current."""

    def __init__(self, value: Callable[[Shaper], Any], keep: Callable[[Shaper], bool] = lambda s: True):
        self._value, self._keep = value, keep

    def _items(self) -> dict[str, Any]:
        return {n: self._value(s) for n, s in SHAPER_REGISTRY.items() if self._keep(s)}

    def __getitem__(self, name: str) -> Any:
        return self._items()[name]

    def __iter__(self):
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __repr__(self) -> str:
        return repr(self._items())


#: The shaper functions ``(x, percentile, **kwargs) -> Tensor`` by name (a view of :data:`SHAPER_REGISTRY`).
SHAPERS: Mapping[str, Callable[..., Tensor]] = _View(lambda s: s.fn)

#: The shapers of the form ``base * exp(r)``, by the name used in :data:`SHAPERS`, as functions
#: ``(x, percentile) -> (base, r)``; :func:`ood_core.scores.ash_energy` scores them in float64.
EXP_SCALED_PARTS: Mapping[str, Callable[[Tensor, float], tuple[Tensor, Tensor]]] = _View(
    lambda s: s.exp_parts, keep=lambda s: s.exp_parts is not None)

#: The shapers' names in tables (``"ASH-S"``), by name.
SHAPER_TITLES: Mapping[str, str] = _View(lambda s: s.title)



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

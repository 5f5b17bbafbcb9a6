"""Dequantization, nats and bits/dim for flows on discrete images.

The one place that maps a flow's density to the likelihood of *discrete* data and to bits/dim
(Nalisnick et al. 2019, Sec. 3 and their bits/dim tables; Theis et al. 2016 for the bound).

Conventions
-----------
* Images are ``uint8`` tensors ``[B, C, H, W]`` holding ``n_bits``-bit values ``k`` in
  ``0 .. 2**n_bits - 1``.
* Uniform dequantization: ``x = (k + u) / 2**n_bits`` with ``u ~ U[0, 1)^D``, so ``x`` lies in the
  bin ``[k / 2**n_bits, (k + 1) / 2**n_bits)`` of volume ``2**(-n_bits * D)``.
* Glow input space: ``x - 0.5`` (shift, volume preserving).
* The discrete log-likelihood of one dequantised draw (a stochastic lower bound on
  ``log P(k)`` in expectation, exact for a density constant on each bin) is

  ``log P(k) ~= log p_model(x - 0.5) - D * n_bits * ln 2``,

  and bits/dim is ``-log P(k) / (D ln 2)``. A uniform density on ``[0, 1)^D`` gives exactly
  ``n_bits`` bits/dim.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm  # plain text bars: no ipywidgets needed in notebooks

from ood_core import units
from ood_core.flows import gaussian_log_prob

logger = logging.getLogger(__name__)

__all__ = [
    "dequantize",
    "preprocess",
    "reduce_bits",
    "bits_per_dim",
    "flow_log_likelihood",
    "score_flow",
]



def _check_uint8(x: Any, name: str = "x_uint8") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of dtype uint8, got {type(x).__name__}")
    if x.dtype != torch.uint8:
        raise TypeError(
            f"{name} must have dtype torch.uint8 (raw pixel values 0..255), got {x.dtype}; "
            "dequantize the raw images, not images already scaled to floats"
        )
    return x


def reduce_bits(x_uint8: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Keep the ``n_bits`` most significant bits: ``k // 2**(8 - n_bits)`` (Glow paper Sec. 5).

    Returns a new ``uint8`` tensor; the input is not modified.
    """
    _check_uint8(x_uint8)
    if not 1 <= n_bits <= 8:
        raise ValueError(f"n_bits must be in 1..8, got {n_bits}")
    return torch.div(x_uint8, 2 ** (8 - n_bits), rounding_mode="floor").to(torch.uint8)


def dequantize(
    x_uint8: torch.Tensor,
    generator: torch.Generator | None = None,
    n_bits: int = 8,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Uniform dequantization ``(k + u) / 2**n_bits`` with ``u ~ U[0, 1)``, values in ``[0, 1)``.

    ``generator`` supplies ``u``; when ``None`` a fresh CPU generator seeded with 0 is used, so
    evaluation is deterministic. Noise is drawn on the generator's device and moved to the
    input's device, so a CPU generator gives the same numbers on every device. The result is
    clamped below the bin's upper edge so that ``floor(x * 2**n_bits) == k`` holds exactly even
    when rounding to ``dtype`` would reach the next bin. Never modifies ``x_uint8``.

    Raises ``TypeError`` for a non-``uint8`` input and ``ValueError`` when values do not fit in
    ``n_bits`` bits (use :func:`reduce_bits` first).
    """
    _check_uint8(x_uint8)
    if not 1 <= n_bits <= 8:
        raise ValueError(f"n_bits must be in 1..8, got {n_bits}")
    bins = 2**n_bits
    if n_bits < 8 and x_uint8.numel() and int(x_uint8.max()) >= bins:
        raise ValueError(
            f"values up to {int(x_uint8.max())} do not fit in {n_bits} bits; "
            "call reduce_bits(x, n_bits) first"
        )
    dtype = dtype or torch.get_default_dtype()
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    noise = torch.rand(
        x_uint8.shape, generator=generator, device=generator.device, dtype=torch.float64
    ).to(x_uint8.device)
    k = x_uint8.to(torch.float64)
    x = ((k + noise) / bins).to(dtype)
    upper = ((k + 1.0) / bins).to(dtype)  # exact: a small integer over a power of two
    below_upper = torch.nextafter(upper, torch.zeros((), dtype=dtype, device=upper.device))
    return torch.minimum(x, below_upper)


def preprocess(
    x_uint8: torch.Tensor,
    generator: torch.Generator | None = None,
    n_bits: int = 8,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Glow input space: ``dequantize(x_uint8, generator, n_bits) - 0.5``, in ``[-0.5, 0.5)``."""
    return dequantize(x_uint8, generator=generator, n_bits=n_bits, dtype=dtype) - 0.5


def bits_per_dim(log_likelihood_nats: torch.Tensor | float, num_dims: int) -> torch.Tensor:
    """``bpd = -log_likelihood / (num_dims * ln 2)`` (nats of the discrete data -> bits/dim)."""
    if num_dims <= 0:
        raise ValueError(f"num_dims must be positive, got {num_dims}")
    return units.bits_per_dim(torch.as_tensor(log_likelihood_nats), num_dims)


def _model_device_dtype(
    model: nn.Module, fallback: torch.Tensor
) -> tuple[torch.device, torch.dtype]:
    for tensor in model.parameters():
        return tensor.device, tensor.dtype
    return fallback.device, torch.get_default_dtype()


# --------------------------------------------------------------------------------------------
# Per-level terms of a multi-scale Glow (optional outputs of flow_log_likelihood / score_flow)
# --------------------------------------------------------------------------------------------


def _glow_levels(model: nn.Module) -> Any:
    levels = getattr(model, "levels", None)
    if levels is None or len(levels) == 0 or not all(
        hasattr(level, "steps") and hasattr(level, "split") and len(level.steps) > 0 for level in levels
    ):
        raise TypeError(
            f"per_level=True needs a multi-scale Glow (ood_core.flows.Glow) with levels of flow steps "
            f"and splits; {type(model).__name__} has none. Call with per_level=False."
        )
    if levels[-1].split is not None or any(level.split is None for level in levels[:-1]):
        raise TypeError("per_level=True expects a split after every level but the top one (ood_core.flows.Glow)")
    return levels


@contextlib.contextmanager
def _capture_latents(model: nn.Module) -> Iterator[dict[str, Any]]:
    """Record what one density-direction pass of a Glow produces at each level.

    Forward hooks on every ``Split`` (its ``((kept, z), logdet)`` output) and on the last flow
    step of the top level (its output is the top latent). The hooks only read tensors, so the
    pass computes exactly what it computes without them; they are removed on exit.
    """
    levels = _glow_levels(model)
    captured: dict[str, Any] = {"splits": [], "top": None}

    def on_split(module: nn.Module, _inputs: Any, output: Any) -> None:
        (kept, z), _ = output
        captured["splits"].append((module, kept, z))

    def on_top(_module: nn.Module, _inputs: Any, output: Any) -> None:
        captured["top"] = output[0]

    handles = [level.split.register_forward_hook(on_split) for level in levels[:-1]]
    handles.append(levels[-1].steps[-1].register_forward_hook(on_top))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _level_terms(model: nn.Module, captured: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``log_pz_level{i}`` (``i = 0..L-1``, the top latent last) and ``z_sqnorm``, each ``[B]``.

    Split level ``i``: ``log p(z_i | kept_i)`` under the split's (conditional) prior; top level:
    ``log N(z_top; top_mean, exp(top_log_std)^2)`` (``N(0, I)`` without a learned prior). Their
    sum is the ``log_pz`` of ``model.log_prob_parts``. ``z_sqnorm = sum_i ||z_i||^2`` over all
    latents (the squared norm of the whole latent vector, before any prior standardisation).
    """
    num_levels = len(model.levels)
    splits, top = captured["splits"], captured["top"]
    if len(splits) != num_levels - 1 or top is None:
        raise RuntimeError(
            f"per_level=True saw {len(splits)} split latent(s) and top latent {top is not None} in a "
            f"{num_levels}-level Glow: the flow's forward pass no longer calls its Split modules "
            "and last flow step as submodules; update ood_core.likelihood._capture_latents"
        )
    terms: dict[str, torch.Tensor] = {}
    sqnorm = top.new_zeros(top.shape[0])
    for index, (split, kept, z) in enumerate(splits):
        terms[f"log_pz_level{index}"] = split.log_prob(kept, z)
        sqnorm = sqnorm + z.flatten(1).pow(2).sum(1)
    top_mean, top_log_std = getattr(model, "top_mean", None), getattr(model, "top_log_std", None)
    if top_mean is None:
        top_mean = top_log_std = torch.zeros_like(top)
    terms[f"log_pz_level{num_levels - 1}"] = gaussian_log_prob(
        top, top_mean.expand_as(top), top_log_std.expand_as(top)
    )
    terms["z_sqnorm"] = sqnorm + top.flatten(1).pow(2).sum(1)
    return terms


def flow_log_likelihood(
    model: nn.Module,
    x_uint8: torch.Tensor,
    generator: torch.Generator | None = None,
    n_bits: int | None = None,
    *,
    per_level: bool = False,
) -> dict[str, torch.Tensor]:
    """Discrete-data log-likelihood of a flow and its decomposition, all ``[B]`` tensors.

    ``model`` must provide ``log_prob_parts(x) -> (log_pz, logdet)`` on the Glow input space
    (``dequantize - 0.5``). With ``D = C * H * W``:

    * ``log_pz``  = sum of the prior log-densities of all latents (nats);
    * ``logdet``  = the flow's ``log|det dz/dx|`` **plus** ``-D * n_bits * ln 2``: the constant
      volume change of the ``/ 2**n_bits`` scaling is attributed to the volume term;
    * ``log_px``  = ``log_pz + logdet`` (nats, discrete data);
    * ``bpd_pz``  = ``-log_pz / (D ln 2)``, ``bpd_logdet = -logdet / (D ln 2)``;
    * ``bpd``     = ``bpd_pz + bpd_logdet`` (exactly; equals ``bits_per_dim(log_px, D)`` up to
      rounding).

    ``n_bits`` defaults to ``model.config.n_bits`` when the model has a config, else 8. The
    input is moved to the model's device and dtype; gradients flow if enabled by the caller.

    ``per_level=True`` (a multi-scale :class:`ood_core.flows.Glow` only) adds, from the same
    pass, ``log_pz_level{i}`` for ``i = 0..L-1`` (the prior log-density of the latent split off
    at level ``i``; the top latent is level ``L-1``), whose sum is ``log_pz``, and ``z_sqnorm``
    (``||z||^2`` over all latents). These are the per-example statistics DoSE uses (Morningstar
    et al. 2021; :class:`ood_core.generative_scores.DoSE`). The other six entries are
    unchanged by the option.
    """
    _check_uint8(x_uint8)
    if n_bits is None:
        config = getattr(model, "config", None)
        n_bits = getattr(config, "n_bits", 8)
    device, dtype = _model_device_dtype(model, x_uint8)
    x = preprocess(x_uint8.to(device), generator=generator, n_bits=n_bits, dtype=dtype)
    num_dims = int(np.prod(x_uint8.shape[1:]))
    capture = _capture_latents(model) if per_level else contextlib.nullcontext()
    with capture as captured:
        log_pz, flow_logdet = model.log_prob_parts(x)
    logdet = flow_logdet - units.dequantization_nats(num_dims, n_bits)
    log_px = log_pz + logdet
    bpd_pz = bits_per_dim(log_pz, num_dims)
    bpd_logdet = bits_per_dim(logdet, num_dims)
    result = {
        "log_px": log_px,
        "log_pz": log_pz,
        "logdet": logdet,
        "bpd": bpd_pz + bpd_logdet,
        "bpd_pz": bpd_pz,
        "bpd_logdet": bpd_logdet,
    }
    if per_level:
        result.update(_level_terms(model, captured))
    return result


def score_flow(
    model: nn.Module,
    x_uint8: torch.Tensor | np.ndarray,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str | None = None,
    n_bits: int | None = None,
    *,
    per_level: bool = False,
) -> dict[str, np.ndarray]:
    """Per-example :func:`flow_log_likelihood` over a whole ``uint8`` array, as numpy arrays.

    Runs in ``eval`` mode under ``torch.no_grad()`` (the model's training flag is restored).
    The dequantization noise comes from a CPU generator seeded with ``seed`` and created per
    call, so repeated calls with the same ``seed`` and ``batch_size`` give identical results on
    any device. ``device`` defaults to the model's device; the model is not moved (a mismatch
    raises ``ValueError``). Returns float64 arrays ``log_px, log_pz, logdet, bpd, bpd_pz,
    bpd_logdet`` of length ``N``; the model's ``log_pz`` and ``logdet`` (same conventions as
    :func:`flow_log_likelihood`) are cast to float64 and the other four derived from them in
    float64, so ``log_px = log_pz + logdet`` and ``bpd = bpd_pz + bpd_logdet`` hold exactly.
    The noise of an example depends on ``seed`` and on ``batch_size`` (batches draw in turn).

    ``per_level=True`` (multi-scale Glow only) also returns ``log_pz_level0 .. log_pz_level{L-1}``
    and ``z_sqnorm`` (see :func:`flow_log_likelihood`; float64 casts of the model's values, so
    their sum equals ``log_pz`` up to the model dtype's rounding). The six entries above are
    bit-identical with and without it.
    """
    if isinstance(x_uint8, np.ndarray):
        x_uint8 = torch.from_numpy(x_uint8)
    _check_uint8(x_uint8)
    model_device, _ = _model_device_dtype(model, x_uint8)
    device = torch.device(device) if device is not None else model_device
    same_device = device.type == model_device.type and device.index in (None, model_device.index)
    if not same_device and any(True for _ in model.parameters()):
        raise ValueError(f"model is on {model_device} but device={device}; move the model first")
    level_keys = [f"log_pz_level{i}" for i in range(len(_glow_levels(model)))] + ["z_sqnorm"] if per_level else []

    def terms(batch: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        result = flow_log_likelihood(model, batch, generator=generator, n_bits=n_bits, per_level=per_level)
        return {key: result[key] for key in ("log_pz", "logdet", *level_keys)}

    parts = score_batches(model, x_uint8, terms, batch_size=batch_size, seed=seed)
    empty = np.zeros(0)
    log_pz, logdet = parts.get("log_pz", empty), parts.get("logdet", empty)
    num_dims = int(np.prod(x_uint8.shape[1:]))
    # Derived terms are recomputed in float64 so that the identities hold in the arrays returned.
    bpd_pz = units.bits_per_dim(log_pz, num_dims)
    bpd_logdet = units.bits_per_dim(logdet, num_dims)
    out = {
        "log_px": log_pz + logdet,
        "log_pz": log_pz,
        "logdet": logdet,
        "bpd": bpd_pz + bpd_logdet,
        "bpd_pz": bpd_pz,
        "bpd_logdet": bpd_logdet,
    }
    out.update({key: parts.get(key, empty) for key in level_keys})
    return out


def score_batches(
    model: nn.Module,
    x_uint8: torch.Tensor,
    terms: Any,
    batch_size: int = 256,
    seed: int = 0,
    desc: str = "scoring",
) -> dict[str, np.ndarray]:
    """Run ``terms(batch, generator) -> {name: [b] tensor}`` over ``x_uint8`` in batches; float64 numpy out.

    The one evaluation loop of the likelihood models: ``eval`` mode under ``torch.no_grad()`` (the
    training flag is restored), batches moved to the model's device, one CPU generator seeded with
    ``seed`` drawn in turn by the batches (so results depend on ``seed`` and ``batch_size`` only, on
    any device), every term cast to float64 and concatenated. Empty input gives empty arrays.
    """
    if isinstance(x_uint8, np.ndarray):
        x_uint8 = torch.from_numpy(x_uint8)
    _check_uint8(x_uint8)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device, _ = _model_device_dtype(model, x_uint8)
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[np.ndarray]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(x_uint8), batch_size), desc=desc, leave=False):
                out = terms(x_uint8[start:start + batch_size].to(device), generator)
                for key, value in out.items():
                    parts.setdefault(key, []).append(value.double().cpu().numpy())
    finally:
        model.train(was_training)
    return {key: np.concatenate(values) for key, values in parts.items()}

"""Why a flow ranks OOD data high: where its bits go, how well its priors fit, what its couplings learn.

Two diagnoses of a trained Glow (:class:`ood_core.flows.Glow`), beside the second-order analysis
of :mod:`ood_core.second_order`:

* the split of an image's bits/dim into the terms of ``log p`` by level and layer
  (:func:`log_prob_contributions`, :func:`log_prob_breakdown`) and how well each level's prior
  fits its latents (:func:`prior_fit_table`);
* Kirichenko et al. (NeurIPS 2020, "Why normalizing flows fail to detect out-of-distribution
  data"): what a coupling layer's network predicts (:func:`coupling_view`) and how much of an
  image its fine latents alone carry (:func:`latent_images`, :func:`latent_reconstruction`,
  :func:`reconstruction_table`).

Images enter as ``uint8`` ``[N, C, H, W]``; ``log p`` is in nats on the model input space
``x = pixel / 256 - 0.5`` (see :mod:`ood_core.likelihood`), bits/dim as in :mod:`ood_core.units`.
The levels are walked with :meth:`ood_core.flows.Glow.walk`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from ood_core import likelihood, units
from ood_core.second_order import _check_images, _device_dtype

__all__ = [
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

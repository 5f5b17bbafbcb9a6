"""Discretised logistic mixture likelihood of ``uint8`` pixels (PixelCNN++, Salimans et al. 2017, Sec. 2.1-2.2).

The one output distribution shared by the PixelCNN and the VAE decoder, so that both report the
exact log-probability of *discrete* pixels (no dequantisation: bits/dim are exact for the
PixelCNN and a bound for the VAE only because of the latent variable).

Parameterisation (per pixel, ``K`` mixture components, ``C`` channels)
-----------------------------------------------------------------------
A network emits ``params`` shaped ``[B, n_params(K, C), H, W]``, split along dim 1 as

* ``logits``      ``[B, K, H, W]``      -- mixture weights ``pi = softmax(logits)``;
* ``means``       ``[B, K, C, H, W]``   -- ``mu_{k,c}``;
* ``log_scales``  ``[B, K, C, H, W]``   -- ``log s_{k,c}``, clamped below at ``-7``;
* ``coeffs``      ``[B, K, C(C-1)/2, H, W]`` -- ``tanh``-squashed channel couplings.

Pixel values ``v`` in ``0 .. L-1`` (``L = 2**n_bits``) are mapped to ``x = 2 v / (L-1) - 1`` in
``[-1, 1]``; bin half-width ``h = 1 / (L-1)``. Channel ``c`` of component ``k`` has the
*autoregressive* mean ``m_{k,c} = mu_{k,c} + sum_{c' < c} a_{k,c,c'} x_{c'}`` (PixelCNN++'s
linear dependence of G on R and of B on R, G), and

``P(v | k) = prod_c [sigma((x_c + h - m_{k,c}) / s_{k,c}) - sigma((x_c - h - m_{k,c}) / s_{k,c})]``

with the lowest bin's lower edge at ``-inf`` and the highest bin's upper edge at ``+inf``, so
``sum_v P(v | k) = 1`` exactly for every ``L`` (tested by enumeration on small ``L``). The
pixel probability is ``sum_k pi_k P(v | k)``; the image log-probability sums over pixels.
With ``K = 1`` and ``C = 1`` this is the discretised logistic of Kingma et al. (2016, IAF).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["MIN_LOG_SCALE", "n_params", "split_params", "to_unit_range", "channel_means", "log_prob",
           "log_prob_pixels", "sample"]

MIN_LOG_SCALE = -7.0  # PixelCNN++'s floor on log s: keeps the bin probabilities representable


def n_params(n_mix: int, channels: int) -> int:
    """Channels of the parameter tensor: ``K (1 + 2C + C(C-1)/2)``."""
    if n_mix < 1 or channels < 1:
        raise ValueError(f"n_mix and channels must be >= 1, got {n_mix} and {channels}")
    return n_mix * (1 + 2 * channels + channels * (channels - 1) // 2)


def split_params(params: torch.Tensor, n_mix: int, channels: int):
    """``(logits, means, log_scales, coeffs)`` from the network output (see the module docstring)."""
    b, p, h, w = params.shape
    if p != n_params(n_mix, channels):
        raise ValueError(f"params has {p} channels; {n_mix} components over {channels} channels need "
                         f"{n_params(n_mix, channels)}")
    n_coef = channels * (channels - 1) // 2
    logits, means, log_scales, coeffs = torch.split(
        params, [n_mix, n_mix * channels, n_mix * channels, n_mix * n_coef], dim=1)
    means = means.reshape(b, n_mix, channels, h, w)
    log_scales = log_scales.reshape(b, n_mix, channels, h, w).clamp(min=MIN_LOG_SCALE)
    coeffs = torch.tanh(coeffs.reshape(b, n_mix, n_coef, h, w))
    return logits, means, log_scales, coeffs


def to_unit_range(x_uint8: torch.Tensor, n_bits: int = 8, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``2 v / (L - 1) - 1``: pixel values to ``[-1, 1]`` (what networks see and the mixture models)."""
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"x must be raw uint8 pixels, got {x_uint8.dtype}")
    levels = 2**n_bits
    if n_bits < 8 and x_uint8.numel() and int(x_uint8.max()) >= levels:
        raise ValueError(f"values up to {int(x_uint8.max())} do not fit in {n_bits} bits; reduce them first")
    return x_uint8.to(dtype or torch.get_default_dtype()) * (2.0 / (levels - 1)) - 1.0


def channel_means(means: torch.Tensor, coeffs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``m_{k,c} = mu_{k,c} + sum_{c'<c} a_{k,c,c'} x_{c'}`` for ``x`` in ``[-1, 1]``, shaped like ``means``.

    Coefficient order: ``(1,0), (2,0), (2,1), (3,0), ...`` (row-major over ``c > c'``).
    """
    channels = means.shape[2]
    out = [means[:, :, 0]]
    j = 0
    for c in range(1, channels):
        m = means[:, :, c]
        for cp in range(c):
            m = m + coeffs[:, :, j] * x[:, cp].unsqueeze(1)
            j += 1
        out.append(m)
    return torch.stack(out, dim=2)


def log_prob_pixels(params: torch.Tensor, x_uint8: torch.Tensor, n_mix: int, n_bits: int = 8) -> torch.Tensor:
    """Log-probability (nats) of every pixel (all channels jointly), ``[B, H, W]``."""
    channels = x_uint8.shape[1]
    logits, means, log_scales, coeffs = split_params(params, n_mix, channels)
    x = to_unit_range(x_uint8, n_bits, dtype=params.dtype).to(params.device)
    half = 1.0 / (2**n_bits - 1)
    xk = x.unsqueeze(1)  # [B, 1, C, H, W]
    centred = xk - channel_means(means, coeffs, x)
    inv_s = torch.exp(-log_scales)
    plus, minus = inv_s * (centred + half), inv_s * (centred - half)
    log_cdf_plus = F.logsigmoid(plus)  # log sigma(plus): the lowest bin
    log_one_minus_cdf_minus = -F.softplus(minus)  # log(1 - sigma(minus)): the highest bin
    # log(sigma(plus) - sigma(minus)), stably: sigma(a) - sigma(b) = sigma(a)(1-sigma(b))(1 - e^{b-a})
    log_mid = F.logsigmoid(plus) + log_one_minus_cdf_minus + torch.log(-torch.expm1(minus - plus))
    # Far in a tail the difference underflows; use the density at the centre times the bin width.
    mid_in = inv_s * centred
    log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)
    log_mid = torch.where(plus - minus > 0, log_mid, log_pdf_mid + math.log(2 * half))
    log_mid = torch.where(torch.isfinite(log_mid), log_mid, log_pdf_mid + math.log(2 * half))
    top = 2**n_bits - 1
    v = x_uint8.to(params.device).unsqueeze(1)
    log_bin = torch.where(v == 0, log_cdf_plus, torch.where(v == top, log_one_minus_cdf_minus, log_mid))
    per_component = log_bin.sum(dim=2) + torch.log_softmax(logits, dim=1)  # [B, K, H, W]
    return torch.logsumexp(per_component, dim=1)


def log_prob(params: torch.Tensor, x_uint8: torch.Tensor, n_mix: int, n_bits: int = 8) -> torch.Tensor:
    """Log-probability (nats) of each image, ``[B]``: the sum of :func:`log_prob_pixels`."""
    return log_prob_pixels(params, x_uint8, n_mix, n_bits).flatten(1).sum(1)


@torch.no_grad()
def sample(params: torch.Tensor, n_mix: int, channels: int, n_bits: int = 8,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """One ``uint8`` draw per pixel from the mixture, ``[B, C, H, W]`` (channels in order, so the
    couplings see the channels already drawn)."""
    logits, means, log_scales, coeffs = split_params(params, n_mix, channels)
    b, _, h, w = logits.shape
    levels = 2**n_bits
    u = torch.rand(logits.shape, generator=generator, device=generator.device if generator else None)
    gumbel = -torch.log(-torch.log(u.to(logits.device).clamp(1e-10, 1 - 1e-10)))
    k = (logits + gumbel).argmax(dim=1, keepdim=True)  # [B, 1, H, W]
    pick = lambda t: t.gather(1, k.unsqueeze(2).expand(b, 1, t.shape[2], h, w)).squeeze(1)  # noqa: E731
    mu, log_s, a = pick(means), pick(log_scales), pick(coeffs) if coeffs.shape[2] else None
    out = torch.zeros(b, channels, h, w, dtype=torch.uint8, device=params.device)
    x = torch.zeros(b, channels, h, w, dtype=params.dtype, device=params.device)
    j = 0
    for c in range(channels):
        m = mu[:, c]
        for cp in range(c):
            m = m + a[:, j] * x[:, cp]
            j += 1
        u = torch.rand((b, h, w), generator=generator, device=generator.device if generator else None)
        u = u.to(params.device).clamp(1e-6, 1 - 1e-6)
        value = m + torch.exp(log_s[:, c]) * (torch.log(u) - torch.log1p(-u))
        v = torch.round((value.clamp(-1, 1) + 1) * (levels - 1) / 2).to(torch.uint8)
        out[:, c] = v
        x[:, c] = v.to(params.dtype) * (2.0 / (levels - 1)) - 1.0
    return out

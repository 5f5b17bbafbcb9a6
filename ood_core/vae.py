"""A convolutional VAE (Kingma & Welling, 2014) over ``uint8`` images, with exact discrete bounds.

Nalisnick et al. (2019, "Do deep generative models know what they don't know?") report that a
VAE trained on FashionMNIST gives *higher* likelihood to MNIST, as Glow and PixelCNN do. This
module is the VAE the book uses to reproduce that. Its decoder's output distribution is the
discretised logistic mixture of :mod:`ood_core.discretized`, so ``p(x | z)`` is a proper
distribution over the ``2**n_bits`` pixel values and every number below is a bound on the
*discrete* ``log P(x)`` in nats (divide by ``D ln 2``, ``D = C H W``, for bits/dim).

Model
-----
* Prior ``p(z) = N(0, I)`` on a flat latent ``z`` in ``R^d`` (``d = config.latent``).
* Decoder ``p(x | z) = prod_pixels DiscretisedLogisticMixture(x_pixel; decode(z)_pixel)``
  (pixels conditionally independent given ``z``; the channels of one pixel are coupled as in
  PixelCNN++, see :mod:`ood_core.discretized`).
* Encoder ``q(z | x) = N(mu(x), diag(sigma(x)^2))``; :meth:`VAE.encode` returns
  ``(mu, log sigma)``.

Bounds
------
With ``z = mu + sigma * eps``, ``eps ~ N(0, I)`` (the reparameterisation trick):

* **ELBO** (Kingma & Welling, 2014, eq. 3)::

      log P(x) >= ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z)),
      KL = 1/2 sum_i (mu_i^2 + sigma_i^2 - 1 - 2 log sigma_i)         (closed form, :func:`gaussian_kl`)

  :meth:`VAE.elbo` estimates the first term with one sample and uses the analytic KL. The gap
  ``log P(x) - ELBO(x)`` is ``KL(q(z | x) || p(z | x))``.

* **IWAE** (Burda, Grosse & Salakhutdinov, 2016, eq. 8)::

      IWAE_k(x) = log (1/k) sum_{j=1..k} w_j,   w_j = p(x | z_j) p(z_j) / q(z_j | x),   z_j ~ q(z | x) iid

  (:meth:`VAE.iwae`, computed in log space with ``logsumexp``). By Jensen's inequality
  ``E[IWAE_k] <= log P(x)``; Burda et al.'s Theorem 1 gives
  ``log P(x) >= E[IWAE_{k+1}] >= E[IWAE_k] >= E[IWAE_1] = ELBO(x)`` and ``E[IWAE_k] -> log P(x)``
  as ``k -> infinity`` when the weights are bounded. ``IWAE_1`` is the one-sample ELBO
  estimate with ``log p(z) - log q(z | x)`` in place of the analytic ``-KL`` (same expectation,
  more variance).

Randomness: every call that samples takes an optional ``torch.Generator``. Noise is drawn on the
generator's device (in float32, or float64 for a float64 model) and then moved to the model, so
a CPU generator gives the same numbers whatever device the model is on. ``generator=None`` uses
the global RNG of the model's device (what :func:`ood_core.train.train` seeds). IWAE draws its
``k`` noise vectors one at a time in sample order, so its value does not depend on ``chunk``,
and ``iwae(x, 1)`` uses the same ``z`` as ``elbo(x)`` for the same generator state.

Architecture (``w = config.width``)
-----------------------------------
Encoder: ``conv4x4/2(C->w) -> conv3x3(w->w) -> conv4x4/2(w->2w) -> resblock(2w) -> linear ->
(mu, log sigma)``, i.e. ``H -> H/4``. Decoder mirrors it: ``linear(d -> 2w * H/4 * W/4) ->
resblock(2w) -> convT4x4/2(2w->w) -> conv3x3(w->w) -> conv3x3(w -> 4 n_params) -> pixel
shuffle`` (a sub-pixel convolution, Shi et al. 2016, emits the parameters of each 2x2 block of
output pixels). Nothing runs at full resolution, which is what makes CPU training fast. SiLU
activations (smooth, which also keeps ``p(x | z)`` smooth in ``z``). At initialisation the
encoder head and the decoder's last convolution are scaled by 0.1, so ``q(z | x)`` starts near
``N(0, I)`` (KL near 0) and the decoder starts near mean 0, scale 1 in ``[-1, 1]`` pixel units
for every pixel: a broad, roughly uniform likelihood rather than an overconfident one.

Departures from Nalisnick et al.'s VAE
--------------------------------------
The paper gives only an outline of its VAE; we do not claim to reproduce its architecture.
What is knowingly different here:

* **Size.** A small network (``width`` 32-64, a latent of ``d`` = 32 by default) sized for CPU
  training of minutes, not hours; conclusions are about the *phenomenon*, not the paper's
  numbers.
* **Likelihood.** The decoder emits a discretised logistic mixture (PixelCNN++'s), exact on the
  discrete pixels, so VAE, PixelCNN and Glow bits/dim are comparable without dequantisation.
* **Evaluation.** We report the ELBO and IWAE bounds (``k`` tens of samples) explicitly as
  bounds on ``log P(x)``; there is no learned prior, flow posterior or ``beta`` weighting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import numpy as np

from ood_core import discretized, likelihood, units
from ood_core.model_config import ImageModelConfig

__all__ = ["VAEConfig", "VAE", "gaussian_kl", "negative_elbo_bpd"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class VAEConfig(ImageModelConfig):
    """Hyperparameters of a :class:`VAE`; rebuild one by keyword from :meth:`to_dict`'s JSON.

    Attributes
    ----------
    image_shape: ``(C, H, W)`` of the input images; ``H`` and ``W`` divisible by 4.
    latent: dimension ``d`` of the *flat* latent ``z`` (a vector, not a feature map).
    width: base convolution width ``w`` (the ``H/4`` feature map has ``2w`` channels).
    n_mix: mixture components of the decoder's discretised logistic likelihood.
    n_bits: bits per pixel of the data (pixel values ``0 .. 2**n_bits - 1``).
    """

    image_shape: tuple[int, int, int]
    latent: int = 32
    width: int = 64
    n_mix: int = 1
    n_bits: int = 8

    def __post_init__(self) -> None:
        shape = self.image_shape
        if not isinstance(shape, (list, tuple)):
            raise ValueError(f"image_shape must be a (C, H, W) tuple, got {shape!r}")
        if len(shape) != 3 or not all(_is_positive_int(s) for s in shape):
            raise ValueError(f"image_shape must be three positive ints (C, H, W), got {tuple(shape)!r}")
        object.__setattr__(self, "image_shape", tuple(int(s) for s in shape))
        _, height, width = self.image_shape
        if height % 4 or width % 4:
            raise ValueError(f"image height and width ({height}, {width}) must be divisible by 4 "
                             "(the encoder downsamples twice by 2); pad the images first")
        for name in ("latent", "width", "n_mix"):
            if not _is_positive_int(getattr(self, name)):
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not _is_positive_int(self.n_bits) or self.n_bits > 8:
            raise ValueError(f"n_bits must be an int in 1..8, got {self.n_bits!r}")



def gaussian_kl(mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, diag(exp(log_std)^2)) || N(0, I))`` summed over the last dim (nats):
    ``1/2 sum (mu^2 + sigma^2 - 1 - 2 log sigma)``."""
    return 0.5 * (mu.square() + torch.exp(2 * log_std) - 1.0 - 2 * log_std).sum(-1)


class _ResBlock(nn.Module):
    """Bottleneck residual block ``x + conv1x1(silu(conv3x3(silu(x))))`` with ``channels / 2``
    hidden channels (a third of the cost of two full 3x3 convolutions); the 1x1 convolution is
    initialised small so the block starts near the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(1, channels // 2)
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, channels, 1)
        with torch.no_grad():
            self.conv2.weight.mul_(0.1)
            self.conv2.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(nn.functional.silu(self.conv1(nn.functional.silu(x))))


class VAE(nn.Module):
    """Convolutional VAE with a discretised-logistic-mixture decoder (see the module docstring)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        if not isinstance(config, VAEConfig):
            raise TypeError(f"config must be a VAEConfig, got {type(config).__name__}")
        self.config = config
        c, h, w = config.image_shape
        wd, d = config.width, config.latent
        self._low = (2 * wd, h // 4, w // 4)
        n_low = 2 * wd * (h // 4) * (w // 4)
        self.encoder = nn.Sequential(
            nn.Conv2d(c, wd, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(wd, wd, 3, padding=1), nn.SiLU(),
            nn.Conv2d(wd, 2 * wd, 4, stride=2, padding=1),
            _ResBlock(2 * wd), nn.SiLU(),
            nn.Flatten(),
        )
        self.enc_head = nn.Linear(n_low, 2 * d)
        self.dec_in = nn.Linear(d, n_low)
        self.decoder = nn.Sequential(
            _ResBlock(2 * wd), nn.SiLU(),
            nn.ConvTranspose2d(2 * wd, wd, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(wd, wd, 3, padding=1), nn.SiLU(),
        )
        # Sub-pixel convolution (Shi et al., 2016): 4 parameter sets per H/2 position -> H x W.
        self.dec_out = nn.Conv2d(wd, 4 * discretized.n_params(config.n_mix, c), 3, padding=1)
        with torch.no_grad():
            for layer in (self.enc_head, self.dec_out):
                layer.weight.mul_(0.1)
                layer.bias.zero_()

    # ------------------------------------------------------------------ helpers

    def _param(self) -> torch.Tensor:
        return self.dec_out.weight

    def _latent_dtype(self) -> torch.dtype:
        """float64 for a float64 model, float32 otherwise (latent maths never in half precision)."""
        return torch.float64 if self._param().dtype == torch.float64 else torch.float32

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of uint8 pixels, got {type(x).__name__}")
        if x.dtype != torch.uint8:
            raise TypeError(f"x must be raw uint8 pixels (0 .. {2**self.config.n_bits - 1}), got {x.dtype}; "
                            "do not pre-scale the images")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.config.image_shape:
            raise ValueError(f"x must be shaped [B, {', '.join(map(str, self.config.image_shape))}] "
                             f"(config.image_shape), got {list(x.shape)}")

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        dtype, device = self._latent_dtype(), self._param().device
        if generator is None:
            return torch.randn(shape, dtype=dtype, device=device)
        return torch.randn(shape, generator=generator, dtype=dtype, device=generator.device).to(device)

    def _log_px_z(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if params.dtype in (torch.float16, torch.bfloat16):  # e.g. under autocast: bins need fp32
            params = params.float()
        return discretized.log_prob(params, x, self.config.n_mix, self.config.n_bits)

    # ------------------------------------------------------------------ the model

    def encode(self, x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log sigma)`` of ``q(z | x)``, each ``[B, latent]``."""
        self._check(x_uint8)
        p = self._param()
        x = discretized.to_unit_range(x_uint8, self.config.n_bits, dtype=p.dtype).to(p.device)
        out = self.enc_head(self.encoder(x)).to(self._latent_dtype())
        mu, log_std = out.chunk(2, dim=1)
        return mu, log_std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder mixture parameters ``[B, n_params, H, W]`` for latents ``z`` ``[B, latent]``."""
        if z.dim() != 2 or z.shape[1] != self.config.latent:
            raise ValueError(f"z must be shaped [B, {self.config.latent}], got {list(z.shape)}")
        p = self._param()
        hidden = nn.functional.silu(self.dec_in(z.to(device=p.device, dtype=p.dtype)))
        return nn.functional.pixel_shuffle(self.dec_out(self.decoder(hidden.reshape(len(z), *self._low))), 2)

    def elbo_parts(self, x_uint8: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``{"log_px_z", "kl", "elbo"}``, each ``[B]`` nats: a one-sample reparameterised
        ``log p(x | z)``, ``z ~ q(z | x)``, the analytic ``KL(q(z | x) || N(0, I))``, and
        ``elbo = log_px_z - kl``."""
        mu, log_std = self.encode(x_uint8)
        z = mu + torch.exp(log_std) * self._noise(tuple(mu.shape), generator)
        log_px_z = self._log_px_z(self.decode(z), x_uint8)
        kl = gaussian_kl(mu, log_std).to(log_px_z.dtype)
        return {"log_px_z": log_px_z, "kl": kl, "elbo": log_px_z - kl}

    def elbo(self, x_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One-sample ELBO estimate ``[B]`` in nats (see :meth:`elbo_parts`)."""
        return self.elbo_parts(x_uint8, generator)["elbo"]

    def iwae(self, x_uint8: torch.Tensor, k: int, generator: torch.Generator | None = None,
             chunk: int = 64) -> torch.Tensor:
        """``IWAE_k = log (1/k) sum_j p(x, z_j) / q(z_j | x)``, ``z_j ~ q(z | x)``: ``[B]`` nats.

        The ``k`` samples are decoded ``chunk`` at a time (``B * chunk`` images per decoder pass)
        and combined with a running ``logsumexp``, so memory does not grow with ``k``; the value
        does not depend on ``chunk`` (same noise, up to float rounding). On CPU, ``B * chunk`` of
        a few hundred images is fastest (larger passes fall out of cache). Wrap the call in
        ``torch.no_grad()`` for evaluation.
        """
        if not _is_positive_int(k):
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if not _is_positive_int(chunk):
            raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
        mu, log_std = self.encode(x_uint8)
        b, d = mu.shape
        std = torch.exp(log_std)
        total = None
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            eps = torch.stack([self._noise((b, d), generator) for _ in range(m)])  # [m, B, d]
            z = mu + std * eps
            log_q = (-0.5 * eps.square() - log_std - _HALF_LOG_2PI).sum(-1)  # [m, B]
            log_pz = (-0.5 * z.square() - _HALF_LOG_2PI).sum(-1)
            x_rep = x_uint8.unsqueeze(0).expand(m, *x_uint8.shape).reshape(m * b, *x_uint8.shape[1:])
            log_px = self._log_px_z(self.decode(z.reshape(m * b, d)), x_rep).reshape(m, b)
            part = torch.logsumexp(log_px + (log_pz - log_q).to(log_px.dtype), dim=0)
            total = part if total is None else torch.logaddexp(total, part)
        return total - math.log(k)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images ``z ~ N(0, I)``, ``x ~ p(x | z)``: ``uint8`` ``[n, C, H, W]``."""
        if not _is_positive_int(n):
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        params = self.decode(self._noise((n, self.config.latent), generator))
        if params.dtype in (torch.float16, torch.bfloat16):
            params = params.float()
        return discretized.sample(params, self.config.n_mix, self.config.image_shape[0], self.config.n_bits,
                                  generator)


def negative_elbo_bpd(model: VAE, batch) -> torch.Tensor:
    """Training loss: mean over the batch of ``-ELBO(x) / (D ln 2)`` (bits/dim), ``batch[0]`` the
    ``uint8`` images (a bare tensor is accepted too). Uses the global RNG for the noise."""
    x = batch if isinstance(batch, torch.Tensor) else batch[0]
    return units.bits_per_dim(model.elbo(x), model.config.num_dims).mean()


def score_images(model: VAE, x_uint8: torch.Tensor, batch_size: int = 256, seed: int = 0,
                 iwae_k: int = 16) -> dict[str, np.ndarray]:
    """Per-example likelihood terms (float64 numpy ``[N]``) of ``x_uint8`` under a VAE.

    ``log_px`` is the importance-weighted bound ``IWAE_k`` (Burda et al. 2016; nats of the
    discrete image), the tighter of the two bounds; also the one-sample ELBO split into
    ``log_px_z`` (reconstruction) and ``kl``, and their bits/dim ``bpd`` (of ``log_px``),
    ``bpd_elbo = bpd_recon + bpd_kl``. Deterministic in ``seed`` (one CPU generator drives the
    sampling, batch after batch).
    """
    def terms(batch: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        out = dict(model.elbo_parts(batch, generator=generator))
        # ~512 images per decoder pass: larger passes are slower on CPU (measured)
        out["log_px"] = model.iwae(batch, iwae_k, generator=generator, chunk=max(1, 512 // len(batch)))
        return out

    out = likelihood.score_batches(model, x_uint8, terms, batch_size=batch_size, seed=seed)
    d = model.config.num_dims
    out["bpd"] = units.bits_per_dim(out["log_px"], d)
    out["bpd_elbo"] = units.bits_per_dim(out["elbo"], d)
    out["bpd_recon"] = units.bits_per_dim(out["log_px_z"], d)
    out["bpd_kl"] = -units.bits_per_dim(out["kl"], d)
    return out

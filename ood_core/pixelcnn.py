"""Gated PixelCNN with a discretised logistic mixture output: exact ``log P(x)`` of ``uint8`` images.

References
----------
* A. van den Oord, N. Kalchbrenner, K. Kavukcuoglu (2016), "Pixel Recurrent Neural Networks"
  (the PixelCNN, masked convolutions, raster-order factorisation).
* A. van den Oord, N. Kalchbrenner, O. Vinyals, L. Espeholt, A. Graves, K. Kavukcuoglu (2016),
  "Conditional Image Generation with PixelCNN Decoders" (the *Gated* PixelCNN: vertical and
  horizontal stacks, gated activations, residual horizontal stack; Sec. 2.1-2.2, Fig. 2).
* T. Salimans, A. Karpathy, X. Chen, D. P. Kingma (2017), "PixelCNN++" (discretised logistic
  mixture output with linear channel couplings, down-/right-shifted convolutions; see
  :mod:`ood_core.discretized`).

The model
---------
``log P(x) = sum_i log P(x_i | x_<i)`` over pixels ``i`` in raster order (row-major). Each
conditional ``P(x_i | x_<i)`` is a discretised logistic mixture over *all channels of pixel
``i`` jointly* (:mod:`ood_core.discretized`): its parameters are emitted by the network at
pixel ``i``, and the dependence of G on R and of B on R, G *inside* the pixel is carried by the
mixture's coupling coefficients (PixelCNN++, Sec. 2.2). The network itself must therefore be
strictly causal over *pixels*.

Architecture (``p = width``, ``k = kernel_size`` odd, ``r = k // 2``, ``kh = r + 1``)::

    x  (uint8, scaled to [-1, 1] by discretized.to_unit_range)
    v0 = Conv[kh x k](shift_down(x))          vertical stack:   rows strictly above
    h0 = Conv[1 x kh](shift_right(x))         horizontal stack: same row, strictly left
    for each of the `layers` gated layers:
        V  = Conv[kh x k](v)                  kh rows ending at the current row, k columns
        v' = tanh(V_a) * sigmoid(V_b)
        H  = Conv[1 x kh](h) + Conv1x1(V)     kh columns ending at the current column + link
        h' = h + Conv1x1(tanh(H_a) * sigmoid(H_b))      (residual, horizontal stack only)
    params = Conv1x1(ELU(h_L))                [B, n_params(n_mix, C), H, W]

Causality, and how it is achieved
---------------------------------
Write ``A(r, c)`` for the set of input pixels a feature at ``(r, c)`` depends on.

* The vertical input is ``x`` shifted down by one row (zero row on top), and every vertical
  convolution is padded so that its ``kh x k`` window covers rows ``r - kh + 1 .. r`` only.
  By induction every vertical feature at row ``r`` depends on input rows ``< r`` only (any
  column): the stack *never* sees the current row.
* The horizontal input is ``x`` shifted right by one column (zero column on the left) and
  convolved with a ``1 x kh`` window covering columns ``c - kh + 1 .. c``; so ``h0`` at
  ``(r, c)`` depends on ``x[r, c-kh .. c-1]`` -- strictly left, the current pixel excluded
  (the paper's mask "A"). Later horizontal convolutions cover columns ``c - kh + 1 .. c`` of
  features that already exclude the current pixel (mask "B"), and the link adds vertical
  features *of the same position*, which only see rows above.
* Hence ``A(r, c)`` is contained in ``{(r', c'): r' < r} U {(r, c'): c' < c}`` -- exactly the
  pixels before ``(r, c)`` in raster order, all channels of them -- and never contains
  ``(r, c)`` itself or anything later. Padding is with zeros (``F.pad`` + ordinary
  convolutions, no masks), so the exclusion is structural: the Jacobian entries are exact zeros
  (tested, together with the per-channel order of the mixture means and exact normalisation by
  enumeration in ``tests/test_pixelcnn.py``).
* No blind spot (the motivation for the two stacks): the vertical ``k``-wide windows grow by
  ``r`` columns to *both* sides per layer, so the receptive field of pixel ``(r, c)`` covers
  the pixels above-right as well as above-left. After ``L`` gated layers it contains every pixel
  in the ``kh + L r`` rows above within ``r (L + 1)`` columns of ``c`` on either side, and the
  ``kh + L r`` pixels to the left on the current row (for ``k = 3``: ``L + 2`` rows,
  ``L + 1`` columns, ``L + 2`` pixels; tested).

The channel order inside pixel ``i`` follows from the mixture: the mean of channel ``c`` is
``mu_c + sum_{c' < c} a_{c,c'} x_{c'}`` where ``mu`` and ``a`` come from the network at ``i``
(pixels ``< i``) and ``x_{c'}`` are the earlier channels of pixel ``i`` itself.

Departures from the papers
--------------------------
* Output: a ``n_mix``-component discretised logistic mixture (PixelCNN++) instead of the Gated
  PixelCNN's 256-way softmax per sub-pixel; the channel order R -> G -> B is therefore in the
  mixture's couplings, not in channel-masked convolutions (the network conditions on *whole*
  earlier pixels, and pixel ``i`` enters only through the couplings).
* Causality is obtained with shifted inputs and one-sided padding rather than masked weights,
  and the vertical stack is made "rows strictly above" once, at its input (shift-down), so the
  vertical-to-horizontal link needs no further shift (implementations of the paper shift the
  link instead, after a vertical stack that includes the current row; the receptive field is
  the same).
* Depth and width: the CPU profile uses few, narrow layers (e.g. ``width=32, layers=5``), far
  from the papers' models (tens of layers, hundreds of feature maps), so its bits/dim are well
  above the published ones; no conditioning vector. The head is a single ``ELU -> 1x1`` (the
  original PixelCNN ends in ``ReLU -> 1x1 -> ReLU -> 1x1``; ELU, as in PixelCNN++, has no dead
  units, which matters for narrow models), and the input layer is an ungated ``kh x k`` / ``1 x kh``
  convolution pair.
* ``tanh`` in the gates is computed as ``2 sigmoid(2a) - 1`` (identical values; several times
  faster on CPU), and activations are kept channels-last for the convolutions.
* The output layer is initialised small, with biases that spread the mixture means over
  ``[-0.5, 0.5]`` with scale ``0.3``, so an untrained model is close to uniform (about
  ``n_bits + 0.3`` bits/dim on noise) and its log-probabilities are finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

import numpy as np

from ood_core import discretized as dl
from ood_core import likelihood, units
from ood_core.model_config import ImageModelConfig

__all__ = ["PixelCNNConfig", "PixelCNN", "nll_bpd"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class PixelCNNConfig(ImageModelConfig):
    """Hyperparameters of a :class:`PixelCNN`; rebuild a model from :meth:`to_dict`'s JSON.

    Attributes
    ----------
    image_shape: ``(C, H, W)`` of the input images.
    width: feature maps of each stack (vertical and horizontal).
    layers: number of gated layers (after the ungated input layer).
    kernel_size: odd ``k >= 3``; vertical windows are ``(k//2 + 1) x k``, horizontal ``1 x (k//2 + 1)``.
    n_mix: logistic mixture components per pixel.
    n_bits: bits per sub-pixel of the data (``2**n_bits`` levels, values ``0 .. 2**n_bits - 1``).
    """

    image_shape: tuple[int, int, int]
    width: int = 64
    layers: int = 6
    kernel_size: int = 3
    n_mix: int = 5
    n_bits: int = 8

    def __post_init__(self) -> None:
        shape = self.image_shape
        if not isinstance(shape, (list, tuple)) or len(shape) != 3 or not all(
                _is_int(s) and s > 0 for s in shape):
            raise ValueError(f"image_shape must be three positive ints (C, H, W), got {shape!r}")
        object.__setattr__(self, "image_shape", tuple(int(s) for s in shape))
        for name in ("width", "layers", "n_mix"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        k = self.kernel_size
        if not _is_int(k) or k < 3 or k % 2 == 0:
            raise ValueError(f"kernel_size must be an odd int >= 3 (the stacks need a centre column and "
                             f"at least one neighbour on each side), got {k!r}")
        if not _is_int(self.n_bits) or not 1 <= self.n_bits <= 8:
            raise ValueError(f"n_bits must be an int in 1..8, got {self.n_bits!r}")



def _gate(t: torch.Tensor) -> torch.Tensor:
    """``tanh(a) * sigmoid(b)`` for ``t = [a, b]`` split along channels (the paper's Eq. 2).

    ``tanh`` is evaluated as ``2 sigmoid(2a) - 1`` (the same function): PyTorch's CPU ``tanh``
    is several times slower than its ``sigmoid``, and the gates are a large share of a step.
    """
    a, b = t.chunk(2, dim=1)
    return (2.0 * torch.sigmoid(2.0 * a) - 1.0) * torch.sigmoid(b)


class _GatedLayer(nn.Module):
    """One gated layer of both stacks (van den Oord et al. 2016b, Fig. 2)."""

    def __init__(self, width: int, kernel_size: int):
        super().__init__()
        self.r, self.kh = kernel_size // 2, kernel_size // 2 + 1
        self.v_conv = nn.Conv2d(width, 2 * width, (self.kh, kernel_size))
        self.h_conv = nn.Conv2d(width, 2 * width, (1, self.kh))
        self.link = nn.Conv2d(2 * width, 2 * width, 1)
        self.h_out = nn.Conv2d(width, width, 1)

    def forward(self, v: torch.Tensor, h: torch.Tensor, need_v: bool = True):
        # Vertical: output row i sees rows i-kh+1 .. i (top padding only), columns j-r .. j+r.
        v_pre = self.v_conv(F.pad(v, (self.r, self.r, self.kh - 1, 0)))
        # Horizontal: output column j sees columns j-kh+1 .. j (left padding only), plus the link
        # from the vertical pre-activations at the same position (rows strictly above only).
        h_pre = self.h_conv(F.pad(h, (self.kh - 1, 0, 0, 0))) + self.link(v_pre)
        h = h + self.h_out(_gate(h_pre))
        return (_gate(v_pre) if need_v else None), h


class PixelCNN(nn.Module):
    """Gated PixelCNN over ``uint8`` images with a discretised logistic mixture per pixel.

    See the module docstring for the architecture and the causality guarantee. ``forward``
    returns the mixture parameters ``[B, n_params, H, W]``; :meth:`log_prob` is the exact
    log-probability (nats) of the discrete image.
    """

    def __init__(self, config: PixelCNNConfig):
        super().__init__()
        if not isinstance(config, PixelCNNConfig):
            raise TypeError(f"config must be a PixelCNNConfig, got {type(config).__name__}")
        self.config = config
        c = config.image_shape[0]
        p, k = config.width, config.kernel_size
        self.r, self.kh = k // 2, k // 2 + 1
        self.v_in = nn.Conv2d(c, p, (self.kh, k))
        self.h_in = nn.Conv2d(c, p, (1, self.kh))
        self.layers = nn.ModuleList(_GatedLayer(p, k) for _ in range(config.layers))
        self.head = nn.Conv2d(p, dl.n_params(config.n_mix, c), 1)
        self._init_head()

    @torch.no_grad()
    def _init_head(self) -> None:
        """Small weights; biases spread the component means evenly over ``[-0.5, 0.5]`` with scale
        ``0.3``, equal weights and no coupling: about ``n_bits + 0.3`` bits/dim on uniform noise
        for any ``n_mix`` and ``C`` (an untrained model is near-uniform and finite)."""
        n_mix, c = self.config.n_mix, self.config.image_shape[0]
        self.head.weight.mul_(0.1)
        bias = torch.zeros(dl.n_params(n_mix, c))
        centres = 0.5 * torch.linspace(-1.0, 1.0, 2 * n_mix + 1)[1::2]  # midpoints of n_mix equal cells
        bias[n_mix:n_mix + n_mix * c] = centres.repeat_interleave(c)  # means [K, C] flattened
        bias[n_mix + n_mix * c:n_mix + 2 * n_mix * c] = math.log(0.3)  # log scales
        self.head.bias.copy_(bias)

    # -- input handling ---------------------------------------------------------------------

    def _check_uint8(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of uint8 pixels, got {type(x).__name__}")
        if x.dtype != torch.uint8:
            raise TypeError(f"x must be raw uint8 pixels (values 0 .. {2**self.config.n_bits - 1}), got "
                            f"{x.dtype}; do not scale or dequantise the input")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.config.image_shape:
            raise ValueError(f"x must be shaped [B, C, H, W] = [B, {', '.join(map(str, self.config.image_shape))}] "
                             f"(config.image_shape), got {list(x.shape)}")

    def _param_ref(self) -> torch.Tensor:
        return self.head.weight

    # -- network ----------------------------------------------------------------------------

    def forward_float(self, x: torch.Tensor) -> torch.Tensor:
        """Mixture parameters from an already scaled float input ``[B, C, H', W']`` in ``[-1, 1]``.

        Fully convolutional (any ``H'``, ``W'``); the parameters at pixel ``(r, c)`` depend only
        on input pixels strictly before it in raster order. :meth:`forward` scales ``uint8``
        pixels and calls this; it is exposed for Jacobian tests and for :meth:`sample`.
        """
        if x.dim() != 4 or x.shape[1] != self.config.image_shape[0]:
            raise ValueError(f"x must be [B, {self.config.image_shape[0]}, H, W], got {list(x.shape)}")
        # Channels-last (NHWC) is what oneDNN/cuDNN convolutions run fastest on; the ops below keep
        # that layout (the values are the same in either layout).
        x = x.contiguous(memory_format=torch.channels_last)
        # Vertical input: shift down one row (drop the last row: rows strictly above) and pad for
        # the kh x k window (kh - 1 more rows on top, r columns each side).
        v = self.v_in(F.pad(x, (self.r, self.r, self.kh, 0))[:, :, :-1])
        # Horizontal input: shift right one column (drop the last column: strictly left) and pad
        # kh - 1 more columns on the left for the 1 x kh window.
        h = self.h_in(F.pad(x, (self.kh, 0, 0, 0))[:, :, :, :-1])
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            v, h = layer(v, h, need_v=i < last)  # the last vertical gate would feed nothing
        return self.head(F.elu(h)).contiguous()  # back to the default layout for the caller

    def forward(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """Mixture parameters ``[B, n_params(n_mix, C), H, W]`` for raw ``uint8`` pixels."""
        self._check_uint8(x_uint8)
        ref = self._param_ref()
        x = dl.to_unit_range(x_uint8.to(ref.device), self.config.n_bits, dtype=ref.dtype)
        return self.forward_float(x)

    # -- likelihood -------------------------------------------------------------------------

    def log_prob_pixels(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """``log P(x_i | x_<i)`` (nats, all channels of pixel ``i`` jointly), ``[B, H, W]``."""
        params = self(x_uint8)
        if params.dtype in (torch.float16, torch.bfloat16):  # e.g. under autocast: the likelihood in fp32
            params = params.float()
        return dl.log_prob_pixels(params, x_uint8.to(params.device), self.config.n_mix, self.config.n_bits)

    def log_prob(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """Exact ``log P(x)`` in nats of each discrete image, ``[B]``."""
        return self.log_prob_pixels(x_uint8).flatten(1).sum(1)

    # -- sampling ---------------------------------------------------------------------------

    @property
    def rows_above(self) -> int:
        """How many rows above a pixel its parameters can depend on: ``kh + layers * (k // 2)``.

        The vertical input window spans ``kh`` rows above and each gated vertical convolution
        ``k // 2`` more; the horizontal stack is row-local. So the parameters of row ``i`` are
        computed exactly from rows ``i - rows_above .. i`` alone (used by :meth:`sample`, tested).
        """
        return self.kh + len(self.layers) * self.r

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images, ``uint8 [n, C, H, W]``, drawn pixel by pixel in raster order.

        One network evaluation per pixel, on the rows ``i - rows_above .. i`` that the
        parameters of row ``i`` depend on (later rows, still zero, do not matter; earlier ones
        are outside the receptive field). Deterministic given a seeded ``generator``.
        """
        if not _is_int(n) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        cfg = self.config
        c, height, width = cfg.image_shape
        ref = self._param_ref()
        out = torch.zeros(n, c, height, width, dtype=torch.uint8, device=ref.device)
        for row in range(height):
            top = max(0, row - self.rows_above)
            for col in range(width):
                x = dl.to_unit_range(out[:, :, top:row + 1], cfg.n_bits, dtype=ref.dtype)
                params = self.forward_float(x)[:, :, -1:, col:col + 1]
                if params.dtype in (torch.float16, torch.bfloat16):
                    params = params.float()
                out[:, :, row:row + 1, col:col + 1] = dl.sample(params, cfg.n_mix, c, cfg.n_bits, generator)
        return out


def nll_bpd(model: PixelCNN, batch) -> torch.Tensor:
    """Mean negative log-likelihood in bits/dim, ``mean_b -log P(x_b) / (D ln 2)``, ``D = C H W``.

    The loss for :func:`ood_core.train.train`: ``batch`` is a tuple whose first element is the
    ``uint8`` image batch. The likelihood is of the discrete pixels, so no ``+ n_bits`` offset
    (unlike a dequantised flow's density).
    """
    x = batch[0]
    d = x[0].numel()
    return units.bits_per_dim(model.log_prob(x).mean(), d)


def score_images(model: PixelCNN, x_uint8: torch.Tensor, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per-example exact ``log_px`` (nats of the discrete image) and ``bpd`` (float64 numpy ``[N]``)."""
    out = likelihood.score_batches(model, x_uint8, lambda batch, _: {"log_px": model.log_prob(batch)},
                                   batch_size=batch_size)
    out["bpd"] = units.bits_per_dim(out["log_px"], model.config.num_dims)
    return out

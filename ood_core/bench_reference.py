"""Plain reference models for the throughput benchmark (:mod:`ood_core.bench`): yardsticks, not tools.

:func:`ood_core.bench.run` times the project's Glow and ResNet-18 beside these textbook models of the
same size, so that ``make bench`` reports a ratio that does not depend on the machine. They are
written straight from the papers, with no attention to speed, and are used nowhere else.

* :class:`ReferenceGlow` -- the multi-scale Glow of Kingma & Dhariwal (2018, Fig. 2 and Table 1) in
  the compact form of the popular PyTorch port (rosinality/glow-pytorch): per step ActNorm
  (``y = s * (x + b)``, data-dependent init), an LU-parameterised 1x1 convolution (Glow eq. 10,
  the weight assembled on every call) and an affine coupling ``y_b = (x_b + t) * sigmoid(h + 2)``
  whose network is ``conv3x3 -> ReLU -> conv1x1 -> ReLU -> zero-init conv3x3`` (convolutions with
  biases, no normalisation inside); squeeze before each level, a split with a learned conditional
  Gaussian prior (a zero-init conv of the kept half) after every level but the last, and a learned
  top prior obtained, as in the official code, by a zero-init convolution of a zero tensor.
  ``affine=False`` gives the additive (NICE) coupling of CV-Glow.
* :class:`ReferenceResNet18` -- the CIFAR ResNet-18 (He et al. 2016) from torchvision-style
  ``BasicBlock`` s: 3x3 stride-1 stem, no max-pool, stages of widths ``w, 2w, 4w, 8w``.

Direction as in :mod:`ood_core.flows`: ``forward(x)`` maps data to latents. ``ReferenceGlow.forward``
returns ``(zs, log_pz, logdet)`` with ``log p(x) = log_pz + logdet`` in nats (model input space
``[-0.5, 0.5)``); :meth:`ReferenceGlow.inverse` maps the latents back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ReferenceGlow", "ReferenceResNet18", "reference_glow_loss"]

_LOG_2PI = math.log(2.0 * math.pi)


def _gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, log_sd: torch.Tensor) -> torch.Tensor:
    """``sum log N(z; mean, exp(log_sd)^2)`` per example."""
    log_density = -0.5 * _LOG_2PI - log_sd - 0.5 * (z - mean) ** 2 / torch.exp(2.0 * log_sd)
    return log_density.sum(dim=(1, 2, 3))


class _ActNorm(nn.Module):
    """``y = scale * (x + loc)`` per channel; ``log|det| = H W sum log|scale|``; init from the first batch."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
        mean = per_channel.mean(dim=1).view(1, -1, 1, 1)
        std = per_channel.std(dim=1).view(1, -1, 1, 1)
        self.loc.copy_(-mean)
        self.scale.copy_(1.0 / (std + 1e-6))
        self.initialized.fill_(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.initialized.item() == 0:
            self._initialize(x)
        logdet = x.shape[2] * x.shape[3] * torch.sum(torch.log(torch.abs(self.scale)))
        return self.scale * (x + self.loc), logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y / self.scale - self.loc


class _InvConvLU(nn.Module):
    """1x1 convolution with ``W = P L (U + diag(sign * exp(log_s)))`` (Glow eq. 10), from a random rotation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        rotation, _ = torch.linalg.qr(torch.randn(channels, channels))
        permutation, lower, upper = torch.linalg.lu(rotation)
        diagonal = torch.diagonal(upper)
        lower_mask = torch.tril(torch.ones(channels, channels), -1)
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign", torch.sign(diagonal))
        self.register_buffer("lower_mask", lower_mask)
        self.register_buffer("upper_mask", lower_mask.T)
        self.register_buffer("identity", torch.eye(channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(diagonal)))

    def weight(self) -> torch.Tensor:
        lower = self.lower * self.lower_mask + self.identity
        upper = self.upper * self.upper_mask + torch.diag(self.sign * torch.exp(self.log_s))
        return self.permutation @ lower @ upper

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight()
        logdet = x.shape[2] * x.shape[3] * torch.sum(self.log_s)
        return F.conv2d(x, w.unsqueeze(2).unsqueeze(3)), logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        w_inv = torch.inverse(self.weight())
        return F.conv2d(y, w_inv.unsqueeze(2).unsqueeze(3))


class _ZeroConv(nn.Module):
    """Zero-initialised 3x3 convolution whose output is scaled by ``exp(3 * scale)`` per channel."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv.weight.data.zero_()
        self.conv.bias.data.zero_()
        self.scale = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.exp(self.scale * 3.0)


class _Coupling(nn.Module):
    """Affine ``y_b = (x_b + t) * sigmoid(h + 2)`` or additive ``y_b = x_b + t`` coupling on a channel split."""

    def __init__(self, channels: int, width: int, affine: bool) -> None:
        super().__init__()
        self.affine = affine
        half = channels // 2
        rest = channels - half
        self.net = nn.Sequential(
            nn.Conv2d(half, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 1),
            nn.ReLU(),
            _ZeroConv(width, 2 * rest if affine else rest),
        )
        for conv in (self.net[0], self.net[2]):
            conv.weight.data.normal_(0.0, 0.05)
            conv.bias.data.zero_()
        self.half = half

    def _shift_and_scale(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.net(x_a)
        if not self.affine:
            return h, None
        raw_scale, shift = h.chunk(2, dim=1)
        return shift, torch.sigmoid(raw_scale + 2.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_a, x_b = x[:, : self.half], x[:, self.half :]
        shift, scale = self._shift_and_scale(x_a)
        if scale is None:
            return torch.cat([x_a, x_b + shift], dim=1), torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        y_b = (x_b + shift) * scale
        return torch.cat([x_a, y_b], dim=1), torch.sum(torch.log(scale).view(x.shape[0], -1), dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y_a, y_b = y[:, : self.half], y[:, self.half :]
        shift, scale = self._shift_and_scale(y_a)
        x_b = y_b - shift if scale is None else y_b / scale - shift
        return torch.cat([y_a, x_b], dim=1)


class _Step(nn.Module):
    def __init__(self, channels: int, width: int, affine: bool) -> None:
        super().__init__()
        self.actnorm = _ActNorm(channels)
        self.invconv = _InvConvLU(channels)
        self.coupling = _Coupling(channels, width, affine)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, logdet = self.actnorm(x)
        x, ld = self.invconv(x)
        logdet = logdet + ld
        x, ld = self.coupling(x)
        return x, logdet + ld

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.actnorm.inverse(self.invconv.inverse(self.coupling.inverse(y)))


def _squeeze(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).contiguous()
    return x.view(b, 4 * c, h // 2, w // 2)


def _unsqueeze(x: torch.Tensor) -> torch.Tensor:
    b, c4, h, w = x.shape
    x = x.view(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).contiguous()
    return x.view(b, c4 // 4, 2 * h, 2 * w)


class _Block(nn.Module):
    """Squeeze, ``K`` steps, then split with a conditional prior (or, on top, a learned unconditional one)."""

    def __init__(self, in_channels: int, steps: int, width: int, affine: bool, split: bool) -> None:
        super().__init__()
        channels = 4 * in_channels
        self.steps = nn.ModuleList(_Step(channels, width, affine) for _ in range(steps))
        self.split = split
        self.num_z = channels // 2 if split else channels
        self.num_kept = channels - self.num_z
        if split:
            self.prior = _ZeroConv(self.num_kept, 2 * self.num_z)
        else:
            self.prior = _ZeroConv(channels, 2 * channels)

    def _prior(self, kept: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        conditioning = kept if self.split else torch.zeros_like(like)
        mean, log_sd = self.prior(conditioning).chunk(2, dim=1)
        return mean, log_sd

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
        h = _squeeze(x)
        logdet = 0.0
        for step in self.steps:
            h, ld = step(h)
            logdet = logdet + ld
        if self.split:
            kept, z = h[:, : self.num_kept], h[:, self.num_kept :]
            mean, log_sd = self._prior(kept, z)
        else:
            kept, z = None, h
            mean, log_sd = self._prior(None, z)
        return kept, z, _gaussian_log_density(z, mean, log_sd), logdet

    def inverse(self, kept: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        h = z if kept is None else torch.cat([kept, z], dim=1)
        for step in reversed(self.steps):
            h = step.inverse(h)
        return _unsqueeze(h)


class ReferenceGlow(nn.Module):
    """Textbook multi-scale Glow with ``levels`` blocks of ``steps`` flow steps (see the module docstring).

    ``forward(x) -> (zs, log_pz, logdet)``: ``zs`` the split latents level by level and the top latent
    last; ``log_pz`` and ``logdet`` per example (``[B]``, nats). ActNorm initialises itself on the
    first call.
    """

    def __init__(self, image_shape: tuple[int, int, int], levels: int, steps: int, width: int,
                 affine: bool = True) -> None:
        super().__init__()
        channels = image_shape[0]
        blocks = []
        for index in range(levels):
            split = index < levels - 1
            blocks.append(_Block(channels, steps, width, affine, split))
            channels = blocks[-1].num_kept if split else 4 * channels
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        zs = []
        log_pz = 0.0
        logdet = 0.0
        h = x
        for block in self.blocks:
            kept, z, log_p, ld = block(h)
            zs.append(z)
            log_pz = log_pz + log_p
            logdet = logdet + ld
            h = kept
        return zs, log_pz, logdet

    def inverse(self, zs: list[torch.Tensor]) -> torch.Tensor:
        h = None
        for block, z in zip(reversed(self.blocks), reversed(zs)):
            h = block.inverse(h, z)
        return h


def reference_glow_loss(model: ReferenceGlow, x: torch.Tensor, n_bins: int = 256) -> torch.Tensor:
    """Mean bits/dim of the discrete data: ``-(log_pz + logdet - D log n_bins) / (D ln 2)``."""
    _, log_pz, logdet = model(x)
    num_dims = x[0].numel()
    log_px = log_pz + logdet - num_dims * math.log(n_bins)
    return (-log_px / (num_dims * math.log(2.0))).mean()


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ReferenceResNet18(nn.Module):
    """CIFAR ResNet-18 of torchvision-style BasicBlocks ([2, 2, 2, 2], widths ``w, 2w, 4w, 8w``)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        layers = []
        in_planes = width
        for planes, stride in zip((width, 2 * width, 4 * width, 8 * width), (1, 2, 2, 2)):
            layers.append(nn.Sequential(_BasicBlock(in_planes, planes, stride), _BasicBlock(planes, planes)))
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(h), 1))

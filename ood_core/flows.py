"""Glow (Kingma & Dhariwal, 2018) as Nalisnick et al. (2019) use it.

Direction
---------
Every invertible layer is written in the *density* direction (data -> latent):

* ``forward(x) -> (z, logdet)`` with ``logdet = log|det dz/dx|`` per example, shape ``[B]``;
* ``inverse(z) -> (x, logdet)`` with ``logdet = log|det dx/dz| = -log|det dz/dx|``, shape ``[B]``.

So the log-dets of ``forward`` followed by ``inverse`` sum to zero. ``logdet`` is never a scalar
or ``None``; volume-preserving layers return a zero ``[B]`` tensor.

Architecture (Glow paper, Fig. 2 and Table 1)
---------------------------------------------
The multi-scale architecture of Dinh et al. (2017): for each of ``L`` levels, *squeeze* (space to
depth, 2x2 -> 4 channels), then ``K`` flow steps, each ``ActNorm -> invertible 1x1 conv ->
coupling``, then *split* off half of the channels as a latent (all levels but the last). Each
split latent has a conditional Gaussian prior whose mean and log-std come from a zero-initialised
convolution of the half that is kept; the top latent has a learned per-channel Gaussian.

Model input space: ``x`` in ``[-0.5, 0.5)``, i.e. dequantised ``pixel / 2**n_bits - 0.5`` (see
:func:`ood_core.likelihood.preprocess`). Log-densities returned here are in nats in that space;
the constant volume change of the ``/ 2**n_bits`` scaling is added in
:mod:`ood_core.likelihood`, never here.

Deviations from the paper (also in the book's deviations table)
----------------------------------------------------------------
* **Sigmoid scale.** Table 1 writes the affine coupling as ``y_b = s * x_b + t`` with
  ``s = exp(log s)``. Like the official code (openai/glow) we use ``s = sigmoid(h + 2)`` and
  ``y_b = (x_b + t) * s``, which bounds the scale in ``(0, 1)`` and starts near ``0.88``.
* **Zero initialisation.** The last convolution of every coupling network and of every prior is
  initialised to zero and multiplied by a per-channel ``exp(3 * logs)`` factor (as in the
  official code), so each coupling starts as the identity (additive) or a constant scaling
  (affine), and every prior starts as ``N(0, I)``.
* **Padding.** All 3x3 convolutions use plain zero padding. The official code appends an extra
  "edge" input channel marking the padded border; we do not.
* **Coupling network.** ``conv3x3 -> ActNorm -> ReLU -> conv1x1 -> ActNorm -> ReLU ->
  zero-init conv3x3``, the official code's choice (ActNorm in place of a bias after the first two
  convolutions). Nalisnick et al. mention highway-network couplings in their smaller Glow; we keep
  Glow's plain network.
* **Top prior.** The official code obtains the learned top prior by a zero-initialised
  convolution of a zero tensor, which is only its bias: a per-channel mean and log-std. We store
  exactly those two per-channel parameters (zero-initialised).
* **Constant-volume Glow** (Nalisnick et al., Sec. 4, "CV-Glow") is the config switch
  ``coupling="additive"`` (the NICE coupling ``y_b = x_b + t``), not a separate model.

How the density direction is computed (same functions, fewer passes)
--------------------------------------------------------------------
Every layer keeps its own ``forward``/``inverse`` (the definition, used by
:meth:`Glow.log_prob_terms`, the inverse and the tests). :meth:`Glow.forward` and
:meth:`Glow.log_prob_parts` take a faster route through the same maps once the ActNorms are
initialised (``make bench`` compares it with a plain Glow of the same size):

* a flow step's ActNorm and 1x1 convolution are one 1x1 convolution,
  ``W (x e^s + b) = (W diag(e^s)) x + W b``, with the log-det ``H W (sum s + log|det W|)`` added
  once per step as a scalar;
* the two ActNorms inside each coupling network are folded into the convolutions before them
  (weight rows scaled by ``e^s``, the ActNorm bias as the convolution bias);
* activations are kept in channels-last memory from the squeeze on, the layout the CPU
  convolution kernels (oneDNN) work in, so no layout conversion happens at each convolution.

The parameters, the state dict and every result are those of the layer-by-layer computation up to
floating-point rounding (tested against it and against autograd Jacobians).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ood_core.model_config import ImageModelConfig

logger = logging.getLogger(__name__)

__all__ = [
    "COUPLINGS",
    "GlowConfig",
    "ActNorm",
    "InvConv1x1",
    "ZeroConv2d",
    "CouplingNet",
    "Coupling",
    "Squeeze",
    "Split",
    "FlowStep",
    "Glow",
    "build_glow",
    "initialize_actnorm",
    "gaussian_log_prob",
    "FlowTerm",
    "LevelOutput",
    "PRIOR_TERMS",
    "LAYER_TERMS",
]

COUPLINGS = ("affine", "additive")
_LOG_2PI = math.log(2.0 * math.pi)

#: The three parts of a Gaussian prior's ``log N(z; m, s^2)`` in :meth:`Glow.log_prob_terms`:
#: ``-1/2 log(2 pi)`` per dimension, ``-log s``, and ``-1/2 ((z - m) / s)^2``, each summed.
PRIOR_TERMS = ("prior_constant", "prior_log_std", "prior_quadratic")
#: The log-dets of the three layers of a flow step, in the order they are applied.
LAYER_TERMS = ("actnorm", "invconv", "coupling")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlowConfig(ImageModelConfig):
    """Hyperparameters of a Glow; rebuild a model by keyword from :meth:`to_dict`'s JSON.

    Attributes
    ----------
    image_shape: ``(C, H, W)`` of the input images.
    levels: number of levels ``L`` (Glow paper Fig. 2); ``H`` and ``W`` must be divisible by
        ``2**levels``.
    steps: flow steps ``K`` per level.
    width: hidden channels of the coupling network (512 in the official CIFAR-10 model).
    coupling: ``"affine"`` (Glow/RealNVP with sigmoid scale) or ``"additive"`` (CV-Glow).
    lu: LU-parameterised 1x1 convolution (Glow paper Sec. 3.2); ``False`` stores the weight
        and uses ``slogdet``.
    learn_prior: learned Gaussian priors (conditional at each split, per-channel at the top);
        ``False`` uses ``N(0, I)`` for every latent.
    n_bits: bits per pixel of the data the model is trained on (8 for Nalisnick et al.).
    """

    image_shape: tuple[int, int, int]
    levels: int = 3
    steps: int = 32
    width: int = 512
    coupling: str = "affine"
    lu: bool = True
    learn_prior: bool = True
    n_bits: int = 8

    def __post_init__(self) -> None:
        shape = self.image_shape
        if isinstance(shape, (list, tuple)):
            shape = tuple(shape)
        else:
            raise ValueError(f"image_shape must be a (C, H, W) tuple, got {self.image_shape!r}")
        if len(shape) != 3 or not all(_is_positive_int(s) for s in shape):
            raise ValueError(f"image_shape must be three positive ints (C, H, W), got {shape!r}")
        object.__setattr__(self, "image_shape", tuple(int(s) for s in shape))
        for name in ("levels", "steps", "width"):
            if not _is_positive_int(getattr(self, name)):
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        _, height, width = self.image_shape
        factor = 2**self.levels
        if height % factor or width % factor:
            raise ValueError(
                f"image height and width ({height}, {width}) must be divisible by "
                f"2**levels = {factor}; pad the images (state the convention) or use fewer levels"
            )
        if self.coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {self.coupling!r}")
        if not isinstance(self.lu, bool) or not isinstance(self.learn_prior, bool):
            raise ValueError("lu and learn_prior must be bools")
        if not _is_positive_int(self.n_bits) or self.n_bits > 8:
            raise ValueError(f"n_bits must be an int in 1..8, got {self.n_bits!r}")



def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """``sum log N(z; mean, exp(log_std)^2)`` over all but the batch dimension, shape ``[B]``.

    ``log N = -0.5 * (log 2 pi + 2 log_std + (z - mean)^2 exp(-2 log_std))``, summed as
    ``-D/2 log 2 pi - sum log_std - 1/2 sum ((z - mean) exp(-log_std))^2`` (fewer passes).
    """
    dims = tuple(range(1, z.dim()))
    standardised = (z - mean) * torch.exp(-log_std)
    constant = -0.5 * _LOG_2PI * z[0].numel()
    return constant - log_std.sum(dim=dims) - 0.5 * standardised.square().sum(dim=dims)


class FlowTerm(NamedTuple):
    """One additive term of ``log p(x)`` (nats, ``[B]``) from :meth:`Glow.log_prob_terms`.

    ``level``: 0-based level index; ``step``: 0-based flow step within the level (``None`` for a
    prior term); ``kind``: one of :data:`PRIOR_TERMS` or :data:`LAYER_TERMS`.
    """

    level: int
    step: int | None
    kind: str
    value: torch.Tensor


class LevelOutput(NamedTuple):
    """What :meth:`Glow.walk` yields after each level, in the density direction."""

    index: int  #: the level, 0 = the finest
    level: nn.Module  #: its modules: ``squeeze``, ``steps``, ``split`` (None at the top level)
    h: torch.Tensor  #: the half the split keeps (the input of the next level); the top latent at the top
    z: torch.Tensor | None  #: the latent the split sets aside; None at the top level
    logdet: torch.Tensor  #: ``log|det|`` of the flow from the input to here, ``[B]``


def _gaussian_terms(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The :data:`PRIOR_TERMS` of ``gaussian_log_prob(z, mean, log_std)``, each ``[B]``; they sum to it."""
    constant = -0.5 * _LOG_2PI * z[0].numel() * z.new_ones(z.shape[0])
    log_std_term = -log_std.flatten(1).sum(1)
    quadratic = -0.5 * ((z - mean) ** 2 * torch.exp(-2.0 * log_std)).flatten(1).sum(1)
    return constant, log_std_term, quadratic


def _batch_zeros(x: torch.Tensor) -> torch.Tensor:
    return x.new_zeros(x.shape[0])


def _per_example(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar log-det to a fresh ``[B]`` tensor (keeps the autograd graph)."""
    return value * x.new_ones(x.shape[0])


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


class ActNorm(nn.Module):
    """Activation normalisation (Glow paper Sec. 3.1, Table 1 row 1).

    ``y = x * exp(log_scale) + bias`` per channel, ``logdet = H * W * sum(log_scale)``.

    Data-dependent initialisation: on the first ``forward`` call the parameters are set from
    that batch so that the output has zero mean and unit (population) standard deviation per
    channel: ``log_scale = -log(std + 1e-6)``, ``bias = -mean * exp(log_scale)``. The
    ``initialized`` flag is a buffer, so it survives ``state_dict`` save/load and a loaded model
    is never re-initialised. ``inverse`` never initialises (before the first forward pass the
    layer is the identity). Change the flag through :meth:`initialize` or ``load_state_dict``,
    not by writing into the buffer (the module keeps a Python copy of it).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        # Python-side copy of the flag, so that a forward pass on an accelerator does not wait
        # on the device to read the buffer; refreshed whenever a state dict is loaded.
        self._initialized_cache: bool | None = None

    def _is_initialized(self) -> bool:
        if self._initialized_cache is None:
            self._initialized_cache = bool(self.initialized)
        return self._initialized_cache

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._initialized_cache = None
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set ``bias`` and ``log_scale`` from the batch ``x`` and mark the layer initialised."""
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        log_scale = -torch.log(std + self.eps)
        self.log_scale.copy_(log_scale)
        self.bias.copy_(-mean * torch.exp(log_scale))
        self.initialized.fill_(True)
        self._initialized_cache = True
        logger.debug("ActNorm(%d) initialised from a batch of %d", self.num_channels, x.shape[0])

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2], x.shape[3]
        return _per_example(height * width * self.log_scale.sum(), x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._is_initialized():
            self.initialize(x)
        z = x * torch.exp(self.log_scale) + self.bias
        return z, self._logdet(x)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (z - self.bias) * torch.exp(-self.log_scale)
        return x, -self._logdet(z)


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution (Glow paper Sec. 3.2, Table 1 row 2).

    ``y[:, :, h, w] = W x[:, :, h, w]``, ``logdet = H * W * log|det W|``. Initialised to a random
    rotation (QR of a Gaussian matrix, global RNG).

    ``lu=True``: ``W = P L (U + diag(sign * exp(log_s)))`` (Glow eq. 10) with ``P`` and ``sign``
    fixed, ``L`` unit lower triangular and ``U`` strictly upper triangular; then
    ``log|det W| = sum(log_s)``. The permutation, sign, masks and identity are buffers.
    ``lu=False``: ``W`` is a free parameter and ``log|det W|`` comes from ``slogdet`` (computed
    in float64 for accuracy).
    """

    def __init__(self, num_channels: int, lu: bool = True) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.lu = lu
        rotation, _ = torch.linalg.qr(torch.randn(num_channels, num_channels))
        if lu:
            perm, lower, upper = torch.linalg.lu(rotation)
            diag = torch.diagonal(upper)
            strict_lower = torch.tril(torch.ones(num_channels, num_channels), diagonal=-1)
            self.register_buffer("perm", perm)
            self.register_buffer("sign_s", torch.sign(diag))
            self.register_buffer("lower_mask", strict_lower)
            self.register_buffer("upper_mask", strict_lower.T.contiguous())
            self.register_buffer("eye", torch.eye(num_channels))
            self.lower = nn.Parameter(lower * strict_lower)
            self.upper = nn.Parameter(torch.triu(upper, diagonal=1))
            self.log_s = nn.Parameter(torch.log(torch.abs(diag)))
        else:
            self.weight_matrix = nn.Parameter(rotation)

    def weight(self) -> torch.Tensor:
        """The ``[C, C]`` matrix ``W`` (with gradient)."""
        if not self.lu:
            return self.weight_matrix
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.upper_mask + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def _log_abs_det(self) -> torch.Tensor:
        if self.lu:
            return self.log_s.sum()
        w = self.weight_matrix
        # float64 for accuracy where the device has it (MPS does not)
        w64 = w if w.device.type == "mps" else w.double()
        return torch.linalg.slogdet(w64)[1].to(w.dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight()
        z = F.conv2d(x, w.view(self.num_channels, self.num_channels, 1, 1))
        return z, _per_example(x.shape[2] * x.shape[3] * self._log_abs_det(), x)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w_inv = torch.linalg.inv(self.weight())
        x = F.conv2d(z, w_inv.view(self.num_channels, self.num_channels, 1, 1))
        return x, -_per_example(z.shape[2] * z.shape[3] * self._log_abs_det(), z)


class ZeroConv2d(nn.Module):
    """3x3 convolution initialised to zero, output scaled by ``exp(3 * logs)`` per channel.

    The official Glow's ``conv2d_zeros``: the network or prior it ends starts as a constant zero
    output. Plain zero padding (no edge channel); see the module docstring.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.exp(3.0 * self.logs)


class CouplingNet(nn.Module):
    """``NN()`` of the coupling layer: conv3x3 -> ActNorm -> ReLU -> conv1x1 -> ActNorm -> ReLU
    -> zero-init conv3x3 (official Glow code; the ActNorms replace the conv biases)."""

    def __init__(self, in_channels: int, out_channels: int, width: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False)
        self.norm_in = ActNorm(width)
        self.conv_hidden = nn.Conv2d(width, width, kernel_size=1, bias=False)
        self.norm_hidden = ActNorm(width)
        self.conv_out = ZeroConv2d(width, out_channels)
        # The official code's default initialiser for the non-zero convolutions.
        nn.init.normal_(self.conv_in.weight, std=0.05)
        nn.init.normal_(self.conv_hidden.weight, std=0.05)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The activations fed to ``conv_out``: ``relu(ActNorm(conv1x1(relu(ActNorm(conv3x3(x))))))``.

        Once both ActNorms are initialised each ``ActNorm(conv(x)) = conv(x; W e^s, b)`` is one
        convolution with the per-output-channel scale folded into the weight and the ActNorm bias
        as the convolution's bias (the same function; the two elementwise passes over the widest
        activations of the flow, and their backward, are gone). Before that, the layers run one by
        one so that the data-dependent initialisation sees the convolution outputs.
        """
        if not (self.norm_in._is_initialized() and self.norm_hidden._is_initialized()):
            h = F.relu(self.norm_in(self.conv_in(x))[0])
            return F.relu(self.norm_hidden(self.conv_hidden(h))[0])
        h = F.conv2d(x, _fold_actnorm(self.conv_in.weight, self.norm_in), self.norm_in.bias.flatten(), padding=1)
        h = F.relu(h, inplace=True)
        h = F.conv2d(h, _fold_actnorm(self.conv_hidden.weight, self.norm_hidden), self.norm_hidden.bias.flatten())
        return F.relu(h, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.hidden(x))


def _fold_actnorm(weight: torch.Tensor, norm: ActNorm) -> torch.Tensor:
    """``weight`` of a convolution followed by ``norm``, with ``exp(log_scale)`` folded into its rows."""
    return weight * torch.exp(norm.log_scale).reshape(-1, *([1] * (weight.dim() - 1)))


#: Builds a coupling's network ``NN()``: ``net(in_features, out_features, width) -> nn.Module``.
CouplingNetFactory = Callable[[int, int, int], nn.Module]


class Coupling(nn.Module):
    """Coupling layer (Glow paper Sec. 3.3, Table 1 row 3; NICE for the additive case).

    Channels split into ``x_a`` (first ``C // 2``) and ``x_b`` (the rest); ``x_a`` passes
    unchanged and conditions ``h = NN(x_a)``.

    * ``"affine"``: ``t = h[:, 0::2]``, ``s = sigmoid(h[:, 1::2] + 2)``, ``y_b = (x_b + t) * s``,
      ``logdet = sum log s`` (sigmoid scale instead of the paper's ``exp``: see module docstring).
    * ``"additive"``: ``t = h``, ``y_b = x_b + t``, ``logdet = 0`` (CV-Glow).

    ``net`` builds ``NN()`` from ``(C // 2, channels of h, width)``: Glow's :class:`CouplingNet` on
    images ``[B, C, H, W]`` by default; :class:`ood_core.feature_flow.CouplingMLP` on vectors ``[B, D]``
    (the same coupling, with the log-det summed over every non-batch dimension).
    """

    def __init__(self, num_channels: int, width: int, coupling: str = "affine",
                 net: CouplingNetFactory | None = None) -> None:
        super().__init__()
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
        if num_channels < 2:
            raise ValueError(f"a coupling needs at least 2 channels, got {num_channels}")
        self.coupling = coupling
        self.num_a = num_channels // 2
        num_b = num_channels - self.num_a
        out_channels = 2 * num_b if coupling == "affine" else num_b
        self.net = (net or CouplingNet)(self.num_a, out_channels, width)

    def _shift_and_log_scale(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.net(x_a)
        if self.coupling == "additive":
            return h, None
        return h[:, 0::2], F.logsigmoid(h[:, 1::2] + 2.0)

    def couple(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``forward`` with the log-det ``None`` (not a zero tensor) for the additive coupling."""
        # split (not two slices): its backward is one concatenation, not two zero-filled copies
        x_a, x_b = x.split([self.num_a, x.shape[1] - self.num_a], dim=1)
        shift, log_scale = self._shift_and_log_scale(x_a)
        if log_scale is None:
            return torch.cat([x_a, x_b + shift], dim=1), None
        y_b = (x_b + shift) * torch.exp(log_scale)
        # sum over the dimensions, not flatten(1).sum(1): no copy of a channels-last tensor
        return torch.cat([x_a, y_b], dim=1), log_scale.sum(dim=tuple(range(1, log_scale.dim())))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, logdet = self.couple(x)
        return y, _batch_zeros(x) if logdet is None else logdet

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_a, z_b = z[:, : self.num_a], z[:, self.num_a :]
        shift, log_scale = self._shift_and_log_scale(z_a)
        if log_scale is None:
            return torch.cat([z_a, z_b - shift], dim=1), _batch_zeros(z)
        x_b = z_b * torch.exp(-log_scale) - shift
        return torch.cat([z_a, x_b], dim=1), -log_scale.flatten(1).sum(1)


class Squeeze(nn.Module):
    """Space-to-depth ``[B, C, H, W] -> [B, 4C, H/2, W/2]`` (RealNVP/Glow squeeze), logdet 0.

    Output channel ``4c + 2i + j`` holds input channel ``c`` at offset ``(i, j)`` of each 2x2
    block, the ordering of the official code's ``squeeze2d``.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs even height and width, got {h}x{w}")
        z = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return z.reshape(b, 4 * c, h // 2, w // 2), _batch_zeros(x)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c4, h2, w2 = z.shape
        if c4 % 4:
            raise ValueError(f"Squeeze.inverse needs channels divisible by 4, got {c4}")
        c = c4 // 4
        x = z.view(b, c, 2, 2, h2, w2).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c, 2 * h2, 2 * w2), _batch_zeros(z)


def _squeeze_channels_last(x: torch.Tensor) -> torch.Tensor:
    """:class:`Squeeze`'s output (same values and channel order ``4c + 2i + j``) in channels-last memory.

    One copy from any input layout. The flow's convolutions (oneDNN on CPU) run on channels-last
    tensors without converting them to and from their blocked layout at every call, which is
    most of the cost of the small-channel convolutions of a Glow; the rest of the flow is
    elementwise and layout-agnostic.
    """
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"Squeeze needs even height and width, got {h}x{w}")
    blocks = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)  # [b, h/2, w/2, c, i, j]
    return blocks.contiguous().view(b, h // 2, w // 2, 4 * c).permute(0, 3, 1, 2)


class Split(nn.Module):
    """Factor out half of the channels (multi-scale architecture; official ``split2d``).

    ``forward(x) -> ((kept, z), 0)``: ``kept`` = first ``C - C // 2`` channels continue through
    the flow, ``z`` = the last ``C // 2`` channels become a latent. Splitting is a coordinate
    projection, so ``logdet = 0``; the density of ``z`` is accounted for by :meth:`log_prob`:
    ``log p(z | kept) = log N(z; mean(kept), exp(log_std(kept))^2)`` with
    ``(mean, log_std) = ZeroConv2d(kept)`` interleaved as channels ``0::2`` / ``1::2``
    (``learn_prior=True``), or ``N(0, I)`` (``learn_prior=False``).
    """

    def __init__(self, num_channels: int, learn_prior: bool = True) -> None:
        super().__init__()
        if num_channels < 2:
            raise ValueError(f"Split needs at least 2 channels, got {num_channels}")
        self.num_out = num_channels // 2
        self.num_kept = num_channels - self.num_out
        self.prior = ZeroConv2d(self.num_kept, 2 * self.num_out) if learn_prior else None

    def prior_params(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-std of ``p(z | kept)``, each shaped like ``z``."""
        if self.prior is None:
            shape = (kept.shape[0], self.num_out, kept.shape[2], kept.shape[3])
            zeros = kept.new_zeros(shape)
            return zeros, zeros
        h = self.prior(kept)
        return h[:, 0::2], h[:, 1::2]

    def log_prob(self, kept: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.prior_params(kept)
        return gaussian_log_prob(z, mean, log_std)

    def sample(
        self, kept: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        mean, log_std = self.prior_params(kept)
        eps = _randn_like(mean, generator)
        return mean + temperature * torch.exp(log_std) * eps

    def forward(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        kept, z = x[:, : self.num_kept], x[:, self.num_kept :]
        return (kept, z), _batch_zeros(x)

    def inverse(
        self, kept_and_z: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        kept, z = kept_and_z
        return torch.cat([kept, z], dim=1), _batch_zeros(kept)


class FlowStep(nn.Module):
    """One step of flow (Glow paper Fig. 2a): ActNorm -> invertible 1x1 conv -> coupling."""

    def __init__(self, num_channels: int, width: int, coupling: str = "affine", lu: bool = True):
        super().__init__()
        self.actnorm = ActNorm(num_channels)
        self.invconv = InvConv1x1(num_channels, lu=lu)
        self.coupling = Coupling(num_channels, width, coupling)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``coupling(invconv(actnorm(x)))``; log-det the sum of the three.

        Once the ActNorm is initialised, ActNorm and 1x1 convolution run as one 1x1 convolution:
        ``W (x e^s + b) = (W diag(e^s)) x + W b``, with the log-det ``H W (sum s + log|det W|)``
        computed once as a scalar (the same function; one pass over the activations instead of
        three, in both directions of autograd).
        """
        if not self.actnorm._is_initialized():
            logdet = _batch_zeros(x)
            for layer in (self.actnorm, self.invconv, self.coupling):
                x, ld = layer(x)
                logdet = logdet + ld
            return x, logdet
        channels = self.invconv.num_channels
        w = self.invconv.weight()
        weight = w * torch.exp(self.actnorm.log_scale).reshape(1, channels)
        bias = w @ self.actnorm.bias.reshape(channels)
        h = F.conv2d(x, weight.view(channels, channels, 1, 1), bias)
        volume = x.shape[2] * x.shape[3] * (self.actnorm.log_scale.sum() + self.invconv._log_abs_det())
        h, coupling_logdet = self.coupling.couple(h)
        if coupling_logdet is None:
            return h, _per_example(volume, x)
        return h, coupling_logdet + volume

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = _batch_zeros(z)
        for layer in (self.coupling, self.invconv, self.actnorm):
            z, ld = layer.inverse(z)
            logdet = logdet + ld
        return z, logdet


class _Level(nn.Module):
    """Squeeze -> K flow steps -> (Split, unless this is the top level)."""

    def __init__(self, in_channels: int, config: GlowConfig, is_top: bool) -> None:
        super().__init__()
        channels = 4 * in_channels
        self.squeeze = Squeeze()
        self.steps = nn.ModuleList(
            FlowStep(channels, config.width, config.coupling, config.lu)
            for _ in range(config.steps)
        )
        self.split = None if is_top else Split(channels, config.learn_prior)


def _randn_like(reference: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``reference``, drawn on the generator's device."""
    if generator is None:
        return torch.randn_like(reference)
    noise = torch.randn(
        reference.shape, generator=generator, device=generator.device, dtype=reference.dtype
    )
    return noise.to(reference.device)


# --------------------------------------------------------------------------------------------
# Glow
# --------------------------------------------------------------------------------------------


class Glow(nn.Module):
    """Multi-scale Glow (Glow paper Fig. 2b) with the priors Nalisnick et al. use.

    ``forward(x) -> (zs, logdet)``: ``zs`` lists the split latents level by level, then the top
    latent last; ``logdet = log|det dz/dx|`` of the whole flow (``[B]``, nats), where ``z`` is
    the concatenation of all latents. ``log p(x) = log_pz + logdet`` (change of variables,
    Nalisnick et al. eq. 1) with ``log_pz`` the sum of the prior log-densities of all latents.

    Training note: use a learning-rate warm-up, as the official code does. Right after the
    data-dependent initialisation, a single Adamax step at lr 1e-3 moves every weight of the
    zero-initialised coupling outputs by the full learning rate at once, and on the CIFAR-10
    configuration (L=3, K=32, width 512) this sent the top latent to ~1e7 (then inf), while
    steps at 1e-5 were stable.
    """

    def __init__(self, config: GlowConfig) -> None:
        super().__init__()
        if not isinstance(config, GlowConfig):
            raise TypeError(
                f"Glow takes a GlowConfig, got {type(config).__name__}; "
                "use build_glow(dict) to build from a dict"
            )
        self.config = config
        channels, height, width = config.image_shape
        levels = []
        for index in range(config.levels):
            is_top = index == config.levels - 1
            levels.append(_Level(channels, config, is_top))
            channels = 4 * channels if is_top else 4 * channels - (4 * channels) // 2
        self.levels = nn.ModuleList(levels)
        self._latent_shapes = self._compute_latent_shapes()
        top_channels = self._latent_shapes[-1][0]
        if config.learn_prior:
            self.top_mean = nn.Parameter(torch.zeros(1, top_channels, 1, 1))
            self.top_log_std = nn.Parameter(torch.zeros(1, top_channels, 1, 1))
        else:
            self.top_mean = None
            self.top_log_std = None

    @classmethod
    def from_config_dict(cls, d: Mapping[str, Any]) -> "Glow":
        """Build from the JSON-friendly dict of :meth:`GlowConfig.to_dict`."""
        return cls(GlowConfig.from_dict(d))

    # -- shapes -------------------------------------------------------------------------------

    def _compute_latent_shapes(self) -> list[tuple[int, int, int]]:
        channels, height, width = self.config.image_shape
        shapes = []
        for level in self.levels:
            channels, height, width = 4 * channels, height // 2, width // 2
            if level.split is not None:
                shapes.append((level.split.num_out, height, width))
                channels = level.split.num_kept
        shapes.append((channels, height, width))
        return shapes

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """``(C, H, W)`` of each latent in the order ``forward`` returns them."""
        return list(self._latent_shapes)

    @property
    def num_dims(self) -> int:
        return self.config.num_dims

    def invconv_weights(self) -> list[torch.Tensor]:
        """The ``[C, C]`` 1x1-conv matrices ``W`` in order (level, step), with gradient.

        Used by Nalisnick et al.'s second-order analysis of CV-Glow (Sec. 5, their ``u_k``).
        """
        return [step.invconv.weight() for level in self.levels for step in level.steps]

    # -- density direction --------------------------------------------------------------------

    def _top_prior_params(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.top_mean is None:
            zeros = torch.zeros_like(like)
            return zeros, zeros
        return self.top_mean.expand_as(like), self.top_log_std.expand_as(like)

    def walk(self, x: torch.Tensor) -> Iterator[LevelOutput]:
        """The density direction level by level: squeeze, the level's flow steps, then its split.

        Yields a :class:`LevelOutput` after each level (the finest first; the last one carries the
        top latent as ``h``), computed lazily: stopping early runs only the levels taken. The
        priors are not evaluated (``level.split.prior_params(h)`` / :meth:`_top_prior_params` give
        them). ``x`` is in the model input space, ``[B, C, H, W]``; the values are those of
        :meth:`forward`.
        """
        return self._walk(x, terms=None, fast=False)

    def _walk(self, x: torch.Tensor, terms: list[FlowTerm] | None, fast: bool) -> Iterator[LevelOutput]:
        """:meth:`walk`; ``fast`` squeezes into the channels-last layout of the convolutions (the same
        values), ``terms``, when a list, runs each step's three layers one by one and collects their
        log-dets as :class:`FlowTerm` s."""
        expected = self.config.image_shape
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"Glow expects input of shape [B, {expected}], got {tuple(x.shape)}")
        logdet = _batch_zeros(x)
        h = x
        for index, level in enumerate(self.levels):
            if fast:
                h = _squeeze_channels_last(h)  # Squeeze's values, laid out for the convolutions
            else:
                h, ld = level.squeeze(h)
                logdet = logdet + ld
            for step_index, step in enumerate(level.steps):
                if terms is None:
                    h, ld = step(h)
                else:  # the same three layers as FlowStep.forward, their log-dets kept apart
                    ld = _batch_zeros(h)
                    for kind, layer in zip(LAYER_TERMS, (step.actnorm, step.invconv, step.coupling)):
                        h, layer_ld = layer(h)
                        terms.append(FlowTerm(index, step_index, kind, layer_ld))
                        ld = ld + layer_ld
                logdet = logdet + ld
            z = None
            if level.split is not None:
                (h, z), ld = level.split(h)
                logdet = logdet + ld
            yield LevelOutput(index, level, h, z, logdet)

    def _encode(
        self, x: torch.Tensor, with_prior: bool, terms: list[FlowTerm] | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Latents, log-det and (``with_prior``) ``log_pz``; ``terms``, when a list, collects every
        :class:`FlowTerm` (layer log-dets one by one; prior parts with ``with_prior``)."""
        log_pz = _batch_zeros(x) if with_prior else None
        zs = []
        for out in self._walk(x, terms=terms, fast=terms is None):
            if out.z is not None:
                zs.append(out.z)
                if with_prior:
                    log_pz = log_pz + out.level.split.log_prob(out.h, out.z)
                    if terms is not None:
                        parts = _gaussian_terms(out.z, *out.level.split.prior_params(out.h))
                        terms.extend(FlowTerm(out.index, None, k, v) for k, v in zip(PRIOR_TERMS, parts))
        h, logdet = out.h, out.logdet
        zs.append(h)
        if with_prior:
            mean, log_std = self._top_prior_params(h)
            log_pz = log_pz + gaussian_log_prob(h, mean, log_std)
            if terms is not None:
                parts = _gaussian_terms(h, mean, log_std)
                terms.extend(FlowTerm(len(self.levels) - 1, None, k, v) for k, v in zip(PRIOR_TERMS, parts))
        return zs, logdet, log_pz

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        zs, logdet, _ = self._encode(x, with_prior=False)
        return [z.contiguous() for z in zs], logdet

    def log_prob_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_pz, logdet)`` in nats, each ``[B]``, for ``x`` in the model input space.

        ``log_pz`` sums the prior log-densities of all latents (split latents under their
        conditional priors); ``logdet = log|det dz/dx|`` excludes any preprocessing.
        """
        _, logdet, log_pz = self._encode(x, with_prior=True)
        return log_pz, logdet

    def log_prob_terms(self, x: torch.Tensor) -> list[FlowTerm]:
        """Every additive term of ``log p(x)`` (nats, ``[B]`` each), for ``x`` in the model input space.

        Per level (0-based), in the order of the forward pass: the log-det of each flow step's
        ActNorm, 1x1 conv and coupling (kinds :data:`LAYER_TERMS`, with the step index), then
        the level's prior split into :data:`PRIOR_TERMS`::

            log N(z; m, s^2) = sum [-1/2 log(2 pi)] + sum [-log s] + sum [-1/2 ((z - m) / s)^2]

        (the split latent under its conditional prior; the top latent under the top prior, as the
        last level's terms). Squeeze and split have log-det 0 and are left out. The log-dets sum
        to ``forward``'s ``logdet``, the prior terms to ``log_pz``, all of them to
        :meth:`log_prob` (up to the order of floating-point additions).
        """
        terms: list[FlowTerm] = []
        self._encode(x, with_prior=True, terms=terms)
        return terms

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x) = log_pz + logdet`` in nats, ``[B]`` (density in the model input space)."""
        log_pz, logdet = self.log_prob_parts(x)
        return log_pz + logdet

    # -- generative direction -----------------------------------------------------------------

    def _decode(
        self,
        zs: Sequence[torch.Tensor | None],
        temperature: float,
        generator: torch.Generator | None,
        reference: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Invert the flow; latents given as ``None`` are sampled from their prior."""
        top = zs[-1]
        if top is None:
            top_shape = (reference.shape[0], *self._latent_shapes[-1])
            like = reference.new_zeros(top_shape)
            mean, log_std = self._top_prior_params(like)
            top = mean + temperature * torch.exp(log_std) * _randn_like(like, generator)
        h = top
        logdet = _batch_zeros(h)
        for index in reversed(range(len(self.levels))):
            level = self.levels[index]
            if level.split is not None:
                z = zs[index]
                if z is None:
                    z = level.split.sample(h, temperature, generator)
                h, ld = level.split.inverse((h, z))
                logdet = logdet + ld
            for step in reversed(level.steps):
                h, ld = step.inverse(h)
                logdet = logdet + ld
            h, ld = level.squeeze.inverse(h)
            logdet = logdet + ld
        return h, logdet

    def inverse(self, zs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, logdet)`` with ``logdet = log|det dx/dz| = -forward logdet``, ``[B]``."""
        if len(zs) != len(self._latent_shapes):
            raise ValueError(
                f"Glow.inverse expects {len(self._latent_shapes)} latents, got {len(zs)}"
            )
        for z, shape in zip(zs, self._latent_shapes):
            if tuple(z.shape[1:]) != shape:
                got = [tuple(z.shape[1:]) for z in zs]
                raise ValueError(f"latent shapes {got} != expected {self._latent_shapes}")
        return self._decode(list(zs), 1.0, None, zs[-1])

    def decode(
        self,
        zs: Sequence[torch.Tensor | None],
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Images ``[B, C, H, W]`` (model input space) from latents, some of which may be ``None``.

        ``zs`` is ordered as :meth:`forward` returns them (one per level, the top latent last);
        a ``None`` entry is drawn from its prior, top-down, as ``mean + temperature * std * eps``
        (``temperature=0``: the prior mean), conditioned on the latents above it. With no
        ``None`` entry this is :meth:`inverse` without the log-det. At least one latent must be
        given (it fixes the batch size, device and dtype).
        """
        if len(zs) != len(self._latent_shapes):
            raise ValueError(f"Glow.decode expects {len(self._latent_shapes)} latents (None to sample), got {len(zs)}")
        given = [z for z in zs if z is not None]
        if not given:
            raise ValueError("Glow.decode needs at least one latent; use Glow.sample to sample all of them")
        for z, shape in zip(zs, self._latent_shapes):
            if z is not None and (z.dim() != 4 or tuple(z.shape[1:]) != shape):
                raise ValueError(f"latent shaped {tuple(z.shape)} where [B, {shape}] is expected")
        x, _ = self._decode(list(zs), temperature, generator, given[0].new_zeros(given[0].shape[0]))
        return x

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw ``n`` images in the model input space (``~[-0.5, 0.5]``), ``[n, C, H, W]``.

        Each latent is ``mean + temperature * std * eps`` under its (conditional) prior, sampled
        top-down (Glow paper Sec. 5, "temperature"). ``generator`` may live on any device;
        noise is drawn there and moved to the model's device.
        """
        if not all(m._is_initialized() for m in self.modules() if isinstance(m, ActNorm)):
            logger.warning("sampling from a Glow whose ActNorm layers were never initialised")
        reference = next(self.parameters())
        reference = reference.new_zeros(n)
        x, _ = self._decode([None] * len(self._latent_shapes), temperature, generator, reference)
        return x


def build_glow(d: Mapping[str, Any]) -> Glow:
    """Build a :class:`Glow` from a :meth:`GlowConfig.to_dict` dict (e.g. a saved JSON)."""
    return Glow.from_config_dict(d)


def initialize_actnorm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Data-dependent ActNorm initialisation: one ``model(x)`` pass under ``torch.no_grad()``.

    Run it on a batch before wrapping the model in DDP (otherwise each rank would initialise
    from its own shard). ActNorm layers that are already initialised (e.g. loaded from a
    checkpoint) are left untouched. Returns ``model``.
    """
    actnorms = [m for m in model.modules() if isinstance(m, ActNorm)]
    pending = sum(not m._is_initialized() for m in actnorms)
    if pending == 0:
        logger.warning("initialize_actnorm: all %d ActNorm layers already initialised",
                       len(actnorms))
        return model
    with torch.no_grad():
        model(x)
    still = sum(not m._is_initialized() for m in actnorms)
    if still:
        raise RuntimeError(f"{still} ActNorm layers were not reached by the forward pass")
    logger.info("initialised %d ActNorm layers on a batch of %d", pending, x.shape[0])
    return model

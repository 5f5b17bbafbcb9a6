"""Image classifiers with a features/head split, so activation shaping composes from outside.

The contract every classifier here follows:

* ``features(x, shaping=None) -> [B, D]``: the penultimate activations after global average
  pooling. ``x`` is a float image in [0, 1], ``[B, C, H, W]``; normalisation by the ``mean`` /
  ``std`` buffers is the first operation, so ID and OOD data are always treated alike.
* ``head(f) -> [B, K]`` logits; the final layer is the ``nn.Linear`` attribute ``fc`` (DICE reads
  ``fc.weight`` and ``fc.bias``).
* ``forward(x) = head(features(x))``; nothing else ever changes what ``forward`` returns.
* ``stages``: the names of the points where activations can be shaped, in network order, ending
  with ``"penultimate"`` (the pooled ``[B, D]`` vector, where ASH applies).
  ``shaping = {stage: callable}`` passed to ``features`` replaces that stage's output ``h`` by
  ``callable(h)``; 4-D stages hand the callable a ``[B, C, H, W]`` map. For example
  ``model.head(model.features(x, shaping={"penultimate": make_shaper("ash_s", 95)}))``.

Architectures (``ClassifierConfig.arch``):

* ``"resnet18_cifar"`` -- :class:`ResNet18Cifar`, the CIFAR ResNet-18 of OpenOOD: 3x3 stem,
  no max-pool, BasicBlocks [2, 2, 2, 2] with widths w, 2w, 4w, 8w (He et al. 2016).
* ``"densenet_bc100"`` -- :class:`DenseNetBC100`, DenseNet-BC (Huang et al. 2017) with depth 100,
  growth 12, compression 0.5 and bottlenecks: 342 penultimate features, the network ASH,
  ReAct and DICE use on CIFAR (the ASH paper calls it DenseNet-101).
* ``"resnet_cifar"`` -- :class:`ResNetCifar`, He et al.'s CIFAR ResNet-(6n+2) (ResNet-20/32/44/56):
  16-32-64 channels, option-A (parameter-free, zero-padded) shortcuts, ``D = 64 * width / 16``.
* ``"small_cnn"`` -- :class:`SmallCNN`, three conv blocks for 28x28 grayscale images.
* ``"airbench"`` -- :class:`AirbenchNet`, the fast-training CIFAR network of Jordan's airbench
  (patch-whitening first layer, three conv groups of widths w, 4w, 4w): about 90 % CIFAR-10 test
  accuracy in minutes on two CPU cores at ``w = 32``.
* ``"torchvision:<name>"`` -- :class:`TorchvisionClassifier` around a ``torchvision.models``
  network (ResNet family and MobileNetV2), never downloading weights.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AirbenchNet",
    "ClassifierConfig",
    "DenseNetBC100",
    "ResNet18Cifar",
    "ResNetCifar",
    "ShapeableClassifier",
    "SmallCNN",
    "TorchvisionClassifier",
    "build_classifier",
]

# The CIFAR statistics the ASH code normalises with (std values as in its transforms).
CIFAR_MEAN: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
CIFAR_STD: tuple[float, ...] = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)

_OWN_ARCHS = ("resnet18_cifar", "resnet_cifar", "densenet_bc100", "small_cnn", "airbench")
_TORCHVISION_PREFIX = "torchvision:"

Shaping = Mapping[str, Callable[[Tensor], Tensor]]


class ShapeableClassifier(nn.Module):
    """Base class: normalisation buffers, the shaping hook and ``forward = head(features(x))``.

    Subclasses set ``stages``, ``fc`` and implement ``features``.
    """

    stages: tuple[str, ...] = ()
    fc: nn.Linear

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have one value per channel; got {mean}, {std}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be > 0; got {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def feature_dim(self) -> int:
        """``D``, the size of the penultimate feature vector."""
        return self.fc.in_features

    def normalise(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` per channel; ``x`` must be a float image in [0, 1]."""
        if not x.is_floating_point():
            raise TypeError(
                f"classifiers take float images in [0, 1]; got dtype {x.dtype} "
                "(convert uint8 with x.float() / 255)"
            )
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"expected images shaped [B, {self.mean.shape[1]}, H, W]; got {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std

    def _check_shaping(self, shaping: Shaping | None) -> Shaping:
        if not shaping:
            return {}
        unknown = set(shaping) - set(self.stages)
        if unknown:
            raise ValueError(f"unknown shaping stage(s) {sorted(unknown)}; this model has {self.stages}")
        return shaping

    @staticmethod
    def _shape(name: str, h: Tensor, shaping: Shaping) -> Tensor:
        fn = shaping.get(name)
        return h if fn is None else fn(h)

    def _pool(self, h: Tensor, shaping: Shaping) -> Tensor:
        return self._shape("penultimate", F.adaptive_avg_pool2d(h, 1).flatten(1), shaping)

    def features(self, x: Tensor, shaping: Shaping | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def initialize_from_data(self, x: Tensor) -> None:
        """Data-dependent initialisation from training images ``x`` (float, [0, 1]); none by default.

        Called once, before the first update of a fresh training run (never on resume); what it
        sets must live in parameters or buffers so that it survives ``state_dict``.
        """

    def head(self, f: Tensor) -> Tensor:
        """Logits from penultimate features: ``fc(f)``."""
        return self.fc(f)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


# ------------------------------------------------------------------------------- ResNet-18


class _BasicBlock(nn.Module):
    """Conv3x3-BN-ReLU-Conv3x3-BN plus the shortcut, then ReLU (He et al. 2016).

    Where the shape changes, the shortcut is a 1x1 convolution with BN (``"projection"``, ResNet-18)
    or He et al.'s parameter-free option A (``"zero_pad"``: subsample, zero channels on both sides).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str = "projection") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "zero_pad":
            self.shortcut = _ShortcutA(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _ShortcutA(nn.Module):
    """He et al.'s option-A shortcut: stride-2 subsampling and zero channels on both sides."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, out_channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


def _resnet_stages(model: nn.Module, width: int, strides: tuple[int, ...], blocks: int, shortcut: str) -> int:
    """Add ``layer1..layerN`` (``blocks`` BasicBlocks each, widths ``width * 2^i``) to ``model``; the last width."""
    in_width = width
    for index, stride in enumerate(strides, start=1):
        out_width = width * 2 ** (index - 1)
        layer = [_BasicBlock(in_width, out_width, stride, shortcut)]
        layer += [_BasicBlock(out_width, out_width, 1, shortcut) for _ in range(blocks - 1)]
        model.add_module(f"layer{index}", nn.Sequential(*layer))
        in_width = out_width
    return in_width


def _resnet_features(model: ShapeableClassifier, x: Tensor, shaping: Shaping | None) -> Tensor:
    """Stem, the ``layer*`` stages (each a shaping point) and the pooled penultimate vector."""
    shaping = model._check_shaping(shaping)
    h = F.relu(model.bn1(model.conv1(model.normalise(x))))
    for name in model.stages[:-1]:
        h = model._shape(name, getattr(model, name)(h), shaping)
    return model._pool(h, shaping)


class ResNet18Cifar(ShapeableClassifier):
    """ResNet-18 for 32x32 inputs (OpenOOD's ``ResNet18_32x32``): 3x3 stride-1 stem, no max-pool.

    Four stages of two BasicBlocks with widths ``w, 2w, 4w, 8w`` (strides 1, 2, 2, 2), global
    average pooling and a linear head; ``D = 8w`` (512 at the usual ``w = 64``). Stages
    ``layer1..layer4`` are the (post-ReLU) block outputs.
    """

    stages = ("layer1", "layer2", "layer3", "layer4", "penultimate")

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        mean: tuple[float, ...] = CIFAR_MEAN,
        std: tuple[float, ...] = CIFAR_STD,
    ) -> None:
        super().__init__(mean, std)
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(_resnet_stages(self, width, (1, 2, 2, 2), 2, "projection"), num_classes)

    def features(self, x: Tensor, shaping: Shaping | None = None) -> Tensor:
        return _resnet_features(self, x, shaping)


# ------------------------------------------------------------------- He et al.'s CIFAR ResNet


class ResNetCifar(ShapeableClassifier):
    """He et al.'s (2016, section 4.2) CIFAR ResNet of depth ``6n + 2``: ResNet-20, -32, -44, -56, -110.

    A 3x3 stem to ``w`` channels, three stages of ``n`` BasicBlocks with ``w, 2w, 4w`` channels
    (strides 1, 2, 2), option-A shortcuts (subsample and zero-pad the channels: no parameters),
    global average pooling and a linear head; ``D = 4w`` (64 at the paper's ``w = 16``). This is
    the network of widely used public CIFAR-10 checkpoints (e.g. ``pytorch_resnet_cifar10``), so
    ASH can be run on networks this project did not train. Stages ``layer1..layer3`` are the
    (post-ReLU) stage outputs.
    """

    stages = ("layer1", "layer2", "layer3", "penultimate")

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        depth: int = 20,
        mean: tuple[float, ...] = CIFAR_MEAN,
        std: tuple[float, ...] = CIFAR_STD,
    ) -> None:
        super().__init__(mean, std)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110); got {depth}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(_resnet_stages(self, width, (1, 2, 2), (depth - 2) // 6, "zero_pad"), num_classes)
        for module in self.modules():  # He et al.'s initialisation, as in the public CIFAR ResNets
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def features(self, x: Tensor, shaping: Shaping | None = None) -> Tensor:
        return _resnet_features(self, x, shaping)


# ---------------------------------------------------------------------------- DenseNet-BC


class _Bottleneck(nn.Module):
    """BN-ReLU-Conv1x1(4g)-BN-ReLU-Conv3x3(g), output concatenated to the input."""

    def __init__(self, in_channels: int, growth_rate: int) -> None:
        super().__init__()
        inner = 4 * growth_rate
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, growth_rate, 3, 1, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], dim=1)


class _Transition(nn.Module):
    """BN-ReLU-Conv1x1 (compression) then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNetBC100(ShapeableClassifier):
    """DenseNet-BC for CIFAR (Huang et al. 2017), as in the ODIN/ReAct/DICE/ASH code.

    A 3x3 stem to ``2g`` channels, three dense blocks of ``(depth - 4) / 6`` bottleneck layers
    (16 at depth 100), transitions with compression 0.5, a final BN-ReLU, global average
    pooling and a linear head. Channels at depth 100, growth 12: 24 -> 216 -> 108 -> 300 -> 150
    -> 342, so ``D = 342``. No dropout (the reference runs use drop rate 0).

    Stages name the activations handed to the next part of the network: ``block1`` and
    ``block2`` after the first and second transitions, ``block3`` after the final BN-ReLU (the
    map that is pooled), then ``penultimate``. ``depth`` is exposed for small test networks.
    """

    stages = ("block1", "block2", "block3", "penultimate")

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        growth_rate: int = 12,
        depth: int = 100,
        compression: float = 0.5,
        mean: tuple[float, ...] = CIFAR_MEAN,
        std: tuple[float, ...] = CIFAR_STD,
    ) -> None:
        super().__init__(mean, std)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"DenseNet-BC depth must be 6n + 4 with n >= 1; got {depth}")
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1]; got {compression}")
        layers_per_block = (depth - 4) // 6
        channels = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False)
        for index in (1, 2, 3):
            block = []
            for _ in range(layers_per_block):
                block.append(_Bottleneck(channels, growth_rate))
                channels += growth_rate
            self.add_module(f"dense{index}", nn.Sequential(*block))
            if index < 3:
                out_channels = int(channels * compression)
                self.add_module(f"trans{index}", _Transition(channels, out_channels))
                channels = out_channels
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def features(self, x: Tensor, shaping: Shaping | None = None) -> Tensor:
        shaping = self._check_shaping(shaping)
        h = self.conv1(self.normalise(x))
        h = self._shape("block1", self.trans1(self.dense1(h)), shaping)
        h = self._shape("block2", self.trans2(self.dense2(h)), shaping)
        h = self._shape("block3", F.relu(self.bn(self.dense3(h))), shaping)
        return self._pool(h, shaping)


# ------------------------------------------------------------------------------- Airbench


class _ConvGroup(nn.Module):
    """Conv3x3 - MaxPool2 - BN - ReLU - Conv3x3 - BN - ReLU, identity-initialised convolutions.

    The first ``min(in, out)`` filters of each convolution start as the identity (Dirac) kernel,
    so at initialisation the group passes its input through (an implicit residual; airbench).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        for conv in (self.conv1, self.conv2):
            weight = conv.weight.data
            nn.init.dirac_(weight[: min(weight.shape[0], weight.shape[1])])

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(F.max_pool2d(self.conv1(x), 2)))
        return F.relu(self.bn2(self.conv2(h)))


class AirbenchNet(ShapeableClassifier):
    """The fast CIFAR-10 network of Jordan's airbench (2024, arXiv:2404.00498), for ASH.

    After normalisation, a fixed 2x2 *patch-whitening* convolution (Page 2018; hlb-CIFAR10):
    with ``Sigma = E[p p^T]`` the covariance of the ``P = C * 4`` values of 2x2 patches ``p`` of
    normalised training images and ``Sigma = V diag(lambda) V^T``, the filters are the rows of
    ``W = diag(lambda + eps)^(-1/2) V^T`` and their negatives (``2P`` channels, so the ReLU that
    follows keeps both signs), plus a learned bias. Then three groups Conv3x3 - MaxPool2 - BN -
    ReLU - Conv3x3 - BN - ReLU of widths ``w, 4w, 4w`` (32 -> 31 -> 15 -> 7 -> 3 pixels), global
    average pooling and a linear head: ``D = 4w`` (128 at ``w = 32``).

    The whitening filters are a buffer set by :meth:`initialize_from_data` (the trainer calls it
    on a fresh run); before that they are the identity basis ``[I; -I]`` (whitening for
    ``Sigma = I``), so an unfitted network still trains.

    Departures from airbench94, chosen for activation shaping and this library: ReLU instead of
    GELU and global *average* pooling instead of a 3x3 max-pool, so the penultimate features are
    non-negative means of post-ReLU maps like ResNet's; affine BatchNorm (airbench fixes the scale
    to 1); a linear head with bias and no 1/9 logit scale (``fc`` is the plain ``nn.Linear`` DICE
    reads); the whitening bias is trained throughout. Stages ``block1..block3`` are the
    (post-ReLU) group outputs.
    """

    stages = ("block1", "block2", "block3", "penultimate")

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 32,
        mean: tuple[float, ...] = CIFAR_MEAN,
        std: tuple[float, ...] = CIFAR_STD,
        patch: int = 2,
        eps: float = 5e-4,
    ) -> None:
        super().__init__(mean, std)
        if eps <= 0:
            raise ValueError(f"eps must be > 0; got {eps}")
        self.patch, self.eps = patch, eps
        n_patch = in_channels * patch * patch
        basis = torch.eye(n_patch).view(n_patch, in_channels, patch, patch)
        self.register_buffer("whiten_weight", torch.cat([basis, -basis]))
        self.whiten_bias = nn.Parameter(torch.zeros(2 * n_patch))
        widths = (width, 4 * width, 4 * width)
        self.block1 = _ConvGroup(2 * n_patch, widths[0])
        self.block2 = _ConvGroup(widths[0], widths[1])
        self.block3 = _ConvGroup(widths[1], widths[2])
        self.fc = nn.Linear(widths[2], num_classes)

    @torch.no_grad()
    def initialize_from_data(self, x: Tensor, chunk: int = 500) -> None:
        """Set the whitening filters from images ``x`` ([0, 1] floats; a few thousand suffice).

        ``Sigma`` is the uncentred second moment of every (stride-1) 2x2 patch of the normalised
        images, accumulated in float64 over chunks of ``chunk`` images.
        """
        n_patch = self.whiten_weight.shape[0] // 2
        second = torch.zeros(n_patch, n_patch, dtype=torch.float64, device=x.device)
        count = 0
        for start in range(0, len(x), chunk):
            h = self.normalise(x[start : start + chunk].float())
            patches = F.unfold(h, self.patch).transpose(1, 2).reshape(-1, n_patch).double()
            second += patches.T @ patches
            count += len(patches)
        if count == 0:
            raise ValueError("initialize_from_data needs at least one image")
        eigenvalues, eigenvectors = torch.linalg.eigh(second / count)
        filters = (eigenvectors / torch.sqrt(eigenvalues + self.eps)).T
        filters = filters.reshape(self.whiten_weight[:n_patch].shape).to(self.whiten_weight)
        self.whiten_weight.copy_(torch.cat([filters, -filters]))

    def features(self, x: Tensor, shaping: Shaping | None = None) -> Tensor:
        shaping = self._check_shaping(shaping)
        h = F.relu(F.conv2d(self.normalise(x), self.whiten_weight, self.whiten_bias))
        for name in ("block1", "block2", "block3"):
            h = self._shape(name, getattr(self, name)(h), shaping)
        return self._pool(h, shaping)


# ------------------------------------------------------------------------------- SmallCNN


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(ShapeableClassifier):
    """A small CNN for 28x28 grayscale images (FashionMNIST/MNIST).

    Three blocks of two 3x3 conv-BN-ReLU layers with widths ``w, 2w, 4w``; 2x2 max-pooling after
    the first two (28 -> 14 -> 7); global average pooling; linear head; ``D = 4w``. Works on any
    input size thanks to the global pooling.
    """

    stages = ("block1", "block2", "block3", "penultimate")

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 32,
        mean: tuple[float, ...] = (0.5,),
        std: tuple[float, ...] = (0.5,),
    ) -> None:
        super().__init__(mean, std)
        widths = (width, 2 * width, 4 * width)
        self.block1 = nn.Sequential(*_conv_bn_relu(in_channels, widths[0]), *_conv_bn_relu(widths[0], widths[0]), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(*_conv_bn_relu(widths[0], widths[1]), *_conv_bn_relu(widths[1], widths[1]), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(*_conv_bn_relu(widths[1], widths[2]), *_conv_bn_relu(widths[2], widths[2]))
        self.fc = nn.Linear(widths[2], num_classes)

    def features(self, x: Tensor, shaping: Shaping | None = None) -> Tensor:
        shaping = self._check_shaping(shaping)
        h = self.normalise(x)
        for name in ("block1", "block2", "block3"):
            h = self._shape(name, getattr(self, name)(h), shaping)
        return self._pool(h, shaping)


# ---------------------------------------------------------------------------- torchvision


_RESNET_PREFIXES = ("resnet", "resnext", "wide_resnet")


class TorchvisionClassifier(ShapeableClassifier):
    """A ``torchvision.models`` network split into ``features`` and ``head``.

    Supported: the ResNet family (``resnet18/34/50/101/152``, ``resnext*``, ``wide_resnet*``;
    stages ``layer1..layer4``) and ``mobilenet_v2`` (stages ``block0..block18``, the children of
    its ``features``). The pooled vector is the penultimate feature (2048 for ResNet-50, 1280 for
    MobileNetV2). MobileNetV2's classifier dropout runs in ``head`` before ``fc``; in eval mode
    ``head(f) == fc(f)``.

    ``weights`` is ``None`` (random initialisation) or the path of a torchvision-format
    ``state_dict`` file, loaded with ``torch.load(weights_only=True)`` into the torchvision
    network before it is split. Named torchvision weights (``"IMAGENET1K_V2"``) are refused:
    they would be downloaded. ``mean``/``std`` default to the ImageNet statistics torchvision's
    pretrained weights expect.
    """

    def __init__(
        self,
        name: str,
        weights: str | os.PathLike[str] | None = None,
        num_classes: int = 1000,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__(mean, std)
        import torchvision

        if name not in torchvision.models.list_models():
            raise ValueError(f"torchvision has no model called {name!r}")
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        if weights is not None:
            if not os.path.isfile(weights):
                raise ValueError(
                    f"weights must be the path of a local state_dict file; {weights!r} is not a "
                    "file (named torchvision weights are refused because they would be downloaded)"
                )
            state = torch.load(weights, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        self.name = name
        if name.startswith(_RESNET_PREFIXES):
            self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
            self.blocks = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
            self.block_names: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
            self.dropout: nn.Module = nn.Identity()
            self.fc = net.fc
        elif name == "mobilenet_v2":
            self.stem = nn.Identity()
            self.blocks = nn.ModuleList(list(net.features.children()))
            self.block_names = tuple(f"block{i}" for i in range(len(self.blocks)))
            self.dropout, self.fc = net.classifier[0], net.classifier[1]
        else:
            raise ValueError(
                f"torchvision model {name!r} is not supported; use the ResNet family "
                "(resnet*, resnext*, wide_resnet*) or mobilenet_v2"
            )
        self.stages = (*self.block_names, "penultimate")

    def features(self, x: Tensor, shaping: Shaping | None = None) -> Tensor:
        shaping = self._check_shaping(shaping)
        h = self.stem(self.normalise(x))
        for name, block in zip(self.block_names, self.blocks):
            h = self._shape(name, block(h), shaping)
        return self._pool(h, shaping)

    def head(self, f: Tensor) -> Tensor:
        """``fc(dropout(f))``; the dropout is the identity in eval mode (and for ResNets)."""
        return self.fc(self.dropout(f))


# --------------------------------------------------------------------------------- config


def _default_stats(arch: str, in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if arch.startswith(_TORCHVISION_PREFIX):
        return IMAGENET_MEAN, IMAGENET_STD
    if in_channels == 3:
        return CIFAR_MEAN, CIFAR_STD
    return (0.5,) * in_channels, (0.5,) * in_channels


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything :func:`build_classifier` needs; saved as JSON next to the weights.

    ``width`` is the ResNet base width (SmallCNN's and AirbenchNet's first width; ignored by
    DenseNet; 16 for He et al.'s ``resnet_cifar``), ``depth`` the ``resnet_cifar`` depth,
    ``growth_rate`` the DenseNet growth rate. ``mean``/``std`` left as ``None`` are filled in at
    construction: the CIFAR statistics of the ASH code for 3-channel inputs, ImageNet statistics
    for ``torchvision:*`` archs, and 0.5 / 0.5 otherwise (e.g. grayscale ``small_cnn``), so the
    stored config always holds concrete tuples.
    """

    arch: str
    num_classes: int = 10
    in_channels: int = 3
    width: int = 64
    growth_rate: int = 12
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # Added after results were committed: in the cache key only when set (artifacts.config_dict).
    depth: int = field(default=20, metadata={"key": "if-set"})  # resnet_cifar only: 6n + 2

    def __post_init__(self) -> None:
        if self.arch not in _OWN_ARCHS and not self.arch.startswith(_TORCHVISION_PREFIX):
            raise ValueError(
                f"unknown arch {self.arch!r}; choose one of {list(_OWN_ARCHS)} or 'torchvision:<name>'"
            )
        for name in ("num_classes", "in_channels", "width", "growth_rate", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        default_mean, default_std = _default_stats(self.arch, self.in_channels)
        mean = default_mean if self.mean is None else tuple(float(v) for v in self.mean)
        std = default_std if self.std is None else tuple(float(v) for v in self.std)
        if len(mean) != self.in_channels or len(std) != self.in_channels:
            raise ValueError(
                f"mean and std need one value per input channel ({self.in_channels}); "
                f"got mean={mean}, std={std}"
            )
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassifierConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ClassifierConfig field(s) {sorted(unknown)}")
        kwargs = dict(data)
        for key in ("mean", "std"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def build_classifier(
    config: ClassifierConfig, weights: str | os.PathLike[str] | None = None
) -> ShapeableClassifier:
    """Build the classifier ``config`` describes, randomly initialised.

    ``weights`` is only for ``torchvision:*`` archs: a torchvision-format ``state_dict`` file
    (see :class:`TorchvisionClassifier`). Our own checkpoints are restored with
    ``model.load_state_dict`` after building.
    """
    mean, std = config.mean, config.std
    if config.arch.startswith(_TORCHVISION_PREFIX):
        if config.in_channels != 3:
            raise ValueError("torchvision classifiers take 3-channel images")
        name = config.arch[len(_TORCHVISION_PREFIX) :]
        return TorchvisionClassifier(name, weights=weights, num_classes=config.num_classes, mean=mean, std=std)
    if weights is not None:
        raise ValueError(
            f"weights= loads torchvision-format files for torchvision:* archs only; for "
            f"{config.arch!r} build the model and call load_state_dict"
        )
    if config.arch == "resnet18_cifar":
        return ResNet18Cifar(config.num_classes, config.in_channels, config.width, mean, std)
    if config.arch == "resnet_cifar":
        return ResNetCifar(config.num_classes, config.in_channels, config.width, config.depth, mean, std)
    if config.arch == "airbench":
        return AirbenchNet(config.num_classes, config.in_channels, config.width, mean, std)
    if config.arch == "densenet_bc100":
        return DenseNetBC100(
            config.num_classes, config.in_channels, config.growth_rate, mean=mean, std=std
        )
    return SmallCNN(config.num_classes, config.in_channels, config.width, mean, std)

"""Classifiers trained elsewhere, loaded for evaluation only: checkpoints from ``../shared/models``.

The ASH chapters compare the networks this project trains with networks it did not train, so
that "ASH works / fails here" can be told apart from "our training makes ASH fail". Each entry of
:data:`CHECKPOINTS` names a file in the models folder (``$OOD_MODELS``, else ``../shared/models``
beside the checkout; layout and provenance in that folder's README), its sha256, the
architecture of :mod:`ood_core.classifiers` it maps onto, the input normalisation it was trained
with, and a *tested* function that renames the publisher's state-dict keys to ours.

Loading never executes code (``torch.load(weights_only=True)``) and checks the sha256 first;
a missing or different file raises :class:`PretrainedError` saying what to do. Nothing here
downloads, and the weights are never copied into the project.

Normalisations: chosen by the CIFAR-10 test accuracy each gives (measured on the first 2,000 test
images, 2026-12-04; the chapters print the accuracy on all 10,000). DenseNet-BC-100: the ASH
code's CIFAR statistics (mean 0.4914, 0.4822, 0.4465; std 0.2023, 0.1994, 0.2010) give 94.60 %,
DICE's loader statistics ``(125.3, 123.0, 113.9) / 255``, ``(63.0, 62.1, 66.7) / 255`` 93.95 %,
ImageNet's 94.20 %. The ``pytorch_resnet_cifar10`` ResNets: the ImageNet statistics of that
repository's trainer.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ood_core.classifiers import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, ClassifierConfig, ShapeableClassifier, build_classifier
from ood_core.data import shared_folder

__all__ = [
    "CHECKPOINTS",
    "MODELS_ENV",
    "Checkpoint",
    "PretrainedError",
    "available",
    "densenet_from_dice",
    "densenet_to_dice",
    "load",
    "models_root",
    "resnet_from_akamaster",
    "resnet_to_akamaster",
]

MODELS_ENV = "OOD_MODELS"

#: DICE's CIFAR loaders: mean (125.3, 123.0, 113.9) / 255, std (63.0, 62.1, 66.7) / 255.
DICE_MEAN: tuple[float, ...] = tuple(v / 255.0 for v in (125.3, 123.0, 113.9))
DICE_STD: tuple[float, ...] = tuple(v / 255.0 for v in (63.0, 62.1, 66.7))


class PretrainedError(RuntimeError):
    """A checkpoint is absent, differs from the published file, or does not fit its architecture."""


# ---------------------------------------------------------------------------- key mappings

_DICE_BLOCK = re.compile(r"^block(\d)\.layer\.(\d+)\.")
_OURS_BLOCK = re.compile(r"^dense(\d)\.(\d+)\.")
_DICE_TRANS = re.compile(r"^trans(\d)\.(bn|conv)1\.")
_OURS_TRANS = re.compile(r"^trans(\d)\.(bn|conv)\.")


def densenet_from_dice(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """DICE/ODIN ``DenseNet3`` keys -> :class:`~ood_core.classifiers.DenseNetBC100` keys.

    ``block{k}.layer.{i}.*`` -> ``dense{k}.{i}.*``; ``trans{k}.bn1/conv1`` -> ``trans{k}.bn/conv``;
    the final ``bn1`` -> ``bn``; ``conv1`` and ``fc`` keep their names. An unknown key is an error.
    """
    out = {}
    for key, value in state.items():
        new = _DICE_BLOCK.sub(r"dense\1.\2.", key)
        new = _DICE_TRANS.sub(r"trans\1.\2.", new)
        if new.startswith("bn1."):
            new = "bn." + new[len("bn1."):]
        if not new.startswith(("conv1.", "dense", "trans", "bn.", "fc.")):
            raise PretrainedError(f"unexpected DenseNet3 state-dict key {key!r}")
        out[new] = value
    return out


def densenet_to_dice(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`densenet_from_dice` (our normalisation buffers are dropped)."""
    out = {}
    for key, value in state.items():
        if key in ("mean", "std"):
            continue
        new = _OURS_BLOCK.sub(r"block\1.layer.\2.", key)
        new = _OURS_TRANS.sub(r"trans\1.\g<2>1.", new)
        if new.startswith("bn."):
            new = "bn1." + new[len("bn."):]
        out[new] = value
    return out


def resnet_from_akamaster(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``pytorch_resnet_cifar10`` keys (saved from DataParallel) -> :class:`~ood_core.classifiers.ResNetCifar`.

    Drops the ``module.`` prefix and renames the head ``linear`` -> ``fc``; the rest matches.
    """
    out = {}
    for key, value in state.items():
        new = key[len("module."):] if key.startswith("module.") else key
        if new.startswith("linear."):
            new = "fc." + new[len("linear."):]
        if not new.startswith(("conv1.", "bn1.", "layer", "fc.")):
            raise PretrainedError(f"unexpected CIFAR ResNet state-dict key {key!r}")
        out[new] = value
    return out


def resnet_to_akamaster(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`resnet_from_akamaster` (with the ``module.`` prefix)."""
    out = {}
    for key, value in state.items():
        if key in ("mean", "std"):
            continue
        new = "linear." + key[len("fc."):] if key.startswith("fc.") else key
        out["module." + new] = value
    return out


# ------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Checkpoint:
    """One published checkpoint: where it lies, what it is, how its keys map onto our network."""

    name: str
    title: str
    path: str  # relative to the models folder
    sha256: str
    config: ClassifierConfig
    remap: Callable[[Mapping[str, Tensor]], dict[str, Tensor]]
    dataset: str
    source: str
    recipe: str  # how it was trained, as its publisher states it
    expected_accuracy: float  # CIFAR-10 test accuracy (%) its publisher reports

    @property
    def label(self) -> str:
        return self.title


CHECKPOINTS: dict[str, Checkpoint] = {c.name: c for c in (
    Checkpoint(
        "densenet_bc100", "DenseNet-BC-100 (DICE/ASH checkpoint)",
        "densenet_bc100_cifar10/checkpoint_100.pth.tar",
        "deaefd082911a1c6c92aacdcfecf03c71b932acc5c08b779c85c44eccdc0c817",
        ClassifierConfig("densenet_bc100", growth_rate=12, mean=CIFAR_MEAN, std=CIFAR_STD),
        densenet_from_dice, "cifar10", "deeplearning-wisc/dice (MIT licence)",
        "100 epochs SGD, the DICE/ReAct/ASH CIFAR-10 network", 94.5),
    Checkpoint(
        "resnet20", "ResNet-20 (He et al., pytorch_resnet_cifar10)",
        "resnet_cifar10_akamaster/resnet20-12fca82f.th",
        "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
        ClassifierConfig("resnet_cifar", width=16, depth=20, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        resnet_from_akamaster, "cifar10", "akamaster/pytorch_resnet_cifar10 (BSD 2-clause)",
        "200 epochs SGD momentum 0.9, lr 0.1 (x0.1 at 100, 150), weight decay 1e-4, batch 128, "
        "crop + flip, no label smoothing", 91.73),
    Checkpoint(
        "resnet56", "ResNet-56 (He et al., pytorch_resnet_cifar10)",
        "resnet_cifar10_akamaster/resnet56-4bfd9763.th",
        "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
        ClassifierConfig("resnet_cifar", width=16, depth=56, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        resnet_from_akamaster, "cifar10", "akamaster/pytorch_resnet_cifar10 (BSD 2-clause)",
        "200 epochs SGD momentum 0.9, lr 0.1 (x0.1 at 100, 150), weight decay 1e-4, batch 128, "
        "crop + flip, no label smoothing", 93.39),
)}


def models_root() -> Path:
    """The models folder: ``$OOD_MODELS`` if set, else ``../shared/models`` beside the checkout."""
    return shared_folder("models", MODELS_ENV)


def checkpoint(name: str) -> Checkpoint:
    try:
        return CHECKPOINTS[name]
    except KeyError:
        raise PretrainedError(f"unknown checkpoint {name!r}; known: {', '.join(CHECKPOINTS)}") from None


def path(name: str, root: Path | str | None = None) -> Path:
    return Path(root if root is not None else models_root()) / checkpoint(name).path


def available(name: str, root: Path | str | None = None) -> bool:
    """True when the checkpoint's file is present (its sha256 is checked by :func:`load`)."""
    return path(name, root).is_file()


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state(name: str, root: Path | str | None = None, verify: bool = True) -> dict[str, Tensor]:
    """The publisher's state dict of ``name``, sha256-checked, loaded without executing code."""
    spec, file = checkpoint(name), path(name, root)
    if not file.is_file():
        raise PretrainedError(
            f"the {spec.title} checkpoint is not at {file}: put the file from {spec.source} there "
            f"(sha256 {spec.sha256}; see shared/models/README.md) or point ${MODELS_ENV} at a folder "
            f"that has '{spec.path}'")
    if verify:
        got = _sha256(file)
        if got != spec.sha256:
            raise PretrainedError(
                f"{file} is not the published {spec.title} checkpoint: sha256 {got}, expected {spec.sha256}. "
                "Replace it with the original file (a re-saved or fine-tuned copy gives other numbers)")
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated zip, a pickle with code in it, ...
        raise PretrainedError(f"{file} could not be read as a weights-only torch checkpoint: {err}") from err
    state = blob.get("state_dict", blob) if isinstance(blob, Mapping) else None
    if not isinstance(state, Mapping):
        raise PretrainedError(f"{file} holds no state dict (got {type(blob).__name__})")
    return dict(state)


def from_state(name: str, state: Mapping[str, Tensor]) -> ShapeableClassifier:
    """Our network for ``name`` with the publisher's ``state`` mapped onto it (strict: every key used)."""
    spec = checkpoint(name)
    model = build_classifier(spec.config)
    mapped = spec.remap(state)
    ours = model.state_dict()
    for key in ours:  # our normalisation buffers; BN step counters that old checkpoints lack (unused in eval)
        if key in ("mean", "std") or key.endswith(".num_batches_tracked"):
            mapped.setdefault(key, ours[key])
    missing, unexpected = sorted(set(ours) - set(mapped)), sorted(set(mapped) - set(ours))
    wrong = sorted(k for k in set(ours) & set(mapped) if ours[k].shape != mapped[k].shape)
    if missing or unexpected or wrong:
        raise PretrainedError(
            f"the {spec.title} state dict does not fit {spec.config.arch}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")
    model.load_state_dict(mapped)
    return model.eval()


def load(name: str, root: Path | str | None = None, device: torch.device | str | None = None) -> ShapeableClassifier:
    """The checkpoint ``name`` of :data:`CHECKPOINTS` as a :class:`~ood_core.classifiers.ShapeableClassifier`
    in eval mode (``features``/``head``/``fc``, shaping stages), ready for every detector."""
    model = from_state(name, load_state(name, root))
    return model.to(device) if device is not None else model

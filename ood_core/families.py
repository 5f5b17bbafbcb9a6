"""Model families: how each kind of model is built, trained, scored and named -- one registry entry each.

A :class:`Family` gathers what :func:`ood_core.experiment.train_or_load` and the evaluations need
from a model family, so that no code above this module branches on a family's name:

* ``config`` and ``build`` -- the model's config class (built from the run's keywords and the
  dataset's image shape) and the model;
* ``training`` -- the training set, loss, batch transform, data-dependent initialisation and the
  curves tracked along training (:class:`Training`);
* ``score`` -- per-example likelihood terms of a uint8 image batch (likelihood families only;
  always ``log_px`` in nats of the discrete image and ``bpd``), cached as ``<name>_scores``;
* ``table_terms`` -- extra per-set columns of the likelihood table (mean of a score term);
* ``label`` -- a one-line description for figures and tables; ``display_name`` -- the family's name for
  a run's model keywords (``"CV-Glow"`` for a Glow with additive coupling: the one place that says so);
* ``model_artifact`` / ``scores_artifact`` -- its artifact kinds (:class:`ood_core.artifacts.Kind`),
  registered into :data:`ood_core.artifacts.KINDS` with the family;
* ``variants``, ``background_role`` and ``benchmark`` -- its likelihood roles in the book's benchmarks
  (``"glow"``, ``"cv_glow"``, ``"background"``): the detectors' role titles
  (:func:`role_titles`), the likelihood ratio's background (:func:`background_role_of`) and the role tables
  of :mod:`ood_core.benchmarks` are derived from them.

Adding a model family is one :func:`register` call (and its tests); nothing else changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from ood_core import data, likelihood, names, units
from ood_core.artifacts import KINDS, Kind
from ood_core.classifiers import build_classifier
from ood_core.flows import Glow, GlowConfig, initialize_actnorm


@dataclass
class Training:
    """What the trainer needs for one run (see :func:`ood_core.train.train`)."""

    dataset: TensorDataset
    n_train: int
    loss: Callable
    evaluators: dict[str, Callable[[nn.Module], float]]
    init_fn: Callable | None = None
    batch_transform: Callable | None = None


@dataclass(frozen=True)
class Benchmark:
    """Where a likelihood family's models come from in the book's benchmarks (:mod:`ood_core.benchmarks`).

    ``unified(profile, dataset) -> (run, n_eval)`` is its model in the unified benchmark; ``seed(profile)``
    its seed-study recipe (retargeted and reseeded by the benchmark; None: not in the seed study);
    ``background(profile, run)`` Ren et al.'s background model of ``run`` in the unified benchmark and
    ``seed_background`` the same in the seed study (default ``background``); None: the family has no
    background role there. ``profile`` is an :class:`ood_core.profiles.Profile`.
    """

    unified: Callable[[Any, str], tuple[Any, int | None]]
    seed: Callable[[Any], Any] | None = None
    background: Callable[[Any, Any], Any] | None = None
    seed_background: Callable[[Any, Any], Any] | None = None


@dataclass(frozen=True)
class Family:
    """One model family (see the module docstring)."""

    name: str
    title: str
    role: str  # "likelihood" (scores images with log p) or "classifier"
    config: Callable[[Any], Any]
    build: Callable[[Any], nn.Module]
    training: Callable[[Any], Training]
    label: Callable[[Any], str]
    score: Callable[[nn.Module, torch.Tensor, Any, int], dict[str, np.ndarray]] | None = None
    table_terms: tuple[tuple[str, str], ...] = ()  # (column, score term) pairs, mean over the set
    scoring_defaults: Mapping[str, Any] = field(default_factory=dict)
    reference: tuple[str, Mapping] | None = None  # (table column, {(dataset, set name): paper value})
    model_artifact: Kind | None = None  # the trained model's artifact kind
    scores_artifact: Kind | None = None  # the per-example scores' artifact kind (likelihood families)
    display_name: Callable[[Mapping[str, Any]], str] | None = None  # model keywords -> name (default: title)
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # more roles: role -> model changes
    background_role: str = ""  # Ren et al.'s background model's role; default "<name>_background"
    benchmark: Benchmark | None = None

    def __post_init__(self):
        if self.is_likelihood and not self.background_role:
            object.__setattr__(self, "background_role", f"{self.name}_background")

    @property
    def is_likelihood(self) -> bool:
        return self.role == "likelihood"

    @property
    def model_kind(self) -> str:
        return self.model_artifact.name if self.model_artifact else ""

    @property
    def scores_kind(self) -> str:
        return self.scores_artifact.name if self.scores_artifact else ""

    @property
    def kinds(self) -> tuple[Kind, ...]:
        return tuple(k for k in (self.model_artifact, self.scores_artifact) if k is not None)

    def name_of(self, model: Mapping[str, Any] | None = None) -> str:
        """The family's name for a run with ``model`` keywords (``"CV-Glow"`` for additive coupling)."""
        return self.display_name(model or {}) if self.display_name else self.title

    @property
    def role_titles(self) -> dict[str, str]:
        """``{likelihood role: title}``: the family's own role (its name) and its variants."""
        if not self.is_likelihood:
            return {}
        return {self.name: self.name_of(), **{role: self.name_of(changes) for role, changes in self.variants.items()}}


# ----------------------------------------------------------------------------- shared pieces

def curve_sets(run) -> dict[str, torch.Tensor]:
    """ID train/test and OOD subsets tracked along training (fixed subsets, seed 1)."""
    shape = data.spec(run.dataset).shape
    sets = {
        names.ID_TRAIN: data.load(run.dataset, "train").subset(run.n_curve, seed=1).x,
        names.ID_TEST: data.load(run.dataset, "test").subset(run.n_curve, seed=1).x,
    }
    ood, _ = data.ood_sets(shape, list(run.curve_sets), n=run.n_curve, seed=1)
    sets.update({s.name: s.x for s in ood.values()})
    return sets


def curve_evaluators(run, mean_bpd: Callable[[nn.Module, torch.Tensor], np.ndarray]) -> dict[str, Callable]:
    """``{"bpd: <set>": model -> mean bits/dim}`` for every curve set of ``run``."""
    return {names.curve_column(name): (lambda m, x=x: float(mean_bpd(m, x).mean()))
            for name, x in curve_sets(run).items()}


def training_images(run) -> data.ImageSet:
    """The ID training images ``run`` trains on: ``n_train`` of the training split, drawn with the training seed.

    :func:`ood_core.experiment.heldout_set` holds out the rest; the likelihood evaluation's "ID train"
    subset is drawn from these images.
    """
    return data.load(run.dataset, "train").subset(run.n_train, seed=run.train.seed)


# ----------------------------------------------------------------------------- Glow / CV-Glow

#: Mean bits/dim of Glow in Nalisnick et al. (2019, arXiv:1810.09136), from their table of Glow
#: log-likelihoods as transcribed in shared/PAPERS.md (CIFAR-10 test corroborated by a second
#: source; the others recalled, not re-checked against the PDF here). Keys: (ID dataset, set).
PAPER_BPD = {
    ("fashion_mnist", "FashionMNIST train"): 2.902,
    ("fashion_mnist", "FashionMNIST test"): 2.958,
    ("fashion_mnist", "MNIST test"): 1.833,
    ("cifar10", "CIFAR-10 train"): 3.386,
    ("cifar10", "CIFAR-10 test"): 3.464,
    ("cifar10", "SVHN test"): 2.389,
}


def glow_loss(model: Glow, batch) -> torch.Tensor:
    """Mean bits/dim of the discrete data for a dequantised batch (``units.continuous_bpd``)."""
    log_pz, logdet = model.log_prob_parts(batch[0])
    return units.continuous_bpd((log_pz + logdet).mean(), batch[0][0].numel(), model.config.n_bits)


def dequantize_batch(batch, generator):
    """Uniform dequantisation into Glow's input space (:func:`ood_core.likelihood.preprocess`)."""
    return (likelihood.preprocess(batch[0], generator=generator),)


def perturb_uint8(rate: float) -> Callable:
    """Ren et al.'s background-model input for models of raw uint8 pixels (VAE, PixelCNN)."""
    from ood_core.generative_scores import perturb_pixels

    def transform(batch, generator):
        return (perturb_pixels(batch[0], rate, generator),)

    return transform


def perturb_and_dequantize(rate: float) -> Callable:
    """Ren et al.'s background-model input: pixels replaced at ``rate``, then dequantised."""
    from ood_core.generative_scores import perturb_pixels

    def transform(batch, generator):
        return (likelihood.preprocess(perturb_pixels(batch[0], rate, generator), generator=generator),)

    return transform


def _glow_config(run) -> GlowConfig:
    return GlowConfig(image_shape=data.spec(run.dataset).shape, **run.model)


def _glow_training(run) -> Training:
    images = training_images(run)
    return Training(
        TensorDataset(images.x), len(images), glow_loss,
        curve_evaluators(run, lambda m, x: likelihood.score_flow(m, x, batch_size=run.eval_batch, seed=0)["bpd"]),
        init_fn=lambda model, batch: initialize_actnorm(model, batch[0]),
        batch_transform=perturb_and_dequantize(run.perturb) if run.perturb else dequantize_batch)


def score_glow(model: Glow, x_uint8: torch.Tensor, run, seed: int) -> dict[str, np.ndarray]:
    """``log_px`` split into ``log_pz`` and ``logdet`` (and their bits/dim) by :func:`likelihood.score_flow`,
    with the per-level ``log_pz_level{i}`` and ``z_sqnorm`` (DoSE's summary statistics)."""
    return likelihood.score_flow(model, x_uint8, batch_size=run.eval_batch, seed=seed, per_level=True)


def glow_name(model: Mapping[str, Any]) -> str:
    """"CV-Glow" for additive (volume-preserving) coupling, "Glow" otherwise (Nalisnick et al.'s names)."""
    return "CV-Glow" if model.get("coupling", "affine") == "additive" else "Glow"


def background_run(run, rate: float, weight_decay: float = 0.0, **model_changes):
    """Ren et al.'s background model of ``run``: the same recipe (optionally resized), inputs with pixels
    replaced at ``rate``, and an L2 penalty ``weight_decay`` on its weights."""
    bg = run.background(rate, **model_changes)
    return dataclasses.replace(bg, train=dataclasses.replace(bg.train, weight_decay=weight_decay))


def _glow_label(run) -> str:
    m = run.model
    name = glow_name(m)
    what = f" (background, μ={run.perturb:g})" if run.perturb else ""
    return f"{name} L={m['levels']} K={m['steps']} w={m['width']} on {data.spec(run.dataset).title}{what}"


GLOW = Family(
    name="glow", title="Glow", role="likelihood", config=_glow_config, build=lambda run: Glow(_glow_config(run)),
    training=_glow_training, label=_glow_label, score=score_glow,
    table_terms=((names.PZ_BPD, "bpd_pz"), (names.LOGDET_BPD, "bpd_logdet")),
    reference=(names.PAPER_BPD, PAPER_BPD),
    model_artifact=Kind("glow", 3, ("ood_core.flows", "ood_core.train", "ood_core.families:GLOW",
                                    "ood_core.families:glow_loss", "ood_core.families:curve_evaluators",
                                    "ood_core.families:dequantize_batch", "ood_core.likelihood"),
                        "trained Glow / CV-Glow weights and training curves"),
    scores_artifact=Kind("glow_scores", 4, ("ood_core.flows", "ood_core.likelihood", "ood_core.families:score_glow"),
                         "per-example log-likelihood terms of a Glow on one image set"),
    display_name=glow_name, variants={"cv_glow": {"coupling": "additive"}}, background_role="background",
    benchmark=Benchmark(
        unified=lambda P, dataset: (P.glow.runs[dataset], P.glow.n_eval),
        seed=lambda P: P.seeds.glow,
        background=lambda P, run: background_run(run, P.unified.background_rate, P.unified.background_weight_decay,
                                                 steps=P.unified.background_steps, width=P.unified.background_width),
        seed_background=lambda P, run: background_run(run, P.unified.background_rate,
                                                      P.unified.background_weight_decay)))


# ----------------------------------------------------------------------------- VAE and PixelCNN

def _knobs_label(title: str) -> Callable:
    def label(run) -> str:
        knobs = ", ".join(f"{k}={v}" for k, v in run.model.items())
        what = f" (background, μ={run.perturb:g})" if run.perturb else ""
        return f"{title} ({knobs}) on {data.spec(run.dataset).title}, seed {run.train.seed}{what}"
    return label


def _vae_config(run):
    from ood_core.vae import VAEConfig

    return VAEConfig(image_shape=data.spec(run.dataset).shape, **run.model)


def score_vae(model, x_uint8: torch.Tensor, run, seed: int) -> dict[str, np.ndarray]:
    """IWAE_k as ``log_px`` and the ELBO terms (:func:`ood_core.vae.score_images`)."""
    from ood_core.vae import score_images

    return score_images(model, x_uint8, batch_size=run.eval_batch, seed=seed, iwae_k=run.scoring["iwae_k"])


def _vae_training(run) -> Training:
    from ood_core.vae import negative_elbo_bpd, score_images

    images = training_images(run)
    # curves track the one-sample ELBO (cheap, seeded); IWAE_1 is drawn too, as in scoring
    return Training(TensorDataset(images.x), len(images), negative_elbo_bpd, curve_evaluators(
        run, lambda m, x: score_images(m, x, batch_size=run.eval_batch, seed=0, iwae_k=1)["bpd_elbo"]),
        batch_transform=perturb_uint8(run.perturb) if run.perturb else None)


def _build_vae(run):
    from ood_core.vae import VAE

    return VAE(_vae_config(run))


VAE = Family(
    name="vae", title="VAE", role="likelihood", config=_vae_config, build=_build_vae, training=_vae_training,
    label=_knobs_label("VAE"), score=score_vae,
    table_terms=((names.ELBO_BPD, "bpd_elbo"), (names.RECON_BPD, "bpd_recon"), (names.KL_BPD, "bpd_kl")),
    scoring_defaults={"iwae_k": 16},
    model_artifact=Kind("vae", 3, ("ood_core.vae", "ood_core.discretized", "ood_core.train", "ood_core.families:VAE",
                                   "ood_core.families:curve_evaluators"),
                        "trained VAE weights and training curves"),
    scores_artifact=Kind("vae_scores", 3, ("ood_core.vae", "ood_core.discretized", "ood_core.families:score_vae"),
                         "per-example ELBO / IWAE terms of a VAE on one image set"),
    benchmark=Benchmark(unified=lambda P, dataset: (P.families.vae[dataset], P.families.n_eval),
                        seed=lambda P: P.seeds.vae))


def _pixelcnn_config(run):
    from ood_core.pixelcnn import PixelCNNConfig

    return PixelCNNConfig(image_shape=data.spec(run.dataset).shape, **run.model)


#: Scoring batch of a PixelCNN. Its likelihood is exact (no noise is drawn), so the batch only sets speed and
#: memory: 64 images score twice as fast as 256 on two CPU cores (2.1 vs 4.3 ms per 32x32x3 image, width 32).
PIXELCNN_SCORE_BATCH = 64


def score_pixelcnn(model, x_uint8: torch.Tensor, run, seed: int) -> dict[str, np.ndarray]:
    """The exact autoregressive ``log_px`` (:func:`ood_core.pixelcnn.score_images`); ``seed`` is unused."""
    from ood_core.pixelcnn import score_images

    return score_images(model, x_uint8, batch_size=min(run.eval_batch, PIXELCNN_SCORE_BATCH))


def _pixelcnn_training(run) -> Training:
    from ood_core.pixelcnn import nll_bpd, score_images

    images = training_images(run)
    return Training(TensorDataset(images.x), len(images), nll_bpd, curve_evaluators(
        run, lambda m, x: score_images(m, x, batch_size=run.eval_batch)["bpd"]),
        batch_transform=perturb_uint8(run.perturb) if run.perturb else None)


def _build_pixelcnn(run):
    from ood_core.pixelcnn import PixelCNN

    return PixelCNN(_pixelcnn_config(run))


PIXELCNN = Family(
    name="pixelcnn", title="PixelCNN", role="likelihood", config=_pixelcnn_config, build=_build_pixelcnn,
    training=_pixelcnn_training, label=_knobs_label("PixelCNN"), score=score_pixelcnn,
    model_artifact=Kind("pixelcnn", 3, ("ood_core.pixelcnn", "ood_core.discretized", "ood_core.train",
                                        "ood_core.families:PIXELCNN", "ood_core.families:curve_evaluators"),
                        "trained PixelCNN weights and training curves"),
    scores_artifact=Kind("pixelcnn_scores", 3, ("ood_core.pixelcnn", "ood_core.discretized",
                                                "ood_core.families:score_pixelcnn"),
                         "per-example exact log-likelihoods of a PixelCNN on one image set"),
    benchmark=Benchmark(
        unified=lambda P, dataset: (P.families.pixelcnn[dataset], P.families.n_eval),
        seed=lambda P: P.seeds.pixelcnn,
        background=lambda P, run: background_run(run, P.unified.pixelcnn_background_rate,
                                                 P.unified.pixelcnn_background_weight_decay)))


# ----------------------------------------------------------------------------- classifiers

def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Per-image random crop of the zero-padded image and random horizontal flip (uint8 in, uint8 out)."""
    b, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=generator.device).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=generator.device).to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev)[None])
    if flip:
        flipped = torch.rand(b, generator=generator, device=generator.device).to(dev) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    cols = cols[:, None, None, :]
    return xp[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
              rows, cols]


def cross_entropy_loss(model, batch, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of the logits of ``uint8`` images scaled to ``[0, 1]`` (models normalise inside).

    With ``label_smoothing = a`` the target is ``(1 - a) onehot(y) + a / K`` (Szegedy et al. 2016,
    sec. 7), as in ``torch.nn.functional.cross_entropy``. The loss is computed in float32 whatever
    precision the logits come in.
    """
    x, y = batch
    return F.cross_entropy(model(x.float() / 255.0).float(), y, label_smoothing=label_smoothing)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    """Top-1 accuracy (%) of ``model`` on uint8 images ``x`` with labels ``y``."""
    dev = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch].to(dev).float() / 255.0)
        correct += (logits.argmax(1).cpu() == y[i:i + batch]).sum().item()
    return 100.0 * correct / len(x)


#: Training images handed to a classifier's data-dependent initialisation (the first ones of its training set).
N_INIT_IMAGES = 5000


def _classifier_training(run) -> Training:
    images = training_images(run)
    test = data.load(run.dataset, "test").subset(run.n_curve, seed=1)
    flip = data.spec(run.dataset).shape[0] == 3
    transform = (lambda b, g: (random_crop_flip(b[0], g, pad=run.crop_pad, flip=flip), b[1])) if run.augment else None
    loss = cross_entropy_loss
    if run.label_smoothing:
        def loss(model, batch):
            return cross_entropy_loss(model, batch, run.label_smoothing)

    def init(model, batch):  # e.g. AirbenchNet's patch whitening; a no-op for most classifiers
        device = next(model.parameters()).device
        model.initialize_from_data(images.x[:N_INIT_IMAGES].to(device).float() / 255.0)

    return Training(TensorDataset(images.x, images.y), len(images), loss,
                    {"test accuracy (%)": lambda m: accuracy(m, test.x, test.y)}, init_fn=init,
                    batch_transform=transform)


def _classifier_label(run) -> str:
    arch = run.model.arch
    if arch == "resnet18_cifar":
        arch = f"ResNet-18 (width {run.model.width})"
    elif arch == "densenet_bc100":
        arch = f"DenseNet-BC-100 (growth {run.model.growth_rate})"
    elif arch == "airbench":
        arch = f"airbench net (width {run.model.width})"
    elif arch == "resnet_cifar":
        arch = f"ResNet-{run.model.depth} (width {run.model.width})"
    label = f"{arch} on {data.spec(run.dataset).title}"
    return label + (f", label smoothing {run.label_smoothing:g}" if run.label_smoothing else "")


CLASSIFIER = Family(
    name="classifier", title="classifier", role="classifier", config=lambda run: run.model,
    build=lambda run: build_classifier(run.model), training=_classifier_training, label=_classifier_label,
    model_artifact=Kind("classifier", 3, ("ood_core.classifiers", "ood_core.train", "ood_core.families:CLASSIFIER",
                                          "ood_core.families:random_crop_flip"),
                        "trained classifier weights and accuracy curves"))


#: Every model family, by name (add one with :func:`register`).
FAMILIES: dict[str, Family] = {f.name: f for f in (GLOW, VAE, PIXELCNN, CLASSIFIER)}


def _add_kinds(fams) -> tuple[str, ...]:
    """Add the families' artifact kinds to :data:`ood_core.artifacts.KINDS` (a taken name is refused)."""
    new = [k for f in fams for k in f.kinds]
    taken = [k.name for k in new if k.name in KINDS]
    if taken:
        raise ValueError(f"artifact kinds {taken} are already registered")
    KINDS.update({k.name: k for k in new})
    return tuple(k.name for k in new)


def register(new: Family) -> Family:
    """Add a model family: to :data:`FAMILIES`, its artifact kinds to :data:`ood_core.artifacts.KINDS`, its
    likelihood roles to the detectors (``"<name> log p"``) and the benchmarks' role tables. A taken family
    name, role or kind name is refused."""
    if new.name in FAMILIES:
        raise ValueError(f"a model family named {new.name!r} is already registered")
    roles = [r for r in (*new.role_titles, new.background_role) if r and r in set(all_roles())]
    if roles:
        raise ValueError(f"likelihood roles {roles} of family {new.name!r} are taken")
    _add_kinds([new])
    FAMILIES[new.name] = new
    return new


def unregister(name: str) -> Family:
    """Remove the family ``name`` and its artifact kinds (tests that register one clean up with it)."""
    fam = family(name)
    for k in fam.kinds:
        KINDS.pop(k.name, None)
    return FAMILIES.pop(name)


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}") from None


def role_titles() -> dict[str, str]:
    """``{likelihood role: title}`` of every likelihood family: ``{"glow": "Glow", "cv_glow": "CV-Glow", ...}``."""
    return {role: t for f in FAMILIES.values() for role, t in f.role_titles.items()}


def all_roles() -> list[str]:
    """Every likelihood role the families define: their own, their variants and their background roles."""
    return [r for f in FAMILIES.values() if f.is_likelihood for r in (*f.role_titles, f.background_role)]


def background_role_of(role: str) -> str:
    """The role of Ren et al.'s background model for the model of ``role``: the family's
    ``background_role`` for a family's own role (``"background"`` for the Glow), else ``"<role>_background"``."""
    fam = FAMILIES.get(role)
    return fam.background_role if fam is not None and fam.is_likelihood else f"{role}_background"


#: The built-in families' artifact kinds, added to :data:`ood_core.artifacts.KINDS` when this module is imported.
FAMILY_KINDS = _add_kinds(FAMILIES.values())


__all__ = ["Benchmark", "CLASSIFIER", "FAMILIES", "Family", "GLOW", "PIXELCNN", "Training", "VAE", "accuracy",
           "all_roles", "background_role_of", "background_run", "cross_entropy_loss", "curve_evaluators", "curve_sets",
           "family", "glow_name", "random_crop_flip", "register", "role_titles", "training_images", "unregister"]

"""Every scale knob of the book, in one place: shared recipes, three scales.

Three profiles, selected by one notebook parameter (``profile``):

* ``smoke`` -- seconds per notebook; the test suite and CI run every notebook with it. Its numbers
  mean nothing; it only proves the code path works end to end on real data.
* ``cpu`` (default) -- the whole book on a 2-core CPU in under an hour (41 minutes measured from an empty cache), still showing each
  paper's effect on real data with small models and short training.
* ``paper`` -- paper-scale models (Glow K=32, width 512; CIFAR ResNet-18 / DenseNet-BC-100), meant
  for a GPU. Its small results (per-example scores, curves, metrics, config, hardware) are committed
  under ``results/`` and shown by the default book beside the CPU runs.

A profile is the book's **recipes** (one function per model: :func:`glow`, :func:`vae`,
:func:`pixelcnn`, :func:`classifier`; the optimisers, datasets, OOD sets, detectors, what is tracked,
all in :func:`build`) at one **scale**: a :class:`Scale` table (:data:`SMOKE`, :data:`CPU`,
:data:`PAPER`) holding every number that differs between the three (sizes, budgets, subsets), each
model's as a :class:`Size`. Variants are derived, never copied: ``run.on(dataset)``,
``run.with_model(...)``, ``run.with_seed(...)``, :func:`vary` (the seed study's smaller models). Runs are keyed by dataset in :class:`ByDataset`
mappings, and :func:`get_profile` checks every dataset, OOD set and detector name of a profile, so a
typo fails there with the list of valid names, not deep inside a notebook. Notebooks read settings
from the profile object and never branch on its name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ood_core import data, detectors
from ood_core.classifiers import ClassifierConfig
from ood_core.experiment import ClassifierRun, LikelihoodRun
from ood_core.train import TrainConfig

T = TypeVar("T")


class ByDataset(Mapping[str, T], Generic[T]):
    """A read-only mapping from dataset names (checked against the data manifest) to settings."""

    def __init__(self, items: Mapping[str, T], what: str = "setting"):
        unknown = [k for k in items if k not in data.MANIFEST]
        if unknown:
            raise ValueError(f"unknown dataset name(s) {unknown}; known: {', '.join(sorted(data.MANIFEST))}")
        self._items, self._what = dict(items), what

    def __getitem__(self, key: str) -> T:
        try:
            return self._items[key]
        except KeyError:
            raise KeyError(f"no {self._what} for dataset {key!r} in this profile; "
                           f"available: {', '.join(self._items)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"ByDataset({self._items!r})"


# ----------------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class DataSettings:
    """How much data the data chapter and the evaluations look at."""

    n_stats: int | None  # images per split for pixel statistics (None = all)
    n_grid: int  # images per dataset in the sample grids
    n_eval: int | None  # test images per ID/OOD set scored by every detector (None = all)


@dataclass(frozen=True)
class GlowSettings:
    """The Glow chapters (Nalisnick et al.): one run per ID dataset, and what is scored."""

    runs: ByDataset[LikelihoodRun]  # affine coupling; CV-Glow = run.with_model(coupling="additive")
    n_eval: int | None  # examples per set in histograms and tables (None = whole test sets)
    ood: ByDataset[tuple[str, ...]]  # OOD set names (ood_core.data.ood_sets)


@dataclass(frozen=True)
class PretrainedSettings:
    """Networks trained elsewhere (:mod:`ood_core.pretrained`), evaluated in the ASH chapters beside ours."""

    names: tuple[str, ...]  # checkpoints of ood_core.pretrained.CHECKPOINTS (absent files are named, not fatal)
    n_eval: int | None  # test images per ID/OOD set (the ODIN cost of the DenseNet sets it on a CPU)
    n_fit: int | None  # ID training images for ReAct, DICE, Mahalanobis, KNN, ViM ...
    n_accuracy: int | None  # CIFAR-10 test images for the stated test accuracy (None = all 10,000)


@dataclass(frozen=True)
class ClassifierSettings:
    """The ASH chapters (Djurisic et al.): one classifier per ID dataset, and what is scored."""

    runs: ByDataset[ClassifierRun]
    n_eval: int | None  # test images per ID/OOD set (None = all)
    n_fit: int | None  # ID training images whose features fit ReAct, DICE, Mahalanobis, global thresholds
    ood: ByDataset[tuple[str, ...]]
    percentiles: tuple  # grid of the percentile sweeps
    ablation_percentiles: tuple  # coarser grid for local-vs-global
    methods: tuple[str, ...]  # detector specs of the benchmark table (ood_core.detectors)
    near: ByDataset[tuple[str, ...]]  # the near-OOD sets among ``ood`` (OpenOOD's split); the rest are far
    networks: Mapping[str, ClassifierRun]  # further CIFAR-10 networks of the ASH chapters (e.g. DenseNet-BC-100)
    pretrained: PretrainedSettings  # CIFAR-10 networks trained elsewhere, evaluated beside ours
    n_val: int  # ID and near-OOD validation images (outside the test subsets) that choose a percentile


@dataclass(frozen=True)
class UnifiedSettings:
    """The unified benchmark: likelihood-ratio background models, bootstrap, typicality batch sizes."""

    background_rate: float  # Ren et al.'s pixel-replacement rate mu for the background Glow
    background_steps: int  # K of the background Glow (same L; it may be smaller than the model)
    background_width: int
    background_weight_decay: float  # Ren et al.'s L2 penalty on the background model
    pixelcnn_background_rate: float  # mu of the PixelCNN background (same architecture as the model)
    pixelcnn_background_weight_decay: float
    n_boot: int  # bootstrap replicates per AUROC interval
    batch_sizes: tuple  # typicality-test batch sizes M
    generative: tuple[str, ...]  # generative detector specs
    classifier: tuple[str, ...]  # classifier detector specs
    remedies: tuple[str, ...]  # the detectors of "What works instead"
    reference_classifier: tuple[str, ...]  # classifier scores shown beside them


@dataclass(frozen=True)
class AnalysisSettings:
    """The second-order and graying chapters (cost knobs of the Hessian-vector products)."""

    n_probes: int  # Rademacher probes per Hutchinson trace estimate
    n_taylor: int  # images per set in the full-covariance Taylor check (one HVP each)
    n_gray: int  # CIFAR-10 test images blended per alpha
    alphas: tuple  # blending weights toward gray; the first must be 0


@dataclass(frozen=True)
class FamilySettings:
    """The other model families of Nalisnick et al.: a VAE and a PixelCNN per ID dataset."""

    vae: ByDataset[LikelihoodRun]
    pixelcnn: ByDataset[LikelihoodRun]
    n_eval: int | None  # examples per set (the Glow chapters' subsets when equal to glow.n_eval)
    n_samples: int  # samples drawn from each model for the figures


@dataclass(frozen=True)
class SeedSettings:
    """Small models trained with several seeds: the ensembles and the spread over training seeds.

    The recipes are stated for FashionMNIST and retargeted with ``.on(dataset)``; each is trained
    once per seed and per dataset in ``datasets`` (FashionMNIST -> MNIST and the reversed pair).
    """

    seeds: tuple  # ensemble members (M = len(seeds)); the first n_spread are the seed-spread study
    n_spread: int
    n_eval: int | None  # test images per set in the seed study (the ensembles use glow.n_eval)
    datasets: tuple  # ID datasets of the seed study
    ood: ByDataset[tuple[str, ...]]  # OOD sets of the seed study
    glow: LikelihoodRun
    vae: LikelihoodRun
    pixelcnn: LikelihoodRun
    classifier: ClassifierRun
    generative: tuple[str, ...]  # generative detector specs of the seed study


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    data: DataSettings
    glow: GlowSettings
    classifier: ClassifierSettings
    unified: UnifiedSettings
    analysis: AnalysisSettings
    families: FamilySettings
    seeds: SeedSettings

    def to_dict(self) -> dict:
        from ood_core.artifacts import config_dict

        return config_dict(self)


# ----------------------------------------------------------------------------------- recipes

#: Glow optimisation shared by all scales: Adam with linear warm-up and gradient clipping (the Glow
#: paper uses Adamax 1e-3 with warm-up; Adam converges faster in the short CPU runs).
GLOW_OPT = dict(optimizer="adam", lr=1e-3, grad_clip=50.0, seed=0)
#: VAE and PixelCNN optimisation.
GEN_OPT = dict(optimizer="adam", lr=1e-3, grad_clip=100.0, seed=0)
#: Classifier optimisation: SGD + Nesterov momentum, cosine schedule, weight decay 5e-4.
CLS_OPT = dict(optimizer="sgd", weight_decay=5e-4, schedule="cosine", seed=0)
#: OOD sets tracked along training: MNIST for FashionMNIST models, SVHN and MNIST for CIFAR-10 ones.
GRAY_CURVES = ("mnist",)
COLOUR_CURVES = ("svhn", "mnist")
#: Ren et al.'s background models: pixel-replacement rate mu and L2 penalty, the same at every scale.
BACKGROUND_RATE = 0.2
BACKGROUND_WEIGHT_DECAY = 1e-4


@dataclass(frozen=True)
class Size:
    """A recipe's numbers at one scale: model keywords, training budget, other run fields.

    A recipe (:func:`glow`, :func:`vae`, :func:`pixelcnn`, :func:`classifier`) builds a run from a
    ``Size``. As a *variant* of an existing run (:func:`vary`), ``model`` entries change the run's
    model keywords (a classifier given an ``arch`` gets a new config), ``train`` (when given)
    replaces its training, and ``fields`` replace other run fields (``n_train``, ``n_curve``, ...).
    """

    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    train: TrainConfig | None = None
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)


#: The variant that changes nothing.
SAME = Size()


def glow(dataset: str, size: Size, coupling: str = "affine", **fields: Any) -> LikelihoodRun:
    """A Glow (``coupling="additive"``: CV-Glow) on ``dataset``; ``size.model``: levels, steps, width."""
    return LikelihoodRun("glow", dataset, {**size.model, "coupling": coupling}, train=size.train,
                         **{**size.fields, **fields})


def vae(dataset: str, size: Size, **fields: Any) -> LikelihoodRun:
    """A VAE on ``dataset``; ``size.model``: width, n_mix, latent; ``size.fields`` holds its ``scoring`` (IWAE k)."""
    return LikelihoodRun("vae", dataset, dict(size.model), train=size.train, **{**size.fields, **fields})


def pixelcnn(dataset: str, size: Size, **fields: Any) -> LikelihoodRun:
    """A PixelCNN on ``dataset``; ``size.model``: width, layers, n_mix."""
    return LikelihoodRun("pixelcnn", dataset, dict(size.model), train=size.train, **{**size.fields, **fields})


def classifier(dataset: str, size: Size, **fields: Any) -> ClassifierRun:
    """A classifier on ``dataset``; ``size.model`` holds the :class:`ClassifierConfig` (``arch``, ``width``, ...),
    with the input channels of ``dataset``."""
    model = dict(size.model)
    channels = data.spec(dataset).shape[0]
    if channels != 3:
        model.setdefault("in_channels", channels)
    return ClassifierRun(dataset, ClassifierConfig(**model), train=size.train, **{**size.fields, **fields})


def vary(run: LikelihoodRun | ClassifierRun, size: Size) -> LikelihoodRun | ClassifierRun:
    """``run`` changed by ``size`` (see :class:`Size`): the seed study's smaller models, the CIFAR-10 Glow."""
    changes = dict(size.fields)
    if size.train is not None:
        changes["train"] = size.train
    if size.model:
        if isinstance(run, ClassifierRun):
            changes["model"] = (ClassifierConfig(**{"in_channels": run.model.in_channels, **size.model})
                                if "arch" in size.model else dataclasses.replace(run.model, **size.model))
        else:
            changes["model"] = {**run.model, **size.model}
    return dataclasses.replace(run, **changes)


def _train(epochs: int, batch_size: int, warmup: int, eval_every: int, checkpoint_every: int, opt: dict,
           **kw: Any) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=batch_size, warmup_steps=warmup, eval_every=eval_every,
                       checkpoint_every=checkpoint_every, **opt, **kw)



def _families(vae_run: LikelihoodRun, pixelcnn_run: LikelihoodRun, n_eval, n_samples: int) -> FamilySettings:
    """One recipe per family, retargeted to CIFAR-10 (tracking SVHN and MNIST along training)."""
    return FamilySettings(
        vae=ByDataset({"fashion_mnist": vae_run, "cifar10": vae_run.on("cifar10", COLOUR_CURVES)}, "VAE run"),
        pixelcnn=ByDataset({"fashion_mnist": pixelcnn_run, "cifar10": pixelcnn_run.on("cifar10", COLOUR_CURVES)},
                           "PixelCNN run"),
        n_eval=n_eval, n_samples=n_samples)

_GRAY_OOD = ("mnist", "uniform", "gaussian", "constant")
_COLOUR_OOD = ("svhn", "cifar100", "tiny_imagenet:cifar10_disjoint", "textures", "mnist", "fashion_mnist",
               "cifar10:gray", "uniform", "gaussian", "constant")
GLOW_OOD = ByDataset({"fashion_mnist": _GRAY_OOD, "cifar10": _COLOUR_OOD}, "OOD sets")
# The ASH paper's CIFAR OOD sets first (SVHN, LSUN-C, LSUN-R, iSUN, Textures, Places365), then
# what this mirror adds. Absent sets are skipped and named in the chapters.
# OpenOOD v1.5's CIFAR-10 near-OOD sets are CIFAR-100 and TinyImageNet without CIFAR-10's classes.
ASH_OOD = ByDataset({"cifar10": ("svhn", "lsun_crop", "lsun_resize", "isun", "textures", "places365", "cifar100",
                                 "tiny_imagenet:cifar10_disjoint", "mnist", "fashion_mnist", "uniform", "gaussian",
                                 "constant"),
                     "fashion_mnist": ("mnist", "uniform", "gaussian", "constant")}, "OOD sets")
NEAR_OOD = ByDataset({"cifar10": ("cifar100", "tiny_imagenet:cifar10_disjoint"), "fashion_mnist": ()}, "near-OOD sets")
SEED_OOD = ByDataset({"fashion_mnist": ("mnist", "uniform", "gaussian", "constant"),
                      "mnist": ("fashion_mnist", "uniform", "gaussian", "constant")}, "OOD sets")
SWEEP = (0, 10, 20, 30, 40, 50, 60, 65, 70, 75, 80, 85, 90, 95, 99)
#: The ASH paper's CIFAR-10 table at its percentiles, with max-logit, Mahalanobis, ASH-RAND and combinations.
ASH_METHODS = ("msp", "max_logit", "energy", "odin", "react", "dice", "mahalanobis", "ash_p@90", "ash_b@95",
               "ash_s@95", "ash_rand@90", "ash_s@95+react", "ash_s@95+dice")
#: What came after ASH (OpenOOD v1.5's CIFAR-10 leaderboard settings where they have one).
SUCCESSORS = ("scale@85", "gen", "knn", "vim", "fdbd", "nnguide")
CLASSIFIER_METHODS = (*ASH_METHODS, *SUCCESSORS)
#: The remedies for the likelihood failure (Ren, Serrà, Nalisnick 2019b, Morningstar, Kirichenko), with the raw
#: likelihoods they correct.
REMEDIES = ("glow", "pixelcnn", "likelihood_ratio", "likelihood_ratio:model=pixelcnn", "input_complexity:codec=png",
            "typicality", "dose:model=glow", "dose:model=vae", "feature_flow",
            # the variant beside the paper's definition: one KDE over DoSE's statistics jointly
            "dose:model=glow,method=joint_kde", "dose:model=vae,method=joint_kde")
#: Generative detectors of the unified benchmark, in table order.
UNIFIED_GENERATIVE = ("glow", "typicality", "cv_glow", "likelihood_ratio", "input_complexity:codec=png",
                      "input_complexity:codec=lzma", "vae", "pixelcnn", "likelihood_ratio:model=pixelcnn",
                      "dose:model=glow", "dose:model=vae", "feature_flow")
SEED_GENERATIVE = ("glow", "typicality", "input_complexity:codec=png", "vae", "pixelcnn", "likelihood_ratio",
                   "likelihood_ratio:model=pixelcnn", "dose:model=glow", "dose:model=vae", "feature_flow")
REFERENCE_CLASSIFIER = ("energy", "mahalanobis", "knn")


# ----------------------------------------------------------------------------------- scales

@dataclass(frozen=True)
class Scale:
    """Every number of one profile, and nothing else: :func:`build` turns it into a :class:`Profile`.

    The likelihood models are sized for FashionMNIST; the CIFAR-10 Glow and the seed study's models
    are variants of them (:func:`vary`), the further CIFAR-10 networks variants of the CIFAR-10 classifier.
    """

    name: str
    description: str
    data: DataSettings
    analysis: AnalysisSettings
    glow: Size  # the FashionMNIST Glow (levels, steps, width)
    glow_cifar: Size  # the CIFAR-10 Glow, as a variant of the FashionMNIST one
    glow_n_eval: int | None
    vae: Size
    pixelcnn: Size
    families_n_eval: int | None
    n_samples: int  # samples drawn from each VAE / PixelCNN for the figures
    small_cnn: Size  # the FashionMNIST classifier
    cifar_classifier: Size
    networks: Mapping[str, Size]  # further CIFAR-10 networks, as variants of cifar_classifier
    classifier_n_eval: int | None
    n_fit: int | None
    percentiles: tuple
    ablation_percentiles: tuple
    n_val: int
    pretrained: PretrainedSettings
    background_steps: int  # the background Glow's K and width (the model's L)
    background_width: int
    n_boot: int
    batch_sizes: tuple
    seeds: tuple
    n_spread: int
    seed_n_eval: int | None
    extra_generative: tuple[str, ...] = ()  # unified-benchmark detectors beyond UNIFIED_GENERATIVE
    seed_glow: Size = SAME  # the seed study's models, as variants of the chapters' FashionMNIST ones
    seed_vae: Size = SAME
    seed_pixelcnn: Size = SAME
    seed_classifier: Size = SAME


def build(scale: Scale) -> Profile:
    """The book's recipes at ``scale``."""
    fm_glow = glow("fashion_mnist", scale.glow, curve_sets=GRAY_CURVES)
    fm_vae = vae("fashion_mnist", scale.vae)
    fm_pixelcnn = pixelcnn("fashion_mnist", scale.pixelcnn)
    fm_cls = classifier("fashion_mnist", scale.small_cnn)
    cifar_cls = classifier("cifar10", scale.cifar_classifier)
    return Profile(
        name=scale.name,
        description=scale.description,
        data=scale.data,
        glow=GlowSettings(runs=ByDataset({"fashion_mnist": fm_glow,
                                          "cifar10": vary(fm_glow.on("cifar10", COLOUR_CURVES), scale.glow_cifar)},
                                         "Glow run"), n_eval=scale.glow_n_eval, ood=GLOW_OOD),
        classifier=ClassifierSettings(
            runs=ByDataset({"cifar10": cifar_cls, "fashion_mnist": fm_cls}, "classifier run"),
            n_eval=scale.classifier_n_eval, n_fit=scale.n_fit, ood=ASH_OOD, percentiles=scale.percentiles,
            ablation_percentiles=scale.ablation_percentiles, methods=CLASSIFIER_METHODS, near=NEAR_OOD,
            networks={name: vary(cifar_cls, size) for name, size in scale.networks.items()},
            pretrained=scale.pretrained, n_val=scale.n_val),
        unified=UnifiedSettings(background_rate=BACKGROUND_RATE, background_steps=scale.background_steps,
                                background_width=scale.background_width,
                                background_weight_decay=BACKGROUND_WEIGHT_DECAY,
                                pixelcnn_background_rate=BACKGROUND_RATE,
                                pixelcnn_background_weight_decay=BACKGROUND_WEIGHT_DECAY, n_boot=scale.n_boot,
                                batch_sizes=scale.batch_sizes,
                                generative=(*UNIFIED_GENERATIVE, *scale.extra_generative), classifier=ASH_METHODS,
                                remedies=REMEDIES, reference_classifier=REFERENCE_CLASSIFIER),
        analysis=scale.analysis,
        families=_families(fm_vae, fm_pixelcnn, n_eval=scale.families_n_eval, n_samples=scale.n_samples),
        seeds=SeedSettings(seeds=scale.seeds, n_spread=scale.n_spread, n_eval=scale.seed_n_eval,
                           datasets=("fashion_mnist", "mnist"), ood=SEED_OOD, glow=vary(fm_glow, scale.seed_glow),
                           vae=vary(fm_vae, scale.seed_vae), pixelcnn=vary(fm_pixelcnn, scale.seed_pixelcnn),
                           classifier=vary(fm_cls, scale.seed_classifier), generative=SEED_GENERATIVE),
    )


_SMOKE_GLOW = _train(1, 32, 2, 4, 4, GLOW_OPT)
_SMOKE_GEN = _train(1, 32, 2, 4, 4, GEN_OPT)
_SMOKE_CLS = TrainConfig(epochs=1, batch_size=64, lr=0.05, warmup_steps=2, eval_every=4, **CLS_OPT)
_SMOKE_SUBSET = dict(n_train=256, n_curve=32, eval_batch=64)

SMOKE = Scale(
    name="smoke",
    description="seconds per notebook; proves the code path, numbers are meaningless",
    data=DataSettings(n_stats=500, n_grid=16, n_eval=200),
    analysis=AnalysisSettings(n_probes=4, n_taylor=4, n_gray=32, alphas=(0.0, 0.5, 1.0)),
    glow=Size(dict(levels=2, steps=2, width=8), _SMOKE_GLOW, _SMOKE_SUBSET),
    glow_cifar=SAME,
    glow_n_eval=64,
    vae=Size(dict(width=8), _SMOKE_GEN, dict(_SMOKE_SUBSET, scoring={"iwae_k": 4})),
    pixelcnn=Size(dict(width=8, layers=2, n_mix=2), _SMOKE_GEN, _SMOKE_SUBSET),
    families_n_eval=64,
    n_samples=4,
    small_cnn=Size(dict(arch="small_cnn", width=4), _SMOKE_CLS, dict(n_train=512, n_curve=64)),
    cifar_classifier=Size(dict(arch="resnet18_cifar", width=4), _SMOKE_CLS, dict(n_train=512, n_curve=64)),
    # depth 100 with growth 2 (the real network has 12): the code path in seconds
    networks={"densenet": Size(dict(arch="densenet_bc100", growth_rate=2),
                               dataclasses.replace(_SMOKE_CLS, batch_size=32), dict(n_train=64, n_curve=32))},
    classifier_n_eval=64,
    n_fit=256,
    percentiles=(0, 50, 90),
    ablation_percentiles=(50, 90),
    n_val=64,
    pretrained=PretrainedSettings(names=("resnet20",), n_eval=64, n_fit=256, n_accuracy=256),
    background_steps=2,
    background_width=8,
    n_boot=20,
    batch_sizes=(1, 4, 16),
    seeds=(0, 1),
    n_spread=2,
    seed_n_eval=64,
)

# AirbenchNet (patch whitening, widths 32-128-128) with the fast-CIFAR recipe: warm-up then linear decay,
# label smoothing 0.2, bf16 autocast on the CPU, crop padding 2. 10 epochs; see
# tools/experiments/fast_classifier.py for the accuracy-vs-CPU-time measurements.
_AIRBENCH = Size(dict(arch="airbench", width=32),
                 TrainConfig(epochs=10, batch_size=256, lr=0.4, warmup_steps=390, optimizer="sgd", weight_decay=5e-4,
                             schedule="linear", seed=0, eval_every=0, checkpoint_every=200, amp_bf16_cpu=True,
                             channels_last=True),
                 dict(label_smoothing=0.2, crop_pad=2))
_CPU_CLS = dict(eval_every=0, checkpoint_every=200, **CLS_OPT)

CPU = Scale(
    name="cpu",
    description="default: the whole book on 2 CPU cores in under an hour, small models on real data",
    data=DataSettings(n_stats=None, n_grid=32, n_eval=2000),
    analysis=AnalysisSettings(n_probes=48, n_taylor=32, n_gray=400, alphas=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0)),
    # Glow: ~700 img/s (28x28) / ~340 (32x32x3) training on 2 cores (make bench). FashionMNIST: lr 2e-3 with a
    # cosine decay planned over two epochs, stopped after 1,300 steps (~2 minutes): test bits/dim 3.79 against
    # 4.24 for one epoch at a constant 1e-3 (measured, same seed). CIFAR-10 keeps one epoch at 1e-3 (~2.5 minutes).
    glow=Size(dict(levels=2, steps=8, width=64),
              _train(2, 64, 200, 100, 250, {**GLOW_OPT, "lr": 2e-3}, schedule="cosine", max_steps=1300),
              dict(n_curve=500)),
    glow_cifar=Size(dict(levels=3), _train(1, 64, 200, 100, 250, GLOW_OPT)),
    glow_n_eval=2000,
    # VAE: ~1,700 img/s (28x28) / ~1,200 (32x32x3) training, IWAE_8 scoring ~800 / ~400 img/s (2 cores).
    vae=Size(dict(width=32), _train(1, 128, 50, 100, 200, GEN_OPT), dict(n_curve=200, scoring={"iwae_k": 8})),
    # PixelCNN: ~170 img/s (28x28) / ~130 (32x32x3) training at batch 32: one pass over 10,000 images.
    pixelcnn=Size(dict(width=32, layers=5, n_mix=5), _train(1, 32, 50, 100, 200, GEN_OPT),
                  dict(n_train=10000, n_curve=200)),
    families_n_eval=2000,
    n_samples=16,
    small_cnn=Size(dict(arch="small_cnn", width=16),
                   TrainConfig(epochs=2, batch_size=128, lr=0.05, warmup_steps=50, **_CPU_CLS)),
    cifar_classifier=_AIRBENCH,
    # The same AirbenchNet without label smoothing (same seed, same budget): what smoothing does to ASH.
    networks={"airbench_ls0": Size(fields=dict(label_smoothing=0.0))},
    classifier_n_eval=2000,
    n_fit=10000,
    percentiles=SWEEP,
    ablation_percentiles=(60, 70, 80, 90, 95),
    n_val=1000,
    # The ASH paper's DenseNet-BC-100 and He et al.'s ResNet-20/56, trained elsewhere: 1,000 images per
    # set (ODIN's input gradients through the DenseNet cost ~40 ms per image on 2 cores).
    pretrained=PretrainedSettings(names=("densenet_bc100", "resnet20", "resnet56"), n_eval=1000, n_fit=5000,
                                  n_accuracy=None),
    # A background Glow with the model's L, half its depth (K=4 vs 8) and half its width (32 vs 64); Ren et al.
    # use the same architecture (the seed study does, chapters 14-15).
    background_steps=4,
    background_width=32,
    n_boot=200,
    batch_sizes=(1, 2, 5, 10, 25, 50),
    seeds=(0, 1, 2, 3, 4),
    n_spread=3,
    seed_n_eval=1000,
    # A quarter of the chapters' Glow (K=4, width 32) on a third of the training set: ~25 s per seed.
    seed_glow=Size(dict(steps=4, width=32), _train(1, 64, 100, 100, 250, GLOW_OPT), dict(n_train=20000, n_curve=200)),
    seed_vae=Size(fields=dict(n_train=20000)),
    # The chapters' PixelCNN at half the width (~3x cheaper): 12 PixelCNNs (model and background,
    # 3 seeds, 2 datasets) train here. Width 16 reached 93 / 90 % likelihood-ratio AUROC
    # (tools/experiments/lratio.md).
    seed_pixelcnn=Size(dict(width=16)),
    seed_classifier=Size(train=TrainConfig(epochs=1, batch_size=128, lr=0.05, warmup_steps=50, **_CPU_CLS),
                         fields=dict(n_train=20000)),
)

# 28x28 allows two levels (28 -> 14 -> 7); K=32, width 512 as Kingma & Dhariwal.
_PAPER_GLOW = _train(100, 256, 200, 200, 200, GLOW_OPT, max_steps=1000)
_PAPER_CLS = dict(eval_every=0, checkpoint_every=2000, amp_bf16=True, **CLS_OPT)

PAPER = Scale(
    name="paper",
    description="paper-scale models and full test sets; meant for a GPU",
    data=DataSettings(n_stats=None, n_grid=64, n_eval=None),
    analysis=AnalysisSettings(n_probes=256, n_taylor=128, n_gray=2000, alphas=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0)),
    glow=Size(dict(levels=2, steps=32, width=512), _PAPER_GLOW, dict(n_curve=1000)),
    glow_cifar=Size(dict(levels=3), dataclasses.replace(_PAPER_GLOW, max_steps=400)),
    glow_n_eval=None,
    vae=Size(dict(width=128, n_mix=5), _train(50, 256, 200, 500, 1000, GEN_OPT),
             dict(n_curve=1000, scoring={"iwae_k": 128})),
    pixelcnn=Size(dict(width=128, layers=12, n_mix=10), _train(20, 128, 200, 500, 1000, GEN_OPT), dict(n_curve=1000)),
    families_n_eval=None,
    n_samples=64,
    small_cnn=Size(dict(arch="small_cnn", width=64),
                   TrainConfig(epochs=20, batch_size=256, lr=0.1, warmup_steps=200, **_PAPER_CLS)),
    # ResNet-18 (OpenOOD's CIFAR model), 60 epochs with bf16 autocast on a GPU.
    cifar_classifier=Size(dict(arch="resnet18_cifar", width=64),
                          TrainConfig(epochs=60, batch_size=256, lr=0.2, warmup_steps=400, **_PAPER_CLS)),
    # The ASH paper's own CIFAR network (depth 100, growth 12, 342 features), 100 epochs with bf16
    # autocast and channels_last on a GPU (the ASH authors' checkpoint: ~94-95 % test accuracy).
    networks={"densenet": Size(dict(arch="densenet_bc100"), TrainConfig(
        epochs=100, batch_size=128, lr=0.1, warmup_steps=400, eval_every=0, checkpoint_every=2000, amp_bf16=True,
        channels_last=True, optimizer="sgd", weight_decay=1e-4, schedule="cosine", seed=0))},
    classifier_n_eval=None,
    n_fit=50000,
    percentiles=SWEEP,
    ablation_percentiles=(60, 70, 80, 90, 95),
    n_val=1000,
    pretrained=PretrainedSettings(names=("densenet_bc100", "resnet20", "resnet56"), n_eval=5000, n_fit=50000,
                                  n_accuracy=None),
    background_steps=32,
    background_width=512,
    n_boot=1000,
    batch_sizes=(1, 2, 5, 10, 25, 50, 100),
    extra_generative=("input_complexity:codec=webp",),
    seeds=(0, 1, 2, 3, 4),
    n_spread=5,
    seed_n_eval=None,
    seed_glow=Size(dict(steps=16, width=256)),
)

#: The three scales, by profile name.
SCALES = {scale.name: scale for scale in (SMOKE, CPU, PAPER)}
DEFAULT_PROFILE = "cpu"


def check(profile: Profile) -> Profile:
    """Raise ``ValueError`` naming the valid choices if a profile names an unknown dataset, OOD set or detector."""
    def ood_name(name: str) -> None:
        base, _, view = name.partition(":")
        if base in data.SYNTHETIC:
            return
        if base not in data.MANIFEST:
            raise ValueError(f"profile {profile.name!r}: unknown OOD set {name!r}; datasets: "
                             f"{', '.join(sorted(data.MANIFEST))}; synthetic: {', '.join(data.SYNTHETIC)}")
        if view and view not in data.VIEWS:
            raise ValueError(f"profile {profile.name!r}: unknown view {view!r} in {name!r}; views: "
                             f"{', '.join(sorted(data.VIEWS))}")

    for ood in (profile.glow.ood, profile.classifier.ood, profile.seeds.ood, profile.classifier.near):
        for names_ in ood.values():
            for n in names_:
                ood_name(n)
    for runs in (profile.glow.runs, profile.families.vae, profile.families.pixelcnn):
        for run in runs.values():
            for n in run.curve_sets:
                ood_name(n)
    for ds, near in profile.classifier.near.items():
        stray = set(near) - set(profile.classifier.ood[ds])
        if stray:
            raise ValueError(f"profile {profile.name!r}: near-OOD sets {sorted(stray)} are not among the OOD sets of {ds}")
    for ds in profile.seeds.datasets:
        if ds not in data.MANIFEST:
            raise ValueError(f"profile {profile.name!r}: unknown dataset {ds!r}")
    for specs in (profile.classifier.methods, profile.unified.generative, profile.unified.classifier,
                  profile.seeds.generative, profile.unified.remedies, profile.unified.reference_classifier):
        detectors.parse_all(specs)
    return profile


def get_profile(name: str = DEFAULT_PROFILE) -> Profile:
    try:
        scale = SCALES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(SCALES)}") from None
    return check(build(scale))


PROFILES = tuple(SCALES)

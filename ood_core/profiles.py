"""Every scale knob of the book, in one place.

Three profiles, selected by one notebook parameter (``profile``):

* ``smoke`` -- seconds per notebook; the test suite and CI run every notebook with it. Its numbers
  mean nothing; it only proves the code path works end to end on real data.
* ``cpu`` (default) -- the whole book on a 2-core CPU in well under an hour, still showing each
  paper's effect on real data with small models and short training.
* ``paper`` -- paper-scale models (Glow L=3, K=32, width 512; CIFAR ResNet-18 / DenseNet-BC-100),
  meant for a GPU. Its small results (per-example scores, curves, metrics, config, hardware) are
  committed under ``results/`` and shown by the default book beside the CPU runs.

Notebooks read settings from the profile object and never branch on its name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ood_core.classifier_study import ClassifierRun
from ood_core.classifiers import ClassifierConfig
from ood_core.generative_study import GenerativeRun
from ood_core.glow_study import GlowRun
from ood_core.train import TrainConfig


@dataclass(frozen=True)
class DataSettings:
    """How much data the data chapter and the evaluations look at."""

    n_stats: int | None  # images per split for pixel statistics (None = all)
    n_grid: int  # images per dataset in the sample grids
    n_eval: int | None  # test images per ID/OOD set scored by every detector (None = all)


@dataclass(frozen=True)
class GlowSettings:
    """The Glow chapters (Nalisnick et al.): one run per ID dataset, and what is scored."""

    runs: dict  # ID dataset name -> GlowRun (affine coupling; CV-Glow = run.with_coupling("additive"))
    n_eval: int | None  # examples per set in histograms and tables (None = whole test sets)
    ood: dict  # ID dataset name -> OOD set names (ood_core.data.ood_sets)


@dataclass(frozen=True)
class ClassifierSettings:
    """The ASH chapters (Djurisic et al.): one classifier per ID dataset, and what is scored."""

    runs: dict  # ID dataset name -> ClassifierRun
    n_eval: int | None  # test images per ID/OOD set (None = all)
    n_fit: int | None  # ID training images whose features fit ReAct, DICE, Mahalanobis, global thresholds
    ood: dict  # ID dataset name -> OOD set names
    percentiles: tuple  # grid of the percentile sweeps
    ablation_percentiles: tuple  # coarser grid for local-vs-global


@dataclass(frozen=True)
class UnifiedSettings:
    """The unified benchmark: likelihood-ratio background models, bootstrap, typicality batch sizes."""

    background_rate: float  # Ren et al.'s pixel-replacement rate mu for the background Glow
    background_steps: int  # K of the background Glow (same L; it may be smaller than the model)
    background_width: int
    n_boot: int  # bootstrap replicates per AUROC interval
    batch_sizes: tuple  # typicality-test batch sizes M
    codecs: tuple  # lossless codecs for input complexity


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

    vae: dict  # ID dataset name -> GenerativeRun (family "vae")
    pixelcnn: dict  # ID dataset name -> GenerativeRun (family "pixelcnn")
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
    ood: dict  # ID dataset -> OOD sets of the seed study
    glow: GlowRun
    vae: GenerativeRun
    classifier: ClassifierRun


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
        return dataclasses.asdict(self)


_GRAY_OOD = ("mnist", "uniform", "gaussian", "constant")
_COLOUR_OOD = ("svhn", "cifar100", "textures", "mnist", "fashion_mnist", "cifar10:gray", "uniform", "gaussian",
               "constant")
_GLOW_OOD = {"fashion_mnist": _GRAY_OOD, "cifar10": _COLOUR_OOD}
# The ASH paper's CIFAR OOD sets first (SVHN, LSUN-C, LSUN-R, iSUN, Textures, Places365), then
# what this mirror adds. Absent sets are skipped and named in the chapters.
_ASH_OOD = {"cifar10": ("svhn", "lsun_crop", "lsun_resize", "isun", "textures", "places365", "cifar100", "mnist",
                        "fashion_mnist", "uniform", "gaussian", "constant"),
            "fashion_mnist": ("mnist", "uniform", "gaussian", "constant")}
# Classifier optimisation: SGD + Nesterov momentum, cosine schedule, weight decay 5e-4.
_CLS_OPT = dict(optimizer="sgd", weight_decay=5e-4, schedule="cosine", seed=0)
_SWEEP = (0, 10, 20, 30, 40, 50, 60, 65, 70, 75, 80, 85, 90, 95, 99)
# Glow optimisation shared by all profiles: Adam with linear warm-up and gradient clipping (the
# Glow paper uses Adamax 1e-3 with warm-up; Adam converges faster in the short CPU runs).
_GLOW_OPT = dict(optimizer="adam", lr=1e-3, grad_clip=50.0, seed=0)
_GEN_OPT = dict(optimizer="adam", lr=1e-3, grad_clip=100.0, seed=0)
_SEED_OOD = {"fashion_mnist": ("mnist", "uniform", "gaussian", "constant"),
             "mnist": ("fashion_mnist", "uniform", "gaussian", "constant")}


def _families(vae: GenerativeRun, pixelcnn: GenerativeRun, n_eval, n_samples: int,
              cifar_vae: GenerativeRun | None = None, cifar_pixelcnn: GenerativeRun | None = None) -> FamilySettings:
    """One recipe per family, retargeted to CIFAR-10 (tracking SVHN and MNIST along training)."""
    return FamilySettings(
        vae={"fashion_mnist": vae, "cifar10": cifar_vae or vae.on("cifar10", ("svhn", "mnist"))},
        pixelcnn={"fashion_mnist": pixelcnn, "cifar10": cifar_pixelcnn or pixelcnn.on("cifar10", ("svhn", "mnist"))},
        n_eval=n_eval, n_samples=n_samples)

# The default CPU profile's VAE and PixelCNN (measured on 2 cores; see the README's timings).
# VAE: ~1,700 img/s (28x28) / ~1,200 (32x32x3) training, IWAE_8 scoring ~800 / ~400 img/s.
VAE_CPU = GenerativeRun("vae", "fashion_mnist", dict(width=32), n_curve=200, iwae_k=8,
                        train=TrainConfig(epochs=1, batch_size=128, warmup_steps=50, eval_every=100,
                                          checkpoint_every=200, **_GEN_OPT))
# PixelCNN: ~170 img/s (28x28) / ~130 (32x32x3) training at batch 32: one pass over 10,000 images.
PIXELCNN_CPU = GenerativeRun("pixelcnn", "fashion_mnist", dict(width=32, layers=5, n_mix=5), n_train=10000,
                             n_curve=200, train=TrainConfig(epochs=1, batch_size=32, warmup_steps=50,
                                                            eval_every=100, checkpoint_every=200, **_GEN_OPT))

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="seconds per notebook; proves the code path, numbers are meaningless",
        data=DataSettings(n_stats=500, n_grid=16, n_eval=200),
        glow=GlowSettings(
            runs={
                "fashion_mnist": GlowRun("fashion_mnist", levels=2, steps=2, width=8, n_train=256, n_curve=32,
                                         curve_sets=("mnist",), eval_batch=64,
                                         train=TrainConfig(epochs=1, batch_size=32, warmup_steps=2, eval_every=4,
                                                           checkpoint_every=4, **_GLOW_OPT)),
                "cifar10": GlowRun("cifar10", levels=2, steps=2, width=8, n_train=256, n_curve=32,
                                   curve_sets=("svhn", "mnist"), eval_batch=64,
                                   train=TrainConfig(epochs=1, batch_size=32, warmup_steps=2, eval_every=4,
                                                     checkpoint_every=4, **_GLOW_OPT)),
            },
            n_eval=64, ood=_GLOW_OOD),
        classifier=ClassifierSettings(
            runs={
                "cifar10": ClassifierRun("cifar10", ClassifierConfig("resnet18_cifar", width=4), n_train=512,
                                         n_curve=64, train=TrainConfig(epochs=1, batch_size=64, lr=0.05,
                                                                       warmup_steps=2, eval_every=4, **_CLS_OPT)),
                "fashion_mnist": ClassifierRun("fashion_mnist", ClassifierConfig("small_cnn", in_channels=1, width=4),
                                               n_train=512, n_curve=64,
                                               train=TrainConfig(epochs=1, batch_size=64, lr=0.05, warmup_steps=2,
                                                                 eval_every=4, **_CLS_OPT)),
            },
            n_eval=64, n_fit=256, ood=_ASH_OOD, percentiles=(0, 50, 90), ablation_percentiles=(50, 90)),
        unified=UnifiedSettings(background_rate=0.2, background_steps=2, background_width=8, n_boot=20,
                                batch_sizes=(1, 4, 16), codecs=("png", "lzma")),
        analysis=AnalysisSettings(n_probes=4, n_taylor=4, n_gray=32, alphas=(0.0, 0.5, 1.0)),
        families=_families(
            GenerativeRun("vae", "fashion_mnist", dict(width=8), n_train=256, n_curve=32, eval_batch=64, iwae_k=4,
                          train=TrainConfig(epochs=1, batch_size=32, warmup_steps=2, eval_every=4, checkpoint_every=4,
                                            **_GEN_OPT)),
            GenerativeRun("pixelcnn", "fashion_mnist", dict(width=8, layers=2, n_mix=2), n_train=256, n_curve=32,
                          eval_batch=64, train=TrainConfig(epochs=1, batch_size=32, warmup_steps=2, eval_every=4,
                                                           checkpoint_every=4, **_GEN_OPT)),
            n_eval=64, n_samples=4),
        seeds=SeedSettings(
            seeds=(0, 1), n_spread=2, n_eval=64, datasets=("fashion_mnist", "mnist"), ood=_SEED_OOD,
            glow=GlowRun("fashion_mnist", levels=2, steps=2, width=8, n_train=256, n_curve=32, curve_sets=("mnist",),
                         eval_batch=64, train=TrainConfig(epochs=1, batch_size=32, warmup_steps=2, eval_every=4,
                                                          checkpoint_every=4, **_GLOW_OPT)),
            vae=GenerativeRun("vae", "fashion_mnist", dict(width=8), n_train=256, n_curve=32, eval_batch=64, iwae_k=4,
                              train=TrainConfig(epochs=1, batch_size=32, warmup_steps=2, eval_every=4,
                                                checkpoint_every=4, **_GEN_OPT)),
            classifier=ClassifierRun("fashion_mnist", ClassifierConfig("small_cnn", in_channels=1, width=4), n_train=512,
                                     n_curve=64, train=TrainConfig(epochs=1, batch_size=64, lr=0.05, warmup_steps=2,
                                                                   eval_every=4, **_CLS_OPT))),
    ),
    "cpu": Profile(
        name="cpu",
        description="default: the whole book on 2 CPU cores in well under an hour, small models on real data",
        data=DataSettings(n_stats=None, n_grid=32, n_eval=2000),
        glow=GlowSettings(
            runs={
                # ~400 img/s on 2 cores: one epoch of FashionMNIST in ~2.5 minutes.
                "fashion_mnist": GlowRun("fashion_mnist", levels=2, steps=8, width=64, n_train=None, n_curve=500,
                                         curve_sets=("mnist",),
                                         train=TrainConfig(epochs=1, batch_size=64, warmup_steps=200, eval_every=100,
                                                           checkpoint_every=250, **_GLOW_OPT)),
                # ~200-390 img/s on 2 cores: one epoch of CIFAR-10 in ~2-4 minutes.
                "cifar10": GlowRun("cifar10", levels=3, steps=8, width=64, n_train=None, n_curve=500,
                                   curve_sets=("svhn", "mnist"),
                                   train=TrainConfig(epochs=1, batch_size=64, warmup_steps=200, eval_every=100,
                                                     checkpoint_every=250, **_GLOW_OPT)),
            },
            n_eval=2000, ood=_GLOW_OOD),
        classifier=ClassifierSettings(
            runs={
                # ~520 img/s on 2 cores (measured, training with augmentation): 4 epochs in ~6.5 minutes.
                "cifar10": ClassifierRun("cifar10", ClassifierConfig("resnet18_cifar", width=16),
                                         train=TrainConfig(epochs=4, batch_size=128, lr=0.1, warmup_steps=100,
                                                           eval_every=0, checkpoint_every=200, **_CLS_OPT)),
                "fashion_mnist": ClassifierRun("fashion_mnist", ClassifierConfig("small_cnn", in_channels=1, width=16),
                                               train=TrainConfig(epochs=2, batch_size=128, lr=0.05, warmup_steps=50,
                                                                 eval_every=0, checkpoint_every=200, **_CLS_OPT)),
            },
            n_eval=2000, n_fit=10000, ood=_ASH_OOD, percentiles=_SWEEP, ablation_percentiles=(60, 70, 80, 90, 95)),
        # A background Glow a quarter the size of the model (Ren et al. use the same architecture).
        unified=UnifiedSettings(background_rate=0.2, background_steps=4, background_width=32, n_boot=200,
                                batch_sizes=(1, 2, 5, 10, 25, 50), codecs=("png", "lzma")),
        analysis=AnalysisSettings(n_probes=48, n_taylor=32, n_gray=400, alphas=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0)),
        families=_families(
            # VAE_CPU / PIXELCNN_CPU below: a few minutes each on 2 cores.
            VAE_CPU, PIXELCNN_CPU, n_eval=2000, n_samples=16),
        seeds=SeedSettings(
            seeds=(0, 1, 2, 3, 4), n_spread=3, n_eval=1000, datasets=("fashion_mnist", "mnist"), ood=_SEED_OOD,
            # A quarter of the chapters' Glow (K=4, width 32) on a third of the training set: ~25 s per seed.
            glow=GlowRun("fashion_mnist", levels=2, steps=4, width=32, n_train=20000, n_curve=200,
                         curve_sets=("mnist",), train=TrainConfig(epochs=1, batch_size=64, warmup_steps=100,
                                                                  eval_every=100, checkpoint_every=250, **_GLOW_OPT)),
            vae=dataclasses.replace(VAE_CPU, n_train=20000),
            classifier=ClassifierRun("fashion_mnist", ClassifierConfig("small_cnn", in_channels=1, width=16),
                                     n_train=20000, train=TrainConfig(epochs=1, batch_size=128, lr=0.05,
                                                                      warmup_steps=50, eval_every=0,
                                                                      checkpoint_every=200, **_CLS_OPT))),
    ),
    "paper": Profile(
        name="paper",
        description="paper-scale models and full test sets; meant for a GPU",
        data=DataSettings(n_stats=None, n_grid=64, n_eval=None),
        glow=GlowSettings(
            runs={
                # 28x28 allows two levels (28 -> 14 -> 7); K=32, width 512 as Kingma & Dhariwal.
                "fashion_mnist": GlowRun("fashion_mnist", levels=2, steps=32, width=512, n_train=None,
                                         n_curve=1000, curve_sets=("mnist",),
                                         train=TrainConfig(epochs=100, batch_size=256, warmup_steps=200,
                                                           eval_every=200, checkpoint_every=200, max_steps=1000,
                                                           **_GLOW_OPT)),
                "cifar10": GlowRun("cifar10", levels=3, steps=32, width=512, n_train=None, n_curve=1000,
                                   curve_sets=("svhn", "mnist"),
                                   train=TrainConfig(epochs=100, batch_size=256, warmup_steps=200, eval_every=200,
                                                     checkpoint_every=200, max_steps=400, **_GLOW_OPT)),
            },
            n_eval=None, ood=_GLOW_OOD),
        classifier=ClassifierSettings(
            runs={
                # ResNet-18 (OpenOOD's CIFAR model), 60 epochs with bf16 autocast on a GPU.
                "cifar10": ClassifierRun("cifar10", ClassifierConfig("resnet18_cifar", width=64),
                                         train=TrainConfig(epochs=60, batch_size=256, lr=0.2, warmup_steps=400,
                                                           eval_every=0, checkpoint_every=2000, amp_bf16=True,
                                                           **_CLS_OPT)),
                "fashion_mnist": ClassifierRun("fashion_mnist", ClassifierConfig("small_cnn", in_channels=1, width=64),
                                               train=TrainConfig(epochs=20, batch_size=256, lr=0.1, warmup_steps=200,
                                                                 eval_every=0, checkpoint_every=2000, amp_bf16=True,
                                                                 **_CLS_OPT)),
            },
            n_eval=None, n_fit=50000, ood=_ASH_OOD, percentiles=_SWEEP, ablation_percentiles=(60, 70, 80, 90, 95)),
        unified=UnifiedSettings(background_rate=0.2, background_steps=32, background_width=512, n_boot=1000,
                                batch_sizes=(1, 2, 5, 10, 25, 50, 100), codecs=("png", "webp", "lzma")),
        analysis=AnalysisSettings(n_probes=256, n_taylor=128, n_gray=2000, alphas=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0)),
        families=_families(
            GenerativeRun("vae", "fashion_mnist", dict(width=128, n_mix=5), n_curve=1000, iwae_k=128,
                          train=TrainConfig(epochs=50, batch_size=256, warmup_steps=200, eval_every=500,
                                            checkpoint_every=1000, **_GEN_OPT)),
            GenerativeRun("pixelcnn", "fashion_mnist", dict(width=128, layers=12, n_mix=10), n_curve=1000,
                          train=TrainConfig(epochs=20, batch_size=128, warmup_steps=200, eval_every=500,
                                            checkpoint_every=1000, **_GEN_OPT)),
            n_eval=None, n_samples=64),
        seeds=SeedSettings(
            seeds=(0, 1, 2, 3, 4), n_spread=5, n_eval=None, datasets=("fashion_mnist", "mnist"), ood=_SEED_OOD,
            glow=GlowRun("fashion_mnist", levels=2, steps=16, width=256, n_curve=1000, curve_sets=("mnist",),
                         train=TrainConfig(epochs=100, batch_size=256, warmup_steps=200, eval_every=200,
                                           checkpoint_every=200, max_steps=1000, **_GLOW_OPT)),
            vae=GenerativeRun("vae", "fashion_mnist", dict(width=128, n_mix=5), n_curve=1000, iwae_k=128,
                              train=TrainConfig(epochs=50, batch_size=256, warmup_steps=200, eval_every=500,
                                                checkpoint_every=1000, **_GEN_OPT)),
            classifier=ClassifierRun("fashion_mnist", ClassifierConfig("small_cnn", in_channels=1, width=64),
                                     train=TrainConfig(epochs=20, batch_size=256, lr=0.1, warmup_steps=200,
                                                       eval_every=0, checkpoint_every=2000, amp_bf16=True,
                                                       **_CLS_OPT))),
    ),
}

DEFAULT_PROFILE = "cpu"


def get_profile(name: str = DEFAULT_PROFILE) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None

"""The experiment skeleton: a run is a frozen config; ``train_or_load`` trains it once; results export.

Every experiment of the book is the same sequence, written once here:

1. a **run** -- a frozen dataclass that determines a trained model completely (family, ID dataset,
   model keywords, optimisation, training subset, curves): :class:`LikelihoodRun` for the density
   models (Glow, CV-Glow, VAE, PixelCNN), :class:`ClassifierRun` for classifiers. Its key is
   :func:`ood_core.artifacts.config_dict` of *all* its fields (one policy, no hand-listed fields);
2. :func:`train_or_load` -- the trained model and its training curves from the artifact cache, or
   trained (resumably; see :mod:`ood_core.train`) and cached. What differs between families (model,
   loss, data, transforms, curves) comes from the family registry, :mod:`ood_core.families`;
3. scoring and tables (:mod:`ood_core.likelihood_study`, :mod:`ood_core.classifier_study`);
4. :func:`export` / :class:`Published` -- the small results of a GPU run (no weights) committed under
   ``results/`` and read back by the book (one class for every study).

Evaluation sets (:func:`evaluation_sets`) are drawn with the same size and seed by every chapter, so
detectors of different families score the same images (checked where they meet).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd
import torch

from ood_core import data, names
from ood_core.artifacts import ArtifactStore, is_main_process, results_root, wait_for_main_process
from ood_core.classifiers import ClassifierConfig
from ood_core.families import Family, family
from ood_core.train import TrainConfig, derive_seed, train

log = logging.getLogger(__name__)


class RunMixin:
    """What every run shares: its family, seed/dataset variants, label and key."""

    family: str
    dataset: str
    train: TrainConfig

    @property
    def spec(self) -> Family:
        return family(self.family)

    @property
    def label(self) -> str:
        return self.spec.label(self)

    @property
    def model_config(self):
        """The family's model config (built from the run's keywords and the dataset's image shape)."""
        return self.spec.config(self)

    def key(self) -> dict:
        """The run's cache key: all its fields (:func:`ood_core.artifacts.config_dict`)."""
        from ood_core.artifacts import config_dict

        return config_dict(self)

    def with_seed(self, seed: int):
        """The same run with another training seed (initialisation, batch order, training subset)."""
        return dataclasses.replace(self, train=dataclasses.replace(self.train, seed=seed))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _check_dataset(name: str) -> None:
    if name not in data.MANIFEST:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(data.MANIFEST))}")


@dataclass(frozen=True)
class LikelihoodRun(RunMixin):
    """One trained density model: family, data, model keywords, optimisation, tracked curves.

    ``model`` holds the keyword arguments of the family's config other than ``image_shape``
    (``GlowConfig``: levels, steps, width, coupling, ...; checked at construction). ``perturb`` > 0
    trains Ren et al.'s background model on inputs with pixels replaced at that rate; ``scoring``
    holds scoring options (the VAE's ``iwae_k``), filled with the family's defaults.
    """

    family: str
    dataset: str
    model: Mapping[str, Any]
    train: TrainConfig
    n_train: int | None = None  # training subset (None = the whole split)
    n_curve: int = 500  # examples per set evaluated along training
    curve_sets: tuple[str, ...] = ("mnist",)  # OOD sets tracked along training
    eval_batch: int = 256  # scoring batch (dequantisation / sampling noise is drawn batch by batch)
    perturb: float = 0.0
    scoring: Mapping[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:  # the model/scoring mappings are dicts: hash the canonical form
        from ood_core.artifacts import canonical_json

        return hash(canonical_json(self))

    def __post_init__(self):
        spec = family(self.family)
        if not spec.is_likelihood:
            raise ValueError(f"{self.family!r} is not a likelihood family; use ClassifierRun")
        _check_dataset(self.dataset)
        object.__setattr__(self, "model", dict(self.model))
        object.__setattr__(self, "curve_sets", tuple(self.curve_sets))
        unknown = set(self.scoring) - set(spec.scoring_defaults)
        if unknown:
            raise ValueError(f"unknown scoring options {sorted(unknown)} for {self.family}; "
                             f"known: {sorted(spec.scoring_defaults)}")
        object.__setattr__(self, "scoring", {**spec.scoring_defaults, **self.scoring})
        try:
            spec.config(self)  # a typo in a model keyword fails here, not inside a notebook
        except TypeError as e:
            raise ValueError(f"bad model keywords for {self.family}: {e}") from None
        if not 0.0 <= self.perturb <= 1.0:
            raise ValueError(f"perturb is a pixel-replacement rate in [0, 1], got {self.perturb}")

    def with_model(self, **changes) -> "LikelihoodRun":
        """The same run with some model keywords changed, e.g. ``with_model(coupling="additive")`` (CV-Glow)."""
        return dataclasses.replace(self, model={**self.model, **changes})

    def on(self, dataset: str, curve_sets: tuple[str, ...] | None = None) -> "LikelihoodRun":
        """The same recipe trained on another ID dataset (e.g. MNIST for the reversed pair)."""
        return dataclasses.replace(self, dataset=dataset,
                                   curve_sets=self.curve_sets if curve_sets is None else tuple(curve_sets))

    def background(self, rate: float, **model_changes) -> "LikelihoodRun":
        """Ren et al.'s background model: this recipe (optionally resized) trained on inputs whose
        pixels are replaced at ``rate`` (their mu, 0.1-0.3)."""
        return dataclasses.replace(self, perturb=rate, model={**self.model, **model_changes})

    @property
    def name(self) -> str:
        """The family's display name for this run's model, "CV-Glow" for additive coupling (:meth:`Family.name_of`)."""
        return self.spec.name_of(self.model)


@dataclass(frozen=True)
class ClassifierRun(RunMixin):
    """One trained classifier: data, architecture, optimisation, augmentation, label smoothing."""

    family: ClassVar[str] = "classifier"
    dataset: str
    model: ClassifierConfig
    train: TrainConfig
    n_train: int | None = None
    augment: bool = True  # random crop (zero padding crop_pad) and, for colour sets, horizontal flip
    n_curve: int = 1000  # test images for the accuracy curve
    # feature extraction and ODIN: speed and memory only (256 is faster than 512 on two CPU cores)
    eval_batch: int = field(default=256, metadata={"key": False})
    # Added after results were committed: in the key only when set (the default keeps old keys).
    label_smoothing: float = field(default=0.0, metadata={"key": "if-set"})  # target (1 - a) onehot + a / K
    crop_pad: int = field(default=4, metadata={"key": "if-set"})  # random-crop padding in pixels

    def __post_init__(self):
        _check_dataset(self.dataset)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1); got {self.label_smoothing}")
        if not (isinstance(self.crop_pad, int) and self.crop_pad >= 0):
            raise ValueError(f"crop_pad must be an int >= 0 (0: flips only); got {self.crop_pad!r}")

    def on(self, dataset: str) -> "ClassifierRun":
        """The same recipe trained on another ID dataset of the same shape."""
        return dataclasses.replace(self, dataset=dataset)


@dataclass
class Trained:
    """A trained model with its run, training curves and meta data (hardware, wall time, steps)."""

    run: Any
    model: torch.nn.Module
    history: pd.DataFrame
    meta: dict = field(default_factory=dict)


def default_device(device=None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def seeded_init(build, seed: int):
    """``build()`` with the global torch generator seeded from ``seed`` (and restored afterwards): a model's
    initial weights are a function of its run, not of whatever drew random numbers earlier in the process
    (without this, the same run trained in two processes gave different weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        return build()


def train_or_load(run, store: ArtifactStore | None = None, device=None, progress: bool = True) -> Trained:
    """The trained model of ``run`` and its curves: from the cache, or trained (resumably) and cached.

    Under ``torchrun`` every rank trains (DDP) and only rank 0 writes; the others wait and load it.
    """
    store = store or ArtifactStore()
    device = default_device(device)
    spec = run.spec
    kind, key = spec.model_kind, run.key()
    model = seeded_init(lambda: spec.build(run), run.train.seed)
    if not store.exists(kind, key):
        parts = spec.training(run)
        model.to(device)
        t0 = time.time()
        result = train(model, parts.loss, parts.dataset, run.train, store.workdir(kind, key),
                       evaluators=parts.evaluators, init_fn=parts.init_fn, batch_transform=parts.batch_transform,
                       device=device, progress=progress and not os.environ.get("TQDM_DISABLE"))
        meta = {"wall_time_s": time.time() - t0, "steps": result.steps, "n_train": parts.n_train, "label": run.label}
        if is_main_process():
            store.save(kind, key, state_dict={k: v.cpu() for k, v in model.state_dict().items()}, meta=meta,
                       files={"history.json": json.dumps(result.history)})
        wait_for_main_process()
    model.load_state_dict(store.load_state_dict(kind, key))
    model.to(device).eval()
    history = pd.DataFrame(json.loads(store.read_text(kind, key, "history.json")))
    return Trained(run, model, history, store.load_meta(kind, key))


def train_feature_flow(features, flow: Any, train_config: TrainConfig, store: ArtifactStore | None = None,
                       device=None, progress: bool = False):
    """A :class:`ood_core.feature_flow.FeatureFlow` trained on ``features`` ``[N, D]`` (cached).

    Keyed by the features' content, the flow's config and the training config (artifact kind
    ``feature_flow``): the flows on embeddings of Kirichenko et al. (2020), fitted once per classifier
    and feature set. Standardisation statistics are those of ``features``.
    """
    from ood_core.artifacts import content_digest
    from ood_core.feature_flow import FeatureFlow, feature_flow_nll, initialize_feature_flow

    store = store or ArtifactStore()
    f = torch.as_tensor(features, dtype=torch.float32)
    key = {"features": content_digest(f, 32), "n": len(f), "flow": flow, "train": train_config}
    model = seeded_init(lambda: FeatureFlow(flow), train_config.seed)
    model.fit_standardization(f)
    if not store.exists("feature_flow", key):
        t0 = time.time()
        result = train(model, feature_flow_nll, torch.utils.data.TensorDataset(f), train_config,
                       store.workdir("feature_flow", key), init_fn=initialize_feature_flow,
                       device=default_device(device), progress=progress and not os.environ.get("TQDM_DISABLE"))
        if is_main_process():
            store.save("feature_flow", key, state_dict={k: v.cpu() for k, v in model.state_dict().items()},
                       meta={"wall_time_s": time.time() - t0, "steps": result.steps},
                       files={"history.json": json.dumps(result.history)})
        wait_for_main_process()
    model.load_state_dict(store.load_state_dict("feature_flow", key))
    return model.eval()


# ----------------------------------------------------------------------------- evaluation sets

def evaluation_sets(dataset: str, n: int | None, ood, seed: int = 0, shape=None,
                    train_split: bool = True, train_set: data.ImageSet | None = None
                    ) -> tuple[dict[str, data.ImageSet], dict[str, str]]:
    """ID train/test subsets and the OOD sets in the model's shape; and the OOD sets that are missing.

    Every chapter draws these with the same ``n`` and ``seed``, so detectors meet on the same images.
    The ID train subset is drawn from ``train_set`` -- the images the model trained on
    (:func:`ood_core.families.training_images`), so that "ID train" holds training images only --
    or from the whole training split when it is None.
    """
    shape = shape or data.spec(dataset).shape
    sets = {}
    if train_split:
        sets[names.ID_TRAIN] = (train_set if train_set is not None else data.load(dataset, "train")).subset(n, seed)
    sets[names.ID_TEST] = data.load(dataset, "test").subset(n, seed)
    ood_sets, missing = data.ood_sets(shape, list(ood), n=n, seed=seed)
    sets.update(ood_sets)
    return sets, missing


def validation_sets(dataset: str, n_eval: int | None, n_val: int, ood: str, seed: int = 0
                    ) -> dict[str, data.ImageSet]:
    """A validation split that the evaluation sets of :func:`evaluation_sets` never see (OpenOOD's practice
    for choosing a hyper-parameter): ``n_val`` ID test images and ``n_val`` images of the OOD set ``ood``
    outside the ``n_eval`` evaluation images drawn with the same ``seed``. Keys ``names.ID_VAL``, ``ood``."""
    shape = data.spec(dataset).shape
    id_val = data.load(dataset, "test").held_out(n_eval, n_val, seed)
    ood_val = data.load_view(ood, "test", n_eval, seed, held_out=n_val)
    return {names.ID_VAL: id_val, ood: data.ImageSet(data.to_shape(ood_val.x, shape), ood_val.y, ood_val.name,
                                                     ood_val.note)}


def heldout_set(run, n: int | None, seed: int = 0) -> data.ImageSet | None:
    """``n`` ID images the run's model never saw in training (drawn with ``seed``), or None if none are left.

    From the training split when the run trains on a subset of it (the complement of the subset that
    :func:`train_or_load` trains on); otherwise -- a run on the whole split -- from the *test* split,
    excluding the ``n`` test images that :func:`evaluation_sets` draws with the same seed, so the
    held-out images never overlap the evaluation set. The set's name says which. None when the run
    trains on the whole training split and the evaluation takes the whole test split.
    """
    train = data.load(run.dataset, "train")
    if run.n_train is not None and run.n_train < len(train):
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(run.train.seed))
        rest = perm[run.n_train:]  # ImageSet.subset trains on the sorted first n_train of this permutation
        title = f"{data.spec(run.dataset).title} train (held-out)"
        pool = data.ImageSet(train.x[rest.sort().values], train.y[rest.sort().values], title)
    else:
        test = data.load(run.dataset, "test")
        used = torch.zeros(len(test), dtype=torch.bool)
        if n is not None and n < len(test):
            used[torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n]] = True
        else:
            return None
        keep = (~used).nonzero().flatten()
        pool = data.ImageSet(test.x[keep], test.y[keep], f"{data.spec(run.dataset).title} test (held-out)")
    return pool.subset(n, seed + 1)


def missing_note(missing: Mapping[str, str]) -> str:
    """A sentence for the book naming the sets that could not be evaluated."""
    if not missing:
        return "Every OOD set named by the profile is present in the mirror."
    return ("Not evaluated (absent from the offline mirror): " + "; ".join(missing.values()) +
            ". They are picked up automatically when their files appear.")


# ----------------------------------------------------------------------------- committed results

def export(kind: str, run, *, meta: dict, arrays: dict | None = None, files: dict[str, str] | None = None,
           root=None) -> str:
    """Write the small results of ``run`` (no weights) under ``results/<kind>/<key>/``."""
    store = ArtifactStore(root or results_root())
    return str(store.save(kind, run.key(), arrays=arrays, meta=meta, files=files))


def published_folder(kind: str, run):
    """The folder of the committed results of ``run`` under ``results/``, or None when absent."""
    store = ArtifactStore(results_root())
    if not store.exists(kind, run.key()):
        return None
    return store.path(kind, run.key())


@dataclass
class Published:
    """Committed paper-profile results of a run (``results/``): curves, meta and tables; no model.

    One class for every study. A classifier run commits its tables (``tables``: name -> frame). A
    likelihood run commits per-example score terms (``scores``: set key -> term -> values, with the
    sets' display names in ``set_names``) and its one table, bits/dim per set, is recomputed from
    them on loading (:func:`ood_core.likelihood_study.published`), so ``table`` is that table.
    """

    run: Any
    history: pd.DataFrame
    meta: dict = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    set_names: dict[str, str] = field(default_factory=dict)

    @property
    def hardware(self) -> str:
        return self.meta.get("hardware", {}).get("gpu", "CPU")

    @property
    def names(self) -> dict[str, str]:
        """``{set key: display name}`` of the scored sets (likelihood runs)."""
        return self.set_names

    @property
    def table(self) -> pd.DataFrame:
        """The run's table when it committed exactly one (a likelihood run's bits/dim table)."""
        if len(self.tables) != 1:
            raise KeyError(f"{len(self.tables)} committed tables ({', '.join(self.tables)}): pick one from .tables")
        return next(iter(self.tables.values()))

    def column(self, term: str = "bpd") -> dict[str, Any]:
        """``{set display name: per-example values of term}`` for histograms (likelihood runs)."""
        return {self.names[k]: v[term] for k, v in self.scores.items()}

    def row(self, key: str) -> pd.Series:
        """The row of the set ``key`` (``names.ID_TEST``, ``"mnist"``, ...) in :attr:`table`."""
        return self.table.loc[self.names[key]]

"""The Glow experiments of Nalisnick et al. (2019), cached: train, score, curves, tables.

A :class:`GlowRun` is everything that determines a trained Glow and its training curves (ID
dataset, architecture, optimisation, training subset, curve sets). Its canonical JSON is the
artifact key, so the chapters that share a run (histograms, decomposition, constant volume,
training dynamics) train it once; a changed knob retrains.

Preprocessing convention (it changes bits/dim, so it is stated): models see the dataset in its
native shape -- FashionMNIST/MNIST as 28x28x1, CIFAR-10 as 32x32x3 -- dequantised uniformly
``(x + u) / 256 - 0.5``. OOD sets are brought to the ID shape by :func:`ood_core.data.to_shape`
(MNIST for a CIFAR model: zero-padded to 32x32 and repeated to 3 channels; never rescaled).
Nalisnick et al.'s FashionMNIST numbers are on 28x28x1 as well.
"""

from __future__ import annotations

import dataclasses
import json
import os
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from ood_core import data, likelihood, metrics
from ood_core.artifacts import ArtifactStore, content_digest, is_main_process, results_root, wait_for_main_process
from ood_core.flows import Glow, GlowConfig, initialize_actnorm
from ood_core.train import TrainConfig, train

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class GlowRun:
    """One trained Glow: data, model, optimisation and what is tracked during training."""

    dataset: str  # ID dataset name (ood_core.data)
    levels: int
    steps: int
    width: int
    train: TrainConfig
    coupling: str = "affine"  # "affine" (Glow) or "additive" (CV-Glow)
    n_train: int | None = None  # training subset (None = the whole split)
    n_curve: int = 500  # examples per set evaluated along training
    curve_sets: tuple[str, ...] = ("mnist",)  # OOD sets tracked along training
    eval_batch: int = 256
    perturb: float = 0.0  # Ren et al.'s background model: train on inputs with this pixel-replacement rate

    def with_coupling(self, coupling: str) -> "GlowRun":
        return dataclasses.replace(self, coupling=coupling)

    def with_seed(self, seed: int) -> "GlowRun":
        """The same run with another training seed (initialisation, batch order, training subset)."""
        return dataclasses.replace(self, train=dataclasses.replace(self.train, seed=seed))

    def on(self, dataset: str, curve_sets: tuple[str, ...] | None = None) -> "GlowRun":
        """The same recipe trained on another ID dataset (e.g. MNIST for the reversed pair)."""
        return dataclasses.replace(self, dataset=dataset,
                                   curve_sets=self.curve_sets if curve_sets is None else tuple(curve_sets))

    @property
    def model_config(self) -> GlowConfig:
        return GlowConfig(image_shape=data.spec(self.dataset).shape, levels=self.levels, steps=self.steps,
                          width=self.width, coupling=self.coupling)

    def background(self, rate: float, steps: int | None = None, width: int | None = None) -> "GlowRun":
        """The background model of the likelihood ratio (Ren et al. 2019): the same Glow (or a
        smaller one) trained on inputs whose pixels are replaced at ``rate``."""
        return dataclasses.replace(self, perturb=rate, steps=steps or self.steps, width=width or self.width)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        d["model"] = self.model_config.to_dict()
        if not self.perturb:  # keeps the keys of runs made before the field existed
            d.pop("perturb")
        return d

    @property
    def label(self) -> str:
        name = "CV-Glow" if self.coupling == "additive" else "Glow"
        what = f" (background, μ={self.perturb:g})" if self.perturb else ""
        return f"{name} L={self.levels} K={self.steps} w={self.width} on {data.spec(self.dataset).title}{what}"


@dataclass
class TrainedGlow:
    run: GlowRun
    model: Glow
    history: pd.DataFrame
    meta: dict = field(default_factory=dict)


def curve_sets(run) -> dict[str, torch.Tensor]:
    """ID train/test and OOD subsets tracked along training (any run with dataset, n_curve, curve_sets)."""
    shape = data.spec(run.dataset).shape
    sets = {
        "ID train": data.load(run.dataset, "train").subset(run.n_curve, seed=1).x,
        "ID test": data.load(run.dataset, "test").subset(run.n_curve, seed=1).x,
    }
    ood, _ = data.ood_sets(shape, list(run.curve_sets), n=run.n_curve, seed=1)
    sets.update({s.name: s.x for s in ood.values()})
    return sets


def _dequantize_batch(batch, generator):
    return (likelihood.preprocess(batch[0], generator=generator),)


def _perturb_and_dequantize(rate: float):
    from ood_core.generative_scores import perturb_pixels

    def transform(batch, generator):
        return (likelihood.preprocess(perturb_pixels(batch[0], rate, generator), generator=generator),)

    return transform


def _nll_bpd(model, batch):
    log_pz, logdet = model.log_prob_parts(batch[0])
    d = batch[0][0].numel()
    return -(log_pz + logdet).mean() / (d * np.log(2.0)) + 8.0  # + log2(256): discrete-data bits/dim


def _init_actnorm(model, batch):
    initialize_actnorm(model, batch[0])


def train_glow(run: GlowRun, store: ArtifactStore | None = None, device: str | torch.device | None = None,
               progress: bool = True) -> TrainedGlow:
    """The trained model and its training curves: from the cache, or trained (resumably) and cached."""
    store = store or ArtifactStore()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = run.to_dict()
    model = Glow(run.model_config)
    if not store.exists("glow", cfg):
        train_set = data.load(run.dataset, "train").subset(run.n_train, seed=run.train.seed)
        curves = curve_sets(run)
        evaluators = {
            f"bpd: {name}": (lambda m, x=x: float(likelihood.score_flow(
                m, x, batch_size=run.eval_batch, seed=0)["bpd"].mean()))
            for name, x in curves.items()
        }
        model.to(device)
        t0 = time.time()
        result = train(model, _nll_bpd, TensorDataset(train_set.x), run.train, store.workdir("glow", cfg),
                       evaluators=evaluators, init_fn=_init_actnorm,
                       batch_transform=_perturb_and_dequantize(run.perturb) if run.perturb else _dequantize_batch,
                       device=device, progress=progress and not os.environ.get("TQDM_DISABLE"))
        meta = {"wall_time_s": time.time() - t0, "steps": result.steps, "n_train": len(train_set),
                "label": run.label}
        if is_main_process():  # under torchrun only rank 0 writes; the others wait and then load it
            store.save("glow", cfg, state_dict={k: v.cpu() for k, v in model.state_dict().items()}, meta=meta,
                       files={"history.json": json.dumps(result.history)})
        wait_for_main_process()
    model.load_state_dict(store.load_state_dict("glow", cfg))
    model.to(device).eval()
    history = pd.DataFrame(json.loads(store.read_text("glow", cfg, "history.json")))
    return TrainedGlow(run, model, history, store.load_meta("glow", cfg))


def score_sets(trained: TrainedGlow, sets: dict[str, data.ImageSet], store: ArtifactStore | None = None,
               seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per-example ``bpd``, ``bpd_pz``, ``bpd_logdet`` (and nats) for each set, cached per set content."""
    store = store or ArtifactStore()
    out = {}
    for key, s in sets.items():
        cfg = {"run": trained.run.to_dict(), "set": s.name, "content": content_digest(s.x), "seed": seed}
        out[key] = store.cached_arrays("glow_scores", cfg, lambda s=s: likelihood.score_flow(
            trained.model, s.x, batch_size=trained.run.eval_batch, seed=seed))
    return out


def evaluation_sets(run, n: int | None, ood: list[str], seed: int = 0
                    ) -> tuple[dict[str, data.ImageSet], dict[str, str]]:
    """ID train/test subsets and the OOD sets in the model's shape; and the OOD sets that are missing."""
    shape = data.spec(run.dataset).shape
    sets = {"ID train": data.load(run.dataset, "train").subset(n, seed),
            "ID test": data.load(run.dataset, "test").subset(n, seed)}
    ood_sets, missing = data.ood_sets(shape, ood, n=n, seed=seed)
    sets.update(ood_sets)
    return sets, missing


def bpd_table(run: GlowRun, names: dict[str, str], scores: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """Mean (std) bits/dim per set, its decomposition, and the paper's value where it has one.

    AUROC treats the ID test set as positive and uses the log-likelihood (``-bpd``) as the score:
    below 50 % means the OOD set gets *higher* likelihood than the ID test set (the inversion).
    """
    rows = []
    id_scores = -scores["ID test"]["bpd"]
    for key, name in names.items():
        sc = scores[key]
        row = {"set": name, "n": len(sc["bpd"]), "mean bpd": sc["bpd"].mean(), "std bpd": sc["bpd"].std(),
               "log p(z) term (bpd)": sc["bpd_pz"].mean(), "log-det term (bpd)": sc["bpd_logdet"].mean(),
               "paper bpd (Glow)": PAPER_BPD.get((run.dataset, name), np.nan)}
        if key not in ("ID train", "ID test"):
            row["AUROC % (ID test vs set, score = log p)"] = 100 * metrics.auroc(id_scores, -sc["bpd"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("set")


def published(run: GlowRun) -> dict | None:
    """Paper-profile results committed under ``results/`` for ``run``, or None when absent."""
    store = ArtifactStore(results_root())
    cfg = run.to_dict()
    if not store.exists("glow_results", cfg):
        return None
    arrays = store.load_arrays("glow_results", cfg)
    info = json.loads(store.read_text("glow_results", cfg, "summary.json"))
    scores = {k: {term: arrays[f"{k}|{term}"].astype(np.float64) for term in ("bpd", "bpd_pz", "bpd_logdet")}
              for k in info["names"]}
    return {"scores": scores, "history": pd.DataFrame(info["history"]), "names": info["names"],
            "meta": store.load_meta("glow_results", cfg)}


def published_table(run: GlowRun, published_results: dict) -> pd.DataFrame:
    """:func:`bpd_table` of committed paper-profile results."""
    return bpd_table(run, published_results["names"], published_results["scores"])


def export_results(trained: TrainedGlow, sets: dict[str, data.ImageSet], scores: dict[str, dict[str, np.ndarray]],
                   root=None) -> str:
    """Write the small results of a run (per-example bpd terms, curves, config, hardware) to ``results/``."""
    store = ArtifactStore(root or results_root())
    arrays = {}
    for key, sc in scores.items():
        for term in ("bpd", "bpd_pz", "bpd_logdet"):
            arrays[f"{key}|{term}"] = sc[term].astype(np.float32)
    summary = {"history": trained.history.to_dict(orient="list"), "names": {k: s.name for k, s in sets.items()}}
    path = store.save("glow_results", trained.run.to_dict(), arrays=arrays, meta=trained.meta,
                      files={"summary.json": json.dumps(summary)})
    return str(path)


@dataclass
class GlowEvaluation:
    """A trained run scored on its evaluation sets: what every Glow chapter starts from."""

    trained: TrainedGlow
    sets: dict[str, data.ImageSet]
    missing: dict[str, str]
    scores: dict[str, dict[str, np.ndarray]]

    @property
    def names(self) -> dict[str, str]:
        return {k: s.name for k, s in self.sets.items()}

    @property
    def table(self) -> pd.DataFrame:
        return bpd_table(self.trained.run, self.names, self.scores)

    def column(self, term: str = "bpd") -> dict[str, np.ndarray]:
        """``{set display name: per-example values of term}`` for histograms."""
        return {self.sets[k].name: v[term] for k, v in self.scores.items()}


def evaluate(run: GlowRun, n_eval: int | None, ood: list[str] | tuple[str, ...], seed: int = 0,
             store: ArtifactStore | None = None, device=None) -> GlowEvaluation:
    """Train (or load) ``run`` and score its ID train/test subsets and OOD sets (all cached)."""
    trained = train_glow(run, store=store, device=device)
    sets, missing = evaluation_sets(run, n_eval, list(ood), seed=seed)
    return GlowEvaluation(trained, sets, missing, score_sets(trained, sets, store=store, seed=seed))


def missing_note(missing: dict[str, str]) -> str:
    """A sentence for the book naming the sets that could not be evaluated."""
    if not missing:
        return "Every OOD set named by the profile is present in the mirror."
    return ("Not evaluated (absent from the offline mirror): " + "; ".join(missing.values()) +
            ". They are picked up automatically when their files appear.")

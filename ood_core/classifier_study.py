"""The ASH experiments (Djurisic et al., 2023) and their baselines, cached: train, extract, score.

A :class:`ClassifierRun` fixes a trained classifier (dataset, architecture, optimisation,
augmentation); its canonical JSON is the artifact key. Penultimate features and logits of every
evaluation set are cached per (run, set content), so each post-hoc method is a cheap function of
cached arrays -- except ODIN (needs input gradients) and ASH at earlier blocks (needs a forward
pass with shaping), which are computed from the images.

Every score here is "higher = more in-distribution"; every metric comes from
:mod:`ood_core.metrics` with the ID-positive convention of the ASH/ReAct/DICE tables.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ood_core import ash, data, metrics, scores
from ood_core.artifacts import ArtifactStore, content_digest, is_main_process, results_root, wait_for_main_process
from ood_core.classifiers import ClassifierConfig, build_classifier
from ood_core.train import TrainConfig, train

#: CIFAR-10 DenseNet-BC-100 averages over SVHN, LSUN-C, LSUN-R, iSUN, Textures and Places365
#: (FPR95 %, AUROC %), Djurisic et al. 2023 (arXiv:2209.09858), CIFAR table, as transcribed in
#: shared/PAPERS.md (recalled; ASH-S corroborated). The paper's OOD sets are mostly absent here.
PAPER_CIFAR10 = {
    "MSP": (48.73, 92.46), "ODIN": (24.57, 93.71), "energy": (26.55, 94.57), "ReAct": (26.45, 94.95),
    "DICE": (20.83, 95.24), "ASH-B@95": (20.23, 96.02), "ASH-S@95": (15.05, 96.61),
}


@dataclass(frozen=True)
class ClassifierRun:
    dataset: str
    model: ClassifierConfig
    train: TrainConfig
    n_train: int | None = None
    augment: bool = True  # random crop (zero padding 4) and, for colour sets, horizontal flip
    n_curve: int = 1000  # test images for the accuracy curve
    eval_batch: int = 512

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "model": self.model.to_dict(), "train": self.train.to_dict(),
                "n_train": self.n_train, "augment": self.augment, "n_curve": self.n_curve}

    def with_seed(self, seed: int) -> "ClassifierRun":
        """The same run with another training seed (initialisation, batch order, augmentation)."""
        return dataclasses.replace(self, train=dataclasses.replace(self.train, seed=seed))

    def on(self, dataset: str) -> "ClassifierRun":
        """The same recipe trained on another ID dataset of the same shape."""
        return dataclasses.replace(self, dataset=dataset)

    @property
    def label(self) -> str:
        arch = self.model.arch
        if arch == "resnet18_cifar":
            arch = f"ResNet-18 (width {self.model.width})"
        return f"{arch} on {data.spec(self.dataset).title}"


@dataclass
class TrainedClassifier:
    run: ClassifierRun
    model: torch.nn.Module
    history: pd.DataFrame
    meta: dict = field(default_factory=dict)


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


def _ce_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x.float() / 255.0), y)


def _accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    dev = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch].to(dev).float() / 255.0)
        correct += (logits.argmax(1).cpu() == y[i:i + batch]).sum().item()
    return 100.0 * correct / len(x)


def train_classifier(run: ClassifierRun, store: ArtifactStore | None = None, device=None,
                     progress: bool = True) -> TrainedClassifier:
    """The trained classifier and its curves: from the cache, or trained (resumably) and cached."""
    store = store or ArtifactStore()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = run.to_dict()
    model = build_classifier(run.model)
    if not store.exists("classifier", cfg):
        tr = data.load(run.dataset, "train").subset(run.n_train, seed=run.train.seed)
        te = data.load(run.dataset, "test").subset(run.n_curve, seed=1)
        flip = data.spec(run.dataset).shape[0] == 3
        transform = (lambda b, g: (random_crop_flip(b[0], g, flip=flip), b[1])) if run.augment else None
        model.to(device)
        t0 = time.time()
        result = train(model, _ce_loss, TensorDataset(tr.x, tr.y), run.train, store.workdir("classifier", cfg),
                       evaluators={"test accuracy (%)": lambda m: _accuracy(m, te.x, te.y)},
                       batch_transform=transform, device=device, progress=progress and not os.environ.get("TQDM_DISABLE"))
        meta = {"wall_time_s": time.time() - t0, "steps": result.steps, "n_train": len(tr), "label": run.label}
        if is_main_process():  # under torchrun only rank 0 writes; the others wait and then load it
            store.save("classifier", cfg, state_dict={k: v.cpu() for k, v in model.state_dict().items()}, meta=meta,
                       files={"history.json": json.dumps(result.history)})
        wait_for_main_process()
    model.load_state_dict(store.load_state_dict("classifier", cfg))
    model.to(device).eval()
    history = pd.DataFrame(json.loads(store.read_text("classifier", cfg, "history.json")))
    return TrainedClassifier(run, model, history, store.load_meta("classifier", cfg))


def features(trained: TrainedClassifier, s: data.ImageSet, store: ArtifactStore | None = None) -> dict[str, np.ndarray]:
    """Cached penultimate ``features [N, D]``, ``logits [N, K]`` and labels of one image set."""
    store = store or ArtifactStore()
    cfg = {"run": trained.run.to_dict(), "set": s.name, "content": content_digest(s.x)}

    def compute():
        f, logits = scores.compute_logits_and_features(trained.model, s.x, batch_size=trained.run.eval_batch)
        return {"features": f.numpy(), "logits": logits.numpy(), "y": s.y.numpy()}

    return store.cached_arrays("classifier_features", cfg, compute)


# ------------------------------------------------------------------------------------------------
# The post-hoc methods, as one suite fitted on ID training features.
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    """A post-hoc score: ``name`` for tables, ``kind`` in {msp, max_logit, energy, odin, react, dice,
    mahalanobis, ash}; ``shaper`` (ASH variant) and ``percentile`` for ASH; ``combine`` in
    {None, "react", "dice"} to apply ASH on top of another method."""

    name: str
    kind: str
    shaper: str | None = None
    percentile: float | None = None
    combine: str | None = None


def paper_methods(ash_p: float = 90, ash_b: float = 95, ash_s: float = 95, ash_rand: float = 90) -> list[Method]:
    """The methods of the ASH CIFAR-10 table (paper's percentiles), plus max-logit and Mahalanobis."""
    return [
        Method("MSP", "msp"), Method("max-logit", "max_logit"), Method("energy", "energy"),
        Method("ODIN", "odin"), Method("ReAct", "react"), Method("DICE", "dice"),
        Method("Mahalanobis", "mahalanobis"),
        Method(f"ASH-P@{ash_p:g}", "ash", "ash_p", ash_p), Method(f"ASH-B@{ash_b:g}", "ash", "ash_b", ash_b),
        Method(f"ASH-S@{ash_s:g}", "ash", "ash_s", ash_s), Method(f"ASH-RAND@{ash_rand:g}", "ash", "ash_rand", ash_rand),
        Method(f"ASH-S@{ash_s:g} + ReAct", "ash", "ash_s", ash_s, combine="react"),
        Method(f"ASH-S@{ash_s:g} + DICE", "ash", "ash_s", ash_s, combine="dice"),
    ]


class PostHocSuite:
    """Every post-hoc detector for one trained classifier, fitted once on ID training features.

    ReAct clips at the ``react_percentile``-th percentile of ID training activations; DICE keeps
    the weights whose contribution is above its ``dice_percentile``; Mahalanobis fits class means
    and a tied covariance. ODIN uses ``T = 1000`` and ``epsilon = 0.0014`` (the ASH/ODIN CIFAR values).
    """

    def __init__(self, trained: TrainedClassifier, train_feats: dict[str, np.ndarray], react_percentile: float = 90,
                 dice_percentile: float = 90, odin_temperature: float = 1000.0, odin_epsilon: float = 0.0014,
                 seed: int = 0):
        self.trained = trained
        # Feature-level scores run on a CPU copy (features are cached on the CPU); ODIN needs the
        # images and runs on the trained model's own device.
        self.model = copy.deepcopy(trained.model).cpu().eval()
        f = torch.from_numpy(train_feats["features"])
        self.react_ = scores.ReAct(react_percentile).fit(f)
        self.dice_ = scores.DICE(dice_percentile).fit(f, self.model)
        self.maha_ = scores.Mahalanobis().fit(f, torch.from_numpy(train_feats["y"]))
        self.train_features_ = f
        self.odin = (odin_temperature, odin_epsilon)
        self.seed = seed

    def shaper(self, method: Method):
        kw = {"generator": torch.Generator().manual_seed(self.seed)} if method.shaper == "ash_rand" else {}
        return ash.make_shaper(method.shaper, method.percentile, **kw)

    def score(self, method: Method, feats: dict[str, np.ndarray], images: torch.Tensor | None = None) -> np.ndarray:
        f = torch.from_numpy(feats["features"])
        logits = torch.from_numpy(feats["logits"])
        with torch.no_grad():
            if method.kind == "msp":
                s = scores.msp(logits)
            elif method.kind == "max_logit":
                s = scores.max_logit(logits)
            elif method.kind == "energy":
                s = scores.energy(logits)
            elif method.kind == "react":
                s = self.react_.score(self.model, f)
            elif method.kind == "dice":
                s = self.dice_.score(self.model, f)
            elif method.kind == "mahalanobis":
                s = self.maha_.score(f)
            elif method.kind == "ash":
                shaper = self.shaper(method)
                if method.combine == "react":
                    s = self.react_.score(self.model, f, shaper=shaper)
                elif method.combine == "dice":
                    s = self.dice_.score(self.model, f, shaper=shaper)
                else:
                    s = scores.energy(self.model.head(shaper(f)))
            elif method.kind == "odin":
                s = None
            else:
                raise ValueError(f"unknown method kind {method.kind!r}")
        if method.kind == "odin":
            if images is None:
                raise ValueError("ODIN needs the images (input perturbation); pass images=")
            s = scores.odin(self.trained.model, images, temperature=self.odin[0], epsilon=self.odin[1])
        return s.detach().cpu().numpy().astype(np.float64)

    def accuracy(self, method: Method, feats: dict[str, np.ndarray]) -> float:
        """ID top-1 accuracy (%) of the classifier's prediction after the method's feature shaping."""
        f = torch.from_numpy(feats["features"])
        with torch.no_grad():
            if method.kind == "ash":
                f = self.shaper(method)(f)
                if method.combine == "react":
                    f = self.react_.transform(f)
                logits = self.dice_.logits(self.model, f) if method.combine == "dice" else self.model.head(f)
            elif method.kind == "react":
                logits = self.model.head(self.react_.transform(f))
            elif method.kind == "dice":
                logits = self.dice_.logits(self.model, f)
            else:
                logits = torch.from_numpy(feats["logits"])
        return 100.0 * (logits.argmax(1).numpy() == feats["y"]).mean()


def benchmark(suite: PostHocSuite, methods: list[Method], id_feats: dict, ood_feats: dict[str, dict],
              id_images: torch.Tensor | None = None, ood_images: dict[str, torch.Tensor] | None = None,
              names: dict[str, str] | None = None) -> pd.DataFrame:
    """Long table: one row per (method, OOD set) plus a ``mean`` row per method; FPR95/AUROC/AUPR in %."""
    rows = []
    for m in methods:
        s_id = suite.score(m, id_feats, id_images)
        per = {}
        for key, feats in ood_feats.items():
            per[(names or {}).get(key, key)] = suite.score(m, feats, (ood_images or {}).get(key))
        table = metrics.metrics_table(s_id, per)
        table.insert(0, "method", m.name)
        table["ID accuracy (%)"] = suite.accuracy(m, id_feats)
        rows.append(table.reset_index())
    return pd.concat(rows, ignore_index=True)


def summary(long: pd.DataFrame) -> pd.DataFrame:
    """Per-method mean over OOD sets, with the paper's CIFAR-10 averages where the method has one."""
    mean = long[long["ood"] == "mean"].set_index("method")[["FPR95", "AUROC", "AUPR_In", "AUPR_Out",
                                                            "ID accuracy (%)"]]
    mean["paper FPR95 (DenseNet)"] = [PAPER_CIFAR10.get(m, (np.nan, np.nan))[0] for m in mean.index]
    mean["paper AUROC (DenseNet)"] = [PAPER_CIFAR10.get(m, (np.nan, np.nan))[1] for m in mean.index]
    return mean


@dataclass
class ClassifierEvaluation:
    """A trained classifier, its fitted post-hoc suite and the cached features of every set."""

    trained: TrainedClassifier
    suite: PostHocSuite
    id_set: data.ImageSet
    ood_sets: dict[str, data.ImageSet]
    missing: dict[str, str]
    id_feats: dict[str, np.ndarray]
    ood_feats: dict[str, dict[str, np.ndarray]]
    key: dict | None = None  # what determines every table below (None: not cached, e.g. evaluate_model)
    store: ArtifactStore | None = None

    @property
    def names(self) -> dict[str, str]:
        return {k: s.name for k, s in self.ood_sets.items()}

    def _table(self, name: str, params, compute) -> pd.DataFrame:
        """``compute()`` once per (evaluation, table, params): several chapters show the same tables."""
        if self.key is None:
            return compute()
        import io

        store = self.store or ArtifactStore()
        cfg = {**self.key, "table": name, "params": params}
        if not store.exists("classifier_tables", cfg):
            store.save("classifier_tables", cfg, files={"table.csv": compute().to_csv(index=False)})
        return pd.read_csv(io.StringIO(store.read_text("classifier_tables", cfg, "table.csv")))

    def benchmark(self, methods: list[Method]) -> pd.DataFrame:
        return self._table("benchmark", [dataclasses.asdict(m) for m in methods], lambda: benchmark(
            self.suite, methods, self.id_feats, self.ood_feats, self.id_set.x,
            {k: s.x for k, s in self.ood_sets.items()}, self.names))

    def percentile_sweep(self, percentiles) -> pd.DataFrame:
        return self._table("sweep", list(percentiles), lambda: percentile_sweep(
            self.suite, self.id_feats, self.ood_feats, percentiles))

    def local_vs_global(self, percentiles) -> pd.DataFrame:
        return self._table("local_vs_global", list(percentiles), lambda: local_vs_global(
            self.suite, self.id_feats, self.ood_feats, percentiles))

    def where_to_ash(self, percentile: float = 90) -> pd.DataFrame:
        return self._table("where_to_ash", percentile, lambda: where_to_ash(
            self.trained, self.id_set, self.ood_sets, percentile=percentile))


def evaluate(run: ClassifierRun, n_eval: int | None, n_fit: int | None, ood, seed: int = 0,
             react_percentile: float = 90, dice_percentile: float = 90, store: ArtifactStore | None = None,
             device=None) -> ClassifierEvaluation:
    """Train (or load) ``run``, extract features of ID train (for fitting), ID test and OOD sets."""
    trained = train_classifier(run, store=store, device=device)
    shape = data.spec(run.dataset).shape
    fit_set = data.load(run.dataset, "train").subset(n_fit, seed)
    id_set = data.load(run.dataset, "test").subset(n_eval, seed)
    ood_sets, missing = data.ood_sets(shape, list(ood), n=n_eval, seed=seed)
    train_feats = features(trained, fit_set, store)
    id_feats = features(trained, id_set, store)
    ood_feats = {k: features(trained, s, store) for k, s in ood_sets.items()}
    suite = PostHocSuite(trained, train_feats, react_percentile, dice_percentile, seed=seed)
    key = {"run": run.to_dict(), "n_eval": n_eval, "n_fit": n_fit, "ood": list(ood), "seed": seed,
           "react_percentile": react_percentile, "dice_percentile": dice_percentile}
    return ClassifierEvaluation(trained, suite, id_set, ood_sets, missing, id_feats, ood_feats, key, store)


# ------------------------------------------------------------------------------------------------
# Ablations of the ASH paper.
# ------------------------------------------------------------------------------------------------

SHAPER_NAMES = {"ash_p": "ASH-P", "ash_b": "ASH-B", "ash_s": "ASH-S", "ash_rand": "ASH-RAND"}


def percentile_sweep(suite: PostHocSuite, id_feats: dict, ood_feats: dict[str, dict], percentiles,
                     shapers=("ash_p", "ash_b", "ash_s")) -> pd.DataFrame:
    """ID accuracy and mean OOD metrics of ASH-P/B/S over the pruning percentile (paper Figs. 3/5)."""
    rows = []
    for name in shapers:
        for p in percentiles:
            m = Method(f"{name}@{p:g}", "ash", name, float(p))
            s_id = suite.score(m, id_feats)
            mean = metrics.metrics_table(s_id, {k: suite.score(m, v) for k, v in ood_feats.items()}).loc["mean"]
            rows.append({"shaper": SHAPER_NAMES[name], "percentile": p,
                         "ID accuracy (%)": suite.accuracy(m, id_feats), "FPR95": mean["FPR95"],
                         "AUROC": mean["AUROC"]})
    return pd.DataFrame(rows)


def local_vs_global(suite: PostHocSuite, id_feats: dict, ood_feats: dict[str, dict], percentiles,
                    shapers=("ash_p", "ash_b", "ash_s")) -> pd.DataFrame:
    """Per-sample (local) threshold vs one global threshold from ID training activations.

    At percentile ``p`` the global threshold is the ``p``-th percentile of *all* training
    activation values, so both prune the same fraction of activations on ID training data on
    average ("matched pruning levels"); the local variant prunes exactly ``p`` % of each sample.
    """
    rows = []
    global_fns = {"ash_p": ash.ash_p_global, "ash_b": ash.ash_b_global, "ash_s": ash.ash_s_global}
    f_id = torch.from_numpy(id_feats["features"])
    for name in shapers:
        for p in percentiles:
            t = ash.global_threshold(suite.train_features_, p)
            for variant, fn in (("local (per sample)", ash.make_shaper(name, p)),
                                ("global (from ID train)", lambda f, t=t, g=global_fns[name]: g(f, t))):
                def energy_of(feats, fn=fn):
                    with torch.no_grad():
                        return scores.energy(suite.model.head(fn(torch.from_numpy(feats["features"])))).numpy()

                mean = metrics.metrics_table(energy_of(id_feats), {k: energy_of(v) for k, v in ood_feats.items()}
                                             ).loc["mean"]
                with torch.no_grad():
                    fs = fn(f_id)
                    acc = 100.0 * (suite.model.head(fs).argmax(1).numpy() == id_feats["y"]).mean()
                    pruned = 100.0 * (fs == 0).float().mean().item()
                rows.append({"shaper": SHAPER_NAMES[name], "percentile": p, "threshold": variant, "FPR95": mean["FPR95"],
                             "AUROC": mean["AUROC"], "ID accuracy (%)": acc, "pruned on ID test (%)": pruned})
    return pd.DataFrame(rows)


def where_to_ash(trained: TrainedClassifier, id_set: data.ImageSet, ood_sets: dict[str, data.ImageSet],
                 percentile: float = 90, shaper: str = "ash_s", batch_size: int = 512) -> pd.DataFrame:
    """ASH applied after each block instead of the penultimate layer (paper §5 "where to ASH").

    Earlier blocks hold 4-D activations; ASH's per-sample percentile is then taken over all
    ``C*H*W`` entries (as in the official code). Scores are the energy of the resulting logits.
    """
    model = trained.model.eval()
    rows = []
    fn = ash.make_shaper(shaper, percentile)
    for stage in model.stages:
        shaping = {stage: fn}

        def run(x):
            f, logits = scores.compute_logits_and_features(model, x, batch_size=batch_size, shaping=shaping)
            return logits

        lid = run(id_set.x)
        s_id = scores.energy(lid).numpy()
        per = {s.name: scores.energy(run(s.x)).numpy() for s in ood_sets.values()}
        mean = metrics.metrics_table(s_id, per).loc["mean"]
        acc = 100.0 * (lid.argmax(1).cpu() == id_set.y).float().mean().item()
        rows.append({"stage": stage, "ID accuracy (%)": acc, "FPR95": mean["FPR95"], "AUROC": mean["AUROC"]})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# Paper-profile results committed under results/.
# ------------------------------------------------------------------------------------------------

def export_results(trained: TrainedClassifier, tables: dict[str, pd.DataFrame], root=None) -> str:
    """Write the small results of a run (tables as CSV, curves, config, hardware) to ``results/``."""
    store = ArtifactStore(root or results_root())
    files = {f"{k}.csv": v.to_csv(index=False) for k, v in tables.items()}
    files["history.json"] = trained.history.to_json(orient="records")
    return str(store.save("classifier_results", trained.run.to_dict(), meta=trained.meta, files=files))


def published(run: ClassifierRun) -> dict | None:
    """Paper-profile tables for ``run`` from ``results/``, or None when absent."""
    import io

    store = ArtifactStore(results_root())
    cfg = run.to_dict()
    if not store.exists("classifier_results", cfg):
        return None
    folder = store.path("classifier_results", cfg)
    tables = {p.stem: pd.read_csv(io.StringIO(p.read_text())) for p in folder.glob("*.csv")}
    return {"tables": tables, "history": pd.read_json(io.StringIO((folder / "history.json").read_text())),
            "meta": store.load_meta("classifier_results", cfg)}


def evaluate_model(model: torch.nn.Module, fit_set: data.ImageSet, id_set: data.ImageSet,
                   ood_sets: dict[str, data.ImageSet], seed: int = 0, react_percentile: float = 90,
                   dice_percentile: float = 90, batch_size: int = 512) -> ClassifierEvaluation:
    """Bring your own classifier: any module with ``features``/``head``/``fc`` (see
    :mod:`ood_core.classifiers`, e.g. ``TorchvisionClassifier`` with your weights) and your own
    image sets, scored by every post-hoc method with the book's metric code. Nothing is cached."""
    model.eval()
    trained = TrainedClassifier(run=None, model=model, history=pd.DataFrame(), meta={})

    def feats(s):
        f, logits = scores.compute_logits_and_features(model, s.x, batch_size=batch_size)
        return {"features": f.numpy(), "logits": logits.numpy(), "y": s.y.numpy()}

    suite = PostHocSuite(trained, feats(fit_set), react_percentile, dice_percentile, seed=seed)
    return ClassifierEvaluation(trained, suite, id_set, ood_sets, {}, feats(id_set),
                                {k: feats(s) for k, s in ood_sets.items()})

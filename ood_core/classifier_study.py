"""The ASH experiments (Djurisic et al., 2023) and their baselines, cached: features, tables, ablations.

A :class:`ClassifierEvaluation` is a trained classifier (:class:`ood_core.experiment.ClassifierRun`,
trained or loaded by :func:`ood_core.experiment.train_or_load`) with the penultimate features and
logits of its fit, ID test and OOD sets cached per (run, set content), so each post-hoc detector of
:mod:`ood_core.detectors` is a cheap function of cached arrays -- except ODIN (input gradients) and
ASH at earlier blocks (a forward pass with shaping), computed from the images. Its tables (the
benchmark, the percentile sweep, local vs global thresholds, where to ASH) are cached per
evaluation, since several chapters show them.

Every score here is "higher = more in-distribution"; every metric comes from
:mod:`ood_core.metrics` with the ID-positive convention of the ASH/ReAct/DICE tables.
"""

from __future__ import annotations

import copy
import io
import json
import time
from pathlib import Path
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import torch

from ood_core import ash, data, detectors, metrics, names, pretrained, scores
from ood_core.artifacts import ArtifactStore, content_digest, results_root
from ood_core.experiment import ClassifierRun, Published, Trained, evaluation_sets, export, published_folder
from ood_core.experiment import train_or_load, validation_sets

#: CIFAR-10 DenseNet-BC-100 averages over SVHN, LSUN-C, LSUN-R, iSUN, Textures and Places365
#: (FPR95 %, AUROC %), Djurisic et al. 2023 (arXiv:2209.09858), CIFAR table, as transcribed in
#: shared/PAPERS.md (recalled; ASH-S corroborated; ASH-P@90 as quoted in the project's issue). The paper's
#: CIFAR-10 percentiles: ASH-P and ASH-B at 90, ASH-S at 95. The paper's OOD sets are mostly absent here.
PAPER_CIFAR10 = {
    "MSP": (48.73, 92.46), "ODIN": (24.57, 93.71), "energy": (26.55, 94.57), "ReAct": (26.45, 94.95),
    "DICE": (20.83, 95.24), "ASH-P@90": (23.45, 95.22), "ASH-B@90": (20.23, 96.02), "ASH-S@95": (15.05, 96.61),
}

#: OpenOOD v1.5's CIFAR-10 leaderboard, ResNet-18 trained 100 epochs: (near-OOD AUROC %, far-OOD AUROC %),
#: as quoted in the project's issue from the OpenOOD v1.5 paper/leaderboard (not re-checked here). Their
#: near = CIFAR-100 + TinyImageNet, far = MNIST, SVHN, Textures, Places365; "ASH" there is ASH-B with a
#: validation-tuned percentile. Keys are our detector titles.
OPENOOD_CIFAR10 = {
    "MSP": (88.03, 90.73), "energy": (87.58, 91.21), "max-logit": (87.52, 91.10), "ReAct": (87.11, 90.42),
    "ODIN": (82.87, 87.96), "DICE": (78.34, 84.23), "ASH": (75.27, 78.49), "SCALE@85": (82.55, 86.39),
    "GEN": (88.20, 91.35), "KNN": (90.64, 92.96), "ViM": (88.68, 93.48), "fDBD": (90.42, 93.16),
    "Mahalanobis": (84.20, 89.72),
}
OPENOOD_NEAR, OPENOOD_FAR = ("cifar100", "tiny_imagenet"), ("mnist", "svhn", "textures", "places365")

#: The methods of the ASH paper's CIFAR-10 table at its percentiles, plus max-logit, Mahalanobis,
#: ASH-RAND and ASH-S combined with ReAct and DICE (detector specs, :mod:`ood_core.detectors`).
PAPER_METHODS = ("msp", "max_logit", "energy", "odin", "react", "dice", "mahalanobis", "ash_p@90", "ash_b@95",
                 "ash_s@95", "ash_rand@90", "ash_s@95+react", "ash_s@95+dice")

#: The shapers' names in tables, by detector name (a view of :data:`ood_core.ash.SHAPER_REGISTRY`).
SHAPER_NAMES = ash.SHAPER_TITLES
#: The shapers of the ASH paper's percentile sweeps (Figs. 3/5); SCALE is added on request.
SWEEP_SHAPERS = ("ash_p", "ash_b", "ash_s")


def paper_methods() -> list[str]:
    """The detector specs of the ASH CIFAR-10 table (see :data:`PAPER_METHODS`)."""
    return list(PAPER_METHODS)


def features(trained: Trained, s: data.ImageSet, store: ArtifactStore | None = None) -> dict[str, np.ndarray]:
    """Cached penultimate ``features [N, D]``, ``logits [N, K]`` and labels of one image set."""
    store = store or ArtifactStore()
    cfg = {"run": trained.run, "set": s.name, "content": content_digest(s.x)}

    def compute():
        f, logits = scores.compute_logits_and_features(trained.model, s.x, batch_size=trained.run.eval_batch)
        return {"features": f.numpy(), "logits": logits.numpy(), "y": s.y.numpy()}

    return store.cached_arrays("classifier_features", cfg, compute)


@dataclass
class ClassifierEvaluation:
    """A trained classifier and the cached features of its fit, ID test and OOD sets."""

    trained: Trained
    id_set: data.ImageSet
    ood_sets: dict[str, data.ImageSet]
    missing: dict[str, str]
    fit_feats: dict[str, np.ndarray]
    id_feats: dict[str, np.ndarray]
    ood_feats: dict[str, dict[str, np.ndarray]]
    key: dict | None = None  # what determines every table below (None: not cached, e.g. evaluate_model)
    store: ArtifactStore | None = None
    seed: int = 0

    @property
    def run(self) -> ClassifierRun:
        return self.trained.run

    @property
    def names(self) -> dict[str, str]:
        return {k: s.name for k, s in self.ood_sets.items()}

    def near_names(self, keys) -> list[str]:
        """The display names of the near-OOD sets ``keys`` (profile keys) present in this evaluation."""
        return [self.names[k] for k in keys if k in self.names]

    @property
    def synthetic_names(self) -> list[str]:
        """The display names of the synthetic sets (noise, constant) of this evaluation, averaged apart."""
        return [s.name for k, s in self.ood_sets.items() if k.partition(":")[0] in data.SYNTHETIC]

    @cached_property
    def model_cpu(self) -> torch.nn.Module:
        """Feature-level detectors run on a CPU copy (features are cached on the CPU); ODIN uses the
        trained model on its own device."""
        return copy.deepcopy(self.trained.model).cpu().eval()

    @cached_property
    def context(self) -> detectors.Context:
        return detectors.Context({names.ID_TEST: self.id_set, **self.ood_sets}, classifier=self, seed=self.seed)

    @cached_property
    def suite(self) -> detectors.Suite:
        return detectors.Suite(self.context)

    @property
    def accuracy(self) -> float:
        """ID test accuracy (%) of the unchanged classifier."""
        return self.suite.accuracy("energy")

    @cached_property
    def images_digest(self) -> dict[str, str]:
        """Content digests of the ID test and OOD images (:func:`ood_core.artifacts.content_digest`), by set key."""
        return {names.ID_TEST: content_digest(self.id_set.x), **{k: content_digest(s.x) for k, s in self.ood_sets.items()}}

    def odin_scores(self, x: torch.Tensor, temperature: float, epsilon: float) -> np.ndarray:
        """ODIN scores of the images ``x`` (:func:`ood_core.scores.odin`), cached by network, image content
        and setting: ODIN needs a backward pass through the network per image, the costliest score here, and
        several tables and chapters score the same images."""
        def compute():
            return {"scores": scores.odin(self.trained.model, x, temperature=temperature, epsilon=epsilon,
                                          batch_size=getattr(self.run, "eval_batch", 256)).numpy()}

        if self.key is None:
            return compute()["scores"].astype(np.float64)
        cfg = {"run": self.trained.run, "content": content_digest(x), "temperature": temperature, "epsilon": epsilon}
        return (self.store or ArtifactStore()).cached_arrays("odin_scores", cfg, compute)["scores"].astype(np.float64)

    def _table(self, name: str, params, compute) -> pd.DataFrame:
        """``compute()`` once per (evaluation, table, params): several chapters show the same tables.

        Keyed by :attr:`key` (the run and how the sets were drawn, with the fit images' digest) *and* the
        content digests of the evaluated images, so a table is never served for other images that carry
        the same set names (a changed mirror, view or subset rule).
        """
        if self.key is None:
            return compute()
        store = self.store or ArtifactStore()
        cfg = {**self.key, "images": self.images_digest, "table": name, "params": params}
        if not store.exists("classifier_tables", cfg):
            t0 = time.perf_counter()
            table = compute()
            store.save("classifier_tables", cfg, files={"table.csv": table.to_csv(index=False)},
                       meta={"compute_s": round(time.perf_counter() - t0, 2)})
        return pd.read_csv(io.StringIO(store.read_text("classifier_tables", cfg, "table.csv")))

    def benchmark(self, specs) -> pd.DataFrame:
        specs = detectors.parse_all(specs)
        return self._table("benchmark", [str(s) for s in specs],
                           lambda: detectors.benchmark_table(self.suite, specs))

    def percentile_sweep(self, percentiles, shapers=SWEEP_SHAPERS) -> pd.DataFrame:
        """:func:`percentile_sweep` of ``shapers``, cached; the paper's three shapers keep their old cache key."""
        shapers = _check_shapers(shapers)
        params = list(percentiles) if shapers == SWEEP_SHAPERS else {"percentiles": list(percentiles),
                                                                     "shapers": list(shapers)}
        return self._table("sweep", params, lambda: percentile_sweep(self.suite, percentiles, shapers))

    def local_vs_global(self, percentiles) -> pd.DataFrame:
        return self._table("local_vs_global", list(percentiles), lambda: local_vs_global(self.suite, percentiles))

    def where_to_ash(self, percentile: float = 90) -> pd.DataFrame:
        return self._table("where_to_ash", percentile, lambda: where_to_ash(
            self.trained, self.id_set, self.ood_sets, percentile=percentile))

    def exponent_table(self, percentile: float = 95) -> pd.DataFrame:
        return self._table("exponents", percentile, lambda: ash_s_anatomy(self.suite, percentile))


def evaluate(run: ClassifierRun, n_eval: int | None, n_fit: int | None, ood, seed: int = 0,
             store: ArtifactStore | None = None, device=None) -> ClassifierEvaluation:
    """Train (or load) ``run``, extract features of ID train (for fitting), ID test and OOD sets."""
    return _evaluation(train_or_load(run, store=store, device=device), n_eval, n_fit, ood, seed, store)


def _evaluation(trained: Trained, n_eval: int | None, n_fit: int | None, ood, seed: int,
                store: ArtifactStore | None) -> ClassifierEvaluation:
    """The cached features of ``trained``'s fit, ID test and OOD sets, keyed by how they were drawn."""
    dataset = trained.run.dataset
    fit_set = data.load(dataset, "train").subset(n_fit, seed)
    sets, missing = evaluation_sets(dataset, n_eval, list(ood), seed=seed, train_split=False)
    id_set = sets.pop(names.ID_TEST)
    key = {"run": trained.run, "n_eval": n_eval, "n_fit": n_fit, "ood": list(ood), "seed": seed,
           "fit_images": content_digest(fit_set.x)}
    return ClassifierEvaluation(trained, id_set, sets, missing, features(trained, fit_set, store),
                                features(trained, id_set, store), {k: features(trained, s, store) for k, s in sets.items()},
                                key, store, seed)


@dataclass(frozen=True)
class PretrainedRun:
    """What identifies a network trained elsewhere in the cache keys: its checkpoint's name and sha256."""

    name: str
    sha256: str
    dataset: str
    # feature extraction and ODIN: speed and memory only. The DenseNet-BC-100's concatenated feature maps make
    # small batches faster on a CPU: 64 images take ~4 ms per image forward and ~17 ms with ODIN's input
    # gradient, against ~12 and ~35 ms at 256 (two cores)
    eval_batch: int = field(default=64, metadata={"key": False})

    @property
    def label(self) -> str:
        return pretrained.checkpoint(self.name).title


def evaluate_pretrained(name: str, n_eval: int | None, n_fit: int | None, ood, seed: int = 0,
                        store: ArtifactStore | None = None, device=None) -> ClassifierEvaluation:
    """:func:`evaluate` for a checkpoint of :data:`ood_core.pretrained.CHECKPOINTS` (nothing is trained):
    the same evaluation sets, fit images and cached features, so every detector and table applies.
    Raises :class:`ood_core.pretrained.PretrainedError` when the file is absent or differs."""
    spec = pretrained.checkpoint(name)
    model = pretrained.load(name, device=device)
    run = PretrainedRun(name, spec.sha256, spec.dataset)
    meta = {"source": spec.source, "recipe": spec.recipe, "hardware": {"gpu": "trained elsewhere"},
            "expected_accuracy": spec.expected_accuracy}
    return _evaluation(Trained(run, model, pd.DataFrame(), meta), n_eval, n_fit, ood, seed, store)


def test_accuracy(ev: ClassifierEvaluation, n: int | None = None, store: ArtifactStore | None = None) -> tuple[float, int]:
    """``(accuracy %, images)`` of the unchanged classifier on ``n`` ID test images (None: the whole split)."""
    test = data.load(ev.run.dataset, "test").subset(n, 0)
    f = features(ev.trained, test, store or ev.store)
    return 100.0 * float((f["logits"].argmax(1) == f["y"]).mean()), len(test)


def validation(ev: ClassifierEvaluation, n_val: int, near: str) -> ClassifierEvaluation:
    """The same network on a validation split the evaluation never sees: ``n_val`` ID test images and
    ``n_val`` images of the near-OOD set ``near``, both outside the evaluation subsets (OpenOOD v1.5
    chooses hyper-parameters on such a split: ID validation images against held-out near-OOD images)."""
    n_eval = len(ev.id_set)
    sets = validation_sets(ev.run.dataset, n_eval, n_val, near, seed=ev.seed)
    id_val = sets.pop(names.ID_VAL)
    key = None if ev.key is None else {**ev.key, "validation": {"n_val": n_val, "near": near}}
    return ClassifierEvaluation(ev.trained, id_val, sets, {}, ev.fit_feats, features(ev.trained, id_val, ev.store),
                                {k: features(ev.trained, s, ev.store) for k, s in sets.items()}, key, ev.store, ev.seed)


#: The shapers whose percentile is chosen on validation data, and the paper's fixed percentiles beside them.
VALIDATED_SHAPERS = ("ash_p", "ash_b", "ash_s", "scale")
FIXED_SPECS = ("ash_p@90", "ash_b@90", "ash_b@95", "ash_s@95", "scale@85")


def choose_percentiles(val: ClassifierEvaluation, percentiles, shapers=VALIDATED_SHAPERS) -> pd.DataFrame:
    """Validation AUROC of each shaper at each percentile, and the chosen one (highest AUROC; ties: lower p).

    Columns: shaper, percentile, validation AUROC, chosen (bool). Nothing of the test sets is read.
    """
    rows = []
    for name in _check_shapers(shapers):
        for p in percentiles:
            sc = val.suite.scores(f"{name}@{p:g}")
            ood_key = val.suite.ctx.ood_keys[0]
            rows.append({"shaper": name, "percentile": p,
                         "validation AUROC": 100 * metrics.auroc(sc[names.ID_TEST], sc[ood_key])})
    table = pd.DataFrame(rows)
    best = table.sort_values(["shaper", "validation AUROC", "percentile"], ascending=[True, False, True]
                             ).groupby("shaper").head(1).index
    table["chosen"] = table.index.isin(best)
    return table


def fixed_and_validated(ev: ClassifierEvaluation, choice: pd.DataFrame, near: list[str], synthetic: list[str] = ()
                        ) -> pd.DataFrame:
    """Test metrics of the shapers at the paper's fixed percentiles and at the validation-chosen ones.

    One row per (how p was chosen, method): near/far/mean FPR95 and AUROC over the test sets (the
    validation images are not among them) and the ID accuracy; ``names.P_CHOSEN_BY`` says which is which.
    """
    chosen = choice[choice["chosen"]]
    groups = {names.P_FIXED: list(FIXED_SPECS),
              names.P_VALIDATION: [f"{r.shaper}@{r.percentile:g}" for r in chosen.itertuples()]}
    frames = []
    for how, specs in groups.items():
        long = ev.benchmark(["energy", *specs])
        nf = near_far_summary(long, near, synthetic)
        mean = summary(long)[[names.FPR95, names.AUROC]].rename(columns=lambda c: f"mean {c}")
        out = pd.concat([nf[[names.NEAR_FPR95, names.NEAR_AUROC, names.FAR_FPR95, names.FAR_AUROC]], mean,
                         nf[[names.ID_ACCURACY]]], axis=1).drop(index="energy").reset_index()
        out.insert(0, names.P_CHOSEN_BY, how)
        frames.append(out)
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------------------
# What makes ASH-S invert: per-network summaries of the ASH-S anatomy, and the training ablation.
# ------------------------------------------------------------------------------------------------

#: An ASH-S effect, from its mean AUROC over the OOD sets and energy's: "inverts" below 50 %, "helps" or
#: "hurts" beyond one AUROC point from energy, else "no change".
EFFECTS = ("inverts", "hurts", "no change", "helps")


def ash_s_effect(energy_auroc: float, ash_s_auroc: float, margin: float = 1.0) -> str:
    """The word for what ASH-S does to energy (see :data:`EFFECTS`)."""
    if ash_s_auroc < 50:
        return "inverts"
    if ash_s_auroc > energy_auroc + margin:
        return "helps"
    if ash_s_auroc < energy_auroc - margin:
        return "hurts"
    return "no change"


def anatomy_summary(table: pd.DataFrame, percentile: float = 95) -> dict:
    """One network's :func:`ash_s_anatomy` table in a row: the ID median of ``s1/s2``, the median over the
    OOD sets of their medians, mean AUROCs over the OOD sets (energy, ``s1/s2`` alone, SCALE, ASH-S), the
    number of sets on which ASH-S beats energy, and the effect word of :func:`ash_s_effect`."""
    ood = table.dropna(subset=[names.AUROC_ENERGY])
    both, scale = names.auroc_both(percentile), names.auroc_scaled(percentile)
    energy, ash_s = float(ood[names.AUROC_ENERGY].mean()), float(ood[both].mean())
    return {names.ID_MEDIAN_RATIO: float(table[names.MEDIAN_RATIO].iloc[0]),
            names.OOD_MEDIAN_RATIO: float(ood[names.MEDIAN_RATIO].median()),
            names.AUROC_RATIO: float(ood[names.AUROC_RATIO].mean()), names.AUROC_ENERGY: energy,
            names.mean_auroc_scale(percentile): float(ood[scale].mean()), names.mean_auroc_ash_s(percentile): ash_s,
            names.ASH_S_WINS: f"{int((ood[both] > ood[names.AUROC_ENERGY]).sum())} of {len(ood)}",
            names.ASH_S_EFFECT: ash_s_effect(energy, ash_s)}


INVERSION_FOLDER = "ash_inversion"


def inversion_ablation(root=None) -> tuple[pd.DataFrame, dict, dict] | None:
    """The committed training ablation of ``tools/experiments/ash_inversion.py`` (``results/ash_inversion``):
    ``(long table, config, meta)``, or None when absent. One anatomy row per (variant, percentile, set)."""
    folder = (results_root() if root is None else Path(root)) / INVERSION_FOLDER
    if not (folder / "variants.csv").is_file():
        return None
    return (pd.read_csv(folder / "variants.csv"), json.loads((folder / "config.json").read_text()),
            json.loads((folder / "meta.json").read_text()))


def inversion_summary(long: pd.DataFrame, percentile: float = 95) -> pd.DataFrame:
    """Per variant of the ablation: test accuracy and :func:`anatomy_summary` at ``percentile``."""
    rows = []
    for variant, g in long[long[names.PERCENTILE] == percentile].groupby("variant", sort=False):
        rows.append({"variant": variant, "what": g["what"].iloc[0], "test accuracy (%)": g["test accuracy (%)"].iloc[0],
                     **anatomy_summary(g.drop(columns=["variant", "what", names.PERCENTILE, "test accuracy (%)"]),
                                       percentile)})
    return pd.DataFrame(rows).set_index("variant")


def factor_effects(summary_table: pd.DataFrame, pairs: dict, column: str) -> pd.DataFrame:
    """What each training factor does to ``column`` (e.g. ``"AUROC ASH-S@95"``) of :func:`inversion_summary`.

    ``pairs`` maps a factor to ``[(without, with), ...]`` variant pairs that differ in that factor only;
    pairs whose variants are absent are skipped. One row per factor: the number of pairs, the mean, least
    and largest change (with minus without, in the column's units), and whether every pair moves the same
    way. The ``"seed (same recipe)"`` factor, if present, gives the spread a difference must exceed.
    """
    rows = []
    for factor, items in pairs.items():
        d = [summary_table.loc[b, column] - summary_table.loc[a, column] for a, b in items
             if a in summary_table.index and b in summary_table.index]
        if not d:
            continue
        d = np.asarray(d, dtype=float)
        rows.append({"factor": factor, "pairs": len(d), "mean change": d.mean(), "least change": d.min(),
                     "largest change": d.max(), "same sign in every pair": bool((d > 0).all() or (d < 0).all())})
    return pd.DataFrame(rows).set_index("factor")


def summary(long: pd.DataFrame) -> pd.DataFrame:
    """Per-method mean over OOD sets, with the paper's CIFAR-10 averages where the method has one."""
    mean = long[long[names.OOD] == names.MEAN_ROW].set_index(names.METHOD)[[*names.METRICS, names.ID_ACCURACY]]
    mean[names.PAPER_FPR95] = [PAPER_CIFAR10.get(m, (np.nan, np.nan))[0] for m in mean.index]
    mean[names.PAPER_AUROC] = [PAPER_CIFAR10.get(m, (np.nan, np.nan))[1] for m in mean.index]
    return mean


def near_far_summary(long: pd.DataFrame, near: list[str], synthetic: list[str] = ()) -> pd.DataFrame:
    """Per method: mean FPR95/AUROC over the near-OOD sets and over the far ones (OpenOOD v1.5's split),
    the ID accuracy, and OpenOOD's published ResNet-18 near/far AUROC beside ours where it has the method.

    ``near`` are the display names of the near-OOD sets; every other real set is far; ``synthetic``
    (noise, constant images) are left out of both averages, as OpenOOD has no such sets.
    """
    per = long[long[names.OOD] != names.MEAN_ROW]
    near_rows = per[per[names.OOD].isin(near)]
    far_rows = per[~per[names.OOD].isin([*near, *synthetic])]
    out = pd.DataFrame({
        names.NEAR_FPR95: near_rows.groupby(names.METHOD, sort=False)[names.FPR95].mean(),
        names.NEAR_AUROC: near_rows.groupby(names.METHOD, sort=False)[names.AUROC].mean(),
        names.FAR_FPR95: far_rows.groupby(names.METHOD, sort=False)[names.FPR95].mean(),
        names.FAR_AUROC: far_rows.groupby(names.METHOD, sort=False)[names.AUROC].mean(),
        names.ID_ACCURACY: per.groupby(names.METHOD, sort=False)[names.ID_ACCURACY].first(),
    })
    out = out.reindex(list(dict.fromkeys(per[names.METHOD])))
    out[names.OPENOOD_NEAR_AUROC] = [OPENOOD_CIFAR10.get(m, (np.nan, np.nan))[0] for m in out.index]
    out[names.OPENOOD_FAR_AUROC] = [OPENOOD_CIFAR10.get(m, (np.nan, np.nan))[1] for m in out.index]
    out.index.name = names.METHOD
    return out


# ------------------------------------------------------------------------------------------------
# Ablations of the ASH paper.
# ------------------------------------------------------------------------------------------------

def _mean_metrics(sc: dict[str, np.ndarray], ood_keys) -> pd.Series:
    return metrics.metrics_table(sc[names.ID_TEST], {k: sc[k] for k in ood_keys}).loc[names.MEAN_ROW]


def _check_shapers(shapers) -> tuple[str, ...]:
    shapers = (shapers,) if isinstance(shapers, str) else tuple(shapers)
    unknown = [s for s in shapers if s not in SHAPER_NAMES]
    if unknown or not shapers:
        raise ValueError(f"shapers must be a non-empty list of {', '.join(SHAPER_NAMES)}, got {list(shapers)}")
    return shapers


def percentile_sweep(suite: detectors.Suite, percentiles, shapers=SWEEP_SHAPERS) -> pd.DataFrame:
    """ID accuracy and mean OOD metrics of each shaper over the pruning percentile (paper Figs. 3/5).

    ``shapers`` are detector names of :data:`SHAPER_NAMES` (default ASH-P/B/S; ``"scale"`` adds SCALE,
    Xu et al. 2024, whose ``p`` sets only the exponent ``s1/s2``: nothing is pruned). Each row is
    ``energy(head(shape_p(f)))`` averaged over the suite's OOD sets, and the ID accuracy of its argmax.
    """
    rows = []
    for name in _check_shapers(shapers):
        for p in percentiles:
            spec = f"{name}@{p:g}"
            mean = _mean_metrics(suite.scores(spec), suite.ctx.ood_keys)
            rows.append({names.SHAPER: SHAPER_NAMES[name], names.PERCENTILE: p, names.ID_ACCURACY: suite.accuracy(spec),
                         names.FPR95: mean[names.FPR95], names.AUROC: mean[names.AUROC]})
    return pd.DataFrame(rows)


def _shaped(name: str, f: torch.Tensor, percentile: float | None = None, threshold: float | None = None):
    """``(shaped features or ASH-S/SCALE base, log-scale r or None)`` for a local or a global threshold."""
    if threshold is None:
        if name in ash.EXP_SCALED_PARTS:
            return ash.EXP_SCALED_PARTS[name](f, percentile)
        return ash.make_shaper(name, percentile)(f), None
    if name == "ash_s":
        return ash.ash_s_global_parts(f, threshold)
    return {"ash_p": ash.ash_p_global, "ash_b": ash.ash_b_global}[name](f, threshold), None


def _logits(model, shaped: torch.Tensor, r: torch.Tensor | None) -> torch.Tensor:
    """The head's logits of shaped features; ``base * exp(r)`` exactly, in float64 (ASH-S, SCALE)."""
    return model.head(shaped) if r is None else scores.exp_scaled_logits(model, shaped, r)


def local_vs_global(suite: detectors.Suite, percentiles, shapers=("ash_p", "ash_b", "ash_s")) -> pd.DataFrame:
    """Per-sample (local) threshold vs one global threshold from ID training activations.

    At percentile ``p`` the global threshold is the ``p``-th percentile of *all* training
    activation values, so both prune the same fraction of activations on ID training data on
    average ("matched pruning levels"); the local variant prunes exactly ``p`` % of each sample.
    ASH-S's rescaling is evaluated exactly (float64 logits) in both variants.
    """
    clf = suite.ctx.require_classifier()
    model = clf.model_cpu
    train_features = torch.from_numpy(clf.fit_feats["features"])
    rows = []
    for name in shapers:
        for p in percentiles:
            t = ash.global_threshold(train_features, p)
            for variant, kw in ((names.LOCAL_THRESHOLD, {"percentile": p}), (names.GLOBAL_THRESHOLD, {"threshold": t})):
                with torch.no_grad():
                    logits = {k: _logits(model, *_shaped(name, torch.from_numpy(suite.ctx.features(k)["features"]), **kw))
                              for k in suite.ctx.keys}
                    sc = {k: scores.energy(v).numpy() for k, v in logits.items()}
                    acc = 100.0 * (logits[names.ID_TEST].argmax(1).numpy() == clf.id_feats["y"]).mean()
                    shaped, _ = _shaped(name, torch.from_numpy(clf.id_feats["features"]), **kw)
                    pruned = 100.0 * (shaped == 0).float().mean().item()
                mean = _mean_metrics(sc, suite.ctx.ood_keys)
                rows.append({names.SHAPER: SHAPER_NAMES[name], names.PERCENTILE: p, names.THRESHOLD: variant,
                             names.FPR95: mean[names.FPR95], names.AUROC: mean[names.AUROC], names.ID_ACCURACY: acc,
                             names.PRUNED_ON_ID: pruned})
    return pd.DataFrame(rows)


def ash_s_anatomy(suite: detectors.Suite, percentile: float = 95) -> pd.DataFrame:
    """Why ASH-S works or breaks, per OOD set: its exponent ``s1/s2`` and pruning versus scaling at equal ``p``.

    One row per set (the ID test set first): the median of ``s1/s2`` at ``percentile``; the AUROC (%,
    ID positive) of ``s1/s2`` alone, in the direction ASH-S uses it (a larger ratio scales the energy
    up); and the AUROC of energy (neither), ASH-P (prune only), SCALE (scale only) and ASH-S (both).
    """
    ctx = suite.ctx
    p = f"{percentile:g}"
    columns = {names.AUROC_RATIO: f"ash_exponent@{p}", names.AUROC_ENERGY: "energy",
               names.auroc_pruned(percentile): f"ash_p@{p}", names.auroc_scaled(percentile): f"scale@{p}",
               names.auroc_both(percentile): f"ash_s@{p}"}
    sc = {col: suite.scores(spec) for col, spec in columns.items()}
    rows = []
    for key in ctx.keys:
        row = {names.SET: ctx.sets[key].name, names.MEDIAN_RATIO: float(np.median(sc[names.AUROC_RATIO][key]))}
        if key != names.ID_TEST:
            row.update({col: 100 * metrics.auroc(v[names.ID_TEST], v[key]) for col, v in sc.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def where_to_ash(trained: Trained, id_set: data.ImageSet, ood_sets: dict[str, data.ImageSet],
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
        mean = metrics.metrics_table(s_id, per).loc[names.MEAN_ROW]
        acc = 100.0 * (lid.argmax(1).cpu() == id_set.y).float().mean().item()
        rows.append({names.STAGE: stage, names.ID_ACCURACY: acc, names.FPR95: mean[names.FPR95],
                     names.AUROC: mean[names.AUROC]})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# Paper-profile results committed under results/, and bring-your-own models.
# ------------------------------------------------------------------------------------------------

def export_results(trained: Trained, tables: dict[str, pd.DataFrame], root=None) -> str:
    """Write the small results of a run (tables as CSV, curves, config, hardware) to ``results/``."""
    files = {f"{k}.csv": v.to_csv(index=False) for k, v in tables.items()}
    files["history.json"] = trained.history.to_json(orient="records")
    return export("classifier_results", trained.run, meta=trained.meta, files=files, root=root)


def published(run: ClassifierRun) -> Published | None:
    """Paper-profile tables for ``run`` from ``results/``, or None when absent."""
    folder = published_folder("classifier_results", run)
    if folder is None:
        return None
    tables = {p.stem: pd.read_csv(io.StringIO(p.read_text())) for p in folder.glob("*.csv")}
    return Published(run, pd.read_json(io.StringIO((folder / "history.json").read_text())),
                     json.loads((folder / "meta.json").read_text()), tables=tables)


def evaluate_model(model: torch.nn.Module, fit_set: data.ImageSet, id_set: data.ImageSet,
                   ood_sets: dict[str, data.ImageSet], seed: int = 0, batch_size: int = 512) -> ClassifierEvaluation:
    """Bring your own classifier: any module with ``features``/``head``/``fc`` (see
    :mod:`ood_core.classifiers`, e.g. ``TorchvisionClassifier`` with your weights) and your own
    image sets, scored by every detector with the book's metric code. Nothing is cached."""
    model.eval()
    trained = Trained(run=None, model=model, history=pd.DataFrame(), meta={})

    def feats(s):
        f, logits = scores.compute_logits_and_features(model, s.x, batch_size=batch_size)
        return {"features": f.numpy(), "logits": logits.numpy(), "y": s.y.numpy()}

    return ClassifierEvaluation(trained, id_set, ood_sets, {}, feats(fit_set), feats(id_set),
                                {k: feats(s) for k, s in ood_sets.items()}, seed=seed)

"""What works instead of a raw likelihood (chapter 15): the remedies on both directions of a pair, cached.

One call, :func:`study`, computes everything the chapter shows and the evidence of its claims:

* **why image flows fail** (Kirichenko et al. 2020, Sec. 5): the first coupling layer of the FashionMNIST
  Glow predicting its masked half on ID and OOD images (median / mean ``R^2``,
  :func:`ood_core.flow_diagnostics.coupling_view`) and reconstructions from one kept level of the
  multi-scale latents (:func:`ood_core.flow_diagnostics.reconstruction_table`);
* **the remedies on both directions** FashionMNIST → MNIST and MNIST → FashionMNIST over the seed study's
  training seeds (:func:`ood_core.detectors.seed_table`, :func:`ood_core.detectors.seed_summary`), ranked by
  the worse direction's mean AUROC;
* **CIFAR-10 against every OOD set** of the unified benchmark (:func:`ood_core.detectors.run_table`);
* the **"what works" line** of each detector, judged with the thresholds of :data:`ood_core.claims.TWO_WAYS`
  (:data:`~ood_core.claims.TWO_WAYS_GOAL`, :data:`~ood_core.claims.TWO_WAYS_FLOOR`), and the evidence of
  the chapter's claims (Ren et al. 2019, Serrà et al. 2020, Kirichenko et al. 2020, Morningstar et al. 2021,
  Nalisnick et al. 2019b), computed from the tables above.

Every model is read from the artifact cache (trained by chapters 02, 13 and 14 when absent).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ood_core import benchmarks, data, detectors, names
from ood_core import flow_diagnostics as fd
from ood_core import likelihood_study as ls
from ood_core.claims import TWO_WAYS_FLOOR, TWO_WAYS_GOAL
from ood_core.profiles import get_profile

#: The two directions of the seed study's pair, forward (OOD simpler than ID) first: ``(ID, OOD)`` dataset names.
DIRECTIONS = (("fashion_mnist", "mnist"), ("mnist", "fashion_mnist"))
#: The evaluation sets of the coupling-layer views (those the FashionMNIST Glow has), and how many images.
VIEW_SETS = (names.ID_TEST, "mnist", "uniform")
N_VIEW, N_RECONSTRUCTION, N_SHOWN = 256, 128, 8
#: The ID set of the colour benchmark (the unified benchmark's CIFAR-10 models, chapter 13).
CIFAR = "cifar10"

#: Claims whose evidence is a detector's AUROC per training seed on both directions (rule
#: :data:`ood_core.claims.TWO_WAYS`): ``claim id -> (detector spec, the paper's number as recalled)``.
TWO_WAY_CLAIMS = {
    "ren_likelihood_ratio": ("likelihood_ratio:model=pixelcnn",
                             "≈ 99 % on FashionMNIST → MNIST with PixelCNN++ (Ren et al. 2019; recalled, "
                             "not re-checked)"),
    "serra_input_complexity": ("input_complexity:codec=png",
                               "Serrà et al. report FashionMNIST → MNIST ≈ 94-95 % with PNG and Glow (recalled)"),
    "kirichenko_embeddings": ("feature_flow",
                              "Kirichenko et al. report near-perfect detection with flows on EfficientNet embeddings "
                              "(recalled)"),
}
DOSE = "dose:model=glow"

#: The mechanism behind each remedy's result, matched by a substring of the detector's title; classifier
#: scores get :data:`CLASSIFIER_MECHANISM`.
MECHANISMS = {
    "log p": "a raw likelihood ranks simpler images higher (lower per-pixel variance, more constant pixels), "
             "whichever set is in-distribution",
    "likelihood ratio": "the background model carries the population-level statistics that dominate log p; "
                        "subtracting it leaves what is specific to the ID data",
    "input complexity": "it subtracts a compressor's code length, which removes the complexity bias in one "
                        "direction and adds the opposite bias when the OOD set is the more complex one",
    "typicality": "it asks whether log p is *typical*, not high, so it flags inputs that are too likely as well "
                  "as too unlikely, but one input is a noisy test",
    "DoSE": "a density per summary statistic learns each one's ID range, so an input can be atypical "
            "in log-det or latent norm even when log p is high",
    "flow on classifier features": "the classifier's features carry semantic content and none of the pixel "
                                   "statistics, so the density is of *what* the image shows",
}
CLASSIFIER_MECHANISM = "a classifier score: it never sees pixel statistics"


@dataclass(frozen=True)
class Remedies:
    """Everything chapter 15 shows.

    ``glow``: the FashionMNIST Glow's evaluation (chapter 02); ``views``: its first coupling layer's
    :class:`~ood_core.flow_diagnostics.CouplingView` per set display name; ``r2``: :data:`names.MEDIAN_R2`
    and :data:`names.MEAN_R2` per set; ``reconstruction``: the kept-level table; ``reconstructions``:
    images (uint8) per grid title for :func:`ood_core.plots.grids`. ``by_seed``: one row per (direction,
    training seed, detector), :func:`ood_core.detectors.seed_table` plus :data:`names.PAIR`; ``two_ways``:
    mean AUROC per detector (rows) and direction (columns ``forward``, ``reverse``), their
    :func:`names.std_column` and :data:`names.WORSE_DIRECTION`, best first; ``cifar``: the unified
    benchmark's long table on CIFAR-10 with :data:`names.SET`; ``cifar_grid``: its AUROC per detector (in
    ``two_ways`` order) and set. ``what_works``: one Markdown line per detector. ``evidence``: claim id ->
    evidence for :func:`ood_core.claims.record`.
    """

    glow: ls.LikelihoodEvaluation
    views: dict[str, fd.CouplingView]
    r2: pd.DataFrame
    reconstruction: pd.DataFrame
    reconstructions: dict[str, torch.Tensor]
    forward: str
    reverse: str
    n_seeds: int
    by_seed: pd.DataFrame
    two_ways: pd.DataFrame
    cifar: pd.DataFrame
    cifar_grid: pd.DataFrame
    what_works: list[str]
    evidence: dict[str, dict]


def specs(profile: str) -> list[str]:
    """The detectors of the chapter: the profile's remedies, then its reference classifier scores."""
    U = get_profile(profile).unified
    return list(dict.fromkeys((*U.remedies, *U.reference_classifier)))


def coupling_diagnosis(glow: ls.LikelihoodEvaluation, seed: int = 0
                       ) -> tuple[dict[str, fd.CouplingView], pd.DataFrame, pd.DataFrame, dict[str, torch.Tensor], dict]:
    """Coupling views, their ``R^2`` table, the kept-level reconstruction table, the reconstructions shown
    and the evidence of ``kirichenko_local`` (:data:`ood_core.claims.LOCAL_PREDICTION`)."""
    model = glow.trained.model
    view_sets = {k: glow.sets[k].x[:N_VIEW] for k in VIEW_SETS if k in glow.sets}
    views = {k: fd.coupling_view(model, x, level=0, step=0) for k, x in view_sets.items()}
    median_r2 = {k: float(np.median(v.explained)) for k, v in views.items()}
    r2 = pd.DataFrame({glow.names[k]: [median_r2[k], float(np.mean(v.explained))] for k, v in views.items()},
                      index=[names.MEDIAN_R2, names.MEAN_R2]).T
    keeps = [tuple(), *[(i,) for i in range(model.config.levels)]]
    recon = fd.reconstruction_table(model, {k: x[:N_RECONSTRUCTION] for k, x in view_sets.items() if k != "uniform"},
                                    keeps=keeps, seed=seed, names=glow.names)
    shown = {}
    for k in (names.ID_TEST, "mnist"):
        x = view_sets[k][:N_SHOWN]
        shown[glow.names[k]] = x
        for level in range(model.config.levels):
            rec = fd.latent_reconstruction(model, x, keep_levels=(level,))
            shown[f"{glow.names[k]}: level {level} kept"] = ((rec + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    evidence = {"model": glow.run.label, "id_r2": median_r2[names.ID_TEST],
                "ood_r2": {glow.names[k]: value for k, value in median_r2.items() if k != names.ID_TEST}}
    return {glow.names[k]: v for k, v in views.items()}, r2, recon, shown, evidence


def seed_long_table(P, spec_list, seed: int = 0, device=None) -> pd.DataFrame:
    """:func:`ood_core.detectors.seed_table` of every direction of :data:`DIRECTIONS` in the seed study
    (its first ``n_spread`` training seeds), each scored on its own OOD set only, with :data:`names.PAIR`."""
    S = P.seeds
    families = {detectors.title(s): detectors.family_of(s) for s in spec_list}
    other = dict(DIRECTIONS)
    long = []
    for ds in S.datasets:
        by_seed = {}
        for s in S.seeds[:S.n_spread]:
            suite = detectors.Suite(benchmarks.seed_context(P, ds, s, spec_list, other[ds], seed=seed, device=device))
            by_seed[s] = {detectors.title(spec): suite.scores(spec, [names.ID_TEST, other[ds]]) for spec in spec_list}
        long.append(detectors.seed_table(by_seed, families, {other[ds]: data.spec(other[ds]).title},
                                         data.spec(ds).title))
    long = pd.concat(long, ignore_index=True)
    long.insert(0, names.PAIR, [names.pair_title(i, o) for i, o in zip(long["ID"], long[names.OOD_SET])])
    return long


def two_way_table(long: pd.DataFrame, forward: str, reverse: str) -> pd.DataFrame:
    """Mean AUROC (%) over seeds per detector on ``forward`` and ``reverse`` (columns named by the pairs),
    their standard deviations and :data:`names.WORSE_DIRECTION`, sorted best first."""
    summary = detectors.seed_summary(long)
    summary[names.PAIR] = [names.pair_title(i, o) for i, o in zip(summary["ID"], summary[names.OOD_SET])]
    order = list(dict.fromkeys(summary[names.DETECTOR]))  # first seen first: ties keep the spec order
    wide = summary.pivot(index=names.DETECTOR, columns=names.PAIR, values="mean").loc[order, [forward, reverse]]
    for pair in (forward, reverse):
        wide[names.std_column(pair)] = summary.pivot(index=names.DETECTOR, columns=names.PAIR, values="std")[pair]
    wide[names.WORSE_DIRECTION] = wide[[forward, reverse]].min(axis=1)
    return wide.sort_values(names.WORSE_DIRECTION, ascending=False)


def direction_status(forward: float, reverse: float) -> str:
    """Whether a detector reaches :data:`~ood_core.claims.TWO_WAYS_GOAL` on both directions, or which one it
    loses -- failing it below :data:`~ood_core.claims.TWO_WAYS_FLOOR` (mean AUROC %)."""
    worse, lost = min(forward, reverse), "reversed" if reverse < forward else "forward"
    if worse >= TWO_WAYS_GOAL:
        return f"reaches {TWO_WAYS_GOAL} % on both directions"
    if worse < TWO_WAYS_FLOOR:
        return f"fails the {lost} pair ({worse:.1f} %)"
    return f"stays below {TWO_WAYS_GOAL} % on the {lost} pair"


def what_works_lines(two_ways: pd.DataFrame, forward: str, reverse: str) -> list[str]:
    """One Markdown line per detector: both directions' mean AUROC, :func:`direction_status`, the mechanism."""
    lines = []
    for title, row in two_ways.iterrows():
        why = next((v for k, v in MECHANISMS.items() if k in title), CLASSIFIER_MECHANISM)
        fwd, rev = row[forward], row[reverse]
        lines.append(f"* **{title}** — {fwd:.1f} % / {rev:.1f} % (forward / reversed): {direction_status(fwd, rev)}; "
                     f"{why}.")
    return lines


def two_way_evidence(long: pd.DataFrame, spec: str, forward: str, reverse: str, reference: str) -> dict:
    """Evidence for :data:`ood_core.claims.TWO_WAYS`: the detector's AUROC per training seed on each direction."""
    t = detectors.title(spec)
    per = {pair: long[(long[names.DETECTOR] == t) & (long[names.PAIR] == pair)][names.AUROC].tolist()
           for pair in (forward, reverse)}
    return {"method": t, "forward": per[forward], "reverse": per[reverse], "reference": reference}


def every_pair_evidence(two_ways: pd.DataFrame, cifar_grid: pd.DataFrame, spec: str, forward: str, reverse: str
                        ) -> dict:
    """Evidence for :data:`ood_core.claims.EVERY_PAIR`: mean AUROC on both directions and on CIFAR-10 per set."""
    t = detectors.title(spec)
    aurocs = {pair: float(two_ways.loc[t, pair]) for pair in (forward, reverse)}
    aurocs.update({names.pair_title(data.spec(CIFAR).title, k): float(v) for k, v in cifar_grid.loc[t].items()})
    return {"method": t, "aurocs": aurocs}


def typicality_evidence(glow: ls.LikelihoodEvaluation, batch_sizes, ood: str = "mnist", seed: int = 0) -> dict:
    """Evidence for :data:`ood_core.claims.TYPICALITY_BATCHES`: the typicality test's AUROC for single inputs
    and at the largest batch size, FashionMNIST Glow against ``ood``."""
    t = detectors.typicality_table(glow, batch_sizes, seed=seed)
    by_m = t[t[names.OOD_SET] == glow.names[ood]].set_index(names.BATCH_SIZE)[names.AUROC]
    return {"pair": names.pair_title(data.spec(glow.run.dataset).title, data.spec(ood).title),
            "single": float(by_m.iloc[0]), "batch": float(by_m.iloc[-1]), "m": int(by_m.index[-1])}


def study(profile: str, seed: int = 0, device=None) -> Remedies:
    """Chapter 15's tables, lines and claims' evidence for ``profile`` (models from the cache)."""
    P = get_profile(profile)
    spec_list = specs(profile)
    glow = ls.evaluate(P.glow.runs["fashion_mnist"], P.glow.n_eval, P.glow.ood["fashion_mnist"], seed=seed,
                       device=device)
    views, r2, recon, shown, local = coupling_diagnosis(glow, seed=seed)
    forward, reverse = (names.pair_title(data.spec(i).title, data.spec(o).title) for i, o in DIRECTIONS)
    long = seed_long_table(P, spec_list, seed=seed, device=device)
    two_ways = two_way_table(long, forward, reverse)
    cifar = detectors.run_table(benchmarks.unified_context(P, CIFAR, spec_list, seed=seed, device=device), spec_list,
                                n_boot=P.unified.n_boot, seed=seed)
    cifar[names.SET] = cifar[names.OOD_SET].str.replace(" test", "")
    grid = cifar.pivot_table(index=names.DETECTOR, columns=names.SET, values=names.AUROC, sort=False)
    grid = grid.loc[[t for t in two_ways.index if t in grid.index]]
    evidence = {cid: two_way_evidence(long, spec, forward, reverse, ref) for cid, (spec, ref) in TWO_WAY_CLAIMS.items()}
    evidence["morningstar_dose"] = every_pair_evidence(two_ways, grid, DOSE, forward, reverse)
    evidence["typicality_needs_batches"] = typicality_evidence(glow, P.unified.batch_sizes, seed=seed)
    evidence["kirichenko_local"] = local
    return Remedies(glow, views, r2, recon, shown, forward, reverse, len(P.seeds.seeds[:P.seeds.n_spread]), long,
                    two_ways, cifar, grid, what_works_lines(two_ways, forward, reverse), evidence)

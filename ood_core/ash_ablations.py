"""The ASH paper's ablations on every CIFAR-10 network of a profile, in one call (the book's chapter 12).

Djurisic et al. 2023 (arXiv:2209.09858): ID accuracy and OOD detection against the pruning
percentile ``p`` (Figs. 3/5, with SCALE, Xu et al. 2024, beside ASH-P/B/S), a per-sample against a
global threshold, ASH after earlier blocks (§5 "where to ASH") and every method's ID accuracy
against its near/far-OOD AUROC (Fig. 1). Then why ASH-S works or breaks, set by set: its energy is
dominated by the factor ``exp(s1/s2)`` at ``p = 95``, so the AUROC of ``s1/s2`` alone predicts it
(:func:`ood_core.classifier_study.ash_s_anatomy`); the label-smoothing pair of the profile; the
committed training ablation of ``results/ash_inversion``; the committed paper-profile tables.

:func:`study` returns :class:`AshAblations`: every table the chapter shows (columns are
:mod:`ood_core.names` constants where other modules read them), the sentences computed from them, and
``evidence[claim id][network]`` for :func:`ood_core.claims.record`, computed from the tables, never
from display strings. Everything is read from the artifact cache after the first run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ood_core import classifier_study as cs, claims, detectors, names, pretrained
from ood_core.ash import SHAPER_TITLES
from ood_core.profiles import get_profile

#: The shapers of the percentile sweep: ASH-P/B/S and SCALE (which only rescales).
SHAPERS = ("ash_p", "ash_b", "ash_s", "scale")
#: ASH-S's CIFAR percentile, at which its rescaling is taken apart.
P_EXP = 95
#: The percentile of "where to ASH" (ASH-S after each block).
P_WHERE = 90
#: The claims this chapter records, in the order of its ledger.
CLAIM_IDS = ("ash_preserves_accuracy", "ash_s_every_set", "local_beats_global", "penultimate_best")

# The sweep in numbers (one row per network and shaper).
LARGEST_P = "largest p, accuracy within 1 point"
BEST_P = "best p (AUROC)"
BEST_AUROC = "best AUROC"
AUROC_AT_90 = "AUROC at p = 90"
ENERGY_AUROC = "energy AUROC"
SWEEP_DIGITS = {LARGEST_P: 0, BEST_P: 0, BEST_AUROC: 2, AUROC_AT_90: 2, ENERGY_AUROC: 2}
#: ASH-S's AUROC minus energy's on one set (points).
GAIN = "ASH-S − energy"
#: The anatomy's AUROC columns and their short names in the chapter's tables.
AUROC_COLS = {names.AUROC_RATIO: "s1/s2 alone", names.AUROC_ENERGY: "energy", names.auroc_pruned(P_EXP): "ASH-P (prune)",
              names.auroc_scaled(P_EXP): "SCALE (scale)", names.auroc_both(P_EXP): "ASH-S (both)"}
#: Method groups of the trade-off figure, by detector-name prefix (the rest: "baseline").
GROUPS = {"ASH": ("ash_",), "successor": ("scale", "gen", "knn", "vim", "fdbd", "nnguide")}
NEAR_AUROC, FAR_AUROC = "near AUROC", "far AUROC"
LABEL_SMOOTHING = "label smoothing"
SEED_FACTOR = "seed (same recipe)"


@dataclass(frozen=True)
class SmoothingPair:
    """The profile's network trained with and without label smoothing (same seed and budget)."""

    table: pd.DataFrame  # anatomy summary, label smoothing and ID accuracy per network
    family_auroc: pd.DataFrame  # mean AUROC (%) of energy and the ASH family, without then with smoothing
    text: str


@dataclass(frozen=True)
class InversionAblation:
    """The committed training ablation of ``tools/experiments/ash_inversion.py`` at :data:`P_EXP`."""

    summary: pd.DataFrame  # :func:`ood_core.classifier_study.inversion_summary` at P_EXP, by variant
    shown: pd.DataFrame  # the summary with ASH-S's mean AUROC at the other percentiles
    factor_effects: pd.DataFrame  # :func:`ood_core.classifier_study.factor_effects` on ASH-S's mean AUROC
    caption: str
    text: str


@dataclass(frozen=True)
class PaperAblations:
    """The committed paper-profile tables of one network, or (``sweep`` None) why they are absent."""

    label: str
    source: str = ""
    note: str = ""
    sweep: pd.DataFrame | None = None
    local: pd.DataFrame | None = None  # AUROC by (shaper, percentile), local and global columns
    where: pd.DataFrame | None = None  # by stage
    exponents: pd.DataFrame | None = None  # the ASH-S anatomy, by set (None: earlier table code)
    evidence: dict[str, dict] = field(default_factory=dict)  # claim id -> evidence


@dataclass(frozen=True)
class AshAblations:
    """Every table, figure input, computed sentence and claim evidence of the ASH ablations."""

    profile: str
    main: str  # the profile's own CIFAR-10 classifier
    accuracy: dict[str, float]  # ID test accuracy (%) by network, trained here first, then trained elsewhere
    external: tuple[str, ...]  # networks trained elsewhere
    trained_here: tuple[str, ...]
    sources: dict[str, str]  # ledger source of each network's evidence
    ood_names: tuple[str, ...]
    sweeps: dict[str, pd.DataFrame]  # :func:`ood_core.classifier_study.percentile_sweep` by network
    unpruned: dict[str, pd.Series]  # the sweep's ASH-P row at p = 0 (plain energy) by network
    sweep_table: pd.DataFrame  # by (network, shaper)
    anatomy: dict[str, pd.DataFrame]  # :func:`ood_core.classifier_study.ash_s_anatomy` at P_EXP by network
    medians: pd.DataFrame  # median s1/s2, sets x networks
    ratios: dict[str, dict[str, np.ndarray]]  # s1/s2 per image, network -> set name -> values
    parts: dict[str, pd.DataFrame]  # AUROC of the ratio alone, prune vs scale, by set
    mechanism: pd.DataFrame  # anatomy rows of every OOD set of every network, with GAIN
    anatomy_verdicts: dict[str, str]
    effects: pd.DataFrame  # :func:`ood_core.classifier_study.anatomy_summary` by network
    effect_lines: dict[str, str]
    smoothing: SmoothingPair | None
    ablation: InversionAblation | None
    local: dict[str, pd.DataFrame]  # local vs global, wide, by network
    where: pd.DataFrame  # ASH-S@90 after each block, by (network, stage), networks trained here
    best_stage: dict[str, str]
    tradeoff: dict[str, pd.DataFrame]  # :func:`ood_core.classifier_study.near_far_summary` by network
    method_groups: dict[str, str]  # method title -> "ASH", "successor" or "baseline"
    tradeoff_columns: tuple[str, ...]  # NEAR_AUROC / FAR_AUROC where some network has a value
    tradeoff_table: pd.DataFrame
    paper: tuple[PaperAblations, ...]
    openood_note: str
    summary_lines: tuple[str, ...]
    evidence: dict[str, dict[str, dict]]  # claim id -> network -> evidence


def _unpruned(sweep: pd.DataFrame) -> pd.Series:
    """ASH-P at p = 0 is the identity: the sweep's plain-energy row."""
    return sweep[(sweep[names.SHAPER] == SHAPER_TITLES["ash_p"]) & (sweep[names.PERCENTILE] == 0)].iloc[0]


def sweep_summary(sweeps: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per network and shaper: the largest ``p`` within 1 point of the unpruned ID accuracy, the best ``p``
    by mean AUROC and that AUROC, the AUROC at ``p = 90`` and energy's."""
    rows = []
    for label, sw in sweeps.items():
        base = _unpruned(sw)
        for shaper, g in sw.groupby(names.SHAPER, sort=False):
            g = g.set_index(names.PERCENTILE)
            rows.append({names.NETWORK: label, names.SHAPER: shaper,
                         LARGEST_P: g.index[g[names.ID_ACCURACY] >= base[names.ID_ACCURACY] - 1].max(),
                         BEST_P: g[names.AUROC].idxmax(), BEST_AUROC: g[names.AUROC].max(),
                         AUROC_AT_90: g[names.AUROC].get(90, np.nan), ENERGY_AUROC: base[names.AUROC]})
    return pd.DataFrame(rows).set_index([names.NETWORK, names.SHAPER])


def anatomy_verdict(label: str, anatomy: pd.DataFrame, percentile: float = P_EXP) -> str:
    """One network's ASH-S anatomy in a sentence: where ASH-S beats energy, which sets it scales up more
    than ID, where its ratio alone points the wrong way and what pruning and scaling each contribute."""
    both = names.auroc_both(percentile)
    ood_rows = anatomy.dropna(subset=[names.AUROC_ENERGY]).set_index(names.SET)
    gain = ood_rows[both] - ood_rows[names.AUROC_ENERGY]
    wins, losses = list(gain.index[gain > 0]), list(gain.index[gain <= 0])
    wrong_way = list(ood_rows.index[ood_rows[names.AUROC_RATIO] < 50])
    agree = int(((ood_rows[names.AUROC_RATIO] >= 50) == (gain > 0)).sum())
    id_median = anatomy.set_index(names.SET)[names.MEDIAN_RATIO].iloc[0]
    spread_more = list(ood_rows.index[ood_rows[names.MEDIAN_RATIO] > id_median])
    mean_part = {col: (ood_rows[col] - ood_rows[names.AUROC_ENERGY]).mean()
                 for col in (names.auroc_pruned(percentile), names.auroc_scaled(percentile), both)}
    return (f"* **{label}.** The paper's CIFAR claim ({detectors.title(f'ash_s@{percentile:g}')} beats energy) holds on "
            f"{len(wins)} of {len(gain)} sets" + (f" ({', '.join(wins)})" if wins else "")
            + (f" and fails on {', '.join(losses)}" if losses else "") + ". "
            f"ID test's median s1/s2 is {id_median:.2f}; sets with a larger median, which ASH-S scales up more than "
            f"ID: {', '.join(spread_more) or 'none'}. The ratio alone points the wrong way (AUROC < 50 %) on "
            + (", ".join(wrong_way) if wrong_way else "no set")
            + f", and its side of 50 % predicts whether ASH-S beats energy on {agree} of {len(gain)} sets. "
            f"Mean AUROC change over energy: pruning alone {mean_part[names.auroc_pruned(percentile)]:+.1f}, "
            f"scaling alone {mean_part[names.auroc_scaled(percentile)]:+.1f}, both {mean_part[both]:+.1f} points.")


def _effect_line(label: str, r: pd.Series, elsewhere: bool) -> str:
    ash_s = names.mean_auroc_ash_s(P_EXP)
    return (f"* **{label}** ({'trained elsewhere' if elsewhere else 'trained here'}): ASH-S@{P_EXP} "
            f"**{r[names.ASH_S_EFFECT]}** (mean AUROC {r[ash_s]:.1f} % against energy's {r[names.AUROC_ENERGY]:.1f} %; "
            f"beats energy on {r[names.ASH_S_WINS]} sets). Median s1/s2: ID {r[names.ID_MEDIAN_RATIO]:.2f}, OOD "
            f"{r[names.OOD_MEDIAN_RATIO]:.2f}" + (" — OOD images spread their activation more than ID images, so ASH-S "
                                                 "scales them up." if r[names.OOD_MEDIAN_RATIO] > r[names.ID_MEDIAN_RATIO]
                                                 else "."))


def _smoothing_pair(trained_here: dict[str, cs.ClassifierEvaluation], main: cs.ClassifierEvaluation,
                    effects: pd.DataFrame, methods) -> SmoothingPair | None:
    """The profile's network with and without label smoothing, or None when the profile trains no such pair."""
    ls_pair = [label for label, e in trained_here.items() if e.trained.run.model.arch == main.trained.run.model.arch
               and e.run.dataset == "cifar10"]
    ls_values = {label: trained_here[label].trained.run.label_smoothing for label in ls_pair}
    if len(set(ls_values.values())) <= 1:
        return None
    pair = effects.loc[ls_pair].assign(**{LABEL_SMOOTHING: pd.Series(ls_values)},
                                       **{names.ID_ACCURACY: pd.Series({k: trained_here[k].accuracy for k in ls_pair})})
    smooth, plain = (pair.sort_values(LABEL_SMOOTHING).index[-1], pair.sort_values(LABEL_SMOOTHING).index[0])
    # the whole ASH family at the paper's percentiles, mean AUROC over every set (the previous chapter's tables)
    family = ["energy", detectors.title("ash_p@90"), detectors.title("ash_b@95"), detectors.title(f"ash_s@{P_EXP}"),
              detectors.title("scale@85")]
    family_auroc = pd.DataFrame({label: cs.summary(trained_here[label].benchmark(methods)).loc[family, names.AUROC]
                                 for label in (plain, smooth)}).T
    change = family_auroc.loc[smooth] - family_auroc.loc[plain]
    ash_s, effect, id_med, ood_med = (names.mean_auroc_ash_s(P_EXP), names.ASH_S_EFFECT, names.ID_MEDIAN_RATIO,
                                      names.OOD_MEDIAN_RATIO)
    text = (f"Label smoothing {ls_values[smooth]:g} changes the mean AUROC by: "
            + ", ".join(f"{m} {change[m]:+.1f}" for m in family) + " points. "
            f"ASH-S@{P_EXP} **{pair.loc[plain, effect]}** without it ({pair.loc[plain, ash_s]:.1f} %; "
            f"median s1/s2 ID {pair.loc[plain, id_med]:.2f}, OOD {pair.loc[plain, ood_med]:.2f}) and "
            f"**{pair.loc[smooth, effect]}** with it ({pair.loc[smooth, ash_s]:.1f} %; ID "
            f"{pair.loc[smooth, id_med]:.2f}, OOD {pair.loc[smooth, ood_med]:.2f}). "
            + ("On this network label smoothing is not the only cause: ASH-S at this percentile inverts without it "
               "too, and the percentile chosen on validation data (previous chapter) is the better test of the method "
               "here." if pair.loc[plain, effect] == "inverts" else
               "Without label smoothing ASH-S does not invert on this network: label smoothing is what inverts it."))
    return SmoothingPair(pair, family_auroc, text)


def _inversion_ablation(effects: pd.DataFrame, external: list[str]) -> InversionAblation | None:
    """The committed training ablation at :data:`P_EXP` and what it measures, or None when absent."""
    ablation = cs.inversion_ablation()
    if ablation is None:
        return None
    abl_long, abl_config, abl_meta = ablation
    abl = {p: cs.inversion_summary(abl_long, p) for p in sorted(abl_long[names.PERCENTILE].unique(), reverse=True)}
    main_p = abl[P_EXP]
    shown = main_p.drop(columns=["what"]).assign(
        **{names.mean_auroc_ash_s(p): abl[p][names.mean_auroc_ash_s(p)] for p in abl if p != P_EXP})
    caption = (f"Training ablation ({abl_meta['hardware']}, {abl_meta['date']}, {abl_meta['epochs']} epochs over "
               f"{10000 * len(abl_meta['shards']):,} images): s1/s2 medians and mean AUROC (%) over every OOD set")
    effects_by_factor = cs.factor_effects(main_p, abl_config["pairs"], names.mean_auroc_ash_s(P_EXP))
    seed_spread = effects_by_factor.loc[SEED_FACTOR, ["least change", "largest change"]].abs().max()
    decisive = effects_by_factor[(effects_by_factor.index != SEED_FACTOR)
                                 & effects_by_factor["same sign in every pair"]
                                 & (effects_by_factor["mean change"].abs() > seed_spread)
                                 & (effects_by_factor["pairs"] >= 2)]
    smoothing = effects_by_factor.loc["label smoothing 0.2"]
    trainer = effects_by_factor.loc["our trainer instead of the plain loop"]
    ext_inverting = [label for label in external if effects.loc[label, names.ASH_S_EFFECT] == "inverts"]
    inverted = [v for v in main_p.index if main_p.loc[v, names.ASH_S_EFFECT] == "inverts"]
    with_ls = [v for v in main_p.index if abl_config["variants"][v]["settings"]["label_smoothing"] > 0]
    text = (
        f"**Measured.** Retraining a recipe with another seed moves ASH-S@{P_EXP}'s mean AUROC by up to "
        f"{seed_spread:.1f} points. Factors whose every pair moves it the same way, by more than that on average: "
        + (", ".join(f"**{f}** ({r['mean change']:+.1f} points on average, {r['least change']:+.1f} to "
                     f"{r['largest change']:+.1f}, {int(r['pairs'])} pairs)" for f, r in decisive.iterrows())
           or "none") + ". "
        f"Label smoothing 0.2 changes it by {smoothing['least change']:+.1f} to {smoothing['largest change']:+.1f} "
        f"points over {int(smoothing['pairs'])} pairs on ResNet-20, ResNet-18 and AirbenchNet; ASH-S@{P_EXP} inverts "
        f"(mean AUROC below 50 %) on {sum(v in with_ls for v in inverted)} of the {len(with_ls)} networks trained "
        f"with label smoothing and on {sum(v not in with_ls for v in inverted)} of the "
        f"{len(main_p) - len(with_ls)} trained without. Our trainer against the plain loop of the public recipe: "
        f"{trainer['least change']:+.1f} and {trainer['largest change']:+.1f} points over two seeds (mean "
        f"{trainer['mean change']:+.1f}), "
        + ("inside the seed spread on average: no defect in the trainer shows at this budget."
           if abs(trainer["mean change"]) <= seed_spread else
           "beyond the seed spread: the trainer itself changes what ASH-S does.")
        + (" The networks trained elsewhere are fed through the same data path (uint8 to [0, 1], the same padding "
           "of MNIST, the same noise); ASH-S@" + f"{P_EXP} inverts on "
           + (", ".join(ext_inverting) if ext_inverting else "none of them")
           + (": the data path does not make it invert." if not ext_inverting else ".") if external else ""))
    return InversionAblation(main_p, shown, effects_by_factor, caption, text)


def local_table(lg: pd.DataFrame) -> pd.DataFrame:
    """A local-vs-global table wide: AUROC, ID accuracy and pruned share per (shaper, percentile) and threshold."""
    wide = lg.pivot_table(index=[names.SHAPER, names.PERCENTILE], columns=names.THRESHOLD, sort=False,
                          values=[names.AUROC, names.ID_ACCURACY, names.PRUNED_ON_ID])
    short = {names.AUROC: "AUROC", names.ID_ACCURACY: "ID acc.", names.PRUNED_ON_ID: "pruned %"}
    wide.columns = [f"{short[metric]} ({variant.split(' (')[0]})" for metric, variant in wide.columns]
    return wide


def _paper(arch: str, paper_run) -> PaperAblations:
    """The committed paper-profile tables of ``paper_run`` and their evidence, or a note on what is missing."""
    paper = cs.published(paper_run)
    if paper is None:
        return PaperAblations(paper_run.label, note=(
            f"No paper-profile results for *{paper_run.label}* under `results/` yet"
            + (": it needs a GPU (`python -m ood_core classifier --profile paper --network densenet --export`)."
               if arch.startswith("DenseNet") else ".")))
    t = paper.tables
    source = f"paper profile ({paper.hardware})" + ("" if arch == "ResNet-18" else f", {paper_run.label}")
    lg_p = t["local_vs_global"].pivot_table(index=[names.SHAPER, names.PERCENTILE], columns=names.THRESHOLD,
                                            values=names.AUROC, sort=False)
    lg_p.columns = [f"AUROC, {c.split(' (')[0]}" for c in lg_p.columns]
    evidence = {"ash_preserves_accuracy": claims.accuracy_evidence(t["sweep"]),
                "local_beats_global": claims.local_evidence(t["local_vs_global"]),
                "penultimate_best": claims.penultimate_evidence(t["where_to_ash"])}
    exponents = None
    if "exponents" in t:
        exponents = t["exponents"].set_index(names.SET).rename(columns=AUROC_COLS)
        evidence["ash_s_every_set"] = claims.per_set_evidence(t["exponents"], P_EXP)
    return PaperAblations(paper_run.label, source, "" if exponents is not None else
                          f"The committed tables of *{paper_run.label}* have no ASH-S anatomy (earlier table code).",
                          t["sweep"], lg_p, t["where_to_ash"].set_index(names.STAGE), exponents, evidence)


def _summary_lines(main: str, labels, sweep_table: pd.DataFrame, mech: pd.DataFrame) -> tuple[str, ...]:
    sw_main = sweep_table.loc[main]
    gain_main = mech[mech[names.NETWORK] == main].set_index(names.SET)[GAIN]
    agree_all = int(((mech[names.AUROC_RATIO] >= 50) == (mech[GAIN] > 0)).sum())
    scale_gap = (mech[names.auroc_scaled(P_EXP)] - mech[names.auroc_both(P_EXP)]).abs().mean()
    prune_gap = (mech[names.auroc_pruned(P_EXP)] - mech[names.auroc_both(P_EXP)]).abs().mean()
    ash_s, scale = SHAPER_TITLES["ash_s"], SHAPER_TITLES["scale"]
    return (
        "* Accuracy against $p$, the ASH-S anatomy, local against global and the trade-off come from cached features; "
        "where to ASH needs fresh forward passes with shaping applied by composition, never by toggling the model.",
        f"* {main}: the best mean AUROC over $p$ is ASH-S {sw_main.loc[ash_s, BEST_AUROC]:.1f} % (at p = "
        f"{sw_main.loc[ash_s, BEST_P]:g}) and SCALE {sw_main.loc[scale, BEST_AUROC]:.1f} % (at p = "
        f"{sw_main.loc[scale, BEST_P]:g}), against energy's {sw_main.loc[ash_s, ENERGY_AUROC]:.1f} %.",
        f"* ASH-S@{P_EXP} beats energy on {int((gain_main > 0).sum())} of {len(gain_main)} sets on {main}; "
        + "; ".join(f"{label}: {int((mech[mech[names.NETWORK] == label][GAIN] > 0).sum())} of "
                    f"{int((mech[names.NETWORK] == label).sum())}" for label in labels if label != main)
        + ". " + f"Over {len(mech)} (network, set) pairs, the side of 50 % on which s1/s2 alone falls predicts whether "
        f"ASH-S beats energy in {agree_all} pairs; SCALE (scaling alone) is within {scale_gap:.1f} AUROC points of "
        f"ASH-S on average, ASH-P (pruning alone) within {prune_gap:.1f}: "
        + ("the rescaling, more than the pruning, decides what ASH-S does." if scale_gap < prune_gap else
           "the pruning, more than the rescaling, decides what ASH-S does."),
    )


def study(profile: str, seed: int = 0, device: str = "cpu") -> AshAblations:
    """Every ASH ablation of ``profile`` on its CIFAR-10 networks (trained here, and trained elsewhere when
    their files are present), from the artifact cache where it holds them; see the module docstring."""
    P = get_profile(profile)
    C = P.classifier
    ev = cs.evaluate(C.runs["cifar10"], C.n_eval, C.n_fit, C.ood["cifar10"], seed=seed, device=device)
    trained_here = {ev.trained.run.label: ev}
    trained_here.update({run.label: cs.evaluate(run, C.n_eval, C.n_fit, C.ood["cifar10"], seed=seed, device=device)
                         for run in C.networks.values()})
    external = {}
    for name in C.pretrained.names:  # networks trained elsewhere, when their files are present
        if pretrained.available(name):
            e = cs.evaluate_pretrained(name, C.pretrained.n_eval, C.pretrained.n_fit, C.ood["cifar10"], seed=seed,
                                       device=device)
            external[e.run.label] = e
    nets = {**trained_here, **external}
    main = ev.trained.run.label
    near, synthetic = ev.near_names(C.near["cifar10"]), ev.synthetic_names
    sources = {label: f"{P.name} profile" if label == main else f"{P.name} profile, {label}" for label in nets}
    evidence: dict[str, dict[str, dict]] = {c: {} for c in CLAIM_IDS}

    # ID accuracy and OOD detection against the percentile
    sweeps = {label: e.percentile_sweep(C.percentiles, shapers=SHAPERS) for label, e in nets.items()}
    sweep_table = sweep_summary(sweeps)
    evidence["ash_preserves_accuracy"] = {label: claims.accuracy_evidence(sw) for label, sw in sweeps.items()}

    # why ASH-S breaks, measured
    anatomy = {label: e.exponent_table(P_EXP) for label, e in nets.items()}
    medians = pd.DataFrame({label: a.set_index(names.SET)[names.MEDIAN_RATIO] for label, a in anatomy.items()})
    ratios = {label: {e.context.sets[k].name: v for k, v in e.suite.scores(f"ash_exponent@{P_EXP}").items()}
              for label, e in nets.items()}
    parts = {label: a.dropna(subset=[names.AUROC_ENERGY]).set_index(names.SET)[list(AUROC_COLS)].rename(
        columns=AUROC_COLS) for label, a in anatomy.items()}
    mech = pd.concat([a.dropna(subset=[names.AUROC_ENERGY]).assign(**{names.NETWORK: label})
                      for label, a in anatomy.items()])
    mech[GAIN] = mech[names.auroc_both(P_EXP)] - mech[names.AUROC_ENERGY]
    evidence["ash_s_every_set"] = {label: claims.per_set_evidence(a, P_EXP) for label, a in anatomy.items()}

    # what makes ASH-S invert
    effects = pd.DataFrame({label: cs.anatomy_summary(a, P_EXP) for label, a in anatomy.items()}).T
    effects.index.name = names.NETWORK
    effect_lines = {label: _effect_line(label, r, label in external) for label, r in effects.iterrows()}
    smoothing = _smoothing_pair(trained_here, ev, effects, C.methods)
    ablation = _inversion_ablation(effects, list(external))

    # local vs global threshold
    local = {}
    for label, e in nets.items():
        lg = e.local_vs_global(C.ablation_percentiles)
        evidence["local_beats_global"][label] = claims.local_evidence(lg)
        local[label] = local_table(lg)

    # where to ASH (fresh forward passes: the networks trained here)
    where = pd.concat({label: e.where_to_ash(P_WHERE).set_index(names.STAGE) for label, e in trained_here.items()},
                      names=[names.NETWORK])
    evidence["penultimate_best"] = {label: claims.penultimate_evidence(where.loc[label].reset_index())
                                    for label in trained_here}
    best_stage = {label: where.loc[label, names.AUROC].idxmax() for label in trained_here}

    # the trade-off: ID accuracy against near- and far-OOD AUROC
    group_of = {detectors.title(s): next((g for g, prefixes in GROUPS.items() if s.startswith(prefixes)), "baseline")
                for s in C.methods}
    tradeoff = {label: cs.near_far_summary(e.benchmark(C.methods), near, synthetic) for label, e in nets.items()}
    columns = tuple(c for c in (NEAR_AUROC, FAR_AUROC) if any(t[c].notna().any() for t in tradeoff.values()))
    ash_like = [m for m in tradeoff[main].index if group_of.get(m) == "ASH" or m.startswith("SCALE")]
    tradeoff_table = pd.concat({label: t.loc[["energy", *ash_like], [NEAR_AUROC, FAR_AUROC, names.ID_ACCURACY]]
                                for label, t in tradeoff.items()}, names=[names.NETWORK])

    # the committed paper-profile tables
    paper_profile = get_profile("paper")
    paper_runs = {"ResNet-18": paper_profile.classifier.runs["cifar10"]}
    if "densenet" in paper_profile.classifier.networks:
        paper_runs["DenseNet-BC-100"] = paper_profile.classifier.networks["densenet"]
    paper = tuple(_paper(arch, run) for arch, run in paper_runs.items())

    openood_ash, openood_energy = cs.OPENOOD_CIFAR10["ASH"], cs.OPENOOD_CIFAR10["energy"]
    dims = {label: e.id_feats["features"].shape[1] for label, e in nets.items()}
    openood_note = (
        f"OpenOOD's CIFAR-10 near/far-OOD AUROC: ASH {openood_ash[0]:.2f} / {openood_ash[1]:.2f}, energy "
        f"{openood_energy[0]:.2f} / {openood_energy[1]:.2f}. Pruning at $p = 95$ keeps few units of a CIFAR network's "
        "penultimate vector: " + "; ".join(f"{label}: {n - round(n * 0.95)} of {n}" for label, n in dims.items())
        + ". With so few units left, whether the rescaling helps depends on how each set's activation mass is spread, "
        "which the section *Why ASH-S breaks, measured* shows set by set.")

    return AshAblations(
        profile=P.name, main=main, accuracy={label: e.accuracy for label, e in nets.items()},
        external=tuple(external), trained_here=tuple(trained_here), sources=sources,
        ood_names=tuple(ev.names.values()), sweeps=sweeps, unpruned={label: _unpruned(sw) for label, sw in sweeps.items()},
        sweep_table=sweep_table, anatomy=anatomy, medians=medians, ratios=ratios, parts=parts, mechanism=mech,
        anatomy_verdicts={label: anatomy_verdict(label, a) for label, a in anatomy.items()}, effects=effects,
        effect_lines=effect_lines, smoothing=smoothing, ablation=ablation, local=local, where=where,
        best_stage=best_stage, tradeoff=tradeoff, method_groups=group_of, tradeoff_columns=columns,
        tradeoff_table=tradeoff_table, paper=paper, openood_note=openood_note,
        summary_lines=_summary_lines(main, list(nets), sweep_table, mech), evidence=evidence)

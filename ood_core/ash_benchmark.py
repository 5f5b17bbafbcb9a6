"""The ASH benchmark (chapter 11) in one call: every table it shows, its figures' inputs and its claims' evidence.

:func:`study` evaluates a profile's classifiers (:func:`ood_core.classifier_study.evaluate`), the CIFAR-10
networks trained elsewhere (:func:`ood_core.classifier_study.evaluate_pretrained`; absent files are named,
not fatal) and reads the committed paper-profile results, then assembles the chapter's tables: the
benchmark of Djurisic et al. 2023 (arXiv:2209.09858, CIFAR-10 table: mean FPR95/AUROC over the OOD sets,
energy score after ASH-P/B/S), OpenOOD v1.5's near/far split and its published ResNet-18 AUROCs beside
ours, the paper's fixed percentiles beside validation-chosen ones, FashionMNIST -> MNIST, and one row per
network. Tables are keyed by :mod:`ood_core.names` constants. The claims' evidence is computed from these
typed tables (never from display strings) with the helpers of :mod:`ood_core.claims`; the chapter
records it with :func:`ood_core.claims.record`. Sentences that state numbers are computed here too, so
the chapter keeps only narrative, parameters, this call, tables and figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ood_core import classifier_study as cs, claims, data, detectors, names, pretrained
from ood_core.classifier_study import ClassifierEvaluation
from ood_core.experiment import missing_note
from ood_core.profiles import get_profile

#: The six CIFAR-10 OOD sets the ASH paper averages over.
ASH_PAPER_SETS = ("svhn", "lsun_crop", "lsun_resize", "isun", "textures", "places365")
#: The titles of the detectors the chapter names (:func:`ood_core.detectors.title`).
ASH_S, ASH_B, ASH_P, ASH_RAND, SCALE = (detectors.title(s) for s in ("ash_s@95", "ash_b@95", "ash_p@90",
                                                                     "ash_rand@90", "scale@85"))
#: The baselines whose distance to OpenOOD's numbers says whether our classifier is in OpenOOD's regime.
BASELINES = ("MSP", "energy", "max-logit", "KNN")
#: A median |ours - OpenOOD| over the baselines up to this (AUROC points) counts as OpenOOD's regime.
REGIME_GAP = 3
#: The methods of the "every network at a glance" table.
GLANCE_METHODS = ("energy", ASH_P, ASH_B, ASH_S, SCALE)
#: The published DenseNet-BC-100 checkpoint: the ASH paper's network.
DENSENET = pretrained.checkpoint("densenet_bc100").title
DENSENET_COMMAND = "python -m ood_core classifier --profile paper --network densenet --export"
NO_EXTERNAL_NOTE = ("No network trained elsewhere is available here: put the files described in "
                    "`shared/models/README.md` into the models folder (`$OOD_MODELS`) and rerun this chapter.")


@dataclass(frozen=True)
class NetworkBenchmark:
    """One network's near/far and mean-over-every-set table, and its per-set AUROC and FPR95 grids (%)."""

    label: str
    table: pd.DataFrame
    caption: str
    auroc_grid: pd.DataFrame  # method x OOD set
    fpr_grid: pd.DataFrame


@dataclass(frozen=True)
class PaperProfileTable:
    """A committed paper-profile result as shown; ``table`` None: nothing is committed (``caption`` says so)."""

    label: str
    table: pd.DataFrame | None
    caption: str
    auroc_grid: pd.DataFrame | None = None  # method x OOD set, for the CIFAR-10 run


@dataclass(frozen=True)
class AshBenchmark:
    """Everything chapter 11 shows. Tables are indexed by ``names.METHOD`` unless stated otherwise."""

    profile: str
    seed: int
    label: str  # the profile's CIFAR-10 classifier
    #: The profile's classifiers by dataset, the other networks trained here and those trained elsewhere by label.
    evals: dict[str, ClassifierEvaluation]
    networks: dict[str, ClassifierEvaluation]
    external: dict[str, ClassifierEvaluation]
    #: ``{checkpoint title: why it is absent}`` for the networks trained elsewhere that could not be loaded.
    external_missing: dict[str, str]
    #: One row per network (``names.NETWORK``): how it was trained, test images, accuracy, published accuracy.
    classifiers: pd.DataFrame
    #: Display names of the CIFAR-10 near-OOD and synthetic sets present.
    near: list[str]
    synthetic: list[str]
    #: The CIFAR-10 OOD sets (index "set"): group, in the ASH paper, in OpenOOD v1.5, images here.
    sets: pd.DataFrame
    missing_note: str
    differences: str  # what differs from OpenOOD v1.5 and the paper (Markdown)
    #: The CIFAR-10 classifier's long benchmark table (one row per method and OOD set, plus the mean rows).
    benchmark: pd.DataFrame
    #: Near/far summary with the synthetic AUROC and OpenOOD's columns (OpenOOD's ASH in the ASH-B@95 row).
    near_far: pd.DataFrame
    near_far_caption: str
    #: Ours beside OpenOOD v1.5 (``names.OPENOOD_COMPARISON`` columns, ``NEAR_DELTA``, ``FAR_DELTA``).
    openood: pd.DataFrame
    openood_caption: str
    openood_title: str  # of the scatter plot
    #: Median |ours - OpenOOD| over the baselines (AUROC points) and the sentence that reads it.
    base_gap: float
    openood_note: str
    #: AUROC (%) per method x OOD set, synthetic sets last.
    per_set_auroc: pd.DataFrame
    #: Mean over every OOD set (:func:`ood_core.classifier_study.summary`) and the sentence that reads it.
    summary: pd.DataFrame
    summary_caption: str
    summary_verdict: str
    #: Energy, ASH-P, ASH-S and SCALE: pruning, rescaling, both.
    scale_parts: pd.DataFrame
    #: The other networks, by label.
    network_results: dict[str, NetworkBenchmark]
    #: ``{source: (summary, near/far summary)}`` of every network beside the profile's classifier.
    network_summaries: dict[str, tuple[pd.DataFrame, pd.DataFrame]]
    #: The DenseNet-BC-100 trained by our recipe on a GPU (paper profile, committed), or why it is absent.
    paper_densenet: PaperProfileTable
    #: The percentile: notes for networks without a validation split, the chosen p (network x shaper), and
    #: test metrics at the fixed and the chosen p (index network, ``names.P_CHOSEN_BY``, method).
    validation_notes: list[str]
    chosen: pd.DataFrame
    chosen_caption: str
    fixed_validated: pd.DataFrame | None
    #: FashionMNIST -> MNIST: MNIST FPR95/AUROC, synthetic AUROC and ID accuracy.
    fashion: pd.DataFrame
    fashion_caption: str
    #: Committed paper-profile results of the profile's datasets (CIFAR-10, FashionMNIST).
    paper_results: list[PaperProfileTable]
    #: Mean AUROC of ``GLANCE_METHODS`` and the ID accuracy, one row per network (index ``names.NETWORK``).
    glance: pd.DataFrame
    #: ``{(claim id, source): evidence}`` in recording order; source None is the profile's own.
    evidence: dict[tuple[str, str | None], dict]
    #: The chapter's summary (Markdown bullet list).
    summary_text: str


def classifiers_table(evals: dict[str, ClassifierEvaluation], networks: dict[str, ClassifierEvaluation],
                      external: dict[str, ClassifierEvaluation], full_accuracy: dict[str, tuple[float, int]]
                      ) -> pd.DataFrame:
    """One row per network: how it was trained, the test images counted, its ID accuracy and the published one."""
    rows = [{names.NETWORK: ev.trained.run.label,
             names.TRAINED: f"here ({ev.trained.meta['hardware'].get('gpu', 'CPU')}), "
                            f"{ev.trained.meta['steps']} steps, {ev.trained.meta['wall_time_s']:.0f} s",
             names.TEST_IMAGES: len(ev.id_set), names.ID_ACCURACY: ev.accuracy, names.PUBLISHED_ACCURACY: np.nan}
            for ev in [*evals.values(), *networks.values()]]
    rows += [{names.NETWORK: label, names.TRAINED: f"elsewhere: {e.trained.meta['source']}",
              names.TEST_IMAGES: full_accuracy[label][1], names.ID_ACCURACY: full_accuracy[label][0],
              names.PUBLISHED_ACCURACY: e.trained.meta["expected_accuracy"]} for label, e in external.items()]
    return pd.DataFrame(rows).set_index(names.NETWORK)


def openood_comparison(near_far: pd.DataFrame) -> pd.DataFrame:
    """Our near/far AUROC beside OpenOOD v1.5's, and ours minus theirs, for the methods OpenOOD reports."""
    vs = pd.DataFrame({names.NEAR_AUROC_OURS: near_far[names.NEAR_AUROC],
                       names.NEAR_AUROC_OPENOOD: near_far[names.OPENOOD_NEAR_AUROC],
                       names.FAR_AUROC_OURS: near_far[names.FAR_AUROC],
                       names.FAR_AUROC_OPENOOD: near_far[names.OPENOOD_FAR_AUROC]}).dropna(
        subset=[names.NEAR_AUROC_OPENOOD])
    vs.insert(2, names.NEAR_DELTA, vs[names.NEAR_AUROC_OURS] - vs[names.NEAR_AUROC_OPENOOD])
    vs[names.FAR_DELTA] = vs[names.FAR_AUROC_OURS] - vs[names.FAR_AUROC_OPENOOD]
    return vs


def baseline_gap(vs: pd.DataFrame, baselines=BASELINES) -> tuple[list[str], float]:
    """``(baselines present, median |ours - OpenOOD| over their near and far AUROC)``; NaN when none is finite."""
    present = [m for m in baselines if m in vs.index]
    gap = vs.loc[present, [names.NEAR_DELTA, names.FAR_DELTA]].abs().to_numpy()
    return present, float(np.nanmedian(gap)) if np.isfinite(gap).any() else np.nan


def benchmark_evidence(own: str, summaries: dict[str, tuple[pd.DataFrame, pd.DataFrame]]
                       ) -> dict[tuple[str, str | None], dict]:
    """The benchmark claims' evidence per source, from ``{source: (summary, near/far summary)}``.

    ``own`` is the profile's own source (recorded as source None); a near- or far-OOD claim without any
    set, or the OpenOOD ranking without near-OOD sets, is not testable there (only recorded for ``own``).
    """
    out: dict[tuple[str, str | None], dict] = {}
    for source, (summ, nf) in summaries.items():
        src = None if source == own else source
        out[("ash_s_beats_energy", src)] = claims.beats_energy_evidence(summ, ASH_S)
        out[("ash_b_beats_energy", src)] = claims.beats_energy_evidence(summ, ASH_B)
        out[("ash_rand_works", src)] = claims.random_evidence(summ, ASH_RAND)
        for which, claim_id in (("near", "ash_s_beats_energy_near"), ("far", "ash_s_beats_energy_far")):
            if nf[names.NEAR_FAR_COLUMNS[which][1]].notna().any():
                out[(claim_id, src)] = claims.near_far_evidence(nf, ASH_S, which)
            elif source == own:
                out[(claim_id, src)] = _untestable(f"no {which}-OOD set is in the offline mirror")
        if SCALE in summ.index:
            out[("scale_beats_ash_s", src)] = claims.scale_evidence(summ, SCALE, ASH_S)
        if nf[names.NEAR_AUROC].notna().any() and ASH_B in nf.index:
            out[("openood_ranking", src)] = claims.ranking_evidence(nf, cs.OPENOOD_CIFAR10, ASH_B)
        elif source == own:
            out[("openood_ranking", src)] = _untestable("no near-OOD set is in the offline mirror")
    return out


def _untestable(why: str) -> dict:
    """The evidence :func:`ood_core.claims.not_testable` records."""
    return {"testable": False, "why": why}


def study(profile: str, seed: int = 0, device=None) -> AshBenchmark:
    """Chapter 11's benchmark on the ``profile`` (:func:`ood_core.profiles.get_profile`), evaluation seed ``seed``."""
    P = get_profile(profile)
    C = P.classifier
    own = f"{P.name} profile"
    evals = {ds: cs.evaluate(C.runs[ds], C.n_eval, C.n_fit, C.ood[ds], seed=seed, device=device) for ds in C.runs}
    networks = {run.label: cs.evaluate(run, C.n_eval, C.n_fit, C.ood["cifar10"], seed=seed, device=device)
                for run in C.networks.values()}
    external, external_missing = {}, {}
    for name in C.pretrained.names:
        try:
            e = cs.evaluate_pretrained(name, C.pretrained.n_eval, C.pretrained.n_fit, C.ood["cifar10"], seed=seed,
                                       device=device)
        except pretrained.PretrainedError as err:
            external_missing[pretrained.checkpoint(name).title] = str(err)
            continue
        external[e.run.label] = e
    full_accuracy = {label: cs.test_accuracy(e, C.pretrained.n_accuracy) for label, e in external.items()}

    # the OOD sets: ours, the paper's, OpenOOD's
    ev = evals["cifar10"]
    label = ev.trained.run.label
    near, synthetic = ev.near_names(C.near["cifar10"]), ev.synthetic_names
    set_rows = []
    for key in C.ood["cifar10"]:
        base = key.partition(":")[0]
        group = ("near" if key in C.near["cifar10"] else "synthetic (separate)" if base in data.SYNTHETIC else "far")
        set_rows.append({"set": ev.names.get(key, data.spec(base).title if base not in data.SYNTHETIC else key),
                         "group": group, "in the ASH paper": "yes" if base in ASH_PAPER_SETS else "no",
                         "in OpenOOD v1.5": "yes" if base in (*cs.OPENOOD_NEAR, *cs.OPENOOD_FAR) else "no",
                         "images here": len(ev.ood_sets[key]) if key in ev.ood_sets else np.nan})
    absent_paper = [data.spec(n).title for n in ASH_PAPER_SETS if not data.available(n)]
    absent_openood = [data.spec(n).title for n in (*cs.OPENOOD_NEAR, *cs.OPENOOD_FAR) if not data.available(n)]
    epochs = C.runs["cifar10"].train.epochs
    differences = (
        f"**What differs from OpenOOD v1.5.** Absent here: {', '.join(absent_openood) or 'none'}, so each of our "
        "averages is over fewer sets; only a partial Textures is in the mirror "
        f"({ev.names.get('textures', 'absent')}); our TinyImageNet is the 64×64 validation split reduced to 32×32 "
        f"by a 2×2 box average, with the {len(data.TINY_IMAGENET_IN_CIFAR10)} classes inside CIFAR-10's classes "
        "removed (OpenOOD ships its own 32×32 files). The networks are trained by our recipe, not OpenOOD's "
        f"({epochs} epoch{'s' * (epochs != 1)} here, one seed; OpenOOD averages three). OpenOOD's FPR95 takes OOD as "
        "the positive class and ours ID, so only AUROCs are compared.\n\n"
        f"**The paper's six-set average is not available here:** {len(absent_paper)} of its six sets "
        f"({', '.join(absent_paper)}) are absent and Textures is partial.")

    # CIFAR-10: near- and far-OOD, beside OpenOOD v1.5
    long = ev.benchmark(C.methods)
    per_set = long[long[names.OOD] != names.MEAN_ROW]
    nf = cs.near_far_summary(long, near, synthetic)
    nf[names.SYNTHETIC_AUROC] = per_set[per_set[names.OOD].isin(synthetic)].groupby(names.METHOD)[names.AUROC].mean()
    # OpenOOD's "ASH" is ASH-B with a percentile tuned on validation OOD data: it sits beside our ASH-B@95
    nf.loc[ASH_B, [names.OPENOOD_NEAR_AUROC, names.OPENOOD_FAR_AUROC]] = cs.OPENOOD_CIFAR10["ASH"]
    far_names = ", ".join(n for n in ev.names.values() if n not in near + synthetic)
    vs = openood_comparison(nf)
    baselines, base_gap = baseline_gap(vs)
    openood_note = (
        f"Median |ours − OpenOOD| over the baselines {', '.join(baselines)}: **{base_gap:.1f} AUROC points**. "
        + ("Our baselines are in OpenOOD's regime: the classifier is not weak. That does not make ASH's gap to "
           "energy the method's: how a network was trained can change the statistic ASH-S reads without moving the "
           "baselines. The networks trained elsewhere below, and the training ablation of the next chapter (*What "
           "makes ASH-S invert*), separate the two."
           if base_gap <= REGIME_GAP else
           "Our baselines are far from OpenOOD's (a smaller or shorter-trained classifier, other sets): compare "
           "each method's gap to energy within a column, not absolute levels across columns."))
    per_set_auroc = per_set.pivot_table(index=names.METHOD, columns=names.OOD, values=names.AUROC, sort=False)
    per_set_auroc = per_set_auroc[[n for n in ev.names.values() if n in per_set_auroc.columns and n not in synthetic]
                                  + [n for n in synthetic if n in per_set_auroc.columns]]

    # the ASH paper's view: the mean over every set; SCALE
    table = cs.summary(long)
    best = table[names.FPR95].idxmin()
    paper_s, paper_energy = cs.PAPER_CIFAR10[ASH_S], cs.PAPER_CIFAR10["energy"]
    summary_verdict = (
        f"**Verdict ({P.name} profile, {label}).** Lowest mean FPR95: **{best}** "
        f"({table.loc[best, names.FPR95]:.2f} %). {ASH_S}: FPR95 {table.loc[ASH_S, names.FPR95]:.2f} % / AUROC "
        f"{table.loc[ASH_S, names.AUROC]:.2f} % against energy's {table.loc['energy', names.FPR95]:.2f} % / "
        f"{table.loc['energy', names.AUROC]:.2f} % (the paper, DenseNet on its six sets: "
        f"{paper_s[0]:.2f} / {paper_s[1]:.2f} against {paper_energy[0]:.2f} / {paper_energy[1]:.2f}). ID accuracy "
        f"with {ASH_S}: {table.loc[ASH_S, names.ID_ACCURACY]:.2f} % against "
        f"{table.loc['energy', names.ID_ACCURACY]:.2f} % unpruned.")
    parts = [m for m in ("energy", ASH_P, ASH_S, SCALE) if m in table.index]
    scale_parts = pd.concat([table.loc[parts, [names.FPR95, names.AUROC, names.ID_ACCURACY]],
                             nf.loc[parts, [names.NEAR_AUROC, names.FAR_AUROC]]], axis=1)

    # networks trained elsewhere, and the other networks trained here
    network_results, network_summaries = {}, {}
    for net_label, evn in {**networks, **external}.items():
        long_n = evn.benchmark(C.methods)
        per_n = long_n[long_n[names.OOD] != names.MEAN_ROW]
        nf_n = cs.near_far_summary(long_n, near, synthetic)
        summ_n = cs.summary(long_n)
        network_summaries[f"{own}, {net_label}"] = (summ_n, nf_n)
        paper_cols = ([names.PAPER_FPR95, names.PAPER_AUROC] if net_label in external and "DenseNet" in net_label
                      else [])
        shown = pd.concat([nf_n[[names.NEAR_FPR95, names.NEAR_AUROC, names.FAR_FPR95, names.FAR_AUROC]],
                           summ_n[[names.FPR95, names.AUROC, names.ID_ACCURACY, *paper_cols]]], axis=1)
        caption = (f"{net_label}: near/far and mean over every set (FPR95/AUROC %)"
                   + ("; paper columns: the ASH paper's DenseNet on its six sets, of which only a partial Textures "
                      "is here" if paper_cols else ""))
        network_results[net_label] = NetworkBenchmark(
            net_label, shown, caption,
            per_n.pivot_table(index=names.METHOD, columns=names.OOD, values=names.AUROC, sort=False),
            per_n.pivot_table(index=names.METHOD, columns=names.OOD, values=names.FPR95, sort=False))
    paper_densenet = _paper_densenet(near, synthetic, network_summaries)

    # the percentile: the paper's fixed p and p chosen on a validation split
    val_near = next((k for k in C.near["cifar10"] if k.startswith("tiny_imagenet")), None)
    validation_notes, percentile_choice, fixed_validated = [], {}, {}
    for net_label, e in {label: ev, **networks, **external}.items():
        if val_near is None or val_near not in e.ood_sets:
            validation_notes.append(f"{net_label}: no near-OOD validation set is available here (needs {val_near}).")
            continue
        try:
            val = cs.validation(e, C.n_val, val_near)
        except ValueError as err:  # the evaluation already uses every test image: nothing is left to validate on
            validation_notes.append(f"{net_label}: no validation split ({err}).")
            continue
        choice = cs.choose_percentiles(val, C.percentiles)
        percentile_choice[net_label] = choice
        fixed_validated[net_label] = cs.fixed_and_validated(e, choice, near, synthetic)
    chosen = pd.DataFrame({net_label: c[c["chosen"]].set_index("shaper")["percentile"]
                           for net_label, c in percentile_choice.items()}).T.rename(columns=cs.SHAPER_NAMES)
    fixed_validated_table = (pd.concat(fixed_validated, names=[names.NETWORK]).reset_index(level=1, drop=True)
                             .set_index([names.P_CHOSEN_BY, names.METHOD], append=True) if fixed_validated else None)

    # FashionMNIST -> MNIST
    ev_fm = evals["fashion_mnist"]
    long_fm = ev_fm.benchmark(C.methods)
    per_fm = long_fm[long_fm[names.OOD] != names.MEAN_ROW]
    mnist = ev_fm.names["mnist"]
    mnist_fm = per_fm[per_fm[names.OOD] == mnist].set_index(names.METHOD)
    fm_synthetic = ev_fm.synthetic_names
    fashion = pd.DataFrame({
        f"{mnist} {names.FPR95}": mnist_fm[names.FPR95], f"{mnist} {names.AUROC}": mnist_fm[names.AUROC],
        names.SYNTHETIC_AUROC: per_fm[per_fm[names.OOD].isin(fm_synthetic)].groupby(names.METHOD)[names.AUROC].mean(),
        names.ID_ACCURACY: mnist_fm[names.ID_ACCURACY]}).loc[mnist_fm.index]

    # committed paper-profile results, and every network at a glance
    paper_results, paper_summaries = _paper_results(near, synthetic)
    paper_resnet = get_profile("paper").classifier.runs["cifar10"].label
    glance_sources = {f"{own}, {label}": (table, nf), **network_summaries,
                      **{f"{src}, {paper_resnet}": v for src, v in paper_summaries.items()}}
    glance = pd.DataFrame({src: {m: summ.loc[m, names.AUROC] if m in summ.index else np.nan for m in GLANCE_METHODS}
                           | {names.ID_ACCURACY: summ.loc["energy", names.ID_ACCURACY]}
                           for src, (summ, _) in glance_sources.items()}).T
    glance.index.name = names.NETWORK

    # the claims
    external_summaries = {f"{own}, {net_label}": network_summaries[f"{own}, {net_label}"] for net_label in external}
    evidence = benchmark_evidence(own, {own: (table, nf), **external_summaries, **paper_summaries})
    # the paper's network: the published DenseNet-BC-100 checkpoint (this claim's own source), and a DenseNet
    # trained by our recipe (paper profile, committed results) beside it when present
    densenet_sources = {src: summ for src, (summ, _) in network_summaries.items()
                        if src.endswith(DENSENET) or "DenseNet" in src and src.startswith("paper profile")}
    for src, summ in densenet_sources.items():
        evidence[("ash_s_densenet", None if src.endswith(DENSENET) else src)] = claims.beats_energy_evidence(summ,
                                                                                                             ASH_S)
    if not any(src.endswith(DENSENET) for src in densenet_sources):
        evidence[("ash_s_densenet", None)] = _untestable(external_missing.get(
            DENSENET, "the DenseNet-BC-100 checkpoint is not in this profile"))
    if absent_paper:
        evidence[("ash_state_of_the_art", None)] = _untestable(
            ", ".join(absent_paper) + ", the full Textures and ImageNet are not in the offline mirror")

    # the summary
    verdicts = {claims.claim(c).text: claims.assess(c, e, own)["verdict"] for (c, src), e in evidence.items()
                if src is None}
    ranked = ((nf[names.NEAR_AUROC] + nf[names.FAR_AUROC]) / 2).dropna().sort_values(ascending=False)
    ranking = claims.ranking_evidence(nf, cs.OPENOOD_CIFAR10, ASH_B) if len(ranked) else None
    summary_text = "\n".join([
        "* One metrics implementation scores every detector on the same ID/OOD images; each table states the ID "
        "accuracy each method leaves the classifier with.",
        f"* {label} ({P.name} profile): {ASH_S} reaches a mean AUROC of {table.loc[ASH_S, names.AUROC]:.1f} % "
        f"against energy's {table.loc['energy', names.AUROC]:.1f} %"
        + (f"; near-OOD {nf.loc[ASH_S, names.NEAR_AUROC]:.1f} vs {nf.loc['energy', names.NEAR_AUROC]:.1f} %"
           if nf[names.NEAR_AUROC].notna().any() else "")
        + f"; far-OOD {nf.loc[ASH_S, names.FAR_AUROC]:.1f} vs {nf.loc['energy', names.FAR_AUROC]:.1f} %.",
        (f"* Ranked by the mean of near- and far-OOD AUROC over the {ranking['n']} methods OpenOOD v1.5 also "
         f"reports, our best three are {', '.join(ranking['ours_top3'])} and OpenOOD's "
         f"{', '.join(ranking['openood_top3'])}; {ASH_B} (beside OpenOOD's ASH) ranks {ranking['ash_rank']} of "
         f"{ranking['n']}. Among all {len(ranked)} methods here, {ASH_S} ranks {list(ranked.index).index(ASH_S) + 1}."
         if ranking else "* No near-OOD set is present: no near/far ranking."),
        f"* Our baselines are a median {base_gap:.1f} AUROC points from OpenOOD v1.5's published ResNet-18 numbers.",
        f"* SCALE ({SCALE}, rescaling only): {table.loc[SCALE, names.AUROC]:.1f} % mean AUROC; ASH-P "
        f"(pruning only): {table.loc[ASH_P, names.AUROC]:.1f} %.",
        "* The paper's network: " + ("; ".join(f"{src}: {ASH_S} {s.loc[ASH_S, names.AUROC]:.1f} % vs energy "
                                               f"{s.loc['energy', names.AUROC]:.1f} % (mean AUROC over every set)"
                                               for src, s in densenet_sources.items())
                                     or "its checkpoint is not available here") + ".",
        "* Networks trained elsewhere, mean AUROC over every set: " + ("; ".join(
            f"{net_label}: {ASH_S} {network_summaries[f'{own}, {net_label}'][0].loc[ASH_S, names.AUROC]:.1f} %, "
            f"energy {network_summaries[f'{own}, {net_label}'][0].loc['energy', names.AUROC]:.1f} %"
            for net_label in external) or "none available") + ".",
        "* Verdicts of this profile: " + "; ".join(f"{c}: **{v}**" for c, v in verdicts.items()) + ".",
        "* The paper's six-set average cannot be formed here; the next chapter measures *why* ASH-S works or fails, "
        "set by set and network by network.",
    ])

    return AshBenchmark(
        profile=P.name, seed=seed, label=label, evals=evals, networks=networks, external=external,
        external_missing=external_missing,
        classifiers=classifiers_table(evals, networks, external, full_accuracy), near=near, synthetic=synthetic,
        sets=pd.DataFrame(set_rows).set_index("set"), missing_note=missing_note(ev.missing), differences=differences,
        benchmark=long, near_far=nf,
        near_far_caption=f"{label} ({P.name} profile): near = {' + '.join(near) or 'none here'}; far = {far_names}",
        openood=vs, openood_caption=f"AUROC (%): {label} ({P.name} profile) vs OpenOOD v1.5 ResNet-18; OpenOOD's "
                                    f"numbers in the {ASH_B} row are its ASH (ASH-B, p tuned)",
        openood_title=f"{label} ({P.name} profile) vs OpenOOD v1.5 ResNet-18", base_gap=base_gap,
        openood_note=openood_note, per_set_auroc=per_set_auroc, summary=table,
        summary_caption=f"{label} ({P.name} profile): mean over {len(ev.names)} OOD sets. Paper columns: its "
                        "DenseNet-BC-100 on its six sets (our average over those six sets: not available here)",
        summary_verdict=summary_verdict, scale_parts=scale_parts, network_results=network_results,
        network_summaries=network_summaries, paper_densenet=paper_densenet, validation_notes=validation_notes,
        chosen=chosen, chosen_caption=f"p chosen on the validation split ({C.n_val} ID vs {C.n_val} held-out "
                                      "TinyImageNet images), per network and shaper",
        fixed_validated=fixed_validated_table, fashion=fashion,
        fashion_caption=f"{ev_fm.trained.run.label} ({P.name} profile)", paper_results=paper_results,
        glance=glance, evidence=evidence, summary_text=summary_text)


def _paper_densenet(near: list[str], synthetic: list[str],
                    network_summaries: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> PaperProfileTable:
    """The paper-profile DenseNet-BC-100 trained by us on a GPU (``results/``), added to ``network_summaries``."""
    run = get_profile("paper").classifier.networks.get("densenet")
    published = cs.published(run) if run is not None else None
    if published is None:
        return PaperProfileTable(
            run.label if run is not None else "DenseNet-BC-100", None,
            f"A DenseNet-BC-100 *trained by this project's recipe* needs a GPU (`{DENSENET_COMMAND}`); no such "
            "results are under `results/` yet. The published checkpoint above is the paper's network.")
    t, m = published.tables, published.meta
    summ = t["summary"].set_index(names.METHOD)
    nf = t["near_far"].set_index(names.METHOD) if "near_far" in t else cs.near_far_summary(t["benchmark"], near,
                                                                                          synthetic)
    network_summaries[f"paper profile ({published.hardware}), {run.label}"] = (summ, nf)
    return PaperProfileTable(
        run.label, pd.concat([summ[[names.FPR95, names.AUROC, names.ID_ACCURACY]],
                              nf[[names.NEAR_AUROC, names.FAR_AUROC]]], axis=1),
        f"paper profile: {run.label}, trained by us on {published.hardware} ({m['steps']} steps, "
        f"{m['wall_time_s'] / 60:.1f} min, {m['created'][:10]})")


def _paper_results(near: list[str], synthetic: list[str]
                   ) -> tuple[list[PaperProfileTable], dict[str, tuple[pd.DataFrame, pd.DataFrame]]]:
    """The committed paper-profile tables of CIFAR-10 and FashionMNIST as shown, and the CIFAR-10 summaries
    ``{source: (summary, near/far summary)}``. These tables come from an earlier version of the table code
    (no successors, no TinyImageNet): the near/far summary is formed from their per-set rows when absent."""
    shown, summaries = [], {}
    for ds in ("cifar10", "fashion_mnist"):
        run = get_profile("paper").classifier.runs[ds]
        paper = cs.published(run)
        if paper is None:
            shown.append(PaperProfileTable(run.label, None,
                                           f"No paper-profile results for *{run.label}* under `results/` yet."))
            continue
        m = paper.meta
        summ = paper.tables["summary"].set_index(names.METHOD)
        cols = [names.FPR95, names.AUROC, names.ID_ACCURACY]
        grid = None
        if ds == "cifar10":  # the paper's columns are CIFAR-10 averages
            nf = (paper.tables["near_far"].set_index(names.METHOD) if "near_far" in paper.tables
                  else cs.near_far_summary(paper.tables["benchmark"], near, synthetic))
            summaries[f"paper profile ({paper.hardware})"] = (summ, nf)
            table = pd.concat([summ[[*cols, names.PAPER_FPR95, names.PAPER_AUROC]],
                               nf[[c for c in (names.NEAR_AUROC, names.FAR_AUROC) if nf[c].notna().any()]]], axis=1)
            grid = paper.tables["benchmark"].pivot_table(index=names.METHOD, columns=names.OOD, values=names.AUROC,
                                                         sort=False)
        else:
            table = summ[cols]
        caption = (f"paper profile: {run.label}, trained on {paper.hardware} ({m['steps']} steps, "
                   f"{m['wall_time_s'] / 60:.1f} min, {m['created'][:10]}); mean over every set present then")
        shown.append(PaperProfileTable(run.label, table, caption, grid))
    return shown, summaries

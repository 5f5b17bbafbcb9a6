# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # ASH ablations: the percentile, why ASH-S breaks, local vs global, where to prune
#
# The ASH paper's analyses, on the CIFAR-10 networks of the previous chapter (loaded from the
# artifact cache): how ID accuracy and OOD detection move with the pruning percentile $p$, for
# ASH-P/B/S and for SCALE, which rescales without pruning; **why ASH-S works or breaks**, set by set,
# by taking its rescaling factor $\exp(s_1/s_2)$ apart; a per-sample threshold against one global
# threshold; ASH after earlier blocks instead of the penultimate layer; and every method's ID
# accuracy against its near- and far-OOD AUROC (the paper's Figure 1). Every analysis runs on each
# CIFAR-10 network the profile trains (in the cpu profile: AirbenchNet with and without label
# smoothing, same seed and budget) and on the networks trained elsewhere of the previous chapter
# (the paper's DenseNet-BC-100, He et al.'s ResNet-20/56), except *where to ASH*, which needs fresh
# forward passes. Then **what makes ASH-S invert** on our networks, isolated by a training ablation.
# Sweep and ablation averages are over every OOD set present, synthetic ones included (the sets are
# listed in the previous chapter).

# %% tags=["parameters"]
profile: str = "cpu"  # scale profile: "smoke" (seconds), "cpu" (default), "paper" (GPU scale)
seed: int = 0  # seed for evaluation subsets, synthetic sets and ASH-RAND
device: str = "cpu"  # torch device for training and feature extraction

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display

from ood_core import classifier_study as cs, claims, data, detectors, names, plots, pretrained
from ood_core.profiles import get_profile

P = get_profile(profile)
C = P.classifier
plots.setup()
ev = cs.evaluate(C.runs["cifar10"], C.n_eval, C.n_fit, C.ood["cifar10"], seed=seed, device=device)
trained_here = {ev.trained.run.label: ev}
trained_here.update({run.label: cs.evaluate(run, C.n_eval, C.n_fit, C.ood["cifar10"], seed=seed, device=device)
                     for run in C.networks.values()})
external = {}
for name in C.pretrained.names:  # networks trained elsewhere, when their files are present (previous chapter)
    if pretrained.available(name):
        e = cs.evaluate_pretrained(name, C.pretrained.n_eval, C.pretrained.n_fit, C.ood["cifar10"], seed=seed,
                                   device=device)
        external[e.run.label] = e
nets = {**trained_here, **external}
near = [ev.names[k] for k in C.near["cifar10"] if k in ev.names]
synthetic = [s.name for k, s in ev.ood_sets.items() if k.partition(":")[0] in data.SYNTHETIC]
own = f"{P.name} profile"
# the profile's CIFAR-10 classifier's evidence is the profile's own; every further network is a source of its own
sources = {label: None if label == ev.trained.run.label else f"{own}, {label}" for label in nets}
SHAPERS = ("ash_p", "ash_b", "ash_s", "scale")
P_EXP = 95  # ASH-S's CIFAR percentile, at which its rescaling is taken apart
display(Markdown("Networks: " + "; ".join(f"{label} ({e.accuracy:.2f} % ID test accuracy)" for label, e in nets.items())
                 + f". OOD sets: {', '.join(ev.names.values())}."))

# %% [markdown]
# ## ID accuracy and OOD detection against the percentile
#
# The paper: ID accuracy stays within about a point up to $p\approx 90$ for ASH-S/ASH-B and then
# drops; OOD detection improves with $p$ up to high percentiles. SCALE's $p$ only sets its exponent
# (nothing is pruned). At $p = 0$ ASH-P is the identity, so its point there is plain energy
# (dashed).

# %%
sweeps = {label: e.percentile_sweep(C.percentiles, shapers=SHAPERS) for label, e in nets.items()}
fig, axes = plt.subplots(len(nets), 3, figsize=(15, 3.8 * len(nets)), squeeze=False)
for row, (label, sw) in zip(axes, sweeps.items()):
    energy_row = sw.query("shaper == 'ASH-P' and percentile == 0").iloc[0]
    for ax, col in zip(row, (names.ID_ACCURACY, names.FPR95, names.AUROC)):
        sns.lineplot(sw, x="percentile", y=col, hue="shaper", marker="o", ax=ax, legend=ax is row[-1])
        ax.axhline(energy_row[col], color="gray", ls="--", lw=1)
        ax.set(xlabel="percentile p", title=label if col == names.ID_ACCURACY else "")
fig.tight_layout()
plt.show()
sweep_rows = []
for label, sw in sweeps.items():
    base = sw.query("shaper == 'ASH-P' and percentile == 0").iloc[0]
    for shaper, g in sw.groupby("shaper", sort=False):
        g = g.set_index("percentile")
        sweep_rows.append({"network": label, "shaper": shaper,
                           "largest p, accuracy within 1 point":
                               g.index[g[names.ID_ACCURACY] >= base[names.ID_ACCURACY] - 1].max(),
                           "best p (AUROC)": g[names.AUROC].idxmax(), "best AUROC": g[names.AUROC].max(),
                           "AUROC at p = 90": g[names.AUROC].get(90, np.nan), "energy AUROC": base[names.AUROC]})
plots.show_table(pd.DataFrame(sweep_rows).set_index(["network", "shaper"]),
                 digits={"largest p, accuracy within 1 point": 0, "best p (AUROC)": 0, "best AUROC": 2,
                         "AUROC at p = 90": 2, "energy AUROC": 2},
                 caption="The sweep in numbers (mean AUROC over every OOD set, %)")
accuracy_rows = [claims.record("ash_preserves_accuracy", claims.accuracy_evidence(sw), P.name, seed,
                               source=sources[label]) for label, sw in sweeps.items()]
display(Markdown(f"**Verdict ({P.name} profile).** " + " ".join(
    f"{label}: **{r['verdict']}** ({r['our evidence']})." for label, r in zip(nets, accuracy_rows))))

# %% [markdown]
# ## Why ASH-S breaks, measured
#
# ASH-S keeps the top $(100-p)$ % of a sample's activations $h$ and multiplies them by $\exp(r)$, with
# $r = s_1/s_2$ the sum of all activations over the sum of the kept ones. The energy is then
# $\log\sum_k \exp\!\big(e^{r}\, w_k^\top h_{\text{kept}} + b_k\big)$: at $p = 95$ the factor $e^{r}$ is
# large and **the energy is dominated by $e^{r}$**, so ASH-S ranks samples mostly by $r$. A sample whose
# activation mass is *spread* over many units has a large $r$ and is scaled *up*, towards "ID".
# Whether ASH-S helps therefore depends on one measurable thing per set: do its images have a
# smaller $r$ than the ID test images?
#
# Per set: the median of $r$; the AUROC of $r$ alone as a detector (in the direction ASH-S uses it:
# above 50 % means OOD images have the smaller $r$, as ASH-S needs); and the decomposition at equal
# $p$: energy (neither), ASH-P (prune only), SCALE (scale only; Xu et al. 2024), ASH-S (both).

# %%
anatomy = {label: e.exponent_table(P_EXP) for label, e in nets.items()}
medians = pd.DataFrame({label: a.set_index(names.SET)["median s1/s2"] for label, a in anatomy.items()})
plots.show_table(medians, digits=2, caption=f"Median s1/s2 at p = {P_EXP} per set (the first row is ID test)")
fig, axes = plt.subplots(1, len(nets), figsize=(7.5 * len(nets), 3.8), squeeze=False)
for ax, (label, e) in zip(axes[0], nets.items()):
    ratio = e.suite.scores(f"ash_exponent@{P_EXP}")
    plots.score_histograms({e.context.sets[k].name: v for k, v in ratio.items()}, f"s1 / s2 at p = {P_EXP}", ax=ax,
                           title=label)
fig.tight_layout()
plt.show()

# %%
PRUNE, SCALING, BOTH = (f"AUROC ASH-P@{P_EXP} (prune)", f"AUROC SCALE@{P_EXP} (scale)", f"AUROC ASH-S@{P_EXP} (both)")
AUROC_COLS = {"AUROC s1/s2 alone": "s1/s2 alone", "AUROC energy": "energy", PRUNE: "ASH-P (prune)",
              SCALING: "SCALE (scale)", BOTH: "ASH-S (both)"}
for label, a in anatomy.items():
    parts_table = a.dropna(subset=["AUROC energy"]).set_index(names.SET)[list(AUROC_COLS)].rename(columns=AUROC_COLS)
    plots.show_table(parts_table, digits=1, caption=f"{label}: AUROC (%) of the ratio alone, and prune vs scale at "
                                                    f"p = {P_EXP}")
mech = pd.concat([a.dropna(subset=["AUROC energy"]).assign(network=label) for label, a in anatomy.items()])
mech["ASH-S − energy"] = mech[BOTH] - mech["AUROC energy"]
fig, ax = plt.subplots(figsize=(8, 4.5))
sns.scatterplot(mech, x="AUROC s1/s2 alone", y="ASH-S − energy", hue="network", style="network", s=70, ax=ax)
for _, r in mech.iterrows():
    ax.annotate(r[names.SET].replace(" test", "").split(" (")[0], (r["AUROC s1/s2 alone"], r["ASH-S − energy"]),
                fontsize=7, xytext=(3, 3), textcoords="offset points")
ax.axvline(50, color="gray", lw=0.8)
ax.axhline(0, color="gray", lw=0.8)
ax.set(xlabel="AUROC of s1/s2 alone (%)", ylabel=f"ASH-S@{P_EXP} AUROC − energy AUROC (points)",
       title="ASH-S's gain over energy against the AUROC of its ratio alone (one point per set)")
plt.show()

# %%
verdict_lines, every_set_rows = [], []
for label, a in anatomy.items():
    ood_rows = a.dropna(subset=["AUROC energy"]).set_index(names.SET)
    gain = ood_rows[BOTH] - ood_rows["AUROC energy"]
    wins, losses = list(gain.index[gain > 0]), list(gain.index[gain <= 0])
    wrong_way = list(ood_rows.index[ood_rows["AUROC s1/s2 alone"] < 50])
    agree = int(((ood_rows["AUROC s1/s2 alone"] >= 50) == (gain > 0)).sum())
    id_median = a.set_index(names.SET)["median s1/s2"].iloc[0]
    spread_more = list(ood_rows.index[ood_rows["median s1/s2"] > id_median])
    mean_part = {col: (ood_rows[col] - ood_rows["AUROC energy"]).mean() for col in (PRUNE, SCALING, BOTH)}
    every_set_rows.append(claims.record("ash_s_every_set", claims.per_set_evidence(a, P_EXP), P.name, seed,
                                        source=sources[label]))
    verdict_lines.append(
        f"* **{label}.** The paper's CIFAR claim ({detectors.title(f'ash_s@{P_EXP}')} beats energy) holds on "
        f"{len(wins)} of {len(gain)} sets" + (f" ({', '.join(wins)})" if wins else "")
        + (f" and fails on {', '.join(losses)}" if losses else "") + ". "
        f"ID test's median s1/s2 is {id_median:.2f}; sets with a larger median, which ASH-S scales up more than "
        f"ID: {', '.join(spread_more) or 'none'}. The ratio alone points the wrong way (AUROC < 50 %) on "
        + (", ".join(wrong_way) if wrong_way else "no set")
        + f", and its side of 50 % predicts whether ASH-S beats energy on {agree} of {len(gain)} sets. "
        f"Mean AUROC change over energy: pruning alone {mean_part[PRUNE]:+.1f}, scaling alone "
        f"{mean_part[SCALING]:+.1f}, both {mean_part[BOTH]:+.1f} points.")
display(Markdown(f"**Verdict ({P.name} profile).**\n\n" + "\n".join(verdict_lines)))
plots.show_table(claims.ledger_rows(every_set_rows), index=False, caption="ASH-S on every OOD set")

# %% [markdown]
# ## What makes ASH-S invert
#
# The previous section shows *how* ASH-S fails where it fails: OOD images have a larger $s_1/s_2$ than
# ID images and are scaled up. *Why* do our networks have that geometry? One computed line per
# network first, trained here or elsewhere (mean AUROC over every OOD set at $p = 95$; "inverts":
# below 50 %, "helps"/"hurts": more than one point above/below energy).

# %%
effects = pd.DataFrame({label: cs.anatomy_summary(a, P_EXP) for label, a in anatomy.items()}).T
effects.index.name = names.NETWORK
plots.show_table(effects, digits=2, caption=f"Per network: s1/s2 medians (ID; median over the OOD sets) and mean "
                                            f"AUROC (%) over every OOD set at p = {P_EXP}")
display(Markdown("\n".join(
    f"* **{label}** ({'trained elsewhere' if label in external else 'trained here'}): ASH-S@{P_EXP} **{r['ASH-S']}** "
    f"(mean AUROC {r[f'AUROC ASH-S@{P_EXP}']:.1f} % against energy's {r['AUROC energy']:.1f} %; beats energy on "
    f"{r['sets where ASH-S beats energy']} sets). Median s1/s2: ID {r['ID median s1/s2']:.2f}, OOD "
    f"{r['OOD median s1/s2']:.2f}" + (" — OOD images spread their activation more than ID images, so ASH-S scales "
                                      "them up." if r["OOD median s1/s2"] > r["ID median s1/s2"] else ".")
    for label, r in effects.iterrows())))

# %% [markdown]
# ### Label smoothing, measured on the profile's own network
#
# The cpu profile's AirbenchNet trains with label smoothing 0.2, which pulls each class's features
# together and could reshape exactly the statistic ASH-S reads. The profile trains the same network
# a second time without it (same seed, same budget):

# %%
ls_pair = [label for label, e in trained_here.items() if e.trained.run.model.arch == ev.trained.run.model.arch
           and e.run.dataset == "cifar10"]
ls_values = {label: trained_here[label].trained.run.label_smoothing for label in ls_pair}
if len(set(ls_values.values())) > 1:
    pair = effects.loc[ls_pair].assign(**{"label smoothing": pd.Series(ls_values)},
                                       **{names.ID_ACCURACY: pd.Series({k: trained_here[k].accuracy for k in ls_pair})})
    plots.show_table(pair, digits=2, caption="The same network and budget with and without label smoothing")
    smooth, plain = (pair.sort_values("label smoothing").index[-1], pair.sort_values("label smoothing").index[0])
    # the whole ASH family at the paper's percentiles, mean AUROC over every set (the previous chapter's tables)
    family = ["energy", detectors.title("ash_p@90"), detectors.title("ash_b@95"), detectors.title(f"ash_s@{P_EXP}"),
              detectors.title("scale@85")]
    family_auroc = pd.DataFrame({label: cs.summary(trained_here[label].benchmark(C.methods)).loc[family, names.AUROC]
                                 for label in (plain, smooth)}).T
    plots.show_table(family_auroc, digits=1, caption="Mean AUROC (%) over every OOD set, without and with label "
                                                     "smoothing (same network, seed and budget)")
    change = family_auroc.loc[smooth] - family_auroc.loc[plain]
    display(Markdown(
        f"Label smoothing {ls_values[smooth]:g} changes the mean AUROC by: "
        + ", ".join(f"{m} {change[m]:+.1f}" for m in family) + " points. "
        f"ASH-S@{P_EXP} **{pair.loc[plain, 'ASH-S']}** without it ({pair.loc[plain, f'AUROC ASH-S@{P_EXP}']:.1f} %; "
        f"median s1/s2 ID {pair.loc[plain, 'ID median s1/s2']:.2f}, OOD {pair.loc[plain, 'OOD median s1/s2']:.2f}) and "
        f"**{pair.loc[smooth, 'ASH-S']}** with it ({pair.loc[smooth, f'AUROC ASH-S@{P_EXP}']:.1f} %; ID "
        f"{pair.loc[smooth, 'ID median s1/s2']:.2f}, OOD {pair.loc[smooth, 'OOD median s1/s2']:.2f}). "
        + ("On this network label smoothing is not the only cause: ASH-S at this percentile inverts without it too, "
           "and the percentile chosen on validation data (previous chapter) is the better test of the method here."
           if pair.loc[plain, "ASH-S"] == "inverts" else
           "Without label smoothing ASH-S does not invert on this network: label smoothing is what inverts it.")))
else:
    display(Markdown("This profile trains no label-smoothing pair (the cpu profile does)."))

# %% [markdown]
# ### One training factor at a time (GPU ablation, committed)
#
# Networks of one architecture trained with one factor changed at a time, evaluated on this book's
# sets by this book's code (`tools/experiments/ash_inversion.py`; trained on a GPU, results in
# `results/ash_inversion/`). The reference is the public ResNet-20 recipe (He et al.: SGD momentum
# 0.9, lr 0.1 stepped down at 50 % and 75 %, weight decay $10^{-4}$, batch 128, crop + flip, no label
# smoothing) in a plain loop (`plain`) and through our trainer (`ours`); each further row changes
# one factor of `ours` toward the recipes of our networks, then takes those recipes whole, and the
# last rows repeat the decisive comparison on ResNet-18 and on AirbenchNet. All train on the same
# 20,000 CIFAR-10 images (two of the five training shards: what the GPU machine's transfer limit
# allowed) for the same number of epochs: shorter than the published recipes, the same for every row.

# %%
ablation = cs.inversion_ablation()
if ablation is None:
    display(Markdown("No ablation results under `results/ash_inversion/` yet: run "
                     "`python tools/experiments/ash_inversion.py train ...` on a GPU, then `... evaluate` here."))
else:
    abl_long, abl_config, abl_meta = ablation
    abl = {p: cs.inversion_summary(abl_long, p) for p in sorted(abl_long["percentile"].unique(), reverse=True)}
    main_p = abl[P_EXP]
    shown = main_p.drop(columns=["what"]).assign(
        **{f"AUROC ASH-S@{p:g}": abl[p][f"AUROC ASH-S@{p:g}"] for p in abl if p != P_EXP})
    plots.show_table(shown, digits=2, caption=f"Training ablation ({abl_meta['hardware']}, {abl_meta['date']}, "
                                              f"{abl_meta['epochs']} epochs over {10000 * len(abl_meta['shards']):,} "
                                              "images): s1/s2 medians and mean AUROC (%) over every OOD set")
    plots.show_table(main_p[["what"]], caption="What each variant changes")
    ASH_S_COL = f"AUROC ASH-S@{P_EXP}"
    effects_by_factor = cs.factor_effects(main_p, abl_config["pairs"], ASH_S_COL)
    plots.show_table(effects_by_factor, digits=1,
                     caption=f"Change in ASH-S@{P_EXP} mean AUROC (points) when one factor changes, over the pairs "
                             "of networks that differ in it alone (first row: the same recipe with another seed)")
    fig, ax = plt.subplots(figsize=(9, 4.2))
    sns.scatterplot(main_p.reset_index(), x="ID median s1/s2", y=ASH_S_COL, hue="ASH-S",
                    hue_order=list(cs.EFFECTS), s=70, ax=ax)
    for v, r in main_p.iterrows():
        ax.annotate(v, (r["ID median s1/s2"], r[ASH_S_COL]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(50, color="gray", lw=0.8)
    ax.set(title=f"ASH-S@{P_EXP} mean AUROC against the ID median of s1/s2, one point per trained network")
    plt.show()
    seed_spread = effects_by_factor.loc["seed (same recipe)", ["least change", "largest change"]].abs().max()
    decisive = effects_by_factor[(effects_by_factor.index != "seed (same recipe)")
                                 & effects_by_factor["same sign in every pair"]
                                 & (effects_by_factor["mean change"].abs() > seed_spread)
                                 & (effects_by_factor["pairs"] >= 2)]
    smoothing = effects_by_factor.loc["label smoothing 0.2"]
    trainer = effects_by_factor.loc["our trainer instead of the plain loop"]
    ext_inverting = [label for label in external if effects.loc[label, "ASH-S"] == "inverts"]
    inverted = [v for v in main_p.index if main_p.loc[v, "ASH-S"] == "inverts"]
    with_ls = [v for v in main_p.index if abl_config["variants"][v]["settings"]["label_smoothing"] > 0]
    display(Markdown(
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
           + (": the data path does not make it invert." if not ext_inverting else ".") if external else "")))

# %% [markdown]
# ## Local (per-sample) vs global threshold
#
# At each $p$ the global threshold is the $p$-th percentile of all ID *training* activation
# values, so both variants prune about the same fraction of ID activations.

# %%
local_rows = []
for label, e in nets.items():
    lg = e.local_vs_global(C.ablation_percentiles)
    local_rows.append(claims.record("local_beats_global", claims.local_evidence(lg), P.name, seed,
                                    source=sources[label]))
    wide = lg.pivot_table(index=["shaper", "percentile"], columns="threshold", sort=False,
                          values=[names.AUROC, names.ID_ACCURACY, "pruned on ID test (%)"])
    short = {names.AUROC: "AUROC", names.ID_ACCURACY: "ID acc.", "pruned on ID test (%)": "pruned %"}
    wide.columns = [f"{short[metric]} ({variant.split(' (')[0]})" for metric, variant in wide.columns]
    plots.show_table(wide, digits=2, caption=f"{label}: local vs global threshold (mean AUROC over every set)")
display(Markdown(f"**Verdict ({P.name} profile).** " + " ".join(
    f"{label}: **{r['verdict']}** ({r['our evidence']})." for label, r in zip(nets, local_rows))
    + " The paper: local beats global."))

# %% [markdown]
# ## Where to ASH
#
# ASH-S at $p = 90$ applied after each block instead of the penultimate (pooled) features. For
# 4-D activations the percentile is taken over all $C\cdot H\cdot W$ entries of a sample.

# %%
where = pd.concat({label: e.where_to_ash(90).set_index("stage") for label, e in trained_here.items()},
                  names=["network"])
plots.show_table(where, digits=2, caption="ASH-S@90 after each block: ID accuracy and mean metrics over every set")
fig, axes = plt.subplots(1, len(trained_here), figsize=(6.5 * len(trained_here), 3.6), squeeze=False)
for ax1, label in zip(axes[0], trained_here):
    w = where.loc[label].reset_index()
    sns.barplot(w, x="stage", y=names.AUROC, color="C0", ax=ax1)
    ax1.set_ylim(min(50, w[names.AUROC].min() - 5), 100)
    ax1.set_title(label)
    ax2 = ax1.twinx()
    ax2.plot(range(len(w)), w[names.ID_ACCURACY], "o-", color="C3")
    ax2.set_ylabel(names.ID_ACCURACY, color="C3")
fig.tight_layout()
plt.show()
where_rows = [claims.record("penultimate_best", claims.penultimate_evidence(where.loc[label].reset_index()), P.name,
                            seed, source=sources[label]) for label in trained_here]
display(Markdown(f"**Verdict ({P.name} profile).** " + " ".join(
    f"{label}: best AUROC at {where.loc[label, names.AUROC].idxmax()}, **{r['verdict']}**."
    for label, r in zip(trained_here, where_rows)) + " The paper finds the penultimate layer best, with earlier placements "
    "costing ID accuracy."))

# %% [markdown]
# ## The trade-off: ID accuracy against near- and far-OOD AUROC
#
# Every method's ID accuracy against its mean AUROC on the near-OOD and on the far-OOD sets
# (the paper's Figure 1, with OpenOOD's split; synthetic sets in neither).

# %%
GROUPS = {"ASH": ("ash_",), "successor": ("scale", "gen", "knn", "vim", "fdbd", "nnguide")}
group_of = {detectors.title(s): next((g for g, prefixes in GROUPS.items() if s.startswith(prefixes)), "baseline")
            for s in C.methods}
tradeoff = {label: cs.near_far_summary(e.benchmark(C.methods), near, synthetic) for label, e in nets.items()}
columns = [c for c in ("near AUROC", "far AUROC") if any(t[c].notna().any() for t in tradeoff.values())]
fig, axes = plt.subplots(len(nets), len(columns), figsize=(6.5 * len(columns), 4.6 * len(nets)), squeeze=False)
for row, (label, t) in zip(axes, tradeoff.items()):
    points = t.reset_index().assign(group=lambda d: d[names.METHOD].map(group_of))
    unpruned = t.loc["energy", names.ID_ACCURACY]
    for ax, col in zip(row, columns):
        sns.scatterplot(points, x=col, y=names.ID_ACCURACY, hue="group", style="group", s=70, ax=ax,
                        legend=ax is row[-1])
        for _, r in points.iterrows():  # methods that keep the prediction share one line: labels upright there
            ax.annotate(r[names.METHOD], (r[col], r[names.ID_ACCURACY]), fontsize=7, xytext=(2, 4),
                        textcoords="offset points", rotation=90 if r[names.ID_ACCURACY] == unpruned else 0)
        ax.margins(y=0.3)
        ax.set(xlabel=f"mean {col} (%)", title=f"{label}: {col.split()[0]}-OOD")
fig.tight_layout()
plt.show()
ash_like = [m for m in tradeoff[ev.trained.run.label].index if group_of.get(m) == "ASH" or m.startswith("SCALE")]
plots.show_table(pd.concat({label: t.loc[["energy", *ash_like], ["near AUROC", "far AUROC", names.ID_ACCURACY]]
                            for label, t in tradeoff.items()}, names=["network"]),
                 digits=2, caption="Energy, the ASH family and SCALE: near/far AUROC (%) and ID accuracy")

# %% [markdown]
# ## Paper-profile ablations (GPU), when present
#
# The same analyses on the paper-profile networks (all test images), computed on a GPU by
# `python -m ood_core classifier --profile paper --export` (ResNet-18) and `... --network densenet
# --export` (DenseNet-BC-100). The committed ResNet-18 tables come from an earlier version of the
# table code: ASH-P/B/S only (no SCALE in the sweep), no ASH-S anatomy.

# %%
paper_profile = get_profile("paper")
paper_runs, paper_rows = {"ResNet-18": paper_profile.classifier.runs["cifar10"]}, []
if "densenet" in paper_profile.classifier.networks:
    paper_runs["DenseNet-BC-100"] = paper_profile.classifier.networks["densenet"]
for arch, paper_run in paper_runs.items():
    paper = cs.published(paper_run)
    if paper is None:
        display(Markdown(f"No paper-profile results for *{paper_run.label}* under `results/` yet"
                         + (": it needs a GPU (`python -m ood_core classifier --profile paper --network densenet "
                            "--export`)." if arch.startswith("DenseNet") else ".")))
        continue
    t = paper.tables
    source = f"paper profile ({paper.hardware})" + ("" if arch == "ResNet-18" else f", {paper_run.label}")
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, col in zip(axes, (names.ID_ACCURACY, names.FPR95, names.AUROC)):
        sns.lineplot(t["sweep"], x="percentile", y=col, hue="shaper", marker="o", ax=ax, legend=ax is axes[-1])
        ax.set_xlabel("percentile p")
    fig.suptitle(f"paper profile: {paper_run.label}")
    fig.tight_layout()
    plt.show()
    lg_p = t["local_vs_global"].pivot_table(index=["shaper", "percentile"], columns="threshold", values=names.AUROC,
                                            sort=False)
    lg_p.columns = [f"AUROC, {c.split(' (')[0]}" for c in lg_p.columns]
    plots.show_table(lg_p, digits=2, caption=f"paper profile, {paper_run.label}: local vs global threshold")
    plots.show_table(t["where_to_ash"].set_index("stage"), digits=2,
                     caption=f"paper profile, {paper_run.label}: ASH-S@90 after each block")
    evidence = {"ash_preserves_accuracy": claims.accuracy_evidence(t["sweep"]),
                "local_beats_global": claims.local_evidence(t["local_vs_global"]),
                "penultimate_best": claims.penultimate_evidence(t["where_to_ash"])}
    if "exponents" in t:
        exp_p = t["exponents"]
        plots.show_table(exp_p.set_index(names.SET).rename(columns=AUROC_COLS), digits=2,
                         caption=f"paper profile, {paper_run.label}: median s1/s2 and prune vs scale at p = {P_EXP}")
        evidence["ash_s_every_set"] = claims.per_set_evidence(exp_p, P_EXP)
    else:
        display(Markdown(f"The committed tables of *{paper_run.label}* have no ASH-S anatomy (earlier table code)."))
    paper_rows += [claims.record(claim_id, e, P.name, seed, source=source) for claim_id, e in evidence.items()]

# %% [markdown]
# ## A note on OpenOOD v1.5
#
# OpenOOD v1.5 {cite}`zhang2023openood` evaluates "ASH" (ASH-B with $p$ tuned on a validation OOD
# split) on CIFAR-10 ResNet-18 and on ImageNet ResNet-50: among the weakest methods on the first,
# near the top on the second.

# %%
openood_ash, openood_energy = cs.OPENOOD_CIFAR10["ASH"], cs.OPENOOD_CIFAR10["energy"]
dims = {label: e.id_feats["features"].shape[1] for label, e in nets.items()}
display(Markdown(
    f"OpenOOD's CIFAR-10 near/far-OOD AUROC: ASH {openood_ash[0]:.2f} / {openood_ash[1]:.2f}, energy "
    f"{openood_energy[0]:.2f} / {openood_energy[1]:.2f}. Pruning at $p = 95$ keeps few units of a CIFAR network's "
    "penultimate vector: " + "; ".join(f"{label}: {n - round(n * 0.95)} of {n}" for label, n in dims.items())
    + ". With so few units left, whether the rescaling helps depends on how each set's activation mass is spread, "
    "which the section *Why ASH-S breaks, measured* shows set by set."))

# %% [markdown]
# ## Verdicts
#
# The ablation claims on this profile's networks and, where present, the paper-profile ones.

# %%
recorded_rows = [*accuracy_rows, *every_set_rows, *local_rows, *where_rows, *paper_rows]
claim_order = [claims.claim(c).text for c in ("ash_preserves_accuracy", "ash_s_every_set", "local_beats_global",
                                              "penultimate_best")]
ledger = claims.ledger_rows(sorted(recorded_rows, key=lambda r: claim_order.index(r["claim"])))
plots.show_table(ledger, index=False, caption="Claims recorded by this chapter")

# %% [markdown]
# ## Summary

# %%
main = ev.trained.run.label
sw_main = pd.DataFrame(sweep_rows).query("network == @main").set_index("shaper")
gain_main = mech.query("network == @main").set_index(names.SET)["ASH-S − energy"]
agree_all = int(((mech["AUROC s1/s2 alone"] >= 50) == (mech["ASH-S − energy"] > 0)).sum())
scale_gap = (mech[SCALING] - mech[BOTH]).abs().mean()
prune_gap = (mech[PRUNE] - mech[BOTH]).abs().mean()
display(Markdown("\n".join([
    "* Accuracy against $p$, the ASH-S anatomy, local against global and the trade-off come from cached features; "
    "where to ASH needs fresh forward passes with shaping applied by composition, never by toggling the model.",
    f"* {main}: the best mean AUROC over $p$ is ASH-S {sw_main.loc['ASH-S', 'best AUROC']:.1f} % (at p = "
    f"{sw_main.loc['ASH-S', 'best p (AUROC)']:g}) and SCALE {sw_main.loc['SCALE', 'best AUROC']:.1f} % (at p = "
    f"{sw_main.loc['SCALE', 'best p (AUROC)']:g}), against energy's {sw_main.loc['ASH-S', 'energy AUROC']:.1f} %.",
    f"* ASH-S@{P_EXP} beats energy on {int((gain_main > 0).sum())} of {len(gain_main)} sets on {main}; "
    + "; ".join(f"{label}: {int((mech.query('network == @label')['ASH-S − energy'] > 0).sum())} of "
                f"{int((mech['network'] == label).sum())}" for label in nets if label != main)
    + ". " + f"Over {len(mech)} (network, set) pairs, the side of 50 % on which s1/s2 alone falls predicts whether "
    f"ASH-S beats energy in {agree_all} pairs; SCALE (scaling alone) is within {scale_gap:.1f} AUROC points of ASH-S "
    f"on average, ASH-P (pruning alone) within {prune_gap:.1f}: "
    + ("the rescaling, more than the pruning, decides what ASH-S does." if scale_gap < prune_gap else
       "the pruning, more than the rescaling, decides what ASH-S does."),
    "* Verdicts by source (details in the table above): " + "; ".join(
        f"{source}: " + ", ".join(f"{n} {v}" for v, n in g["verdict"].value_counts().items())
        for source, g in ledger.groupby("source", sort=False)) + ".",
])))

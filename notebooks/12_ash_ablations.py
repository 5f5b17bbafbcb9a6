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
from IPython.display import Markdown, display

from ood_core import ash_ablations, claims, classifier_study as cs, names, plots

plots.setup()
abl = ash_ablations.study(profile, seed, device)
P_EXP = ash_ablations.P_EXP  # ASH-S's CIFAR percentile, at which its rescaling is taken apart
display(Markdown("Networks: " + "; ".join(f"{label} ({acc:.2f} % ID test accuracy)" for label, acc in abl.accuracy.items())
                 + f". OOD sets: {', '.join(abl.ood_names)}."))

# %% [markdown]
# ## ID accuracy and OOD detection against the percentile
#
# The paper: ID accuracy stays within about a point up to $p\approx 90$ for ASH-S/ASH-B and then
# drops; OOD detection improves with $p$ up to high percentiles. SCALE's $p$ only sets its exponent
# (nothing is pruned). At $p = 0$ ASH-P is the identity, so its point there is plain energy
# (dashed).

# %%
plots.percentile_sweeps(abl.sweeps, baselines=abl.unpruned)
plt.show()
plots.show_table(abl.sweep_table, digits=ash_ablations.SWEEP_DIGITS,
                 caption="The sweep in numbers (mean AUROC over every OOD set, %)")
accuracy_rows = {label: claims.record("ash_preserves_accuracy", e, abl.profile, seed, source=abl.sources[label])
                 for label, e in abl.evidence["ash_preserves_accuracy"].items()}
display(Markdown(f"**Verdict ({abl.profile} profile).** " + " ".join(
    f"{label}: **{r['verdict']}** ({r['our evidence']})." for label, r in accuracy_rows.items())))

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
plots.show_table(abl.medians, digits=2, caption=f"Median s1/s2 at p = {P_EXP} per set (the first row is ID test)")
fig, axes = plt.subplots(1, len(abl.ratios), figsize=(7.5 * len(abl.ratios), 3.8), squeeze=False)
for ax, (label, ratio) in zip(axes[0], abl.ratios.items()):
    plots.score_histograms(ratio, f"s1 / s2 at p = {P_EXP}", ax=ax, title=label)
fig.tight_layout()
plt.show()

# %%
for label, parts_table in abl.parts.items():
    plots.show_table(parts_table, digits=1, caption=f"{label}: AUROC (%) of the ratio alone, and prune vs scale at "
                                                    f"p = {P_EXP}")
mech = abl.mechanism
fig, ax = plt.subplots(figsize=(8, 4.5))
plots.labelled_scatter(mech, names.AUROC_RATIO, ash_ablations.GAIN, [s.replace(" test", "").split(" (")[0]
                                                                     for s in mech[names.SET]],
                       ax, hue=names.NETWORK, style=names.NETWORK)
ax.axvline(50, color="gray", lw=0.8)
ax.axhline(0, color="gray", lw=0.8)
ax.set(xlabel="AUROC of s1/s2 alone (%)", ylabel=f"ASH-S@{P_EXP} AUROC − energy AUROC (points)",
       title="ASH-S's gain over energy against the AUROC of its ratio alone (one point per set)")
plt.show()

# %%
every_set_rows = {label: claims.record("ash_s_every_set", e, abl.profile, seed, source=abl.sources[label])
                  for label, e in abl.evidence["ash_s_every_set"].items()}
display(Markdown(f"**Verdict ({abl.profile} profile).**\n\n" + "\n".join(abl.anatomy_verdicts.values())))
plots.show_table(claims.ledger_rows(list(every_set_rows.values())), index=False, caption="ASH-S on every OOD set")

# %% [markdown]
# ## What makes ASH-S invert
#
# The previous section shows *how* ASH-S fails where it fails: OOD images have a larger $s_1/s_2$ than
# ID images and are scaled up. *Why* do our networks have that geometry? One computed line per
# network first, trained here or elsewhere (mean AUROC over every OOD set at $p = 95$; "inverts":
# below 50 %, "helps"/"hurts": more than one point above/below energy).

# %%
plots.show_table(abl.effects, digits=2, caption=f"Per network: s1/s2 medians (ID; median over the OOD sets) and mean "
                                                f"AUROC (%) over every OOD set at p = {P_EXP}")
display(Markdown("\n".join(abl.effect_lines.values())))

# %% [markdown]
# ### Label smoothing, measured on the profile's own network
#
# The cpu profile's AirbenchNet trains with label smoothing 0.2, which pulls each class's features
# together and could reshape exactly the statistic ASH-S reads. The profile trains the same network
# a second time without it (same seed, same budget):

# %%
if abl.smoothing is not None:
    plots.show_table(abl.smoothing.table, digits=2, caption="The same network and budget with and without label smoothing")
    plots.show_table(abl.smoothing.family_auroc, digits=1, caption="Mean AUROC (%) over every OOD set, without and with "
                                                                   "label smoothing (same network, seed and budget)")
    display(Markdown(abl.smoothing.text))
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
inversion = abl.ablation
if inversion is None:
    display(Markdown("No ablation results under `results/ash_inversion/` yet: run "
                     "`python tools/experiments/ash_inversion.py train ...` on a GPU, then `... evaluate` here."))
else:
    plots.show_table(inversion.shown, digits=2, caption=inversion.caption)
    plots.show_table(inversion.summary[["what"]], caption="What each variant changes")
    plots.show_table(inversion.factor_effects, digits=1,
                     caption=f"Change in ASH-S@{P_EXP} mean AUROC (points) when one factor changes, over the pairs "
                             "of networks that differ in it alone (first row: the same recipe with another seed)")
    fig, ax = plt.subplots(figsize=(9, 4.2))
    plots.labelled_scatter(inversion.summary.reset_index(), names.ID_MEDIAN_RATIO, names.mean_auroc_ash_s(P_EXP),
                           inversion.summary.index, ax, hue=names.ASH_S_EFFECT, hue_order=list(cs.EFFECTS))
    ax.axhline(50, color="gray", lw=0.8)
    ax.set(title=f"ASH-S@{P_EXP} mean AUROC against the ID median of s1/s2, one point per trained network")
    plt.show()
    display(Markdown(inversion.text))

# %% [markdown]
# ## Local (per-sample) vs global threshold
#
# At each $p$ the global threshold is the $p$-th percentile of all ID *training* activation
# values, so both variants prune about the same fraction of ID activations.

# %%
local_rows = {label: claims.record("local_beats_global", e, abl.profile, seed, source=abl.sources[label])
              for label, e in abl.evidence["local_beats_global"].items()}
for label, wide in abl.local.items():
    plots.show_table(wide, digits=2, caption=f"{label}: local vs global threshold (mean AUROC over every set)")
display(Markdown(f"**Verdict ({abl.profile} profile).** " + " ".join(
    f"{label}: **{r['verdict']}** ({r['our evidence']})." for label, r in local_rows.items())
    + " The paper: local beats global."))

# %% [markdown]
# ## Where to ASH
#
# ASH-S at $p = 90$ applied after each block instead of the penultimate (pooled) features. For
# 4-D activations the percentile is taken over all $C\cdot H\cdot W$ entries of a sample.

# %%
plots.show_table(abl.where, digits=2, caption="ASH-S@90 after each block: ID accuracy and mean metrics over every set")
plots.where_to_ash_bars(abl.where, abl.trained_here)
plt.show()
where_rows = {label: claims.record("penultimate_best", e, abl.profile, seed, source=abl.sources[label])
              for label, e in abl.evidence["penultimate_best"].items()}
display(Markdown(f"**Verdict ({abl.profile} profile).** " + " ".join(
    f"{label}: best AUROC at {abl.best_stage[label]}, **{r['verdict']}**." for label, r in where_rows.items())
    + " The paper finds the penultimate layer best, with earlier placements costing ID accuracy."))

# %% [markdown]
# ## The trade-off: ID accuracy against near- and far-OOD AUROC
#
# Every method's ID accuracy against its mean AUROC on the near-OOD and on the far-OOD sets
# (the paper's Figure 1, with OpenOOD's split; synthetic sets in neither).

# %%
plots.accuracy_tradeoff(abl.tradeoff, abl.method_groups, abl.tradeoff_columns)
plt.show()
plots.show_table(abl.tradeoff_table, digits=2,
                 caption="Energy, the ASH family and SCALE: near/far AUROC (%) and ID accuracy")

# %% [markdown]
# ## Paper-profile ablations (GPU), when present
#
# The same analyses on the paper-profile networks (all test images), computed on a GPU by
# `python -m ood_core classifier --profile paper --export` (ResNet-18) and `... --network densenet
# --export` (DenseNet-BC-100). The committed ResNet-18 tables come from an earlier version of the
# table code: ASH-P/B/S only (no SCALE in the sweep), no ASH-S anatomy.

# %%
paper_rows = []
for paper in abl.paper:
    if paper.sweep is None:  # no committed results for this network
        display(Markdown(paper.note))
        continue
    plots.percentile_sweeps({paper.label: paper.sweep}, titles=False, suptitle=f"paper profile: {paper.label}")
    plt.show()
    plots.show_table(paper.local, digits=2, caption=f"paper profile, {paper.label}: local vs global threshold")
    plots.show_table(paper.where, digits=2, caption=f"paper profile, {paper.label}: ASH-S@90 after each block")
    if paper.exponents is not None:
        plots.show_table(paper.exponents, digits=2,
                         caption=f"paper profile, {paper.label}: median s1/s2 and prune vs scale at p = {P_EXP}")
    else:
        display(Markdown(paper.note))
    paper_rows += [claims.record(claim_id, e, abl.profile, seed, source=paper.source)
                   for claim_id, e in paper.evidence.items()]

# %% [markdown]
# ## A note on OpenOOD v1.5
#
# OpenOOD v1.5 {cite}`zhang2023openood` evaluates "ASH" (ASH-B with $p$ tuned on a validation OOD
# split) on CIFAR-10 ResNet-18 and on ImageNet ResNet-50: among the weakest methods on the first,
# near the top on the second.

# %%
display(Markdown(abl.openood_note))

# %% [markdown]
# ## Verdicts
#
# The ablation claims on this profile's networks and, where present, the paper-profile ones.

# %%
recorded_rows = [*accuracy_rows.values(), *every_set_rows.values(), *local_rows.values(), *where_rows.values(),
                 *paper_rows]
claim_order = [claims.claim(c).text for c in ash_ablations.CLAIM_IDS]
ledger = claims.ledger_rows(sorted(recorded_rows, key=lambda r: claim_order.index(r["claim"])))
plots.show_table(ledger, index=False, caption="Claims recorded by this chapter")

# %% [markdown]
# ## Summary

# %%
display(Markdown("\n".join([*abl.summary_lines, "* Verdicts by source (details in the table above): " + "; ".join(
    f"{source}: " + ", ".join(f"{n} {v}" for v, n in g["verdict"].value_counts().items())
    for source, g in ledger.groupby("source", sort=False)) + "."])))

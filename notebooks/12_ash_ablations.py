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
# # ASH ablations: the percentile, local vs global, where to prune, and trade-offs
#
# The ASH paper's analyses, on the CIFAR-10 classifier trained in the previous chapter (loaded
# from the artifact cache): how ID accuracy and OOD detection move with the pruning percentile
# $p$; a per-sample threshold against one global threshold; ASH after earlier blocks instead of
# the penultimate layer; and every method's ID accuracy against its OOD performance (the paper's
# Figure 1). Averages are over the OOD sets present in the mirror (see the previous chapter).

# %% tags=["parameters"]
profile: str = "cpu"  # scale profile: "smoke" (seconds), "cpu" (default), "paper" (GPU scale)
seed: int = 0  # seed for evaluation subsets, synthetic sets and ASH-RAND
device: str = "cpu"  # torch device for training and feature extraction

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown, display

from ood_core import ash, classifier_study as cs, claims, names, plots
from ood_core.profiles import get_profile

P = get_profile(profile)
C = P.classifier
plots.setup()
ev = cs.evaluate(C.runs["cifar10"], C.n_eval, C.n_fit, C.ood["cifar10"], seed=seed, device=device)
print(ev.trained.run.label, "| OOD sets:", ", ".join(ev.names.values()))

# %% [markdown]
# ## ID accuracy and OOD detection against the percentile
#
# The paper: ID accuracy stays within about a point up to $p\approx 90$ for ASH-S/ASH-B and then
# drops; OOD detection improves with $p$ up to high percentiles.

# %%
sweep = ev.percentile_sweep(C.percentiles)
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
for ax, col in zip(axes, (names.ID_ACCURACY, names.FPR95, names.AUROC)):
    sns.lineplot(sweep, x="percentile", y=col, hue="shaper", marker="o", ax=ax)
    ax.set_xlabel("pruning percentile p")
fig.tight_layout()
plt.show()
base_acc = sweep.query("shaper == 'ASH-P' and percentile == 0")[names.ID_ACCURACY].iloc[0]
within = sweep[(sweep[names.ID_ACCURACY] >= base_acc - 1)].groupby("shaper")["percentile"].max()
display(Markdown(f"Unpruned ID accuracy {base_acc:.2f} %. Largest $p$ in the grid that keeps accuracy within "
                 "1 point: " + ", ".join(f"{k} {v:g}" for k, v in within.items()) + "."))

# %% [markdown]
# ### Why ASH-S can invert: the rescaling exponent $s_1/s_2$
#
# ASH-S multiplies the kept activations by $\exp(s_1/s_2)$, so the energy of a sample grows with
# how much of its activation mass the pruning removed. If OOD inputs spread their mass over more
# units than ID inputs, ASH-S *raises* their score. The distributions of $s_1/s_2$ at $p=95$:

# %%
exponents = {"ID test": ash.ash_s_exponent(torch.from_numpy(ev.id_feats["features"]), 95).numpy()}
exponents.update({ev.names[k]: ash.ash_s_exponent(torch.from_numpy(v["features"]), 95).numpy()
                  for k, v in ev.ood_feats.items()})
fig, ax = plt.subplots(figsize=(8, 3.8))
plots.score_histograms(exponents, "s1 / s2 at p = 95", ax=ax)
plt.show()
med = pd.Series({k: float(np.nanmedian(v)) for k, v in exponents.items()}).sort_values()
display(med.to_frame("median s1/s2").T.round(2))

# %% [markdown]
# ## Local (per-sample) vs global threshold
#
# At each $p$ the global threshold is the $p$-th percentile of all ID *training* activation
# values, so both variants prune about the same fraction of ID activations (last column).

# %%
lg = ev.local_vs_global(C.ablation_percentiles)
display(lg.round(2))
row = claims.record("local_beats_global", claims.local_evidence(lg), P.name, seed)
display(Markdown(f"**Verdict ({P.name} profile): {row['verdict']}.** {row['our evidence'].capitalize()}; the paper reports "
                 "local beats global."))

# %% [markdown]
# ## Where to ASH
#
# ASH-S at $p = 90$ applied after each residual stage instead of the penultimate (pooled)
# features. For 4-D activations the percentile is taken over all $C\cdot H\cdot W$ entries of a sample.

# %%
where = ev.where_to_ash(90)
display(where.round(2))
fig, ax1 = plt.subplots(figsize=(7, 3.6))
sns.barplot(where, x="stage", y=names.AUROC, color="C0", ax=ax1)
ax1.set_ylim(min(50, where[names.AUROC].min() - 5), 100)
ax2 = ax1.twinx()
ax2.plot(range(len(where)), where[names.ID_ACCURACY], "o-", color="C3")
ax2.set_ylabel(names.ID_ACCURACY, color="C3")
plt.show()
best_stage = where.loc[where[names.AUROC].idxmax(), "stage"]
claims.record("penultimate_best", claims.penultimate_evidence(where), P.name, seed)
claims.record("ash_preserves_accuracy", claims.accuracy_evidence(sweep), P.name, seed)
display(Markdown(f"**Verdict ({P.name} profile).** Best AUROC at **{best_stage}**; the paper finds the "
                 "penultimate layer best, with earlier placements costing ID accuracy."))

# %% [markdown]
# ## ASH-RAND and combinations, and the trade-off figure
#
# Every method's ID accuracy against its mean FPR95 and AUROC (the paper's Figure 1).

# %%
long = ev.benchmark(C.methods)
table = cs.summary(long)
display(table.loc[[m for m in table.index if "ASH" in m]].round(2))
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
for ax, col in zip(axes, (names.FPR95, names.AUROC)):
    sns.scatterplot(table.reset_index(), x=col, y=names.ID_ACCURACY, hue=names.METHOD, s=80, ax=ax,
                    legend=ax is axes[1])
    ax.set_xlabel(f"mean {col} (%)")
axes[1].legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Paper-profile ablations (GPU), when present
#
# The same analyses on the paper-profile ResNet-18 (width 64, 60 epochs, all test images),
# computed on the GPU by `python -m ood_core classifier --profile paper --export`.

# %%
paper_run = get_profile("paper").classifier.runs["cifar10"]
paper = cs.published(paper_run)
if paper is None:
    display(Markdown(f"No paper-profile results for *{paper_run.label}* under `results/` yet."))
else:
    t = paper.tables
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, col in zip(axes, (names.ID_ACCURACY, names.FPR95, names.AUROC)):
        sns.lineplot(t["sweep"], x="percentile", y=col, hue="shaper", marker="o", ax=ax)
        ax.set_xlabel("pruning percentile p")
    fig.suptitle(f"paper profile: {paper_run.label}")
    fig.tight_layout()
    plt.show()
    display(t["local_vs_global"].round(2))
    display(t["where_to_ash"].round(2))
    source = f"paper profile ({paper.hardware})"
    for claim_id, evidence in (("ash_preserves_accuracy", claims.accuracy_evidence(t["sweep"])),
                               ("local_beats_global", claims.local_evidence(t["local_vs_global"])),
                               ("penultimate_best", claims.penultimate_evidence(t["where_to_ash"]))):
        claims.record(claim_id, evidence, P.name, seed, source=source)

# %% [markdown]
# ## Verdicts
#
# The ablation claims on this profile's classifier and, where present, the paper-profile one.

# %%
display(claims.ledger_rows([claims.assess(c, e, s) for c in ("ash_preserves_accuracy", "local_beats_global",
                                                             "penultimate_best")
                            for s, e in claims.recorded(c, P.name, seed).items()]))

# %% [markdown]
# ## A note on OpenOOD v1.5
#
# OpenOOD v1.5 {cite}`zhang2023openood` evaluates "ASH" (ASH-B with $p$ tuned on a validation
# OOD split) on CIFAR-10 ResNet-18 and reports it among the weakest methods there (near/far-OOD
# AUROC 75.27 / 78.49, against energy 87.58 / 91.21), while it is near the top on ImageNet
# ResNet-50. Our CIFAR ResNet-18s point the same way, more sharply: on the paper-profile model
# ASH-S@95 and ASH-B@95 are below energy on every OOD set we have, ASH-S@95 far below chance,
# while ASH-P (pruning without rescaling) matches energy. Pruning 90–95 % of a 512-dimensional
# penultimate vector of a CIFAR network leaves ~25 active units, and whether the rescaling helps
# depends on whether OOD inputs spread or concentrate their activation mass in that network.

# %% [markdown]
# ## Summary
#
# * Accuracy-vs-$p$, local-vs-global and where-to-ASH are computed from cached features (and, for
#   earlier blocks, fresh forward passes with shaping applied by composition, never by toggling
#   the model).
# * Each verdict above is computed from this run's numbers; the claims ledger collects them.

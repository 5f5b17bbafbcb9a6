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
# # ASH: the benchmark table
#
# Djurisic et al. {cite}`djurisic2023ash` prune each sample's penultimate activations below its
# own $p$-th percentile and keep (ASH-P), binarise (ASH-B) or rescale by $\exp(s_1/s_2)$ (ASH-S)
# the rest, then score with the energy $\log\sum_k e^{f_k}$ {cite}`liu2020energy`. This chapter
# trains the profile's CIFAR-10 and FashionMNIST classifiers and measures every method on every
# OOD set we have, with one metrics implementation (`ood_core.metrics`, **ID = positive class**,
# the convention of the ASH/ReAct/DICE tables).
#
# Baselines: MSP {cite}`hendrycks2017baseline`, max-logit, energy, ODIN {cite}`liang2018odin`
# ($T=1000$, $\epsilon=0.0014$), ReAct {cite}`sun2021react` ($p=90$), DICE {cite}`sun2022dice`
# ($p=90$), Mahalanobis {cite}`lee2018mahalanobis` (tied covariance, no input preprocessing);
# ASH at the paper's CIFAR-10 percentiles (ASH-P@90, ASH-B@95, ASH-S@95), ASH-RAND@90 and ASH-S
# combined with ReAct and DICE.

# %% tags=["parameters"]
profile: str = "cpu"  # scale profile: "smoke" (seconds), "cpu" (default), "paper" (GPU scale)
seed: int = 0  # seed for evaluation subsets, synthetic sets and ASH-RAND
device: str = "cpu"  # torch device for training and feature extraction

# %%
import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import Markdown, display

from ood_core import classifier_study as cs, claims, data, detectors, names, plots
from ood_core.experiment import missing_note
from ood_core.profiles import get_profile

P = get_profile(profile)
C = P.classifier
plots.setup()
evals = {ds: cs.evaluate(C.runs[ds], C.n_eval, C.n_fit, C.ood[ds], seed=seed, device=device) for ds in C.runs}
for ds, ev in evals.items():
    m = ev.trained.meta
    display(Markdown(f"**{ev.trained.run.label}**: {m['steps']} steps on {m['n_train']:,} images in "
                     f"{m['wall_time_s']:.0f} s ({m['hardware'].get('gpu', 'CPU')}); ID test accuracy "
                     f"{ev.accuracy:.2f} % on "
                     f"{len(ev.id_set):,} test images."))

# %% [markdown]
# ## CIFAR-10
#
# **Missing sets.** The paper averages over SVHN, LSUN-Crop, LSUN-Resize, iSUN, Textures and
# Places365. Only a *partial* Textures (10 of 47 classes) is in the mirror, so our averages are
# over different sets and **cannot be compared number-for-number with the paper's**; the paper's
# averages are shown beside ours for orientation only.

# %%
ev = evals["cifar10"]
display(Markdown(missing_note(ev.missing)))
long = ev.benchmark(C.methods)
table = cs.summary(long)
display(table.round(2))

# %%
per_set = long.pivot_table(index=names.METHOD, columns=names.OOD, values=names.AUROC, sort=False)
fig, ax = plt.subplots(figsize=(1.1 * per_set.shape[1] + 3, 0.45 * per_set.shape[0] + 1.5))
sns.heatmap(per_set, annot=True, fmt=".1f", cmap="viridis", vmin=50, vmax=100, ax=ax,
            cbar_kws={"label": "AUROC (%)"})
ax.set_title(f"AUROC per OOD set — {ev.trained.run.label}")
plt.show()

# %%
best = table[names.FPR95].idxmin()
ash_s = [m for m in table.index if m.startswith("ASH-S@") and "+" not in m][0]
display(Markdown(
    f"**Verdict ({P.name} profile, CIFAR-10).** Lowest mean FPR95: **{best}** ({table.loc[best, 'FPR95']:.2f} %). "
    f"{ash_s}: FPR95 {table.loc[ash_s, 'FPR95']:.2f} % / AUROC {table.loc[ash_s, 'AUROC']:.2f} % vs energy "
    f"{table.loc['energy', 'FPR95']:.2f} % / {table.loc['energy', 'AUROC']:.2f} % (paper, DenseNet on its six sets: "
    f"15.05 / 96.61 vs 26.55 / 94.57). ID accuracy with {ash_s}: {table.loc[ash_s, 'ID accuracy (%)']:.2f} % "
    f"vs {table.loc['energy', 'ID accuracy (%)']:.2f} % unpruned."))

# %% [markdown]
# ## FashionMNIST → MNIST: the pair where likelihoods fail
#
# The Glow chapters showed likelihood ranking MNIST *above* FashionMNIST. A classifier's
# post-hoc scores on the same pair:

# %%
ev = evals["fashion_mnist"]
long_fm = ev.benchmark(C.methods)
display(cs.summary(long_fm).drop(columns=[names.PAPER_FPR95, names.PAPER_AUROC]).round(2))
display(long_fm[long_fm[names.OOD] == ev.names["mnist"]].set_index(names.METHOD)[[names.FPR95, names.AUROC]].round(2).T)

# %% [markdown]
# ## Paper-profile results (GPU), when present

# %%
paper_summaries = {}
for ds in ("cifar10", "fashion_mnist"):
    paper_run = get_profile("paper").classifier.runs[ds]
    paper = cs.published(paper_run)
    if paper is None:
        display(Markdown(f"No paper-profile results for *{paper_run.label}* under `results/` yet."))
        continue
    m = paper.meta
    display(Markdown(f"**paper profile: {paper_run.label}** — trained on {paper.hardware}, "
                     f"{m['steps']} steps, {m['wall_time_s'] / 60:.1f} min, {m['created']}; all test images."))
    summary_paper = paper.tables["summary"].set_index(names.METHOD)
    if ds != "cifar10":  # the paper's columns are CIFAR-10 averages
        summary_paper = summary_paper.drop(columns=[names.PAPER_FPR95, names.PAPER_AUROC])
    else:
        paper_summaries = {f"paper profile ({paper.hardware})": summary_paper}
    display(summary_paper.round(2))
    grid = paper.tables["benchmark"].pivot_table(index=names.METHOD, columns=names.OOD, values=names.AUROC, sort=False)
    fig, ax = plt.subplots(figsize=(1.1 * grid.shape[1] + 3, 0.45 * grid.shape[0] + 1.5))
    sns.heatmap(grid, annot=True, fmt=".1f", cmap="viridis", vmin=0, vmax=100, ax=ax, cbar_kws={"label": "AUROC (%)"})
    ax.set_title(f"paper profile: AUROC per OOD set — {paper_run.label}")
    plt.show()
    ash_rows = summary_paper.loc[[r for r in summary_paper.index if r.startswith("ASH-S@")]]
    display(Markdown(
        f"ID accuracy {summary_paper.loc['energy', names.ID_ACCURACY]:.2f} % unpruned. Energy: FPR95 "
        f"{summary_paper.loc['energy', names.FPR95]:.2f} % / AUROC {summary_paper.loc['energy', names.AUROC]:.2f} %; "
        + "; ".join(f"{k}: {r[names.FPR95]:.2f} % / {r[names.AUROC]:.2f} %" for k, r in ash_rows.iterrows()) + "."))

# %% [markdown]
# ## Verdicts
#
# The paper's claims about the benchmark, on this profile's CIFAR-10 classifier and, where present, on the
# paper-profile one (rules in the claims ledger).

# %%
rows = []
for source, summ in {f"{P.name} profile": cs.summary(evals["cifar10"].benchmark(C.methods)), **paper_summaries}.items():
    own = source == f"{P.name} profile"
    for claim_id, spec in (("ash_s_beats_energy", "ash_s@95"), ("ash_b_beats_energy", "ash_b@95")):
        rows.append(claims.record(claim_id, claims.beats_energy_evidence(summ, detectors.title(spec)), P.name, seed,
                                  source=None if own else source))
    rows.append(claims.record("ash_rand_works", claims.random_evidence(summ, detectors.title("ash_rand@90")), P.name,
                              seed, source=None if own else source))
paper_sets = ("svhn", "lsun_crop", "lsun_resize", "isun", "places365")
absent = [data.spec(n).title for n in paper_sets if not data.available(n)]
if absent:
    rows.append(claims.not_testable("ash_state_of_the_art", ", ".join(absent) + ", the full Textures and ImageNet are "
                                    "not in the offline mirror", P.name, seed))
display(claims.ledger_rows(rows))

# %% [markdown]
# ## Summary
#
# * All detectors are scored by the same code on the same ID/OOD pairs; the table states the ID
#   accuracy each method leaves the classifier with (only ASH, ReAct and DICE change it).
# * The paper's OOD suite is mostly unavailable offline; our ranking of methods is on the sets we
#   have (partial Textures, MNIST/FashionMNIST as 32×32×3, synthetic sets).
# * On our paper-profile ResNet-18 (94.6 % accuracy) ASH-S@95 does not reproduce: it ranks every
#   OOD set we have *above* CIFAR-10 (AUROC far below 50 %), while ID accuracy is preserved as the
#   paper says. The next chapter's percentile sweep shows where it turns: ASH-S is on par with
#   energy up to p ≈ 50 and degrades beyond. The rescaling $\exp(s_1/s_2)$ rewards samples whose
#   activation mass is spread over many units; on this network OOD inputs are the spread ones.

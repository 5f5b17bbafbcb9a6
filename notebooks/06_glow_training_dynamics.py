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
# # Likelihoods over training
#
# Nalisnick et al. follow the bits/dim of the training set, the test set and the OOD set during
# training and find the OOD set favoured *throughout*, not only at convergence. Our trainer
# records these curves while it trains (fixed subsets, fixed dequantisation noise), so this chapter
# only reads the training logs of the models trained in the previous chapters.

# %% tags=["parameters"]
profile: str = "cpu"  # scale profile: "smoke" (seconds), "cpu" (default), "paper" (GPU scale)
seed: int = 0  # seed for evaluation subsets and dequantisation noise
device: str = "cpu"  # torch device for training and scoring

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display

from ood_core import claims, likelihood_study as ls, names, plots
from ood_core.experiment import train_or_load
from ood_core.profiles import get_profile

P = get_profile(profile)
plots.setup()
runs = [P.glow.runs[ds].with_model(coupling=c) for ds in ("fashion_mnist", "cifar10") for c in ("affine", "additive")]
trained = [train_or_load(r, device=device) for r in runs]

# %%
fig, axes = plt.subplots(1, len(trained), figsize=(4.2 * len(trained), 3.6), sharey=False)
for ax, t in zip(axes, trained):
    h = t.history.melt(id_vars=["step"], value_vars=[c for c in t.history if c.startswith(names.CURVE_PREFIX)],
                       var_name="set", value_name="bits/dim")
    h["set"] = h["set"].str.removeprefix(names.CURVE_PREFIX)
    sns.lineplot(h, x="step", y="bits/dim", hue="set", marker="o", ax=ax)
    ax.set_title(t.run.label, fontsize=9)
fig.tight_layout()
plt.show()

# %%
rows = []
for t in trained:
    h = t.history
    id_col = names.curve_column(names.ID_TEST)
    ood_cols = [c for c in h if c.startswith(names.CURVE_PREFIX) and c not in map(names.curve_column, names.ID_KEYS)]
    for c in ood_cols:
        below = (h[c] < h[id_col]).mean()
        rows.append({"model": t.run.label, names.OOD_SET: c.removeprefix(names.CURVE_PREFIX), "evaluations": len(h),
                     "share of evaluations with OOD below ID test": below,
                     "final ID test": h[id_col].iloc[-1], "final OOD": h[c].iloc[-1]})
summary = pd.DataFrame(rows).set_index(["model", names.OOD_SET])
plots.show_table(summary, digits={"share of evaluations with OOD below ID test": 2})
rows = [claims.record(claim_id, claims.throughout_evidence(t.history, "MNIST test"), P.name, seed)
        for claim_id, t in (("fashion_mnist_mnist_throughout_training", trained[0]),
                            ("cifar10_mnist_throughout_training", trained[2]))]
display(Markdown(
    f"**Verdict ({P.name} profile): {rows[0]['verdict']}.** For {trained[0].run.label}: {rows[0]['our evidence']} "
    f"(the paper: throughout training; rule: {claims.claim('fashion_mnist_mnist_throughout_training').rule.text})."))

# %% [markdown]
# ## Paper-profile curves (GPU), when present

# %%
for ds in ("fashion_mnist", "cifar10"):
    paper_run = get_profile("paper").glow.runs[ds]
    paper = ls.published(paper_run)
    if paper is None:
        display(Markdown(f"No paper-profile results for *{paper_run.label}* under `results/` yet."))
        continue
    if ds == "fashion_mnist":
        rows.append(claims.record("fashion_mnist_mnist_throughout_training",
                                  claims.throughout_evidence(paper.history, "MNIST test"), P.name, seed,
                                  source=f"paper profile ({paper.hardware})"))
    h = paper.history.melt(id_vars=["step"], value_vars=[c for c in paper.history if c.startswith(names.CURVE_PREFIX)],
                           var_name="set", value_name="bits/dim")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    sns.lineplot(h, x="step", y="bits/dim", hue="set", marker="o", ax=ax)
    ax.set_title(f"paper profile: {paper_run.label}", fontsize=9)
    plt.show()

# %%
plots.show_table(claims.ledger_rows(rows), index=False)

# %% [markdown]
# ## Summary
#
# * The curves come from the training log itself (`TrainResult.history`), saved with the model.
# * Whether the OOD set stays favoured from the first evaluation on is read off the table above.

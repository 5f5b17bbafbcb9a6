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
# # Constant-volume Glow: the inversion without a volume term
#
# Replace Glow's affine couplings by *additive* ones ($y_b = x_b + t(x_a)$) and the only
# input-dependent part of the log-det disappears: ActNorm and the 1×1 convolutions have
# log-dets that depend on the parameters, not on $x$. Nalisnick et al. call this CV-Glow and show
# that the inversion persists, which rules out the volume term as its sole cause and makes the
# model simple enough for their second-order analysis.
#
# Same data, architecture size, optimiser and training length as the affine runs; only the
# coupling differs (`GlowRun.with_coupling("additive")`).

# %% tags=["parameters"]
profile: str = "cpu"  # scale profile: "smoke" (seconds), "cpu" (default), "paper" (GPU scale)
seed: int = 0  # seed for evaluation subsets and dequantisation noise
device: str = "cpu"  # torch device for training and scoring

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from ood_core import claims, likelihood_study as ls, names, plots
from ood_core.experiment import missing_note
from ood_core.profiles import get_profile

P = get_profile(profile)
plots.setup()
cv = {ds: ls.evaluate(P.glow.runs[ds].with_model(coupling="additive"), P.glow.n_eval, P.glow.ood[ds], seed=seed,
                      device=device) for ds in ("fashion_mnist", "cifar10")}
affine = {ds: ls.evaluate(P.glow.runs[ds], P.glow.n_eval, P.glow.ood[ds], seed=seed, device=device)
          for ds in ("fashion_mnist", "cifar10")}

# %% [markdown]
# ## The log-det is the same for every input
#
# The spread of the log-det term across all evaluated images (every set pooled) is zero up to
# floating point for CV-Glow, and not for affine Glow.

# %%
rows = []
for ds in cv:
    for name, ev in (("CV-Glow (additive)", cv[ds]), ("Glow (affine)", affine[ds])):
        pooled = np.concatenate([s["bpd_logdet"] for s in ev.scores.values()])
        rows.append({"ID": ds, "model": name, "log-det term: min (bpd)": pooled.min(),
                     "max (bpd)": pooled.max(), "std (bpd)": pooled.std()})
plots.show_table(pd.DataFrame(rows).set_index(["ID", "model"]), digits=4)

# %% [markdown]
# ## Bits/dim histograms and tables

# %%
for ds, ev in cv.items():
    fig, ax = plt.subplots(figsize=(8, 3.8))
    plots.score_histograms({k: v for k, v in ev.column("bpd").items() if "noise" not in k and k != "constant"},
                           "bits/dim", ax=ax, title=ev.trained.run.label)
    plt.show()
    plots.show_table(ev.table, digits={names.AUROC_LOGP: 1}, caption=ev.run.label)
    display(Markdown(missing_note(ev.missing)))

# %%
rows = []
for ds, claim_id in (("fashion_mnist", "cv_glow_fashion_mnist_prefers_mnist"), ("cifar10", "cv_glow_cifar10_prefers_mnist")):
    ev = cv[ds]
    logdet_std = float(np.concatenate([s["bpd_logdet"] for s in ev.scores.values()]).std())
    evidence = claims.inversion_evidence(ev.table, ev.names[names.ID_TEST], ev.names["mnist"], logdet_std)
    rows.append(claims.record(claim_id, evidence, P.name, seed))
plots.show_table(claims.ledger_rows(rows), index=False)
display(Markdown(
    f"**Verdict ({P.name} profile): {rows[0]['verdict']}** for FashionMNIST → MNIST with constant volume: "
    f"{rows[0]['our evidence']}. The paper reports that the inversion persists. Rule: "
    f"{claims.claim('cv_glow_fashion_mnist_prefers_mnist').rule.text}."))

# %% [markdown]
# ## Summary
#
# * CV-Glow's log-det term is identical for every input (tested in `tests/test_flows.py`, seen
#   above on real data), so any likelihood gap lives entirely in $\log p(z)$.
# * The inversion on FashionMNIST → MNIST does not need an input-dependent volume term.

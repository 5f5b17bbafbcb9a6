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
# # Claims ledger
#
# Every claim of both papers that this book tests, with our measured evidence and a verdict —
# **reproduced**, **partly**, **not**, or **not testable here** — computed by `ood_core.claims`
# from the evidence the earlier chapters recorded (this profile's runs) and, where present, the
# committed paper-profile GPU results. Each claim is written once in the claims registry with its
# rule (listed at the end of this page); nothing in the verdict column is typed by hand.

# %% tags=["parameters"]
profile: str = "cpu"  # scale profile: "smoke" (seconds), "cpu" (default), "paper" (GPU scale)
seed: int = 0  # seed of the evaluation subsets (must match the earlier chapters to reuse their cache)
device: str = "cpu"  # torch device (nothing is trained here unless the cache is empty)

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display

from ood_core import claims, plots
from ood_core.profiles import get_profile

P = get_profile(profile)
plots.setup()
# Every claim's evidence was recorded by the chapter that measures it; a chapter that did not run for this
# profile makes this cell fail with the list of chapters to run (claims.MissingEvidence).
table = claims.ledger(P.name, seed)

# %% [markdown]
# ## The ledger

# %%
plots.show_table(table, index=False, caption=f"Claims ledger ({P.name} profile, seed {seed})")

# %% [markdown]
# ## Tally

# %%
plots.show_table(claims.verdict_counts(table))
fig, ax = plt.subplots(figsize=(8, 2.8))
sns.countplot(table, y="paper", hue="verdict", hue_order=[*claims.VERDICTS, claims.NOT_TESTABLE],
              palette=["#2a9d8f", "#e9c46a", "#e76f51", "#adb5bd"], ax=ax)
ax.set_xlabel("claims")
ax.set_ylabel("")
plt.show()

# %% [markdown]
# ## The rules
#
# Each claim, its rule and the chapter that measures it (`ood_core.claims.CLAIMS`).

# %%
plots.show_table(claims.rules_table(), index=False, caption="Claims and their rules")

# %% [markdown]
# ## Summary
#
# * Verdicts are recomputed every time the book is built, from the same cached runs the chapters
#   show, so the ledger cannot drift from the figures.
# * "Not testable here" marks claims whose data (SVHN, LSUN, iSUN, Places365, full Textures,
#   ImageNet) are not in the offline mirror.
# * "Follow-ups" rows test the fixes proposed after Nalisnick et al. (here WAIC; the likelihood
#   ratio, typicality and input complexity are compared in the unified benchmark).

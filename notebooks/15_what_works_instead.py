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
# # What works instead
#
# The Nalisnick chapters show *that* likelihood fails; this one asks *why*, and which of the remedies
# proposed since detect both directions of a pair. A remedy that helps FashionMNIST → MNIST (OOD simpler
# than ID) and hurts MNIST → FashionMNIST (OOD more complex) has only traded one bias for another, so
# every remedy is measured on **both directions**, over **several training seeds**, and on CIFAR-10 against
# every colour set of the mirror, TinyImageNet (near-OOD) included:
#
# * **likelihood ratio** {cite}`ren2019likelihood`: $\log p_\theta(x) - \log p_{\theta_0}(x)$, the background
#   model $\theta_0$ of the *same* architecture trained on inputs with a fraction $\mu$ of sub-pixels (each
#   channel value of each pixel, independently) replaced by uniform noise and an L2 penalty, so that it
#   learns the population-level statistics (how many pixels are dark, how smooth images are) that dominate
#   $\log p$; PixelCNN and Glow versions;
# * **input complexity** {cite}`serra2020input`: $\log_2 p(x) + L(x)$ with $L$ a lossless compressor's code
#   length;
# * **typicality** {cite}`nalisnick2019typicality`: $-|{-\log p(x)} - \hat H|$ with the entropy $\hat H$
#   estimated on held-out ID training images;
# * **DoSE** {cite}`morningstar2021dose`: the sum of per-statistic log-densities (one KDE per statistic) of
#   the model's per-example summary statistics
#   ($\log p(x)$, $\log p(z)$ per level, the log-det and $\lVert z\rVert^2$ for Glow; the ELBO terms for the
#   VAE), fitted on held-out ID images;
# * **a flow on classifier embeddings** {cite}`kirichenko2020why`: the same kind of flow, trained on the
#   classifier's penultimate features instead of pixels.
#
# The models are those of the unified benchmark and the seed study (chapters 13–14), read from the artifact
# cache; the diagnosis section reuses the Glow chapters' models.

# %% tags=["parameters"]
profile: str = "cpu"  # scale profile: "smoke" (seconds), "cpu" (default), "paper" (GPU scale)
seed: int = 0  # seed for evaluation subsets, bootstrap and ASH-RAND
device: str = "cpu"  # torch device for training and scoring

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown, display

from ood_core import benchmarks, claims, data, detectors, flow_diagnostics as fd, likelihood_study as ls, metrics, names, plots
from ood_core.profiles import get_profile

P = get_profile(profile)
S, U = P.seeds, P.unified
plots.setup()
OTHER = {"fashion_mnist": "mnist", "mnist": "fashion_mnist"}
SPECS = list(dict.fromkeys((*U.remedies, *U.reference_classifier)))

# %% [markdown]
# ## Why image flows fail: local pixel correlations
#
# Kirichenko et al. argue that an image flow spends its capacity on *local* pixel correlations that every
# natural image shares. Each coupling layer splits the (squeezed) channels in two halves; a network reads
# one half and predicts a shift for the other. If what the network predicts from the visible half explains
# the masked half of OOD images as well as of ID images, the flow has learned something generic about
# images, not about FashionMNIST. Below: the first coupling layer of the FashionMNIST Glow (chapter 02), for
# ID and OOD images — the image, the masked half and the network's prediction of it, placed back in
# image space — and the share of the masked half's variance the prediction explains ($R^2$).

# %%
glow = ls.evaluate(P.glow.runs["fashion_mnist"], P.glow.n_eval, P.glow.ood["fashion_mnist"], seed=seed,
                   device=device)
model = glow.trained.model
view_sets = {k: glow.sets[k].x[:256] for k in (names.ID_TEST, "mnist", "uniform") if k in glow.sets}
views = {k: fd.coupling_view(model, x, level=0, step=0) for k, x in view_sets.items()}
fig, axes = plt.subplots(len(views), 3, figsize=(7.5, 2.6 * len(views)), squeeze=False)
for row, (k, v) in zip(axes, views.items()):
    for ax, (title, img) in zip(row, (("image", v.image[0]), ("masked half (target)", v.target_image[0]),
                                      ("network's prediction", v.prediction_image[0]))):
        ax.imshow(img.mean(0).numpy(), cmap="gray")
        ax.set_title(f"{glow.names[k]}: {title}", fontsize=8)
        ax.axis("off")
fig.tight_layout()
plt.show()
r2 = pd.DataFrame({glow.names[k]: [float(np.median(v.explained)), float(np.mean(v.explained))] for k, v in views.items()},
                  index=["median R²", "mean R²"]).T
plots.show_table(r2, digits=2, caption=f"How much of the masked half the coupling network predicts ({glow.run.label})")

# %% [markdown]
# The latent reconstruction experiment: encode an image, keep the latents of one level of the multi-scale
# flow, replace the others by the prior's mean, decode. If the kept level restores OOD images as well as ID
# ones, it encodes generic image structure.

# %%
keeps = [tuple(), *[(i,) for i in range(model.config.levels)]]
recon = fd.reconstruction_table(model, {k: x[:128] for k, x in view_sets.items() if k != "uniform"}, keeps=keeps,
                                seed=seed, names=glow.names)
plots.show_table(recon, digits={"MSE": 4, "s.e. (MSE)": 4, "PSNR (dB)": 1, "s.e. (PSNR)": 1},
                 caption="Reconstructions from one kept level (PSNR, higher = closer)")
shown = {}
for k in (names.ID_TEST, "mnist"):
    x = view_sets[k][:8]
    shown[glow.names[k]] = x
    for level in range(model.config.levels):
        rec = fd.latent_reconstruction(model, x, keep_levels=(level,))
        shown[f"{glow.names[k]}: level {level} kept"] = ((rec + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
fig = plots.grids(shown, ncols=1 + model.config.levels, nrow=8, size=3.0)
plt.show()

id_r2 = float(np.median(views[names.ID_TEST].explained))
ood_r2 = {glow.names[k]: float(np.median(v.explained)) for k, v in views.items() if k != names.ID_TEST}
local_row = claims.record("kirichenko_local", {"model": glow.run.label, "id_r2": id_r2, "ood_r2": ood_r2}, P.name, seed)
display(Markdown(f"**Verdict ({P.name} profile): {local_row['verdict']}.** {local_row['our evidence']}."))

# %% [markdown]
# ## The remedies on both directions, over training seeds
#
# The seed study's models (chapter 14): for each of three training seeds, every model is trained on
# FashionMNIST and on MNIST and scored on the other set. Mean ± std of the AUROC over seeds; the raw
# likelihoods and the best classifier scores are shown for reference.

# %%
seed_rows = []
spread = S.seeds[:S.n_spread]
for ds in S.datasets:
    for s in spread:
        ctx = benchmarks.seed_context(P, ds, s, SPECS, OTHER[ds], seed=seed, device=device)
        suite = detectors.Suite(ctx)
        for spec in SPECS:
            sc = suite.scores(spec, [names.ID_TEST, OTHER[ds]])
            seed_rows.append({"pair": f"{data.spec(ds).title} → {data.spec(OTHER[ds]).title}", "seed": s,
                              names.DETECTOR: detectors.title(spec), names.FAMILY: detectors.family_of(spec),
                              names.AUROC: 100 * metrics.auroc(sc[names.ID_TEST], sc[OTHER[ds]])})
by_seed = pd.DataFrame(seed_rows)
FWD, REV = "FashionMNIST → MNIST", "MNIST → FashionMNIST"
summary = by_seed.groupby([names.DETECTOR, "pair"], sort=False)[names.AUROC].agg(["mean", "std", "min", "max"])
wide = summary["mean"].unstack("pair")[[FWD, REV]]
wide["std " + FWD] = summary["std"].unstack("pair")[FWD]
wide["std " + REV] = summary["std"].unstack("pair")[REV]
wide["worse direction"] = wide[[FWD, REV]].min(axis=1)
wide = wide.sort_values("worse direction", ascending=False)
plots.show_table(wide, digits=1, caption=f"AUROC (%) over {len(spread)} training seeds, both directions")

fig, ax = plt.subplots(figsize=(7, 0.38 * len(wide) + 1.5))
d = by_seed.assign(detector=pd.Categorical(by_seed[names.DETECTOR], categories=list(wide.index), ordered=True))
sns.stripplot(d, y="detector", x=names.AUROC, hue="pair", dodge=True, ax=ax, size=6)
ax.axvline(50, color="k", lw=0.8, ls=":")
ax.axvline(95, color="tab:green", lw=0.8, ls="--")
ax.set_xlim(0, 100)
ax.set_xlabel("AUROC (%) — one dot per training seed; dashed: the 95 % goal")
plt.show()

# %% [markdown]
# ### The likelihood ratio: what was tried
#
# Ren et al. report about 99 % on FashionMNIST → MNIST with a PixelCNN++ and a background of the same
# architecture, both trained to convergence. At the budget of this profile (one epoch on 10,000 images)
# a sweep of the background's noise rate $\mu \in \{0.1, 0.2, 0.3\}$ and L2 penalty
# $\in \{0, 10^{-4}, 10^{-3}\}$, background of the same architecture, one seed, was run outside the
# book (`tools/experiments/lratio.py grid`; the tables are in `tools/experiments/lratio.md`):
#
# * PixelCNN (width 16): no setting reaches 95 % in both directions. The best balanced ones are
#   $\mu = 0.3$, L2 $10^{-3}$ (91.8 % forward, 97.3 % reversed) and $\mu = 0.2$ (93 % forward, 88–90 %
#   reversed). Along one training run (`lratio.py curves`), the forward ratio grows with training
#   length (79.8 % after 5,000 images, 92.6 % after 10,000), and a much smaller background (one
#   masked layer instead of five) does worse (83.6 % after 10,000).
# * Glow (K = 4, width 32): the ratio stays at chance on FashionMNIST → MNIST (53–55 %) while the
#   reversed direction is easy (98–99 %): a one-epoch Glow background has not learned the population
#   statistics any better than the model.
#
# The profile keeps $\mu = 0.2$ and L2 $10^{-4}$ for the PixelCNN and the Glow backgrounds (the
# seed-averaged table above measures them). That sweep perturbed whole pixels (all channels of a location
# together); the backgrounds now follow the paper and perturb each sub-pixel on its own, which changes
# nothing for one-channel images (FashionMNIST, MNIST) and only the CIFAR-10 backgrounds. The ratio needs
# models trained well past one epoch: that is the paper profile's job, on a GPU.

# %% [markdown]
# ## On CIFAR-10, against every colour set
#
# The unified benchmark's models (chapter 13, one training seed): AUROC with a 95 % bootstrap interval.

# %%
cifar = benchmarks.unified_context(P, "cifar10", SPECS, seed=seed, device=device)
cifar_table = detectors.run_table(cifar, SPECS, n_boot=U.n_boot, seed=seed)
cifar_table["set"] = cifar_table[names.OOD_SET].str.replace(" test", "")
grid = cifar_table.pivot_table(index=names.DETECTOR, columns="set", values=names.AUROC, sort=False)
grid = grid.loc[[t for t in wide.index if t in grid.index]]
fig, ax = plt.subplots(figsize=(1.0 * grid.shape[1] + 4, 0.42 * grid.shape[0] + 2))
sns.heatmap(grid, annot=True, fmt=".0f", cmap="RdYlGn", vmin=0, vmax=100, center=50, ax=ax,
            cbar_kws={"label": "AUROC (%)"})
ax.set_title("CIFAR-10 → each OOD set (AUROC %)")
ax.set_xlabel("")
plt.show()

# %% [markdown]
# ## What works, and why
#
# One sentence per detector, from the tables above: whether it reaches 95 % on both directions, which
# direction it loses, and the mechanism that explains it.

# %%
WHY = {
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
lines = []
for title, row in wide.iterrows():
    why = next((v for k, v in WHY.items() if k in title), "a classifier score: it never sees pixel statistics")
    fwd, rev = row[FWD], row[REV]
    status = ("reaches 95 % on both directions" if min(fwd, rev) >= 95 else
              f"fails the {'reversed' if rev < fwd else 'forward'} pair ({min(fwd, rev):.1f} %)"
              if min(fwd, rev) < 80 else f"stays below 95 % on the {'reversed' if rev < fwd else 'forward'} pair")
    lines.append(f"* **{title}** — {fwd:.1f} % / {rev:.1f} % (forward / reversed): {status}; {why}.")
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Verdicts

# %%
TWO_WAY_CLAIMS = {"ren_likelihood_ratio": ("likelihood_ratio:model=pixelcnn", "≈ 99 % on FashionMNIST → MNIST with "
                                         "PixelCNN++ (Ren et al. 2019; recalled, not re-checked)"),
                "serra_input_complexity": ("input_complexity:codec=png", "Serrà et al. report FashionMNIST → MNIST "
                                           "≈ 94-95 % with PNG and Glow (recalled)"),
                "kirichenko_embeddings": ("feature_flow", "Kirichenko et al. report near-perfect detection with "
                                          "flows on EfficientNet embeddings (recalled)")}
rows = []
for claim_id, (spec, reference) in TWO_WAY_CLAIMS.items():
    t = detectors.title(spec)
    per = {pair: by_seed[(by_seed[names.DETECTOR] == t) & (by_seed["pair"] == pair)][names.AUROC].tolist()
           for pair in (FWD, REV)}
    rows.append(claims.record(claim_id, {"method": t, "forward": per[FWD], "reverse": per[REV],
                                         "reference": reference}, P.name, seed))
dose = detectors.title("dose:model=glow")
aurocs = {pair: float(wide.loc[dose, pair]) for pair in (FWD, REV)}
aurocs.update({f"CIFAR-10 → {k}": float(v) for k, v in grid.loc[dose].items()})
rows.append(claims.record("morningstar_dose", {"method": dose, "aurocs": aurocs}, P.name, seed))
typ = detectors.typicality_table(cifar.likelihood("glow"), U.batch_sizes, seed=seed)
fm_typ = detectors.typicality_table(ls.evaluate(P.glow.runs["fashion_mnist"], P.glow.n_eval,
                                                P.glow.ood["fashion_mnist"], seed=seed, device=device),
                                    U.batch_sizes, seed=seed)
mn = fm_typ[fm_typ[names.OOD_SET] == glow.names["mnist"]].set_index("batch_size")[names.AUROC]
rows.append(claims.record("typicality_needs_batches", {"pair": "FashionMNIST → MNIST", "single": float(mn.iloc[0]),
                                                      "batch": float(mn.iloc[-1]), "m": int(mn.index[-1])},
                          P.name, seed))
rows.append(local_row)
plots.show_table(claims.ledger_rows(rows), index=False)

# %% [markdown]
# ## Summary
#
# * Image flows' coupling layers predict pixels from their neighbours on any image; their likelihood is
#   dominated by such generic statistics, which simpler images satisfy better.
# * The remedies differ in whether they remove that bias or trade it for another: the table above says, per
#   detector and direction, which works here; the claims ledger collects the verdicts.

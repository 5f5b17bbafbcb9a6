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
# # Why the OOD set wins: the second-order analysis
#
# Nalisnick et al. (2019, §5) explain the inversion without training anything. Expand the model's
# log-density to second order around a point $x_0$ and take expectations under the OOD distribution
# $q$ and the data distribution $p^*$:
#
# $$\mathbb{E}_q[\log p(x)] - \mathbb{E}_{p^*}[\log p(x)] \approx
#   \nabla \log p(x_0)^\top\left(\mathbb{E}_q[x] - \mathbb{E}_{p^*}[x]\right)
#   + \tfrac12 \operatorname{Tr}\left\{\nabla^2 \log p(x_0)\,(\Sigma_q - \Sigma_{p^*})\right\}. \qquad (5)$$
#
# For constant-volume Glow with a latent $\mathcal N(0, \sigma^2 I)$ they reduce the trace term to a
# closed form (their eq. 6): the curvature of channel $c$ is $-\sigma^{-2}(\prod_k \sum_j u_{k,c,j})^2$
# ($u_k$: the 1×1-convolution weights of step $k$), always negative, so
#
# $$\text{gap} \approx -\frac{1}{2\sigma^2}\sum_c \Big(\prod_k \sum_j u_{k,c,j}\Big)^2
#   \sum_{h,w}\left(\sigma^2_{q,h,w,c} - \sigma^2_{p^*,h,w,c}\right),$$
#
# which is positive — the OOD set is favoured — whenever its per-pixel variances are smaller. SVHN
# "sits inside" CIFAR-10 in exactly this sense (their Fig. 5); **SVHN is not in our offline data
# mirror**, so this chapter computes the same statistics and predictions for every pair we do have:
# FashionMNIST vs MNIST, and CIFAR-10 vs MNIST and FashionMNIST (zero-padded to 32×32, gray repeated to
# three channels), the partial Textures set and CIFAR-10 in grayscale.
#
# **Conventions.** Every gap is in bits/dim with **positive = OOD favoured** (mean bits/dim of the ID
# test set minus that of the OOD set). Derivatives are of `model.log_prob` on the model input space
# $x = \text{pixel}/256 - 0.5$, in float64, at $x_0$ = the mean ID *training* image. Five predictions
# sit beside the measurement (all from `ood_core.second_order`):
#
# * **closed form** — eq. 6 exactly as the paper states it, mapped onto our multi-scale Glow: the
#   first level's $K$ steps on the squeezed channels ($4C$ of them), ActNorm scales folded into the
#   1×1 convolutions, $u_{k,c,j} = W_k[j, c]$ (column sums), with $\sigma = 1$ or the learned priors'
#   effective scale. It ignores the coupling networks' derivatives, the later levels and the first
#   order term; CV-Glow only;
# * **linearised exact** — the *same* linear flow (first level, couplings taken as the identity, the
#   same $\sigma$), but its exact curvature $-\lVert (\prod_k W_k \operatorname{diag}(a_k))\, e_c
#   \rVert^2 / \sigma^2$ instead of the product of column sums ($a_k$: ActNorm scales). For the flow
#   the paper describes this is exact, so the distance between the two columns is what the column-sum
#   simplification alone costs; CV-Glow only;
# * **eq. (5), diag. Σ** — the two terms of the expansion for the actual network, with the per-pixel
#   variances (the diagonal of $\Sigma_q - \Sigma_{p^*}$, as the closed form uses): the gradient term
#   exactly, the trace term by Hutchinson's estimator (Rademacher probes and Hessian-vector products;
#   ± one standard error);
# * **mean-shift term** — the second-order term eq. (5) leaves out, $\tfrac12\,\delta\mu^\top \nabla^2
#   \log p(x_0)\, \delta\mu$ (it appears because
#   $\mathbb E[(x-x_0)(x-x_0)^\top] = \Sigma + (\mu - x_0)(\mu - x_0)^\top$);
# * **Taylor, full Σ** — the complete second-order Taylor model of $\log p$ around $x_0$, averaged over a
#   few images of each set: eq. (5) with the *full* pixel covariance (neighbouring pixels are strongly
#   correlated, and the network's Hessian is not diagonal) plus the mean-shift term.
#
# Reading the columns from left to right separates four questions: is the column-sum product a good
# model of the linear flow it describes; is that linear flow a good model of the network's curvature;
# does the diagonal-covariance expansion hold; does a second-order expansion hold at all. Two sections
# below measure where the closed form stops holding (it shrinks geometrically with the number of steps
# $K$), and a last one explains the astronomical bits/dim that uniform noise gets under the CIFAR-10
# models.
#
# The models are those of the Glow chapters, loaded from the artifact cache (never retrained).

# %% tags=["parameters"]
profile: str = "cpu"  # scale profile: "smoke" (seconds), "cpu" (default), "paper" (GPU scale)
seed: int = 0  # seed for evaluation subsets, dequantisation noise and Hutchinson probes
device: str = "cpu"  # torch device for training and scoring

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown, display

from ood_core import claims, data, flow_diagnostics as fd, likelihood_study as ls, names, plots, second_order as so
from ood_core.experiment import missing_note
from ood_core.flows import LAYER_TERMS, PRIOR_TERMS
from ood_core.profiles import get_profile

P = get_profile(profile)
plots.setup()
n_probes = P.analysis.n_probes  # Rademacher probes of the Hutchinson trace estimates (shared by all pairs of a model)
n_taylor = P.analysis.n_taylor  # images per set for the full-covariance Taylor check (one Hessian-vector product each)
sci = "{:.3g}".format  # three significant digits; scientific notation ("aEb") for very large or small values
DATASETS = ("fashion_mnist", "cifar10")
COUPLINGS = {"additive": "CV-Glow", "affine": "Glow"}
evals = {(ds, coupling): ls.evaluate(P.glow.runs[ds].with_model(coupling=coupling), P.glow.n_eval, P.glow.ood[ds],
                                     seed=seed, device=device)
         for ds in DATASETS for coupling in COUPLINGS}
# the real-image OOD sets of each ID dataset (synthetic noise is left out: it is not a "nearby" dataset)
real_ood = {ds: [k for k in evals[(ds, "additive")].sets
                 if k not in names.ID_KEYS and k.partition(":")[0] not in data.SYNTHETIC]
            for ds in DATASETS}
x0 = {ds: so.model_space_mean(evals[(ds, "additive")].sets[names.ID_TRAIN].x) for ds in DATASETS}
for ds in DATASETS:
    display(Markdown(f"**{data.spec(ds).title}.** " + missing_note(evals[(ds, "additive")].missing)))

# %% [markdown]
# ## Does the OOD data sit inside the ID data?
#
# The data term of the analysis: per channel, the mean pixel value and the per-pixel variance across
# images (on the $[0, 1]$ scale), its ratio to the ID test set's, and the fraction of pixel locations
# where the OOD set varies *less* than the ID set. For SVHN vs CIFAR-10 the paper finds lower variance in
# every channel.

# %%
variance_tables = {}
for ds in DATASETS:
    ev = evals[(ds, "additive")]
    keys = [names.ID_TEST, *real_ood[ds]]
    variance_tables[ds] = so.variance_table({k: ev.sets[k].x for k in keys}, names.ID_TEST,
                                            names={k: ev.sets[k].name for k in keys})
    plots.show_table(variance_tables[ds], digits=4,
                     caption=f"ID {data.spec(ds).title}: per-channel mean and per-pixel variance ([0, 1] scale)")

# %%
fig, axes = plt.subplots(len(DATASETS), 2, figsize=(13, 3.6 * len(DATASETS)), squeeze=False)
for row, ds in zip(axes, DATASETS):
    ev = evals[(ds, "additive")]
    long = pd.concat([pd.DataFrame({"per-pixel mean": (ev.sets[k].x.double() / 255).mean(0).flatten().numpy(),
                                    "per-pixel variance": data.channel_stats(ev.sets[k].x)["pixel_var"].flatten(),
                                    "set": ev.sets[k].name})
                      for k in [names.ID_TEST, *real_ood[ds]]], ignore_index=True)
    sns.histplot(long, x="per-pixel mean", hue="set", stat="density", common_norm=False, element="step",
                 bins=50, ax=row[0])
    sns.histplot(long, x="per-pixel variance", hue="set", stat="density", common_norm=False, element="step",
                 bins=50, ax=row[1])
    row[0].set_title(f"ID {data.spec(ds).title}: per-pixel means (all channels)")
    row[1].set_title(f"ID {data.spec(ds).title}: per-pixel variances (all channels)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Predicted versus measured gap
#
# One block of rows per model; the rows are the OOD sets, every column is in bits/dim with positive =
# OOD favoured ("—": not defined for that model). The closed form and the linearised exact exist only
# for the constant-volume models. Numbers carry three significant digits; very large or small ones are
# written in scientific notation ("aEb" means $a \times 10^{b}$).

# %%
tables = {}
for (ds, coupling), ev in evals.items():
    keys = [names.ID_TEST, *real_ood[ds]]
    tables[(ds, coupling)] = so.second_order_table(
        ev.trained.model, {k: ev.sets[k].x for k in keys}, names.ID_TEST,
        bpd={k: ev.scores[k]["bpd"] for k in keys}, x0=x0[ds], n_probes=n_probes, n_taylor=n_taylor,
        generator=torch.Generator().manual_seed(seed), names={k: ev.sets[k].name for k in keys}, seed=seed)
second_order = pd.concat({f"{COUPLINGS[c]} on {data.spec(ds).title}": t for (ds, c), t in tables.items()},
                         names=["model"])
plots.show_table(second_order.map(sci, na_action="ignore"),
                 caption="Predicted and measured gap (bits/dim, + = OOD favoured; aEb = a × 10^b)")
display(Markdown(
    "Learned-prior effective σ of the CV-Glows: " +
    ", ".join(f"{data.spec(ds).title} {tables[(ds, 'additive')].attrs['sigma_learned']:.3f}" for ds in DATASETS) +
    f". Hutchinson probes per model: {n_probes}; images per set in the Taylor check: {n_taylor}."))

# %%
predictors = ["closed form (σ=1)", "closed form (learned σ)", "linearised exact (learned σ)",
              "eq. (5), diag. Σ: 1st + 2nd", "Taylor, full Σ"]
long = second_order.reset_index().melt(id_vars=["model", "OOD set", "measured"], value_vars=predictors,
                                       var_name="prediction", value_name="predicted gap (bits/dim)").dropna()
fig, ax = plt.subplots(figsize=(7.5, 5.5))
sns.scatterplot(long, x="measured", y="predicted gap (bits/dim)", hue="prediction", style="model", s=70, ax=ax)
lim = np.nanmax(np.abs(long[["measured", "predicted gap (bits/dim)"]].to_numpy())) * 1.1
ax.plot([-lim, lim], [-lim, lim], color="gray", lw=1, ls="--")
ax.axhline(0, color="gray", lw=0.5)
ax.axvline(0, color="gray", lw=0.5)
ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="measured gap (bits/dim, + = OOD favoured)",
       title="Second-order predictions vs measurement (dashed: perfect)")
ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
plt.show()

# %% [markdown]
# ## The curvature itself: closed form, linearised exact and the network
#
# Three values of the same quantity, the mean second derivative $\partial^2 \log p / \partial
# x_{c,h,w}^2$ over the pixels of squeezed channel $c$ (in nats), under three sets of assumptions:
#
# * the closed form $-\sigma^{-2}(\prod_k \sum_j u_{k,c,j})^2$ (column sums, one level, no coupling
#   derivatives);
# * the linearised exact $-\sigma^{-2}\lVert (\prod_k W_k \operatorname{diag}(a_k))\, e_c \rVert^2$: the
#   exact Hessian diagonal of the very flow the closed form describes. For $z = Mx + b$ into
#   $\mathcal N(m, \sigma^2 I)$ the Hessian is $-M^\top M / \sigma^2$, whose diagonal holds the squared
#   column norms of $M$; the closed form replaces the norm of column $c$ of the product by the product of
#   the column sums of $c$ in each factor, which is the same number only when every $W_k$ is diagonal;
# * the network's Hessian diagonal at $x_0$ (Hutchinson estimate, ± s.e.), couplings and later levels
#   included.
#
# The first two differ only by the column-sum simplification; the last two only by what the linear
# flow leaves out.

# %%
HUTCHINSON = "Hessian diagonal (Hutchinson)"
CURVATURE_FORMS = ["closed form (learned σ)", "linearised exact (learned σ)"]
curvature = pd.concat({f"CV-Glow on {data.spec(ds).title}": so.curvature_table(
    evals[(ds, "additive")].trained.model, x0[ds], sigma_learned=tables[(ds, "additive")].attrs["sigma_learned"],
    n_probes=n_probes, generator=torch.Generator().manual_seed(seed)) for ds in DATASETS}, names=["model"])
curvature_columns = ["closed form (σ=1)", "closed form (learned σ)", "linearised exact (σ=1)",
                     "linearised exact (learned σ)", HUTCHINSON]
plots.show_table(curvature.groupby(["model", "input channel"])[curvature_columns].mean().map(sci, na_action="ignore"),
                 caption="Mean curvature per input channel (nats; the mean over its four squeezed channels)")
curv_rows = []
for model_name, g in curvature.groupby(level="model"):
    for form in CURVATURE_FORMS:
        ratio = g[form] / g[HUTCHINSON]
        curv_rows.append({"model": model_name, "prediction": form,
                          "median ratio to Hutchinson": float(ratio.median()),
                          "median log10 |ratio| (orders of magnitude)": float(np.log10(ratio.abs()).median()),
                          "correlation with Hutchinson": float(np.corrcoef(g[form], g[HUTCHINSON])[0, 1])})
curv_agreement = pd.DataFrame(curv_rows).set_index(["model", "prediction"])
plots.show_table(curv_agreement.assign(**{"median ratio to Hutchinson":
                                          curv_agreement["median ratio to Hutchinson"].map(sci, na_action="ignore")}),
                 digits=2, caption="Per squeezed channel: prediction / network curvature (1 = agreement)")

# %%
flat = curvature.reset_index()
negative = flat[flat[HUTCHINSON] < 0]  # log axes: -curvature; a noisy estimate >= 0 cannot be shown
magnitudes = -negative[[*CURVATURE_FORMS, HUTCHINSON]].to_numpy()
lo, hi = float(magnitudes[magnitudes > 0].min()) / 2, float(magnitudes.max()) * 2
fig, axes = plt.subplots(1, len(CURVATURE_FORMS), figsize=(12, 4.8), sharey=True, squeeze=False)
for ax, form in zip(axes[0], CURVATURE_FORMS):
    ax.errorbar(-negative[form], -negative[HUTCHINSON], yerr=negative["± s.e."], fmt="none", ecolor="lightgray",
                zorder=0)
    sns.scatterplot(x=-negative[form], y=-negative[HUTCHINSON], hue=negative["model"], ax=ax)
    ax.plot([lo, hi], [lo, hi], color="gray", ls="--", lw=1)
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel=f"−{form} (nats)",
           title=f"{form} vs the network")
axes[0][0].set_ylabel("−Hessian diagonal, Hutchinson ± s.e. (nats)")
fig.suptitle(f"Per-squeezed-channel curvature, sign flipped (log-log; dashed: equal)\n{len(flat) - len(negative)} "
             f"of {len(flat)} channels with a Hutchinson estimate ≥ 0 left out")
fig.tight_layout()
plt.show()
curv_models = list(curv_agreement.index.unique("model"))
orders = curv_agreement["median log10 |ratio| (orders of magnitude)"]
display(Markdown(
    "Median log10 of |prediction / network curvature| over the squeezed channels (orders of magnitude; "
    "negative: the prediction is flatter than the network): " +
    "; ".join(f"{m}: closed form {orders[(m, CURVATURE_FORMS[0])]:.2f}, linearised exact "
              f"{orders[(m, CURVATURE_FORMS[1])]:.2f}" for m in curv_models) + "."))

# %% [markdown]
# ## Where the closed form stops holding: depth
#
# Why can the closed form be far from the exact curvature of its own linear flow? Take random rotations
# $W_k$, as Glow initialises its 1×1 convolutions, and no ActNorm. The exact factor
# $\lVert W_K \cdots W_1 e_c \rVert^2$ is exactly 1 at every depth: a product of rotations is a rotation.
# The closed form's factor is $\prod_k s_{k,c}^2$ with $s_{k,c} = \sum_j W_k[j, c]$, the sum of one
# column. A column of a random rotation is a uniform unit vector $w$, so $s = \sqrt{C}\, u^\top w$ with
# the unit vector $u = \mathbf 1/\sqrt C$, and $(u^\top w)^2 \sim \mathrm{Beta}(\tfrac12, \tfrac{C-1}2)$:
#
# $$\mathbb E[s^2] = 1, \qquad \mathbb E[\log s^2] = \log C + \psi(\tfrac12) - \psi(\tfrac C2) < 0$$
#
# ($\psi$: the digamma function). The second is negative by Jensen's inequality, $\mathbb E \log s^2 <
# \log \mathbb E s^2 = 0$, because $s^2$ is not constant. The $K$ steps draw independent matrices, so
# the log of the closed form's factor is a sum of $K$ independent terms with that negative mean: it
# drifts down linearly in $K$, and the factor of a typical channel shrinks *geometrically*,
# $\approx e^{K\, \mathbb E \log s^2}$, while its expectation stays 1 (carried by rare channels whose
# column sums happen to be large). The closed form also follows channel $c$ through every step, where
# the 1×1 convolution has in fact spread it over all channels; the matrix product keeps track of that,
# the product of column sums does not.
#
# The figure measures it: the closed-form and the exact factor (curvature × $-\sigma^2$) of each squeezed
# channel after the first $K$ steps (top row) and their ratio (bottom row), for random Glow-initialised
# weights up to the depth of the paper-scale Glow (band: 10th to 90th percentile over channels and
# draws; line: the geometric mean) and for the trained first level of each CV-Glow (dotted, ActNorm
# scales folded in: they move both factors, and the ratio isolates the column-sum simplification). The
# dashed line is the theoretical slope $e^{K\, \mathbb E \log s^2}$.

# %%
K_PAPER = get_profile("paper").glow.runs["cifar10"].model["steps"]  # steps per level of the paper-scale Glow
N_DRAWS = 5  # independent draws of the K random matrices
CLOSED, EXACT = so.SHRINKAGE_QUANTITIES
depth_parts, depth_attrs = [], {}
for ds in DATASETS:
    trained = so.depth_shrinkage_table(evals[(ds, "additive")].trained.model, seeds=())
    channels = trained.attrs["num_channels"]
    random = so.depth_shrinkage_table(k_max=max(K_PAPER, int(trained["K"].max())), num_channels=channels,
                                      seeds=range(seed, seed + N_DRAWS))
    depth_attrs[ds] = random.attrs
    depth_parts.append(pd.concat([trained, random], ignore_index=True).assign(ID=data.spec(ds).title))
depth = pd.concat(depth_parts, ignore_index=True)
RATIO = "closed form / linearised exact"
ratio = depth.pivot_table(index=["ID", "weights", "seed", "K", "channel"], columns="quantity", values="factor")
depth = pd.concat([depth, (ratio[CLOSED] / ratio[EXACT]).rename("factor").reset_index().assign(quantity=RATIO)],
                  ignore_index=True)
depth["log factor"] = np.log(depth["factor"])
depth_summary = (depth.groupby(["ID", "weights", "quantity", "K"])["log factor"]
                 .describe(percentiles=[0.1, 0.9])[["mean", "10%", "90%"]].reset_index())

ROWS = {"factor (curvature × −σ²)": (CLOSED, EXACT), RATIO: (RATIO,)}
COLORS = {CLOSED: "C0", EXACT: "C1", RATIO: "C2"}
fig, axes = plt.subplots(len(ROWS), len(DATASETS), figsize=(6.4 * len(DATASETS), 4.4 * len(ROWS)), squeeze=False)
for row_axes, (ylabel, quantities) in zip(axes, ROWS.items()):
    for ax, ds in zip(row_axes, DATASETS):
        title = data.spec(ds).title
        panel = depth_summary[(depth_summary["ID"] == title) & depth_summary["quantity"].isin(quantities)]
        for (weights, quantity), g in panel.groupby(["weights", "quantity"]):
            is_trained = weights == so.TRAINED_WEIGHTS
            ax.plot(g["K"], np.exp(g["mean"]), color=COLORS[quantity], ls=":" if is_trained else "-",
                    marker="o" if is_trained else None, markeredgecolor="black", zorder=3 if is_trained else 2,
                    label=f"{quantity}: {weights}")
            ax.fill_between(g["K"], np.exp(g["10%"]), np.exp(g["90%"]), color=COLORS[quantity],
                            alpha=0.2 if is_trained else 0.1)
        ks = np.arange(0, panel["K"].max() + 1)
        ax.plot(ks, np.exp(ks * depth_attrs[ds]["mean_log_column_sum_sq"]), color="black", ls="--",
                label=f"theory: exp(K E log s²), E log s² = {depth_attrs[ds]['mean_log_column_sum_sq']:.3f}")
        ax.axhline(1.0, color="gray", lw=0.5)
        ax.set_yscale("log")
        ax.set(xlabel="steps K", ylabel=ylabel,
               title=f"CV-Glow on {title}: {depth_attrs[ds]['num_channels']} squeezed channels")
        ax.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %%
depth_summary["K·mean"] = depth_summary["K"] * depth_summary["mean"]
depth_summary["K²"] = depth_summary["K"] ** 2
by_curve = ["ID", "weights", "quantity"]
fit = depth_summary.groupby(by_curve)[["K·mean", "K²"]].sum()
last = depth_summary.loc[depth_summary.groupby(by_curve)["K"].idxmax()].set_index(by_curve)
theory = pd.Series({(data.spec(ds).title, so.RANDOM_WEIGHTS, q): 0.0 if q == EXACT
                    else depth_attrs[ds]["mean_log_column_sum_sq"] for ds in DATASETS for q in (CLOSED, EXACT, RATIO)})
PER_STEP = "mean log factor per step (fit)"
shrinkage = pd.DataFrame({PER_STEP: fit["K·mean"] / fit["K²"],
                          "theory (random rotations): E log s², 0 for the exact": theory,
                          "largest K": last["K"],
                          "typical factor at the largest K": np.exp(last["mean"]).map(sci, na_action="ignore")})
plots.show_table(shrinkage, digits=3,
                 caption="Slope of the mean log factor in K (least squares through K = 0) and the typical "
                         "(geometric-mean) factor")
TYPICAL = "typical factor at the largest K"
display(Markdown(" ".join(
    f"**{title}, {depth_attrs[ds]['num_channels']} channels:** E log s² = "
    f"{depth_attrs[ds]['mean_log_column_sum_sq']:.3f} exactly, "
    f"{depth_attrs[ds]['mean_log_column_sum_sq_sampled']:.3f} over the columns of the random matrices; with "
    f"random rotations the closed form falls by {-shrinkage.loc[(title, so.RANDOM_WEIGHTS, RATIO), PER_STEP]:.3f} "
    f"per step (in log) relative to the exact curvature, so at K = {K_PAPER} it is typically "
    f"{shrinkage.loc[(title, so.RANDOM_WEIGHTS, RATIO), TYPICAL]} times the exact one (theory "
    f"{sci(float(np.exp(K_PAPER * depth_attrs[ds]['mean_log_column_sum_sq'])))}), whose factor stays "
    f"{float(np.exp(last.loc[(title, so.RANDOM_WEIGHTS, EXACT), 'mean'])):.6f}. On the trained first level the "
    f"ratio changes by {shrinkage.loc[(title, so.TRAINED_WEIGHTS, RATIO), PER_STEP]:+.3f} per step (in log) and is "
    f"typically {shrinkage.loc[(title, so.TRAINED_WEIGHTS, RATIO), TYPICAL]} after its "
    f"K = {int(last.loc[(title, so.TRAINED_WEIGHTS, RATIO), 'K'])} steps."
    for ds, title in ((ds, data.spec(ds).title) for ds in DATASETS))))

# %% [markdown]
# ## Why uniform noise costs absurd bits/dim
#
# A uniform density over the 256 pixel values costs exactly 8 bits/dim, yet a Glow can charge uniform
# noise far more than that, up to astronomically many bits/dim (the first table below gives this run's
# values). The bits/dim of an image is a sum of terms (`ood_core.flow_diagnostics.log_prob_breakdown`), one set
# per level $l$ with latent $z_l$ of $d_l$ dimensions and prior $\mathcal N(\mu_l, \sigma_l^2)$:
#
# $$\text{bpd}(x) = n_\text{bits} - \frac{1}{D \ln 2}\Big[\sum_l \sum_{i \le d_l}\Big(-\tfrac12 \log 2\pi
#   - \log \sigma_{l,i} - \tfrac12 \big(\tfrac{z_{l,i} - \mu_{l,i}}{\sigma_{l,i}}\big)^2\Big)
#   + \log\Big|\det \tfrac{\partial z}{\partial x}\Big|\Big].$$
#
# At each split the prior is *conditional*: $(\mu_l, \log \sigma_l)$ is one 3×3 convolution of the half
# of the channels that continues through the flow ("the conditioner"), so $\log \sigma_l$ is an affine
# function of it, bounded by nothing. A quadratic term worth $B$ bits/dim means an average squared
# standardised latent of $2 B \ln 2 \cdot D / d_l$ at that level: either $z - \mu$ exploded, or $\sigma$
# collapsed. For constant-volume Glow the log-dets do not depend on the image at all, so whatever noise
# costs beyond the ID images is in the priors; in the affine Glow the coupling log-dets depend on the
# image too, and the tables show how much they add.
#
# Why a briefly trained model can do this — our reading, which the tables below put to the test:
# training fits the prior's convolution only along the directions in which the conditioner varies on
# training images. Natural images exercise few of them (smooth, correlated pixels); along the others the
# weights keep whatever the initialisation and the noisy optimiser steps of a short run left, and
# nothing has pushed $\log \sigma$ back to sensible values there. Uniform noise has energy in every
# direction, so its conditioner reaches those weights and the affine map can send $\log \sigma$ far below
# anything seen in training, while $z - \mu$ stays ordinary: $((z-\mu)/\sigma)^2$ explodes on a few
# dimensions. The $-\log\sigma$ term then pays a little of it back (it *lowers* the bits/dim), but only
# logarithmically. If this is what happens, the level whose prior costs the most shows a smallest
# $\log\sigma$ on noise far below the smallest on the ID test set, an rms of $z-\mu$ of the same order on
# both, and a top share near 1; the text under the tables splits the growth of the mean
# $((z-\mu)/\sigma)^2$ into the part a larger $z-\mu$ explains and the part the prior scale adds. At the
# top level the prior is one constant per channel, so a large quadratic term there means instead that
# the latent itself grew. The FashionMNIST models, trained for as many epochs, are the comparison.
#
# The tables measure it for every model, with the ID test set as the reference: first the bits/dim of
# noise (means *and* medians: a few images can dominate a mean), then each level's terms (contributions
# to the bits/dim, positive = costs bits; the constant $-\tfrac12\log 2\pi$ and $n_\text{bits}$ terms,
# equal for every image, are left out), then how each level's latent sits in its prior
# (`ood_core.flow_diagnostics.prior_fit_table`: rms of $z$, $\mu$, $z-\mu$ and the conditioner, the range of
# $\log\sigma$, the mean squared standardised latent and the share of its sum carried by its largest
# entries).

# %%
NOISE = "uniform"  # the synthetic uniform-noise set of every Glow chapter
TOP_SHARE = 0.01  # the largest images (bits/dim) and latent entries ((z-μ)/σ)² whose share of the sum is reported
TOP_COLUMN = f"share of the sum in the top {TOP_SHARE:.0%} of images"
noise_rows, breakdowns, fits, scored, set_names = [], {}, {}, {}, {}
for (ds, coupling), ev in evals.items():
    label = f"{COUPLINGS[coupling]} on {data.spec(ds).title}"
    for key in (names.ID_TEST, NOISE):
        bpd = np.asarray(ev.scores[key]["bpd"], dtype=np.float64)
        top = max(1, int(round(TOP_SHARE * len(bpd))))
        scored[(label, key)], set_names[(label, key)] = bpd.mean(), ev.sets[key].name
        noise_rows.append({"model": label, "set": ev.sets[key].name, "images": len(bpd),
                           "mean bpd": bpd.mean(), "median bpd": float(np.median(bpd)), "max bpd": bpd.max(),
                           TOP_COLUMN: np.sort(bpd)[-top:].sum() / bpd.sum()})
        breakdowns[(label, key)] = fd.log_prob_breakdown(ev.trained.model, ev.sets[key].x, seed=seed,
                                                         batch_size=ev.run.eval_batch)
        fits[(label, key)] = fd.prior_fit_table(ev.trained.model, ev.sets[key].x, seed=seed,
                                                batch_size=ev.run.eval_batch, top_share=TOP_SHARE)
noise_bpd = pd.DataFrame(noise_rows).set_index(["model", "set"])
bpd_columns = ["mean bpd", "median bpd", "max bpd"]
plots.show_table(noise_bpd.assign(**{c: noise_bpd[c].map(sci, na_action="ignore") for c in bpd_columns}), digits=3,
                 caption="Bits/dim of uniform noise and of the ID test set (aEb = a × 10^b)")

# %%
LOG_DETS = list(LAYER_TERMS)
term_frames = {}
for label in dict.fromkeys(lbl for lbl, _ in breakdowns):
    cols = {}
    for key, tag in ((NOISE, "noise"), (names.ID_TEST, "ID test")):
        bd = breakdowns[(label, key)].drop(index=-1, level="level")  # level -1: the constant input scaling
        means, medians = bd["bits/dim"].unstack("term"), bd["median"].unstack("term")
        cols[f"{tag}: −log σ term"] = means["prior_log_std"]
        cols[f"{tag}: quadratic term"] = means["prior_quadratic"]
        if key == NOISE:
            cols[f"{tag}: quadratic term (median)"] = medians["prior_quadratic"]
        cols[f"{tag}: log-dets"] = means[LOG_DETS].sum(axis=1)
    term_frames[label] = pd.DataFrame(cols)
terms = pd.concat(term_frames, names=["model"])
plots.show_table(terms.map(sci, na_action="ignore"),
                 caption="Per level: contributions to the mean bits/dim (+ = costs bits; aEb = a × 10^b)")
prior_fit = pd.concat({(label, set_names[(label, key)]): fit for (label, key), fit in fits.items()},
                      names=["model", "set"])
plots.show_table(prior_fit.map(sci, na_action="ignore"),
                 caption="How each level's latent sits in its prior (pooled over images and latent dimensions)")

# %%
noise_text = []
for label in term_frames:
    bd_noise, bd_id = breakdowns[(label, NOISE)], breakdowns[(label, names.ID_TEST)]
    diff = bd_noise["bits/dim"] - bd_id["bits/dim"]  # per (level, term): what noise costs beyond the ID test set
    excess = scored[(label, NOISE)] - scored[(label, names.ID_TEST)]
    prior_diff = diff[diff.index.get_level_values("term").isin(PRIOR_TERMS)]
    level = int(prior_diff.groupby(level="level").sum().idxmax())  # the level whose prior costs noise the most
    fit_noise, fit_id = fits[(label, NOISE)].loc[level], fits[(label, names.ID_TEST)].loc[level]
    top_fit_noise, top_fit_id = fits[(label, NOISE)].iloc[-1], fits[(label, names.ID_TEST)].iloc[-1]
    # mean ((z-μ)/σ)² on noise over the ID test set's = (rms (z-μ) ratio)² × what the prior scale adds
    zmu_factor = (fit_noise["rms (z-μ)"] / fit_id["rms (z-μ)"]) ** 2
    sigma_factor = fit_noise["mean ((z-μ)/σ)²"] / fit_id["mean ((z-μ)/σ)²"] / zmu_factor
    noise_row = noise_bpd.loc[(label, set_names[(label, NOISE)])]
    largest_level, largest_term = diff.idxmax()
    noise_text.append(
        f"**{label}.** Uniform noise: mean {sci(scored[(label, NOISE)])} bits/dim, median "
        f"{sci(noise_row['median bpd'])} (ID test: mean {scored[(label, names.ID_TEST)]:.2f}); the top "
        f"{TOP_SHARE:.0%} of the noise images carry {noise_row[TOP_COLUMN]:.0%} of its sum. Of its excess of "
        f"{sci(excess)} bits/dim over the ID test set the prior terms carry {sci(float(prior_diff.sum()))}, the "
        f"log-dets {sci(excess - float(prior_diff.sum()))}; the largest single term is "
        f"*{fd.TERM_LABELS[largest_term]}* of level {largest_level} ({sci(float(diff.max()))} bits/dim above the ID "
        f"test set). The prior of level {level} costs the most: its log σ reaches down to "
        f"{fit_noise['log σ min']:.2f} on noise against {fit_id['log σ min']:.2f} on the ID test set (medians "
        f"{fit_noise['log σ median']:.2f} and {fit_id['log σ median']:.2f}), and its mean ((z − μ)/σ)² is "
        f"{sci(fit_noise['mean ((z-μ)/σ)²'])} against {sci(fit_id['mean ((z-μ)/σ)²'])}: a factor "
        f"{sci(zmu_factor)} from a larger z − μ (rms {sci(fit_noise['rms (z-μ)'])} against "
        f"{sci(fit_id['rms (z-μ)'])}) times {sci(sigma_factor)} from the prior scale (above 1: σ is smaller "
        f"where z − μ lies), with "
        f"{fit_noise['top share']:.0%} of its sum in the top {TOP_SHARE:.0%} of entries" +
        (f"; the conditioner's rms is {sci(fit_noise['rms conditioner'])} on noise against "
         f"{sci(fit_id['rms conditioner'])}" if np.isfinite(fit_noise["rms conditioner"]) else "") +
        f". The top-level latent: rms z {sci(top_fit_noise['rms z'])} on noise, {sci(top_fit_id['rms z'])} on the "
        f"ID test set.")
consistency = max(abs(breakdowns[k].attrs["bpd"] - scored[k]) / abs(scored[k]) for k in breakdowns)
display(Markdown("\n\n".join(noise_text) + "\n\n" + (
    f"The models were trained for " +
    ", ".join(f"{P.glow.runs[ds].train.epochs} epoch(s) on {data.spec(ds).title}" for ds in DATASETS) +
    f" ({P.name} profile). The terms add up to the scored bits/dim of each set (largest relative difference "
    f"{consistency:.1e}).")))

# %% [markdown]
# ## Where the approximation holds
#
# Sign agreement (does the prediction say "OOD favoured" exactly when the measurement does?) and the
# median ratio predicted / measured, per predictor, over all pairs above.

# %%
agreement_rows = []
for pred in predictors:
    sub = second_order[["measured", pred]].dropna()
    agreement_rows.append({"prediction": pred, "pairs": len(sub),
                           "sign agrees": int((np.sign(sub[pred]) == np.sign(sub["measured"])).sum()),
                           "median ratio predicted / measured": float(np.median(sub[pred] / sub["measured"]))
                           if len(sub) else np.nan})
agreement = pd.DataFrame(agreement_rows).set_index("prediction")
plots.show_table(agreement.assign(**{"median ratio predicted / measured":
                                     agreement["median ratio predicted / measured"].map(sci, na_action="ignore")}),
                 caption="Sign agreement and median ratio per predictor")

# %%
cv_rows = pd.concat({ds: tables[(ds, "additive")] for ds in DATASETS}, names=["ID"])
lower_var = pd.concat({ds: variance_tables[ds].groupby(level="set")["variance ratio to ID"].mean()
                       for ds in DATASETS}, names=["ID", "OOD set"]).rename("variance ratio")
cv_rows = cv_rows.join(lower_var)
counts = {pred: (int(agreement.loc[pred, "sign agrees"]), int(agreement.loc[pred, "pairs"])) for pred in predictors}
closed_ok, n_cv = counts["closed form (learned σ)"]
taylor_ok, n_all = counts["Taylor, full Σ"]
row = claims.record("second_order_predicts_gap", {"closed_ok": closed_ok, "n_cv": n_cv, "taylor_ok": taylor_ok,
                                                  "n_all": n_all, "eq5_ok": counts["eq. (5), diag. Σ: 1st + 2nd"][0]},
                    P.name, seed)
status = row["verdict"]
lower = cv_rows[cv_rows["variance ratio"] < 1]
lower_favoured = int((lower["measured"] > 0).sum())
pair_text = "; ".join(f"{ood} vs {data.spec(ds).title}: measured {r['measured']:+.3f}, closed form "
                      f"{r['closed form (learned σ)']:+.3f}, "
                      f"linearised exact {r['linearised exact (learned σ)']:+.3f}, "
                      f"eq. (5) diag. Σ {r['eq. (5), diag. Σ: 1st + 2nd']:+.3f}, "
                      f"Taylor full Σ {r['Taylor, full Σ']:+.3f} (variance ratio {r['variance ratio']:.2f})"
                      for (ds, ood), r in cv_rows.iterrows())
display(Markdown(
    f"**Verdict ({P.name} profile): {status}.** Signs of the gap predicted correctly: the paper's closed form "
    f"(CV-Glow, learned σ) {closed_ok} of {n_cv} pairs; the linearised exact curvature of the same linear flow "
    f"{counts['linearised exact (learned σ)'][0]} of {counts['linearised exact (learned σ)'][1]}; eq. (5) with "
    f"per-pixel variances on the actual networks {counts['eq. (5), diag. Σ: 1st + 2nd'][0]} of {n_all}; the "
    f"complete second-order expansion (full covariance) {taylor_ok} of {n_all} (median ratio predicted / measured "
    f"{agreement.loc['Taylor, full Σ', 'median ratio predicted / measured']:.2f}). "
    f"The CV-Glows favour {lower_favoured} of the {len(lower)} OOD sets whose mean per-pixel variance is below the "
    f"ID test set's (the closed form predicts all of them). Per CV-Glow pair (bits/dim, + = OOD favoured): "
    f"{pair_text}. Correlation with the network's per-channel curvature: " +
    ", ".join(f"{m}: closed form {curv_agreement.loc[(m, CURVATURE_FORMS[0]), 'correlation with Hutchinson']:.2f}, "
              f"linearised exact {curv_agreement.loc[(m, CURVATURE_FORMS[1]), 'correlation with Hutchinson']:.2f}"
              for m in curv_models) +
    ". SVHN, the paper's showcase pair, is absent from the mirror, so its Fig. 5 is not reproduced directly."))

# %% [markdown]
# ## Summary
#
# * The analysis needs only two numbers per pair: how the means and the per-pixel variances of the OOD
#   set differ from the ID set's. The variance tables above give them for every pair in the mirror.
# * The closed form is the paper's approximation, evaluated literally on the first level of our
#   multi-scale Glow; the linearised exact column is the exact answer for the same linear flow, and the
#   Hutchinson and Taylor columns evaluate the expansion on the whole network. The differences between
#   neighbouring columns measure what each simplification costs.
# * The closed form holds exactly only for diagonal 1×1 convolutions. For any other its product of column
#   sums drifts from the exact curvature geometrically in the number of steps, with the slope
#   $\log C + \psi(\tfrac12) - \psi(\tfrac C2)$ per step for random rotations (Jensen's inequality: the
#   column sums' squares have mean 1 but a negative mean log).
# * When the means differ a lot (MNIST and FashionMNIST are mostly black), the first-order and
#   mean-shift terms can be as large as the variance term, so "equal means" is not a safe assumption.
# * Per-pixel variances are not the whole covariance: the network's Hessian couples neighbouring pixels,
#   and the full-covariance column shows how much of the gap the off-diagonal terms carry. Where it
#   matches the measurement but the diagonal columns do not, the second-order *expansion* holds and the
#   *diagonal simplification* is what fails.
# * The bits/dim of uniform noise are made by the learned priors, not by the log-dets: a conditional
#   prior's $\log\sigma$ is an unbounded affine function of the conditioner, and on inputs unlike the
#   training images it can collapse while $z - \mu$ stays ordinary. Medians say more than means there.
# * Tested in `tests/test_analysis.py`: Hutchinson against exact Hessians (Gaussian and tiny Glow), the
#   closed form equal to the exact Hessian where the paper's assumptions hold, the linearised exact
#   against autograd on the linear flow, the expected log column sum against sampling, and the
#   column-sum products against a hand computation.

# %%
by_model = {m: orders.xs(m, level="model") for m in curv_models}
display(Markdown("\n".join([
    f"* Measured here ({P.name} profile): signs right — closed form {closed_ok}/{n_cv}, linearised exact "
    f"{counts['linearised exact (learned σ)'][0]}/{counts['linearised exact (learned σ)'][1]}, eq. (5) diag. Σ "
    f"{counts['eq. (5), diag. Σ: 1st + 2nd'][0]}/{n_all}, full-covariance Taylor {taylor_ok}/{n_all}.",
    "* Per-channel curvature, median log10 |prediction / network| (orders of magnitude): " +
    "; ".join(f"{m}: closed form {v[CURVATURE_FORMS[0]]:.2f}, linearised exact {v[CURVATURE_FORMS[1]]:.2f}"
              for m, v in by_model.items()) + ".",
    "* Depth: the closed form's mean log factor per step for random rotations — " +
    "; ".join(f"{depth_attrs[ds]['num_channels']} channels "
              f"{shrinkage.loc[(data.spec(ds).title, so.RANDOM_WEIGHTS, CLOSED), PER_STEP]:.3f} "
              f"(theory {depth_attrs[ds]['mean_log_column_sum_sq']:.3f})" for ds in DATASETS) + ".",
    "* Uniform noise, mean / median bits/dim: " +
    "; ".join(f"{label} {sci(scored[(label, NOISE)])} / "
              f"{sci(noise_bpd.loc[(label, set_names[(label, NOISE)]), 'median bpd'])}"
              for label in term_frames) + "."])))

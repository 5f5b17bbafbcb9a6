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
# # Bring your own model or data
#
# Everything in this book runs on any images and any classifier that exposes `features`/`head`.
# This chapter scores **a folder of image files** with every detector of the benchmark, first with
# the book's CIFAR-10 models (from the cache), then with **a torchvision classifier** — the same
# calls a reader uses for their own data and weights. `tests/test_byo.py` runs the same path on a
# tiny model and synthetic data.
#
# ```python
# from ood_core import data, classifier_study as cs, likelihood_study as ls
# mine = data.images_from_folder("path/to/images", shape=(3, 32, 32))  # Resize + CenterCrop, uint8
# ev = cs.evaluate_model(my_model, fit_set, id_test, {"mine": mine})   # any features/head classifier
# cs.summary(ev.benchmark(["energy", "ash_s@95", "knn:k=50"]))          # any detector specs
# ls.score_sets(trained_glow, {"mine": mine})                           # bits/dim under a Glow
# ```

# %% tags=["parameters"]
profile: str = "cpu"  # scale profile: "smoke" (seconds), "cpu" (default), "paper" (GPU scale)
seed: int = 0  # seed for subsets
device: str = "cpu"  # torch device
n_images: int = 300  # images written to and read back from the example folder
folder: str = ""  # a folder of your own images; empty = write an example folder (partial Textures) first

# %%
import tempfile

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from ood_core import classifier_study as cs, data, likelihood_study as ls, names, plots
from ood_core.experiment import seeded_init, train_or_load
from ood_core.classifiers import TorchvisionClassifier
from ood_core.profiles import get_profile

P = get_profile(profile)
plots.setup()
source = folder or str(data.save_folder(data.load("textures", "test").subset(n_images, seed),
                                        tempfile.mkdtemp(prefix="ood-byo-")))
mine = data.images_from_folder(source, shape=(3, 32, 32), name="my folder")
display(Markdown(f"Read {len(mine)} images from `{data.root_label(source) if folder else 'a temporary folder'}` "
                 f"({'your folder' if folder else 'example: partial Textures written as PNG files'})."))
fig = plots.grids({"my folder (first 32)": mine.x[:32]}, ncols=1)
plt.show()

# %% [markdown]
# ## With the book's CIFAR-10 classifier and Glow

# %%
run = P.classifier.runs["cifar10"]
clf = train_or_load(run, device=device)  # from the cache
fit_set = data.load("cifar10", "train").subset(P.classifier.n_fit, seed)
id_set = data.load("cifar10", "test").subset(P.classifier.n_eval, seed)
ev = cs.evaluate_model(clf.model, fit_set, id_set, {"mine": mine, "MNIST": data.ood_sets((3, 32, 32), ["mnist"],
                                                                                        n=P.classifier.n_eval,
                                                                                        seed=seed)[0]["mnist"]})
plots.show_table(cs.summary(ev.benchmark(P.classifier.methods)).drop(columns=[names.PAPER_FPR95, names.PAPER_AUROC]),
                 digits=2, caption=f"{run.label}: your folder and MNIST as OOD")

# %%
glow = train_or_load(P.glow.runs["cifar10"], device=device)  # from the cache
bpd = ls.score_sets(glow, {names.ID_TEST: id_set, "mine": mine})
display(Markdown(f"Glow bits/dim: CIFAR-10 test {bpd[names.ID_TEST]['bpd'].mean():.3f}, "
                 f"my folder {bpd['mine']['bpd'].mean():.3f}."))
fig, ax = plt.subplots(figsize=(7, 3.5))
plots.score_histograms({id_set.name: bpd[names.ID_TEST]["bpd"], "my folder": bpd["mine"]["bpd"]}, "bits/dim", ax=ax,
                       title=glow.run.label)
plt.show()

# %% [markdown]
# ## With a torchvision classifier
#
# `TorchvisionClassifier` splits any torchvision ResNet or MobileNetV2 into `features`/`head`.
# Pass `weights="path/to/state_dict.pt"` for your trained weights (loaded with
# `weights_only=True`); here the weights are random (drawn from `seed`), so the numbers only show the mechanics.

# %%
tv = seeded_init(lambda: TorchvisionClassifier("resnet18", num_classes=10), seed)  # the same random weights every run
small = {k: v.subset(min(200, len(v)), seed) for k, v in {"fit": fit_set, "id": id_set, "mine": mine}.items()}
ev_tv = cs.evaluate_model(tv, small["fit"], small["id"], {"mine": small["mine"]})
plots.show_table(cs.summary(ev_tv.benchmark(P.classifier.methods)).drop(columns=[names.PAPER_FPR95, names.PAPER_AUROC]),
                 digits=2, caption="torchvision ResNet-18 (random weights)")

# %% [markdown]
# ## Summary
#
# * `data.images_from_folder` + `cs.evaluate_model` + `cs.summary(ev.benchmark(...))` give a new
#   dataset or a new classifier the book's full table, with the same metric code.
# * Set the notebook parameter `folder` (papermill `-p folder /path`) to run it on your images.

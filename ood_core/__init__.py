"""ood_core: the library behind the ood-companion book.

Layout: a flat package in layers
--------------------------------
Readers import the modules by short names in their own notebooks (``from ood_core import ash,
scores, metrics, flows``), the way pytorch-ood and the papers' code are used, so the package stays
flat; the layers are a rule, enforced by ``tests/test_layout.py``: a module imports only modules of
its own or a lower layer, and the import graph has no cycle.

0. **foundations** -- ``units`` (nats, bits/dim, ``ln 2``), ``names`` (set keys, table columns),
   ``artifacts`` (the cache, key policy, artifact kinds and their versions), ``metrics`` (FPR95,
   AUROC, AUPR, bootstrap; ID = positive class), ``model_config``.
1. **data** -- ``data``: datasets by name from the verified mirror, views, synthetic sets.
2. **models** -- ``flows`` (Glow, CV-Glow), ``likelihood`` (dequantisation, bits/dim, the evaluation
   loop), ``discretized``, ``pixelcnn``, ``vae``, ``feature_flow``, ``classifiers``, ``train`` (the one
   resumable trainer).
3. **scores and analysis** -- ``ash`` (activation shaping), ``scores`` (classifier OOD scores and
   fitted detectors), ``generative_scores`` (likelihood ratio, typicality, input complexity, WAIC,
   DoSE), ``second_order`` (Nalisnick et al.'s second-order analysis), ``graying`` (their graying
   experiment), ``flow_diagnostics`` (bits/dim by level and layer, prior fit, what couplings and
   latents learn).
4. **experiments** -- ``families`` (model-family registry), ``experiment`` (runs, ``train_or_load``,
   held-out sets, committed results), ``likelihood_study`` and ``classifier_study`` (evaluations and
   their tables), ``second_order_study`` (the second-order chapter's tables), ``detectors`` (the
   detector contract, registry and suite), ``benchmarks`` (which models a list of detectors needs,
   on one set of images), ``claims`` (the claims registry and ledger), ``profiles`` (every scale
   knob), ``remedies_study`` (the remedies for the likelihood's failure on both directions of a
   pair), ``ash_benchmark`` (the ASH benchmark chapter's tables and evidence in one call),
   ``ash_ablations`` (the ASH paper's ablations in one call).
5. **interfaces** -- ``plots``, ``cli`` (``python -m ood_core``), ``bench``.

Conventions used everywhere in the package:

* Images enter as ``uint8`` tensors shaped ``[B, C, H, W]``; models that need floats take
  ``[0, 1]`` floats and own any normalisation as buffers, so ID and OOD data are always treated
  identically.
* Flows are written in the *density* direction: ``forward(x) -> (z, logdet)`` maps data to latent,
  ``inverse(z) -> (x, logdet)`` maps back; ``logdet`` is always shaped ``[B]``.
* OOD scores: higher means *more in-distribution*.
"""

__version__ = "0.2.0"

#: The layers of the package (see the docstring); ``tests/test_layout.py`` enforces them.
LAYERS: dict[str, int] = {
    **dict.fromkeys(("units", "names", "artifacts", "metrics", "model_config"), 0),
    "data": 1,
    **dict.fromkeys(("flows", "likelihood", "discretized", "pixelcnn", "vae", "feature_flow", "classifiers",
                     "pretrained", "train"), 2),
    **dict.fromkeys(("ash", "scores", "generative_scores", "second_order", "graying", "flow_diagnostics"), 3),
    **dict.fromkeys(("families", "experiment", "likelihood_study", "classifier_study", "detectors", "claims",
                     "benchmarks", "profiles", "second_order_study", "remedies_study", "ash_ablations",
                     "ash_benchmark"), 4),
    **dict.fromkeys(("plots", "cli", "bench", "bench_reference", "__main__"), 5),
}

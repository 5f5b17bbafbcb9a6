"""The likelihood experiments of Nalisnick et al. (2019), cached: score, tables, committed results, ensembles.

One evaluation object for every density model (Glow, CV-Glow, VAE, PixelCNN; see
:mod:`ood_core.families`): a run is trained or loaded by :func:`ood_core.experiment.train_or_load`,
scored on its evaluation sets (cached per run, set content and seed), and tabulated by
:func:`likelihood_table` -- mean bits/dim, the family's decomposition columns and the AUROC of
log p. What is scored (nats of the *discrete* image; bits/dim as in :mod:`ood_core.units`):

* **Glow / CV-Glow** -- ``log p(z) + log|det|`` of one dequantised draw minus ``D n_bits ln 2``,
  split into the two terms (:func:`ood_core.likelihood.score_flow`);
* **PixelCNN** -- the exact autoregressive ``log P(x)``;
* **VAE** -- the importance-weighted bound ``IWAE_k`` as ``log_px``, and the ELBO's
  reconstruction and KL terms.

Preprocessing convention (it changes bits/dim, so it is stated): models see the dataset in its
native shape -- FashionMNIST/MNIST as 28x28x1, CIFAR-10 as 32x32x3. OOD sets are brought to the ID
shape by :func:`ood_core.data.to_shape` (MNIST for a CIFAR model: zero-padded to 32x32 and repeated
to 3 channels; never rescaled). Nalisnick et al.'s FashionMNIST numbers are on 28x28x1 as well.

Ensembles (:func:`ensemble_table`): ``M`` models that differ only in the training seed, combined by
``log (1/M) sum_m p_m(x)`` (the ensemble's likelihood) and by WAIC, ``mean_m log p_m(x) - var_m log
p_m(x)`` (Choi et al. 2018).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ood_core import data, metrics, names, units
from ood_core import generative_scores as gsc
from ood_core.artifacts import ArtifactStore, content_digest
from ood_core.families import training_images
from ood_core.experiment import LikelihoodRun, Published, Trained, evaluation_sets, export, heldout_set
from ood_core.experiment import published_folder
from ood_core.experiment import train_or_load

#: Score terms kept in committed results (per example, float32): enough to redraw every table.
_EXPORTED_TERMS = ("bpd", "bpd_pz", "bpd_logdet")


def score_sets(trained: Trained, sets: Mapping[str, data.ImageSet], store: ArtifactStore | None = None,
               seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """The family's per-example score terms for each set, cached per (run, set content, seed)."""
    store = store or ArtifactStore()
    run = trained.run
    spec = run.spec
    out = {}
    for key, s in sets.items():
        cfg = {"run": run, "set": s.name, "content": content_digest(s.x), "seed": seed}
        out[key] = store.cached_arrays(spec.scores_kind, cfg, lambda s=s: spec.score(trained.model, s.x, run, seed))
    return out


def likelihood_table(run: LikelihoodRun, set_names: Mapping[str, str],
                     scores: Mapping[str, Mapping[str, np.ndarray]]) -> pd.DataFrame:
    """Mean (std) bits/dim per set, the family's decomposition, the paper's value, and AUROC of log p.

    AUROC (%) treats the ID test set as positive and ``-bpd`` (log-likelihood) as the score:
    below 50 % means the OOD set gets *higher* likelihood than the ID test set (the inversion).
    A family with published reference values (Glow: Nalisnick et al.'s table) gets a column of them.
    """
    rows = []
    id_scores = -scores[names.ID_TEST]["bpd"]
    for key, name in set_names.items():
        sc = scores[key]
        row = {names.SET: name, names.N: len(sc["bpd"]), names.MEAN_BPD: sc["bpd"].mean(),
               names.STD_BPD: sc["bpd"].std()}
        row.update({column: sc[term].mean() for column, term in run.spec.table_terms if term in sc})
        if run.spec.reference:
            column, values = run.spec.reference
            row[column] = values.get((run.dataset, name), np.nan)
        if key not in names.ID_KEYS:
            row[names.AUROC_LOGP] = 100 * metrics.auroc(id_scores, -sc["bpd"])
        rows.append(row)
    return pd.DataFrame(rows).set_index(names.SET)


@dataclass
class LikelihoodEvaluation:
    """A trained run scored on its evaluation sets: what every likelihood chapter starts from.

    Its committed counterpart (no model, no images) is :class:`ood_core.experiment.Published`, with
    the same ``names``, ``scores``, ``table``, ``column`` and ``row``.
    """

    trained: Trained
    sets: dict[str, data.ImageSet]
    missing: dict[str, str]
    scores: dict[str, dict[str, np.ndarray]]

    @property
    def run(self) -> LikelihoodRun:
        return self.trained.run

    @property
    def names(self) -> dict[str, str]:
        return {k: s.name for k, s in self.sets.items()}

    @property
    def table(self) -> pd.DataFrame:
        return likelihood_table(self.run, self.names, self.scores)

    def column(self, term: str = "bpd") -> dict[str, np.ndarray]:
        """``{set display name: per-example values of term}`` for histograms."""
        return {self.names[k]: v[term] for k, v in self.scores.items()}

    def row(self, key: str) -> pd.Series:
        """The table row of the set ``key`` (``names.ID_TEST``, ``"mnist"``, ...)."""
        return self.table.loc[self.names[key]]


def evaluate(run: LikelihoodRun, n_eval: int | None, ood, seed: int = 0, store: ArtifactStore | None = None,
             device=None) -> LikelihoodEvaluation:
    """Train (or load) ``run`` and score its ID train/test subsets and OOD sets (all cached)."""
    trained = train_or_load(run, store=store, device=device)
    sets, missing = evaluation_sets(run.dataset, n_eval, list(ood), seed=seed, train_set=training_images(run))
    heldout = heldout_set(run, n_eval, seed)  # None: the run saw the whole training split, the evaluation takes all tests
    sets = {names.ID_TRAIN: sets.pop(names.ID_TRAIN), **({names.ID_HOLDOUT: heldout} if heldout else {}), **sets}
    return LikelihoodEvaluation(trained, sets, missing, score_sets(trained, sets, store=store, seed=seed))


def export_results(ev: LikelihoodEvaluation, root=None) -> str:
    """Write the small results of a run (per-example bits/dim terms, curves, config, hardware) to ``results/``."""
    arrays = {f"{key}|{term}": sc[term].astype(np.float32) for key, sc in ev.scores.items()
              for term in _EXPORTED_TERMS if term in sc}
    summary = {"history": ev.trained.history.to_dict(orient="list"), "names": ev.names}
    return export("glow_results", ev.run, arrays=arrays, meta=ev.trained.meta,
                  files={"summary.json": json.dumps(summary)}, root=root)


def published(run: LikelihoodRun) -> Published | None:
    """Paper-profile results committed under ``results/`` for ``run``, or None when absent."""
    folder = published_folder("glow_results", run)
    if folder is None:
        return None
    with np.load(folder / "arrays.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    info = json.loads((folder / "summary.json").read_text())
    scores = {k: {term: arrays[f"{k}|{term}"].astype(np.float64) for term in _EXPORTED_TERMS if f"{k}|{term}" in arrays}
              for k in info["names"]}
    return Published(run, pd.DataFrame(info["history"]), json.loads((folder / "meta.json").read_text()),
                     tables={"likelihood": likelihood_table(run, info["names"], scores)}, scores=scores,
                     set_names=info["names"])


# ------------------------------------------------------------------------------------- ensembles

def _shared_names(members: list, set_names: dict[str, str] | None) -> dict[str, str]:
    """The sets an ensemble combines: every set but each member's own held-out (and training) images.

    The ID held-out set is drawn from what *that* member did not train on, and the ID train subset
    from what it trained on, so members trained on different subsets (other seeds, ``n_train`` below
    the split) hold out and train on different images: those sets cannot be combined across members.
    The ID train set stays when every member scored the same training images (whole-split training).
    """
    chosen = dict(set_names or members[0].names)
    chosen.pop(names.ID_HOLDOUT, None)
    train = [m.sets.get(names.ID_TRAIN) for m in members]
    if names.ID_TRAIN in chosen and (any(t is None for t in train) or
                                     len({content_digest(t.x, 64) for t in train}) > 1):
        chosen.pop(names.ID_TRAIN)
    return chosen


def _check_same_images(members: list, keys) -> None:
    first = members[0]
    for m in members[1:]:
        for k in keys:
            if content_digest(m.sets[k].x, 64) != content_digest(first.sets[k].x, 64):
                raise ValueError(f"members scored different images for {k!r}: use the same n_eval and seed")


def ensemble_table(members: list, set_names: dict[str, str] | None = None) -> pd.DataFrame:
    """Per set: the members' AUROCs (mean, min, max), the ensemble's log-mean-exp likelihood and WAIC.

    ``members`` are evaluations (Glow, VAE or PixelCNN) of the same sets that differ in the
    training seed. AUROCs (%) treat the ID test set as positive; higher scores = more ID:
    log p for each member, ``log (1/M) sum_m p_m`` for the ensemble, and WAIC
    ``mean_m log p_m - var_m log p_m`` (Choi et al. 2018). Bits/dim columns are means over
    the set. Raises if the members were scored on different images.
    """
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    set_names = _shared_names(members, set_names)
    _check_same_images(members, set_names)
    first = members[0]
    d = int(np.prod(first.sets[names.ID_TEST].x.shape[1:]))
    stack = {k: np.stack([m.scores[k]["log_px"] for m in members]) for k in set_names}  # [M, N]
    combined = {k: {"ensemble log p": gsc.ensemble_log_likelihood(v), "WAIC": gsc.waic(v)} for k, v in stack.items()}
    rows = []
    for key, name in set_names.items():
        row = {names.SET: name, "members' mean bpd": float(units.bits_per_dim(stack[key].mean(), d)),
               "ensemble bpd": float(units.bits_per_dim(combined[key]["ensemble log p"].mean(), d))}
        if key not in names.ID_KEYS:
            member_auc = [100 * metrics.auroc(stack[names.ID_TEST][i], stack[key][i]) for i in range(len(members))]
            row.update({"member AUROC mean": float(np.mean(member_auc)), "member AUROC min": float(np.min(member_auc)),
                        "member AUROC max": float(np.max(member_auc)),
                        "ensemble AUROC": 100 * metrics.auroc(combined[names.ID_TEST]["ensemble log p"],
                                                              combined[key]["ensemble log p"]),
                        "WAIC AUROC": 100 * metrics.auroc(combined[names.ID_TEST]["WAIC"], combined[key]["WAIC"])})
        rows.append(row)
    return pd.DataFrame(rows).set_index(names.SET)


def ensemble_by_size(members: list, keys: list[str], set_names: dict[str, str] | None = None) -> pd.DataFrame:
    """AUROC (%) of the ensemble of the first ``m`` members, ``m = 1..M``, per OOD set in ``keys``.

    Two combinations per size: ``log-mean-exp`` (the mixture's likelihood) and ``WAIC``
    (``m = 1``: both are the first member's log p). ID test positive, higher = more ID.
    """
    set_names = _shared_names(members, set_names)
    if names.ID_HOLDOUT in keys:
        raise ValueError("the ID held-out set differs between members (each holds out what it did not train on)")
    _check_same_images(members, [names.ID_TEST, *keys])
    rows = []
    for m in range(1, len(members) + 1):
        stack = {k: np.stack([e.scores[k]["log_px"] for e in members[:m]]) for k in [names.ID_TEST, *keys]}
        for how, fn in (("log-mean-exp", gsc.ensemble_log_likelihood), ("WAIC", gsc.waic)):
            id_scores = fn(stack[names.ID_TEST])
            for k in keys:
                rows.append({"members": m, "combination": how, names.OOD_SET: set_names[k],
                             names.AUROC: 100 * metrics.auroc(id_scores, fn(stack[k]))})
    return pd.DataFrame(rows)

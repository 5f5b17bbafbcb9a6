"""One benchmark for generative and classifier OOD scores, on the same images, with one metrics code.

Neither paper's ecosystem does this: OpenOOD and pytorch-ood have no generative detectors, and the
Glow reproductions have no classifier methods. Here every detector is a ``{set key: [N] scores}``
mapping (higher = more in-distribution) over *the same* ID test and OOD images -- the Glow and
classifier chapters draw their evaluation subsets with the same size and seed, and
:func:`check_same_images` verifies it -- and every number comes from :mod:`ood_core.metrics` with
ID as the positive class, each AUROC with a percentile-bootstrap interval over test examples.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ood_core import generative_scores as gsc
from ood_core import metrics
from ood_core.artifacts import content_digest
from ood_core.classifier_study import ClassifierEvaluation, Method
from ood_core.glow_study import GlowEvaluation

ID_KEY = "ID test"


def _full_digest(x: torch.Tensor) -> str:
    return content_digest(x, length=64)


def check_same_images(glow_ev: GlowEvaluation, cls_ev: ClassifierEvaluation) -> list[str]:
    """The set keys both evaluations share with identical images; raises if a shared key differs."""
    if _full_digest(glow_ev.sets[ID_KEY].x) != _full_digest(cls_ev.id_set.x):
        raise ValueError("the Glow and classifier ID test images differ: use the same n_eval and seed")
    shared = [k for k in glow_ev.sets if k in cls_ev.ood_sets]
    for k in shared:
        if _full_digest(glow_ev.sets[k].x) != _full_digest(cls_ev.ood_sets[k].x):
            raise ValueError(f"the Glow and classifier images of OOD set {k!r} differ: use the same n_eval and seed")
    return shared


def generative_detectors(glow_ev: GlowEvaluation, cv_ev: GlowEvaluation | None = None,
                         background_ev: GlowEvaluation | None = None, codecs=("png",),
                         others: dict | None = None) -> dict[str, dict]:
    """Likelihood-based scores of every evaluated set (ID train excluded), higher = more ID.

    * ``Glow log p`` / ``CV-Glow log p``: the raw log-likelihood (Nalisnick et al.);
    * ``likelihood ratio``: log p_Glow - log p_background (Ren et al. 2019);
    * ``typicality (M=1)``: -|NLL(x) - H|, H the mean NLL of the ID training subset
      (Nalisnick et al. 2019b at batch size 1; larger batches in :func:`typicality_table`);
    * ``input complexity (<codec>)``: (log2 p(x) + L_codec(x)) / D (Serrà et al. 2020);
    * ``<label> log p`` for each evaluation in ``others`` (``{label: evaluation}``, e.g. the VAE's
      IWAE bound and the PixelCNN's exact likelihood), which must have scored the same images.
    """
    for label, ev in (others or {}).items():
        for k in glow_ev.sets:
            if k != "ID train" and (k not in ev.sets or _full_digest(ev.sets[k].x) != _full_digest(glow_ev.sets[k].x)):
                raise ValueError(f"{label} did not score the same images as the Glow for {k!r}: use the same n_eval and seed")
    keys = [k for k in glow_ev.sets if k != "ID train"]
    entropy = gsc.estimate_entropy(-glow_ev.scores["ID train"]["log_px"])
    out: dict[str, dict] = {"Glow log p": {}, "typicality (M=1)": {}}
    for k in keys:
        lp = glow_ev.scores[k]["log_px"]
        out["Glow log p"][k] = lp
        out["typicality (M=1)"][k] = -np.abs(-lp - entropy)
        if cv_ev is not None:
            out.setdefault("CV-Glow log p", {})[k] = cv_ev.scores[k]["log_px"]
        if background_ev is not None:
            out.setdefault("likelihood ratio", {})[k] = gsc.likelihood_ratio(lp, background_ev.scores[k]["log_px"])
        for codec in codecs:
            out.setdefault(f"input complexity ({codec})", {})[k] = gsc.input_complexity_score(
                lp, glow_ev.sets[k].x, codec=codec)
        for label, ev in (others or {}).items():
            out.setdefault(f"{label} log p", {})[k] = ev.scores[k]["log_px"]
    return out


def classifier_detectors(cls_ev: ClassifierEvaluation, methods: list[Method], keys: list[str]) -> dict[str, dict]:
    """Post-hoc classifier scores on the ID test set and the OOD sets in ``keys``."""
    out = {}
    for m in methods:
        d = {ID_KEY: cls_ev.suite.score(m, cls_ev.id_feats, cls_ev.id_set.x)}
        for k in keys:
            d[k] = cls_ev.suite.score(m, cls_ev.ood_feats[k], cls_ev.ood_sets[k].x)
        out[m.name] = d
    return out


def unified_table(detectors: dict[str, dict], families: dict[str, str], names: dict[str, str],
                  n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Long table: detector, family, OOD set, AUROC with its bootstrap 95 % interval, FPR95, AUPRs (%)."""
    rows = []
    for det, scores in detectors.items():
        for key, s in scores.items():
            if key == ID_KEY:
                continue
            m = metrics.ood_metrics(scores[ID_KEY], s)
            lo, hi = metrics.bootstrap_ci(scores[ID_KEY], s, "AUROC", n_boot=n_boot, seed=seed)
            rows.append({"detector": det, "family": families[det], "OOD set": names.get(key, key),
                         "AUROC": m["AUROC"], "AUROC low": lo, "AUROC high": hi, "FPR95": m["FPR95"],
                         "AUPR_In": m["AUPR_In"], "AUPR_Out": m["AUPR_Out"]})
    return pd.DataFrame(rows)


def typicality_table(glow_ev: GlowEvaluation, batch_sizes, seed: int = 0) -> pd.DataFrame:
    """AUROC of the typicality test against batch size M for every OOD set (Nalisnick et al. 2019b)."""
    entropy = gsc.estimate_entropy(-glow_ev.scores["ID train"]["log_px"])
    frames = []
    for k, s in glow_ev.sets.items():
        if k in ("ID train", ID_KEY):
            continue
        t = gsc.typicality_auroc_by_batch_size(-glow_ev.scores[ID_KEY]["log_px"], -glow_ev.scores[k]["log_px"],
                                               entropy, batch_sizes, seed=seed)
        t.insert(0, "OOD set", s.name)
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------ spread over training seeds

def seed_table(detectors_by_seed: dict[int, dict[str, dict]], families: dict[str, str], names: dict[str, str],
               id_name: str) -> pd.DataFrame:
    """Long table of AUROC / FPR95 / AUPRs (%) per training seed, detector and OOD set.

    ``detectors_by_seed[seed]`` is a ``{detector: {set key: scores}}`` mapping as in
    :func:`unified_table`, computed from models trained with that seed on the same images.
    """
    rows = []
    for seed, detectors in detectors_by_seed.items():
        for det, scores in detectors.items():
            for key, s in scores.items():
                if key == ID_KEY:
                    continue
                m = metrics.ood_metrics(scores[ID_KEY], s)
                rows.append({"ID": id_name, "OOD set": names.get(key, key), "detector": det,
                             "family": families[det], "seed": seed, **m})
    return pd.DataFrame(rows)


def seed_summary(long: pd.DataFrame, metric: str = "AUROC") -> pd.DataFrame:
    """Mean, sample std, min, max and number of seeds of ``metric`` per (ID, OOD set, detector)."""
    g = long.groupby(["ID", "OOD set", "family", "detector"], sort=False)[metric]
    out = g.agg(mean="mean", std=lambda v: gsc.seed_spread(v.to_numpy())[1], min="min", max="max", seeds="count")
    return out.reset_index()

"""The claims registry: every claim the book tests, its rule, the chapters that measure it, and the ledger.

A :class:`Claim` is written once: the paper, the claim's text, the chapter(s) that produce its
evidence, and a :class:`Rule` -- a function of the measured evidence that returns the verdict
(``reproduced`` / ``partly`` / ``not``) and a sentence stating the numbers. Chapters compute the
evidence with the helpers below (e.g. :func:`inversion_evidence`) and :func:`record` it; they show
the verdict the rule gives, and the claims-ledger chapter shows every claim's verdicts with
:func:`ledger`. No verdict is typed by hand and no rule exists twice.

A claim whose data are absent here (SVHN, LSUN, ...) is recorded with :func:`not_testable` by the
chapter that would test it, with the reason. A claim without any recorded evidence for the profile
is an error (:class:`MissingEvidence`), naming the chapters to run: the ledger never shows "not
testable" for a chapter that simply did not run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ood_core import names
from ood_core.artifacts import ArtifactStore
from ood_core.ash import SHAPER_TITLES

NALISNICK = "Nalisnick et al."
DJURISIC = "Djurisic et al."
FOLLOW_UPS = "Follow-ups"

REPRODUCED, PARTLY, NOT, NOT_TESTABLE = "reproduced", "partly", "not", "not testable here"
VERDICTS = (REPRODUCED, PARTLY, NOT)
COLUMNS = ("paper", "claim", "source", "our evidence", "verdict")


class MissingEvidence(RuntimeError):
    """A claim has no recorded evidence for this profile: the chapters that measure it did not run."""


class EmptyEvidence(ValueError):
    """A rule was given no measurements to judge (no OOD set, no seed, no pair): no verdict can be drawn."""


def _measured(e: Mapping[str, Any], key: str):
    """``e[key]``, a collection of measurements, or :class:`EmptyEvidence` when it holds none.

    Every rule that quantifies over measurements ("on every set", "every seed") reads them through
    this, so that ``all([])`` -- true -- can never turn *no* evidence into "reproduced".
    """
    values = e[key]
    if len(values) == 0:
        raise EmptyEvidence(f"the evidence has no {key!r} measurements: the chapter measured nothing to judge "
                            "(were the OOD sets or seeds missing?)")
    return values


def _count(e: Mapping[str, Any], key: str) -> int:
    """A count of judged cases, ``e[key]``, or :class:`EmptyEvidence` when it is zero."""
    n = int(e[key])
    if n <= 0:
        raise EmptyEvidence(f"the evidence judges {n} cases ({key!r}): the chapter measured nothing to judge")
    return n


def verdict(condition_full: bool, condition_partial: bool) -> str:
    """``reproduced`` if the full condition holds, else ``partly`` if the partial one does, else ``not``.

    Only booleans are accepted (Python or numpy): a measured number passed by mistake raises.
    """
    for name, value in (("condition_full", condition_full), ("condition_partial", condition_partial)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool (a comparison such as auroc >= 95), got {type(value).__name__}")
    return REPRODUCED if condition_full else PARTLY if condition_partial else NOT


@dataclass(frozen=True)
class Rule:
    """``decide(evidence) -> (full, partial)`` booleans and ``describe(evidence) -> str``; ``text`` states the rule."""

    text: str
    decide: Callable[[Mapping[str, Any]], tuple[bool, bool]]
    describe: Callable[[Mapping[str, Any]], str]

    def verdict(self, evidence: Mapping[str, Any]) -> str:
        full, partial = self.decide(evidence)
        return verdict(bool(full), bool(partial))


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    text: str
    chapters: tuple[str, ...]  # chapter stems that record the evidence
    rule: Rule


# ----------------------------------------------------------------------------------- rules

INVERSION = Rule(
    "reproduced if the OOD set has the lower mean bits/dim and the AUROC of log p is below 50 %; partly if one holds",
    lambda e: (e["id_bpd"] > e["ood_bpd"] and e["auroc"] < 50, e["id_bpd"] > e["ood_bpd"] or e["auroc"] < 50),
    lambda e: (f"{e['ood_name']} {e['ood_bpd']:.3f} vs {e['id_name']} {e['id_bpd']:.3f} bits/dim; "
               f"AUROC of log p {e['auroc']:.1f} %" + (f"; log-det std across inputs {e['logdet_std']:.2e} bits/dim"
                                                      if "logdet_std" in e else "")))

VOLUME = Rule(
    "reproduced if the OOD set's advantage from the log-det term exceeds its advantage from log p(z) and is "
    "positive; partly if the log-det term favours the OOD set at all",
    lambda e: (e["from_logdet"] > e["from_pz"] and e["from_logdet"] > 0, e["from_logdet"] > 0),
    lambda e: f"gap from log-det {e['from_logdet']:.3f}, from log p(z) {e['from_pz']:.3f} bits/dim")

THROUGHOUT = Rule(
    "reproduced if the OOD set has lower bits/dim than ID test at >= 90 % of the evaluations along training; "
    "partly if at the last one",
    lambda e: (_count(e, "evaluations") and e["share_below"] >= 0.9, e["last_below"]),
    lambda e: f"OOD below ID test at {e['share_below']:.0%} of {e['evaluations']} evaluations")

SECOND_ORDER = Rule(
    "judged on the paper's closed form alone: reproduced if it gets the sign of every CV-Glow gap right; partly "
    "if it gets at least half of them (eq. (5) and the full-covariance Taylor expansion are reported beside it, "
    "not judged)",
    lambda e: (e["closed_ok"] == _count(e, "n_cv"), e["closed_ok"] >= _count(e, "n_cv") / 2),
    lambda e: (f"signs right: closed form {e['closed_ok']}/{e['n_cv']} (judged); beside it eq. (5) diag. Σ "
               f"{e['eq5_ok']}/{e['n_all']}, full-covariance Taylor {e['taylor_ok']}/{e['n_all']}"))

GRAYING = Rule(
    "reproduced if graying raises the likelihood under every model and monotonically along the blend; partly if "
    "under at least one model",
    lambda e: (all(g > 0 for g in _measured(e, "gains").values()) and all(_measured(e, "monotone").values()),
               any(g > 0 for g in _measured(e, "gains").values())),
    lambda e: ("gain at α = 1: " + ", ".join(f"{m} {g:+.3f} bits/dim" for m, g in e["gains"].items()) +
               f"; per-pixel variance {e['var0']:.4f} → {e['var1']:.4f}"))

ENSEMBLE = Rule(
    "reproduced if every member and the log-mean-exp ensemble prefer MNIST (AUROC < 50 %); partly if the ensemble does",
    lambda e: (e["member_max"] < 50 and e["ensemble"] < 50, e["ensemble"] < 50),
    lambda e: (f"M = {e['members']} Glows (seeds {e['seeds']}): member AUROCs {e['member_min']:.1f}–"
               f"{e['member_max']:.1f} %, ensemble log-mean-exp {e['ensemble']:.1f} %, WAIC {e['waic']:.1f} %; "
               f"ensemble {e['ensemble_ood_bpd']:.3f} bits/dim on MNIST vs {e['ensemble_id_bpd']:.3f} on FashionMNIST"))

WAIC = Rule(
    "reproduced if the WAIC AUROC is >= 80 %; partly if above chance",
    lambda e: (e["waic"] >= 80, e["waic"] > 50),
    lambda e: f"WAIC AUROC {e['waic']:.1f} % (M = {e['members']})")

REVERSED = Rule(
    "reproduced if every seed's Glow and VAE AUROC on the reversed pair is above 50 %; partly if the Glow's mean is",
    lambda e: (_count(e, "seeds") and e["glow_min"] > 50 and e["vae_min"] > 50, e["glow_mean"] > 50),
    lambda e: (f"trained on MNIST, FashionMNIST gets the lower likelihood: Glow AUROC {e['glow_min']:.1f}–"
               f"{e['glow_max']:.1f} %, VAE {e['vae_min']:.1f}–{e['vae_max']:.1f} % over {e['seeds']} seeds "
               f"(FashionMNIST → MNIST: Glow {e['fwd_min']:.1f}–{e['fwd_max']:.1f} %); SVHN → CIFAR-10 not "
               "testable (no SVHN)"))

BEATS_ENERGY = Rule(
    "reproduced if both the mean FPR95 and the mean AUROC improve on energy's; partly if one does",
    lambda e: (e["fpr"] < e["energy_fpr"] and e["auroc"] > e["energy_auroc"],
               e["fpr"] < e["energy_fpr"] or e["auroc"] > e["energy_auroc"]),
    lambda e: (f"{e['method']} {e['fpr']:.2f} / {e['auroc']:.2f} vs energy {e['energy_fpr']:.2f} / "
               f"{e['energy_auroc']:.2f} (FPR95 / AUROC %, sets available here)"))

ACCURACY = Rule(
    "reproduced if every listed shaper is within 1 point of the unpruned accuracy at p; partly if within 2",
    lambda e: (all(e["base"] - a <= 1 for a in _measured(e, "at_p").values()),
               all(e["base"] - a <= 2 for a in _measured(e, "at_p").values())),
    lambda e: f"unpruned {e['base']:.2f} %; " + ", ".join(f"{k} {v:.2f} %" for k, v in e["at_p"].items()))

LOCAL = Rule(
    "reproduced if the local threshold has the higher AUROC in >= 75 % of (shaper, p) pairs; partly if in half",
    lambda e: (_count(e, "pairs") and e["wins"] >= 0.75, e["wins"] >= 0.5),
    lambda e: f"local has higher AUROC in {e['wins']:.0%} of {e['pairs']} (shaper, p) pairs")

PENULTIMATE = Rule(
    "reproduced if ASH at the penultimate layer has the highest AUROC; partly if within 2 points of the highest",
    lambda e: (max(_measured(e, "auroc"), key=e["auroc"].get) == "penultimate",
               max(e["auroc"].values()) - e["auroc"]["penultimate"] <= 2),
    lambda e: "AUROC by stage: " + ", ".join(f"{k} {v:.1f}" for k, v in e["auroc"].items()))

RANDOM = Rule(
    "reproduced if ASH-RAND's AUROC is within 2 points of energy's or better; partly if above 60 %",
    lambda e: (e["auroc"] >= e["energy_auroc"] - 2, e["auroc"] > 60),
    lambda e: f"{e['method']} AUROC {e['auroc']:.2f} vs energy {e['energy_auroc']:.2f}")

PER_SET = Rule(
    "reproduced if ASH-S's AUROC beats energy's on every OOD set measured (at least one); partly if on some",
    lambda e: (all(a > en for a, en, _ in _measured(e, "sets").values()),
               any(a > en for a, en, _ in _measured(e, "sets").values())),
    lambda e: ("; ".join(f"{name}: ASH-S {a:.1f} vs energy {en:.1f} (s1/s2 alone {r:.1f})"
                         for name, (a, en, r) in e["sets"].items()) + " — AUROC %"))

SCALE_BEATS = Rule(
    "reproduced if SCALE's mean AUROC and FPR95 both improve on ASH-S's; partly if one does",
    lambda e: (e["auroc"] > e["ash_auroc"] and e["fpr"] < e["ash_fpr"], e["auroc"] > e["ash_auroc"] or e["fpr"] < e["ash_fpr"]),
    lambda e: (f"{e['method']} {e['fpr']:.2f} / {e['auroc']:.2f} vs {e['ash']} {e['ash_fpr']:.2f} / {e['ash_auroc']:.2f} "
               "(FPR95 / AUROC %)"))

RANKING = Rule(
    "reproduced if at least two of OpenOOD's three best methods are among our three best (mean of near and far "
    "AUROC) and ASH ranks in our bottom half; partly if one of the two holds",
    lambda e: (len(set(e["ours_top3"]) & set(e["openood_top3"])) >= 2 and e["ash_rank"] > e["n"] / 2,
               len(set(e["ours_top3"]) & set(e["openood_top3"])) >= 2 or e["ash_rank"] > e["n"] / 2),
    lambda e: (f"our top 3: {', '.join(e['ours_top3'])}; OpenOOD's: {', '.join(e['openood_top3'])}; "
               f"{e['ash']} ranks {e['ash_rank']} of {e['n']}"))

def _mean(v) -> float:
    return float(np.mean(v))


def _worst(e: Mapping[str, Any], key: str) -> float:
    """The lowest AUROC over the training seeds of one direction (every seed must pass, not their mean)."""
    return float(np.min(_measured(e, key)))


#: AUROC (%) every training seed must reach in a direction for :data:`TWO_WAYS` (the remedies' goal), and the
#: floor above which both directions still count as "partly".
TWO_WAYS_GOAL = 95
TWO_WAYS_FLOOR = 80

TWO_WAYS = Rule(
    f"reproduced if the AUROC is >= {TWO_WAYS_GOAL} % for every training seed (each seed, not their mean) on "
    f"FashionMNIST → MNIST and on MNIST → FashionMNIST; partly if every seed reaches {TWO_WAYS_GOAL} % in one "
    f"direction, or every seed is above {TWO_WAYS_FLOOR} % in both",
    lambda e: (_worst(e, "forward") >= TWO_WAYS_GOAL and _worst(e, "reverse") >= TWO_WAYS_GOAL,
               _worst(e, "forward") >= TWO_WAYS_GOAL or _worst(e, "reverse") >= TWO_WAYS_GOAL or
               (_worst(e, "forward") > TWO_WAYS_FLOOR and _worst(e, "reverse") > TWO_WAYS_FLOOR)),
    lambda e: (f"{e['method']}: FashionMNIST → MNIST lowest seed {_worst(e, 'forward'):.1f} %, mean "
               f"{_mean(e['forward']):.1f} % ({', '.join(f'{v:.1f}' for v in e['forward'])}), MNIST → FashionMNIST "
               f"lowest seed {_worst(e, 'reverse'):.1f} %, mean {_mean(e['reverse']):.1f} % "
               f"({', '.join(f'{v:.1f}' for v in e['reverse'])}) over {len(e['forward'])} seeds"
               + (f"; reference: {e['reference']}" if e.get("reference") else "")))

EVERY_PAIR = Rule(
    "reproduced if the AUROC is >= 90 % on every pair measured; partly if above chance on every pair",
    lambda e: (min(_measured(e, "aurocs").values()) >= 90, min(_measured(e, "aurocs").values()) > 50),
    lambda e: f"{e['method']}: " + ", ".join(f"{k} {v:.1f}" for k, v in e["aurocs"].items()) + " (AUROC %)")

LOCAL_PREDICTION = Rule(
    "reproduced if the coupling network's prediction explains the OOD images at least as well as the ID images "
    "(median R²); partly if within 0.1",
    lambda e: (min(_measured(e, "ood_r2").values()) >= e["id_r2"],
               min(_measured(e, "ood_r2").values()) >= e["id_r2"] - 0.1),
    lambda e: (f"median R² of the masked half predicted by a coupling network of {e['model']}: ID {e['id_r2']:.2f}; "
               + ", ".join(f"{k} {v:.2f}" for k, v in e["ood_r2"].items())))

TYPICALITY_BATCHES = Rule(
    "reproduced if the typicality test is weak for single inputs (AUROC < 80 %) and strong for batches "
    "(>= 95 % at the largest batch); partly if the batch AUROC exceeds the single-input one by 10 points",
    lambda e: (e["single"] < 80 and e["batch"] >= 95, e["batch"] - e["single"] >= 10),
    lambda e: f"{e['pair']}: M = 1 {e['single']:.1f} %, M = {e['m']} {e['batch']:.1f} %")

UNTESTABLE = Rule("not testable with the data available here", lambda e: (False, False), lambda e: e["why"])


# ----------------------------------------------------------------------------------- the registry

def _c(id, paper, text, chapters, rule):  # noqa: A002 - short constructor for the table below
    return Claim(id, paper, text, tuple(chapters) if isinstance(chapters, (list, tuple)) else (chapters,), rule)


_02, _03, _04, _05, _06 = ("02_glow_fashion_mnist", "03_glow_cifar10", "04_glow_decomposition", "05_cv_glow",
                           "06_glow_training_dynamics")
_07, _08, _09, _10 = "07_second_order", "08_graying", "09_ensembles", "10_vae_pixelcnn"
_11, _12, _14 = "11_ash_benchmark", "12_ash_ablations", "14_seeds_and_reversed_pairs"
_15 = "15_what_works_instead"

#: Every claim the book tests, in the ledger's order.
CLAIMS: dict[str, Claim] = {c.id: c for c in (
    _c("glow_fashion_mnist_prefers_mnist", NALISNICK, "Glow trained on FashionMNIST gives MNIST higher likelihood",
       _02, INVERSION),
    _c("glow_cifar10_prefers_svhn", NALISNICK,
       "Glow trained on CIFAR-10 gives SVHN higher likelihood (3.464 vs 2.389 bits/dim)", _03, INVERSION),
    _c("glow_cifar10_prefers_mnist", NALISNICK, "Glow trained on CIFAR-10 gives MNIST higher likelihood", _03,
       INVERSION),
    _c("glow_cifar10_prefers_gray", NALISNICK, "Glow trained on CIFAR-10 gives CIFAR-10 in grayscale higher likelihood",
       _03, INVERSION),
    _c("volume_term_drives_gap", NALISNICK, "the volume term drives the MNIST gap (affine Glow on FashionMNIST)", _04,
       VOLUME),
    _c("cv_glow_fashion_mnist_prefers_mnist", NALISNICK,
       "the inversion persists with constant volume (CV-Glow, FashionMNIST → MNIST)", _05, INVERSION),
    _c("cv_glow_cifar10_prefers_mnist", NALISNICK,
       "the inversion persists with constant volume (CV-Glow, CIFAR-10 → MNIST)", _05, INVERSION),
    _c("fashion_mnist_mnist_throughout_training", NALISNICK,
       "MNIST favoured throughout training (Glow on FashionMNIST)", _06, THROUGHOUT),
    _c("cifar10_mnist_throughout_training", NALISNICK, "MNIST favoured throughout training (Glow on CIFAR-10)", _06,
       THROUGHOUT),
    _c("second_order_predicts_gap", NALISNICK, "the second-order (curvature × variance) expansion predicts the gap",
       _07, SECOND_ORDER),
    _c("graying_raises_likelihood", NALISNICK, "graying images raises their likelihood", _08, GRAYING),
    _c("ensemble_prefers_mnist", NALISNICK, "an ensemble of Glows still prefers MNIST (FashionMNIST model)", _09,
       ENSEMBLE),
    _c("vae_fashion_mnist_prefers_mnist", NALISNICK, "VAE trained on FashionMNIST gives MNIST higher likelihood", _10,
       INVERSION),
    _c("pixelcnn_fashion_mnist_prefers_mnist", NALISNICK,
       "PixelCNN trained on FashionMNIST gives MNIST higher likelihood", _10, INVERSION),
    _c("vae_cifar10_prefers_svhn", NALISNICK, "VAE trained on CIFAR-10 gives SVHN higher likelihood", _10, INVERSION),
    _c("vae_cifar10_prefers_mnist", NALISNICK, "VAE trained on CIFAR-10 gives MNIST higher likelihood", _10, INVERSION),
    _c("pixelcnn_cifar10_prefers_svhn", NALISNICK, "PixelCNN trained on CIFAR-10 gives SVHN higher likelihood", _10,
       INVERSION),
    _c("pixelcnn_cifar10_prefers_mnist", NALISNICK, "PixelCNN trained on CIFAR-10 gives MNIST higher likelihood", _10,
       INVERSION),
    _c("reversed_pair_correct", NALISNICK, "the reversed pair behaves correctly (simple ID data, complex OOD data)",
       _14, REVERSED),
    _c("waic_detects_mnist", FOLLOW_UPS, "WAIC over a Glow ensemble detects FashionMNIST → MNIST (Choi et al.)", _09,
       WAIC),
    _c("ash_s_beats_energy", DJURISIC, "ASH-S@95 beats energy on CIFAR-10 (FPR95 and AUROC)", _11, BEATS_ENERGY),
    _c("ash_b_beats_energy", DJURISIC, "ASH-B@95 beats energy on CIFAR-10 (FPR95 and AUROC)", _11, BEATS_ENERGY),
    _c("ash_preserves_accuracy", DJURISIC, "ID accuracy preserved up to p = 90 (ASH-S, ASH-B)", _12, ACCURACY),
    _c("local_beats_global", DJURISIC, "a local (per-sample) threshold beats a global one", _12, LOCAL),
    _c("penultimate_best", DJURISIC, "ASH works best at the penultimate layer", _12, PENULTIMATE),
    _c("ash_rand_works", DJURISIC, "ASH-RAND still detects OOD", _11, RANDOM),
    _c("ash_state_of_the_art", DJURISIC, "state of the art on the six CIFAR OOD sets and on ImageNet", _11, UNTESTABLE),
    _c("ash_s_beats_energy_near", DJURISIC, "ASH-S@95 beats energy on near-OOD sets (CIFAR-100, TinyImageNet)", _11,
       BEATS_ENERGY),
    _c("ash_s_beats_energy_far", DJURISIC, "ASH-S@95 beats energy on far-OOD sets", _11, BEATS_ENERGY),
    _c("ash_s_every_set", DJURISIC, "ASH-S@95 beats energy on every CIFAR-10 OOD set", _12, PER_SET),
    _c("ash_s_densenet", DJURISIC, "ASH-S@95 beats energy with the paper's DenseNet-BC-100 on CIFAR-10", _11,
       BEATS_ENERGY),
    _c("scale_beats_ash_s", FOLLOW_UPS, "SCALE (scaling without pruning) improves on ASH-S (Xu et al. 2024)", _11,
       SCALE_BEATS),
    _c("ren_likelihood_ratio", FOLLOW_UPS, "a likelihood ratio against a same-architecture background model trained "
       "on perturbed inputs detects FashionMNIST ↔ MNIST in both directions (Ren et al. 2019)", _15, TWO_WAYS),
    _c("serra_input_complexity", FOLLOW_UPS,
       "input complexity (likelihood minus a compressor's code length) detects FashionMNIST ↔ MNIST in both "
       "directions (Serrà et al. 2020)", _15, TWO_WAYS),
    _c("kirichenko_embeddings", FOLLOW_UPS, "a flow on classifier embeddings detects FashionMNIST ↔ MNIST in both "
       "directions (Kirichenko et al. 2020)", _15, TWO_WAYS),
    _c("kirichenko_local", FOLLOW_UPS, "an image flow's coupling layers predict pixels from their neighbours on ID and "
       "OOD images alike (Kirichenko et al. 2020)", _15, LOCAL_PREDICTION),
    _c("morningstar_dose", FOLLOW_UPS, "DoSE on the model's summary statistics detects every OOD set "
       "(Morningstar et al. 2021)", _15, EVERY_PAIR),
    _c("typicality_needs_batches", FOLLOW_UPS, "the typicality test detects OOD batches but not single inputs "
       "(Nalisnick et al. 2019b)", _15, TYPICALITY_BATCHES),
    _c("openood_ranking", FOLLOW_UPS, "OpenOOD v1.5's CIFAR-10 ranking: KNN/ViM/fDBD-type methods lead, ASH trails",
       _11, RANKING),
)}


def claim(claim_id: str) -> Claim:
    try:
        return CLAIMS[claim_id]
    except KeyError:
        raise ValueError(f"unknown claim {claim_id!r}; registered: {', '.join(CLAIMS)}") from None


def chapters() -> list[str]:
    """The chapters that record evidence, in first-use order."""
    return list(dict.fromkeys(ch for c in CLAIMS.values() for ch in c.chapters))


# ----------------------------------------------------------------------------------- evidence helpers

def inversion_evidence(table: pd.DataFrame, id_name: str, ood_name: str, logdet_std: float | None = None) -> dict:
    """Evidence for :data:`INVERSION` from a likelihood table (rows by set name)."""
    e = {"id_name": id_name, "ood_name": ood_name, "id_bpd": float(table.loc[id_name, names.MEAN_BPD]),
         "ood_bpd": float(table.loc[ood_name, names.MEAN_BPD]), "auroc": float(table.loc[ood_name, names.AUROC_LOGP])}
    if logdet_std is not None:
        e["logdet_std"] = float(logdet_std)
    return e


def volume_evidence(table: pd.DataFrame, id_name: str, ood_name: str) -> dict:
    """Evidence for :data:`VOLUME`: the OOD set's advantage (bits/dim) from each term of log p."""
    return {"from_logdet": float(table.loc[id_name, names.LOGDET_BPD] - table.loc[ood_name, names.LOGDET_BPD]),
            "from_pz": float(table.loc[id_name, names.PZ_BPD] - table.loc[ood_name, names.PZ_BPD])}


def throughout_evidence(history: pd.DataFrame, ood_name: str) -> dict:
    """Evidence for :data:`THROUGHOUT` from training curves (``"bpd: <set>"`` columns)."""
    below = history[names.curve_column(ood_name)] < history[names.curve_column(names.ID_TEST)]
    return {"share_below": float(below.mean()), "last_below": bool(below.iloc[-1]), "evaluations": int(len(history))}


def beats_energy_evidence(summary: pd.DataFrame, method: str) -> dict:
    a, e = summary.loc[method], summary.loc["energy"]
    return {"method": method, "fpr": float(a[names.FPR95]), "auroc": float(a[names.AUROC]),
            "energy_fpr": float(e[names.FPR95]), "energy_auroc": float(e[names.AUROC])}


def accuracy_evidence(sweep: pd.DataFrame, p: float = 90,
                      shapers=(SHAPER_TITLES["ash_s"], SHAPER_TITLES["ash_b"])) -> dict:
    """Unpruned accuracy (ASH-P at p = 0 is the identity) and the shapers' accuracy at ``p``, from a
    percentile sweep (:func:`ood_core.classifier_study.percentile_sweep`; shapers by their titles)."""
    at_zero = sweep[sweep[names.PERCENTILE] == 0]
    unpruned = at_zero[at_zero[names.SHAPER] == SHAPER_TITLES["ash_p"]]
    base = (unpruned if len(unpruned) else at_zero)[names.ID_ACCURACY].iloc[0]
    at = sweep[(sweep[names.PERCENTILE] == p) & sweep[names.SHAPER].isin(shapers)].set_index(names.SHAPER)[
        names.ID_ACCURACY]
    return {"base": float(base), "at_p": {k: float(v) for k, v in at.items()}, "p": p}


def local_evidence(lg: pd.DataFrame) -> dict:
    """Evidence for :data:`LOCAL` from :func:`ood_core.classifier_study.local_vs_global`."""
    wide = lg.pivot_table(index=[names.SHAPER, names.PERCENTILE], columns=names.THRESHOLD, values=names.AUROC)
    wins = float((wide[names.LOCAL_THRESHOLD] > wide[names.GLOBAL_THRESHOLD]).mean())
    return {"wins": wins, "pairs": int(len(wide))}


def penultimate_evidence(where: pd.DataFrame) -> dict:
    return {"auroc": {str(k): float(v) for k, v in where.set_index(names.STAGE)[names.AUROC].items()}}


def per_set_evidence(anatomy: pd.DataFrame, percentile: float = 95) -> dict:
    """Evidence for :data:`PER_SET` from :func:`ood_core.classifier_study.ash_s_anatomy`."""
    both = names.auroc_both(percentile)
    rows = anatomy.dropna(subset=[both])
    return {"sets": {r[names.SET]: (float(r[both]), float(r[names.AUROC_ENERGY]), float(r[names.AUROC_RATIO]))
                     for _, r in rows.iterrows()}}


def scale_evidence(summary: pd.DataFrame, scale: str, ash_s: str) -> dict:
    return {"method": scale, "ash": ash_s, "auroc": float(summary.loc[scale, names.AUROC]),
            "fpr": float(summary.loc[scale, names.FPR95]), "ash_auroc": float(summary.loc[ash_s, names.AUROC]),
            "ash_fpr": float(summary.loc[ash_s, names.FPR95])}


def near_far_evidence(near_far: pd.DataFrame, method: str, which: str) -> dict:
    """Evidence for :data:`BEATS_ENERGY` on the ``which`` ("near" or "far") averages of a near/far summary."""
    a, e = near_far.loc[method], near_far.loc["energy"]
    fpr, auroc = names.NEAR_FAR_COLUMNS[which]
    return {"method": method, "fpr": float(a[fpr]), "auroc": float(a[auroc]),
            "energy_fpr": float(e[fpr]), "energy_auroc": float(e[auroc])}


def ranking_evidence(near_far: pd.DataFrame, openood: Mapping[str, tuple[float, float]], ash: str) -> dict:
    """Evidence for :data:`RANKING`: methods ranked by the mean of near and far AUROC, ours and OpenOOD's
    (over the methods both have; OpenOOD's "ASH" is matched to ``ash``)."""
    ours = ((near_far[names.NEAR_AUROC] + near_far[names.FAR_AUROC]) / 2).dropna()
    theirs = {(ash if m == "ASH" else m): (n + f) / 2 for m, (n, f) in openood.items()}
    common = [m for m in ours.index if m in theirs]
    ours = ours[common].sort_values(ascending=False)
    theirs_sorted = sorted(common, key=lambda m: -theirs[m])
    return {"ours_top3": list(ours.index[:3]), "openood_top3": theirs_sorted[:3],
            "ash": ash, "ash_rank": int(list(ours.index).index(ash) + 1), "n": len(common)}


def random_evidence(summary: pd.DataFrame, method: str) -> dict:
    return {"method": method, "auroc": float(summary.loc[method, names.AUROC]),
            "energy_auroc": float(summary.loc["energy", names.AUROC])}


# ----------------------------------------------------------------------------------- record and assess

def _cfg(claim_id: str, profile: str, seed: int) -> dict:
    return {"claim": claim_id, "profile": profile, "seed": seed}


def _jsonable(evidence: Mapping[str, Any]) -> dict:
    return json.loads(json.dumps(evidence, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def assess(claim_id: str, evidence: Mapping[str, Any], source: str) -> dict:
    """The ledger row of ``claim_id`` for ``evidence`` measured in ``source``."""
    c = claim(claim_id)
    if evidence.get("testable", True) is False:
        return {"paper": c.paper, "claim": c.text, "source": source, "our evidence": evidence["why"],
                "verdict": NOT_TESTABLE}
    return {"paper": c.paper, "claim": c.text, "source": source, "our evidence": c.rule.describe(evidence),
            "verdict": c.rule.verdict(evidence)}


def recorded(claim_id: str, profile: str, seed: int, store: ArtifactStore | None = None) -> dict[str, dict]:
    """``{source: evidence}`` recorded for a claim (empty when none)."""
    store = store or ArtifactStore()
    cfg = _cfg(claim_id, profile, seed)
    if not store.exists("evidence", cfg):
        return {}
    return json.loads(store.read_text("evidence", cfg, "evidence.json"))


def record(claim_id: str, evidence: Mapping[str, Any], profile: str, seed: int, source: str | None = None,
           store: ArtifactStore | None = None) -> dict:
    """Save the evidence a chapter measured for ``claim_id`` (one entry per source); return its ledger row.

    ``source`` defaults to ``"<profile> profile"``; committed paper-profile results are recorded with
    their own source (e.g. ``"paper profile (NVIDIA H100 80GB HBM3)"``). A rerun replaces the entry.
    """
    claim(claim_id)
    source = source or f"{profile} profile"
    row = assess(claim_id, evidence, source)  # a rule that cannot read the evidence fails here, in the chapter
    store = store or ArtifactStore()
    entries = recorded(claim_id, profile, seed, store)
    entries[source] = _jsonable(evidence)
    cfg = _cfg(claim_id, profile, seed)
    path = store.path("evidence", cfg)
    if path.exists():
        shutil.rmtree(path)
    store.save("evidence", cfg, files={"evidence.json": json.dumps(entries, indent=1)})
    return row


def not_testable(claim_id: str, why: str, profile: str, seed: int, store: ArtifactStore | None = None) -> dict:
    """Record that ``claim_id`` cannot be tested here (its data are absent), with the reason."""
    return record(claim_id, {"testable": False, "why": why}, profile, seed, store=store)


def ledger(profile: str, seed: int, store: ArtifactStore | None = None) -> pd.DataFrame:
    """Every registered claim with every recorded source's evidence and verdict, in registry order.

    Raises :class:`MissingEvidence` naming the chapters to run when a claim has no evidence for
    ``profile`` (its own source, ``"<profile> profile"``).
    """
    rows, missing = [], {}
    own = f"{profile} profile"
    for c in CLAIMS.values():
        entries = recorded(c.id, profile, seed, store)
        if own not in entries:
            missing[c.id] = c.chapters
            continue
        rows += [assess(c.id, e, source) for source, e in sorted(entries.items(), key=lambda kv: kv[0] != own)]
    if missing:
        chapters_to_run = sorted({ch for chs in missing.values() for ch in chs})
        raise MissingEvidence(f"no evidence recorded for {len(missing)} claim(s) in the {profile!r} profile "
                              f"(seed {seed}): {', '.join(missing)}. Run these chapters first: "
                              f"{', '.join(chapters_to_run)} (python tools/build_book.py --only ... --profile {profile})")
    return pd.DataFrame(rows, columns=list(COLUMNS))


def verdict_counts(table: pd.DataFrame) -> pd.DataFrame:
    return table.pivot_table(index="paper", columns="verdict", values="claim", aggfunc="count", fill_value=0)


def rules_table() -> pd.DataFrame:
    """Every claim with its rule, for the book."""
    return pd.DataFrame([{"paper": c.paper, "claim": c.text, "rule": c.rule.text, "measured in": ", ".join(c.chapters)}
                         for c in CLAIMS.values()])


def ledger_rows(rows: list[dict]) -> pd.DataFrame:
    """Rows returned by :func:`record` as a table (a chapter's own verdicts)."""
    return pd.DataFrame(rows, columns=list(COLUMNS))

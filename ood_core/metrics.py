"""OOD detection metrics, with the positive class written down (built on :mod:`sklearn.metrics`).

Scores follow the package convention: **higher = more in-distribution**. Two conventions for the
positive class exist in the literature and they give different FPR95 values:

* **ID positive** (the ASH, ReAct, DICE and energy papers' code; this module's default). A
  detector keeps a sample as ID when its score is ``>= t``. :func:`fpr_at_tpr` picks the largest
  ``t`` that keeps at least 95 % of ID samples and reports the fraction of OOD samples kept.
* **OOD positive** (OpenOOD since 2023, pytorch-ood). :func:`fpr_at_tpr_ood_positive` picks the
  threshold that catches at least 95 % of OOD samples (score ``<= t``) and reports the fraction
  of ID samples flagged.

AUROC is the same under both conventions. Ties are resolved as scikit-learn's ``roc_curve``
does: every sample scoring exactly ``t`` is on the positive side of threshold ``t`` (``>=``), so
a tie between an ID and an OOD score counts against the detector. Hendrycks' widely copied
``fpr_and_fdr_at_recall`` instead takes the ROC point whose recall is *nearest* to 0.95, which
can differ by one sample from the "first point with TPR >= 0.95" used here.

Every function rejects empty inputs, NaN or inf, and input with a single class (an empty ID or
OOD set) with a :class:`ValueError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = [
    "METRIC_NAMES",
    "aupr_in",
    "aupr_out",
    "auroc",
    "bootstrap_ci",
    "fpr_at_tpr",
    "fpr_at_tpr_ood_positive",
    "metrics_table",
    "ood_metrics",
]

METRIC_NAMES: tuple[str, ...] = ("FPR95", "AUROC", "AUPR_In", "AUPR_Out")


def _scores_array(scores: Any, name: str) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().double().numpy()
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a 1-D array of numbers") from err
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one score per sample); got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(
            f"{name} is empty: OOD metrics need at least one ID and one OOD score "
            "(a single class has no ROC curve)"
        )
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or inf value(s); fix the scores first")
    return arr


def _validated(id_scores: Any, ood_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    return _scores_array(id_scores, "id_scores"), _scores_array(ood_scores, "ood_scores")


def _labelled(id_arr: np.ndarray, ood_arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated scores and ID-positive labels (1 = ID, 0 = OOD)."""
    labels = np.concatenate([np.ones(id_arr.size), np.zeros(ood_arr.size)])
    return np.concatenate([id_arr, ood_arr]), labels


def _check_rate(tpr: float) -> None:
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be a rate in (0, 1], e.g. 0.95; got {tpr}")


# -------------------------------------------------------------- unvalidated implementations


def _auroc(id_arr: np.ndarray, ood_arr: np.ndarray) -> float:
    scores, labels = _labelled(id_arr, ood_arr)
    return float(roc_auc_score(labels, scores))


def _aupr_in(id_arr: np.ndarray, ood_arr: np.ndarray) -> float:
    scores, labels = _labelled(id_arr, ood_arr)
    return float(average_precision_score(labels, scores))


def _aupr_out(id_arr: np.ndarray, ood_arr: np.ndarray) -> float:
    scores, labels = _labelled(id_arr, ood_arr)
    return float(average_precision_score(1.0 - labels, -scores))


def _fpr_at_tpr(pos_arr: np.ndarray, neg_arr: np.ndarray, tpr: float) -> float:
    """FPR at the first ROC point (decreasing threshold) with TPR >= tpr; higher = positive."""
    scores, labels = _labelled(pos_arr, neg_arr)
    fpr_curve, tpr_curve, _ = roc_curve(labels, scores, drop_intermediate=False)
    # tpr_curve is non-decreasing and ends at 1.0, so the first index always exists
    return float(fpr_curve[np.argmax(tpr_curve >= tpr)])


# -------------------------------------------------------------------------------- public API


def auroc(id_scores: Any, ood_scores: Any) -> float:
    """Area under the ROC curve in [0, 1]; ID positive (the value is the same with OOD positive).

    Equals the probability that a random ID sample outscores a random OOD one, ties counting
    one half; all-tied scores give 0.5.
    """
    return _auroc(*_validated(id_scores, ood_scores))


def aupr_in(id_scores: Any, ood_scores: Any) -> float:
    """Area under the precision-recall curve with **ID positive**, scores as given.

    Computed as scikit-learn's average precision (step-wise sum, no interpolation), the
    estimator the energy/ReAct/ASH code uses.
    """
    return _aupr_in(*_validated(id_scores, ood_scores))


def aupr_out(id_scores: Any, ood_scores: Any) -> float:
    """Area under the precision-recall curve with **OOD positive**, ranked by the negated score."""
    return _aupr_out(*_validated(id_scores, ood_scores))


def fpr_at_tpr(id_scores: Any, ood_scores: Any, tpr: float = 0.95) -> float:
    """FPR at ``tpr`` TPR with **ID positive** (the ASH/ReAct/DICE FPR95), a rate in [0, 1].

    With ``roc_curve`` on ID-positive labels and the scores, thresholds decrease and a sample is
    predicted ID when ``score >= t``. The result is the FPR at the first threshold whose TPR is
    ``>= tpr``: the largest ``t`` keeping at least ``tpr`` of ID samples, and the returned value
    is the fraction of OOD samples with ``score >= t`` (ties with ``t`` count as false positives).
    """
    _check_rate(tpr)
    id_arr, ood_arr = _validated(id_scores, ood_scores)
    return _fpr_at_tpr(id_arr, ood_arr, tpr)


def fpr_at_tpr_ood_positive(id_scores: Any, ood_scores: Any, tpr: float = 0.95) -> float:
    """FPR at ``tpr`` TPR with **OOD positive** (OpenOOD, pytorch-ood), a rate in [0, 1].

    The detector flags a sample as OOD when ``score <= t``; ``t`` is the smallest threshold that
    catches at least ``tpr`` of OOD samples, and the result is the fraction of ID samples with
    ``score <= t`` (ties count as false positives). Implemented as :func:`fpr_at_tpr` on the
    negated scores with the roles of the two sets swapped.
    """
    _check_rate(tpr)
    id_arr, ood_arr = _validated(id_scores, ood_scores)
    return _fpr_at_tpr(-ood_arr, -id_arr, tpr)


_PERCENT_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "FPR95": lambda i, o: 100.0 * _fpr_at_tpr(i, o, 0.95),
    "AUROC": lambda i, o: 100.0 * _auroc(i, o),
    "AUPR_In": lambda i, o: 100.0 * _aupr_in(i, o),
    "AUPR_Out": lambda i, o: 100.0 * _aupr_out(i, o),
}


def ood_metrics(id_scores: Any, ood_scores: Any) -> dict[str, float]:
    """``FPR95``, ``AUROC``, ``AUPR_In``, ``AUPR_Out`` in **percent**, as in the papers' tables.

    ``FPR95`` is :func:`fpr_at_tpr` at 0.95 (ID positive); ``AUPR_In`` has ID positive and
    ``AUPR_Out`` OOD positive.
    """
    id_arr, ood_arr = _validated(id_scores, ood_scores)
    return {name: fn(id_arr, ood_arr) for name, fn in _PERCENT_METRICS.items()}


def metrics_table(
    id_scores: Any,
    ood_scores_by_name: Mapping[str, Any],
    *,
    mean_row: bool = True,
) -> pd.DataFrame:
    """One row of :func:`ood_metrics` per OOD set (in the mapping's order) plus a ``"mean"`` row.

    The mean row is the unweighted average over OOD sets, as the papers' "Average" columns.
    """
    if not ood_scores_by_name:
        raise ValueError("ood_scores_by_name is empty: pass at least one OOD set")
    if mean_row and "mean" in ood_scores_by_name:
        raise ValueError('an OOD set is called "mean", which clashes with the mean row')
    id_arr = _scores_array(id_scores, "id_scores")
    rows = {
        name: ood_metrics(id_arr, _scores_array(ood, f"ood_scores[{name!r}]"))
        for name, ood in ood_scores_by_name.items()
    }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(METRIC_NAMES))
    if mean_row:
        table.loc["mean"] = table.mean(axis=0)
    table.index.name = "ood"
    return table


class _AurocCounter:
    """AUROC of resamples of fixed ID and OOD score arrays, from counts instead of a sort per resample.

    The pooled scores are ranked once into their distinct values. A resample is a multiset of
    indices; with ``c_id[k]`` and ``c_ood[k]`` the number of resampled ID and OOD scores equal to the
    k-th distinct value, the Mann-Whitney form of the AUROC (ties count one half, as
    :func:`sklearn.metrics.roc_auc_score`) is
    ``sum_k c_id[k] * (c_ood[:k].sum() + c_ood[k] / 2) / (n_id * n_ood)``. The sums are of integers
    and halves, exact in float64, so a replicate equals ``roc_auc_score`` on the resampled arrays up to
    the latter's floating-point rounding (``tests/test_metrics.py`` checks it).
    """

    def __init__(self, id_arr: np.ndarray, ood_arr: np.ndarray):
        values, inverse = np.unique(np.concatenate([id_arr, ood_arr]), return_inverse=True)
        self.n_values = values.size
        self.id_rank, self.ood_rank = inverse[:id_arr.size], inverse[id_arr.size:]

    def __call__(self, id_idx: np.ndarray, ood_idx: np.ndarray) -> float:
        c_id = np.bincount(self.id_rank[id_idx], minlength=self.n_values).astype(np.float64)
        c_ood = np.bincount(self.ood_rank[ood_idx], minlength=self.n_values).astype(np.float64)
        below = np.cumsum(c_ood) - c_ood
        return float(c_id @ (below + 0.5 * c_ood)) / (id_idx.size * ood_idx.size)


def bootstrap_ci(
    id_scores: Any,
    ood_scores: Any,
    metric: str | Callable[[np.ndarray, np.ndarray], float] = "AUROC",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` for one metric.

    Each replicate resamples the ID and the OOD scores independently, with replacement and at
    their original sizes (so both classes are always present), and recomputes the metric;
    the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the replicates.
    ``metric`` is a key of :func:`ood_metrics` (result in percent, like that function) or a
    callable ``f(id_array, ood_array) -> float``. Deterministic given ``seed``.
    """
    id_arr, ood_arr = _validated(id_scores, ood_scores)
    if callable(metric):
        fn = metric
    elif metric in _PERCENT_METRICS:
        fn = _PERCENT_METRICS[metric]
    else:
        raise ValueError(f"unknown metric {metric!r}; choose one of {list(METRIC_NAMES)} or pass a callable")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1; got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level}")
    rng = np.random.default_rng(seed)
    replicates = np.empty(n_boot)
    if metric == "AUROC":  # the same resamples, each scored in O(n) by counting (see _AurocCounter)
        counter = _AurocCounter(id_arr, ood_arr)
        for b in range(n_boot):
            replicates[b] = 100.0 * counter(rng.integers(0, id_arr.size, id_arr.size),
                                            rng.integers(0, ood_arr.size, ood_arr.size))
    else:
        for b in range(n_boot):
            id_sample = id_arr[rng.integers(0, id_arr.size, id_arr.size)]
            ood_sample = ood_arr[rng.integers(0, ood_arr.size, ood_arr.size)]
            replicates[b] = fn(id_sample, ood_sample)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    return float(low), float(high)

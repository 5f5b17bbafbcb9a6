"""Metrics: hand-computed cases pin the positive class and the tie rule; sklearn cross-checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from ood_core.metrics import (
    METRIC_NAMES,
    aupr_in,
    aupr_out,
    auroc,
    bootstrap_ci,
    fpr_at_tpr,
    fpr_at_tpr_ood_positive,
    metrics_table,
    ood_metrics,
)


def test_perfect_separation():
    id_s, ood_s = [3.0, 4.0, 5.0], [0.0, 1.0, 2.0]
    assert ood_metrics(id_s, ood_s) == {"FPR95": 0.0, "AUROC": 100.0, "AUPR_In": 100.0, "AUPR_Out": 100.0}
    assert fpr_at_tpr_ood_positive(id_s, ood_s) == 0.0


def test_reversed():
    id_s, ood_s = [0.0, 1.0, 2.0], [3.0, 4.0, 5.0]
    m = ood_metrics(id_s, ood_s)
    assert m["AUROC"] == 0.0 and m["FPR95"] == 100.0
    assert fpr_at_tpr_ood_positive(id_s, ood_s) == 1.0


def test_all_tied():
    id_s, ood_s = np.ones(7), np.ones(5)
    assert auroc(id_s, ood_s) == 0.5
    assert fpr_at_tpr(id_s, ood_s) == 1.0
    assert fpr_at_tpr_ood_positive(id_s, ood_s) == 1.0
    # with every score tied, precision is the class share at the single operating point
    assert aupr_in(id_s, ood_s) == pytest.approx(7 / 12)
    assert aupr_out(id_s, ood_s) == pytest.approx(5 / 12)


def test_asymmetric_case_pins_both_fpr95_conventions_and_ties():
    id_s = np.arange(1, 21, dtype=float)  # 1, 2, ..., 20
    ood_s = np.arange(20) / 2.0  # 0, 0.5, ..., 9.5
    # ID positive: the largest t keeping >= 95% (19/20) of ID is t = 2; OOD scoring >= 2 are
    # 2.0, 2.5, ..., 9.5 = 16 of 20 (the OOD 2.0 tied with t counts; strict > would give 15)
    assert fpr_at_tpr(id_s, ood_s) == 0.8
    # OOD positive: catching 19/20 OOD (score <= t) needs t = 9.0; ID scoring <= 9 are 1..9 =
    # 9 of 20 (the ID 9 tied with t counts; strict < would give 8)
    assert fpr_at_tpr_ood_positive(id_s, ood_s) == 0.45
    # AUROC = P(ID > OOD) + P(tie) / 2 = (sum_{k<=9} (2k + 1/2) + 11 * 20) / 400
    assert auroc(id_s, ood_s) == pytest.approx(314.5 / 400)
    assert ood_metrics(id_s, ood_s)["FPR95"] == pytest.approx(80.0)
    # another TPR level: keep >= 50% of ID -> t = 11, no OOD that high
    assert fpr_at_tpr(id_s, ood_s, tpr=0.5) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    id_s = np.round(rng.normal(1.0, 1.0, 300), 1)  # rounding creates ties
    ood_s = np.round(rng.normal(0.0, 1.5, 200), 1)
    y = np.r_[np.ones(300), np.zeros(200)]
    s = np.r_[id_s, ood_s]
    assert auroc(id_s, ood_s) == pytest.approx(roc_auc_score(y, s))
    assert aupr_in(id_s, ood_s) == pytest.approx(average_precision_score(y, s))
    assert aupr_out(id_s, ood_s) == pytest.approx(average_precision_score(1 - y, -s))
    # FPR95 from its definition: t = the 5% quantile of ID (lower order statistic), ties >= t
    t = np.sort(id_s)[int(np.floor(0.05 * 300))]
    assert fpr_at_tpr(id_s, ood_s) == pytest.approx(np.mean(ood_s >= t))
    t_ood = np.sort(ood_s)[int(np.ceil(0.95 * 200)) - 1]
    assert fpr_at_tpr_ood_positive(id_s, ood_s) == pytest.approx(np.mean(id_s <= t_ood))
    # torch tensors (with grad) are accepted
    assert auroc(torch.tensor(id_s, requires_grad=True), torch.tensor(ood_s)) == auroc(id_s, ood_s)


@pytest.mark.parametrize(
    "fn", [auroc, aupr_in, aupr_out, fpr_at_tpr, fpr_at_tpr_ood_positive, ood_metrics]
)
def test_bad_inputs_raise(fn):
    good = [1.0, 2.0]
    with pytest.raises(ValueError, match="empty"):
        fn([], good)  # single class: no ID
    with pytest.raises(ValueError, match="empty"):
        fn(good, np.array([]))  # single class: no OOD
    with pytest.raises(ValueError, match="NaN or inf"):
        fn([1.0, float("nan")], good)
    with pytest.raises(ValueError, match="NaN or inf"):
        fn(good, [float("inf")])
    with pytest.raises(ValueError, match="1-D"):
        fn(np.ones((2, 2)), good)


def test_bad_tpr_raises():
    with pytest.raises(ValueError):
        fpr_at_tpr([1.0], [0.0], tpr=95)


def test_metrics_table_rows_and_mean():
    id_s = np.arange(1, 21, dtype=float)
    table = metrics_table(id_s, {"easy": id_s - 100.0, "hard": np.arange(20) / 2.0})
    assert isinstance(table, pd.DataFrame)
    assert list(table.index) == ["easy", "hard", "mean"] and list(table.columns) == list(METRIC_NAMES)
    assert table.loc["easy", "AUROC"] == 100.0 and table.loc["hard", "FPR95"] == pytest.approx(80.0)
    assert table.loc["mean", "FPR95"] == pytest.approx(40.0)
    with pytest.raises(ValueError):
        metrics_table(id_s, {})


def test_bootstrap_contains_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = rng.normal(1.0, 1.0, 40), rng.normal(0.0, 1.0, 40)
    large = rng.normal(1.0, 1.0, 1000), rng.normal(0.0, 1.0, 1000)
    lo_s, hi_s = bootstrap_ci(*small, metric="AUROC", n_boot=200)
    lo_l, hi_l = bootstrap_ci(*large, metric="AUROC", n_boot=200)
    assert lo_s <= ood_metrics(*small)["AUROC"] <= hi_s
    assert lo_l <= ood_metrics(*large)["AUROC"] <= hi_l
    assert hi_l - lo_l < 0.5 * (hi_s - lo_s)
    # deterministic given the seed; other metrics and callables work
    assert bootstrap_ci(*small, n_boot=50, seed=3) == bootstrap_ci(*small, n_boot=50, seed=3)
    lo, hi = bootstrap_ci(*small, metric="FPR95", n_boot=50)
    assert 0.0 <= lo <= ood_metrics(*small)["FPR95"] <= hi <= 100.0
    lo, hi = bootstrap_ci(*small, metric=lambda i, o: float(np.mean(i) - np.mean(o)), n_boot=50)
    assert lo < hi
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci(*small, metric="AUC")
    with pytest.raises(ValueError):
        bootstrap_ci(*small, level=95)


def test_bootstrap_auroc_counts_equal_sklearn_on_the_same_resamples():
    # the AUROC bootstrap scores each resample by counting; the generic path (sklearn per resample,
    # reached through a callable) must give the same interval, ties included
    rng = np.random.default_rng(5)
    id_s = np.round(rng.normal(0.4, 1.0, 300), 1)  # rounded: many ties within and across classes
    ood_s = np.round(rng.normal(0.0, 1.0, 200), 1)
    fast = bootstrap_ci(id_s, ood_s, metric="AUROC", n_boot=300, seed=2)
    slow = bootstrap_ci(id_s, ood_s, metric=lambda i, o: 100.0 * roc_auc_score(
        np.r_[np.ones(i.size), np.zeros(o.size)], np.r_[i, o]), n_boot=300, seed=2)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-9)
    assert fast[0] < 100 * roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[id_s, ood_s]) < fast[1]

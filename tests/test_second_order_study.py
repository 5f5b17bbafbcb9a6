"""The table steps of chapter 07's study (ood_core.second_order_study) on small hand-made tables."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from ood_core import claims, names
from ood_core import second_order_study as sos


def _second_order() -> pd.DataFrame:
    """Three pairs: two CV-Glow rows (closed forms defined), one Glow row (closed forms NaN)."""
    index = pd.MultiIndex.from_tuples([("CV-Glow on A", "x"), ("CV-Glow on A", "y"), ("Glow on A", "x")],
                                      names=[names.SO_MODEL, names.OOD_SET])
    nan = np.nan
    return pd.DataFrame({names.SO_MEASURED: [0.5, -0.2, 0.4],
                         names.SO_CLOSED_UNIT: [1.0, 0.3, nan],   # one sign right of 2
                         names.SO_CLOSED_LEARNED: [2.0, -0.1, nan],  # both right
                         names.SO_LINEARISED_LEARNED: [-1.0, -0.4, nan],  # one right
                         names.SO_EQ5_DIAG: [0.5, 0.2, 0.8],  # two of 3
                         names.SO_TAYLOR_FULL: [0.25, -0.2, 0.4]}, index=index)  # all 3


def test_prediction_agreement_counts_signs_and_skips_undefined_predictions():
    agreement = sos.prediction_agreement(_second_order())
    assert list(agreement.index) == list(sos.PREDICTORS)
    assert agreement[names.SO_PAIRS].to_dict() == {names.SO_CLOSED_UNIT: 2, names.SO_CLOSED_LEARNED: 2,
                                                    names.SO_LINEARISED_LEARNED: 2, names.SO_EQ5_DIAG: 3,
                                                    names.SO_TAYLOR_FULL: 3}
    assert agreement[names.SO_SIGN_AGREES].to_dict() == {names.SO_CLOSED_UNIT: 1, names.SO_CLOSED_LEARNED: 2,
                                                          names.SO_LINEARISED_LEARNED: 1, names.SO_EQ5_DIAG: 2,
                                                          names.SO_TAYLOR_FULL: 3}
    # closed form (learned σ): ratios 4 and 0.5 -> median 2.25; Taylor: 0.5, 1, 1 -> 1
    assert agreement.loc[names.SO_CLOSED_LEARNED, names.SO_MEDIAN_RATIO] == pytest.approx(2.25)
    assert agreement.loc[names.SO_TAYLOR_FULL, names.SO_MEDIAN_RATIO] == pytest.approx(1.0)


def test_evidence_feeds_the_claims_rule():
    evidence = sos.second_order_evidence(sos.prediction_agreement(_second_order()))
    assert evidence == {"closed_ok": 2, "n_cv": 2, "taylor_ok": 3, "n_all": 3, "eq5_ok": 2}
    row = claims.assess("second_order_predicts_gap", evidence, "test")
    assert row["verdict"] == claims.REPRODUCED  # every CV-Glow sign right under the closed form
    worse = sos.second_order_evidence(sos.prediction_agreement(_second_order().assign(
        **{names.SO_CLOSED_LEARNED: [-2.0, 0.1, np.nan]})))
    assert worse["closed_ok"] == 0
    assert claims.assess("second_order_predicts_gap", worse, "test")["verdict"] == claims.NOT


def test_curvature_agreement_ratio_orders_and_correlation():
    index = pd.MultiIndex.from_product([["CV-Glow on A"], range(4)], names=[names.SO_MODEL, "squeezed channel"])
    hutchinson = np.array([-1.0, -2.0, -4.0, -8.0])
    curvature = pd.DataFrame({names.SO_CLOSED_LEARNED: hutchinson / 100,  # 2 orders of magnitude flatter
                              names.SO_LINEARISED_LEARNED: hutchinson * 2,  # twice as curved, same shape
                              names.SO_HESSIAN_DIAG: hutchinson}, index=index)
    table = sos.curvature_agreement(curvature)
    closed = table.loc[("CV-Glow on A", names.SO_CLOSED_LEARNED)]
    exact = table.loc[("CV-Glow on A", names.SO_LINEARISED_LEARNED)]
    assert closed[names.SO_MEDIAN_RATIO_HUTCHINSON] == pytest.approx(0.01)
    assert closed[names.SO_ORDERS] == pytest.approx(-2.0)
    assert exact[names.SO_MEDIAN_RATIO_HUTCHINSON] == pytest.approx(2.0)
    assert exact[names.SO_CORRELATION] == pytest.approx(1.0)


def test_shrinkage_fit_is_least_squares_through_the_origin():
    ks = np.arange(1, 5)
    summary = pd.DataFrame({"ID": "A", "weights": "w", "quantity": "q", "K": ks,
                            "mean": -0.3 * ks + np.array([0.01, -0.01, 0.02, -0.02]), "10%": 0.0, "90%": 0.0})
    theory = pd.Series({("A", "w", "q"): -0.3})
    shrinkage, last = sos.shrinkage_fit(summary, theory)
    mean = summary["mean"].to_numpy()
    slope = float(np.sum(ks * mean) / np.sum(ks**2))
    assert shrinkage.loc[("A", "w", "q"), names.SO_PER_STEP] == pytest.approx(slope)
    assert shrinkage.loc[("A", "w", "q"), "largest K"] == 4
    assert shrinkage.loc[("A", "w", "q"), names.SO_TYPICAL] == pytest.approx(np.exp(mean[-1]))
    assert last.loc[("A", "w", "q"), "K"] == 4


def test_study_result_is_frozen_with_evidence_keyed_by_claim():
    fields = {f.name for f in dataclasses.fields(sos.SecondOrderStudy)}
    assert {"second_order", "curvature", "depth_summary", "shrinkage", "noise_bpd", "agreement", "evidence"} <= fields
    assert sos.SecondOrderStudy.__dataclass_params__.frozen
    assert set(sos.CURVATURE_FORMS) <= set(sos.PREDICTORS)
    assert sos.sci(1234567.0) == "1.23e+06" and sos.sci(0.012345) == "0.0123"

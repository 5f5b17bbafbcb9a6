"""The ASH benchmark chapter's computation (ood_core.ash_benchmark): evidence from typed tables, the
OpenOOD comparison and the result type, on small hand-made tables (nothing is trained or read)."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from ood_core import ash_benchmark as ab, claims, classifier_study as cs, names


def _long(aurocs: dict[str, dict[str, float]]) -> pd.DataFrame:
    """A long benchmark table (method x set rows plus the mean rows) with FPR95 = 100 - AUROC."""
    rows = []
    for method, per_set in aurocs.items():
        for ood, a in per_set.items():
            rows.append({names.METHOD: method, names.OOD: ood, names.FPR95: 100 - a, names.AUROC: a, names.AUPR_IN: a,
                         names.AUPR_OUT: a,
                         names.ID_ACCURACY: 90.0})
        mean = float(np.mean(list(per_set.values())))
        rows.append({names.METHOD: method, names.OOD: names.MEAN_ROW, names.FPR95: 100 - mean, names.AUROC: mean,
                     names.AUPR_IN: mean, names.AUPR_OUT: mean,
                     names.ID_ACCURACY: 90.0})
    return pd.DataFrame(rows)


AUROCS = {"energy": {"near": 80.0, "far": 90.0, "noise": 99.0},
          ab.ASH_S: {"near": 70.0, "far": 95.0, "noise": 10.0},
          ab.ASH_B: {"near": 60.0, "far": 85.0, "noise": 50.0},
          ab.ASH_RAND: {"near": 75.0, "far": 89.0, "noise": 90.0},
          ab.SCALE: {"near": 72.0, "far": 96.0, "noise": 20.0},
          "KNN": {"near": 85.0, "far": 92.0, "noise": 95.0},
          "MSP": {"near": 82.0, "far": 91.0, "noise": 97.0}}


def test_near_far_columns_are_the_names_constants():
    nf = cs.near_far_summary(_long(AUROCS), near=["near"], synthetic=["noise"])
    assert [names.NEAR_FPR95, names.NEAR_AUROC, names.FAR_FPR95, names.FAR_AUROC] == list(nf.columns[:4])
    assert nf.loc[ab.ASH_S, names.NEAR_AUROC] == 70 and nf.loc[ab.ASH_S, names.FAR_AUROC] == 95  # noise in neither
    assert nf.loc["energy", names.OPENOOD_NEAR_AUROC] == cs.OPENOOD_CIFAR10["energy"][0]
    assert names.NEAR_FAR_COLUMNS["far"] == (names.FAR_FPR95, names.FAR_AUROC)


def test_benchmark_evidence_from_typed_tables():
    long = _long(AUROCS)
    summ, nf = cs.summary(long), cs.near_far_summary(long, near=["near"], synthetic=["noise"])
    ev = ab.benchmark_evidence("cpu profile", {"cpu profile": (summ, nf), "other": (summ, nf)})
    assert list(ev)[:7] == [("ash_s_beats_energy", None), ("ash_b_beats_energy", None), ("ash_rand_works", None),
                            ("ash_s_beats_energy_near", None), ("ash_s_beats_energy_far", None),
                            ("scale_beats_ash_s", None), ("openood_ranking", None)]
    assert ("ash_s_beats_energy", "other") in ev
    near = ev[("ash_s_beats_energy_near", None)]
    assert (near["auroc"], near["energy_auroc"], near["fpr"]) == (70.0, 80.0, 30.0)
    assert claims.assess("ash_s_beats_energy_near", near, "x")["verdict"] == claims.NOT
    assert claims.assess("ash_s_beats_energy_far", ev[("ash_s_beats_energy_far", None)], "x")["verdict"] == \
        claims.REPRODUCED
    ranking = ev[("openood_ranking", None)]
    assert ranking["ours_top3"][0] == "KNN" and ranking["ash"] == ab.ASH_B
    # every entry is evidence the claims' rules can read
    for (claim_id, source), e in ev.items():
        claims.assess(claim_id, e, source or "cpu profile")


def test_no_near_set_is_not_testable_for_the_own_source_only():
    long = _long({m: {k: v for k, v in s.items() if k != "near"} for m, s in AUROCS.items()})
    summ, nf = cs.summary(long), cs.near_far_summary(long, near=["near"], synthetic=["noise"])
    ev = ab.benchmark_evidence("own", {"own": (summ, nf), "other": (summ, nf)})
    assert ev[("ash_s_beats_energy_near", None)] == {"testable": False,
                                                     "why": "no near-OOD set is in the offline mirror"}
    assert ev[("openood_ranking", None)]["testable"] is False
    assert ("ash_s_beats_energy_near", "other") not in ev and ("openood_ranking", "other") not in ev
    assert ("ash_s_beats_energy_far", "other") in ev


def test_openood_comparison_and_baseline_gap():
    nf = cs.near_far_summary(_long(AUROCS), near=["near"], synthetic=["noise"])
    vs = ab.openood_comparison(nf)
    assert list(vs.columns) == [names.NEAR_AUROC_OURS, names.NEAR_AUROC_OPENOOD, names.NEAR_DELTA,
                                names.FAR_AUROC_OURS, names.FAR_AUROC_OPENOOD, names.FAR_DELTA]
    assert ab.ASH_S not in vs.index  # OpenOOD has no ASH-S@95 row
    assert vs.loc["KNN", names.NEAR_DELTA] == pytest.approx(85.0 - cs.OPENOOD_CIFAR10["KNN"][0])
    present, gap = ab.baseline_gap(vs)
    assert present == ["MSP", "energy", "KNN"]
    expected = np.median(np.abs(vs.loc[present, [names.NEAR_DELTA, names.FAR_DELTA]].to_numpy()))
    assert gap == pytest.approx(expected)
    assert np.isnan(ab.baseline_gap(vs.iloc[:0])[1])


def test_result_type_is_frozen_and_keyed_by_claim_and_source():
    fields = {f.name: f.type for f in dataclasses.fields(ab.AshBenchmark)}
    assert {"summary", "near_far", "openood", "glance", "evidence", "network_results", "paper_results"} <= set(fields)
    assert "dict[tuple[str, str | None], dict]" in str(fields["evidence"])
    assert ab.AshBenchmark.__dataclass_params__.frozen
    assert all(c in claims.CLAIMS for c in ("ash_s_densenet", "ash_state_of_the_art", "openood_ranking"))

"""The ASH ablations' tables and sentences from small hand-made tables (no network, no cache)."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from ood_core import ash_ablations as aa, claims, classifier_study as cs, names


def _sweep() -> pd.DataFrame:
    rows = []
    for shaper, accs, aurocs in (("ASH-P", [94.0, 93.8, 90.0], [90.0, 91.0, 92.0]),
                                 ("ASH-S", [94.0, 93.5, 93.2], [89.0, 95.0, 93.0])):
        for p, acc, auroc in zip((0, 50, 90), accs, aurocs):
            rows.append({names.SHAPER: shaper, names.PERCENTILE: p, names.ID_ACCURACY: acc, names.FPR95: 30.0,
                         names.AUROC: auroc})
    return pd.DataFrame(rows)


def test_sweep_summary_reads_the_unpruned_row_and_the_best_percentile():
    table = aa.sweep_summary({"net": _sweep()})
    assert table.index.names == [names.NETWORK, names.SHAPER]
    p_row, s_row = table.loc[("net", "ASH-P")], table.loc[("net", "ASH-S")]
    assert p_row[aa.LARGEST_P] == 50 and s_row[aa.LARGEST_P] == 90  # within 1 point of 94.0
    assert s_row[aa.BEST_P] == 50 and s_row[aa.BEST_AUROC] == 95.0 and s_row[aa.AUROC_AT_90] == 93.0
    assert p_row[aa.ENERGY_AUROC] == s_row[aa.ENERGY_AUROC] == 90.0  # ASH-P at p = 0 is plain energy
    assert claims.accuracy_evidence(_sweep()) == {"base": 94.0, "at_p": {"ASH-S": 93.2}, "p": 90}


def _anatomy(p: float = 95) -> pd.DataFrame:
    return pd.DataFrame({
        names.SET: ["CIFAR-10 test", "MNIST test", "noise"], names.MEDIAN_RATIO: [2.0, 3.0, 1.5],
        names.AUROC_RATIO: [np.nan, 40.0, 80.0], names.AUROC_ENERGY: [np.nan, 90.0, 70.0],
        names.auroc_pruned(p): [np.nan, 91.0, 72.0], names.auroc_scaled(p): [np.nan, 60.0, 85.0],
        names.auroc_both(p): [np.nan, 45.0, 90.0]})


def test_anatomy_columns_keep_their_values():
    assert (names.auroc_both(95.0), names.auroc_pruned(95), names.auroc_scaled(95)) == (
        "AUROC ASH-S@95 (both)", "AUROC ASH-P@95 (prune)", "AUROC SCALE@95 (scale)")
    assert (names.LOCAL_THRESHOLD, names.GLOBAL_THRESHOLD) == ("local (per sample)", "global (from ID train)")


def test_anatomy_verdict_and_evidence_from_one_table():
    a = _anatomy()
    text = aa.anatomy_verdict("net", a)
    assert "holds on 1 of 2 sets (noise) and fails on MNIST test" in text
    assert "larger median, which ASH-S scales up more than ID: MNIST test." in text
    assert "wrong way (AUROC < 50 %) on MNIST test, and its side of 50 % predicts whether ASH-S beats energy on 2 of 2" in text
    assert "pruning alone +1.5, scaling alone -7.5, both -12.5 points" in text
    assert claims.per_set_evidence(a) == {"sets": {"MNIST test": (45.0, 90.0, 40.0), "noise": (90.0, 70.0, 80.0)}}
    row = cs.anatomy_summary(a)
    assert row[names.ASH_S_EFFECT] == "hurts" and row[names.mean_auroc_ash_s(95)] == pytest.approx(67.5)
    assert row[names.ASH_S_WINS] == "1 of 2" and row[names.OOD_MEDIAN_RATIO] == pytest.approx(2.25)


def test_local_table_and_evidence():
    lg = pd.DataFrame({names.SHAPER: ["ASH-S"] * 4, names.PERCENTILE: [80, 80, 90, 90],
                       names.THRESHOLD: [names.LOCAL_THRESHOLD, names.GLOBAL_THRESHOLD] * 2,
                       names.AUROC: [90.0, 85.0, 80.0, 85.0], names.ID_ACCURACY: 93.0, names.PRUNED_ON_ID: 80.0})
    wide = aa.local_table(lg)
    assert "AUROC (local)" in wide.columns and "pruned % (global)" in wide.columns
    assert wide.loc[("ASH-S", 90), "AUROC (global)"] == 85.0
    assert claims.local_evidence(lg) == {"wins": 0.5, "pairs": 2}


def test_result_is_frozen_and_typed():
    assert dataclasses.is_dataclass(aa.AshAblations) and aa.AshAblations.__dataclass_params__.frozen
    fields = {f.name for f in dataclasses.fields(aa.AshAblations)}
    assert {"evidence", "sweep_table", "anatomy", "local", "where", "paper", "summary_lines"} <= fields
    assert set(aa.CLAIM_IDS) <= set(claims.CLAIMS)

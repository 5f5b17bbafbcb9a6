"""The remedies study (chapter 15): the two-way table, the "what works" lines and the claims' evidence,
on synthetic scores with known AUROCs."""

import numpy as np
import pandas as pd
import pytest

from ood_core import claims, detectors, names, remedies_study as rs

FWD, REV = names.pair_title("FashionMNIST", "MNIST"), names.pair_title("MNIST", "FashionMNIST")
GOOD, ONE_WAY = detectors.title("feature_flow"), detectors.title("input_complexity:codec=png")


def _scores(auroc: float) -> dict[str, np.ndarray]:
    """ID and OOD scores whose AUROC is exactly ``auroc`` %: ID all 1, ``auroc`` OOD scores below, the rest above."""
    return {names.ID_TEST: np.ones(100), "ood": np.where(np.arange(100) < auroc, 0.0, 2.0)}


def _long() -> pd.DataFrame:
    """A seed table of two detectors, 3 seeds, both directions, built with :func:`detectors.seed_table`."""
    per_direction = {FWD: {GOOD: (97, 99, 98), ONE_WAY: (99, 99, 99)}, REV: {GOOD: (98, 96, 97), ONE_WAY: (20, 30, 25)}}
    families = {GOOD: names.CLASSIFIER, ONE_WAY: names.GENERATIVE}
    frames = []
    for pair, aurocs in per_direction.items():
        id_title, ood_title = pair.split(" → ")
        by_seed = {s: {det: _scores(a[s]) for det, a in aurocs.items()} for s in range(3)}
        frames.append(detectors.seed_table(by_seed, families, {"ood": ood_title}, id_title))
    long = pd.concat(frames, ignore_index=True)
    long.insert(0, names.PAIR, [names.pair_title(i, o) for i, o in zip(long["ID"], long[names.OOD_SET])])
    return long


def test_two_way_table_ranks_by_the_worse_direction():
    wide = rs.two_way_table(_long(), FWD, REV)
    assert list(wide.index) == [GOOD, ONE_WAY]  # ONE_WAY is better forward but fails the reversed pair
    assert wide.loc[GOOD, FWD] == pytest.approx(98) and wide.loc[ONE_WAY, REV] == pytest.approx(25)
    assert wide.loc[GOOD, names.std_column(REV)] == pytest.approx(1) and wide.loc[ONE_WAY, names.std_column(FWD)] == 0
    assert list(wide[names.WORSE_DIRECTION]) == pytest.approx([97, 25])


def test_direction_status_uses_the_claims_thresholds():
    goal, floor = claims.TWO_WAYS_GOAL, claims.TWO_WAYS_FLOOR
    assert rs.direction_status(goal, goal + 1) == f"reaches {goal} % on both directions"
    assert rs.direction_status(99.0, floor - 10) == f"fails the reversed pair ({floor - 10:.1f} %)"
    assert rs.direction_status(floor + 1, 99.0) == f"stays below {goal} % on the forward pair"


def test_what_works_lines_name_numbers_status_and_mechanism():
    lines = rs.what_works_lines(rs.two_way_table(_long(), FWD, REV), FWD, REV)
    assert lines[0] == (f"* **{GOOD}** — 98.0 % / 97.0 % (forward / reversed): reaches 95 % on both directions; "
                        f"{rs.MECHANISMS['flow on classifier features']}.")
    assert "fails the reversed pair (25.0 %)" in lines[1] and rs.MECHANISMS["input complexity"] in lines[1]


def test_two_way_evidence_feeds_the_claim_rule():
    long = _long()
    good = rs.two_way_evidence(long, "feature_flow", FWD, REV, "ref")
    assert good["forward"] == pytest.approx([97, 99, 98]) and good["reverse"] == pytest.approx([98, 96, 97])
    assert claims.assess("kirichenko_embeddings", good, "test")["verdict"] == claims.REPRODUCED
    one_way = rs.two_way_evidence(long, "input_complexity:codec=png", FWD, REV, "ref")
    assert claims.assess("serra_input_complexity", one_way, "test")["verdict"] == claims.PARTLY


def test_every_pair_evidence_joins_both_directions_and_cifar_sets():
    wide = rs.two_way_table(_long(), FWD, REV)
    grid = pd.DataFrame({"SVHN": [91.0, 40.0]}, index=[GOOD, ONE_WAY])
    e = rs.every_pair_evidence(wide, grid, "feature_flow", FWD, REV)
    assert e == {"method": GOOD, "aurocs": {FWD: pytest.approx(98), REV: pytest.approx(97), "CIFAR-10 → SVHN": 91.0}}
    assert claims.assess("morningstar_dose", e, "test")["verdict"] == claims.REPRODUCED


def test_result_fields():
    fields = {f for f in rs.Remedies.__dataclass_fields__}
    assert {"two_ways", "by_seed", "cifar_grid", "what_works", "evidence"} <= fields
    assert rs.Remedies.__dataclass_params__.frozen
    assert set(rs.TWO_WAY_CLAIMS) | {"morningstar_dose", "typicality_needs_batches", "kirichenko_local"} <= set(
        claims.CLAIMS)

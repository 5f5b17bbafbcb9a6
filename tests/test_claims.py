"""The claims registry: rules on hand-made evidence, the evidence store, loud failures, chapter order."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from ood_core import claims, names
from ood_core.artifacts import ArtifactStore

REPO = Path(__file__).resolve().parent.parent


def _bpd_table(ood_bpd, auroc, ood_logdet=1.0, ood_pz=2.0):
    return pd.DataFrame({names.MEAN_BPD: [3.0, ood_bpd], names.AUROC_LOGP: [float("nan"), auroc],
                         names.LOGDET_BPD: [1.5, ood_logdet], names.PZ_BPD: [1.5, ood_pz]}, index=["A test", "B test"])


def _verdict(claim_id, evidence):
    return claims.assess(claim_id, evidence, "s")["verdict"]


def test_verdict_truth_table():
    assert claims.verdict(True, False) == "reproduced" and claims.verdict(False, True) == "partly"
    assert claims.verdict(False, False) == "not"
    with pytest.raises(TypeError, match="bool"):
        claims.verdict(96.0, True)


def test_inversion_rule():
    inv = "glow_fashion_mnist_prefers_mnist"
    assert _verdict(inv, claims.inversion_evidence(_bpd_table(2.0, 10.0), "A test", "B test")) == "reproduced"
    assert _verdict(inv, claims.inversion_evidence(_bpd_table(2.0, 60.0), "A test", "B test")) == "partly"
    assert _verdict(inv, claims.inversion_evidence(_bpd_table(4.0, 90.0), "A test", "B test")) == "not"
    row = claims.assess(inv, claims.inversion_evidence(_bpd_table(2.0, 10.0), "A test", "B test", 1e-7), "s")
    assert "B test 2.000 vs A test 3.000 bits/dim; AUROC of log p 10.0 %" in row["our evidence"]
    assert "log-det std" in row["our evidence"]


def test_volume_and_throughout_rules():
    vol = "volume_term_drives_gap"
    assert _verdict(vol, claims.volume_evidence(_bpd_table(2.0, 10.0, 0.5, 1.4), "A test", "B test")) == "reproduced"
    assert _verdict(vol, claims.volume_evidence(_bpd_table(2.0, 10.0, 1.4, 0.5), "A test", "B test")) == "partly"
    assert _verdict(vol, claims.volume_evidence(_bpd_table(2.0, 10.0, 2.0, 0.5), "A test", "B test")) == "not"
    h = pd.DataFrame({names.curve_column(names.ID_TEST): [5, 4, 3], names.curve_column("X"): [4, 5, 2]})
    e = claims.throughout_evidence(h, "X")
    assert e == {"share_below": pytest.approx(2 / 3), "last_below": True, "evaluations": 3}
    assert _verdict("fashion_mnist_mnist_throughout_training", e) == "partly"


def test_ash_rules():
    summ = pd.DataFrame({names.FPR95: [30.0, 20.0, 40.0], names.AUROC: [90.0, 95.0, 89.0]},
                        index=["energy", "ASH-S@95", "ASH-RAND@90"])
    assert _verdict("ash_s_beats_energy", claims.beats_energy_evidence(summ, "ASH-S@95")) == "reproduced"
    assert _verdict("ash_rand_works", claims.random_evidence(summ, "ASH-RAND@90")) == "reproduced"
    where = pd.DataFrame({"stage": ["layer3", "penultimate"], names.AUROC: [91.0, 90.0]})
    assert _verdict("penultimate_best", claims.penultimate_evidence(where)) == "partly"
    sweep = pd.DataFrame({"shaper": ["ASH-P", "ASH-S", "ASH-S", "ASH-B", "ASH-B"], "percentile": [0, 0, 90, 0, 90],
                          names.ID_ACCURACY: [94.0, 94.3, 93.5, 94.3, 91.5]})
    e = claims.accuracy_evidence(sweep)
    assert _verdict("ash_preserves_accuracy", e) == "not" and e["base"] == 94.0
    lg = pd.DataFrame({"shaper": ["ASH-S"] * 4, "percentile": [80, 80, 90, 90],
                       "threshold": ["local (per sample)", "global (from ID train)"] * 2, names.AUROC: [90, 85, 80, 85]})
    assert _verdict("local_beats_global", claims.local_evidence(lg)) == "partly"


def test_record_then_ledger_and_sources(tmp_path):
    store = ArtifactStore(tmp_path)
    for cid in claims.CLAIMS:
        claims.not_testable(cid, "synthetic test", "smoke", 0, store=store)
    row = claims.record("glow_fashion_mnist_prefers_mnist",
                        claims.inversion_evidence(_bpd_table(2.0, 10.0), "A test", "B test"), "smoke", 0, store=store)
    assert row["verdict"] == "reproduced" and row["source"] == "smoke profile"
    claims.record("glow_fashion_mnist_prefers_mnist", claims.inversion_evidence(_bpd_table(4.0, 90.0), "A test", "B test"),
                  "smoke", 0, source="paper profile (GPU)", store=store)
    table = claims.ledger("smoke", 0, store=store)
    assert list(table.columns) == list(claims.COLUMNS)
    rows = table[table["claim"] == claims.claim("glow_fashion_mnist_prefers_mnist").text]
    assert list(rows["source"]) == ["smoke profile", "paper profile (GPU)"]  # own profile first
    assert list(rows["verdict"]) == ["reproduced", "not"]
    assert (table["verdict"] == claims.NOT_TESTABLE).sum() == len(claims.CLAIMS) - 1
    counts = claims.verdict_counts(table)
    assert counts.to_numpy().sum() == len(table)


def test_ledger_fails_loudly_naming_the_chapters_that_did_not_run(tmp_path):
    store = ArtifactStore(tmp_path)
    claims.record("ash_rand_works", {"method": "ASH-RAND@90", "auroc": 80.0, "energy_auroc": 90.0}, "cpu", 0,
                  store=store)
    with pytest.raises(claims.MissingEvidence, match="07_second_order.*(--only|build_book)"):
        claims.ledger("cpu", 0, store=store)


def test_bad_evidence_fails_in_the_chapter_not_in_the_ledger(tmp_path):
    with pytest.raises(KeyError):
        claims.record("ash_rand_works", {"auroc": 80.0}, "cpu", 0, store=ArtifactStore(tmp_path))
    with pytest.raises(ValueError, match="unknown claim"):
        claims.record("ash_rand_work", {}, "cpu", 0, store=ArtifactStore(tmp_path))


def test_every_claim_is_measured_by_an_existing_chapter_before_the_ledger():
    toc = yaml.safe_load((REPO / "book" / "_toc.yml").read_text())
    order = [c["file"].removeprefix("chapters/") for part in toc["parts"] for c in part["chapters"]]
    ledger_at = order.index("16_claims_ledger")
    for chapter in claims.chapters():
        assert (REPO / "notebooks" / f"{chapter}.py").is_file(), chapter
        assert order.index(chapter) < ledger_at, f"{chapter} must come before the ledger"
        text = (REPO / "notebooks" / f"{chapter}.py").read_text()
        ids = [c.id for c in claims.CLAIMS.values() if chapter in c.chapters]
        for cid in ids:  # the chapter names every claim it is registered for
            assert cid in text, f"{chapter} does not record {cid}"

"""Ledger verdict rules on hand-made tables."""

import pandas as pd

from ood_core import ledger

AUC = "AUROC % (ID test vs set, score = log p)"


def _bpd_table(ood_bpd, auroc, ood_logdet=1.0, ood_pz=2.0):
    return pd.DataFrame({"mean bpd": [3.0, ood_bpd], AUC: [float("nan"), auroc],
                         "log-det term (bpd)": [1.5, ood_logdet], "log p(z) term (bpd)": [1.5, ood_pz]},
                        index=["A test", "B test"])


def test_inversion_rules():
    assert ledger.inversion(_bpd_table(2.0, 10.0), "A test", "B test", "s")["verdict"] == "reproduced"
    assert ledger.inversion(_bpd_table(2.0, 60.0), "A test", "B test", "s")["verdict"] == "partly"
    assert ledger.inversion(_bpd_table(4.0, 90.0), "A test", "B test", "s")["verdict"] == "not"
    assert ledger.svhn_headline(False)["verdict"] == ledger.NOT_TESTABLE


def test_volume_term_rules():
    assert ledger.volume_term(_bpd_table(2.0, 10.0, ood_logdet=0.5, ood_pz=1.4), "A test", "B test", "s")["verdict"] == "reproduced"
    assert ledger.volume_term(_bpd_table(2.0, 10.0, ood_logdet=1.4, ood_pz=0.5), "A test", "B test", "s")["verdict"] == "partly"
    assert ledger.volume_term(_bpd_table(2.0, 10.0, ood_logdet=2.0, ood_pz=0.5), "A test", "B test", "s")["verdict"] == "not"


def test_ash_rules():
    summ = pd.DataFrame({"FPR95": [30.0, 20.0, 40.0], "AUROC": [90.0, 95.0, 89.0]}, index=["energy", "ASH-S@95", "ASH-RAND@90"])
    assert ledger.ash_beats_energy(summ, "ASH-S@95", "s")["verdict"] == "reproduced"
    assert ledger.ash_rand_works(summ, "ASH-RAND@90", "s")["verdict"] == "reproduced"
    where = pd.DataFrame({"stage": ["layer3", "penultimate"], "AUROC": [91.0, 90.0]})
    assert ledger.penultimate_best(where, "s")["verdict"] == "partly"
    sweep = pd.DataFrame({"shaper": ["ASH-P", "ASH-S", "ASH-S", "ASH-B", "ASH-B"], "percentile": [0, 0, 90, 0, 90],
                          "ID accuracy (%)": [94.0, 94.3, 93.5, 94.3, 91.5]})
    assert ledger.accuracy_preserved(sweep, "s")["verdict"] == "not"
    assert "unpruned 94.00 %" in ledger.accuracy_preserved(sweep, "s")["our evidence"]
    lg = pd.DataFrame({"shaper": ["ASH-S"] * 4, "percentile": [80, 80, 90, 90],
                       "threshold": ["local (per sample)", "global (from ID train)"] * 2, "AUROC": [90, 85, 80, 85]})
    assert ledger.local_beats_global(lg, "s")["verdict"] == "partly"


def test_over_training_rule():
    h = pd.DataFrame({"bpd: ID test": [5, 4, 3], "bpd: X": [4, 3, 2]})
    assert ledger.over_training(h, "bpd: X", "s")["verdict"] == "reproduced"

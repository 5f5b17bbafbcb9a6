"""The unified benchmark: same images enforced, one metric code, generative detectors' algebra."""

import numpy as np
import pytest
import torch

from ood_core import data, metrics, unified
from ood_core.glow_study import GlowEvaluation


def _glow_eval(seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    sets = {"ID train": data.synthetic("gaussian", 40, (1, 8, 8), seed=1),
            "ID test": data.synthetic("gaussian", 30, (1, 8, 8), seed=2),
            "uniform": data.synthetic("uniform", 20, (1, 8, 8), seed=3),
            "constant": data.synthetic("constant", 20, (1, 8, 8), seed=4)}
    scores = {k: {"log_px": rng.normal(-100.0 + shift, 5.0, len(s))} for k, s in sets.items()}
    return GlowEvaluation(trained=None, sets=sets, missing={}, scores=scores)


class _FakeClassifierEval:
    def __init__(self, glow_ev, tamper=False):
        self.id_set = glow_ev.sets["ID test"]
        self.ood_sets = {k: v for k, v in glow_ev.sets.items() if k in ("uniform", "constant")}
        if tamper:
            x = self.ood_sets["uniform"].x.clone()
            x[0, 0, 0, 0] ^= 1
            self.ood_sets["uniform"] = data.ImageSet(x, self.ood_sets["uniform"].y, "uniform noise")


def test_same_images_are_enforced():
    g = _glow_eval()
    assert unified.check_same_images(g, _FakeClassifierEval(g)) == ["uniform", "constant"]
    with pytest.raises(ValueError, match="differ"):
        unified.check_same_images(g, _FakeClassifierEval(g, tamper=True))


def test_generative_detectors_algebra_and_table():
    g = _glow_eval()
    det = unified.generative_detectors(g, cv_ev=g, background_ev=g, codecs=("lzma",))
    for k in ("ID test", "uniform", "constant"):
        assert np.allclose(det["likelihood ratio"][k], 0.0)  # identical background: LLR = 0
        assert np.array_equal(det["Glow log p"][k], g.scores[k]["log_px"])
    h = -g.scores["ID train"]["log_px"].mean()
    assert np.allclose(det["typicality (M=1)"]["uniform"], -np.abs(-g.scores["uniform"]["log_px"] - h))
    fam = {d: "generative" for d in det}
    t = unified.unified_table(det, fam, {k: s.name for k, s in g.sets.items()}, n_boot=50)
    row = t[(t.detector == "Glow log p") & (t["OOD set"] == "constant")].iloc[0]
    direct = metrics.ood_metrics(g.scores["ID test"]["log_px"], g.scores["constant"]["log_px"])
    assert row["AUROC"] == pytest.approx(direct["AUROC"]) and row["FPR95"] == pytest.approx(direct["FPR95"])
    assert row["AUROC low"] <= row["AUROC"] <= row["AUROC high"]
    typ = unified.typicality_table(g, [1, 5])
    assert set(typ["batch_size"]) == {1, 5} and typ["AUROC"].between(0, 100).all()

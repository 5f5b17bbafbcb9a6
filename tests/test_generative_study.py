"""VAE/PixelCNN study plumbing, ensembles and the seed study: algebra against direct computation."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from ood_core import data, generative_study as gen, metrics, unified
from ood_core import generative_scores as gsc
from ood_core.glow_study import GlowEvaluation
from ood_core.train import TrainConfig

KEYS = ("ID train", "ID test", "uniform", "constant")


def _named(s, name):
    return data.ImageSet(s.x, s.y, name)


def _sets():
    return {"ID train": _named(data.synthetic("gaussian", 40, (1, 8, 8), seed=1), "Gauss train"),
            "ID test": _named(data.synthetic("gaussian", 30, (1, 8, 8), seed=2), "Gauss test"),
            "uniform": data.synthetic("uniform", 20, (1, 8, 8), seed=3),
            "constant": data.synthetic("constant", 20, (1, 8, 8), seed=4)}


def _member(seed, sets=None):
    rng = np.random.default_rng(seed)
    sets = sets or _sets()
    return GlowEvaluation(trained=None, sets=sets, missing={},
                          scores={k: {"log_px": rng.normal(-100.0, 5.0, len(s))} for k, s in sets.items()})


def test_ensemble_of_identical_members_is_the_member():
    m = _member(0)
    t = gen.ensemble_table([m, m, m])
    for k in ("uniform", "constant"):
        direct = 100 * metrics.auroc(m.scores["ID test"]["log_px"], m.scores[k]["log_px"])
        row = t.loc[m.sets[k].name]
        assert row["ensemble AUROC"] == pytest.approx(direct)
        assert row["WAIC AUROC"] == pytest.approx(direct)  # zero variance: WAIC = log p
        assert row["member AUROC min"] == pytest.approx(row["member AUROC max"])


def test_ensemble_table_matches_direct_computation():
    members = [_member(s) for s in range(4)]
    t = gen.ensemble_table(members)
    stack = {k: np.stack([m.scores[k]["log_px"] for m in members]) for k in KEYS}
    lme = {k: np.log(np.mean(np.exp(v - v.max(0)), 0)) + v.max(0) for k, v in stack.items()}
    waic = {k: v.mean(0) - v.var(0) for k, v in stack.items()}
    row = t.loc["uniform noise"]
    assert row["ensemble AUROC"] == pytest.approx(100 * metrics.auroc(lme["ID test"], lme["uniform"]))
    assert row["WAIC AUROC"] == pytest.approx(100 * metrics.auroc(waic["ID test"], waic["uniform"]))
    member_aucs = [100 * metrics.auroc(stack["ID test"][i], stack["uniform"][i]) for i in range(4)]
    assert row["member AUROC mean"] == pytest.approx(np.mean(member_aucs))
    d = 64
    assert t.loc[members[0].sets["ID test"].name, "ensemble bpd"] == pytest.approx(
        -lme["ID test"].mean() / (d * math.log(2)))


def test_ensemble_refuses_members_scored_on_other_images():
    a = _member(0)
    other = _sets()
    other["uniform"] = data.synthetic("uniform", 20, (1, 8, 8), seed=99)
    with pytest.raises(ValueError, match="different images"):
        gen.ensemble_table([a, _member(1, other)])
    with pytest.raises(ValueError, match="at least 2"):
        gen.ensemble_table([a])


def test_ensemble_by_size_starts_at_the_first_member():
    members = [_member(s) for s in range(3)]
    t = gen.ensemble_by_size(members, ["uniform", "constant"])
    first = t[(t.members == 1) & (t["OOD set"] == "constant")]
    direct = 100 * metrics.auroc(members[0].scores["ID test"]["log_px"], members[0].scores["constant"]["log_px"])
    assert np.allclose(first["AUROC"], direct)  # both combinations of one member are its log p
    assert set(t.members) == {1, 2, 3} and len(t) == 3 * 2 * 2


def test_seed_table_and_summary_agree_with_numpy():
    by_seed = {}
    for s in range(3):
        m = _member(10 + s)
        by_seed[s] = {"det": {k: m.scores[k]["log_px"] for k in ("ID test", "uniform")}}
    names = {k: s.name for k, s in _sets().items()}
    long = unified.seed_table(by_seed, {"det": "generative"}, names, "Gauss")
    assert list(long.seed) == [0, 1, 2]
    aucs = [metrics.ood_metrics(by_seed[s]["det"]["ID test"], by_seed[s]["det"]["uniform"])["AUROC"] for s in range(3)]
    summ = unified.seed_summary(long).iloc[0]
    assert summ["mean"] == pytest.approx(np.mean(aucs)) and summ["std"] == pytest.approx(np.std(aucs, ddof=1))
    assert summ["seeds"] == 3 and summ["min"] == pytest.approx(min(aucs))


def test_other_likelihood_models_must_score_the_same_images():
    g = _member(0)
    det = unified.generative_detectors(g, codecs=(), others={"VAE": _member(1)})
    assert np.array_equal(det["VAE log p"]["uniform"], _member(1).scores["uniform"]["log_px"])
    other = _sets()
    other["constant"] = data.synthetic("constant", 20, (1, 8, 8), seed=42)
    with pytest.raises(ValueError, match="same images"):
        unified.generative_detectors(g, codecs=(), others={"VAE": _member(1, other)})


def _tiny_run(family, **kw):
    model = dict(width=4, layers=2, n_mix=2) if family == "pixelcnn" else dict(width=4, latent=2)
    return gen.GenerativeRun(family, "fashion_mnist", model, n_train=64, n_curve=8, eval_batch=16, iwae_k=3,
                             train=TrainConfig(epochs=1, batch_size=16, warmup_steps=1, eval_every=2,
                                               checkpoint_every=2, optimizer="adam", lr=1e-3, seed=0), **kw)


def test_run_keys_seeds_and_retargeting():
    run = _tiny_run("vae")
    assert run.with_seed(3).train.seed == 3 and run.with_seed(3).model == run.model
    assert run.on("mnist", ("fashion_mnist",)).curve_sets == ("fashion_mnist",)
    json.dumps(run.to_dict())
    with pytest.raises(ValueError, match="family"):
        dataclasses.replace(run, family="gan")


@pytest.mark.parametrize("family", ["vae", "pixelcnn"])
def test_score_model_units_and_determinism(family):
    torch.manual_seed(0)
    model = _tiny_run(family).build()
    x = data.synthetic("uniform", 6, (1, 28, 28), seed=0).x
    a = gen.score_model(model, family, x, batch_size=4, seed=1, iwae_k=3)
    b = gen.score_model(model, family, x, batch_size=4, seed=1, iwae_k=3)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    d = 28 * 28
    assert np.allclose(a["bpd"], -a["log_px"] / (d * math.log(2)))
    if family == "vae":
        assert np.allclose(a["bpd_elbo"], a["bpd_recon"] + a["bpd_kl"])
        assert np.allclose(a["elbo"], a["log_px_z"] - a["kl"])
        assert (a["kl"] >= 0).all()
    else:  # exact likelihood: independent of the seed
        c = gen.score_model(model, family, x, batch_size=3, seed=7)
        assert np.allclose(a["log_px"], c["log_px"])


@pytest.mark.parametrize("family", ["vae", "pixelcnn"])
def test_train_then_load_from_cache(family, tmp_artifacts):
    run = _tiny_run(family)
    first = gen.train_model(run, progress=False)
    assert first.meta["n_train"] == 64 and "bpd: MNIST test" in first.history.columns
    again = gen.train_model(run, progress=False)  # from the cache: same weights, same meta
    assert again.meta == first.meta
    for (k, v), (_, w) in zip(first.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(v, w), k
    ev = gen.evaluate(run, 8, ["mnist", "constant"])
    t = ev.table
    assert list(t.index[:2]) == ["FashionMNIST train", "FashionMNIST test"]
    assert t[gen.AUROC_COL].dropna().between(0, 100).all()

"""Detectors: spec parsing, the registry, one pipeline for score and accuracy, same images, the tables."""

import numpy as np
import pandas as pd
import pytest
import torch

from ood_core import classifier_study as cs, data, detectors, likelihood_study as ls, metrics, names, scores
from ood_core import generative_scores as gsc
from ood_core.classifiers import ClassifierConfig, build_classifier
from ood_core.profiles import ASH_METHODS

OLD_TITLES = ["MSP", "max-logit", "energy", "ODIN", "ReAct", "DICE", "Mahalanobis", "ASH-P@90", "ASH-B@95",
              "ASH-S@95", "ASH-RAND@90", "ASH-S@95 + ReAct", "ASH-S@95 + DICE"]


def test_specs_parse_once_into_canonical_form():
    assert str(detectors.parse("ash_s@95+react")) == "ash_s@95+react@90"
    assert str(detectors.parse("react + ash_s@95")) == "ash_s@95+react@90"  # pipeline order is fixed
    assert str(detectors.parse("react")) == "react@90" and str(detectors.parse("ash_b")) == "ash_b@95"
    assert detectors.parse("input_complexity:codec=lzma").parts[0].option("codec") == "lzma"
    assert detectors.parse("odin:epsilon=0").parts[0].option("epsilon") == 0
    assert [detectors.title(s) for s in ASH_METHODS] == OLD_TITLES
    assert detectors.title("react@80+dice") == "ReAct@80 + DICE" and detectors.title("ash_p@0") == "ASH-P@0"


@pytest.mark.parametrize("bad, match", [
    ("ash_z@90", "unknown detector 'ash_z'.*registered"), ("ash_s@101", "percentile"), ("msp@90", "no percentile"),
    ("msp+react", "only pipeline parts"), ("ash_s@90+ash_p@80", "at most one"), ("odin:temperature", "options"),
    ("input_complexity:codex=png", "options"), ("", "non-empty"), ("__import__('os')", "cannot parse"),
])
def test_bad_specs_fail_with_the_valid_choices(bad, match):
    with pytest.raises(ValueError, match=match):
        detectors.parse(bad)


def test_every_registered_detector_builds_and_is_documented():
    for name, entry in detectors.REGISTRY.items():
        det = detectors.build(name)
        assert isinstance(det, detectors.Detector) and det.family == entry.family and entry.doc, name
    table = detectors.registry_table()
    assert set(table["spec"]) == set(detectors.REGISTRY)


def _classifier_eval(seed=0):
    """A tiny ResNet whose 'labels' are its own predictions (so unshaped accuracy is 100 %)."""
    torch.manual_seed(seed)
    model = build_classifier(ClassifierConfig("resnet18_cifar", width=4)).eval()

    def labelled(kind, n, s):
        x = data.synthetic(kind, n, (3, 32, 32), seed=s).x
        with torch.no_grad():
            y = model(x.float() / 255).argmax(1)
        return data.ImageSet(x, y, f"{kind} {s}")

    return cs.evaluate_model(model, labelled("gaussian", 96, 1), labelled("gaussian", 48, 2),
                             {"const": labelled("constant", 32, 3), "unif": labelled("uniform", 32, 4)})


@pytest.fixture(scope="module")
def clf_ev():
    return _classifier_eval()


def test_suite_matches_direct_scores_and_every_method_is_finite(clf_ev):
    ev = clf_ev
    long = ev.benchmark(ASH_METHODS)
    row = long[(long[names.METHOD] == "energy") & (long[names.OOD] == "constant 3")].iloc[0]
    direct = metrics.ood_metrics(scores.energy(torch.from_numpy(ev.id_feats["logits"])).numpy(),
                                 scores.energy(torch.from_numpy(ev.ood_feats["const"]["logits"])).numpy())
    assert row[names.AUROC] == pytest.approx(direct["AUROC"])
    assert np.isfinite(long[list(names.METRICS)].to_numpy()).all()
    assert long[long[names.METHOD] == "energy"][names.ID_ACCURACY].iloc[0] == 100.0
    assert list(dict.fromkeys(long[names.METHOD])) == OLD_TITLES
    maha = ev.suite.scores("mahalanobis")["unif"]
    ref = scores.Mahalanobis().fit(torch.from_numpy(ev.fit_feats["features"]), torch.from_numpy(ev.fit_feats["y"]))
    assert np.allclose(maha, ref.score(torch.from_numpy(ev.ood_feats["unif"]["features"])).numpy())


@pytest.mark.parametrize("spec", ["energy", "react", "dice", "ash_p@90", "ash_b@95", "ash_s@95", "ash_rand@90",
                                  "ash_s@95+react", "ash_s@95+dice", "ash_b@90+react@50+dice@70"])
def test_score_and_accuracy_come_from_one_pipeline(spec, clf_ev):
    """The energy score *is* the logsumexp of the logits whose argmax gives the ID accuracy."""
    ev = clf_ev
    det = ev.suite.detector(spec)
    with torch.no_grad():
        logits = det.logits(ev.id_feats, ev.model_cpu)
    assert np.allclose(ev.suite.scores(spec)[names.ID_TEST], torch.logsumexp(logits, 1).double().numpy(), atol=1e-5)
    assert ev.suite.accuracy(spec) == pytest.approx(100 * (logits.argmax(1).numpy() == ev.id_feats["y"]).mean())


def test_ash_with_react_clips_before_shaping_in_score_and_accuracy(clf_ev):
    """The ID accuracy of ASH + ReAct is measured on the scored pipeline: head(ASH(min(f, c)))."""
    ev = clf_ev
    f = torch.from_numpy(ev.id_feats["features"])
    c = scores.ReAct(90).fit(torch.from_numpy(ev.fit_feats["features"])).threshold_
    from ood_core import ash
    with torch.no_grad():
        clip_then_shape = ev.model_cpu.head(ash.ash_s(f.clamp(max=c), 95))
    assert np.allclose(ev.suite.scores("ash_s@95+react")[names.ID_TEST],
                       torch.logsumexp(clip_then_shape, 1).double().numpy(), atol=1e-5)
    expected = 100 * (clip_then_shape.argmax(1).numpy() == ev.id_feats["y"]).mean()
    assert ev.suite.accuracy("ash_s@95+react") == pytest.approx(expected)


def test_ash_rand_is_reproducible_in_score_and_accuracy(clf_ev):
    ev = clf_ev
    a = ev.suite.scores("ash_rand@90")[names.ID_TEST]
    b = detectors.Suite(ev.context).scores("ash_rand@90")[names.ID_TEST]
    assert np.array_equal(a, b)


# ------------------------------------------------------------------------------ generative side

def _glow_eval(seed=0):
    rng = np.random.default_rng(seed)
    sets = {names.ID_TRAIN: data.synthetic("gaussian", 40, (1, 8, 8), seed=1),
            names.ID_HOLDOUT: data.synthetic("gaussian", 40, (1, 8, 8), seed=5),
            names.ID_TEST: data.synthetic("gaussian", 30, (1, 8, 8), seed=2),
            "uniform": data.synthetic("uniform", 20, (1, 8, 8), seed=3),
            "constant": data.synthetic("constant", 20, (1, 8, 8), seed=4)}
    scores_ = {}
    for k, s in sets.items():
        log_pz, logdet = rng.normal(-60.0, 4.0, len(s)), rng.normal(-40.0, 3.0, len(s))
        scores_[k] = {"log_px": log_pz + logdet, "log_pz": log_pz, "logdet": logdet}
    return ls.LikelihoodEvaluation(trained=None, sets=sets, missing={}, scores=scores_)


def test_context_enforces_the_same_images_and_shares_keys():
    g = _glow_eval()
    ctx = detectors.Context(dict(g.sets), likelihoods={"glow": g, "vae": _glow_eval(1)})
    assert ctx.keys == [names.ID_TEST, "uniform", "constant"]
    tampered = dict(g.sets)
    x = tampered["uniform"].x.clone()
    x[0, 0, 0, 0] ^= 1
    other = ls.LikelihoodEvaluation(None, {**g.sets, "uniform": data.ImageSet(x, g.sets["uniform"].y, "u")}, {},
                                    g.scores)
    with pytest.raises(ValueError, match="same images"):
        detectors.Context(dict(g.sets), likelihoods={"glow": g, "vae": other})
    partial = ls.LikelihoodEvaluation(None, {k: v for k, v in g.sets.items() if k != "constant"}, {}, g.scores)
    assert detectors.Context(dict(g.sets), likelihoods={"glow": g, "vae": partial}).keys == [names.ID_TEST, "uniform"]
    with pytest.raises(KeyError, match="needs the 'background'"):
        detectors.Suite(ctx).scores("likelihood_ratio")


def test_generative_detectors_algebra_and_table():
    g = _glow_eval()
    ctx = detectors.Context(dict(g.sets), likelihoods={"glow": g, "cv_glow": g, "background": g})
    suite = detectors.Suite(ctx)
    for k in ctx.keys:
        assert np.allclose(suite.scores("likelihood_ratio")[k], 0.0)  # identical background: LLR = 0
        assert np.array_equal(suite.scores("glow")[k], g.scores[k]["log_px"])
    h = -g.scores[names.ID_HOLDOUT]["log_px"].mean()  # the entropy from held-out ID images, not training ones
    assert np.allclose(suite.scores("typicality")["uniform"], -np.abs(-g.scores["uniform"]["log_px"] - h))
    assert ctx.keys == [names.ID_TEST, "uniform", "constant"]  # held-out images are not evaluated
    dose = gsc.DoSE().fit(gsc.dose_statistics(g.scores[names.ID_HOLDOUT]))
    np.testing.assert_allclose(suite.scores("dose")["constant"], dose.score(gsc.dose_statistics(g.scores["constant"])))
    no_holdout = ls.LikelihoodEvaluation(None, {k: v for k, v in g.sets.items() if k != names.ID_HOLDOUT}, {},
                                         {k: v for k, v in g.scores.items() if k != names.ID_HOLDOUT})
    with pytest.raises(KeyError, match="held-out"):
        detectors.Suite(detectors.Context(dict(no_holdout.sets), likelihoods={"glow": no_holdout})).scores("typicality")
    assert np.isnan(suite.accuracy("glow"))
    t = detectors.run_table(ctx, ["glow", "likelihood_ratio", "input_complexity:codec=lzma"], n_boot=50)
    row = t[(t[names.DETECTOR] == "Glow log p") & (t[names.OOD_SET] == "constant")].iloc[0]
    direct = metrics.ood_metrics(g.scores[names.ID_TEST]["log_px"], g.scores["constant"]["log_px"])
    assert row[names.AUROC] == pytest.approx(direct["AUROC"]) and row[names.FPR95] == pytest.approx(direct["FPR95"])
    assert row[names.AUROC_LOW] <= row[names.AUROC] <= row[names.AUROC_HIGH]
    assert set(t[names.FAMILY]) == {names.GENERATIVE}
    typ = detectors.typicality_table(g, [1, 5])
    assert set(typ["batch_size"]) == {1, 5} and typ[names.AUROC].between(0, 100).all()


def test_dose_spec_is_the_papers_per_statistic_sum_and_joint_kde_is_a_named_variant():
    g = _glow_eval()
    ctx = detectors.Context(dict(g.sets), likelihoods={"glow": g})
    suite = detectors.Suite(ctx)
    holdout = gsc.dose_statistics(g.scores[names.ID_HOLDOUT])
    assert detectors.parse("dose").parts[0].option("method") == "kde"
    assert detectors.title("dose") == "DoSE (Glow, KDE per statistic)"
    assert detectors.title("dose:method=joint_kde") == "DoSE (Glow, joint KDE)"
    assert detectors.title("dose:model=vae,method=ocsvm") == "DoSE (VAE, OCSVM)"
    for spec, method in (("dose", "kde"), ("dose:method=joint_kde", "joint_kde")):
        direct = gsc.DoSE(method).fit(holdout).score(gsc.dose_statistics(g.scores["uniform"]))
        np.testing.assert_allclose(suite.scores(spec)["uniform"], direct)
    assert not np.allclose(suite.scores("dose")["uniform"], suite.scores("dose:method=joint_kde")["uniform"])


@pytest.mark.parametrize("spec", ["typicality", "dose", "mahalanobis", "knn:k=5", "react", "ash_s@95", "energy"])
def test_a_detector_that_needs_fitting_raises_a_named_error_before_fit(spec, clf_ev):
    g = _glow_eval()
    generative = detectors.family_of(spec) == names.GENERATIVE
    ctx = (detectors.Context(dict(g.sets), likelihoods={"glow": g}) if generative else clf_ev.context)
    det = detectors.build(spec)
    assert det.needs_fit
    with pytest.raises(detectors.NotFittedError, match=f"{type(det).__name__}.*not fitted.*fit"):
        det.score(ctx, names.ID_TEST)
    if not generative:
        with pytest.raises(detectors.NotFittedError):
            det.predict(ctx, names.ID_TEST)
    assert np.isfinite(det.fit(ctx).score(ctx, names.ID_TEST)).all()  # fitted, it scores
    assert issubclass(detectors.NotFittedError, (ValueError, AttributeError))  # scikit-learn's contract


@pytest.mark.parametrize("spec", ["msp", "gen", "glow", "likelihood_ratio", "ash_exponent"])
def test_detectors_without_parameters_score_without_fit(spec, clf_ev):
    g = _glow_eval()
    generative = detectors.family_of(spec) == names.GENERATIVE
    ctx = (detectors.Context(dict(g.sets), likelihoods={"glow": g, "background": g}) if generative
           else clf_ev.context)
    det = detectors.build(spec)
    assert not det.needs_fit and np.isfinite(det.score(ctx, names.ID_TEST)).all()


def test_seed_table_and_summary_agree_with_numpy():
    by_seed = {}
    for s in range(3):
        m = _glow_eval(10 + s)
        by_seed[s] = {"det": {k: m.scores[k]["log_px"] for k in (names.ID_TEST, "uniform")}}
    set_names = {k: s.name for k, s in _glow_eval().sets.items()}
    long = detectors.seed_table(by_seed, {"det": names.GENERATIVE}, set_names, "Gauss")
    assert list(long.seed) == [0, 1, 2]
    aucs = [metrics.ood_metrics(by_seed[s]["det"][names.ID_TEST], by_seed[s]["det"]["uniform"])["AUROC"]
            for s in range(3)]
    summ = detectors.seed_summary(long).iloc[0]
    assert summ["mean"] == pytest.approx(np.mean(aucs)) and summ["std"] == pytest.approx(np.std(aucs, ddof=1))
    assert summ["seeds"] == 3 and summ["min"] == pytest.approx(min(aucs))


# ------------------------------------------------------------------------------ successors and exact ASH-S

class _Linear(torch.nn.Module):
    """A 'classifier' whose penultimate features are given: head = fc (the contract of ood_core.classifiers)."""

    def __init__(self, d=512, k=10):
        super().__init__()
        self.fc = torch.nn.Linear(d, k)

    def head(self, f):
        return self.fc(f)


def _feature_eval(d=512, seed=0):
    """A ClassifierEvaluation on hand-made post-ReLU features (spread mass: s1/s2 ~ 100 at p = 99)."""
    g = torch.Generator().manual_seed(seed)
    model = _Linear(d).eval()

    def feats(n, scale):
        f = (1.0 + 0.05 * torch.rand(n, d, generator=g)) * scale  # flat: s1/s2 close to n/k
        with torch.no_grad():
            logits = model.head(f)
        return {"features": f.numpy(), "logits": logits.numpy(), "y": logits.argmax(1).numpy()}

    def images(n, s):
        return data.synthetic("uniform", n, (1, 4, 4), seed=s)

    from ood_core.experiment import Trained
    return cs.ClassifierEvaluation(Trained(None, model, None), images(40, 1), {"ood": images(30, 2)}, {},
                                   feats(200, 1.0), feats(40, 1.0), {"ood": feats(30, 2.0)})


def test_ash_s_and_scale_scores_are_the_exact_formula_at_p99():
    ev = _feature_eval()
    f = ev.id_feats["features"].astype(np.float64)
    w = ev.model_cpu.fc.weight.detach().double().numpy()
    b = ev.model_cpu.fc.bias.detach().double().numpy()
    n = f.shape[1]
    k = n - round(n * 0.99)
    top = np.sort(f, axis=1)[:, ::-1][:, :k]
    s1, s2 = f.sum(1), top.sum(1)
    assert (s1 / s2).min() > 60  # the float32 cap of the tensor-returning ASH-S would bind here
    kept = np.where(f >= top[:, -1:], f, 0.0)
    logits = np.exp(s1 / s2)[:, None] * (kept @ w.T) + b
    expected = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    np.testing.assert_allclose(ev.suite.scores("ash_s@99")[names.ID_TEST], expected, rtol=1e-10)
    scale_logits = np.exp(s1 / s2)[:, None] * (f @ w.T) + b
    expected = np.log(np.exp(scale_logits - scale_logits.max(1, keepdims=True)).sum(1)) + scale_logits.max(1)
    np.testing.assert_allclose(ev.suite.scores("scale@99")[names.ID_TEST], expected, rtol=1e-10)


def test_successor_detectors_are_their_estimators():
    ev = _feature_eval(d=16)
    fit = {k: torch.from_numpy(v) for k, v in ev.fit_feats.items()}
    ood = {k: torch.from_numpy(v) for k, v in ev.ood_feats["ood"].items()}
    model = ev.model_cpu
    expected = {
        "knn:k=5": scores.KNN(k=5).fit(fit["features"]).score(ood["features"]),
        "vim:dim=4": scores.ViM(dim=4).fit(fit["features"], model).score(model, ood["features"]),
        "fdbd": scores.FDBD().fit(fit["features"]).score(model, ood["features"]),
        "nnguide:k=3": scores.NNGuide(k=3).fit(fit["features"], fit["logits"]).score(ood["features"], ood["logits"]),
        "gen": scores.gen(ood["logits"], gamma=0.1),
        "gen:top_m=3": scores.gen(ood["logits"], gamma=0.1, top_m=3),
    }
    for spec, want in expected.items():
        np.testing.assert_allclose(ev.suite.scores(spec)["ood"], want.double().numpy(), rtol=1e-6, err_msg=spec)
        assert ev.suite.accuracy(spec) == 100.0  # none of them changes the prediction
    assert detectors.title("knn:k=5") == "KNN (k=5)" and detectors.title("knn") == "KNN"


def test_flow_on_features_is_trained_once_and_scores_log_p(tmp_path, monkeypatch):
    from ood_core import experiment
    from ood_core.artifacts import ArtifactStore
    from ood_core.feature_flow import FeatureFlowConfig, feature_flow_scores

    ev = _feature_eval(d=8)
    ev.store = ArtifactStore(tmp_path)
    spec = "feature_flow:layers=2,hidden=8,epochs=2"
    got = ev.suite.scores(spec)["ood"]
    flow = ev.suite.detector(spec).flow_
    assert flow.config == FeatureFlowConfig(dim=8, n_layers=2, hidden=8)
    np.testing.assert_allclose(got, feature_flow_scores(flow, ev.ood_feats["ood"]["features"]))
    dead = _feature_eval(d=8)  # a unit that never fires on ID training images is left out of the flow
    dead.fit_feats["features"][:, 3] = 0.0
    dead.store = ArtifactStore(tmp_path)
    assert dead.suite.detector(spec).flow_.config.dim == 7
    assert np.isfinite(dead.suite.scores(spec)["ood"]).all()
    assert np.isnan(ev.suite.accuracy(spec)) and detectors.family_of(spec) == names.GENERATIVE

    def no_training(*a, **k):
        raise AssertionError("retrained a cached feature flow")

    monkeypatch.setattr(experiment, "train", no_training)
    again = detectors.Suite(ev.context).scores(spec)["ood"]  # a new suite: fitted from the cache
    np.testing.assert_allclose(again, got)

def test_percentile_sweep_adds_scale_as_its_formula_and_keeps_the_default_cache_key(tmp_path):
    """SCALE in the sweep is energy(exp(s1/s2) * W f + b) with s2 the top-k sum at p; the default sweep's cache
    entry (ASH-P/B/S, keyed by the percentiles alone) is neither replaced nor reused for another shaper list."""
    import dataclasses

    from sklearn.metrics import roc_auc_score

    from ood_core.artifacts import ArtifactStore
    from ood_core.experiment import Trained

    g = torch.Generator().manual_seed(3)
    d = 32
    model = _Linear(d).eval()

    def feats(n, spread):  # post-ReLU features, per-sample sparsity set by `spread` (s1/s2 differs per sample)
        f = torch.relu(torch.randn(n, d, generator=g) + spread * torch.rand(n, 1, generator=g))
        with torch.no_grad():
            logits = model.head(f)
        return {"features": f.numpy(), "logits": logits.numpy(), "y": logits.argmax(1).numpy()}

    def images(n, s):
        return data.synthetic("uniform", n, (1, 4, 4), seed=s)

    ev = cs.ClassifierEvaluation(Trained(None, model, None), images(60, 1), {"ood": images(50, 2)}, {},
                                 feats(100, 1.0), feats(60, 1.0), {"ood": feats(50, -0.5)},
                                 key={"case": "sweep shapers"}, store=ArtifactStore(tmp_path))
    ps = (0, 50, 90)
    default = ev.percentile_sweep(ps)
    assert list(dict.fromkeys(default["shaper"])) == ["ASH-P", "ASH-B", "ASH-S"]
    with_scale = ev.percentile_sweep(ps, shapers=("ash_s", "scale"))
    assert list(dict.fromkeys(with_scale["shaper"])) == ["ASH-S", "SCALE"]
    # the default table is still cached under its old parameters (the list of percentiles alone)
    cached = ev._table("sweep", list(ps), lambda: pytest.fail("the default sweep was not cached under its old key"))
    pd.testing.assert_frame_equal(cached, default)
    pd.testing.assert_frame_equal(with_scale[with_scale["shaper"] == "ASH-S"].reset_index(drop=True),
                                  default[default["shaper"] == "ASH-S"].reset_index(drop=True))
    # a fresh evaluation on the same store reads the SCALE table back from the cache, not the default one
    again = dataclasses.replace(ev).percentile_sweep(ps, shapers=["ash_s", "scale"])
    pd.testing.assert_frame_equal(again, with_scale)

    w = model.fc.weight.detach().double().numpy()
    b = model.fc.bias.detach().double().numpy()

    def scale_energy(fd, p):
        f = fd["features"].astype(np.float64)
        k = d - round(d * p / 100)
        r = f.sum(1) / np.sort(f, axis=1)[:, ::-1][:, :k].sum(1)
        logits = np.exp(r)[:, None] * (f @ w.T) + b
        top = logits.max(1)
        return np.log(np.exp(logits - top[:, None]).sum(1)) + top, logits.argmax(1)

    aurocs = []
    for p in ps:
        e_id, pred = scale_energy(ev.id_feats, p)
        e_ood, _ = scale_energy(ev.ood_feats["ood"], p)
        auroc = 100 * roc_auc_score(np.r_[np.ones(len(e_id)), np.zeros(len(e_ood))], np.r_[e_id, e_ood])
        row = with_scale[(with_scale["shaper"] == "SCALE") & (with_scale["percentile"] == p)].iloc[0]
        assert row[names.AUROC] == pytest.approx(auroc, abs=1e-9)
        assert row[names.ID_ACCURACY] == pytest.approx(100 * (pred == ev.id_feats["y"]).mean())
        aurocs.append(auroc)
    assert 5 < min(aurocs) and max(aurocs) < 95  # not a degenerate (perfectly separated) case
    with pytest.raises(ValueError, match="shapers must be"):
        ev.percentile_sweep(ps, shapers=("react",))


def test_classifier_tables_are_keyed_by_the_images_content(tmp_path):
    """Two evaluations with the same run, set names and draw parameters but other ID images do not share a cached
    table: the key holds the content digest of the evaluated images (and ``evaluate`` adds the fit images')."""
    import dataclasses

    from ood_core.artifacts import ArtifactStore
    from ood_core.experiment import Trained

    ev = _classifier_eval()
    ev = dataclasses.replace(ev, key={"case": "same names"}, store=ArtifactStore(tmp_path))
    first = ev.benchmark(["energy"])
    other_id = data.ImageSet(ev.id_set.x.flip(-1), ev.id_set.y, ev.id_set.name)  # same name, other pixels
    other = dataclasses.replace(ev, id_set=other_id)
    assert other.images_digest[names.ID_TEST] != ev.images_digest[names.ID_TEST]
    assert other.images_digest["const"] == ev.images_digest["const"]
    computed = []
    other._table("benchmark", ["energy"], lambda: computed.append(1) or first)
    assert computed == [1], "a table cached for other images was served"
    ev._table("benchmark", ["energy"], lambda: pytest.fail("the same images must read the cached table"))
    assert len(list((tmp_path / "classifier_tables").iterdir())) == 2
    assert isinstance(ev.trained, Trained)


def test_odin_scores_are_cached_per_network_images_and_setting(tmp_path, monkeypatch):
    from ood_core.artifacts import ArtifactStore
    from ood_core.experiment import Trained
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    x_id, x_ood = data.synthetic("uniform", 20, (1, 4, 4), seed=1), data.synthetic("gaussian", 12, (1, 4, 4), seed=2)
    ev = cs.ClassifierEvaluation(Trained("tiny-linear", model, None), x_id, {"ood": x_ood}, {}, {}, {}, {},
                                 key={"case": "odin cache"}, store=ArtifactStore(tmp_path))
    first = ev.suite.scores("odin")
    np.testing.assert_array_equal(first["ood"], scores.odin(model, x_ood.x).numpy().astype(np.float64))
    assert len(list((tmp_path / "odin_scores").iterdir())) == 2  # ID test and the OOD set
    calls, real_odin = [], scores.odin
    monkeypatch.setattr(scores, "odin", lambda *a, **k: calls.append(1) or real_odin(*a, **k))
    again = cs.ClassifierEvaluation(Trained("tiny-linear", model, None), x_id, {"ood": x_ood}, {}, {}, {}, {},
                                    key={"case": "another table key"}, store=ArtifactStore(tmp_path))
    np.testing.assert_array_equal(again.suite.scores("odin")["ood"], first["ood"])
    assert not calls  # read from the cache, not recomputed
    again.suite.scores("odin:epsilon=0")  # another setting is another entry
    assert len(calls) == 2

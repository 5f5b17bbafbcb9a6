"""The experiment skeleton: runs and their keys, train-or-load caching, likelihood tables, results, ensembles."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from ood_core import data, experiment, families, likelihood_study as ls, metrics, names
from ood_core.artifacts import ArtifactStore
from ood_core.experiment import ClassifierRun, LikelihoodRun, Trained
from ood_core.classifiers import ClassifierConfig
from ood_core.train import TrainConfig

needs_mirror = pytest.mark.skipif(not data.available("fashion_mnist"), reason="dataset mirror not found")

KEYS = (names.ID_TRAIN, names.ID_TEST, "uniform", "constant")


def _train(**kw):
    return TrainConfig(**{**dict(epochs=1, batch_size=16, warmup_steps=1, eval_every=2, checkpoint_every=2,
                                 optimizer="adam", lr=1e-3, seed=0), **kw})


def _tiny(family, **kw):
    model = {"glow": dict(levels=1, steps=1, width=4, coupling="affine"), "vae": dict(width=4, latent=2),
             "pixelcnn": dict(width=4, layers=2, n_mix=2)}[family]
    scoring = {"iwae_k": 3} if family == "vae" else {}
    return LikelihoodRun(family, "fashion_mnist", model, _train(), n_train=64, n_curve=8, eval_batch=16,
                         scoring=scoring, **kw)


def test_random_crop_flip_is_a_shifted_window_of_the_padded_image():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    y = families.random_crop_flip(x, torch.Generator().manual_seed(0), pad=2, flip=True)
    again = families.random_crop_flip(x, torch.Generator().manual_seed(0), pad=2, flip=True)
    assert torch.equal(y, again) and y.dtype == torch.uint8 and y.shape == x.shape
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        windows = [xp[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(y[i], w) or torch.equal(y[i], w.flip(-1)) for w in windows)
    assert torch.equal(families.random_crop_flip(x, torch.Generator().manual_seed(1), pad=0, flip=False), x)


def test_runs_validate_their_fields_early():
    with pytest.raises(ValueError, match="unknown model family"):
        LikelihoodRun("gan", "fashion_mnist", {}, _train())
    with pytest.raises(ValueError, match="unknown dataset"):
        _tiny("glow", ).on("fashion_mnsit")
    with pytest.raises(ValueError, match="bad model keywords"):
        LikelihoodRun("glow", "fashion_mnist", dict(levels=1, steps=1, widht=4), _train())
    with pytest.raises(ValueError, match="scoring options"):
        LikelihoodRun("pixelcnn", "fashion_mnist", dict(width=4), _train(), scoring={"iwae_k": 4})
    with pytest.raises(ValueError, match="not a likelihood family"):
        LikelihoodRun("classifier", "cifar10", {}, _train())


def test_run_variants_and_labels():
    run = _tiny("glow")
    assert run.with_seed(3).train.seed == 3 and run.with_seed(3).model == run.model
    cv = run.with_model(coupling="additive")
    assert cv.name == "CV-Glow" and cv.label.startswith("CV-Glow L=1 K=1 w=4") and run.name == "Glow"
    bg = run.background(0.2, steps=2)
    assert bg.perturb == 0.2 and bg.model["steps"] == 2 and "background, μ=0.2" in bg.label
    assert run.on("mnist", ("fashion_mnist",)).curve_sets == ("fashion_mnist",)
    assert _tiny("vae").scoring == {"iwae_k": 3}
    assert LikelihoodRun("vae", "mnist", dict(width=4), _train()).scoring == {"iwae_k": 16}  # family default
    assert len({run, run.with_seed(0), cv}) == 2  # hashable, equal runs hash alike
    assert run.model_config.image_shape == (1, 28, 28)


@pytest.mark.parametrize("family", ["vae", "pixelcnn"])
def test_family_scoring_units_and_determinism(family):
    torch.manual_seed(0)
    run = _tiny(family)
    model = run.spec.build(run)
    x = data.synthetic("uniform", 6, (1, 28, 28), seed=0).x
    a = run.spec.score(model, x, dataclasses.replace(run, eval_batch=4), 1)
    b = run.spec.score(model, x, dataclasses.replace(run, eval_batch=4), 1)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert np.allclose(a["bpd"], -a["log_px"] / (28 * 28 * math.log(2)))
    if family == "vae":
        assert np.allclose(a["bpd_elbo"], a["bpd_recon"] + a["bpd_kl"])
        assert np.allclose(a["elbo"], a["log_px_z"] - a["kl"]) and (a["kl"] >= 0).all()
    else:  # exact likelihood: independent of seed and batching
        c = run.spec.score(model, x, dataclasses.replace(run, eval_batch=3), 7)
        assert np.allclose(a["log_px"], c["log_px"])


@needs_mirror
@pytest.mark.parametrize("family", ["glow", "vae", "pixelcnn"])
def test_train_or_load_caches_and_a_changed_knob_retrains(family, tmp_artifacts, monkeypatch):
    run = _tiny(family)
    first = experiment.train_or_load(run, progress=False)
    assert first.meta["n_train"] == 64 and names.curve_column("MNIST test") in first.history.columns

    def no_training(*a, **k):
        raise AssertionError("retrained a cached model")

    monkeypatch.setattr(experiment, "train", no_training)
    again = experiment.train_or_load(run, progress=False)
    assert again.meta == first.meta
    for (k, v), (_, w) in zip(first.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(v, w), k
    with pytest.raises(AssertionError, match="retrained"):
        experiment.train_or_load(run.with_seed(1), progress=False)


@needs_mirror
def test_likelihood_table_scores_and_published_round_trip(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path / "artifacts")
    monkeypatch.setenv("OOD_RESULTS", str(tmp_path / "results"))
    run = _tiny("glow")
    ev = ls.evaluate(run, 32, ["mnist", "uniform", "svhn"], store=store)
    assert "svhn" in ev.missing or data.available("svhn")
    table = ev.table
    for key, s in ev.sets.items():
        sc = ev.scores[key]
        np.testing.assert_allclose(sc["bpd"], sc["bpd_pz"] + sc["bpd_logdet"])
        assert table.loc[s.name, names.MEAN_BPD] == pytest.approx(sc["bpd"].mean())
        assert ev.row(key)[names.MEAN_BPD] == pytest.approx(sc["bpd"].mean())
    # the AUROC column uses log p as the score with ID test positive
    expected = 100 * metrics.auroc(-ev.scores[names.ID_TEST]["bpd"], -ev.scores["mnist"]["bpd"])
    assert table.loc["MNIST test", names.AUROC_LOGP] == pytest.approx(expected)
    assert table.loc["FashionMNIST test", names.PAPER_BPD] == 2.958  # the paper's Glow value beside ours
    ls.export_results(ev)
    pub = ls.published(run)
    assert pub is not None and set(pub.names) == set(ev.sets) and pub.meta["n_train"] == 64
    pd.testing.assert_frame_equal(pub.table, table, atol=1e-5, check_dtype=False)
    assert ls.published(run.with_seed(5)) is None


def test_likelihood_table_reports_the_inversion_below_fifty_and_family_columns():
    set_names = {names.ID_TRAIN: "A train", names.ID_TEST: "A test", "ood": "B"}
    rng = np.random.default_rng(0)
    mk = lambda m: {"bpd": m + 0.1 * rng.standard_normal(200), "bpd_elbo": np.full(200, m), "bpd_recon": np.zeros(200),
                    "bpd_kl": np.zeros(200)}
    t = ls.likelihood_table(_tiny("vae"), set_names, {names.ID_TRAIN: mk(3.0), names.ID_TEST: mk(3.0), "ood": mk(2.0)})
    assert t.loc["B", names.AUROC_LOGP] < 5
    assert list(t.columns) == [names.N, names.MEAN_BPD, names.STD_BPD, names.ELBO_BPD, names.RECON_BPD, names.KL_BPD,
                               names.AUROC_LOGP]


# ------------------------------------------------------------------------------------- ensembles

def _named(s, name):
    return data.ImageSet(s.x, s.y, name)


def _sets():
    return {names.ID_TRAIN: _named(data.synthetic("gaussian", 40, (1, 8, 8), seed=1), "Gauss train"),
            names.ID_TEST: _named(data.synthetic("gaussian", 30, (1, 8, 8), seed=2), "Gauss test"),
            "uniform": data.synthetic("uniform", 20, (1, 8, 8), seed=3),
            "constant": data.synthetic("constant", 20, (1, 8, 8), seed=4)}


def _member(seed, sets=None):
    rng = np.random.default_rng(seed)
    sets = sets or _sets()
    return ls.LikelihoodEvaluation(trained=None, sets=sets, missing={},
                                   scores={k: {"log_px": rng.normal(-100.0, 5.0, len(s))} for k, s in sets.items()})


def test_ensemble_of_identical_members_is_the_member():
    m = _member(0)
    t = ls.ensemble_table([m, m, m])
    for k in ("uniform", "constant"):
        direct = 100 * metrics.auroc(m.scores[names.ID_TEST]["log_px"], m.scores[k]["log_px"])
        row = t.loc[m.sets[k].name]
        assert row["ensemble AUROC"] == pytest.approx(direct)
        assert row["WAIC AUROC"] == pytest.approx(direct)  # zero variance: WAIC = log p
        assert row["member AUROC min"] == pytest.approx(row["member AUROC max"])


def test_ensemble_table_matches_direct_computation():
    members = [_member(s) for s in range(4)]
    t = ls.ensemble_table(members)
    stack = {k: np.stack([m.scores[k]["log_px"] for m in members]) for k in KEYS}
    lme = {k: np.log(np.mean(np.exp(v - v.max(0)), 0)) + v.max(0) for k, v in stack.items()}
    waic = {k: v.mean(0) - v.var(0) for k, v in stack.items()}
    row = t.loc["uniform noise"]
    assert row["ensemble AUROC"] == pytest.approx(100 * metrics.auroc(lme[names.ID_TEST], lme["uniform"]))
    assert row["WAIC AUROC"] == pytest.approx(100 * metrics.auroc(waic[names.ID_TEST], waic["uniform"]))
    member_aucs = [100 * metrics.auroc(stack[names.ID_TEST][i], stack["uniform"][i]) for i in range(4)]
    assert row["member AUROC mean"] == pytest.approx(np.mean(member_aucs))
    assert t.loc[members[0].sets[names.ID_TEST].name, "ensemble bpd"] == pytest.approx(
        -lme[names.ID_TEST].mean() / (64 * math.log(2)))


def test_ensemble_refuses_members_scored_on_other_images():
    a = _member(0)
    other = _sets()
    other["uniform"] = data.synthetic("uniform", 20, (1, 8, 8), seed=99)
    with pytest.raises(ValueError, match="different images"):
        ls.ensemble_table([a, _member(1, other)])
    with pytest.raises(ValueError, match="at least 2"):
        ls.ensemble_table([a])


def test_ensemble_leaves_out_each_members_own_heldout_set():
    # members trained on different subsets hold out different ID images: combine the shared sets only
    members = []
    for seed in range(3):
        sets = _sets()
        sets[names.ID_HOLDOUT] = _named(data.synthetic("gaussian", 10, (1, 8, 8), seed=50 + seed), "Gauss held-out")
        members.append(_member(seed, sets))
    t = ls.ensemble_table(members)
    assert "Gauss held-out" not in t.index and "uniform noise" in t.index
    with pytest.raises(ValueError, match="held-out"):
        ls.ensemble_by_size(members, [names.ID_HOLDOUT])
    assert len(ls.ensemble_by_size(members, ["uniform"])) == 3 * 2


def test_ensemble_leaves_out_the_id_train_row_when_members_trained_on_different_images():
    # members trained on different subsets of the training split score their own training images as "ID train"
    members = []
    for seed in range(3):
        sets = _sets()
        sets[names.ID_TRAIN] = _named(data.synthetic("gaussian", 40, (1, 8, 8), seed=60 + seed), "Gauss train")
        members.append(_member(seed, sets))
    t = ls.ensemble_table(members)
    assert "Gauss train" not in t.index and "Gauss test" in t.index
    assert "Gauss train" in ls.ensemble_table([_member(s) for s in range(3)]).index  # same images: kept


def test_ensemble_by_size_starts_at_the_first_member():
    members = [_member(s) for s in range(3)]
    t = ls.ensemble_by_size(members, ["uniform", "constant"])
    first = t[(t.members == 1) & (t[names.OOD_SET] == "constant")]
    direct = 100 * metrics.auroc(members[0].scores[names.ID_TEST]["log_px"], members[0].scores["constant"]["log_px"])
    assert np.allclose(first[names.AUROC], direct)  # both combinations of one member are its log p
    assert set(t.members) == {1, 2, 3} and len(t) == 3 * 2 * 2


def test_classifier_run_key_leaves_out_only_the_declared_field():
    run = ClassifierRun("cifar10", ClassifierConfig("resnet18_cifar", width=4), _train())
    assert "eval_batch" not in run.key() and {"dataset", "model", "train", "n_train", "augment", "n_curve"} <= set(run.key())
    assert run.key() == dataclasses.replace(run, eval_batch=7).key()
    assert Trained(run, None, pd.DataFrame()).run.family == "classifier"


def _distinct_splits(monkeypatch, n_train=300, n_test=120):
    """FashionMNIST-shaped splits of random images, every image's content different (checked), served by data.load."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (n_train + n_test, 1, 28, 28), generator=g, dtype=torch.uint8)
    assert len(_contents(x)) == len(x)
    splits = {"train": data.ImageSet(x[:n_train], torch.arange(n_train) % 10, "FashionMNIST train"),
              "test": data.ImageSet(x[n_train:], torch.arange(n_test) % 10, "FashionMNIST test")}
    monkeypatch.setattr(data, "load", lambda name, split="test", root=None: splits[split])
    return splits


def _contents(x: torch.Tensor) -> set[str]:
    """The sha256 of each image's bytes: sets of images compared by what they show, not by index."""
    import hashlib

    return {hashlib.sha256(img.contiguous().numpy().tobytes()).hexdigest() for img in x}


@pytest.mark.parametrize("n_train", [200, None])
def test_heldout_images_are_disjoint_by_content_from_training_and_evaluation(monkeypatch, n_train):
    """The held-out ID images (typicality's entropy, DoSE's densities) share no image with the model's training
    subset nor with the evaluation's ID train/test subsets, compared by the bytes of every image. With a training
    subset they come from the rest of the training split; on the whole split, from the test images left out of
    the evaluation."""
    splits = _distinct_splits(monkeypatch)
    run = dataclasses.replace(_tiny("glow"), n_train=n_train)
    n_eval, seed = 40, 2
    heldout = experiment.heldout_set(run, n_eval, seed)
    assert heldout is not None and len(heldout) == n_eval
    held = _contents(heldout.x)
    assert len(held) == n_eval  # no image twice
    trained_on = _contents(families.training_images(run).x)
    # the sets of the likelihood evaluation (ood_core.likelihood_study.evaluate)
    sets, _ = experiment.evaluation_sets("fashion_mnist", n_eval, [], seed=seed,
                                         train_set=families.training_images(run))
    assert not held & trained_on, "held-out images the model trained on"
    assert not held & _contents(sets[names.ID_TEST].x), "held-out images in the evaluation's ID test subset"
    assert not held & _contents(sets[names.ID_TRAIN].x), "held-out images in the evaluation's ID train subset"
    assert _contents(sets[names.ID_TRAIN].x) <= trained_on  # "ID train" is images the model trained on
    source = "train" if n_train is not None else "test"
    assert held <= _contents(splits[source].x) and heldout.name.endswith(f"{source} (held-out)")
    # the whole test split in the evaluation leaves nothing to hold out when the model saw the whole training split
    assert experiment.heldout_set(dataclasses.replace(run, n_train=None), None, seed) is None


def test_initial_weights_are_a_function_of_the_run_not_of_the_process():
    # the same run trained in two processes once started from different weights: the global generator's state
    # at build time depended on what the process had drawn before
    from ood_core.experiment import seeded_init
    from ood_core.profiles import get_profile

    run = get_profile("smoke").glow.runs["fashion_mnist"]
    torch.manual_seed(1)
    a = seeded_init(lambda: run.spec.build(run), run.train.seed).state_dict()
    torch.rand(17)
    state = torch.random.get_rng_state()
    b = seeded_init(lambda: run.spec.build(run), run.train.seed).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's stream is left as it was
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = run.with_seed(run.train.seed + 1)
    c = seeded_init(lambda: other.spec.build(other), other.train.seed).state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)

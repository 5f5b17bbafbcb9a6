"""The experiment layer: augmentation, caching of trained models, tables, published results."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from ood_core import classifier_study as cs
from ood_core import data, glow_study as gs, metrics, scores
from ood_core.artifacts import ArtifactStore
from ood_core.classifiers import ClassifierConfig, build_classifier
from ood_core.train import TrainConfig

needs_mirror = pytest.mark.skipif(not data.available("fashion_mnist"), reason="dataset mirror not found")


def test_random_crop_flip_is_a_shifted_window_of_the_padded_image():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    y = cs.random_crop_flip(x, g, pad=2, flip=True)
    again = cs.random_crop_flip(x, torch.Generator().manual_seed(0), pad=2, flip=True)
    assert torch.equal(y, again) and y.dtype == torch.uint8 and y.shape == x.shape
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        windows = [xp[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(y[i], w) or torch.equal(y[i], w.flip(-1)) for w in windows)
    no_flip = cs.random_crop_flip(x, torch.Generator().manual_seed(1), pad=0, flip=False)
    assert torch.equal(no_flip, x)


def _tiny_glow_run(**kw):
    return gs.GlowRun("fashion_mnist", levels=1, steps=1, width=4, n_train=64, n_curve=16, curve_sets=("mnist",),
                      eval_batch=32, train=TrainConfig(epochs=1, batch_size=32, lr=1e-3, optimizer="adam",
                                                       eval_every=1, checkpoint_every=1, **kw))


@needs_mirror
def test_trained_glow_is_cached_and_a_changed_knob_retrains(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)
    run = _tiny_glow_run()
    first = gs.train_glow(run, store=store, progress=False)
    assert len(first.history) >= 2 and "bpd: MNIST test" in first.history

    def no_training(*a, **k):
        raise AssertionError("retrained a cached model")

    monkeypatch.setattr(gs, "train", no_training)
    again = gs.train_glow(run, store=store, progress=False)
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())
    with pytest.raises(AssertionError, match="retrained"):
        gs.train_glow(run.with_coupling("additive"), store=store, progress=False)


@needs_mirror
def test_glow_scores_table_and_published_round_trip(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path / "artifacts")
    monkeypatch.setenv("OOD_RESULTS", str(tmp_path / "results"))
    run = _tiny_glow_run()
    ev = gs.evaluate(run, 32, ["mnist", "uniform", "svhn"], store=store)
    assert "svhn" in ev.missing or data.available("svhn")
    table = ev.table
    for key, s in ev.sets.items():
        sc = ev.scores[key]
        np.testing.assert_allclose(sc["bpd"], sc["bpd_pz"] + sc["bpd_logdet"])
        assert table.loc[s.name, "mean bpd"] == pytest.approx(sc["bpd"].mean())
    # the AUROC column uses log p as the score with ID test positive
    expected = 100 * metrics.auroc(-ev.scores["ID test"]["bpd"], -ev.scores["mnist"]["bpd"])
    assert table.loc["MNIST test", "AUROC % (ID test vs set, score = log p)"] == pytest.approx(expected)
    gs.export_results(ev.trained, ev.sets, ev.scores)
    pub = gs.published(run)
    assert pub is not None and set(pub["names"]) == set(ev.sets)
    pd.testing.assert_frame_equal(gs.published_table(run, pub), table, atol=1e-5, check_dtype=False)


def test_bpd_table_reports_the_inversion_below_fifty():
    names = {"ID train": "A train", "ID test": "A test", "ood": "B"}
    rng = np.random.default_rng(0)
    mk = lambda m: {"bpd": m + 0.1 * rng.standard_normal(200), "bpd_pz": np.zeros(200), "bpd_logdet": np.zeros(200)}
    t = gs.bpd_table(_tiny_glow_run(), names, {"ID train": mk(3.0), "ID test": mk(3.0), "ood": mk(2.0)})
    assert t.loc["B", "AUROC % (ID test vs set, score = log p)"] < 5


def test_post_hoc_suite_matches_direct_scores():
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig("resnet18_cifar", width=4)).eval()
    run = cs.ClassifierRun("cifar10", ClassifierConfig("resnet18_cifar", width=4),
                           TrainConfig(epochs=1, batch_size=8, lr=0.1, optimizer="sgd"))
    trained = cs.TrainedClassifier(run, model, pd.DataFrame())
    x_fit = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    x_id = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    x_ood = data.synthetic("constant", 32, (3, 32, 32)).x

    def feats(x):
        f, logits = scores.compute_logits_and_features(model, x)
        return {"features": f.numpy(), "logits": logits.numpy(), "y": logits.argmax(1).numpy()}

    fit, fid, food = feats(x_fit), feats(x_id), feats(x_ood)
    suite = cs.PostHocSuite(trained, fit)
    long = cs.benchmark(suite, cs.paper_methods(), fid, {"const": food}, x_id, {"const": x_ood})
    energy_row = long[(long.method == "energy") & (long.ood == "const")].iloc[0]
    direct = metrics.ood_metrics(scores.energy(torch.from_numpy(fid["logits"])).numpy(),
                                 scores.energy(torch.from_numpy(food["logits"])).numpy())
    assert energy_row["AUROC"] == pytest.approx(direct["AUROC"])
    assert np.isfinite(long[["FPR95", "AUROC", "AUPR_In", "AUPR_Out"]].to_numpy()).all()
    # labels are the model's own predictions: plain accuracy is 100 %, shaping may change it
    assert long[long.method == "energy"]["ID accuracy (%)"].iloc[0] == 100.0
    assert set(long.method) == {m.name for m in cs.paper_methods()}
    sweep = cs.percentile_sweep(suite, fid, {"const": food}, [0, 50])
    assert sweep.query("shaper == 'ASH-P' and percentile == 0")["ID accuracy (%)"].iloc[0] == 100.0
    lg = cs.local_vs_global(suite, fid, {"const": food}, [50])
    local = lg[lg.threshold.str.startswith("local")]
    assert (local["pruned on ID test (%)"] >= 49).all()


def test_classifier_tables_are_computed_once_per_evaluation(tmp_path):
    ev = cs.ClassifierEvaluation(None, None, None, {}, {}, {}, {}, key={"run": "x"}, store=ArtifactStore(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return pd.DataFrame({"percentile": [0, 90], "AUROC": [81.5, 92.25]})

    a = ev._table("sweep", [0, 90], compute)
    b = ev._table("sweep", [0, 90], compute)
    ev._table("sweep", [0, 95], compute)  # other parameters: computed again
    assert len(calls) == 2
    pd.testing.assert_frame_equal(a, b)
    assert a["AUROC"].tolist() == [81.5, 92.25]

"""Networks trained elsewhere: key mappings (round trips on tiny networks), the published files, the
validation split that chooses a percentile, and KNN's scaled k."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from ood_core import classifier_study as cs, data, detectors, experiment, names, pretrained
from ood_core.classifiers import ClassifierConfig, DenseNetBC100, ResNetCifar, build_classifier


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def test_densenet_keys_round_trip_through_the_dice_layout():
    torch.manual_seed(0)
    ours = DenseNetBC100(growth_rate=2, depth=10).eval()
    _randomise_bn(ours)
    theirs = pretrained.densenet_to_dice(ours.state_dict())
    # the publisher's layout (DICE's DenseNet3): blocks hold `.layer.`, transitions and the final BN say `1`
    assert "block1.layer.0.bn1.weight" in theirs and "trans1.bn1.weight" in theirs and "trans2.conv1.weight" in theirs
    assert "bn1.weight" in theirs and "fc.weight" in theirs and "conv1.weight" in theirs
    assert not any(k.startswith(("dense", "mean", "std")) for k in theirs)
    back = pretrained.densenet_from_dice(theirs)
    assert set(back) == set(ours.state_dict()) - {"mean", "std"}
    fresh = DenseNetBC100(growth_rate=2, depth=10).eval()
    fresh.load_state_dict({**back, "mean": fresh.mean, "std": fresh.std})
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(fresh(x), ours(x), rtol=0, atol=0)


def test_resnet_keys_round_trip_through_the_dataparallel_layout():
    torch.manual_seed(0)
    ours = ResNetCifar(width=4, depth=8).eval()
    _randomise_bn(ours)
    theirs = pretrained.resnet_to_akamaster(ours.state_dict())
    assert all(k.startswith("module.") for k in theirs) and "module.linear.weight" in theirs
    back = pretrained.resnet_from_akamaster(theirs)
    fresh = ResNetCifar(width=4, depth=8).eval()
    fresh.load_state_dict({**back, "mean": fresh.mean, "std": fresh.std})
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(fresh(x), ours(x), rtol=0, atol=0)


def test_unknown_keys_are_refused():
    with pytest.raises(pretrained.PretrainedError, match="unexpected"):
        pretrained.densenet_from_dice({"classifier.weight": torch.zeros(1)})
    with pytest.raises(pretrained.PretrainedError, match="unexpected"):
        pretrained.resnet_from_akamaster({"module.head.weight": torch.zeros(1)})


def test_architectures_have_the_published_sizes():
    dense = build_classifier(ClassifierConfig("densenet_bc100", growth_rate=12))
    # shared/models/README.md: 793,249 numbers in the checkpoint's state dict (parameters and BN statistics)
    assert sum(v.numel() for k, v in dense.state_dict().items() if k not in ("mean", "std")) == 793_249
    assert dense.feature_dim == 342
    r20 = build_classifier(ClassifierConfig("resnet_cifar", width=16, depth=20))
    r56 = build_classifier(ClassifierConfig("resnet_cifar", width=16, depth=56))
    # He et al. 2016, table 6: 0.27M and 0.85M parameters (option-A shortcuts have none)
    assert 0.265e6 < sum(p.numel() for p in r20.parameters()) < 0.275e6
    assert 0.85e6 < sum(p.numel() for p in r56.parameters()) < 0.86e6
    assert r20.feature_dim == 64
    with pytest.raises(ValueError, match="6n \\+ 2"):
        ResNetCifar(depth=21)


def test_option_a_shortcut_subsamples_and_pads_with_zeros():
    from ood_core.classifiers import _ShortcutA

    x = torch.randn(2, 4, 8, 8)
    y = _ShortcutA(4, 8, 2)(x)
    assert y.shape == (2, 8, 4, 4)
    torch.testing.assert_close(y[:, 2:6], x[:, :, ::2, ::2])
    assert (y[:, :2] == 0).all() and (y[:, 6:] == 0).all()


def test_missing_and_altered_files_are_named(tmp_path):
    with pytest.raises(pretrained.PretrainedError, match="OOD_MODELS"):
        pretrained.load("resnet20", root=tmp_path)
    target = tmp_path / pretrained.checkpoint("resnet20").path
    target.parent.mkdir(parents=True)
    torch.save({"state_dict": {}}, target)
    with pytest.raises(pretrained.PretrainedError, match="sha256"):
        pretrained.load("resnet20", root=tmp_path)
    with pytest.raises(pretrained.PretrainedError, match="unknown checkpoint"):
        pretrained.checkpoint("vgg16")


@pytest.mark.parametrize("name, least", [("resnet20", 88.0), ("densenet_bc100", 92.0)])
def test_published_checkpoints_classify_cifar10(name, least):
    if not pretrained.available(name):
        pytest.skip(f"{name} is not in {pretrained.models_root()}")
    model = pretrained.load(name)
    test = data.load("cifar10", "test").subset(300, 0)
    with torch.no_grad():
        accuracy = 100 * (model(test.x.float() / 255).argmax(1) == test.y).float().mean().item()
    assert accuracy >= least  # published: 91.7 % (ResNet-20), about 94.5 % (DenseNet) on all 10,000


def _digests(x: torch.Tensor) -> set[str]:
    return {hashlib.sha256(img.numpy().tobytes()).hexdigest() for img in x}


def test_validation_split_is_disjoint_from_the_test_sets_by_content():
    near = "tiny_imagenet:cifar10_disjoint"
    sets, _ = experiment.evaluation_sets("cifar10", 300, [near], seed=0, train_split=False)
    val = experiment.validation_sets("cifar10", 300, 200, near, seed=0)
    assert len(val[names.ID_VAL]) == 200 and len(val[near]) == 200
    assert not _digests(val[names.ID_VAL].x) & _digests(sets[names.ID_TEST].x)
    assert not _digests(val[near].x) & _digests(sets[near].x)
    # the held-out TinyImageNet images come from the same view: no CIFAR-10 class among them
    kept = set(data.load_view(near, "test").y.tolist())
    assert set(val[near].y.tolist()) <= kept
    with pytest.raises(ValueError, match="held-out"):
        data.load("cifar10", "test").held_out(None, 10)


def test_knn_k_scales_with_the_bank():
    assert detectors.knn_k("scaled", 50000) == 50
    assert detectors.knn_k("scaled", 10000) == 10
    assert detectors.knn_k("scaled", 100) == 1
    assert detectors.knn_k(7, 10000) == 7
    with pytest.raises(ValueError, match="positive integer or 'scaled'"):
        detectors.knn_k(0, 100)


def test_percentile_is_chosen_on_validation_data_only():
    torch.manual_seed(0)
    model = ResNetCifar(width=4, depth=8).eval()
    g = torch.Generator().manual_seed(1)
    img = lambda n, lo, hi: torch.randint(lo, hi, (n, 3, 32, 32), generator=g, dtype=torch.uint8)  # noqa: E731
    fit = data.ImageSet(img(64, 0, 256), torch.randint(0, 10, (64,), generator=g), "fit")
    val_id = data.ImageSet(img(40, 0, 256), torch.zeros(40, dtype=torch.long), "val id")
    val_ood = data.ImageSet(img(40, 100, 140), torch.zeros(40, dtype=torch.long), "val ood")
    val = cs.evaluate_model(model, fit, val_id, {"near": val_ood})
    table = cs.choose_percentiles(val, (10, 50, 90))
    assert set(table["shaper"]) == set(cs.VALIDATED_SHAPERS)
    for shaper, rows in table.groupby("shaper"):
        best = rows[rows["chosen"]].iloc[0]
        assert best["validation AUROC"] == rows["validation AUROC"].max()
        assert best["percentile"] == rows[rows["validation AUROC"] == rows["validation AUROC"].max()]["percentile"].min()
    assert np.isfinite(table["validation AUROC"]).all()


def test_factor_effects_on_a_hand_made_table():
    table = pd.DataFrame({"AUROC ASH-S@95": [80.0, 40.0, 70.0, 20.0, 78.0]},
                         index=["a", "a_ls", "b", "b_ls", "a_seed1"])
    pairs = {"seed (same recipe)": [("a", "a_seed1")], "ls": [("a", "a_ls"), ("b", "b_ls")],
             "absent": [("a", "nowhere")]}
    out = cs.factor_effects(table, pairs, "AUROC ASH-S@95")
    assert list(out.index) == ["seed (same recipe)", "ls"]  # a pair with an absent variant is skipped
    assert out.loc["ls", "mean change"] == -45.0 and out.loc["ls", "least change"] == -50.0
    assert out.loc["ls", "largest change"] == -40.0 and out.loc["ls", "same sign in every pair"]
    assert out.loc["seed (same recipe)", "mean change"] == -2.0


def test_ash_s_effect_words_and_anatomy_summary():
    assert cs.ash_s_effect(90.0, 40.0) == "inverts"
    assert cs.ash_s_effect(90.0, 95.0) == "helps"
    assert cs.ash_s_effect(90.0, 80.0) == "hurts"
    assert cs.ash_s_effect(90.0, 90.5) == "no change"
    table = pd.DataFrame({names.SET: ["ID", "A", "B"], "median s1/s2": [3.0, 6.0, 8.0],
                          "AUROC s1/s2 alone": [np.nan, 10.0, 20.0], "AUROC energy": [np.nan, 80.0, 90.0],
                          "AUROC ASH-P@95 (prune)": [np.nan, 80.0, 90.0], "AUROC SCALE@95 (scale)": [np.nan, 5.0, 15.0],
                          "AUROC ASH-S@95 (both)": [np.nan, 30.0, 95.0]})
    row = cs.anatomy_summary(table, 95)
    assert row["ID median s1/s2"] == 3.0 and row["OOD median s1/s2"] == 7.0
    assert row["AUROC energy"] == 85.0 and row["AUROC ASH-S@95"] == 62.5
    assert row["sets where ASH-S beats energy"] == "1 of 2" and row["ASH-S"] == "hurts"

"""Profiles, the artifact cache and the environment files."""

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ood_core import artifacts, profiles

REPO = Path(__file__).resolve().parent.parent


def test_profiles_exist_and_scale_monotonically():
    smoke, cpu, paper = (profiles.get_profile(n) for n in ("smoke", "cpu", "paper"))
    assert smoke.data.n_eval < cpu.data.n_eval
    assert paper.data.n_eval is None  # full test sets
    with pytest.raises(ValueError, match="unknown profile"):
        profiles.get_profile("huge")


def test_profiles_are_one_recipe_at_three_scales():
    """Every profile is build(scale): the recipes (optimisers, curve sets, detectors, OOD sets) are the same
    at every scale, and one number changed in a scale table changes that number and nothing else."""
    built = {name: profiles.build(scale) for name, scale in profiles.SCALES.items()}
    assert {name: p.name for name, p in built.items()} == {n: n for n in profiles.PROFILES}
    for p in built.values():
        assert p.glow.runs["fashion_mnist"].train.optimizer == profiles.GLOW_OPT["optimizer"]
        assert p.glow.runs["cifar10"].curve_sets == profiles.COLOUR_CURVES
        assert p.families.vae["cifar10"].curve_sets == profiles.COLOUR_CURVES
        assert p.unified.background_rate == profiles.BACKGROUND_RATE
        assert p.classifier.methods == profiles.CLASSIFIER_METHODS
    cpu = built["cpu"]
    changed = profiles.build(dataclasses.replace(profiles.CPU, glow_n_eval=7))
    assert changed.glow.n_eval == 7
    assert dataclasses.replace(changed, glow=dataclasses.replace(changed.glow, n_eval=cpu.glow.n_eval)) == cpu
    # the seed study's models are variants of the chapters' models
    seed_glow, fm_glow = cpu.seeds.glow, cpu.glow.runs["fashion_mnist"]
    assert seed_glow.model == {**fm_glow.model, **profiles.CPU.seed_glow.model}
    assert seed_glow.train == profiles.CPU.seed_glow.train and seed_glow.n_train == 20000


def test_vary_changes_only_what_the_size_names():
    cifar = profiles.get_profile("smoke").classifier.runs["cifar10"]
    densenet = profiles.vary(cifar, profiles.Size(dict(arch="densenet_bc100", growth_rate=2), fields=dict(n_train=8)))
    assert densenet.model.arch == "densenet_bc100" and densenet.model.width == 64  # a new config, not resnet's width
    assert densenet.n_train == 8 and densenet.train == cifar.train and densenet.n_curve == cifar.n_curve
    wider = profiles.vary(cifar, profiles.Size(dict(width=8)))
    assert wider.model == dataclasses.replace(cifar.model, width=8)
    assert profiles.vary(cifar, profiles.SAME) == cifar
    gray = profiles.classifier("fashion_mnist", profiles.Size(dict(arch="small_cnn", width=4), cifar.train))
    assert gray.model.in_channels == 1


def test_profile_typos_fail_at_get_profile_with_the_valid_names():
    import dataclasses

    P = profiles.get_profile("smoke")
    bad_ood = dataclasses.replace(P.glow, ood=profiles.ByDataset({"cifar10": ("svnh",)}))
    with pytest.raises(ValueError, match="unknown OOD set 'svnh'.*svhn"):
        profiles.check(dataclasses.replace(P, glow=bad_ood))
    bad_view = dataclasses.replace(P.glow, ood=profiles.ByDataset({"cifar10": ("cifar10:grey",)}))
    with pytest.raises(ValueError, match="unknown view 'grey'.*gray"):
        profiles.check(dataclasses.replace(P, glow=bad_view))
    bad_method = dataclasses.replace(P.classifier, methods=("ash_s@95", "ash_q@90"))
    with pytest.raises(ValueError, match="unknown detector 'ash_q'.*ash_s"):
        profiles.check(dataclasses.replace(P, classifier=bad_method))
    with pytest.raises(ValueError, match="unknown dataset name.*fashion_mnist"):
        profiles.ByDataset({"fashion-mnist": 1})
    with pytest.raises(KeyError, match="no Glow run for dataset 'svhn'.*fashion_mnist"):
        P.glow.runs["svhn"]


def test_config_key_is_canonical():
    assert artifacts.config_key({"a": 1, "b": (1, 2)}) == artifacts.config_key({"b": [1, 2], "a": 1})
    assert artifacts.config_key({"a": 1}) != artifacts.config_key({"a": 2})
    assert artifacts.config_key({"a": np.int64(1)}) == artifacts.config_key({"a": 1})


def test_cache_miss_then_hit(tmp_path):
    store = artifacts.ArtifactStore(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"s": np.arange(3.0)}

    cfg = {"model": "glow", "lr": 1e-3}
    a = store.cached_arrays("glow_scores", cfg, compute)
    b = store.cached_arrays("glow_scores", cfg, compute)
    assert len(calls) == 1 and np.array_equal(a["s"], b["s"])
    store.cached_arrays("glow_scores", {**cfg, "lr": 2e-3}, compute)  # changed parameter recomputes
    assert len(calls) == 2


def test_killed_write_is_never_trusted(tmp_path, monkeypatch):
    store = artifacts.ArtifactStore(tmp_path)
    cfg = {"x": 1}

    def boom(*a, **k):
        raise KeyboardInterrupt  # a kill during the write

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(KeyboardInterrupt):
        store.save("glow_scores", cfg, arrays={"a": np.zeros(2)})
    assert not store.exists("glow_scores", cfg)
    assert not store.path("glow_scores", cfg).exists()
    assert list((tmp_path / "glow_scores").glob(".tmp-*")) == []


def test_leftover_without_done_is_replaced(tmp_path):
    store = artifacts.ArtifactStore(tmp_path)
    cfg = {"x": 2}
    half = store.path("glow", cfg)
    half.mkdir(parents=True)
    (half / "arrays.npz").write_bytes(b"half written")
    assert not store.exists("glow", cfg)
    with pytest.raises(FileNotFoundError):
        store.load_arrays("glow", cfg)
    store.save("glow", cfg, arrays={"a": np.ones(2)}, state_dict={"w": torch.ones(2)})
    assert np.array_equal(store.load_arrays("glow", cfg)["a"], np.ones(2))
    assert torch.equal(store.load_state_dict("glow", cfg)["w"], torch.ones(2))
    assert "hardware" in store.load_meta("glow", cfg)


def _pins(lines):
    return sorted(l.strip() for l in lines if re.match(r"^[A-Za-z0-9_.\-\[\]]+==", l.strip()))


def test_environment_yml_and_requirements_agree():
    req = _pins((REPO / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _pins(pip_section) == req
    assert "torch==2.14.1" in req and "torchvision==0.29.1" in req
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"])


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci and "make book" in readme

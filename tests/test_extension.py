"""Extending the package from outside it: a new clip, a new shaper and a new density family, each with ONE
registration call, working end to end through the same code paths as the built-in ones, and gone again
after the test (the fixtures unregister them)."""

from dataclasses import dataclass
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ood_core import (artifacts, ash, benchmarks, classifier_study as cs, data, detectors, families, names,
                      profiles, scores)
from ood_core.experiment import LikelihoodRun
from ood_core.train import TrainConfig

needs_mirror = pytest.mark.skipif(not data.available("fashion_mnist"), reason="dataset mirror not found")


# ----------------------------------------------------------------------------- a new clip

def _unit_fit(f, model, percentile):
    """A per-unit threshold: the ``percentile``-th percentile of each unit over the ID training features."""
    return torch.quantile(f.double(), percentile / 100.0, dim=0).to(f.dtype)


@pytest.fixture
def unit_clip():
    stage = detectors.register_stage(detectors.Stage(
        "unit_clip", "clip", "UnitClip", lambda threshold, f, model, p, seed: torch.minimum(f, threshold),
        fit=_unit_fit, percentile=95.0, doc="per-unit clipping at the units' own ID percentile"))
    yield stage
    detectors.unregister_stage("unit_clip")


# ----------------------------------------------------------------------------- a new shaper

def _ash_s2_parts(x, percentile):
    """ASH-S with the exponent doubled: ``x_hat * exp(2 s1 / s2)``, in factored form."""
    base, r = ash.ash_s_parts(x, percentile)
    return base, 2.0 * r


@pytest.fixture
def ash_s2():
    shaper = ash.register_shaper(ash.Shaper(
        "ash_s2", "ASH-S2", lambda x, percentile: ash._materialise(*_ash_s2_parts(x, percentile), what="ASH-S2"),
        90.0, "ASH-S with a doubled exponent", exp_parts=_ash_s2_parts))
    yield shaper
    ash.unregister_shaper("ash_s2")


# ----------------------------------------------------------------------------- a new density family

@dataclass(frozen=True)
class DiagonalConfig:
    image_shape: tuple
    init_scale: float = 0.3


class DiagonalGaussian(nn.Module):
    """A Gaussian with a learned mean and scale per sub-pixel on ``u = (x + 1/2) / 256``, discretised by the bin width."""

    def __init__(self, config: DiagonalConfig):
        super().__init__()
        self.config = config
        self.mean = nn.Parameter(torch.full(config.image_shape, 0.5))
        self.log_scale = nn.Parameter(torch.full(config.image_shape, math.log(config.init_scale)))

    def log_px(self, x_uint8: torch.Tensor) -> torch.Tensor:
        u = (x_uint8.float() + 0.5) / 256.0
        log_density = torch.distributions.Normal(self.mean, self.log_scale.exp()).log_prob(u).flatten(1).sum(1)
        return log_density - u[0].numel() * math.log(256.0)


def _bpd(model, x):
    return -model.log_px(x) / (x[0].numel() * math.log(2.0))


def _diag_training(run):
    images = families.training_images(run)
    return families.Training(TensorDataset(images.x), len(images), lambda m, batch: _bpd(m, batch[0]).mean(),
                             {}, batch_transform=families.perturb_uint8(run.perturb) if run.perturb else None)


def _score_diag(model, x_uint8, run, seed):
    with torch.no_grad():
        lp = model.log_px(x_uint8).double().numpy()
    return {"log_px": lp, "bpd": -lp / (x_uint8[0].numel() * math.log(2.0))}


def _diag_config(run):
    return DiagonalConfig(image_shape=data.spec(run.dataset).shape, **run.model)


def _tiny_run(**model):
    train = TrainConfig(epochs=1, batch_size=16, warmup_steps=1, eval_every=100, checkpoint_every=100,
                        optimizer="adam", lr=1e-2, seed=0, max_steps=2)
    return LikelihoodRun("diag", "fashion_mnist", model, train, n_train=32, n_curve=8, eval_batch=32)


@pytest.fixture
def diag_family():
    fam = families.register(families.Family(
        name="diag", title="DiagGauss", role="likelihood", config=_diag_config,
        build=lambda run: DiagonalGaussian(_diag_config(run)), training=_diag_training,
        label=lambda run: f"diagonal Gaussian on {run.dataset}", score=_score_diag,
        model_artifact=artifacts.Kind("diag", 1, ("ood_core.train",), "a test density's weights"),
        scores_artifact=artifacts.Kind("diag_scores", 1, ("ood_core.likelihood",), "a test density's scores"),
        display_name=lambda model: "DiagGauss (wide)" if model.get("init_scale", 0.3) > 0.3 else "DiagGauss",
        variants={"diag_wide": {"init_scale": 1.0}},
        benchmark=families.Benchmark(unified=lambda P, dataset: (_tiny_run(), 24),
                                     background=lambda P, run: families.background_run(run, 0.2))))
    yield fam
    families.unregister("diag")


# ----------------------------------------------------------------------------- tests

class TinyClassifier(nn.Module):
    """The classifier contract the feature scores need: a linear ``fc`` that is the ``head``."""

    def __init__(self, d: int = 12, k: int = 4):
        super().__init__()
        self.fc = nn.Linear(d, k)

    def head(self, f):
        return self.fc(f)


def _classifier_context(n_fit=200, n_eval=60, seed=0):
    """A :class:`detectors.Context` over a tiny linear classifier and synthetic non-negative features."""
    torch.manual_seed(seed)
    model = TinyClassifier().eval()
    fc = model.fc
    g = torch.Generator().manual_seed(seed)

    def feats(n, shift):
        f = torch.rand(n, 12, generator=g) * 2 + shift
        return {"features": f.numpy(), "logits": fc(f).detach().numpy(), "y": torch.randint(0, 4, (n,), generator=g).numpy()}

    def images(n, name):
        return data.ImageSet(torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g),
                             torch.zeros(n, dtype=torch.int64), name)

    id_set, ood_set = images(n_eval, "ID"), images(n_eval, "OOD")
    clf = SimpleNamespace(model_cpu=model, fit_feats=feats(n_fit, 0.0), id_feats=feats(n_eval, 0.0),
                          ood_feats={"far": feats(n_eval, 1.0)}, id_set=id_set, ood_sets={"far": ood_set})
    return detectors.Context({names.ID_TEST: id_set, "far": ood_set}, classifier=clf, seed=seed), fc


def test_a_registered_clip_and_shaper_compose_and_score(unit_clip, ash_s2):
    # every view of the shaper registry sees the new shaper, from the one registration
    assert "ash_s2" in ash.SHAPERS and "ash_s2" in ash.EXP_SCALED_PARTS and cs.SHAPER_NAMES["ash_s2"] == "ASH-S2"
    assert detectors.title("ash_s2") == "ASH-S2@90"
    # the clip is used as itself (not ReAct) and named by its own title
    spec = detectors.parse("unit_clip@90+ash_s2@80")
    assert str(spec) == "ash_s2@80+unit_clip@90"
    assert spec.title == "ASH-S2@80 + UnitClip@90"
    assert detectors.title("unit_clip") == "UnitClip" and detectors.title("unit_clip+dice") == "UnitClip + DICE"

    ctx, fc = _classifier_context()
    suite = detectors.Suite(ctx)
    got = suite.scores(spec)
    f_train = torch.from_numpy(ctx.classifier.fit_feats["features"])
    threshold = torch.quantile(f_train.double(), 0.9, dim=0).float()
    for key in ctx.keys:
        f = torch.minimum(torch.from_numpy(ctx.features(key)["features"]), threshold)
        base, r = ash.ash_s_parts(f, 80)
        with torch.no_grad():
            logits = torch.exp(2 * r)[:, None] * (base.double() @ fc.weight.double().T) + fc.bias.double()
        np.testing.assert_allclose(got[key], scores.energy(logits).numpy(), rtol=1e-10)
        # the pipeline's clip is not ReAct's global threshold
        react_f = scores.ReAct(90).fit(f_train).transform(torch.from_numpy(ctx.features(key)["features"]))
        assert not torch.equal(f, react_f)
    # the ASH energy of the scores module takes the new shaper by name too
    f_id = torch.from_numpy(ctx.features(names.ID_TEST)["features"])
    np.testing.assert_allclose(scores.ash_energy(fc, f_id, "ash_s2", 80).numpy(),
                               scores.energy(scores.exp_scaled_logits(fc, *_ash_s2_parts(f_id, 80))).numpy())
    table = detectors.benchmark_table(suite, [spec, "unit_clip", "energy"])
    assert list(table[names.METHOD].unique()) == ["ASH-S2@80 + UnitClip@90", "UnitClip", "energy"]
    assert 0 <= suite.accuracy(spec) <= 100
    assert set(detectors.registry_table()["spec"]) >= {"unit_clip", "ash_s2"}


def test_unknown_and_misplaced_stages_are_clear_errors(unit_clip):
    with pytest.raises(ValueError, match="unknown detector 'clipz'.*react"):
        detectors.parse("clipz@90+ash_s@95")
    with pytest.raises(ValueError, match="unknown pipeline stage 'nope'.*unit_clip"):
        detectors.stage("nope")
    with pytest.raises(ValueError, match="at most one clip"):
        detectors.parse("unit_clip+react")
    with pytest.raises(ValueError, match="already registered"):
        detectors.register_stage(unit_clip)
    with pytest.raises(ValueError, match="ash.register_shaper"):
        detectors.register_stage(detectors.Stage("x", "shaper", "X", lambda *a: a[1]))
    with pytest.raises(ValueError, match="already registered"):
        ash.register_shaper(ash.SHAPER_REGISTRY["ash_s"])


def test_a_registered_density_family_is_named_roled_and_kinded(diag_family):
    assert artifacts.KINDS["diag"] is diag_family.model_artifact and "diag_scores" in artifacts.KINDS
    assert families.role_titles()["diag"] == "DiagGauss" and families.role_titles()["diag_wide"] == "DiagGauss (wide)"
    assert families.background_role_of("diag") == "diag_background"
    assert _tiny_run().name == "DiagGauss" and _tiny_run(init_scale=1.0).name == "DiagGauss (wide)"
    assert detectors.title("diag") == "DiagGauss log p" and detectors.title("diag_wide") == "DiagGauss (wide) log p"
    assert detectors.title("likelihood_ratio:model=diag") == "likelihood ratio (DiagGauss)"
    assert detectors.family_of("diag") == names.GENERATIVE
    roles = benchmarks.unified_roles(profiles.get_profile("smoke"), "fashion_mnist")
    assert {"diag", "diag_wide", "diag_background", "glow", "cv_glow", "background"} <= set(roles)
    assert roles["diag_background"]()[0].perturb == 0.2
    assert "diag" not in benchmarks.seed_roles(profiles.get_profile("smoke"), "fashion_mnist", 0, ("mnist",))
    with pytest.raises(ValueError, match="already registered"):
        families.register(diag_family)


@needs_mirror
def test_a_registered_density_family_trains_and_scores_through_the_benchmark(diag_family, tmp_artifacts):
    specs = ["diag", "likelihood_ratio:model=diag"]
    roles = benchmarks.unified_roles(profiles.get_profile("smoke"), "fashion_mnist")
    ctx = benchmarks.context(roles, specs, ["mnist"])
    assert set(ctx.likelihoods) == {"diag", "diag_background"}  # only what the specs need is trained
    ev = ctx.likelihood("diag")
    assert ev.trained.run.family == "diag" and len(ev.trained.history) >= 1
    table = detectors.run_table(ctx, specs, n_boot=5)
    assert set(table[names.DETECTOR]) == {"DiagGauss log p", "likelihood ratio (DiagGauss)"}
    assert table[names.AUROC].between(0, 100).all()
    s = detectors.Suite(ctx).scores("likelihood_ratio:model=diag")
    np.testing.assert_allclose(s["mnist"], ev.scores["mnist"]["log_px"]
                               - ctx.likelihood("diag_background").scores["mnist"]["log_px"])
    # cached: a second context reads the trained model and the scores from the artifact store
    assert (tmp_artifacts / "diag").is_dir() and (tmp_artifacts / "diag_scores").is_dir()


def test_registrations_are_gone_after_their_tests():
    assert "unit_clip" not in detectors.REGISTRY and "ash_s2" not in ash.SHAPERS and "ash_s2" not in cs.SHAPER_NAMES
    assert "diag" not in families.FAMILIES and "diag" not in artifacts.KINDS and "diag" not in detectors.REGISTRY
    assert set(ash.SHAPERS) == {"ash_p", "ash_b", "ash_s", "ash_rand", "scale"}

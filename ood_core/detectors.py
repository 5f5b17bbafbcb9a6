"""Detectors: every OOD score of the book behind one contract, in one registry, run by one suite.

**Contract.** A detector is fitted on in-distribution data where it needs to be and then scores
evaluation sets, **higher = more in-distribution**, as float64 ``[N]`` arrays::

    detector.fit(ctx) -> detector          # no-op for detectors without parameters to fit
    detector.score(ctx, key) -> np.ndarray # key: names.ID_TEST or an OOD set key ("mnist", ...)
    detector.predict(ctx, key)             # class predictions after the detector's own feature
                                           # pipeline (classifier detectors), else None

``ctx`` is a :class:`Context`: the evaluation sets (the *same* images for every detector, checked),
and the resources detectors read -- a classifier evaluation (cached penultimate features and logits
of the fit, ID and OOD sets; the trained model) and likelihood evaluations by role (``"glow"``,
``"cv_glow"``, ``"background"``, ``"vae"``, ``"pixelcnn"``).

**Registry and specs.** Detectors are named by specs parsed once (no ``eval``)::

    "energy"  "ash_s@95"  "ash_s@95+react"  "react@80"  "knn:k=50"  "input_complexity:codec=png"

``name[@percentile][:option=value,...]``, parts joined by ``+`` compose classifier feature
pipelines in a fixed order -- a clip (ReAct), then one shaper (ASH-P/B/S/RAND, SCALE), then the
head (DICE's sparsified layer or the plain one), scored with the energy -- so a detector's score and
its ID accuracy always come from the *same* pipeline. Percentiles are in percent.

Adding a detector is one registration: a scoring detector is one class or function and one
:data:`REGISTRY` entry; a clip or head is one :class:`Stage` (:func:`register_stage`), a shaper one
:class:`ood_core.ash.Shaper` (:func:`ood_core.ash.register_shaper`), a density model one
:class:`ood_core.families.Family` (:func:`ood_core.families.register`, which adds its ``"<role>"``
log-likelihood detector and its role titles). :data:`REGISTRY` derives the pipeline stages' and the
density families' entries from those registries (``tests/test_extension.py`` shows all three).

**Suite and tables.** :class:`Suite` fits each detector once per context and runs any list of
specs; :func:`score_table` (FPR95/AUROC/AUPR per set with a bootstrap interval on the AUROC),
:func:`typicality_table`, :func:`seed_table` and :func:`seed_summary` turn scores into tables with one
metrics implementation (:mod:`ood_core.metrics`, ID = positive class).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

from ood_core import ash, data, families, metrics, names, scores
from ood_core import generative_scores as gsc
from ood_core.artifacts import content_digest


# ----------------------------------------------------------------------------------- specs

@dataclass(frozen=True)
class Part:
    """One ``name[@percentile][:k=v,...]`` element of a spec."""

    name: str
    percentile: float | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    def __str__(self) -> str:
        s = self.name + (f"@{self.percentile:g}" if self.percentile is not None else "")
        return s + (":" + ",".join(f"{k}={v}" for k, v in self.options) if self.options else "")


@dataclass(frozen=True)
class Spec:
    """A parsed detector spec: one or more parts (a feature pipeline when more than one)."""

    parts: tuple[Part, ...]

    def __str__(self) -> str:
        return "+".join(str(p) for p in self.parts)

    @property
    def title(self) -> str:
        return _entry(self.parts[0].name).title(self)


_PART = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*)(?:@(?P<p>[0-9.]+))?(?::(?P<opts>.+))?$")


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse(spec: str | Spec) -> Spec:
    """Parse ``"ash_s@95+react"``-style text into a :class:`Spec`, checking names, percentiles, options."""
    if isinstance(spec, Spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a detector spec is a non-empty string such as 'ash_s@95'; got {spec!r}")
    parts = []
    for text in spec.replace(" ", "").split("+"):
        m = _PART.match(text)
        if not m:
            raise ValueError(f"cannot parse detector spec part {text!r} of {spec!r}: "
                             "expected name[@percentile][:option=value,...]")
        entry = _entry(m["name"])
        p = None if m["p"] is None else ash._check_percentile(float(m["p"]))
        if p is None and entry.percentile is not None:
            p = float(entry.percentile)
        if p is not None and entry.percentile is None:
            raise ValueError(f"detector {m['name']!r} takes no percentile (got {text!r})")
        opts = []
        for kv in (m["opts"] or "").split(",") if m["opts"] else []:
            key, eq, val = kv.partition("=")
            if not eq or key not in entry.options:
                raise ValueError(f"detector {m['name']!r} has options {sorted(entry.options) or 'none'}; got {kv!r}")
            opts.append((key, _value(val)))
        given = dict(opts)
        options = tuple((k, given.get(k, default)) for k, default in entry.options.items())
        parts.append(Part(m["name"], p, options))
    if len(parts) > 1:
        roles = [_entry(p.name).role for p in parts]
        if "score" in roles:
            raise ValueError(f"{spec!r}: only pipeline parts (react, ASH/SCALE shapers, dice) can be combined")
        if len(set(roles)) != len(roles):
            raise ValueError(f"{spec!r}: at most one clip (react), one shaper and one head (dice)")
        order = {"shaper": 0, "clip": 1, "head": 2}
        parts.sort(key=lambda p: order[_entry(p.name).role])
    return Spec(tuple(parts))


def parse_all(specs: Iterable[str | Spec]) -> list[Spec]:
    return [parse(s) for s in specs]


# ----------------------------------------------------------------------------------- context

@dataclass
class Context:
    """What detectors read: the evaluation sets and the models' cached outputs on them.

    ``sets`` maps keys (``names.ID_TEST`` and OOD keys) to images; ``classifier`` is a
    :class:`ood_core.classifier_study.ClassifierEvaluation` (or None); ``likelihoods`` maps roles to
    :class:`ood_core.likelihood_study.LikelihoodEvaluation`. Every resource must hold the same images
    for every key it shares with ``sets`` (checked); :attr:`keys` are the keys all resources have.
    """

    sets: dict[str, data.ImageSet]
    classifier: Any = None
    likelihoods: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self):
        if names.ID_TEST not in self.sets:
            raise ValueError(f"the context needs the ID test set under {names.ID_TEST!r}")
        digests = {k: content_digest(s.x, 64) for k, s in self.sets.items()}
        keys = [k for k in self.sets if k not in (names.ID_TRAIN, names.ID_HOLDOUT)]
        for label, resource_sets in self._resource_sets():
            for k in list(keys):
                if k not in resource_sets:
                    keys.remove(k)
                elif content_digest(resource_sets[k].x, 64) != digests[k]:
                    raise ValueError(f"{label} did not score the same images as the context for {k!r}: "
                                     "use the same n_eval and seed in every evaluation")
        if names.ID_TEST not in keys:
            raise ValueError("the resources share no ID test set")
        self.keys = keys

    def _resource_sets(self):
        if self.classifier is not None:
            yield "the classifier", {names.ID_TEST: self.classifier.id_set, **self.classifier.ood_sets}
        for role, ev in self.likelihoods.items():
            yield f"the {role} model", ev.sets

    @property
    def ood_keys(self) -> list[str]:
        return [k for k in self.keys if k != names.ID_TEST]

    @property
    def set_names(self) -> dict[str, str]:
        return {k: self.sets[k].name for k in self.keys}

    def images(self, key: str) -> torch.Tensor:
        return self.sets[key].x

    def likelihood(self, role: str):
        if role not in self.likelihoods:
            raise KeyError(f"this detector needs the {role!r} likelihood model; the context has "
                           f"{sorted(self.likelihoods) or 'none'}")
        return self.likelihoods[role]

    def require_classifier(self):
        if self.classifier is None:
            raise KeyError("this detector needs a classifier evaluation; the context has none")
        return self.classifier

    def features(self, key: str) -> dict[str, np.ndarray]:
        clf = self.require_classifier()
        return clf.id_feats if key == names.ID_TEST else clf.ood_feats[key]


# ----------------------------------------------------------------------------------- contract

class NotFittedError(_SklearnNotFittedError):
    """A detector that learns state in ``fit`` (names ending in ``_``) was asked to score or predict first.

    A subclass of scikit-learn's ``NotFittedError`` (itself a ``ValueError`` and ``AttributeError``),
    so code that catches either keeps working.
    """


class Detector:
    """Base class: see the module docstring. Subclasses set ``family`` and implement ``score``.

    Detectors with ``needs_fit = True`` learn state in ``fit`` (attributes ending in ``_``, as in
    scikit-learn) and raise :class:`NotFittedError` when scored before it.
    """

    family: ClassVar[str] = names.CLASSIFIER
    needs_fit: ClassVar[bool] = False

    def fit(self, ctx: Context) -> "Detector":
        return self

    def _require_fitted(self) -> None:
        if self.needs_fit and not any(k.endswith("_") and not k.startswith("_") for k in vars(self)):
            raise NotFittedError(f"this {type(self).__name__} detector is not fitted yet: call .fit(ctx) before "
                                 "scoring (detectors.Suite fits each detector once for you)")

    def score(self, ctx: Context, key: str) -> np.ndarray:
        raise NotImplementedError

    def predict(self, ctx: Context, key: str) -> np.ndarray | None:
        return None

    def roles(self) -> tuple[str, ...]:
        """The likelihood roles of the context this detector reads (none for classifier detectors)."""
        return tuple(getattr(self, attr) for attr in ("model", "background", "role") if isinstance(
            getattr(self, attr, None), str))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


class ClassifierDetector(Detector):
    """A post-hoc detector on a classifier's cached penultimate features and logits.

    Subclasses implement ``fit_features(fit, model)``, ``score_features(feats, model)`` and, when
    they change the prediction, ``logits(feats, model)`` (default: the cached logits).
    """

    family = names.CLASSIFIER
    needs_fit = True  # most learn from the ID training features; pure functions of the logits set it False

    def fit(self, ctx: Context) -> "ClassifierDetector":
        clf = ctx.require_classifier()
        self.fit_features(clf.fit_feats, clf.model_cpu)
        self.seed = ctx.seed
        return self

    def fit_features(self, fit: dict[str, np.ndarray], model) -> None:
        pass

    def logits(self, feats: dict[str, np.ndarray], model) -> torch.Tensor:
        return torch.from_numpy(feats["logits"])

    def score_features(self, feats: dict[str, np.ndarray], model) -> torch.Tensor:
        raise NotImplementedError

    def score(self, ctx: Context, key: str) -> np.ndarray:
        self._require_fitted()
        with torch.no_grad():
            return _np(self.score_features(ctx.features(key), ctx.require_classifier().model_cpu))

    def predict(self, ctx: Context, key: str) -> np.ndarray:
        self._require_fitted()
        with torch.no_grad():
            return self.logits(ctx.features(key), ctx.require_classifier().model_cpu).argmax(1).numpy()


class LogitScore(ClassifierDetector):
    """A pure function of the cached logits: MSP, max-logit, GEN."""

    needs_fit = False

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def score_features(self, feats, model):
        return self.fn(torch.from_numpy(feats["logits"]))


#: ``(base, r)``: features after a shaper, ``base * exp(r)`` when ``r`` is a float64 ``[B]`` exponent
#: (an exp-scaled shaper, scored exactly in float64), plain features when ``r`` is None.
Shaped = tuple[torch.Tensor, "torch.Tensor | None"]


def _no_state(train_features: torch.Tensor, model, percentile: float | None) -> None:
    return None


@dataclass(frozen=True)
class Stage:
    """One stage of a classifier feature pipeline: a clip, a shaper or a head (see :class:`Pipeline`).

    ``name`` is its spec name, ``title`` its name in tables, ``percentile`` its default (None: it takes
    none). ``fit(train_features [N, D], model, percentile) -> state`` learns from the ID training
    features (default: nothing); ``apply(state, x, model, percentile, seed)`` runs it:

    * ``role="clip"``: features ``[B, D]`` -> features ``[B, D]`` (ReAct's ``min(f, c)``);
    * ``role="shaper"``: features -> :data:`Shaped` ``(base, r)`` (the ASH/SCALE shapers);
    * ``role="head"``: :data:`Shaped` -> logits ``[B, K]`` (DICE's sparsified layer; without one, the
      classifier's own head, :data:`PLAIN_HEAD`).

    Titles: a shaper always shows its percentile (``"ASH-S@95"``), a clip or head only when it differs
    from its default (``"ReAct"``, ``"ReAct@80"``). Register one with :func:`register_stage`; the ASH/SCALE
    shapers are registered in :mod:`ood_core.ash` (:class:`ood_core.ash.Shaper`) and appear here as stages.
    """

    name: str
    role: str
    title: str
    apply: Callable[..., Any]
    fit: Callable[[torch.Tensor, Any, float | None], Any] = _no_state
    percentile: float | None = None
    doc: str = ""

    def __post_init__(self):
        if self.role not in STAGE_ROLES:
            raise ValueError(f"a pipeline stage's role is one of {', '.join(STAGE_ROLES)}; got {self.role!r}")
        if self.percentile is not None:
            ash._check_percentile(self.percentile)

    def part_title(self, percentile: float | None) -> str:
        if self.role == "shaper" or (percentile is not None and percentile != self.percentile):
            return f"{self.title}@{percentile:g}"
        return self.title


#: The roles of the pipeline stages, in the order they run.
STAGE_ROLES = ("clip", "shaper", "head")


def _react_fit(f, model, p):
    return scores.ReAct(p).fit(f)


def _dice_fit(f, model, p):
    return scores.DICE(p).fit(f, model)


def _dice_apply(dice, shaped: Shaped, model, p, seed):
    base, r = shaped
    if r is not None:  # ASH-S / SCALE: base * exp(r) through the sparsified layer in float64, exact for every p
        return scores.exp_scaled_logits(model, base, r, mask=dice.mask_)
    return dice.logits(model, base)


def _plain_head_apply(state, shaped: Shaped, model, p, seed):
    base, r = shaped
    if r is not None:  # ASH-S / SCALE: base * exp(r) through a linear head in float64, exact for every p
        return scores.exp_scaled_logits(model, base, r)
    return scores.logits_from_features(model, base)


#: The head of a pipeline without one: the classifier's own.
PLAIN_HEAD = Stage("head", "head", "head", _plain_head_apply)

_STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("react", "clip", "ReAct", lambda react, f, model, p, seed: react.transform(f), _react_fit, 90.0,
          "ReAct clipping (Sun et al. 2021)"),
    Stage("dice", "head", "DICE", _dice_apply, _dice_fit, 90.0, "DICE sparsified head (Sun & Li 2022)"),
)}


def _shaper_stage(shaper: ash.Shaper) -> Stage:
    return Stage(shaper.name, "shaper", shaper.title, lambda state, f, model, p, seed: shaper.shape(f, p, seed),
                 percentile=shaper.percentile, doc=shaper.doc)


def stages() -> dict[str, Stage]:
    """Every pipeline stage by spec name: the clips and heads registered here, then the shapers of
    :data:`ood_core.ash.SHAPER_REGISTRY`."""
    clips_heads = sorted(_STAGES.values(), key=lambda s: STAGE_ROLES.index(s.role))
    return {**{s.name: s for s in clips_heads},
            **{n: _shaper_stage(sh) for n, sh in ash.SHAPER_REGISTRY.items()}}


def stage(name: str) -> Stage:
    """The pipeline stage ``name``; a clear error naming the registered ones otherwise."""
    registered = stages()
    if name not in registered:
        raise ValueError(f"unknown pipeline stage {name!r}; registered: {', '.join(registered)}")
    return registered[name]


def register_stage(new: Stage) -> Stage:
    """Register a clip or head (shapers: :func:`ood_core.ash.register_shaper`); it becomes a detector spec
    on its own and in combinations (``"myclip@80+ash_s@95"``)."""
    if new.role == "shaper":
        raise ValueError("shapers are registered in ood_core.ash (ash.register_shaper(ash.Shaper(...)))")
    if new.name in REGISTRY:
        raise ValueError(f"a detector named {new.name!r} is already registered")
    _STAGES[new.name] = new
    return new


def unregister_stage(name: str) -> Stage:
    if name not in _STAGES:
        raise ValueError(f"no clip or head {name!r} is registered; registered: {', '.join(_STAGES)}")
    return _STAGES.pop(name)


class Pipeline(ClassifierDetector):
    """``energy(head(shaper(clip(features))))``: a clip (ReAct), a shaper (ASH/SCALE) and a head (DICE's
    sparsified layer), each optional, composed from their :class:`Stage` entries.

    With none of the three it is the energy score of the cached logits (Liu et al. 2020). The ID
    accuracy of the detector is the argmax of the *same* logits. Every stage is fitted on the raw ID
    training features.
    """

    def __init__(self, parts: Iterable[Part] = ()):
        self.parts = {}
        for part in parts:
            st = stage(part.name)
            if st.role in self.parts:
                raise ValueError(f"a pipeline has at most one {st.role}; got {part} and {self.parts[st.role][1]}")
            self.parts[st.role] = (st, part)

    def fit_features(self, fit, model):
        f = torch.from_numpy(fit["features"])
        self.states_ = {role: st.fit(f, model, part.percentile) for role, (st, part) in self.parts.items()}

    def logits(self, feats, model):
        if not self.parts:
            return torch.from_numpy(feats["logits"])
        f = torch.from_numpy(feats["features"])
        if "clip" in self.parts:
            st, part = self.parts["clip"]
            f = st.apply(self.states_["clip"], f, model, part.percentile, self.seed)
        shaped = (f, None)
        if "shaper" in self.parts:
            st, part = self.parts["shaper"]
            shaped = st.apply(self.states_["shaper"], f, model, part.percentile, self.seed)
        st, part = self.parts.get("head", (PLAIN_HEAD, Part("head")))
        return st.apply(self.states_.get("head"), shaped, model, part.percentile, self.seed)

    def score_features(self, feats, model):
        return scores.energy(self.logits(feats, model))


class Estimator(ClassifierDetector):
    """A fitted feature-space detector of :mod:`ood_core.scores` (KNN, ViM, fDBD, NNGuide)."""

    def __init__(self, make: Callable[[], Any], fit: Callable, score: Callable):
        self.make, self._fit, self._score = make, fit, score

    def fit_features(self, fit, model):
        self.estimator_ = self._fit(self.make(), torch.from_numpy(fit["features"]), torch.from_numpy(fit["logits"]),
                                    model)

    def score_features(self, feats, model):
        return self._score(self.estimator_, torch.from_numpy(feats["features"]), torch.from_numpy(feats["logits"]),
                           model)


class AshExponent(ClassifierDetector):
    """ASH-S's exponent ``s1 / s2`` alone, in the direction ASH-S uses it (larger = scaled up = more ID).

    ASH-S multiplies the kept activations by ``exp(s1 / s2)``, so at high percentiles its energy is
    dominated by this ratio; its AUROC says how much of ASH-S's ranking the ratio decides on its own.
    """

    needs_fit = False

    def __init__(self, percentile: float):
        self.percentile = percentile

    def score_features(self, feats, model):
        # s2 = 0 (nothing kept is positive): ASH-S leaves the sample unscaled, i.e. exponent 0
        ratio = ash.ash_s_exponent(torch.from_numpy(feats["features"]).double(), self.percentile)
        return torch.nan_to_num(ratio, nan=0.0)


class Mahalanobis(ClassifierDetector):
    """Lee et al. (2018): class means and a tied covariance of ID training features."""

    def fit_features(self, fit, model):
        self.maha_ = scores.Mahalanobis().fit(torch.from_numpy(fit["features"]), torch.from_numpy(fit["y"]))

    def score_features(self, feats, model):
        return self.maha_.score(torch.from_numpy(feats["features"]))


class ODIN(ClassifierDetector):
    """Liang et al. (2018): temperature-scaled MSP after input perturbation (needs the images)."""

    needs_fit = False

    def __init__(self, temperature: float = 1000.0, epsilon: float = 0.0014):
        self.temperature, self.epsilon = temperature, epsilon

    def score(self, ctx: Context, key: str) -> np.ndarray:
        clf = ctx.require_classifier()
        if hasattr(clf, "odin_scores"):  # a cached evaluation: computed once per network, images and setting
            return clf.odin_scores(ctx.images(key), self.temperature, self.epsilon)
        return _np(scores.odin(clf.trained.model, ctx.images(key), temperature=self.temperature, epsilon=self.epsilon))


class LogLikelihood(Detector):
    """A density model's ``log p(x)`` (Nalisnick et al.): the raw likelihood as a score."""

    family = names.GENERATIVE

    def __init__(self, role: str):
        self.role = role

    def score(self, ctx, key):
        return ctx.likelihood(self.role).scores[key]["log_px"]


class LikelihoodRatio(Detector):
    """Ren et al. (2019): ``log p_model(x) - log p_background(x)``.

    The background model is the model's background role (:func:`ood_core.families.background_role_of`:
    ``"background"`` for the Glow, ``"<model>_background"`` otherwise): the model's recipe trained on
    inputs with pixels replaced at a rate mu.
    """

    family = names.GENERATIVE

    def __init__(self, model: str = "glow", background: str | None = None):
        self.model = model
        self.background = background or families.background_role_of(model)

    def score(self, ctx, key):
        return gsc.likelihood_ratio(ctx.likelihood(self.model).scores[key]["log_px"],
                                    ctx.likelihood(self.background).scores[key]["log_px"])


def _heldout(ev, what: str) -> dict[str, np.ndarray]:
    if names.ID_HOLDOUT not in ev.scores:
        run = getattr(getattr(ev, "trained", None), "run", None)
        raise KeyError(f"{what} is fitted on held-out ID images, and {run.label if run else 'this model'} has none: "
                       "it trained on the whole "
                       "training split and the evaluation takes the whole test split (set n_train or n_eval)")
    return ev.scores[names.ID_HOLDOUT]


class Typicality(Detector):
    """Nalisnick et al. (2019b) at batch size 1: ``-|NLL(x) - H|``, ``H`` the mean NLL of held-out ID images.

    ``H`` estimates the entropy on ID training-split images the model did not train on (the paper's
    held-out split), so an overfitted model's low training NLL does not bias it.
    """

    family = names.GENERATIVE
    needs_fit = True

    def __init__(self, model: str = "glow"):
        self.model = model

    def fit(self, ctx):
        self.entropy_ = gsc.estimate_entropy(-_heldout(ctx.likelihood(self.model), "typicality")["log_px"])
        return self

    def score(self, ctx, key):
        self._require_fitted()
        return -np.abs(-ctx.likelihood(self.model).scores[key]["log_px"] - self.entropy_)


class DoSE(Detector):
    """Morningstar et al. (2021): a density over a model's per-example summary statistics.

    Fitted on the held-out ID images' statistics (:func:`ood_core.generative_scores.dose_statistics`:
    log p(x), per-level log p(z), log-det and ||z||^2 for a flow; IWAE, reconstruction and KL for a
    VAE; log p(x) alone for an autoregressive model). ``method="kde"`` (the default, the paper's) sums
    one 1-D KDE log-density per statistic; ``"joint_kde"`` (spec ``dose:method=joint_kde``) is one KDE
    over the statistics jointly; ``"ocsvm"`` a one-class SVM (:class:`ood_core.generative_scores.DoSE`).
    """

    family = names.GENERATIVE
    needs_fit = True

    def __init__(self, model: str = "glow", method: str = "kde"):
        self.model, self.method = model, method

    def fit(self, ctx):
        ev = ctx.likelihood(self.model)
        self.dose_ = gsc.DoSE(method=self.method).fit(gsc.dose_statistics(_heldout(ev, "DoSE")))
        self.keys_ = self.dose_.statistic_names_
        return self

    def score(self, ctx, key):
        self._require_fitted()
        return self.dose_.score(gsc.dose_statistics(ctx.likelihood(self.model).scores[key], self.keys_))


class FeatureDensity(ClassifierDetector):
    """Kirichenko et al. (2020): the log-likelihood of a flow trained on the classifier's ID training features.

    Units that are constant on the ID training features (ReLU units that never fire) have no density to
    learn and are left out of the flow, for training and scoring alike.
    """

    family = names.GENERATIVE

    def __init__(self, layers: int = 8, hidden: int = 256, epochs: int = 20):
        self.layers, self.hidden, self.epochs = layers, hidden, epochs

    def fit(self, ctx):
        from ood_core import experiment
        from ood_core.feature_flow import FeatureFlowConfig
        from ood_core.train import TrainConfig

        clf = ctx.require_classifier()
        f = clf.fit_feats["features"]
        self.keep_ = np.flatnonzero(f.std(0) > 0)
        f = f[:, self.keep_]
        flow = FeatureFlowConfig(dim=f.shape[1], n_layers=self.layers, hidden=self.hidden)
        train = TrainConfig(epochs=self.epochs, batch_size=min(256, len(f)), lr=1e-3, optimizer="adam",
                            warmup_steps=50, grad_clip=50.0, checkpoint_every=500, seed=ctx.seed)
        self.flow_ = experiment.train_feature_flow(f, flow, train, store=clf.store)
        self.seed = ctx.seed
        return self

    def score_features(self, feats, model):
        from ood_core.feature_flow import feature_flow_scores

        return torch.from_numpy(feature_flow_scores(self.flow_, feats["features"][:, self.keep_]))

    def predict(self, ctx, key):
        return None  # a density: it does not change the classifier's prediction


class InputComplexity(Detector):
    """Serrà et al. (2020): ``(log2 p(x) + L_codec(x)) / D`` with a lossless codec's code length."""

    family = names.GENERATIVE

    def __init__(self, codec: str = "png", model: str = "glow"):
        self.codec, self.model = codec, model

    def score(self, ctx, key):
        return gsc.input_complexity_score(ctx.likelihood(self.model).scores[key]["log_px"], ctx.images(key),
                                          codec=self.codec)


# ----------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Entry:
    """A registry entry: how to build the detector from its spec and how to name it in tables."""

    build: Callable[[Spec], Detector]
    title: Callable[[Spec], str]
    role: str = "score"  # "score" (stands alone), or a pipeline part: "clip", "shaper", "head"
    percentile: float | None = None  # default percentile; None = takes no percentile
    options: Mapping[str, Any] = field(default_factory=dict)
    family: str = names.CLASSIFIER
    doc: str = ""


def _pipeline(spec: Spec) -> Pipeline:
    return Pipeline(spec.parts)


def _fixed(title: str) -> Callable[[Spec], str]:
    """``title``, with the options that differ from their defaults: ``"KNN (k=5)"``."""
    def fn(spec: Spec) -> str:
        part = spec.parts[0]
        changed = [f"{k}={v}" for k, v in part.options if v != REGISTRY[part.name].options.get(k)]
        return f"{title} ({', '.join(changed)})" if changed else title
    return fn


def _pipeline_title(spec: Spec) -> str:
    """``"ASH-S@95 + ReAct"``: each stage's title (:meth:`Stage.part_title`), in the spec's order."""
    return " + ".join(stage(p.name).part_title(p.percentile) for p in spec.parts)


#: KNN's k on CIFAR-10 (Sun et al. 2022; OpenOOD v1.5) and the bank it was set for (all training images).
KNN_PAPER_K, KNN_PAPER_BANK = 50, 50000


def knn_k(option, n_bank: int) -> int:
    """KNN's ``k`` for a bank of ``n_bank`` features: an integer as given, or ``"scaled"``: the paper's
    ``k = 50`` at 50,000 training images scaled to the bank, ``max(1, round(50 * n_bank / 50000))``, so
    the k-th neighbour sits at the same quantile of the ID training distribution on a subsampled bank."""
    if option == "scaled":
        return max(1, round(KNN_PAPER_K * n_bank / KNN_PAPER_BANK))
    if isinstance(option, bool) or not isinstance(option, int) or option < 1:
        raise ValueError(f"knn k must be a positive integer or 'scaled'; got {option!r}")
    return option


def _knn_fit(option):
    def fit(estimator, f, logits, model):
        estimator.k = knn_k(option, len(f))
        return estimator.fit(f)
    return fit


def _top_m(value) -> int | None:
    return None if value == "all" else int(value)


def _exponent_title(spec: Spec) -> str:
    return f"s1/s2 (ASH-S@{spec.parts[0].percentile:g} exponent)"


def _ratio_title(spec: Spec) -> str:
    model = spec.parts[0].option("model")
    return "likelihood ratio" if model == "glow" else f"likelihood ratio ({_role_title(model)})"


_DOSE_METHOD_TITLES = {"kde": "KDE per statistic", "joint_kde": "joint KDE", "ocsvm": "OCSVM"}


def _dose_title(spec: Spec) -> str:
    part = spec.parts[0]
    method = part.option("method")
    return (f"DoSE ({_role_title(part.option('model'))}, "
            f"{_DOSE_METHOD_TITLES.get(method, str(method).upper())})")


def _codec_title(spec: Spec) -> str:
    return f"input complexity ({spec.parts[0].option('codec')})"


def _role_title(role: str) -> str:
    return families.role_titles().get(role, role)


class _Registry(MutableMapping):
    """The detector registry: fixed entries, with the pipeline stages (:func:`stages`) and the density
    families' log-likelihoods (:func:`ood_core.families.role_titles`) derived from their own registries,
    so that registering a shaper, a clip or a density family makes it a detector spec at once."""

    def __init__(self, before: dict[str, Entry], after: dict[str, Entry], generative: dict[str, Entry]):
        self._before, self._after, self._generative = before, after, generative

    def _items(self) -> dict[str, Entry]:
        parts = {n: Entry(_pipeline, _pipeline_title, role=st.role, percentile=st.percentile, doc=st.doc)
                 for n, st in stages().items()}
        log_p = {role: Entry(lambda s, role=role: LogLikelihood(role), _fixed(f"{title} log p"),
                             family=names.GENERATIVE, doc=f"{title} log-likelihood (Nalisnick et al. 2019)")
                 for role, title in families.role_titles().items()}
        return {**self._before, **parts, **self._after, **log_p, **self._generative}

    def __getitem__(self, name: str) -> Entry:
        return self._items()[name]

    def __iter__(self):
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __setitem__(self, name: str, entry: Entry) -> None:
        if entry.role != "score":
            raise ValueError("pipeline stages are registered with register_stage (clips, heads) or "
                             "ood_core.ash.register_shaper (shapers)")
        if name in self._items() and name not in self._generative:
            raise ValueError(f"{name!r} is a derived or fixed detector; choose another name")
        self._generative[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._generative[name]


#: Every detector, by spec name.
REGISTRY: _Registry = _Registry({
    # classifier detectors on logits
    "msp": Entry(lambda s: LogitScore(scores.msp), _fixed("MSP"), doc="max softmax probability (Hendrycks & Gimpel 2017)"),
    "max_logit": Entry(lambda s: LogitScore(scores.max_logit), _fixed("max-logit"), doc="max logit (Hendrycks et al. 2022)"),
    "energy": Entry(lambda s: Pipeline(), _fixed("energy"), doc="energy score (Liu et al. 2020)"),
    "odin": Entry(lambda s: ODIN(s.parts[0].option("temperature"), s.parts[0].option("epsilon")), _fixed("ODIN"),
                  options={"temperature": 1000.0, "epsilon": 0.0014}, doc="ODIN (Liang et al. 2018), CIFAR values"),
    "mahalanobis": Entry(lambda s: Mahalanobis(), _fixed("Mahalanobis"), doc="Mahalanobis (Lee et al. 2018), tied covariance"),
}, {
    "ash_exponent": Entry(lambda s: AshExponent(s.parts[0].percentile), _exponent_title, percentile=95.0,
                          doc="ASH-S's exponent s1/s2 alone (what dominates ASH-S's energy)"),
    # successors of ASH on features and logits
    "gen": Entry(lambda s: LogitScore(functools.partial(scores.gen, gamma=s.parts[0].option("gamma"),
                                                        top_m=_top_m(s.parts[0].option("top_m")))),
                 _fixed("GEN"), options={"gamma": 0.1, "top_m": "all"}, doc="generalized entropy (Liu et al. 2023)"),
    "knn": Entry(lambda s: Estimator(lambda: scores.KNN(), _knn_fit(s.parts[0].option("k")),
                                     lambda e, f, lg, m: e.score(f)),
                 _fixed("KNN"), options={"k": "scaled"},
                 doc="k-th nearest normalised ID training feature (Sun et al. 2022); k 'scaled' = "
                     "k 50 per 50,000 bank features (the paper's CIFAR-10 setting), at least 1"),
    "vim": Entry(lambda s: Estimator(lambda: scores.ViM(dim=s.parts[0].option("dim") or None),
                                     lambda e, f, lg, m: e.fit(f, m), lambda e, f, lg, m: e.score(m, f)),
                 _fixed("ViM"), options={"dim": 0}, doc="virtual-logit matching (Wang et al. 2022); dim 0 = auto"),
    "fdbd": Entry(lambda s: Estimator(scores.FDBD, lambda e, f, lg, m: e.fit(f), lambda e, f, lg, m: e.score(m, f)),
                  _fixed("fDBD"), doc="feature distance to decision boundaries (Liu & Qin 2024)"),
    "nnguide": Entry(lambda s: Estimator(lambda: scores.NNGuide(k=s.parts[0].option("k")),
                                         lambda e, f, lg, m: e.fit(f, lg), lambda e, f, lg, m: e.score(f, lg)),
                     _fixed("NNGuide"), options={"k": 10}, doc="nearest-neighbour guidance (Park et al. 2023)"),
}, {
    # generative detectors (after the density families' log p, derived)
    "likelihood_ratio": Entry(lambda s: LikelihoodRatio(s.parts[0].option("model")), _ratio_title,
                              options={"model": "glow"}, family=names.GENERATIVE,
                              doc="log p minus a background model's, trained on perturbed inputs (Ren et al. 2019)"),
    "typicality": Entry(lambda s: Typicality(), _fixed("typicality (M=1)"), family=names.GENERATIVE,
                        doc="typicality test at batch size 1 (Nalisnick et al. 2019b)"),
    "dose": Entry(lambda s: DoSE(s.parts[0].option("model"), s.parts[0].option("method")), _dose_title,
                  options={"model": "glow", "method": "kde"}, family=names.GENERATIVE,
                  doc="the sum of per-statistic KDE log-densities of a model's summary statistics, fitted on held-out "
                      "ID images (Morningstar et al. 2021); method=joint_kde: one KDE over them jointly"),
    "feature_flow": Entry(lambda s: FeatureDensity(s.parts[0].option("layers"), s.parts[0].option("hidden"),
                                                   s.parts[0].option("epochs")),
                          _fixed("flow on classifier features"), options={"layers": 8, "hidden": 256, "epochs": 20},
                          family=names.GENERATIVE, doc="log p of a flow on penultimate features (Kirichenko et al. 2020)"),
    "input_complexity": Entry(lambda s: InputComplexity(s.parts[0].option("codec")), _codec_title,
                              options={"codec": "png"}, family=names.GENERATIVE,
                              doc="likelihood corrected by a lossless code length (Serrà et al. 2020)"),
})


def _entry(name: str) -> Entry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None


def build(spec: str | Spec) -> Detector:
    """An unfitted detector for ``spec``."""
    spec = parse(spec)
    return _entry(spec.parts[0].name).build(spec)


def title(spec: str | Spec) -> str:
    """The name of ``spec`` in tables (``"ASH-S@95 + ReAct"``)."""
    return parse(spec).title


def family_of(spec: str | Spec) -> str:
    return _entry(parse(spec).parts[0].name).family


# ----------------------------------------------------------------------------------- suite

class Suite:
    """Every detector for one context, each fitted once (on first use) and run on any list of specs."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._fitted: dict[str, Detector] = {}

    def detector(self, spec: str | Spec) -> Detector:
        spec = parse(spec)
        key = str(spec)
        if key not in self._fitted:
            self._fitted[key] = build(spec).fit(self.ctx)
        return self._fitted[key]

    def scores(self, spec: str | Spec, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """``{key: scores}`` of one detector on ``keys`` (default: the context's ID test and OOD sets)."""
        det = self.detector(spec)
        return {k: det.score(self.ctx, k) for k in (keys or self.ctx.keys)}

    def accuracy(self, spec: str | Spec) -> float:
        """ID top-1 accuracy (%) of the prediction after the detector's pipeline (NaN for generative)."""
        pred = self.detector(spec).predict(self.ctx, names.ID_TEST)
        if pred is None:
            return float("nan")
        return 100.0 * float((pred == self.ctx.features(names.ID_TEST)["y"]).mean())

    def run(self, specs: Iterable[str | Spec]) -> dict[str, dict[str, np.ndarray]]:
        """``{title: {key: scores}}`` for every spec, in order."""
        return {title(s): self.scores(s) for s in specs}


# ----------------------------------------------------------------------------------- tables

def benchmark_table(suite: Suite, specs: Iterable[str | Spec], set_names: Mapping[str, str] | None = None
                    ) -> pd.DataFrame:
    """Long table: one row per (method, OOD set) plus a ``mean`` row per method; FPR95/AUROC/AUPR in %,
    and the ID accuracy each method leaves the classifier with."""
    set_names = set_names or suite.ctx.set_names
    rows = []
    for spec in parse_all(specs):
        s = suite.scores(spec)
        table = metrics.metrics_table(s[names.ID_TEST], {set_names.get(k, k): s[k] for k in suite.ctx.ood_keys})
        table.insert(0, names.METHOD, spec.title)
        table[names.ID_ACCURACY] = suite.accuracy(spec)
        rows.append(table.reset_index())
    return pd.concat(rows, ignore_index=True)


def score_table(detector_scores: Mapping[str, Mapping[str, np.ndarray]], families: Mapping[str, str],
                set_names: Mapping[str, str], n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Long table: detector, family, OOD set, AUROC with its bootstrap 95 % interval, FPR95, AUPRs (%)."""
    rows = []
    for det, sc in detector_scores.items():
        for key, s in sc.items():
            if key == names.ID_TEST:
                continue
            m = metrics.ood_metrics(sc[names.ID_TEST], s)
            lo, hi = metrics.bootstrap_ci(sc[names.ID_TEST], s, "AUROC", n_boot=n_boot, seed=seed)
            rows.append({names.DETECTOR: det, names.FAMILY: families[det], names.OOD_SET: set_names.get(key, key),
                         names.AUROC: m["AUROC"], names.AUROC_LOW: lo, names.AUROC_HIGH: hi, names.FPR95: m["FPR95"],
                         names.AUPR_IN: m["AUPR_In"], names.AUPR_OUT: m["AUPR_Out"]})
    return pd.DataFrame(rows)


def run_table(ctx: Context, specs: Iterable[str | Spec], n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """:func:`score_table` of every spec on the context's sets (the unified benchmark's table)."""
    specs = parse_all(specs)
    suite = Suite(ctx)
    return score_table(suite.run(specs), {s.title: family_of(s) for s in specs}, ctx.set_names,
                       n_boot=n_boot, seed=seed)


def typicality_table(glow_ev, batch_sizes, seed: int = 0) -> pd.DataFrame:
    """AUROC of the typicality test against batch size M for every OOD set (Nalisnick et al. 2019b)."""
    entropy = gsc.estimate_entropy(-_heldout(glow_ev, "typicality")["log_px"])
    frames = []
    for k, s in glow_ev.sets.items():
        if k in names.ID_KEYS:
            continue
        t = gsc.typicality_auroc_by_batch_size(-glow_ev.scores[names.ID_TEST]["log_px"], -glow_ev.scores[k]["log_px"],
                                               entropy, batch_sizes, seed=seed)
        t.insert(0, names.OOD_SET, s.name)
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def seed_table(scores_by_seed: Mapping[int, Mapping[str, Mapping[str, np.ndarray]]], families: Mapping[str, str],
               set_names: Mapping[str, str], id_name: str) -> pd.DataFrame:
    """Long table of AUROC / FPR95 / AUPRs (%) per training seed, detector and OOD set.

    ``scores_by_seed[seed]`` is a ``{detector: {set key: scores}}`` mapping as in :func:`score_table`,
    computed from models trained with that seed on the same images.
    """
    rows = []
    for seed, detector_scores in scores_by_seed.items():
        for det, sc in detector_scores.items():
            for key, s in sc.items():
                if key == names.ID_TEST:
                    continue
                m = metrics.ood_metrics(sc[names.ID_TEST], s)
                rows.append({"ID": id_name, names.OOD_SET: set_names.get(key, key), names.DETECTOR: det,
                             names.FAMILY: families[det], "seed": seed, **m})
    return pd.DataFrame(rows)


def seed_summary(long: pd.DataFrame, metric: str = names.AUROC) -> pd.DataFrame:
    """Mean, sample std, min, max and number of seeds of ``metric`` per (ID, OOD set, detector)."""
    g = long.groupby(["ID", names.OOD_SET, names.FAMILY, names.DETECTOR], sort=False)[metric]
    out = g.agg(mean="mean", std=lambda v: gsc.seed_spread(v.to_numpy())[1], min="min", max="max", seeds="count")
    return out.reset_index()


def registry_table() -> pd.DataFrame:
    """The registered detectors: spec name, family, default percentile, options, what it is."""
    return pd.DataFrame([{"spec": name, "family": e.family, "role": e.role,
                          "default percentile": e.percentile, "options": dict(e.options) or "", "detector": e.doc}
                         for name, e in REGISTRY.items()])

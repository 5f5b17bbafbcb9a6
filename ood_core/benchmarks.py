"""The book's benchmarks: which models a detector list needs, trained or loaded, on one set of images.

A benchmark is an ID dataset, its evaluation sets (the same images for every detector) and a list of
detector specs (:mod:`ood_core.detectors`). :func:`requirements` reads from the specs which models
they need -- likelihood *roles* (``"glow"``, ``"cv_glow"``, ``"background"``, ``"vae"``,
``"pixelcnn"``, ``"pixelcnn_background"``) and the classifier -- and :func:`context` trains or loads
only those, through the profile's **role table** (:func:`unified_roles` for the unified benchmark,
:func:`seed_roles` for the seed study), and returns the :class:`ood_core.detectors.Context`.

Chapters that show the same benchmark (the unified benchmark, the seed study, "what works
instead") call the same function with the same arguments, so every model and score is computed
once and read from the artifact cache after that.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

from ood_core import classifier_study as cs
from ood_core import detectors
from ood_core import likelihood_study as ls
from ood_core.experiment import LikelihoodRun

#: ``role -> (run, n_eval)`` for one ID dataset.
RoleTable = Mapping[str, Callable[[], tuple[LikelihoodRun, int | None]]]


def requirements(specs: Iterable[str]) -> tuple[set[str], bool]:
    """The likelihood roles the detectors of ``specs`` read, and whether they need the classifier."""
    roles, classifier = set(), False
    for spec in detectors.parse_all(specs):
        det = detectors.build(spec)
        roles |= set(det.roles())
        classifier |= isinstance(det, detectors.ClassifierDetector)
    return roles, classifier


def background(run: LikelihoodRun, rate: float, weight_decay: float = 0.0, **model_changes) -> LikelihoodRun:
    """Ren et al.'s background model of ``run``: the same recipe (optionally resized), inputs with pixels
    replaced at ``rate``, and an L2 penalty ``weight_decay`` on its weights."""
    bg = run.background(rate, **model_changes)
    return dataclasses.replace(bg, train=dataclasses.replace(bg.train, weight_decay=weight_decay))


def unified_roles(P, dataset: str) -> RoleTable:
    """The models of the unified benchmark for ``dataset`` (the chapters' runs and their variants)."""
    U, run = P.unified, P.glow.runs[dataset]
    n_glow, n_fam = P.glow.n_eval, P.families.n_eval
    pixelcnn = P.families.pixelcnn[dataset]
    return {
        "glow": lambda: (run, n_glow),
        "cv_glow": lambda: (run.with_model(coupling="additive"), n_glow),
        "background": lambda: (background(run, U.background_rate, U.background_weight_decay,
                                          steps=U.background_steps, width=U.background_width), n_glow),
        "vae": lambda: (P.families.vae[dataset], n_fam),
        "pixelcnn": lambda: (pixelcnn, n_fam),
        "pixelcnn_background": lambda: (background(pixelcnn, U.pixelcnn_background_rate,
                                                   U.pixelcnn_background_weight_decay), n_fam),
    }


def seed_roles(P, dataset: str, train_seed: int, curve_sets: tuple[str, ...]) -> RoleTable:
    """The seed study's small models on ``dataset`` trained with ``train_seed``."""
    S, U = P.seeds, P.unified

    def on(run: LikelihoodRun) -> LikelihoodRun:
        return run.on(dataset, curve_sets).with_seed(train_seed)

    return {
        "glow": lambda: (on(S.glow), S.n_eval),
        "vae": lambda: (on(S.vae), S.n_eval),
        "pixelcnn": lambda: (on(S.pixelcnn), S.n_eval),
        "pixelcnn_background": lambda: (on(background(S.pixelcnn, U.pixelcnn_background_rate,
                                                      U.pixelcnn_background_weight_decay)), S.n_eval),
        "background": lambda: (on(background(S.glow, U.background_rate, U.background_weight_decay)), S.n_eval),
    }


def context(roles: RoleTable, specs: Iterable[str], ood, classifier=None, n_fit=None, classifier_n_eval=None,
            seed: int = 0, device=None) -> detectors.Context:
    """Train or load what ``specs`` need (likelihood roles from ``roles``; ``classifier``, a
    :class:`ood_core.experiment.ClassifierRun`, when a classifier detector is listed), score the
    evaluation sets and return the context (same images checked)."""
    needed, needs_classifier = requirements(specs)
    unknown = needed - set(roles)
    if unknown:
        raise ValueError(f"the detectors need models {sorted(unknown)} that this benchmark does not define "
                         f"(it has {sorted(roles)})")
    likelihoods = {}
    for role in [r for r in roles if r in needed]:
        run, n_eval = roles[role]()
        likelihoods[role] = ls.evaluate(run, n_eval, ood, seed=seed, device=device)
    clf = None
    if needs_classifier:
        if classifier is None:
            raise ValueError("the detectors need a classifier: pass classifier=<ClassifierRun>")
        clf = cs.evaluate(classifier, classifier_n_eval, n_fit, ood, seed=seed, device=device)
    first = next(iter(likelihoods.values()), None)
    sets = dict(first.sets) if first is not None else {**{"ID test": clf.id_set}, **clf.ood_sets}
    return detectors.Context(sets, classifier=clf, likelihoods=likelihoods, seed=seed)


def unified_context(P, dataset: str, specs: Iterable[str], seed: int = 0, device=None) -> detectors.Context:
    """The unified benchmark on ``dataset``: the Glow chapters' OOD sets, every model ``specs`` need."""
    C = P.classifier
    return context(unified_roles(P, dataset), specs, P.glow.ood[dataset], classifier=C.runs[dataset],
                   n_fit=C.n_fit, classifier_n_eval=C.n_eval, seed=seed, device=device)


def seed_context(P, dataset: str, train_seed: int, specs: Iterable[str], other: str, seed: int = 0,
                 device=None) -> detectors.Context:
    """The seed study on ``dataset`` with models trained with ``train_seed`` (``other``: the curve set)."""
    S = P.seeds
    return context(seed_roles(P, dataset, train_seed, (other,)), specs, S.ood[dataset],
                   classifier=S.classifier.on(dataset).with_seed(train_seed), n_fit=P.classifier.n_fit,
                   classifier_n_eval=S.n_eval, seed=seed, device=device)

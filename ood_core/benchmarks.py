"""The book's benchmarks: which models a detector list needs, trained or loaded, on one set of images.

A benchmark is an ID dataset, its evaluation sets (the same images for every detector) and a list of
detector specs (:mod:`ood_core.detectors`). :func:`requirements` reads from the specs which models
they need -- likelihood *roles* (``"glow"``, ``"cv_glow"``, ``"background"``, ``"vae"``,
``"pixelcnn"``, ``"pixelcnn_background"``) and the classifier -- and :func:`context` trains or loads
only those, through the profile's **role table** (:func:`unified_roles` for the unified benchmark,
:func:`seed_roles` for the seed study), and returns the :class:`ood_core.detectors.Context`. The role
tables are derived from the model families (:attr:`ood_core.families.Family.benchmark`), so a registered
density family takes part without a change here.

Chapters that show the same benchmark (the unified benchmark, the seed study, "what works
instead") call the same function with the same arguments, so every model and score is computed
once and read from the artifact cache after that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from ood_core import classifier_study as cs
from ood_core import detectors, families
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


#: Ren et al.'s background model of a run (kept here for the chapters and tools that call it).
background = families.background_run


def unified_roles(P, dataset: str) -> RoleTable:
    """The models of the unified benchmark for ``dataset``, from every likelihood family's
    :class:`ood_core.families.Benchmark`: its run, its variants (``"cv_glow"``) and its background model."""
    table: dict[str, Callable[[], tuple[LikelihoodRun, int | None]]] = {}
    for fam in families.FAMILIES.values():
        b = fam.benchmark
        if b is None:
            continue
        table[fam.name] = lambda b=b: b.unified(P, dataset)
        for role, changes in fam.variants.items():
            table[role] = lambda b=b, changes=changes: _changed(b.unified(P, dataset), changes)
        if b.background is not None:
            table[fam.background_role] = lambda b=b: _background_of(b.background, P, b.unified(P, dataset))
    return table


def _changed(run_n: tuple[LikelihoodRun, int | None], changes) -> tuple[LikelihoodRun, int | None]:
    run, n = run_n
    return run.with_model(**changes), n


def _background_of(make, P, run_n: tuple[LikelihoodRun, int | None]) -> tuple[LikelihoodRun, int | None]:
    run, n = run_n
    return make(P, run), n


def seed_roles(P, dataset: str, train_seed: int, curve_sets: tuple[str, ...]) -> RoleTable:
    """The seed study's small models on ``dataset`` trained with ``train_seed``: every likelihood family's
    seed recipe (:attr:`ood_core.families.Benchmark.seed`) and its background model."""
    n_eval = P.seeds.n_eval

    def on(run: LikelihoodRun) -> LikelihoodRun:
        return run.on(dataset, curve_sets).with_seed(train_seed)

    table: dict[str, Callable[[], tuple[LikelihoodRun, int | None]]] = {}
    for fam in families.FAMILIES.values():
        b = fam.benchmark
        if b is None or b.seed is None:
            continue
        table[fam.name] = lambda b=b: (on(b.seed(P)), n_eval)
        make_bg = b.seed_background or b.background
        if make_bg is not None:
            table[fam.background_role] = lambda b=b, make_bg=make_bg: (on(make_bg(P, b.seed(P))), n_eval)
    return table


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

"""Artifact keys: committed results stay reachable, every field reaches the key, stale code cannot hide.

The ``results/`` folders hold GPU runs that cannot be redone on the machines that build the book; a
silent change of their key would turn every paper-profile section of the book into "no results yet".
"""

import dataclasses
import json
from pathlib import Path

import pytest

from ood_core import artifacts, classifier_study as cs, likelihood_study as ls, profiles
from ood_core.experiment import ClassifierRun, LikelihoodRun

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"


def _paper_runs():
    """Every run of the paper profile that can export results, with the kind it exports."""
    P = profiles.get_profile("paper")
    runs = []
    for run in P.glow.runs.values():
        runs += [("glow_results", run), ("glow_results", run.with_model(coupling="additive"))]
    runs += [("classifier_results", run) for run in P.classifier.runs.values()]
    return runs


def _committed():
    return sorted(p for p in RESULTS.glob("*/*") if p.is_dir() and (p / "DONE").is_file())


def test_every_committed_result_is_reached_by_a_paper_profile_run():
    reached = {artifacts.ArtifactStore(RESULTS).path(kind, run.key()) for kind, run in _paper_runs()}
    committed = _committed()
    assert committed, "no committed results found under results/"
    unreachable = [str(p.relative_to(REPO)) for p in committed if p not in reached]
    assert not unreachable, (f"committed results no paper-profile run reaches: {unreachable}; a key changed -- "
                             "migrate the folders (tools/migrate_keys.py) instead of losing GPU runs")


def test_published_results_load_for_the_paper_runs():
    P = profiles.get_profile("paper")
    pub = ls.published(P.glow.runs["fashion_mnist"])
    assert pub is not None and "mnist" in pub.names and len(pub.scores["mnist"]["bpd"]) == 10000
    for ds in ("cifar10", "fashion_mnist"):
        pub = cs.published(P.classifier.runs[ds])
        assert pub is not None and {"summary", "benchmark", "sweep"} <= set(pub.tables)


def test_committed_config_and_done_name_the_folder():
    for folder in _committed():
        saved = json.loads((folder / "config.json").read_text())
        kind = folder.parent.name
        assert artifacts.artifact_key(kind, saved) == folder.name
        assert (folder / "DONE").read_text().strip() == folder.name


@dataclasses.dataclass(frozen=True)
class _A:
    width: int = 8


@dataclasses.dataclass(frozen=True)
class _B:
    depth: int = 8  # the same value under another field name


@dataclasses.dataclass(frozen=True)
class _C:
    width: int = 8
    batch: int = dataclasses.field(default=4, metadata={"key": False})
    smoothing: float = dataclasses.field(default=0.0, metadata={"key": "if-set"})  # a knob added later


def test_renaming_a_config_field_changes_the_key():
    assert artifacts.config_key(_A()) != artifacts.config_key(_B())
    assert artifacts.artifact_key("glow", _A()) != artifacts.artifact_key("glow", _B())
    assert artifacts.config_key(_A()) == artifacts.config_key({"width": 8})
    assert artifacts.config_key(_C()) == artifacts.config_key(_A())  # only declared fields stay out
    assert artifacts.config_key(dataclasses.replace(_C(), batch=9)) == artifacts.config_key(_C())
    # a later knob at its default keeps old keys; set, it is in the key
    assert artifacts.config_dict(_C()) == {"width": 8}
    assert artifacts.config_dict(dataclasses.replace(_C(), smoothing=0.1)) == {"width": 8, "smoothing": 0.1}


def test_kind_and_version_are_part_of_the_key(monkeypatch):
    cfg = {"run": 1}
    assert artifacts.artifact_key("glow", cfg) != artifacts.artifact_key("vae", cfg)
    before = artifacts.artifact_key("classifier_tables", cfg)
    bumped = dataclasses.replace(artifacts.KINDS["classifier_tables"], version=99)
    monkeypatch.setitem(artifacts.KINDS, "classifier_tables", bumped)
    assert artifacts.artifact_key("classifier_tables", cfg) != before  # a bump makes old tables unreachable
    with pytest.raises(ValueError, match="unknown artifact kind 'tabels'.*register it"):
        artifacts.artifact_key("tabels", cfg)


def _variants(run):
    """``run`` with each of its scalar fields (and TrainConfig's, model keywords) changed in turn."""
    out = []
    for f in dataclasses.fields(run):
        value = getattr(run, f.name)
        if not f.metadata.get("key", True):
            continue
        if isinstance(value, bool):
            out.append((f.name, dataclasses.replace(run, **{f.name: not value})))
        elif isinstance(value, float) and f.name != "perturb":  # a float knob may be bounded (label smoothing < 1)
            out.append((f.name, dataclasses.replace(run, **{f.name: value / 2 if value else 0.25})))
        elif isinstance(value, int) and f.name != "perturb":
            out.append((f.name, dataclasses.replace(run, **{f.name: value + 1})))
        elif value is None:
            out.append((f.name, dataclasses.replace(run, **{f.name: 7})))
        elif isinstance(value, tuple):
            out.append((f.name, dataclasses.replace(run, **{f.name: (*value, "uniform")})))
    out.append(("train.lr", dataclasses.replace(run, train=dataclasses.replace(run.train, lr=run.train.lr * 2))))
    out.append(("train.seed", run.with_seed(run.train.seed + 1)))
    if isinstance(run, LikelihoodRun):
        out.append(("model.width", run.with_model(width=run.model["width"] * 2)))
        out.append(("perturb", dataclasses.replace(run, perturb=0.3)))
    else:
        out.append(("model.width", dataclasses.replace(run, model=dataclasses.replace(run.model, width=8))))
    return out


@pytest.mark.parametrize("name", profiles.PROFILES)
def test_every_run_field_reaches_the_key(name):
    """Changing any field of a run changes its key (a field missing from the key would serve stale models)."""
    P = profiles.get_profile(name)
    for run in [*P.glow.runs.values(), *P.classifier.runs.values(), *P.families.vae.values(),
                *P.families.pixelcnn.values(), *P.classifier.networks.values(), P.seeds.glow, P.seeds.vae,
                P.seeds.classifier]:
        base = artifacts.artifact_key(run.spec.model_kind, run.key())
        for what, other in _variants(run):
            assert artifacts.artifact_key(run.spec.model_kind, other.key()) != base, f"{run.label}: {what} not in the key"


def test_no_artifact_kind_has_stale_code():
    """The code behind every artifact kind matches its recorded fingerprint (or its version was bumped and recorded).

    If this fails after you changed code: decide whether cached artifacts of that kind now mean
    something else. If they do, bump the kind's version in ood_core/artifacts.py (old caches become
    unreachable, committed results need tools/migrate_keys.py-style care); then run
    ``python -m ood_core keys --record`` and commit ood_core/artifact_fingerprints.json.
    """
    assert artifacts.stale_kinds() == []


def test_a_code_change_is_detected_and_a_comment_is_not(monkeypatch):
    name = "classifier_tables"
    fp = artifacts.code_fingerprint(name)
    real = artifacts._source_of

    def with_comment(ref):
        return real(ref) + "\n# a comment changes nothing\n"

    monkeypatch.setattr(artifacts, "_source_of", with_comment)
    assert artifacts.code_fingerprint(name) == fp

    def with_code(ref):
        return real(ref) + "\nTHRESHOLD = 0.5\n"

    monkeypatch.setattr(artifacts, "_source_of", with_code)
    assert artifacts.code_fingerprint(name) != fp


def test_classifier_runs_and_likelihood_runs_use_the_one_policy():
    P = profiles.get_profile("smoke")
    for run in (P.glow.runs["cifar10"], P.classifier.runs["cifar10"]):
        assert run.key() == artifacts.config_dict(run)
        # every key field, and a key-if-set field exactly when it differs from its default
        expected = {f.name for f in dataclasses.fields(run)
                    if f.metadata.get("key", True) is True
                    or (f.metadata.get("key") == "if-set" and getattr(run, f.name) != f.default)}
        assert set(run.key()) == expected
    assert isinstance(P.classifier.runs["cifar10"], ClassifierRun)

"""Safeguards of the artifact keys: committed paper-profile results stay reachable, and the key sees every field.

The ``results/`` folders hold GPU runs that cannot be redone on the machines that build the book; a
silent change of their key would turn every paper-profile section of the book into "no results yet".
"""

import dataclasses
import json
from pathlib import Path

from ood_core import artifacts, classifier_study as cs, glow_study as gs, profiles

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"


def _paper_runs():
    """Every run of the paper profile that can export results, with the kind it exports."""
    P = profiles.get_profile("paper")
    runs = []
    for run in P.glow.runs.values():
        runs += [("glow_results", run), ("glow_results", run.with_coupling("additive"))]
    runs += [("classifier_results", run) for run in P.classifier.runs.values()]
    return runs


def _committed():
    return sorted(p for p in RESULTS.glob("*/*") if p.is_dir() and (p / "DONE").is_file())


def test_every_committed_result_is_reached_by_a_paper_profile_run():
    reached = {artifacts.ArtifactStore(RESULTS).path(kind, run.to_dict()) for kind, run in _paper_runs()}
    committed = _committed()
    assert committed, "no committed results found under results/"
    unreachable = [str(p.relative_to(REPO)) for p in committed if p not in reached]
    assert not unreachable, (f"committed results no paper-profile run reaches: {unreachable}; a key changed -- "
                             "migrate the folders (tools/migrate_keys.py) instead of losing GPU runs")


def test_published_results_load_for_the_paper_runs():
    P = profiles.get_profile("paper")
    assert gs.published(P.glow.runs["fashion_mnist"]) is not None
    for ds in ("cifar10", "fashion_mnist"):
        assert cs.published(P.classifier.runs[ds]) is not None


def test_committed_config_is_the_run_config():
    store = artifacts.ArtifactStore(RESULTS)
    for kind, run in _paper_runs():
        folder = store.path(kind, run.to_dict())
        if folder.is_dir():
            saved = json.loads((folder / "config.json").read_text())
            assert artifacts.config_key(saved) == folder.name


@dataclasses.dataclass(frozen=True)
class _A:
    width: int = 8


@dataclasses.dataclass(frozen=True)
class _B:
    depth: int = 8  # the same value under another field name


def test_renaming_a_config_field_changes_the_key():
    assert artifacts.config_key(dataclasses.asdict(_A())) != artifacts.config_key(dataclasses.asdict(_B()))
    run = profiles.get_profile("smoke").glow.runs["fashion_mnist"]
    d = run.to_dict()
    renamed = {("n_curves" if k == "n_curve" else k): v for k, v in d.items()}
    assert artifacts.config_key(renamed) != artifacts.config_key(d)

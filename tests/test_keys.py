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
    problems = artifacts.stale_kinds()
    assert not problems, ("stale artifact kinds: " + ", ".join(p.split(":")[0] for p in problems) + "\n"
                          + "\n".join(problems))


def test_a_code_change_is_detected_and_a_comment_is_not(tmp_path):
    import shutil

    copy = tmp_path / "ood_core"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    fp = artifacts.code_fingerprint("classifier_tables", copy)
    assert fp == artifacts.code_fingerprint("classifier_tables")  # where the package lies does not matter
    _insert_first_statement(copy / "ash.py", "ash_s", "# a comment changes nothing")
    (copy / "ash.py").write_text("\n\n" + (copy / "ash.py").read_text())  # nor does layout
    assert artifacts.code_fingerprint("classifier_tables", copy) == fp
    _insert_first_statement(copy / "ash.py", "ash_s", "percentile = float(percentile)")
    assert artifacts.code_fingerprint("classifier_tables", copy) != fp


def test_stale_code_fails_the_suite_naming_the_kind(tmp_path, monkeypatch):
    """What the author of a change sees: the kinds whose reached code changed, by name, and what to do."""
    import shutil

    copy = tmp_path / "ood_core"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = artifacts.stale_kinds()
    _insert_first_statement(copy / "metrics.py", "auroc", "id_scores = id_scores")
    monkeypatch.setattr(artifacts, "_PACKAGE_DIR", copy)
    problems = [p for p in artifacts.stale_kinds() if p not in before]
    stale = {p.split(":")[0] for p in problems}
    assert "classifier_tables" in stale and "glow" not in stale  # the Glow does not reach the metrics
    assert all("bump its version" in p and "python -m ood_core keys --record" in p for p in problems)


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


# ----------------------------------------------------------------------------- fingerprints by reachability

PACKAGE = REPO / "ood_core"


def _insert_first_statement(path: Path, function: str, statement: str) -> None:
    """Insert ``statement`` as the first statement (after the docstring) of the module-level ``function``."""
    import ast

    source = path.read_text()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == function)
    first = node.body[1] if len(node.body) > 1 and isinstance(node.body[0], ast.Expr) else node.body[0]
    lines = source.splitlines(keepends=True)
    indent = lines[first.lineno - 1][: first.col_offset]
    lines.insert(first.lineno - 1, f"{indent}{statement}\n")
    path.write_text("".join(lines))


def _fingerprints_of_copy(tmp_path: Path, edit) -> dict[str, str]:
    """Every kind's fingerprint computed by a copy of the package (imported from the copy) after ``edit(copy)``."""
    import shutil
    import subprocess
    import sys

    root = tmp_path / "src"
    shutil.copytree(PACKAGE, root / "ood_core", ignore=shutil.ignore_patterns("__pycache__"))
    edit(root / "ood_core")
    code = ("import json; from ood_core import artifacts, families; "
            "print(json.dumps({k: artifacts.code_fingerprint(k) for k in artifacts.KINDS}))")
    env = {**__import__("os").environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_helper_reached_only_indirectly_makes_its_kinds_stale(tmp_path):
    """``families.training_images`` is not listed by any kind: the Family entries reach it through their training
    functions. Changing its body must change every trained model's fingerprint (the copy is imported, not parsed
    here, so the test exercises the fingerprint exactly as ``python -m ood_core keys`` computes it)."""
    before = {k: artifacts.code_fingerprint(k) for k in artifacts.KINDS}
    after = _fingerprints_of_copy(tmp_path, lambda pkg: _insert_first_statement(
        pkg / "families.py", "training_images", "run = run.with_seed(run.train.seed + 1)"))
    stale = {k for k in before if before[k] != after[k]}
    assert {"glow", "classifier", "vae", "pixelcnn"} <= stale, f"only {sorted(stale)} became stale"
    assert "classifier_features" not in stale and "evidence" not in stale  # they do not reach the training set


def test_the_background_perturbation_reaches_the_glow_fingerprint_and_a_comment_does_not(tmp_path):
    """Ren et al.'s input perturbation (``generative_scores.perturb_pixels``) is imported inside a function of
    ``ood_core.families``; a change of its body makes the Glow (whose background models it trains) stale, not the
    classifier. A comment and a docstring change elsewhere on the same path change nothing."""
    def edit(pkg):
        _insert_first_statement(pkg / "generative_scores.py", "perturb_pixels", "rate = min(rate, 0.5)")
        text = (pkg / "families.py").read_text()
        marker = 'def training_images(run) -> data.ImageSet:\n    """The ID training images'
        assert marker in text
        (pkg / "families.py").write_text(text.replace(
            marker, '# a comment\ndef training_images(run) -> data.ImageSet:  # another\n    """Reworded: the images'))

    before = {k: artifacts.code_fingerprint(k) for k in artifacts.KINDS}
    after = _fingerprints_of_copy(tmp_path, edit)
    assert before["glow"] != after["glow"]
    assert before["classifier"] == after["classifier"]

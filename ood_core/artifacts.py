"""The one place that owns disk: a content-addressed cache of trained models, scores and tables.

Layout: ``<root>/<kind>/<key>/``. The ``kind`` is one of :data:`KINDS` (a name, a schema version and
the code whose behaviour defines the payload); the ``key`` is the first 16 hex digits of the sha256
of the canonical JSON of ``{"kind", "version", "config"}``, where ``config`` is made by
:func:`config_dict` -- **one key policy for everything**: every field of a dataclass config is in
the key (recursively), unless the field is declared ``field(metadata={"key": False})`` with the
reason beside it. The folder holds ``config.json``, ``meta.json`` (hardware, versions, wall time,
date), the payload (``arrays.npz``, ``model.pt``, ``table.csv``...) and, written last, ``DONE``. A
folder without ``DONE`` is never trusted.

Stale artifacts. When code changes what a cached artifact *means*, its kind's version is bumped and
every old key becomes unreachable. A test (``tests/test_keys.py``) fingerprints the code each kind
lists *and every function, class and module-level statement of the package that code reaches*
(:func:`reachable`, a static reference graph; comments, docstrings and layout ignored) and fails,
naming the kind, when it changed since the
fingerprint recorded in ``artifact_fingerprints.json``: the author then decides -- bump the version
(the meaning changed) or not (a refactoring) -- and records the new fingerprint with
``python -m ood_core keys --record``. A forgotten bump cannot pass the test suite silently.

Atomicity: an artifact is assembled in a private temporary folder beside its final place and moved
there with one ``os.rename``; a run killed midway leaves only a ``.tmp-*`` folder that is ignored and
cleaned up later. Long computations that must survive interruption (training) get a stable
``<key>.work/`` folder from :meth:`ArtifactStore.workdir` for their checkpoints.

Roots: ``artifacts/`` in the checkout (``$OOD_ARTIFACTS`` overrides) for what this machine computed;
``results/`` (committed) for small paper-profile results made on a GPU, read by the book beside the
CPU runs. Committed results cannot be recomputed here; a test pins that the paper profile still
reaches every committed folder, and ``tools/migrate_keys.py`` moves folders when a key policy changes.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as _dt
import hashlib
import functools
import io
import json
import logging
import os
import platform
import shutil
import tempfile
import textwrap
import time
import tokenize
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

ARTIFACTS_ENV = "OOD_ARTIFACTS"
_REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Kind:
    """An artifact kind: its schema ``version`` and the ``code`` that defines what it holds.

    ``code`` lists the roots -- modules (``"ood_core.flows"``) or objects (``"ood_core.families:GLOW"``)
    -- whose behaviour determines the payload; the fingerprint covers them and everything of the
    package they reach (:func:`reachable`) and is pinned by the test suite.
    """

    name: str
    version: int
    code: tuple[str, ...]
    doc: str


#: Every artifact kind the package writes. Bump a version when its code changes what it means.
#: The model families' kinds (glow, glow_scores, vae, vae_scores, pixelcnn, pixelcnn_scores, classifier) are
#: declared on their :class:`ood_core.families.Family` entries and added here when ``ood_core.families`` registers
#: them (this module is below the families and does not import them); the kinds listed here are the others.
#: Last bumps: the Glow path and AirbenchNet had changed without a bump, Ren et al.'s background now perturbs
#: sub-pixels (and the Glow background has an L2 penalty), DoSE sums per-statistic KDEs, the classifier tables
#: are keyed by image content and the claim rules changed: glow 3, vae 3, pixelcnn 3, classifier 3 and every
#: kind keyed by their runs (glow_scores 4, vae_scores 3, pixelcnn_scores 3, classifier_features 3,
#: classifier_tables 4), evidence 2. The committed-results kinds (glow_results, classifier_results) keep their
#: versions: their keys are the run configs, which did not change, so results/ stays reachable.
#: Then classifier_features 4, odin_scores 2, classifier_tables 6 and feature_flow 2 (trained on the features): CPU
#: evaluation batches are channels-last (faster; features equal to float32 rounding, not bit-identical), bumped so
#: that a cached and a fresh build agree exactly.
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("classifier_features", 4, ("ood_core.classifiers", "ood_core.scores:compute_logits_and_features"),
         "penultimate features and logits of one image set"),
    Kind("classifier_tables", 6, ("ood_core.ash", "ood_core.scores", "ood_core.metrics", "ood_core.detectors",
                                  "ood_core.classifier_study"),
         "benchmark, percentile-sweep, local-vs-global and where-to-ASH tables of one evaluation"),
    Kind("odin_scores", 2, ("ood_core.scores:odin", "ood_core.classifiers", "ood_core.classifier_study:ClassifierEvaluation.odin_scores"),
         "ODIN scores of one network on one image set (input perturbation: a backward pass per image)"),
    Kind("feature_flow", 2, ("ood_core.feature_flow", "ood_core.train", "ood_core.experiment:train_feature_flow"),
         "a flow trained on a classifier's penultimate features (Kirichenko et al.)"),
    Kind("evidence", 2, ("ood_core.claims",), "the measured evidence of one claim, recorded by a chapter"),
    Kind("glow_results", 1, ("ood_core.likelihood_study:export_results",),
         "committed paper-profile likelihood results (per-example bits/dim terms, curves)"),
    Kind("classifier_results", 1, ("ood_core.classifier_study:export_results",),
         "committed paper-profile classifier results (tables, curves)"),
)}


def kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown artifact kind {name!r}; register it in ood_core.artifacts.KINDS, or with its "
                         f"model family (ood_core.families.register; import ood_core.families first) "
                         f"(known: {', '.join(sorted(KINDS))})") from None


def config_dict(obj: Any) -> Any:
    """The JSON form of a config: **the** key policy of the package.

    Dataclass instances become ``{field: value}`` over *all* their fields, recursively, except
    fields declared with ``metadata={"key": False}`` (results do not depend on them, e.g. an
    evaluation batch size that only trades memory for speed), and fields declared with
    ``metadata={"key": "if-set"}`` while they hold their default: a knob added after results were
    committed (its default reproduces the old behaviour) enters the key only when it is used, so the
    keys of existing runs stay put. Mappings keep their keys (as strings), tuples become lists,
    numpy scalars Python numbers, paths strings.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            policy, value = f.metadata.get("key", True), getattr(obj, f.name)
            if policy is False or (policy == "if-set" and value == f.default):
                continue
            out[f.name] = config_dict(value)
        return out
    if isinstance(obj, Mapping):
        return {str(k): config_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [config_dict(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def canonical_json(config: Any) -> str:
    return json.dumps(config_dict(config), sort_keys=True, separators=(",", ":"))


def config_key(config: Any) -> str:
    """16 hex digits of the sha256 of the config's canonical JSON (keys sorted, tuples as lists)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def artifact_key(kind_name: str, config: Any) -> str:
    """The folder name of ``config`` under ``kind_name``: the config *and* the kind's schema version."""
    k = kind(kind_name)
    return config_key({"kind": k.name, "version": k.version, "config": config_dict(config)})


# ----------------------------------------------------------------------------- code fingerprints

PACKAGE = "ood_core"
_PACKAGE_DIR = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class _Module:
    """One parsed module of the package: its top-level statements and the names they bind."""

    name: str  # "ood_core.families"
    source: str
    statements: tuple[ast.stmt, ...]
    defines: dict[str, int]  # top-level name -> index of the (last) statement that binds it
    aliases: dict[str, tuple[str, str | None]]  # imported name -> (module, attribute or None for a module)
    normalized: dict[int, str] = dataclasses.field(default_factory=dict)  # statement index -> normalised source


def _normalized_statement(m: _Module, i: int) -> str:
    if i not in m.normalized:
        m.normalized[i] = normalized_source(_statement_source(m.source.splitlines(keepends=True), m.statements[i]))
    return m.normalized[i]


def _statement_source(source_lines: list[str], node: ast.stmt) -> str:
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", ())])
    return "".join(source_lines[start - 1:node.end_lineno])


def _bound_names(node: ast.stmt) -> list[str]:
    """Names a top-level statement binds (definitions and assignments; imports are aliases, see below)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    targets: list[ast.AST] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    elif isinstance(node, (ast.If, ast.Try, ast.With)):  # e.g. a guarded definition: bind what its body binds
        return [n for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt) for n in _bound_names(child)]
    return [t.id for target in targets for t in ast.walk(target) if isinstance(t, ast.Name)]


def _import_aliases(node: ast.AST, module: str, modules: set[str]) -> dict[str, tuple[str, str | None]]:
    """``{local name: (package module, attribute or None)}`` for the imports of package code in ``node``."""
    out: dict[str, tuple[str, str | None]] = {}
    for imp in ast.walk(node):
        if isinstance(imp, ast.Import):
            for a in imp.names:
                if a.name in modules:
                    out[a.asname or a.name.split(".")[0]] = (a.name if a.asname else a.name.split(".")[0], None)
        elif isinstance(imp, ast.ImportFrom):
            if imp.level:  # relative: resolved against this module's package
                base = ".".join(module.split(".")[:-imp.level] + ([imp.module] if imp.module else []))
            else:
                base = imp.module or ""
            if base not in modules:
                continue
            for a in imp.names:
                sub = f"{base}.{a.name}"
                out[a.asname or a.name] = (sub, None) if sub in modules else (base, a.name)
    return out


@functools.lru_cache(maxsize=4)
def _parse_package(package_dir: str, stamp: tuple) -> dict[str, _Module]:
    root = Path(package_dir)
    files = {PACKAGE if p.name == "__init__.py" else f"{PACKAGE}.{p.stem}": p for p in sorted(root.glob("*.py"))}
    names = set(files)
    modules = {}
    for name, path in files.items():
        source = path.read_text()
        tree = ast.parse(source)
        defines = {}
        for i, node in enumerate(tree.body):
            for n in _bound_names(node):
                defines[n] = i
        aliases = {}
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                aliases.update(_import_aliases(node, name, names))
        modules[name] = _Module(name, source, tuple(tree.body), defines, aliases)
    return modules


def _package(package_dir: Path | None = None) -> dict[str, _Module]:
    root = Path(package_dir) if package_dir is not None else _PACKAGE_DIR
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.glob("*.py")))
    return _parse_package(str(root), stamp)


_Node = tuple[str, int]  # (module, index of a top-level statement)


def _resolve(modules: dict[str, _Module], target: tuple[str, str | None], seen: frozenset = frozenset()
             ) -> list[_Node]:
    """The statements ``(module, attribute)`` stands for: the binding statement, or (re-exports) what it imports."""
    module, attr = target
    if module not in modules or (module, attr) in seen:
        return []
    m = modules[module]
    if attr is None:
        return []  # a module object itself: what is reached is its attributes, resolved where they are used
    if attr in m.defines:
        return [(module, m.defines[attr])]
    if attr in m.aliases:  # re-exported, e.g. ``from ood_core.flows import Glow`` in another module
        return _resolve(modules, m.aliases[attr], seen | {(module, attr)})
    return []


def _references(modules: dict[str, _Module], module: str, node: ast.AST) -> set[_Node]:
    """Package statements a statement refers to: its names, ``module.attr`` chains and imports of package code."""
    m = modules[module]
    local = {**m.aliases, **_import_aliases(node, module, set(modules))}
    out: set[_Node] = set()
    for target in _import_aliases(node, module, set(modules)).values():  # an import inside a function body
        out.update(_resolve(modules, target))
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            if sub.id in m.defines:
                out.add((module, m.defines[sub.id]))
            elif sub.id in local:
                out.update(_resolve(modules, local[sub.id]))
        elif isinstance(sub, ast.Attribute):
            chain = []
            base: ast.AST = sub
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if not isinstance(base, ast.Name) or base.id not in local:
                continue
            target = local[base.id]
            for attr in reversed(chain):  # walk ``gsc.perturb_pixels`` / ``ood_core.data.load`` into the package
                if target[1] is not None:
                    break
                sub_module = f"{target[0]}.{attr}"
                target = (sub_module, None) if sub_module in modules else (target[0], attr)
            out.update(_resolve(modules, target))
    return out


def reachable(refs: tuple[str, ...] | list[str], package_dir: Path | None = None) -> dict[str, list[str]]:
    """Every top-level statement of the package that the roots ``refs`` reach, ``{module: [statement labels]}``.

    Roots are modules (``"ood_core.flows"``: every statement of it) or objects
    (``"ood_core.families:GLOW"``: the statement that binds the name). From the roots the static
    reference graph is followed: a reached statement pulls in every package definition it names --
    directly, through ``from ood_core import x`` / ``from ood_core.x import y`` / ``import`` aliases
    at module level or inside the function, and through ``module.attr`` chains -- transitively.
    Module-level statements that bind no name (e.g. an ``if`` of registrations) are reached with
    their module. Over-approximates (a local variable named like a module-level function pulls the
    function in), never under-approximates static references; ``getattr`` by computed names and
    ``importlib`` are not followed.
    """
    return {module: [_label(modules, (module, i)) for i in sorted(idx)]
            for modules in [_package(package_dir)]
            for module, idx in _reach(modules, tuple(refs)).items()}


def _label(modules: dict[str, _Module], node: _Node) -> str:
    statement = modules[node[0]].statements[node[1]]
    bound = _bound_names(statement)
    return ", ".join(bound) if bound else f"<statement at line {statement.lineno}>"


def _reach(modules: dict[str, _Module], refs: tuple[str, ...]) -> dict[str, set[int]]:
    todo: list[_Node] = []
    for ref in refs:
        module_name, _, qualname = ref.partition(":")
        if module_name not in modules:
            raise ValueError(f"{ref}: {module_name} is not a module of {PACKAGE}")
        m = modules[module_name]
        if not qualname:
            todo += [(module_name, i) for i, s in enumerate(m.statements) if not isinstance(s, (ast.Import, ast.ImportFrom))]
            continue
        found = _resolve(modules, (module_name, qualname.split(".")[0]))
        if not found:
            raise ValueError(f"cannot find the statement defining {ref}")
        todo += found
    reached: dict[str, set[int]] = {}
    while todo:
        module, i = todo.pop()
        if i in reached.setdefault(module, set()):
            continue
        if not reached[module]:  # first statement of a module: its statements that bind nothing come along
            todo += [(module, j) for j, s in enumerate(modules[module].statements)
                     if not _bound_names(s) and not isinstance(s, (ast.Import, ast.ImportFrom))
                     and not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        reached[module].add(i)
        todo += [n for n in _references(modules, module, modules[module].statements[i])
                 if n[1] not in reached.get(n[0], set())]
    return reached


def normalized_source(source: str) -> str:
    """Source without comments, docstrings, blank lines and indentation changes (layout-proof)."""
    source = textwrap.dedent(source)
    doc_lines: set[int] = set()
    try:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
                        and isinstance(first.value.value, str):
                    doc_lines.update(range(first.lineno, first.end_lineno + 1))
    except SyntaxError:
        pass
    tokens = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                        tokenize.ENDMARKER) or tok.start[0] in doc_lines:
            continue
        tokens.append(tok.string)
    return " ".join(tokens)


def code_fingerprint(kind_name: str, package_dir: Path | None = None) -> str:
    """sha256 (16 hex digits) of the normalised source of every package statement ``KINDS[kind_name].code`` reaches.

    See :func:`reachable`: the listed roots and every function, class and module-level statement of
    the package they refer to, transitively (so a helper two calls away is covered). Comments,
    docstrings and layout are ignored (:func:`normalized_source`), and so is the order of
    definitions in a file. ``package_dir`` fingerprints another copy of the package (default: this one).
    """
    modules = _package(package_dir)
    h = hashlib.sha256()
    for module, idx in sorted(_reach(modules, kind(kind_name).code).items()):
        h.update(module.encode() + b"\0")
        for text in sorted(_normalized_statement(modules[module], i) for i in idx):
            h.update(text.encode() + b"\0")
    return h.hexdigest()[:16]


FINGERPRINTS_FILE = Path(__file__).with_name("artifact_fingerprints.json")


def recorded_fingerprints() -> dict[str, dict]:
    """``{kind: {"version": int, "fingerprint": str}}`` as last recorded (``python -m ood_core keys --record``)."""
    if not FINGERPRINTS_FILE.is_file():
        return {}
    return json.loads(FINGERPRINTS_FILE.read_text())


def record_fingerprints() -> dict[str, dict]:
    """Record the current version and code fingerprint of every kind (after deciding on version bumps)."""
    missing = sorted(set(recorded_fingerprints()) - set(KINDS))
    if missing:
        raise RuntimeError(f"kinds {missing} are recorded but not registered: import ood_core.families (which "
                           "registers the model families' kinds) before recording")
    table = {name: {"version": k.version, "fingerprint": code_fingerprint(name)} for name, k in sorted(KINDS.items())}
    FINGERPRINTS_FILE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return table


def stale_kinds() -> list[str]:
    """Kinds whose code or version differs from the recorded fingerprint, each with what to do."""
    recorded = recorded_fingerprints()
    problems = [f"{name}: recorded but not registered: import ood_core.families (which registers the model "
                "families' kinds) before checking, or remove the record if the kind is gone"
                for name in sorted(set(recorded) - set(KINDS))]
    for name, k in sorted(KINDS.items()):
        rec = recorded.get(name)
        fp = code_fingerprint(name)
        if rec is None:
            problems.append(f"{name}: no recorded fingerprint (new kind?): record it with python -m ood_core keys "
                            "--record")
        elif rec["fingerprint"] != fp and rec["version"] == k.version:
            problems.append(f"{name}: the code it reaches from {', '.join(k.code)} changed since version {k.version} "
                            "was recorded. If cached artifacts of this kind now mean something else, bump its version "
                            "in ood_core/artifacts.py (old artifacts become unreachable and are recomputed); then "
                            "record with python -m ood_core keys --record")
        elif rec["version"] != k.version:
            problems.append(f"{name}: version {k.version} in code, {rec['version']} recorded: record the new version "
                            "with python -m ood_core keys --record")
    return problems


def default_root() -> Path:
    env = os.environ.get(ARTIFACTS_ENV)
    return Path(env).expanduser() if env else _REPO / "artifacts"


RESULTS_ENV = "OOD_RESULTS"


def results_root() -> Path:
    """Committed paper-profile results (small: scores, metrics, curves; never weights).

    ``$OOD_RESULTS`` overrides ``results/`` in the checkout (used to collect a GPU run's output).
    """
    env = os.environ.get(RESULTS_ENV)
    return Path(env).expanduser() if env else _REPO / "results"


def hardware() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def content_digest(x: torch.Tensor, length: int = 16) -> str:
    """Hex sha256 of a CPU tensor's bytes (its first ``length`` digits): part of the keys of scores."""
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()[:length]


def is_main_process() -> bool:
    """True outside ``torch.distributed`` and on rank 0 under it: the one process that writes."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def wait_for_main_process() -> None:
    """Barrier under ``torch.distributed`` (the other ranks wait for rank 0's write); no-op otherwise."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


class ArtifactStore:
    """Content-addressed artifacts under ``root``: ``<kind>/<artifact_key(kind, config)>/``."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_root()

    def path(self, kind: str, config: Any) -> Path:
        return self.root / kind / artifact_key(kind, config)

    def exists(self, kind: str, config: Any) -> bool:
        return (self.path(kind, config) / "DONE").is_file()

    def workdir(self, kind: str, config: Any) -> Path:
        """A stable folder for checkpoints of a computation that may be interrupted and resumed."""
        p = self.root / kind / (artifact_key(kind, config) + ".work")
        p.mkdir(parents=True, exist_ok=True)
        (p / "config.json").write_text(json.dumps(config_dict(config), indent=1, sort_keys=True))
        return p

    # -- writing ---------------------------------------------------------------------------------
    def save(self, kind_name: str, config: Any, *, arrays: dict | None = None, state_dict: dict | None = None,
             files: dict[str, str] | None = None, meta: dict | None = None) -> Path:
        """Write an artifact atomically and return its folder; an existing complete one is kept."""
        final = self.path(kind_name, config)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        try:
            (tmp / "config.json").write_text(json.dumps(config_dict(config), indent=1, sort_keys=True))
            full_meta = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         "hardware": hardware(), "kind_version": kind(kind_name).version, **(meta or {})}
            (tmp / "meta.json").write_text(json.dumps(config_dict(full_meta), indent=1, sort_keys=True))
            if arrays is not None:
                np.savez_compressed(tmp / "arrays.npz", **{k: np.asarray(v) for k, v in arrays.items()})
            if state_dict is not None:
                torch.save(state_dict, tmp / "model.pt")
            for fname, text in (files or {}).items():
                (tmp / fname).write_text(text)
            with open(tmp / "DONE", "w") as f:
                f.write(final.name + "\n")
                f.flush()
                os.fsync(f.fileno())
            if final.exists():
                if (final / "DONE").is_file():  # another process finished first: keep theirs
                    shutil.rmtree(tmp, ignore_errors=True)
                    return final
                shutil.rmtree(final)  # an untrusted leftover without DONE
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    # -- reading ---------------------------------------------------------------------------------
    def _require(self, kind: str, config: Any) -> Path:
        p = self.path(kind, config)
        if not (p / "DONE").is_file():
            raise FileNotFoundError(f"no complete artifact {kind}/{p.name} under {self.root}; compute it first")
        return p

    def load_arrays(self, kind: str, config: Any) -> dict[str, np.ndarray]:
        with np.load(self._require(kind, config) / "arrays.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def load_state_dict(self, kind: str, config: Any, map_location: str | torch.device = "cpu") -> dict:
        return torch.load(self._require(kind, config) / "model.pt", map_location=map_location, weights_only=True)

    def load_meta(self, kind: str, config: Any) -> dict:
        return json.loads((self._require(kind, config) / "meta.json").read_text())

    def read_text(self, kind: str, config: Any, fname: str) -> str:
        return (self._require(kind, config) / fname).read_text()

    def cached_arrays(self, kind: str, config: Any, compute: Callable[[], dict], meta: dict | None = None
                      ) -> dict[str, np.ndarray]:
        """Load the arrays for ``config`` or compute, save and return them."""
        if not self.exists(kind, config):
            log.info("computing %s/%s", kind, artifact_key(kind, config))
            t0 = time.perf_counter()
            arrays = compute()
            # what each cached step cost (tools/artifact_costs.py sums it by kind)
            self.save(kind, config, arrays=arrays, meta={"compute_s": round(time.perf_counter() - t0, 2), **(meta or {})})
        return self.load_arrays(kind, config)

    def clean_tmp(self) -> int:
        """Remove leftovers of killed writes (``.tmp-*`` folders); returns how many."""
        n = 0
        for p in self.root.glob("*/.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
            n += 1
        return n

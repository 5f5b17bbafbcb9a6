"""Execute every chapter notebook with papermill, then build the Jupyter Book (execution off).

    python tools/build_book.py                                   # default CPU profile, into book/_build/html
    python tools/build_book.py --profile smoke --book /tmp/b     # a copy of the book elsewhere
    python tools/build_book.py --only 02_glow_fashion_mnist --profile paper -p device cuda
    python tools/build_book.py --force                           # execute even unchanged chapters

Notebooks live as jupytext percent files in notebooks/; each is converted to .ipynb, run by
papermill with its parameters injected (profile, seed, any ``-p NAME VALUE``), post-processed and
written into <book>/chapters/. Notebooks run one after another (two torch processes on 2 cores
slow each other down badly). A cell error stops the build with papermill's error, naming the
notebook and the cell.

Unchanged chapters are not executed again. Each successful execution is stored under
``<book>/_build/executed/<chapter>/<key>.ipynb`` (with its statistics in ``<key>.json``), where the key
is a digest of everything the outputs depend on: the notebook source, the ``ood_core`` package
(its .py and .json files), the committed ``results/``, the parameters, and the Python and torch
versions. A chapter whose key is stored is "skipped (unchanged)" and its stored outputs are used;
``--force`` executes it anyway. The last few keys per chapter are kept, so switching profiles
back and forth does not re-execute either.

Post-processing of each executed notebook (the stored copy stays as papermill wrote it):
papermill's injected ``# Parameters`` cell is tagged ``remove-cell``; the visible ``parameters``
cell shows the values actually used; under every figure a line says how to regenerate it; local
absolute paths in outputs (data mirror, artifact cache, checkout) are written relative to the
checkout or as their environment variable.

Progress: one line per chapter (i/N, executed or skipped, elapsed, an estimate of what is left
from the last build's timings in ``<book>/_build/build_state.json``). The build also writes the page
``<book>/execution_stats.md`` (wall time, profile, hardware, date, code version per chapter) and
checks the HTML (tools/check_book_html.py).
"""

from __future__ import annotations

import argparse
import ast
import copy
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import jupytext
import nbformat
import papermill

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
SOURCE_BOOK = REPO / "book"
PACKAGE = REPO / "ood_core"
#: What the build writes into a book folder; everything else in book/ is a source copied along.
GENERATED = {"_build", "chapters", "execution_stats.md"}
#: Under <book>/_build (never read by Sphinx; `make clean-book` removes it with the HTML).
STATE_FILE = "_build/build_state.json"
CACHE_DIR = "_build/executed"
STATS_PAGE = "execution_stats.md"
#: Bump when what a stored execution means changes (e.g. how parameters are injected).
CACHE_SCHEMA = 1
KEEP_PER_CHAPTER = 4
#: The kernel's own log is noise here: "Kernel is running over TCP without encryption" at every
#: start, "KeyboardInterrupt caught in kernel" when the client interrupts it before shutting it
#: down. Errors in cells reach the build through papermill, a dead kernel through nbclient.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL"]
BUILD_DEFAULTS = {"profile": "cpu", "seed": 0}


# --- chapters and their parameters ---------------------------------------------------------------

def chapter_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def select_chapters(chapters: list[Path], only: list[str] | None) -> list[Path]:
    """Chapters named by ``--only``: full stems or unique prefixes (``02`` or ``02_glow``)."""
    if not only:
        return chapters
    chosen = []
    for name in only:
        name = Path(name).stem
        hits = [c for c in chapters if c.stem == name] or [c for c in chapters if c.stem.startswith(name)]
        if len(hits) != 1:
            what = "matches no chapter" if not hits else f"matches {len(hits)} chapters"
            raise SystemExit(f"--only {name!r} {what}; the chapters are: {', '.join(c.stem for c in chapters)}")
        if hits[0] not in chosen:
            chosen.append(hits[0])
    return [c for c in chapters if c in chosen]


def parameters_cell(nb) -> int | None:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            return i
    return None


def declared_parameters(source: str) -> dict:
    """``{name: default}`` of the assignments in a ``parameters`` cell (literal values only)."""
    out = {}
    for stmt in ast.parse(source).body:
        target, value = None, None
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            target, value = stmt.target.id, stmt.value
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            target, value = stmt.targets[0].id, stmt.value
        if target is not None:
            try:
                out[target] = ast.literal_eval(value)
            except ValueError:
                continue  # computed defaults cannot be overridden by value; papermill would still inject
    return out


def coerce(name: str, text: str, default):
    """A command-line value in the type of the notebook's default (``-p seed 3`` gives the int 3)."""
    try:
        if isinstance(default, bool):
            if text.lower() in {"true", "1", "yes"}:
                return True
            if text.lower() in {"false", "0", "no"}:
                return False
            raise ValueError(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, str) or default is None:
            return text
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise SystemExit(f"parameter {name}={text!r}: expected {type(default).__name__}, "
                         f"the type of the notebook's default {default!r}") from None


def resolve_parameters(defaults: dict, requested: dict[str, str]) -> tuple[dict, dict]:
    """(values used, values injected): the notebook's defaults updated with what was asked for.

    Only parameters the notebook declares are injected (``device`` is not sent to the data chapter).
    """
    injected = {k: coerce(k, v, defaults[k]) for k, v in requested.items() if k in defaults}
    return {**defaults, **injected}, injected


# --- what an execution depends on ----------------------------------------------------------------

def tree_digest(root: Path, patterns: tuple[str, ...]) -> str:
    """sha256 over (relative path, bytes) of the files under ``root`` matching ``patterns``."""
    h = hashlib.sha256()
    if root.exists():
        files = sorted({p for pat in patterns for p in root.rglob(pat) if p.is_file()
                        and "__pycache__" not in p.parts})
        for p in files:
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def environment() -> dict:
    """What every chapter's key shares: code digests and interpreter versions."""
    results = Path(os.environ.get("OOD_RESULTS", REPO / "results")).expanduser()
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "absent"
    return {"ood_core": tree_digest(PACKAGE, ("*.py", "*.json")),
            "results": tree_digest(results, ("*",)),
            "python": platform.python_version(), "torch": torch_version}


def execution_key(source: str, parameters: dict, env: dict) -> str:
    """Content address of an execution: changes whenever anything its outputs depend on changes."""
    payload = {"schema": CACHE_SCHEMA, "notebook": hashlib.sha256(source.encode()).hexdigest(),
               "parameters": parameters, **env}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def git_version() -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout

    try:
        return {"commit": git("rev-parse", "--short=10", "HEAD").strip(), "dirty": bool(git("status", "--porcelain").strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}


def machine(parameters: dict) -> str:
    """CPU model and count, and the GPU when the chapter ran on one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{os.cpu_count()} × {cpu}"
    if os.environ.get("OMP_NUM_THREADS"):
        text += f", OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    if str(parameters.get("device", "cpu")).startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                text += f"; GPU: {torch.cuda.get_device_name(0)}"
        except ImportError:
            pass
    return text


# --- post-processing of an executed notebook -----------------------------------------------------

def _literal(value) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def show_used_values(source: str, used: dict, defaults: dict) -> str:
    """The parameters cell with each assignment's value replaced by the value actually used.

    Type annotations and comments stay; a first comment line names the defaults that were
    overridden, so the page says both what ran and what the notebook would run by itself.
    """
    changed = {k: v for k, v in used.items() if k in defaults and v != defaults[k]}
    if not changed:
        return source
    lines = source.splitlines(keepends=True)
    edits = []
    for stmt in ast.parse(source).body:
        target = (stmt.target if isinstance(stmt, ast.AnnAssign)
                  else stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id in changed and stmt.value is not None:
            v = stmt.value
            edits.append((v.lineno, v.col_offset, v.end_lineno, v.end_col_offset, _literal(changed[target.id])))
    data = [line.encode() for line in lines]  # ast offsets count UTF-8 bytes
    for l0, c0, l1, c1, text in sorted(edits, reverse=True):
        head, tail = data[l0 - 1][:c0], data[l1 - 1][c1:]
        data[l0 - 1:l1] = [head + text.encode() + tail]
    note = ", ".join(f"{k}={_literal(defaults[k])}" for k in changed)
    return f"# values used for this page (the notebook's defaults: {note})\n" + b"".join(data).decode()


def regenerate_command(stem: str, used: dict, defaults: dict) -> str:
    cmd = ["python", "tools/build_book.py", "--only", stem, "--profile", str(used.get("profile", "cpu"))]
    for k, v in used.items():
        if k == "profile" or v == defaults.get(k):
            continue
        cmd += ["--seed", str(v)] if k == "seed" else ["-p", k, str(v)]
    return " ".join(shlex.quote(c) for c in cmd)


def _path_replacements() -> list[tuple[str, str]]:
    """(absolute path, how a page shows it), longest first: relative to the checkout when the path
    is inside or beside it, else the environment variable that set it (the temporary folder:
    ``$TMPDIR``). A folder that an environment variable moved away from its default place outside the
    checkout is always shown as the variable, wherever the checkout lies (e.g. both under ``/tmp``)."""
    roots = []
    for env, default in (("OOD_DATA", REPO.parent / "shared" / "data"), ("OOD_ARTIFACTS", REPO / "artifacts"),
                         ("OOD_RESULTS", REPO / "results")):
        path = Path(os.environ.get(env, default)).expanduser()
        moved = path.resolve() != Path(default).resolve()
        roots.append((path, f"${env}", moved))
    roots.append((REPO, ".", False))
    roots.append((Path(tempfile.gettempdir()), "$TMPDIR", False))  # e.g. an example folder a chapter writes
    out = []
    for path, label, moved in roots:
        for p in {str(path), str(path.resolve())}:
            rel = os.path.relpath(p, REPO)
            outside = rel.startswith(os.pardir + os.sep + os.pardir) or (moved and rel.startswith(os.pardir))
            out.append((p.rstrip("/"), label if outside else rel))
    home = str(Path.home())
    if home not in ("/", ""):
        out.append((home, "~"))
    return sorted(set(out), key=lambda t: -len(t[0]))


def redact_paths(text: str, replacements: list[tuple[str, str]]) -> str:
    for path, shown in replacements:
        if path and path in text:
            text = re.sub(re.escape(path) + r"(?![\w.-])", lambda m: shown, text)
    return text


def _redact_output(output: dict, replacements) -> None:
    def fix(value):
        if isinstance(value, str):
            return redact_paths(value, replacements)
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    if "text" in output:
        output["text"] = fix(output["text"])
    for mime in list(output.get("data", {})):
        if mime.startswith("text/") or mime in ("application/json",):
            output["data"][mime] = fix(output["data"][mime])
    if "traceback" in output:
        output["traceback"] = fix(output["traceback"])


def _has_figure(cell) -> bool:
    tags = set(cell.metadata.get("tags", []))
    if tags & {"remove-output", "remove-cell"}:
        return False
    return any(mime.startswith("image/") for o in cell.get("outputs", []) for mime in o.get("data", {}))


def postprocess(nb, stem: str, used: dict, defaults: dict, replacements) -> object:
    """The page version of an executed notebook (see the module docstring); ``nb`` is not modified."""
    nb = copy.deepcopy(nb)
    command = regenerate_command(stem, used, defaults)
    cells = []
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags:
            if "remove-cell" not in tags:
                tags.append("remove-cell")
        elif "parameters" in tags:
            cell.source = show_used_values(cell.source, used, defaults)
        for output in cell.get("outputs", []):
            _redact_output(output, replacements)
        cells.append(cell)
        if cell.cell_type == "code" and _has_figure(cell):
            n = sum(1 for c in cells if "regenerate" in c.metadata.get("tags", []))
            cells.append(nbformat.v4.new_markdown_cell(
                f'<p class="regenerate">Regenerate: <code>{command}</code></p>',
                id=f"regenerate-{n}", metadata={"tags": ["regenerate"]}))
    nb.cells = cells
    return nb


def check_profile(name: str) -> None:
    """Stop before the first kernel starts when the profile does not exist."""
    sys.path.insert(0, str(REPO))
    from ood_core.profiles import PROFILES

    if name not in PROFILES:
        raise SystemExit(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")


# --- execution, cache, progress ------------------------------------------------------------------

def execute(src: Path, parameters: dict, out: Path) -> float:
    """Run a percent notebook with papermill into ``out`` (written atomically); wall seconds."""
    nb = jupytext.read(src)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".running-{os.getpid()}.ipynb"
    t0 = time.time()
    try:
        papermill.execute_notebook(nb, str(partial), parameters=parameters, kernel_name="python3",
                                   cwd=str(REPO), progress_bar=False, log_output=False,
                                   request_save_on_cell_execute=False, extra_arguments=KERNEL_ARGUMENTS)
    except BaseException:
        if partial.exists():
            os.replace(partial, out.parent / "failed.ipynb")
        raise
    os.replace(partial, out)
    return time.time() - t0


def prune(folder: Path, keep: int = KEEP_PER_CHAPTER) -> None:
    stored = sorted(folder.glob("*.ipynb"), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in [p for p in stored if not p.name.startswith((".", "failed"))][keep:]:
        p.unlink(missing_ok=True)
        p.with_suffix(".json").unlink(missing_ok=True)


def write_if_changed(path: Path, text: str) -> bool:
    """Write only when the content differs, so Sphinx re-reads only pages that changed."""
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def fmt_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def load_state(book: Path) -> dict:
    try:
        state = json.loads((book / STATE_FILE).read_text())
    except (OSError, ValueError):
        state = {}
    state.setdefault("chapters", {})
    state.setdefault("timings", {})
    return state


class Progress:
    """One line per chapter: position, outcome, elapsed time, and what is left by the last timings."""

    def __init__(self, plan: list[tuple[str, bool]], estimates: dict[str, float]):
        self.plan, self.estimates, self.t0 = plan, estimates, time.time()
        self.width = max((len(s) for s, _ in plan), default=0)

    def left(self, done: int) -> str:
        todo = [s for s, skip in self.plan[done:] if not skip]
        known = [self.estimates[s] for s in todo if s in self.estimates]
        if not todo:
            return "nothing left"
        if not known:
            return f"left: unknown ({len(todo)} chapter(s) never timed)"
        text = f"left ≈ {fmt_duration(sum(known))}"
        if len(known) < len(todo):
            text += f" + {len(todo) - len(known)} chapter(s) never timed"
        return text

    def header(self, profile: str) -> str:
        skipped = sum(skip for _, skip in self.plan)
        left = self.left(0)
        return (f"{len(self.plan)} chapter(s), profile {profile}: {len(self.plan) - skipped} to execute, "
                f"{skipped} unchanged; {left}" + (" (by the last build's timings)" if "≈" in left else ""))

    def start(self, i: int) -> None:
        stem = self.plan[i][0]
        est = self.estimates.get(stem)
        hint = f"running (last time {fmt_duration(est)})" if est else "running"
        print(f"[{i + 1:>2}/{len(self.plan)}] {stem:<{self.width}}  {hint} ...", flush=True)

    def done(self, i: int, outcome: str) -> None:
        elapsed = fmt_duration(time.time() - self.t0)
        print(f"[{i + 1:>2}/{len(self.plan)}] {self.plan[i][0]:<{self.width}}  {outcome} | elapsed {elapsed} | "
              f"{self.left(i + 1)}", flush=True)


# --- the statistics page -------------------------------------------------------------------------

def stats_page(chapters: list[Path], state: dict, this_build: dict[str, str]) -> str:
    """Markdown of the statistics page: one row per chapter, machines and versions as a legend."""
    rows, machines, versions, total = [], {}, {}, 0.0
    for src in chapters:
        entry = state["chapters"].get(src.stem)
        if not entry:
            rows.append(f"| {src.stem} | — | no execution recorded in this book folder | | | | |")
            continue
        s = entry["stats"]
        total += s["wall_time_s"]
        params = ", ".join([f"**{s['profile']}**"] + [f"{k}={v}" for k, v in s["parameters"].items() if k != "profile"])
        machine_id = machines.setdefault(s["hardware"], f"M{len(machines) + 1}")
        versions.setdefault(f"{s['python']}/{s['torch']}", None)
        code = f"`{s['git_commit'][:8]}{'*' if s.get('git_dirty') else ''}` · `{s['ood_core'][:8]}`"
        rows.append(f"| {{doc}}`chapters/{src.stem}` | {fmt_duration(s['wall_time_s'])} | {params} | {machine_id} | "
                    f"{s['date']} | {code} | {this_build.get(src.stem, 'not in this build')} |")
    legend = [f"* **{m}**: {hw}" for hw, m in machines.items()]
    if versions:
        legend.append("* Python/torch: " + ", ".join(versions))
    return "\n".join([
        "# Execution statistics",
        "",
        "How the outputs on these pages were produced, one row per chapter. `tools/build_book.py` writes",
        "this page at every build. A chapter whose notebook, `ood_core` code, committed results,",
        "parameters and Python/torch versions were unchanged since its last successful execution is not",
        "executed again; its row keeps the statistics of that execution (\"reused\").",
        "",
        "Code version: the git commit of the checkout (`*`: it had uncommitted changes) · a digest of",
        "the `ood_core` package's files. Machines:",
        "",
        *legend,
        "",
        "| chapter | wall time | parameters | machine | executed (UTC) | code version | this build |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Total wall time of the executions shown: {fmt_duration(total)}.",
        "",
    ])


# --- the build -----------------------------------------------------------------------------------

def copy_sources(book: Path) -> None:
    book.mkdir(parents=True, exist_ok=True)
    for src in SOURCE_BOOK.iterdir():
        if src.name in GENERATED or src.name.startswith("."):
            continue
        if src.is_dir():
            shutil.copytree(src, book / src.name, dirs_exist_ok=True)
        else:
            shutil.copy(src, book / src.name)


def build_html(book: Path, verbose: bool) -> int:
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(book)]
    if verbose:
        return subprocess.run(cmd).returncode
    t0 = time.time()
    proc = subprocess.run(cmd + ["-q"], capture_output=True, text=True)
    log = book / "_build" / "jupyter-book.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout + proc.stderr)
    warnings = [re.sub(r"\x1b\[[0-9;]*m", "", l) for l in (proc.stdout + proc.stderr).splitlines()
                if "WARNING" in l or "ERROR" in l]
    missing = [w for w in warnings if "toctree contains reference to nonexisting document" in w]
    if missing:  # chapters never executed into this book folder (e.g. a first build with --only)
        print(f"  {len(missing)} chapter(s) in the table of contents were never executed into this book folder")
    shown = [w for w in warnings if w not in missing]
    for line in shown[:20]:
        print("  " + line)
    if len(shown) > 20:
        print(f"  ... {len(shown) - 20} more in {log}")
    if proc.returncode != 0:
        print("\n".join((proc.stdout + proc.stderr).splitlines()[-40:]))
        print(f"jupyter-book build failed (log: {log})")
        return proc.returncode
    print(f"book built in {fmt_duration(time.time() - t0)}, {len(warnings)} warning(s): "
          f"{book / '_build' / 'html' / 'index.html'}", flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--profile", default=os.environ.get("PROFILE", BUILD_DEFAULTS["profile"]),
                    help="scale profile: smoke, cpu (default) or paper")
    ap.add_argument("--seed", type=int, help="the notebooks' seed parameter (default: each notebook's own, 0)")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="any other notebook parameter, e.g. -p device cuda (repeatable)")
    ap.add_argument("--book", default=str(SOURCE_BOOK), help="book folder (sources are copied there if not book/)")
    ap.add_argument("--only", nargs="*", help="chapters to execute: stems or unique prefixes, e.g. 02 11_ash "
                    "(default: all; the others keep their last outputs)")
    ap.add_argument("--force", action="store_true", help="execute chapters even when nothing they depend on changed")
    ap.add_argument("--no-build", action="store_true", help="execute notebooks only")
    ap.add_argument("--verbose", action="store_true", help="show jupyter-book's full output")
    args = ap.parse_args(argv)

    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would clutter the rendered outputs
    # papermill warns when it cannot infer a parameter's type from a comment it does not parse; the
    # build injects only declared parameters, typed by their defaults, so that warning is noise.
    logging.getLogger("papermill").setLevel(logging.ERROR)
    book = Path(args.book).resolve()
    if book != SOURCE_BOOK.resolve():
        copy_sources(book)
    requested = {"profile": args.profile, **({"seed": str(args.seed)} if args.seed is not None else {}),
                 **dict(args.parameter)}
    all_chapters = chapter_notebooks()
    chapters = select_chapters(all_chapters, args.only)

    jobs = []
    for src in chapters:
        nb = jupytext.read(src)
        i = parameters_cell(nb)
        defaults = declared_parameters(nb.cells[i].source) if i is not None else {}
        used, injected = resolve_parameters(defaults, requested)
        jobs.append((src, defaults, used, injected))
    unknown = set(requested) - {k for _, d, _, _ in jobs for k in d}
    if unknown:
        raise SystemExit(f"no selected chapter has the parameter(s) {sorted(unknown)}")

    env, version = environment(), git_version()
    replacements = _path_replacements()
    state = load_state(book)
    estimates = state["timings"].get(args.profile, {})
    keys = {src.stem: execution_key(src.read_text(), used, env) for src, _, used, _ in jobs}
    cache = book / CACHE_DIR
    plan = [(src.stem, not args.force and (cache / src.stem / f"{keys[src.stem]}.ipynb").exists())
            for src, *_ in jobs]
    if not all(skip for _, skip in plan):
        check_profile(args.profile)
    progress = Progress(plan, estimates)
    print(progress.header(args.profile), flush=True)
    this_build = {}
    for i, (src, defaults, used, injected) in enumerate(jobs):
        stem, key = src.stem, keys[src.stem]
        stored = cache / stem / f"{key}.ipynb"
        if plan[i][1]:
            outcome = "skipped (unchanged)"
            this_build[stem] = "reused (unchanged)"
        else:
            progress.start(i)
            try:
                wall = execute(src, injected, stored)
            except Exception as exc:  # papermill's error names the cell; say where the partial notebook is
                print(f"[{i + 1:>2}/{len(jobs)}] {stem}: FAILED after {fmt_duration(time.time() - progress.t0)} "
                      f"(partial notebook: {cache / stem / 'failed.ipynb'})\n{exc}", flush=True)
                return 1
            stats = {"chapter": stem, "key": key, "wall_time_s": round(wall, 2), "profile": used.get("profile"),
                     "parameters": used, "hardware": machine(used),
                     "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                     "git_commit": version["commit"], "git_dirty": version["dirty"], **env}
            (cache / stem / f"{key}.json").write_text(json.dumps(stats, indent=1))
            state["timings"].setdefault(args.profile, {})[stem] = round(wall, 2)
            outcome = f"executed in {fmt_duration(wall)}"
            this_build[stem] = "executed"
            prune(cache / stem)
        stats_file = stored.with_suffix(".json")
        stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
        state["chapters"][stem] = {"key": key, "stats": stats}
        page = postprocess(nbformat.read(stored, as_version=4), stem, used, defaults, replacements)
        write_if_changed(book / "chapters" / f"{stem}.ipynb", nbformat.writes(page))
        write_if_changed(book / STATE_FILE, json.dumps(state, indent=1))
        progress.done(i, outcome)
    # a stored execution whose statistics file was deleted by hand has nothing to show
    state["chapters"] = {k: v for k, v in state["chapters"].items() if v.get("stats")}
    write_if_changed(book / STATE_FILE, json.dumps(state, indent=1))
    write_if_changed(book / STATS_PAGE, stats_page(all_chapters, state, this_build))
    print(f"all notebooks: {fmt_duration(time.time() - progress.t0)}", flush=True)
    if args.no_build:
        return 0
    rc = build_html(book, args.verbose)
    if rc:
        return rc
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from check_book_html import check_site

    problems = check_site(book / "_build" / "html")
    for p in problems[:30]:
        print(f"  HTML check: {p}")
    if problems:
        print(f"HTML check: {len(problems)} problem(s) (python tools/check_book_html.py {book / '_build' / 'html'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

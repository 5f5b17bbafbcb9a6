"""Every chapter notebook executes in the smoke profile (papermill), then the book builds from them;
and the pieces of tools/build_book.py (cache keys, parameters, post-processing) on their own.

A failing cell fails the smoke build with papermill's error naming the notebook and cell.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

import _smoke_book

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import build_book  # noqa: E402  (tools/ is not a package)


def _toc_files():
    toc = yaml.safe_load((REPO / "book" / "_toc.yml").read_text())
    return [c["file"] for part in toc["parts"] for c in part["chapters"]]


def _toc_chapters():
    return [Path(f).name for f in _toc_files() if f.startswith("chapters/")]


def test_every_notebook_is_in_the_toc():
    stems = {p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.py")}
    assert {f"chapters/{s}" for s in stems} == {f for f in _toc_files() if f.startswith("chapters/")}


def test_notebooks_have_typed_parameters_and_no_defs():
    for nb in (REPO / "notebooks").glob("[0-9][0-9]_*.py"):
        text = nb.read_text()
        cell = re.search(r'# %% tags=\["parameters"\]\n(.*?)\n# %%', text, flags=re.S)
        assert cell, f"{nb.name}: no parameters cell"
        assert re.search(r"^profile: str = ", cell.group(1), flags=re.M), f"{nb.name}: no typed profile parameter"
        assert not re.search(r"^\s*(def|class) ", text, flags=re.M), f"{nb.name}: defines functions (move them to ood_core)"


#: The most lines of code a chapter keeps: its computation is one ``ood_core`` call; narrative, parameters, tables
#: and plots stay in the chapter.
MAX_CODE_LINES = 120


def test_chapters_are_thin():
    def code_lines(path):
        nb = jupytext.read(path)
        return sum(1 for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines()
                   if line.strip() and not line.strip().startswith("#"))

    counts = {nb.name: code_lines(nb) for nb in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py"))}
    assert len(counts) == 17
    fat = {name: n for name, n in counts.items() if n > MAX_CODE_LINES}
    assert not fat, f"chapters over {MAX_CODE_LINES} lines of code (move the computation into ood_core): {fat}"


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory):
    return _smoke_book.build(tmp_path_factory)


@pytest.mark.slow
def test_smoke_book_builds_with_every_chapter_and_its_figures(smoke_book):
    book, log = smoke_book
    html = book / "_build" / "html"
    assert (html / "index.html").is_file()
    for f in _toc_files():
        page = html / f"{f}.html"
        assert page.is_file(), f"{page} missing"
        text = page.read_text()
        assert "Traceback" not in text, f"{f}: a cell raised"
        if f.startswith("chapters/"):
            assert len(re.findall(r"<img [^>]*src=\"\.\./_images/", text)) >= 1, f"{f}: no figure"
    assert "The data" in (html / "chapters" / "01_data.html").read_text()


@pytest.mark.slow
def test_build_reports_progress_without_kernel_noise(smoke_book):
    _, log = smoke_book
    n = len(_toc_chapters())
    for i in range(1, n + 1):
        assert re.search(rf"^\[ ?{i}/{n}\] \S+ .*executed in .*\| elapsed .*\| (left|nothing left)", log, flags=re.M), \
            f"no progress line for chapter {i}/{n}:\n{log[-3000:]}"
    assert "without encryption" not in log and "IPKernelApp" not in log
    state = json.loads((smoke_book[0] / "_build" / "build_state.json").read_text())
    assert set(state["timings"]["smoke"]) == set(_toc_chapters())  # the next build's estimate
    assert all(t > 0 for t in state["timings"]["smoke"].values())


@pytest.mark.slow
def test_rebuild_skips_unchanged_chapters(smoke_book):
    book, _ = smoke_book
    page = book / "chapters" / "01_data.ipynb"
    before = (page.stat().st_mtime_ns, page.read_bytes())
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "build_book.py"), "--profile", "smoke", "--book",
                           str(book), "--only", "01_data", "--no-build"], cwd=REPO, env=_smoke_book.environment(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\[ 1/1\] 01_data +skipped \(unchanged\)", proc.stdout), proc.stdout
    assert "running" not in proc.stdout
    assert (page.stat().st_mtime_ns, page.read_bytes()) == before  # not even rewritten
    stats = (book / "execution_stats.md").read_text()
    assert re.search(r"chapters/01_data` \| [^|]+ \| \*\*smoke\*\*[^|]*\|.*\| reused \(unchanged\) \|", stats), stats


# --- the build's pieces, without executing anything ---------------------------------------------

def _nb(*cells):
    return nbformat.v4.new_notebook(cells=list(cells))


def test_execution_key_changes_with_every_input_and_only_then():
    env = {"ood_core": "a" * 64, "results": "b" * 64, "python": "3.11.7", "torch": "2.14.1"}
    src, params = "# %%\nprint(1)\n", {"profile": "smoke", "seed": 0}
    key = build_book.execution_key(src, params, env)
    assert key == build_book.execution_key(src, dict(reversed(list(params.items()))), dict(env))  # order-free
    assert key != build_book.execution_key(src + " ", params, env)
    assert key != build_book.execution_key(src, {**params, "seed": 1}, env)
    assert key != build_book.execution_key(src, {**params, "profile": "cpu"}, env)
    for field, value in [("ood_core", "c" * 64), ("results", "d" * 64), ("python", "3.12.0"), ("torch", "2.15.0")]:
        assert key != build_book.execution_key(src, params, {**env, field: value}), field


def test_package_digest_follows_the_py_files(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    d0 = build_book.tree_digest(tmp_path / "pkg", ("*.py",))
    (tmp_path / "pkg" / "notes.txt").write_text("ignored")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.py").write_text("ignored too")
    assert build_book.tree_digest(tmp_path / "pkg", ("*.py",)) == d0
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert build_book.tree_digest(tmp_path / "pkg", ("*.py",)) != d0
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "b.py").write_text("")
    assert build_book.tree_digest(tmp_path / "pkg", ("*.py",)) != d0


def test_parameters_are_typed_by_the_notebook_defaults():
    defaults = build_book.declared_parameters('profile: str = "cpu"  # p\nseed: int = 0\nlr = 1e-3\nfast: bool = False\n')
    assert defaults == {"profile": "cpu", "seed": 0, "lr": 1e-3, "fast": False}
    used, injected = build_book.resolve_parameters(defaults, {"seed": "3", "lr": "0.5", "fast": "true", "device": "cuda"})
    assert injected == {"seed": 3, "lr": 0.5, "fast": True}  # device: not a parameter of this notebook
    assert used == {"profile": "cpu", "seed": 3, "lr": 0.5, "fast": True}
    with pytest.raises(SystemExit, match="expected int"):
        build_book.resolve_parameters(defaults, {"seed": "three"})


def test_only_accepts_stems_and_unique_prefixes():
    chapters = build_book.chapter_notebooks()
    assert [c.stem for c in build_book.select_chapters(chapters, ["02", "01_data"])] == ["01_data", "02_glow_fashion_mnist"]
    with pytest.raises(SystemExit, match="matches no chapter"):
        build_book.select_chapters(chapters, ["99_nothing"])
    with pytest.raises(SystemExit, match="matches 2 chapters|matches [0-9]+ chapters"):
        build_book.select_chapters(chapters, ["0"])


def test_parameters_cell_shows_the_values_used():
    src = 'profile: str = "cpu"  # scale profile: "smoke", "cpu"\nseed: int = 0  # seed\ndevice: str = "cpu"\n'
    shown = build_book.show_used_values(src, {"profile": "smoke", "seed": 0, "device": "cpu"},
                                        {"profile": "cpu", "seed": 0, "device": "cpu"})
    assert shown.splitlines() == ['# values used for this page (the notebook\'s defaults: profile="cpu")',
                                  'profile: str = "smoke"  # scale profile: "smoke", "cpu"',
                                  "seed: int = 0  # seed", 'device: str = "cpu"']
    assert build_book.show_used_values(src, {"profile": "cpu"}, {"profile": "cpu", "seed": 0}) == src


def test_postprocess_hides_the_injected_cell_and_captions_every_figure(monkeypatch):
    for name in ("OOD_DATA", "OOD_ARTIFACTS", "OOD_RESULTS"):
        monkeypatch.delenv(name, raising=False)
    params = nbformat.v4.new_code_cell('profile: str = "cpu"\nseed: int = 0\n', metadata={"tags": ["parameters"]})
    injected = nbformat.v4.new_code_cell('# Parameters\nprofile = "smoke"\n', metadata={"tags": ["injected-parameters"]})
    fig = nbformat.v4.new_code_cell("plt.show()", outputs=[nbformat.v4.new_output(
        "display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"})])
    text = nbformat.v4.new_code_cell("print(root)", outputs=[nbformat.v4.new_output(
        "stream", name="stdout", text=f"mirror: {REPO.parent / 'shared' / 'data'}; cache: {REPO / 'artifacts' / 'x'}\n")])
    nb = _nb(params, injected, fig, text)
    page = build_book.postprocess(nb, "02_glow_fashion_mnist", {"profile": "smoke", "seed": 2},
                                  {"profile": "cpu", "seed": 0}, build_book._path_replacements())
    assert "remove-cell" in page.cells[1].metadata["tags"]
    assert 'profile: str = "smoke"' in page.cells[0].source and "seed: int = 2" in page.cells[0].source
    caption = page.cells[3]
    assert caption.cell_type == "markdown" and page.cells[2].source == "plt.show()"
    assert "python tools/build_book.py --only 02_glow_fashion_mnist --profile smoke --seed 2" in caption.source
    assert sum("regenerate" in c.metadata.get("tags", []) for c in page.cells) == 1  # one per figure cell
    assert page.cells[4].outputs[0]["text"] == "mirror: ../shared/data; cache: artifacts/x\n"
    assert len(nb.cells) == 4 and "remove-cell" not in injected.metadata["tags"]  # the stored copy is untouched


def test_paths_outside_the_checkout_are_shown_as_their_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("OOD_ARTIFACTS", str(tmp_path / "cache"))
    text = f"saved to {tmp_path / 'cache' / 'glow' / 'k1'}/model.pt; not {tmp_path / 'cache2'}"
    shown = build_book.redact_paths(text, build_book._path_replacements())
    assert shown.startswith("saved to $OOD_ARTIFACTS/glow/k1/model.pt; not ")
    assert shown.endswith("/cache2") and shown.count("$OOD_ARTIFACTS") == 1  # a sibling is another path


def test_regenerate_command_names_only_what_differs_from_the_defaults():
    d = {"profile": "cpu", "seed": 0, "device": "cpu", "folder": ""}
    assert build_book.regenerate_command("17_bring_your_own", {**d, "profile": "paper", "folder": "my images"}, d) == \
        "python tools/build_book.py --only 17_bring_your_own --profile paper -p folder 'my images'"
    assert build_book.regenerate_command("01_data", d, d) == "python tools/build_book.py --only 01_data --profile cpu"

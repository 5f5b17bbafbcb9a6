"""Every chapter notebook executes in the smoke profile (papermill), then the book builds from them.

A failing cell fails this test with papermill's error naming the notebook and cell.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def _toc_files():
    toc = yaml.safe_load((REPO / "book" / "_toc.yml").read_text())
    return [c["file"] for part in toc["parts"] for c in part["chapters"]]


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


@pytest.mark.slow
def test_smoke_book_builds_with_every_chapter_and_its_figures(tmp_path, tmp_artifacts):
    book = tmp_path / "book"
    subprocess.run([sys.executable, str(REPO / "tools" / "build_book.py"), "--profile", "smoke",
                    "--book", str(book)], check=True, cwd=REPO)
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

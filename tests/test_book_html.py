"""What a reader sees in the built book: math typeset offline, no remote assets, no injected
parameters, no local paths, no broken images or links, a regenerate line under every figure,
the execution statistics page; and the table helper ``ood_core.plots.show_table``.

The checks live in tools/check_book_html.py (the build runs them too). Each is first shown to
catch its regression on a hand-made page, then run on the smoke book that tests/_smoke_book.py
builds once per session (shared with tests/test_notebooks.py).
"""

import base64
import io
import re
import sys
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
import yaml

import _smoke_book
from ood_core import plots

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import check_book_html as chk  # noqa: E402  (tools/ is not a package)

GOOD_HEAD = ('<link rel="stylesheet" href="_static/site.css"><script src="_static/mathjax/tex-chtml.js"></script>'
             '<link rel="canonical" href="https://example.org/page.html">')


def _site(tmp_path, body, head=GOOD_HEAD, name="index.html"):
    (tmp_path / "_static" / "mathjax").mkdir(parents=True, exist_ok=True)
    (tmp_path / "_static" / "site.css").write_text("pre { white-space: pre-wrap; }")
    (tmp_path / "_static" / "mathjax" / "tex-chtml.js").write_text("")
    (tmp_path / "img.png").write_bytes(b"\x89PNG")
    (tmp_path / "other.html").write_text('<html><body><h1 id="sec">x</h1></body></html>')
    page = f"<html><head>{head}</head><body>{body}</body></html>"
    (tmp_path / name).write_text(page)
    return chk.check_site(tmp_path)


# --- each check catches its regression -----------------------------------------------------------

def test_a_clean_page_passes(tmp_path):
    body = ('<p>Bits/dim <span class="math notranslate nohighlight">\\(\\log p(x)\\)</span> costs $5 and </p>'
            '<div class="math">\\[ x^2 \\]</div><pre>print("$p$", r"\\(")</pre><img src="img.png">'
            '<a href="other.html#sec">s</a><a href="#top" id="top">t</a><a href="https://arxiv.org">a</a>'
            '<a download="t.csv" href="data:text/csv;base64,YQo=">csv</a><script>const U = "https://x.org/a.js";</script>')
    assert _site(tmp_path, body) == []


@pytest.mark.parametrize("body, kind", [
    ("<p>the likelihood \\(\\log p(x)\\) is</p>", "raw-math"),
    ("<p>a display \\[ x \\] here</p>", "raw-math"),
    ("<p>\\begin{align} a &= b \\end{align}</p>", "raw-math"),
    ("<p>Largest $p$ in the grid</p>", "raw-math"),
    ("<p>$$ x $$</p>", "raw-math"),
    ('<div class="cell tag_injected-parameters"><pre><span class="c1"># Parameters</span></pre></div>', "injected-parameters"),
    ("<pre>mirror: /work/shared/data</pre>", "local-path"),
    ("<p>saved in /home/ana/ood/artifacts</p>", "local-path"),
    ("<pre>/tmp/pytest-3/book</pre>", "local-path"),
    ('<a href="file:///srv/x.html">x</a><p>file:///srv/x.html</p>', "local-path"),
    ('<img src="missing.png">', "broken-image"),
    ('<a href="nowhere.html">x</a>', "broken-link"),
    ('<a href="other.html#no-such-id">x</a>', "broken-anchor"),
    ('<img src="https://example.org/fig.png">', "remote-asset"),
])
def test_each_regression_is_reported(tmp_path, body, kind):
    problems = _site(tmp_path, body)
    assert any(f": {kind}:" in p for p in problems), problems


@pytest.mark.parametrize("head", [
    '<script defer src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>',
    '<link rel="stylesheet" href="//fonts.googleapis.com/css?family=Lato">',
])
def test_remote_assets_are_reported_and_math_needs_a_local_mathjax(tmp_path, head):
    problems = _site(tmp_path, '<span class="math">\\(x\\)</span>', head=head)
    assert any("remote-asset" in p for p in problems), problems
    assert any("loads no local MathJax" in p for p in problems), problems


def test_remote_urls_inside_local_stylesheets_are_reported(tmp_path):
    _site(tmp_path, "<p>x</p>")
    (tmp_path / "_static" / "site.css").write_text('@import url("https://fonts.example/a.css"); a { color: red }')
    problems = chk.check_site(tmp_path)
    assert problems == ["_static/site.css: remote-asset: 'url(\"https://fonts.example/a.css'"], problems


def test_missing_local_script_is_reported(tmp_path):
    problems = _site(tmp_path, "<p>x</p>", head='<script src="_static/gone.js"></script>')
    assert problems == ["index.html: broken-asset: <script src='_static/gone.js'> (no gone.js)"]


# --- the smoke book -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory):
    return _smoke_book.build(tmp_path_factory)


@pytest.fixture(scope="session")
def html(smoke_book):
    return smoke_book[0] / "_build" / "html"


def _chapter_pages(html):
    toc = yaml.safe_load((REPO / "book" / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"] if c["file"].startswith("chapters/")]
    return [html / f"{f}.html" for f in files]


@pytest.mark.slow
def test_smoke_book_has_none_of_the_regressions(html):
    assert chk.pages(html), "no pages found"
    problems = chk.check_site(html)
    assert problems == [], "\n".join(problems)


@pytest.mark.slow
def test_math_is_typeset_by_the_bundled_mathjax(html):
    page = chk.parse(html / "chapters" / "02_glow_fashion_mnist.html")
    assert page.has_math
    local = [url for tag, _, url in page.refs if tag == "script" and "mathjax" in url]
    assert local == ["../_static/mathjax/tex-chtml.js"], local
    assert (html / "_static" / "mathjax" / "tex-chtml.js").stat().st_size > 100_000
    assert list((html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("MathJax_Main-Regular.woff"))
    # $...$ in displayed Markdown (chapter 12's OpenOOD note, "Pruning at $p = 95$") is math too, not text
    ash = (html / "chapters" / "12_ash_ablations.html").read_text()
    assert re.search(r'Pruning at <span class="math notranslate nohighlight">\\\(p = 95\\\)</span>', ash)


@pytest.mark.slow
def test_each_chapter_shows_its_parameters_once_with_the_values_used(html):
    for path in _chapter_pages(html):
        text = path.read_text()
        assert text.count("tag_parameters") == 1, f"{path.name}: parameters cell shown {text.count('tag_parameters')} times"
        cell = text[text.index("tag_parameters"):]
        code = re.sub(r"<[^>]+>", "", cell[:cell.index("</pre>")]).replace("&quot;", '"')
        assert 'profile: str = "smoke"' in code, f"{path.name}: {code[:300]}"
        assert "tag_injected-parameters" not in text


@pytest.mark.slow
def test_every_figure_has_its_regenerate_line(html):
    for path in _chapter_pages(html):
        stem = path.stem
        text = path.read_text()
        cells = re.split(r'(?=<div class="cell[ "])', text)[1:]
        with_figures = [c for c in cells if "<img " in c]
        assert with_figures, f"{stem}: no figure"
        for c in with_figures:
            m = re.search(r'<p class="regenerate">Regenerate: <code>([^<]+)</code></p>', c)
            assert m, f"{stem}: a figure without its regenerate line"
            assert m.group(1) == f"python tools/build_book.py --only {stem} --profile smoke", m.group(1)


@pytest.mark.slow
def test_long_code_lines_wrap(html):
    css = (html / "_static" / "ood-companion.css").read_text()
    rule = css[:css.index("}")]
    assert "div.highlight pre" in rule and "white-space: pre-wrap" in rule
    page = (html / "chapters" / "02_glow_fashion_mnist.html").read_text()
    assert re.search(r'<link rel="stylesheet"[^>]*href="\.\./_static/ood-companion\.css', page)


@pytest.mark.slow
def test_execution_statistics_page_lists_every_chapter(html, smoke_book):
    text = (html / "execution_stats.html").read_text()
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", text, flags=re.S)
    cells = [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, flags=re.S)] for r in rows]
    cells = [c for c in cells if c]
    assert len(cells) == len(_chapter_pages(html))
    for c in cells:
        wall, params, machine, date, code, status = c[1:7]
        assert re.fullmatch(r"[0-9.]+ s|[0-9]+ min [0-9]{2} s", wall), wall
        assert params.startswith("smoke") and status in ("executed", "reused (unchanged)"), c
        assert re.fullmatch(r"M\d+", machine) and re.fullmatch(r"20\d\d-\d\d-\d\d \d\d:\d\d", date), c
        assert re.fullmatch(r"[0-9a-f]{7,8}\*? · [0-9a-f]{8}", code), code
    assert re.search(r"<strong>M1</strong>: \d+ × ", text)  # the machine legend
    # the chapter column links to each chapter page
    assert len(re.findall(r'href="chapters/\d\d_[a-z0-9_]+\.html"', text)) >= len(cells)


@pytest.mark.slow
def test_rerun_page_is_in_the_book(html):
    text = re.sub(r"<[^>]+>", "", (html / "rerun.html").read_text())
    for phrase in ("Rerun and extend a chapter", "make lab", "--only 02_glow_fashion_mnist --profile paper",
                   "papermill 17_input.ipynb 17_paper.ipynb -p profile paper -p folder", "artifacts/"):
        assert phrase in text, phrase


# --- show_table -----------------------------------------------------------------------------------

def _decoded_csv(markup):
    uri = re.search(r'href="(data:text/csv;[^"]+)"', markup).group(1)
    assert uri.startswith("data:text/csv;charset=utf-8;base64,")
    return base64.b64decode(unquote(uri.split(",", 1)[1])).decode("utf-8")


def test_table_rounds_per_column_and_marks_missing_values():
    df = pd.DataFrame({"AUROC %": [12.34567, np.nan], "bpd": [2.9581234, 1.8334], "n": [10000, 250],
                       "note": ["ok", None]}, index=["MNIST", "SVHN"])
    shown = plots.format_table(df, digits={"AUROC %": 1})
    assert shown.loc["MNIST"].tolist() == ["12.3", "2.958", "10,000", "ok"]  # bpd: the default 3 decimals
    assert shown.loc["SVHN"].tolist() == [plots.MISSING, "1.833", "250", plots.MISSING]
    assert plots.MISSING == "—"
    assert plots.format_table(df, digits=0).loc["MNIST", "bpd"] == "3"
    assert plots.format_table(pd.DataFrame({"x": [-0.0004, np.inf]})).x.tolist() == ["0.000", "∞"]
    assert plots.format_table(pd.DataFrame({"x": [1.4299e10, -2.3e6]})).x.tolist() == ["1.43 × 10¹⁰", "-2.30 × 10⁶"]


def test_table_html_has_caption_dashes_and_an_offline_csv_link():
    df = pd.DataFrame({"AUROC %": [12.34567, np.nan], "paper <ref>": [np.nan, 96.61]}, index=["ASH-S", "energy"])
    markup = plots.table_html(df, digits=1, caption="CIFAR-10 & friends", csv_name="ash_table")
    assert "<caption>CIFAR-10 &amp; friends</caption>" in markup
    assert "paper &lt;ref&gt;" in markup and "NaN" not in markup and "nan" not in markup
    assert markup.count("<td>—</td>") == 2 and "<td>12.3</td>" in markup and "<td>96.6</td>" in markup
    assert 'download="ash_table.csv"' in markup and "http" not in markup
    back = pd.read_csv(io.StringIO(_decoded_csv(markup)), index_col=0)
    pd.testing.assert_frame_equal(back, df)  # full precision, missing values as empty fields


def test_show_table_displays_html_and_text(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    df = pd.DataFrame({"a": [1.23456]})
    assert plots.show_table(df, digits=2, caption="c") is None
    (table,) = shown
    assert table._repr_html_() == plots.table_html(df, digits=2, caption="c")
    assert [line.split() for line in repr(table).splitlines()] == [["c"], ["a"], ["0", "1.23"]]


def test_table_rejects_bad_digits():
    df = pd.DataFrame({"a": [1.0]})
    with pytest.raises(ValueError, match="not in the table: \\['b'\\]"):
        plots.format_table(df, digits={"b": 2})
    with pytest.raises(ValueError, match=">= 0"):
        plots.format_table(df, digits=-1)
    with pytest.raises(TypeError, match="DataFrame"):
        plots.format_table(df["a"])

"""Checks of a built book's HTML for what a reader would see go wrong.

    python tools/check_book_html.py book/_build/html     # lists the problems; exit status 1 if any

Each check returns problems as "page: kind: detail" strings:

* raw-math -- LaTeX shown as text: ``\\(``, ``\\[``, ``\\begin{``, ``$$`` or ``$...$`` in prose
  outside the math elements that MathJax renders (code is exempt), or a page with math that
  does not load a local MathJax.
* remote-asset -- a script, stylesheet, icon, image or frame loaded from ``http(s)://`` or
  ``//`` (the book must work offline), also ``url(...)``/``@import`` in local stylesheets.
* injected-parameters -- papermill's injected ``# Parameters`` cell is on the page.
* local-path -- an absolute local path (``/work/``, ``/home/``, ``/tmp/``, ``/root/``,
  ``/Users/``, ``file://``...) in the visible text, code and outputs included.
* broken-asset / broken-image / broken-link / broken-anchor -- a local ``src``/``href`` whose
  file does not exist, or a ``#fragment`` with no such id in the target page.
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
        "track", "wbr"}
NOT_TEXT = {"script", "style", "template", "noscript"}
CODE = {"pre", "code", "kbd", "samp", "textarea"}
ASSET_LINK_RELS = {"stylesheet", "icon", "shortcut", "preload", "modulepreload", "prefetch", "apple-touch-icon",
                   "manifest", "mask-icon"}
REMOTE = re.compile(r"^(?:https?:)?//", re.I)
LOCAL_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|tmp|root|Users|mnt|scratch|private/var|var/folders)/"
                        r"|file://|\b[A-Za-z]:\\(?:Users|work)\\")
RAW_MATH = re.compile(r"\\\(|\\\[|\\begin\{|\$\$|(?<![\\$\w])\$(?=[^\s$])[^$\n]{1,200}(?<=[^\s$\\])\$(?![\w$])")
CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])([^'")\s]+)""", re.I)


class Page(HTMLParser):
    """What the checks need from one page: texts by context, ids, classes, references."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool, bool, bool]] = []  # tag, hides text, is math, is code
        self.prose: list[str] = []  # visible text outside code and math
        self.visible: list[str] = []  # all visible text, code and outputs included
        self.ids: set[str] = set()
        self.classes: set[str] = set()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, url) of what the page loads
        self.links: list[str] = []  # <a href>
        self.has_math = False

    def _state(self) -> tuple[bool, bool, bool]:
        hidden = any(h for _, h, _, _ in self.stack)
        math = any(m for _, _, m, _ in self.stack)
        code = any(c for _, _, _, c in self.stack)
        return hidden, math, code

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        classes = a.get("class", "").split()
        self.classes.update(classes)
        for key in ("id", "name"):
            if a.get(key) and (key == "id" or tag == "a"):
                self.ids.add(a[key])
        is_math = "math" in classes
        self.has_math |= is_math
        if tag in ("script", "img", "iframe", "source", "audio", "video", "embed", "track") and a.get("src"):
            self.refs.append((tag, "src", a["src"]))
        if tag in ("img", "source") and a.get("srcset"):
            for part in a["srcset"].split(","):
                if part.strip():
                    self.refs.append((tag, "srcset", part.split()[0]))
        if tag == "object" and a.get("data"):
            self.refs.append((tag, "data", a["data"]))
        if tag == "link" and a.get("href") and set(a.get("rel", "").lower().split()) & ASSET_LINK_RELS:
            self.refs.append((tag, "href", a["href"]))
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag not in VOID:
            self.stack.append((tag, tag in NOT_TEXT, is_math, tag in CODE))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID and self.stack and self.stack[-1][0] == tag:
            self.stack.pop()

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        hidden, math, code = self._state()
        if hidden or math:
            return
        self.visible.append(data)
        if not code:
            self.prose.append(data)


@lru_cache(maxsize=None)
def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    page.close()
    return page


def _excerpt(text: str, start: int, end: int) -> str:
    return " ".join(text[max(0, start - 40):end + 40].split())


def check_raw_math(page: Page) -> list[str]:
    out = []
    prose = "".join(page.prose)
    for m in RAW_MATH.finditer(prose):
        out.append(f"raw-math: {_excerpt(prose, m.start(), m.end())!r}")
    if page.has_math and not any(tag == "script" and not REMOTE.match(url) and re.search(r"mathjax|katex", url, re.I)
                                 for tag, _, url in page.refs):
        out.append("raw-math: the page has math but loads no local MathJax/KaTeX script")
    return out


def check_remote_assets(page: Page) -> list[str]:
    return [f"remote-asset: <{tag} {attr}={url!r}>" for tag, attr, url in page.refs if REMOTE.match(url)]


def check_injected_parameters(page: Page, html_text: str) -> list[str]:
    if "tag_injected-parameters" in page.classes or re.search(r'<span class="c1">#\s*Parameters</span>', html_text):
        return ["injected-parameters: papermill's injected '# Parameters' cell is shown"]
    return []


def check_local_paths(page: Page) -> list[str]:
    text = "\n".join(page.visible)  # text nodes apart: "x" + "/tmp/..." is not "x/tmp/..."
    found = [f"local-path: {_excerpt(text, m.start(), m.end())!r}" for m in LOCAL_PATH.finditer(text)]
    return found + [f"local-path: <{tag} {attr}={url!r}>" for tag, attr, url in
                    page.refs + [("a", "href", u) for u in page.links] if url.lower().startswith("file:")]


def _local_target(page_path: Path, url: str) -> tuple[Path | None, str]:
    """(file the URL points to, fragment) for a local URL; (None, "") for remote and data URLs."""
    if REMOTE.match(url) or re.match(r"^[a-z][a-z0-9+.-]*:", url, re.I):  # http:, mailto:, data:, javascript:
        return None, ""
    parts = urlsplit(url)
    if not parts.path:
        return page_path, unquote(parts.fragment)
    return (page_path.parent / unquote(parts.path)).resolve(), unquote(parts.fragment)


def check_references(page_path: Path, page: Page, root: Path) -> list[str]:
    out = []
    for tag, attr, url in page.refs:
        target, _ = _local_target(page_path, url)
        if target is not None and not target.is_file():
            kind = "broken-image" if tag == "img" else "broken-asset"
            out.append(f"{kind}: <{tag} {attr}={url!r}> (no {target.name})")
    for url in page.links:
        target, fragment = _local_target(page_path, url)
        if target is None:
            continue
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            out.append(f"broken-link: {url!r}")
        elif fragment and target.suffix == ".html" and fragment not in parse(target).ids:
            out.append(f"broken-anchor: {url!r} (no id {fragment!r} in {target.relative_to(root) if target.is_relative_to(root) else target.name})")
    return out


def check_stylesheets(root: Path) -> list[str]:
    out = []
    for css in sorted(root.rglob("*.css")):
        for m in CSS_URL.finditer(css.read_text(encoding="utf-8", errors="replace")):
            if REMOTE.match(m.group(1)):
                out.append(f"{css.relative_to(root)}: remote-asset: {m.group(0)!r}")
    return out


def check_page(path: Path, root: Path) -> list[str]:
    page = parse(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    found = (check_raw_math(page) + check_remote_assets(page) + check_injected_parameters(page, text)
             + check_local_paths(page) + check_references(path, page, root))
    rel = path.relative_to(root)
    return [f"{rel}: {p}" for p in found]


def pages(root: Path) -> list[Path]:
    """The book's pages (Sphinx's search/genindex scaffolding and static files excluded)."""
    skip = {"search.html", "genindex.html"}
    return sorted(p for p in root.rglob("*.html")
                  if p.name not in skip and not p.relative_to(root).parts[0].startswith("_"))


def check_site(root: Path) -> list[str]:
    root = Path(root)
    if not (root / "index.html").is_file():
        return [f"{root}: no index.html (was the book built?)"]
    parse.cache_clear()
    out = []
    for path in pages(root):
        out += check_page(path, root)
    return out + check_stylesheets(root)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else Path(__file__).resolve().parent.parent / "book" / "_build" / "html")
    problems = check_site(root)
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s) in {root}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Execute every chapter notebook with papermill, then build the Jupyter Book (execution off).

    python tools/build_book.py                      # default CPU profile, into book/_build/html
    python tools/build_book.py --profile smoke --book /tmp/b   # a copy of the book elsewhere
    python tools/build_book.py --only 01_data       # one chapter (others keep their last outputs)

Notebooks live as jupytext percent files in notebooks/; each is converted to .ipynb, run by
papermill with its parameters injected (profile, seed, ...), and written into <book>/chapters/.
Notebooks run one after another (two torch processes on 2 cores slow each other down badly).
A cell error stops the build with papermill's error, naming the notebook and the cell.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import papermill

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
STATIC = ["_config.yml", "_toc.yml", "intro.md", "deviations.md", "references.bib"]


def chapter_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def run_notebook(src: Path, out_dir: Path, parameters: dict) -> float:
    out_dir.mkdir(parents=True, exist_ok=True)
    nb = jupytext.read(src)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    raw = out_dir / f".{src.stem}.input.ipynb"
    jupytext.write(nb, raw)
    t0 = time.time()
    try:
        papermill.execute_notebook(str(raw), str(out_dir / f"{src.stem}.ipynb"), parameters=parameters,
                                   kernel_name="python3", cwd=str(REPO), progress_bar=False,
                                   log_output=False, request_save_on_cell_execute=False)
    finally:
        raw.unlink(missing_ok=True)
    return time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=os.environ.get("PROFILE", "cpu"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--book", default=str(REPO / "book"), help="book source folder (copied there if not book/)")
    ap.add_argument("--only", nargs="*", help="chapter stems to execute (default: all)")
    ap.add_argument("--no-build", action="store_true", help="execute notebooks only")
    args = ap.parse_args(argv)

    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would clutter the rendered outputs
    book = Path(args.book).resolve()
    if book != (REPO / "book").resolve():
        book.mkdir(parents=True, exist_ok=True)
        for name in STATIC:
            if (REPO / "book" / name).exists():
                shutil.copy(REPO / "book" / name, book / name)
    chapters = chapter_notebooks()
    if args.only:
        chapters = [c for c in chapters if c.stem in args.only]
    total = time.time()
    for nb in chapters:
        dt = run_notebook(nb, book / "chapters", {"profile": args.profile, "seed": args.seed})
        print(f"executed {nb.name} [{args.profile}] in {dt:.1f} s", flush=True)
    print(f"all notebooks: {time.time() - total:.1f} s", flush=True)
    if args.no_build:
        return 0
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(book)]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    print(f"book built in {time.time() - t0:.1f} s: {book / '_build' / 'html' / 'index.html'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

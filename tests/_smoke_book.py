"""The smoke-profile book, built once per test session and shared by the modules that read it.

tests/test_notebooks.py (does every chapter execute, does the build skip unchanged chapters) and
tests/test_book_html.py (what a reader sees in the HTML) both need the whole book built in the
smoke profile; building it takes minutes, so the first caller builds it and the others reuse it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_built: dict = {}


def build(tmp_path_factory) -> tuple[Path, str]:
    """(book folder, the build's printed output) of ``tools/build_book.py --profile smoke``.

    Uses a fresh artifact cache (``OOD_ARTIFACTS``), so every model a chapter needs is trained.
    A failed build fails every test that asks for it, with the build's output, without retrying.
    """
    if not _built:
        root = tmp_path_factory.mktemp("smoke_book")
        env = {**os.environ, "OOD_ARTIFACTS": str(root / "artifacts")}
        proc = subprocess.run([sys.executable, str(REPO / "tools" / "build_book.py"), "--profile", "smoke",
                               "--book", str(root / "book")], cwd=REPO, env=env, capture_output=True, text=True)
        _built.update(book=root / "book", log=proc.stdout + proc.stderr, rc=proc.returncode, env=env)
    if _built["rc"] != 0:
        pytest.fail(f"the smoke book did not build (exit {_built['rc']}):\n{_built['log'][-6000:]}")
    return _built["book"], _built["log"]


def environment() -> dict:
    """The environment the smoke book was built with (same artifact cache)."""
    return dict(_built["env"])

"""Screenshots of the pages a reader sees first, taken by headless Chromium with the network cut.

    python tools/screenshots.py                                  # book/_build/html -> book/_build/screenshots/
    python tools/screenshots.py --html /tmp/b/_build/html --out /tmp/shots --height 3000

Pages: the introduction and chapters 02, 11, 13 and 15. Chromium runs with every host name
unresolvable (``--host-resolver-rules``), so a screenshot shows what an offline reader sees:
formulas typeset only if MathJax came from the book itself. Chromium is looked up as
``$CHROMIUM``, then ``chromium``, ``chromium-browser``, ``google-chrome`` on the PATH and
``/usr/bin/chromium``; without one the script says so and exits 0 (Debian/Ubuntu:
``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGES = ["intro", "chapters/02_glow_fashion_mnist", "chapters/11_ash_benchmark",
         "chapters/13_unified_benchmark", "chapters/16_claims_ledger"]
CANDIDATES = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "/usr/bin/chromium"]


def find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env:
        return env if Path(env).is_file() or shutil.which(env) else None
    for name in CANDIDATES:
        found = shutil.which(name) or (name if Path(name).is_file() else None)
        if found:
            return found
    return None


def screenshot(chromium: str, page: Path, out: Path, width: int, height: int, profile_dir: Path) -> subprocess.CompletedProcess:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-sync", "--mute-audio",
           f"--user-data-dir={profile_dir}", "--host-resolver-rules=MAP * ~NOTFOUND",
           "--hide-scrollbars", f"--window-size={width},{height}",
           "--virtual-time-budget=10000",  # lets MathJax typeset before the capture
           f"--screenshot={out}", page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--html", default=str(REPO / "book" / "_build" / "html"), help="the built book's HTML folder")
    ap.add_argument("--out", help="folder for the PNG files (default: <html>/../screenshots)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=2400)
    args = ap.parse_args(argv)

    chromium = find_chromium()
    if chromium is None:
        print("screenshots skipped: no Chromium found (install the Debian package 'chromium', "
              "or set CHROMIUM=/path/to/chrome)")
        return 0
    html = Path(args.html)
    if not (html / "index.html").is_file():
        print(f"screenshots skipped: {html} holds no built book (run make book first)")
        return 0
    out = Path(args.out) if args.out else html.parent / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile_dir:
        for name in PAGES:
            page = html / f"{name}.html"
            if not page.is_file():
                print(f"  {name}: not in this build (skipped)")
                continue
            png = out / f"{name.replace('/', '_')}.png"
            png.unlink(missing_ok=True)
            try:
                proc = screenshot(chromium, page, png, args.width, args.height, Path(profile_dir))
            except subprocess.TimeoutExpired:
                print(f"  {name}: Chromium timed out")
                failed += 1
                continue
            if png.is_file() and png.stat().st_size > 0:
                print(f"  {name}: {png}")
            else:
                failed += 1
                print(f"  {name}: no screenshot (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")
    print(f"screenshots in {out}" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

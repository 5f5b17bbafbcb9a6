"""Command line: what can be run outside notebooks (for example on a GPU machine without Jupyter).

    python -m ood_core --help
    python -m ood_core data list
    python -m ood_core data verify
    python -m ood_core data download svhn --root ~/ood-data      # needs internet

The CLI is the one place in the package that writes to stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

COMMANDS: dict[str, callable] = {}


def _table(rows: list[dict]) -> str:
    if not rows:
        return "(nothing)"
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols), "  ".join("-" * width[c] for c in cols)]
    lines += ["  ".join(str(r.get(c, "")).ljust(width[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def cmd_data(args: argparse.Namespace) -> int:
    from ood_core import data

    root = Path(args.root) if getattr(args, "root", None) else data.data_root()
    if args.action == "list":
        rows = []
        for name, s in data.MANIFEST.items():
            present = [sp for sp in s.splits if data.available(name, sp, root)]
            rows.append({"name": name, "title": s.title, "shape (CxHxW)": "x".join(map(str, s.shape)),
                         "role": s.role, "splits": ",".join(s.splits),
                         "in mirror": ",".join(present) or "absent",
                         "torchvision": s.torchvision or "-"})
        print(f"mirror: {root}  (set {data.DATA_ENV} to change)")
        print(_table(rows))
        return 0
    if args.action == "verify":
        rows = data.verify(root)
        print(f"mirror: {root}")
        print(_table(rows))
        bad = [r for r in rows if r["status"].startswith("ERROR") or "differs" in r["status"]]
        return 1 if bad else 0
    if args.action == "download":
        if not args.name:
            print("name the dataset to download", file=sys.stderr)
            return 2
        for p in data.download_with_torchvision(args.name, root):
            print(p)
        return 0
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ood_core", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="list the datasets, verify the mirror, or download with torchvision")
    d.add_argument("action", choices=["list", "verify", "download"])
    d.add_argument("name", nargs="?", help="dataset name (download only)")
    d.add_argument("--root", help="mirror folder (default: $OOD_DATA or ../shared/data)")
    d.set_defaults(func=cmd_data)

    for register in _EXTENSIONS:
        register(sub)
    return p


# Later modules add sub-commands here (training and scoring), keeping this file the single entry.
_EXTENSIONS: list = []


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)

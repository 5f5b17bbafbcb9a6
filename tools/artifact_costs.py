"""What the cached steps of a build cost, by kind: the compute seconds recorded in each artifact's meta.

    python tools/artifact_costs.py [ARTIFACTS_DIR] [--since 2026-12-04T19:00]

Trained models record ``wall_time_s`` (training), every other cached step ``compute_s``. ``--since``
keeps the artifacts created at or after an ISO time (one build's). The top ten steps are listed too.
"""
import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("root", nargs="?", default=os.environ.get("OOD_ARTIFACTS", "artifacts"))
parser.add_argument("--since", default="", help="ISO time; only artifacts created at or after it")
args = parser.parse_args()

total, count, steps = defaultdict(float), defaultdict(int), []
for meta_path in Path(args.root).glob("*/*/meta.json"):
    meta = json.loads(meta_path.read_text())
    if meta.get("created", "") < args.since:
        continue
    seconds = meta.get("wall_time_s", meta.get("compute_s"))
    if seconds is None:
        continue
    kind = meta_path.parent.parent.name
    total[kind] += seconds
    count[kind] += 1
    config = json.loads((meta_path.parent / "config.json").read_text())
    steps.append((seconds, kind, json.dumps(config, sort_keys=True)[:110]))
print(f"{'kind':<22}{'steps':>7}{'seconds':>10}")
for kind in sorted(total, key=total.get, reverse=True):
    print(f"{kind:<22}{count[kind]:>7}{total[kind]:>10.0f}")
print(f"{'all':<22}{sum(count.values()):>7}{sum(total.values()):>10.0f}")
print("\nlongest steps:")
for seconds, kind, config in sorted(steps, reverse=True)[:10]:
    print(f"{seconds:>8.0f} s  {kind:<20} {config}")

"""Move artifact folders written under the first key policy to the current one (a one-off migration).

Until the experiment layer was unified, runs were keyed by the sha256 of their hand-written
``to_dict()`` with no schema version. The current policy (``ood_core.artifacts``) keys them by all
their fields plus the kind's schema version. Committed GPU results under ``results/`` cannot be
recomputed on the machines that build the book, and trained models in ``artifacts/`` cost minutes to
hours, so this tool moves them instead of letting them become unreachable:

    python tools/migrate_keys.py results              # committed paper-profile results
    python tools/migrate_keys.py artifacts --dry-run  # a local cache of trained models

For every ``<kind>/<key>/`` folder of a model or results kind whose ``config.json`` is a config of the
old policy (its old key equals the folder name), the tool rebuilds the run, computes its new key,
rewrites ``config.json`` and ``DONE`` and renames the folder; ``meta.json`` records where it came
from. Scores, features and tables are not migrated: they are recomputed from the models on demand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ood_core import artifacts  # noqa: E402
from ood_core.classifiers import ClassifierConfig  # noqa: E402
from ood_core.experiment import ClassifierRun, LikelihoodRun  # noqa: E402
from ood_core.train import TrainConfig  # noqa: E402

MODEL_KINDS = {"glow": "glow", "vae": "vae", "pixelcnn": "pixelcnn", "classifier": "classifier",
               "glow_results": "glow", "classifier_results": "classifier"}


def legacy_run(kind: str, cfg: dict):
    """The current run for a config written by the old ``GlowRun`` / ``GenerativeRun`` / ``ClassifierRun``."""
    family = MODEL_KINDS[kind]
    train = TrainConfig.from_dict(cfg["train"])
    if family == "classifier":
        return ClassifierRun(cfg["dataset"], ClassifierConfig.from_dict(cfg["model"]), train, n_train=cfg["n_train"],
                             augment=cfg["augment"], n_curve=cfg["n_curve"])
    common = dict(n_train=cfg["n_train"], n_curve=cfg["n_curve"], curve_sets=tuple(cfg["curve_sets"]),
                  eval_batch=cfg["eval_batch"])
    if family == "glow":
        model = {k: cfg[k] for k in ("levels", "steps", "width", "coupling")}
        return LikelihoodRun("glow", cfg["dataset"], model, train, perturb=cfg.get("perturb", 0.0), **common)
    scoring = {"iwae_k": cfg["iwae_k"]} if cfg["family"] == "vae" else {}
    return LikelihoodRun(cfg["family"], cfg["dataset"], cfg["model"], train, scoring=scoring, **common)


def migrate(root: Path, dry_run: bool = False) -> list[tuple[str, str, str]]:
    moved = []
    for kind in MODEL_KINDS:
        for folder in sorted((root / kind).glob("*")):
            if not folder.is_dir() or folder.name.endswith(".work") or folder.name.startswith(".tmp"):
                continue
            if not (folder / "DONE").is_file() or not (folder / "config.json").is_file():
                continue
            cfg = json.loads((folder / "config.json").read_text())
            if artifacts.config_key(cfg) != folder.name:
                continue  # already under the current policy (or not a legacy config)
            run = legacy_run(kind, cfg)
            target = folder.parent / artifacts.artifact_key(kind, run.key())
            moved.append((kind, folder.name, target.name))
            if dry_run or target.exists():
                continue
            (folder / "config.json").write_text(json.dumps(artifacts.config_dict(run.key()), indent=1, sort_keys=True))
            meta = json.loads((folder / "meta.json").read_text())
            meta.update({"migrated_from": f"{kind}/{folder.name}", "kind_version": artifacts.kind(kind).version})
            (folder / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            (folder / "DONE").write_text(target.name + "\n")
            folder.rename(target)
    return moved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="results/ or artifacts/ folder")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    for kind, old, new in migrate(Path(args.root), args.dry_run):
        print(f"{kind}: {old} -> {new}{' (dry run)' if args.dry_run else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

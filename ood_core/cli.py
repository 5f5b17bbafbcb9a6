"""Command line: what can be run outside notebooks (for example on a GPU machine without Jupyter).

    python -m ood_core --help
    python -m ood_core data list
    python -m ood_core data verify
    python -m ood_core data download svhn --root ~/ood-data      # needs internet
    python -m ood_core glow --profile paper --dataset cifar10 --coupling affine --export
    python -m ood_core classifier --profile paper --dataset cifar10 --export
    python -m ood_core classifier --profile paper --network densenet --export   # DenseNet-BC-100 (ASH's network)
    python -m ood_core bench
    python -m ood_core keys                 # artifact kinds, versions, stale code fingerprints
    python -m ood_core keys --record        # record fingerprints after deciding on version bumps
    torchrun --nproc_per_node 8 -m ood_core glow --profile paper --export   # DDP on 8 GPUs

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


def _distributed(args: argparse.Namespace):
    """Under ``torchrun`` join the process group (DDP training, rank 0 scores); else one process."""
    from ood_core.train import setup_distributed

    ctx = setup_distributed()
    device = args.device or (ctx.device if ctx.world_size > 1 else None)
    return ctx, device


def cmd_glow(args: argparse.Namespace) -> int:
    """Train (or load) a profile's Glow, score its evaluation sets, optionally export to results/."""
    import torch

    from ood_core import experiment, likelihood_study as ls
    from ood_core.profiles import get_profile

    if args.threads:
        torch.set_num_threads(args.threads)
    ctx, device = _distributed(args)
    P = get_profile(args.profile)
    datasets = args.dataset or list(P.glow.runs)
    for ds in datasets:
        for coupling in args.coupling:
            run = P.glow.runs[ds].with_model(coupling=coupling)
            if not ctx.is_main:  # other ranks help train, rank 0 scores and exports
                experiment.train_or_load(run, device=device, progress=False)
                continue
            ev = ls.evaluate(run, P.glow.n_eval, P.glow.ood[ds], seed=args.seed, device=device)
            print(f"== {run.label} ({P.name} profile): {ev.trained.meta['steps']} steps, "
                  f"{ev.trained.meta['wall_time_s']:.0f} s")
            print(ev.table.round(3).to_string())
            if ev.missing:
                print(experiment.missing_note(ev.missing))
            if args.export:
                print("exported to", ls.export_results(ev))
    return 0


def cmd_classifier(args: argparse.Namespace) -> int:
    """Train (or load) a profile's classifier, run the ASH benchmark and ablations, optionally export."""
    import torch

    from ood_core import classifier_study as cs
    from ood_core import data, experiment
    from ood_core.profiles import get_profile

    if args.threads:
        torch.set_num_threads(args.threads)
    ctx, device = _distributed(args)
    P = get_profile(args.profile)
    C = P.classifier
    jobs = [(ds, C.runs[ds]) for ds in args.dataset or list(C.runs)] if not args.network else \
        [("cifar10", C.networks[n]) for n in args.network]
    for ds, run in jobs:
        if not ctx.is_main:
            experiment.train_or_load(run, device=device, progress=False)
            continue
        ev = cs.evaluate(run, C.n_eval, C.n_fit, C.ood[ds], seed=args.seed, device=device)
        long = ev.benchmark(C.methods)
        tables = {"benchmark": long, "summary": cs.summary(long).reset_index(),
                  "near_far": cs.near_far_summary(long, ev.near_names(C.near[ds]), ev.synthetic_names).reset_index(),
                  "exponents": ev.exponent_table(95),
                  "sweep": ev.percentile_sweep(C.percentiles, shapers=(*cs.SWEEP_SHAPERS, "scale")),
                  "local_vs_global": ev.local_vs_global(C.ablation_percentiles),
                  "where_to_ash": ev.where_to_ash(90)}
        print(f"== {run.label} ({P.name} profile): {ev.trained.meta['steps']} steps, "
              f"{ev.trained.meta['wall_time_s']:.0f} s")
        print(tables["summary"].round(2).to_string())
        print(tables["where_to_ash"].round(2).to_string())
        if ev.missing:
            print(experiment.missing_note(ev.missing))
        if args.export:
            print("exported to", cs.export_results(ev.trained, tables))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """List artifact kinds with their versions; report (or record) stale code fingerprints."""
    from ood_core import artifacts, families  # noqa: F401  (families registers the model families' kinds)

    if args.record:
        for name, rec in artifacts.record_fingerprints().items():
            print(f"{name:22s} v{rec['version']}  {rec['fingerprint']}")
        print(f"recorded in {artifacts.FINGERPRINTS_FILE}")
        return 0
    rows = [{"kind": k.name, "version": k.version, "what": k.doc} for k in artifacts.KINDS.values()]
    print(_table(rows))
    problems = artifacts.stale_kinds()
    for p in problems:
        print("stale:", p)
    return 1 if problems else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ood_core import bench

    for line in bench.run(device=args.device, profile=args.profile, seconds=args.seconds):
        print(line, flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ood_core", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="list the datasets, verify the mirror, or download with torchvision")
    d.add_argument("action", choices=["list", "verify", "download"])
    d.add_argument("name", nargs="?", help="dataset name (download only)")
    d.add_argument("--root", help="mirror folder (default: $OOD_DATA or ../shared/data)")
    d.set_defaults(func=cmd_data)

    g = sub.add_parser("glow", help="train/score the Glow runs of a profile (Nalisnick et al.); cached")
    g.add_argument("--profile", default="cpu")
    g.add_argument("--dataset", nargs="*", choices=["fashion_mnist", "cifar10"], help="default: both")
    g.add_argument("--coupling", nargs="+", default=["affine"], choices=["affine", "additive"])
    g.add_argument("--device", default=None, help="default: cuda if available")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    g.add_argument("--export", action="store_true", help="write small results (scores, curves) to results/")
    g.set_defaults(func=cmd_glow)

    c = sub.add_parser("classifier", help="train/score the classifiers of a profile (ASH benchmark); cached")
    c.add_argument("--profile", default="cpu")
    c.add_argument("--dataset", nargs="*", choices=["cifar10", "fashion_mnist"], help="default: both")
    c.add_argument("--network", nargs="*", help="further CIFAR-10 networks of the profile instead (e.g. densenet)")
    c.add_argument("--device", default=None, help="default: cuda if available")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    c.add_argument("--export", action="store_true", help="write small results (tables, curves) to results/")
    c.set_defaults(func=cmd_classifier)

    k = sub.add_parser("keys", help="artifact kinds and versions; check or record the code fingerprints")
    k.add_argument("--record", action="store_true", help="record current versions and fingerprints")
    k.set_defaults(func=cmd_keys)

    b = sub.add_parser("bench", help="print training/evaluation throughput of the profile's models")
    b.add_argument("--profile", default="cpu")
    b.add_argument("--device", default=None)
    b.add_argument("--seconds", type=float, default=10.0, help="time budget per measurement")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)

"""Ren et al.'s likelihood ratio with CPU-sized PixelCNNs and Glows: which settings reach 95 % AUROC?

A record of the experiments behind ``tools/experiments/lratio.md``; not part of ``ood_core``.
Run from the repository root (models are cached under ``$OOD_ARTIFACTS``, use a scratch folder)::

    OOD_ARTIFACTS=/tmp/lratio_art PYTHONPATH=$PWD OMP_NUM_THREADS=1 python tools/experiments/lratio.py curves ...
    OOD_ARTIFACTS=/tmp/lratio_art PYTHONPATH=$PWD OMP_NUM_THREADS=1 python tools/experiments/lratio.py grid ...

Sub-commands
------------
``curves``  several PixelCNNs (the model, backgrounds at several mu / weight decay) trained side by side
            on one ID set with the book's optimiser (Adam 1e-3, 50 warm-up steps, clip 100), with the
            AUROC (%) of log p and of the likelihood ratio on the evaluation sets after every
            ``--eval-at`` images: how the ratio grows with training length (exploration, not cached).
``grid``    the book's path: :class:`ood_core.experiment.LikelihoodRun` models and backgrounds,
            ``train_or_load`` (cached), :func:`ood_core.likelihood_study.evaluate`, both directions,
            several seeds; AUROC mean and std over seeds, wall and CPU seconds per model.
``maps``    where the ratio comes from: per-pixel ``log p - log p_background`` of cached grid models.

AUROC: ID test positive, higher score = more ID (log p; ``log p_model - log p_background``), percent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ood_core import data, metrics, names
from ood_core.experiment import evaluation_sets
from ood_core.generative_scores import likelihood_ratio, perturb_pixels
from ood_core.pixelcnn import PixelCNN, PixelCNNConfig, nll_bpd

OTHER = {"fashion_mnist": "mnist", "mnist": "fashion_mnist"}  # the OOD set of each direction
OUT = Path(os.environ.get("OOD_ARTIFACTS", "/tmp/lratio_art")) / "lratio"


def auroc(id_scores, ood_scores) -> float:
    """AUROC in percent, ID positive, higher = more ID."""
    return 100.0 * metrics.auroc(np.asarray(id_scores), np.asarray(ood_scores))


# ------------------------------------------------------------------------------------------ curves

@dataclasses.dataclass
class Variant:
    """One model trained in a ``curves`` run: ``mu`` = 0 is the model, > 0 a background."""

    name: str
    mu: float = 0.0
    weight_decay: float = 0.0
    width: int | None = None  # None: the run's width
    layers: int | None = None

    @classmethod
    def parse(cls, spec: str) -> "Variant":
        """``fg`` or ``bg:<mu>:<weight decay>[:<width>:<layers>]``."""
        if spec == "fg":
            return cls("fg")
        parts = spec.split(":")
        mu, wd = float(parts[1]), float(parts[2])
        width, layers = (int(parts[3]), int(parts[4])) if len(parts) > 3 else (None, None)
        return cls(spec, mu, wd, width, layers)


@torch.no_grad()
def log_p(model: PixelCNN, x: torch.Tensor, batch: int = 500, per_pixel: bool = False) -> np.ndarray:
    model.eval()
    out = [(model.log_prob_pixels(x[i:i + batch]) if per_pixel else model.log_prob(x[i:i + batch])).double()
           for i in range(0, len(x), batch)]
    model.train()
    return torch.cat(out).numpy()


def curves(args) -> dict:
    """Train the variants side by side; AUROC of log p and of each ratio after ``eval_at`` images."""
    torch.manual_seed(args.seed)
    ds, ood = args.dataset, OTHER[args.dataset]
    train_x = data.load(ds, "train").subset(args.n_train, seed=args.seed).x
    sets, _ = evaluation_sets(ds, args.n_eval, [ood], seed=0, train_split=False)
    x_id, x_ood = sets[names.ID_TEST].x, sets[ood].x
    variants = [Variant.parse(s) for s in args.variants]
    models, opts, cpu = {}, {}, {}
    for i, v in enumerate(variants):
        torch.manual_seed(1000 * args.seed + (0 if args.paired else i))  # paired: one initial model for all
        cfg = PixelCNNConfig((1, 28, 28), width=v.width or args.width, layers=v.layers or args.layers,
                             n_mix=args.n_mix)
        models[v.name] = PixelCNN(cfg)
        opts[v.name] = torch.optim.Adam(models[v.name].parameters(), lr=args.lr, weight_decay=v.weight_decay)
        cpu[v.name] = 0.0
    gen = torch.Generator().manual_seed(args.seed)
    eval_at = sorted(args.eval_at)
    steps = -(-eval_at[-1] // args.batch)
    order = torch.cat([torch.randperm(len(train_x), generator=gen) for _ in range(-(-steps * args.batch // len(train_x)))])
    rows, seen = [], 0
    for step in range(steps):
        xb = train_x[order[step * args.batch:(step + 1) * args.batch]]
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        if args.schedule == "cosine" and step >= args.warmup:  # as ood_core.train.lr_at_step
            lr = args.lr * 0.5 * (1 + np.cos(np.pi * (step - args.warmup) / max(1, steps - args.warmup)))
        for v in variants:
            t0 = time.process_time()
            inp = perturb_pixels(xb, v.mu, gen) if v.mu else xb
            m, opt = models[v.name], opts[v.name]
            for g in opt.param_groups:
                g["lr"] = lr
            loss = nll_bpd(m, (inp,))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 100.0)
            opt.step()
            cpu[v.name] += time.process_time() - t0
        seen += len(xb)
        if eval_at and seen >= eval_at[0]:
            eval_at.pop(0)
            lp = {v.name: (log_p(models[v.name], x_id), log_p(models[v.name], x_ood)) for v in variants}
            fg_id, fg_ood = lp["fg"]
            row = {"images": seen, "bpd fg ID": -fg_id.mean() / (784 * np.log(2)),
                   "bpd fg OOD": -fg_ood.mean() / (784 * np.log(2)), "log p": auroc(fg_id, fg_ood)}
            for v in variants[1:]:
                b_id, b_ood = lp[v.name]
                row[v.name] = auroc(likelihood_ratio(fg_id, b_id), likelihood_ratio(fg_ood, b_ood))
                row[f"bpd {v.name} ID"] = -b_id.mean() / (784 * np.log(2))
            row["cpu s per model"] = {k: round(c, 1) for k, c in cpu.items()}
            rows.append(row)
            print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    result = {"args": {k: v for k, v in vars(args).items() if k != "fn"}, "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    tag = args.tag or f"curves_{ds}_w{args.width}_L{args.layers}_m{args.n_mix}_b{args.batch}_s{args.seed}"
    (OUT / f"{tag}.json").write_text(json.dumps(result, indent=1))
    if args.save_models:
        torch.save({k: m.state_dict() for k, m in models.items()}, OUT / f"{tag}.pt")
    return result


# -------------------------------------------------------------------------------------------- grid

def base_run(args, dataset: str):
    """The model's :class:`LikelihoodRun`: the cpu profile's recipe of ``args.family`` resized by ``args``."""
    from ood_core.profiles import get_profile

    P = get_profile("cpu")
    if args.family == "pixelcnn":
        run = P.families.pixelcnn["fashion_mnist"].with_model(width=args.width, layers=args.layers, n_mix=args.n_mix)
    else:
        run = P.glow.runs["fashion_mnist"].with_model(steps=args.steps, width=args.width)
    train = dataclasses.replace(run.train, epochs=args.epochs, batch_size=args.batch, lr=args.lr)
    run = run.replace(train=train, n_train=args.n_train)
    return run if dataset == "fashion_mnist" else run.on(dataset, (OTHER[dataset],))


def background_run(run, mu: float, weight_decay: float, args):
    changes = {}
    if args.bg_width:
        changes["width"] = args.bg_width
    if args.family == "pixelcnn" and args.bg_layers:
        changes["layers"] = args.bg_layers
    if args.family == "glow" and args.bg_steps:
        changes["steps"] = args.bg_steps
    bg = run.background(mu, **changes)
    return bg.replace(train=dataclasses.replace(bg.train, weight_decay=weight_decay))


def timed_evaluate(run, n_eval: int, ood: str):
    """:func:`likelihood_study.evaluate` (cached), with the CPU seconds of training and scoring recorded
    next to the cache on first computation (``process_time``: one thread, unaffected by other jobs'
    share of the cores, unlike the wall time)."""
    from ood_core.artifacts import ArtifactStore, artifact_key
    from ood_core.likelihood_study import evaluate

    store = ArtifactStore()
    kind = run.spec.model_kind
    timing_file = OUT / "timing" / f"{artifact_key(kind, run.key())}_{n_eval}.json"
    fresh = not store.exists(kind, run.key())
    # train_or_load draws the initial weights from the global RNG before the trainer seeds it: seed it
    # here, so a run is reproducible and a model and its same-size background start from one draw
    torch.manual_seed(run.train.seed)
    t_cpu, t_wall = time.process_time(), time.time()
    ev = evaluate(run, n_eval, [ood], seed=0, store=store)
    if fresh or not timing_file.exists():
        timing_file.parent.mkdir(parents=True, exist_ok=True)
        timing = {"total_cpu_s": time.process_time() - t_cpu, "total_wall_s": time.time() - t_wall,
                  "trained_here": fresh, "train_wall_s": ev.trained.meta.get("wall_time_s"),
                  "steps": ev.trained.meta.get("steps"), "threads": torch.get_num_threads()}
        timing_file.write_text(json.dumps(timing))
    return ev, json.loads(timing_file.read_text())


def grid(args) -> list[dict]:
    """Models and backgrounds for each direction and seed; AUROC (%) of log p and of each ratio."""
    rows = []
    for ds in args.datasets:
        ood = OTHER[ds]
        for seed in args.seeds:
            run = base_run(args, ds).with_seed(seed)
            ev, t_fg = timed_evaluate(run, args.n_eval, ood)
            lp_id, lp_ood = ev.scores[names.ID_TEST]["log_px"], ev.scores[ood]["log_px"]
            base = {"dataset": ds, "seed": seed, "bpd ID": ev.scores[names.ID_TEST]["bpd"].mean(),
                    "bpd OOD": ev.scores[ood]["bpd"].mean(), "log p": auroc(lp_id, lp_ood),
                    "fg cpu s": t_fg["total_cpu_s"], "fg train wall s": t_fg["train_wall_s"]}
            for mu in args.mu:
                for wd in args.wd:
                    bg = background_run(run, mu, wd, args)
                    evb, t_bg = timed_evaluate(bg, args.n_eval, ood)
                    b_id, b_ood = evb.scores[names.ID_TEST]["log_px"], evb.scores[ood]["log_px"]
                    row = {**base, "mu": mu, "wd": wd, "bg bpd ID": evb.scores[names.ID_TEST]["bpd"].mean(),
                           "ratio": auroc(likelihood_ratio(lp_id, b_id), likelihood_ratio(lp_ood, b_ood)),
                           "bg cpu s": t_bg["total_cpu_s"], "bg train wall s": t_bg["train_wall_s"]}
                    rows.append(row)
                    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}),
                          flush=True)
    summary = summarise(rows)
    print(summary)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"grid_{args.tag or 'last'}.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "fn"},
                                                                      "rows": rows}, indent=1, default=str))
    (OUT / f"grid_{args.tag or 'last'}.md").write_text(summary)
    return rows


def summarise(rows: list[dict]) -> str:
    """Markdown: per (direction, mu, weight decay) the mean +- std over seeds of the AUROCs, and timings."""
    import pandas as pd

    df = pd.DataFrame(rows)
    out = []
    for (ds, mu, wd), g in df.groupby(["dataset", "mu", "wd"], sort=False):
        out.append({"ID -> OOD": f"{data.spec(ds).title} -> {data.spec(OTHER[ds]).title}", "mu": mu, "wd": wd,
                    "seeds": len(g), "log p": f"{g['log p'].mean():.1f} ± {g['log p'].std():.1f}",
                    "ratio": f"{g['ratio'].mean():.1f} ± {g['ratio'].std():.1f}",
                    "ratio min": f"{g['ratio'].min():.1f}", "bpd ID (fg / bg)":
                        f"{g['bpd ID'].mean():.2f} / {g['bg bpd ID'].mean():.2f}",
                    "cpu s (fg / bg)": f"{g['fg cpu s'].mean():.0f} / {g['bg cpu s'].mean():.0f}",
                    "train wall s (fg / bg)": f"{g['fg train wall s'].mean():.0f} / {g['bg train wall s'].mean():.0f}"})
    return pd.DataFrame(out).to_markdown(index=False)


# -------------------------------------------------------------------------------------------- maps

def pixel_split(fg_pp: np.ndarray, bg_pp: np.ndarray, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image: the ratio summed over zero-valued pixels, over the others, and in total (nats).

    ``fg_pp``/``bg_pp`` are per-pixel ``log P(x_i | x_<i)`` ``[N, H, W]``; the ratio is their difference.
    """
    d = fg_pp - bg_pp
    zero = (x[:, 0] == 0).numpy()
    return {"zero": (d * zero).sum((1, 2)), "nonzero": (d * ~zero).sum((1, 2)), "total": d.sum((1, 2)),
            "n zero": zero.sum((1, 2)), "fg zero": (fg_pp * zero).sum((1, 2)),
            "fg nonzero": (fg_pp * ~zero).sum((1, 2)), "bg zero": (bg_pp * zero).sum((1, 2)),
            "bg nonzero": (bg_pp * ~zero).sum((1, 2))}


def maps(args) -> dict:
    """Where the ratio of cached grid models comes from: zero (background) pixels vs the object."""
    from ood_core.experiment import train_or_load

    results = {}
    for ds in args.datasets:
        ood = OTHER[ds]
        sets, _ = evaluation_sets(ds, args.n_eval, [ood], seed=0, train_split=False)
        x_id, x_ood = sets[names.ID_TEST].x, sets[ood].x
        for seed in args.seeds:
            run = base_run(args, ds).with_seed(seed)
            torch.manual_seed(seed)
            fg = train_or_load(run).model
            bg = train_or_load(background_run(run, args.mu[0], args.wd[0], args)).model
            s_id = pixel_split(log_p(fg, x_id, per_pixel=True), log_p(bg, x_id, per_pixel=True), x_id)
            s_ood = pixel_split(log_p(fg, x_ood, per_pixel=True), log_p(bg, x_ood, per_pixel=True), x_ood)
            row = {"zero pixels per image (ID / OOD)": (s_id["n zero"].mean(), s_ood["n zero"].mean())}
            for part in ("total", "zero", "nonzero", "fg zero", "fg nonzero", "bg zero", "bg nonzero"):
                row[f"{part}: mean ID / OOD (nats)"] = (s_id[part].mean(), s_ood[part].mean())
                row[f"{part}: AUROC"] = auroc(s_id[part], s_ood[part])
            # per zero pixel: the ratio is nearly a constant offset, log P_fg(0|.) - log P_bg(0|.)
            row["ratio per zero pixel (ID / OOD)"] = (s_id["zero"].sum() / s_id["n zero"].sum(),
                                                      s_ood["zero"].sum() / s_ood["n zero"].sum())
            key = f"{ds} seed {seed}"
            results[key] = row
            print(key)
            for k, v in row.items():
                print(f"  {k}: " + (" / ".join(f"{e:.2f}" for e in v) if isinstance(v, tuple) else f"{v:.1f}"))
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("curves")
    c.add_argument("--dataset", default="fashion_mnist", choices=sorted(OTHER))
    c.add_argument("--width", type=int, default=16)
    c.add_argument("--layers", type=int, default=5)
    c.add_argument("--n-mix", type=int, default=5)
    c.add_argument("--batch", type=int, default=32)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--warmup", type=int, default=50)
    c.add_argument("--schedule", default="constant", choices=["constant", "cosine"])
    c.add_argument("--n-train", type=int, default=None)
    c.add_argument("--n-eval", type=int, default=1000)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--eval-at", type=int, nargs="+", default=[2500, 5000, 10000, 20000])
    c.add_argument("--variants", nargs="+", default=["fg", "bg:0.1:0", "bg:0.2:0", "bg:0.3:0"])
    c.add_argument("--tag", default="")
    c.add_argument("--save-models", action="store_true")
    c.add_argument("--paired", action="store_true", help="every variant starts from the same initial weights")
    c.set_defaults(fn=curves)
    g = sub.add_parser("grid")
    g.add_argument("--family", default="pixelcnn", choices=["pixelcnn", "glow"])
    g.add_argument("--datasets", nargs="+", default=["fashion_mnist", "mnist"])
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    g.add_argument("--width", type=int, default=32)
    g.add_argument("--layers", type=int, default=5)
    g.add_argument("--n-mix", type=int, default=5)
    g.add_argument("--steps", type=int, default=4, help="Glow K")
    g.add_argument("--batch", type=int, default=32)
    g.add_argument("--epochs", type=int, default=1)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--n-train", type=int, default=10000)
    g.add_argument("--n-eval", type=int, default=1000)
    g.add_argument("--mu", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    g.add_argument("--wd", type=float, nargs="+", default=[0.0, 1e-4, 1e-3])
    g.add_argument("--bg-width", type=int, default=None)
    g.add_argument("--bg-layers", type=int, default=None)
    g.add_argument("--bg-steps", type=int, default=None)
    g.add_argument("--tag", default="")
    g.set_defaults(fn=grid)
    m = sub.add_parser("maps", parents=[g], add_help=False, conflict_handler="resolve")
    m.set_defaults(fn=maps)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()

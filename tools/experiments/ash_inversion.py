"""What makes ASH-S invert on our CIFAR-10 networks? One training factor at a time, measured.

Two steps, run separately because the first needs a GPU and the second the dataset mirror:

    # 1. on a GPU machine (CIFAR-10 training shards as .npz files; no Jupyter needed)
    python tools/experiments/ash_inversion.py train --train <dir>/train-00.npz <dir>/train-01.npz \
        --out <out> [--epochs 40] [--only NAME ...]
    # 2. here (mirror at ../shared/data): evaluate every network with the book's data path and detectors
    python tools/experiments/ash_inversion.py evaluate --weights <out>/weights-*.pt

Step 1 trains every variant of :data:`VARIANTS` (in parallel processes sharing the GPU) and writes
their state dicts into one file. Step 2 scores each network with the book's evaluation sets
(2,000 CIFAR-10 test images and 2,000 per OOD set, ``seed = 0``) and writes the small results
(``variants.csv``: test accuracy on all 10,000 images, per-set median ``s1/s2`` and AUROCs of energy,
``s1/s2`` alone, ASH-P/SCALE/ASH-S at p = 95, 90 and 65) to ``results/ash_inversion/`` with the
config, hardware and date; chapter 12 reads them.

The reference is the public ResNet-20 recipe (He et al. 2016 as in ``pytorch_resnet_cifar10``): SGD
with momentum 0.9 (no Nesterov), lr 0.1 divided by 10 at 50 % and 75 % of training, weight decay
1e-4 on every parameter, batch 128, random crop (padding 4) and flip, float32, no label smoothing.
It runs in a plain loop here (:func:`plain_train`). ``ours`` is the same recipe through
``ood_core.train.train`` (its SGD is Nesterov, its schedule cosine: the closest it has); every
other variant changes one factor of ``ours`` toward the recipes of the book's networks (the cpu
profile's AirbenchNet and the paper profile's ResNet-18), and the last ones take those recipes
whole. Deviation from the public recipe, the same for every variant: 20,000 training images (two
of the five CIFAR-10 training shards: what fits the GPU machine's transfer limit) and ``--epochs``
passes over them instead of 200 over 50,000.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ood_core import families, train as trainer  # noqa: E402
from ood_core.classifiers import CIFAR_MEAN, CIFAR_STD, ClassifierConfig, build_classifier  # noqa: E402
from ood_core.train import TrainConfig  # noqa: E402

RESULTS = ROOT / "results" / "ash_inversion"

#: The public ResNet-20 recipe through our trainer: the reference every variant changes one factor of.
OURS = dict(arch="resnet_cifar", width=16, depth=20, batch_size=128, lr=0.1, weight_decay=1e-4, warmup=0,
            schedule="cosine", label_smoothing=0.0, crop_pad=4, bf16=False, epochs_scale=1.0, seed=0)
#: The cpu profile's AirbenchNet recipe and the paper profile's ResNet-18 recipe (profiles.py), as changes.
CPU_RECIPE = dict(batch_size=256, lr=0.4, weight_decay=5e-4, warmup=1.0, schedule="linear", label_smoothing=0.2,
                  crop_pad=2, bf16=True)
PAPER_RECIPE = dict(batch_size=256, lr=0.2, weight_decay=5e-4, warmup=1.0, schedule="cosine", bf16=True)

#: The public recipe's own loop (:func:`plain_train`): lr steps at 50 % and 75 %, SGD without Nesterov.
PLAIN = dict(trainer="plain", schedule="steps", nesterov=False)

#: name -> (what it tests, changes to OURS). ``plain`` is the public recipe in a plain loop.
VARIANTS: dict[str, tuple[str, dict]] = {
    "plain": ("public ResNet-20 recipe, plain loop (multistep lr, SGD without Nesterov)", PLAIN),
    "ours": ("the same recipe through ood_core.train (Nesterov SGD, cosine)", {}),
    "wd5e-4": ("weight decay 5e-4 instead of 1e-4", {"weight_decay": 5e-4}),
    "ls0.2": ("label smoothing 0.2", {"label_smoothing": 0.2}),
    "bf16": ("bf16 autocast", {"bf16": True}),
    "fast_schedule": ("lr 0.4, batch 256, one epoch of warm-up, linear decay",
                      {"batch_size": 256, "lr": 0.4, "warmup": 1.0, "schedule": "linear"}),
    "pad2": ("random-crop padding 2 instead of 4", {"crop_pad": 2}),
    "short": ("a quarter of the epochs", {"epochs_scale": 0.25}),
    "cpu_recipe": ("the cpu profile's AirbenchNet recipe, whole", CPU_RECIPE),
    "cpu_recipe_ls0": ("the cpu profile's recipe without label smoothing", {**CPU_RECIPE, "label_smoothing": 0.0}),
    "cpu_recipe_wd1e-4": ("the cpu profile's recipe with weight decay 1e-4", {**CPU_RECIPE, "weight_decay": 1e-4}),
    "paper_recipe": ("the paper profile's ResNet-18 recipe, whole", PAPER_RECIPE),
    "r18_ours": ("ResNet-18 (width 64, 512 features) with the public recipe through ood_core.train",
                 {"arch": "resnet18_cifar", "width": 64}),
    "r18_paper_recipe": ("ResNet-18 with the paper profile's recipe", {"arch": "resnet18_cifar", "width": 64,
                                                                        **PAPER_RECIPE}),
    "airbench_cpu_recipe": ("AirbenchNet (the cpu profile's network) with its recipe", {"arch": "airbench",
                                                                                         "width": 32, **CPU_RECIPE}),
    "airbench_ls0": ("AirbenchNet with its recipe, label smoothing 0", {"arch": "airbench", "width": 32,
                                                                        **CPU_RECIPE, "label_smoothing": 0.0}),
    "airbench_wd1e-4": ("AirbenchNet with its recipe, weight decay 1e-4", {"arch": "airbench", "width": 32,
                                                                           **CPU_RECIPE, "weight_decay": 1e-4}),
    # second run: what separates `plain` from `ours`, seeds, training length, label smoothing on ResNet-18
    "plain_cosine": ("plain loop with a cosine schedule instead of the steps", {**PLAIN, "schedule": "cosine"}),
    "plain_nesterov": ("plain loop with Nesterov momentum", {**PLAIN, "nesterov": True}),
    "plain_seed1": ("plain, another seed", {**PLAIN, "seed": 1}),
    "ours_seed1": ("ours, another seed", {"seed": 1}),
    "ls0.2_seed1": ("label smoothing 0.2, another seed", {"label_smoothing": 0.2, "seed": 1}),
    "plain_long": ("plain, twice the epochs", {**PLAIN, "epochs_scale": 2.0}),
    "ours_long": ("ours, twice the epochs", {"epochs_scale": 2.0}),
    "r18_ls0.2": ("ResNet-18 through ood_core.train with label smoothing 0.2", {"arch": "resnet18_cifar",
                                                                               "width": 64, "label_smoothing": 0.2}),
    "airbench_cpu_recipe_seed1": ("AirbenchNet with its recipe, another seed", {"arch": "airbench", "width": 32,
                                                                               **CPU_RECIPE, "seed": 1}),
    "airbench_ls0_seed1": ("AirbenchNet, label smoothing 0, another seed", {"arch": "airbench", "width": 32,
                                                                           **CPU_RECIPE, "label_smoothing": 0.0,
                                                                           "seed": 1}),
}
#: Comparisons that change one factor: factor -> [(without, with), ...]; "seed" pairs measure the spread of
#: a recipe over training seeds, the yardstick for every other difference.
PAIRS: dict[str, list[tuple[str, str]]] = {
    "seed (same recipe)": [("plain", "plain_seed1"), ("ours", "ours_seed1"), ("ls0.2", "ls0.2_seed1"),
                           ("airbench_cpu_recipe", "airbench_cpu_recipe_seed1"), ("airbench_ls0", "airbench_ls0_seed1")],
    "label smoothing 0.2": [("ours", "ls0.2"), ("ours_seed1", "ls0.2_seed1"), ("r18_ours", "r18_ls0.2"),
                            ("cpu_recipe_ls0", "cpu_recipe"), ("airbench_ls0", "airbench_cpu_recipe"),
                            ("airbench_ls0_seed1", "airbench_cpu_recipe_seed1")],
    "our trainer instead of the plain loop": [("plain", "ours"), ("plain_seed1", "ours_seed1")],
    "weight decay 5e-4 instead of 1e-4": [("ours", "wd5e-4"), ("cpu_recipe_wd1e-4", "cpu_recipe"),
                                          ("airbench_wd1e-4", "airbench_cpu_recipe")],
    "cosine instead of step schedule": [("plain", "plain_cosine")],
    "Nesterov momentum": [("plain", "plain_nesterov")],
    "bf16 autocast": [("ours", "bf16")],
    "lr 0.4, batch 256, warm-up, linear decay": [("ours", "fast_schedule")],
    "crop padding 2 instead of 4": [("ours", "pad2")],
    "twice the epochs": [("ours", "ours_long"), ("plain", "plain_long")],
    "a quarter of the epochs": [("ours", "short")],
    "the paper profile's ResNet-18 recipe": [("ours", "paper_recipe"), ("r18_ours", "r18_paper_recipe")],
}

#: The variants of each GPU run (the second run followed the first's results).
RUNS = {1: [v for v in VARIANTS if v != "plain_cosine" and list(VARIANTS).index(v) < list(VARIANTS).index(
    "plain_cosine")], 2: list(VARIANTS)[list(VARIANTS).index("plain_cosine"):]}


def settings(name: str) -> dict:
    return {**OURS, **VARIANTS[name][1]}


def model_config(s: dict) -> ClassifierConfig:
    kw = {"depth": s["depth"]} if s["arch"] == "resnet_cifar" else {}
    return ClassifierConfig(s["arch"], width=s["width"], mean=CIFAR_MEAN, std=CIFAR_STD, **kw)


def load_shards(paths) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for p in paths:
        with np.load(p) as z:
            xs.append(z["x"])
            ys.append(z["y"])
    x = torch.from_numpy(np.concatenate(xs)).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(np.concatenate(ys)).long()


def plain_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, device, seed: int = 0,
                schedule: str = "steps", nesterov: bool = False) -> None:
    """The public recipe in a plain loop: SGD(0.9), lr 0.1 (/10 at 50 % and 75 %), wd 1e-4, batch 128, fp32.

    ``schedule="cosine"`` anneals to zero instead; ``nesterov`` switches on Nesterov momentum.
    """
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=nesterov)
    steps_per_epoch = len(x) // 128
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    else:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [epochs * steps_per_epoch // 2,
                                                           epochs * steps_per_epoch * 3 // 4])
    gen = torch.Generator(device=device).manual_seed(seed)
    xg, yg = x.to(device), y.to(device)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), device=device, generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * 128:(i + 1) * 128]
            xb = families.random_crop_flip(xg[idx], gen, pad=4, flip=True)
            loss = nn.functional.cross_entropy(model(xb.float() / 255.0), yg[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def train_variant(name: str, x: torch.Tensor, y: torch.Tensor, epochs: int, device: str) -> dict:
    s = settings(name)
    torch.manual_seed(s["seed"])
    model = build_classifier(model_config(s)).to(device)
    t0 = time.time()
    e = max(1, round(epochs * s["epochs_scale"]))
    if s.get("trainer") == "plain":
        plain_train(model, x, y, e, device, seed=s["seed"], schedule=s["schedule"], nesterov=s["nesterov"])
    else:
        steps_per_epoch = len(x) // s["batch_size"]
        config = TrainConfig(epochs=e, batch_size=s["batch_size"], lr=s["lr"], optimizer="sgd",
                             weight_decay=s["weight_decay"], warmup_steps=round(s["warmup"] * steps_per_epoch),
                             schedule=s["schedule"], seed=s["seed"], checkpoint_every=10 ** 9, eval_every=0,
                             amp_bf16=s["bf16"], channels_last=True)
        ls, pad = s["label_smoothing"], s["crop_pad"]

        def loss(m, batch):
            return families.cross_entropy_loss(m, batch, ls)

        def init(m, batch):
            m.initialize_from_data(x[:families.N_INIT_IMAGES].to(device).float() / 255.0)

        with tempfile.TemporaryDirectory() as work:
            trainer.train(model, loss, TensorDataset(x, y), config, work, init_fn=init,
                          batch_transform=lambda b, g: (families.random_crop_flip(b[0], g, pad=pad, flip=True), b[1]),
                          device=device, progress=False)
    return {"name": name, "settings": s, "epochs": e, "wall_s": time.time() - t0,
            "state_dict": {k: v.detach().cpu().contiguous(memory_format=torch.contiguous_format)
                           for k, v in model.state_dict().items()}}


def _worker(name, shards, epochs, out):
    torch.set_num_threads(1)
    x, y = load_shards(shards)
    result = train_variant(name, x, y, epochs, "cuda" if torch.cuda.is_available() else "cpu")
    torch.save(result, Path(out) / f"{name}.pt")
    print(f"{name}: {result['wall_s']:.0f} s", flush=True)


def main_train(args) -> None:
    import multiprocessing as mp

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(VARIANTS)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(n, args.train, args.epochs, out)) for n in names]
    t0 = time.time()
    for p in procs:
        p.start()
    for p in procs:  # a run still going at the deadline is stopped and left out (named below)
        p.join(max(1.0, args.deadline - (time.time() - t0)))
        if p.is_alive():
            p.terminate()
    results = {}
    for n in names:
        f = out / f"{n}.pt"
        if f.is_file():
            results[n] = torch.load(f, weights_only=True)
            f.unlink()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor()
    meta = {"hardware": gpu, "torch": str(torch.__version__), "date": datetime.date.today().isoformat(),
            "epochs": args.epochs, "wall_s": time.time() - t0, "shards": [Path(s).name for s in args.train],
            "weights": "stored in float16 for the transfer (evaluation uses these rounded weights)"}
    # float16 weights in chunks of at most ~15 MB (what the GPU machine can send back per file)
    chunk, size, index = {}, 0, 0
    for n, r in sorted(results.items()):
        r["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in r["state_dict"].items()}
        nbytes = sum(v.numel() * v.element_size() for v in r["state_dict"].values())
        if chunk and size + nbytes > 15e6:
            torch.save({"meta": meta, "runs": chunk}, out / f"weights-{index:02d}.pt")
            chunk, size, index = {}, 0, index + 1
        if nbytes > 15e6:  # one network split by keys into pieces of at most ~15 MB
            piece, piece_size = {}, 0
            for k, v in r["state_dict"].items():
                if piece and piece_size + v.numel() * v.element_size() > 15e6:
                    torch.save({"meta": meta, "runs": {n: {**r, "state_dict": piece}}}, out / f"weights-{index:02d}.pt")
                    piece, piece_size, index = {}, 0, index + 1
                piece[k] = v
                piece_size += v.numel() * v.element_size()
            torch.save({"meta": meta, "runs": {n: {**r, "state_dict": piece}}}, out / f"weights-{index:02d}.pt")
            index += 1
            continue
        chunk[n] = r
        size += nbytes
    if chunk:
        torch.save({"meta": meta, "runs": chunk}, out / f"weights-{index:02d}.pt")
    print(json.dumps(meta), "trained:", sorted(results), "missing:", sorted(set(names) - set(results)), flush=True)


def write_config() -> None:
    """``results/ash_inversion/config.json``: every variant's settings, the reference, the pairs, the evaluation."""
    from ood_core.profiles import ASH_OOD

    config = {"variants": {n: {"what": w, "settings": settings(n)} for n, (w, _) in VARIANTS.items()},
              "reference": OURS, "pairs": PAIRS,
              "evaluation": {"n_eval": 2000, "n_fit": 5000, "seed": 0, "ood": list(ASH_OOD["cifar10"])}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "config.json").write_text(json.dumps(config, indent=1))


def main_evaluate(args) -> None:
    import pandas as pd

    from ood_core import classifier_study as cs, data, experiment, names, scores
    from ood_core.profiles import ASH_OOD

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    blob = {"runs": {}}
    for f in args.weights:  # chunks; a network split over two chunks is joined by its keys
        # the first run stored torch.__version__ (a str subclass) as it is: allow exactly that class
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            part = torch.load(f, weights_only=True)
        blob["meta"] = part["meta"]
        for n, r in part["runs"].items():
            if n in blob["runs"]:
                blob["runs"][n]["state_dict"].update(r["state_dict"])
            else:
                blob["runs"][n] = r
    sets, _ = experiment.evaluation_sets("cifar10", 2000, list(ASH_OOD["cifar10"]), seed=0, train_split=False)
    id_set = sets.pop(names.ID_TEST)
    fit = data.load("cifar10", "train").subset(5000, 0)
    test = data.load("cifar10", "test")
    rows, done = [], set()
    if args.append and (RESULTS / "variants.csv").is_file():  # keep the variants evaluated before
        previous = pd.read_csv(RESULTS / "variants.csv")
        rows = previous.to_dict("records")
        done = set(previous["variant"])
    for name, run in blob["runs"].items():
        if name in done:
            continue
        model = build_classifier(model_config(run["settings"]))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in run["state_dict"].items()})
        model.eval()
        _, logits = scores.compute_logits_and_features(model, test.x, batch_size=500)
        acc = 100.0 * (logits.argmax(1) == test.y).float().mean().item()
        ev = cs.evaluate_model(model, fit, id_set, sets)
        for p in (95, 90, 65):
            table = cs.ash_s_anatomy(ev.suite, p)
            for _, r in table.iterrows():
                rows.append({"variant": name, "what": VARIANTS[name][0], "percentile": p,
                             "test accuracy (%)": acc, **r.to_dict()})
        print(f"{name}: accuracy {acc:.2f} %", flush=True)
    long = pd.DataFrame(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    long.to_csv(RESULTS / "variants.csv", index=False)
    write_config()
    meta = {**blob["meta"], "evaluated": datetime.date.today().isoformat(),
            "evaluated_on": f"{platform.machine()} CPU, torch {torch.__version__}"}
    runs_meta = []
    if args.append and (RESULTS / "meta.json").is_file():
        before = json.loads((RESULTS / "meta.json").read_text())
        done_before = sorted(done)
        runs_meta = before.get("runs") or [{k: before[k] for k in ("hardware", "torch", "date", "wall_s")}
                                           | {"variants": done_before}]
    meta["runs"] = [*runs_meta, {k: blob["meta"][k] for k in ("hardware", "torch", "date", "wall_s")}
                    | {"variants": sorted(blob["runs"])}]
    (RESULTS / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {RESULTS}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--train", nargs="+", required=True, help="CIFAR-10 training shards (.npz with x, y)")
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--only", nargs="*")
    t.add_argument("--deadline", type=float, default=480.0, help="seconds; runs not finished by then are left out")
    e = sub.add_parser("evaluate")
    e.add_argument("--weights", nargs="+", required=True, help="the weights-*.pt chunks of step 1")
    e.add_argument("--append", action="store_true", help="add to results/ash_inversion, keeping what is there")
    args = parser.parse_args(argv)
    (main_train if args.cmd == "train" else main_evaluate)(args)


if __name__ == "__main__":
    main()

"""A CIFAR-10 classifier that trains to ~90 % in minutes on two CPU cores: what was measured.

Record of the experiments behind the cpu profile's CIFAR-10 network (``fast_classifier.md`` holds
the numbers). Three sub-commands, run from the repository root with ``PYTHONPATH=$PWD``:

``scratch``
    A self-contained training loop over knobs the library does not expose (max vs average pooling,
    GELU, logit scale, test-time flip, weight EMA, crop padding), with the same data, the same
    augmentation (:func:`ood_core.families.random_crop_flip`) and the same patch whitening as
    :class:`ood_core.classifiers.AirbenchNet`. Prints one JSON line (also appended to ``--log``)
    with the training wall and CPU time and the accuracy on the 10,000 test images.
    ``--bench K`` measures throughput instead: K bursts of 5 training steps, best img/s by wall
    clock and by process CPU time.
``library``
    Trains a :class:`ood_core.experiment.ClassifierRun` through :func:`ood_core.experiment.train_or_load`
    (cache under ``$OOD_ARTIFACTS``; use a scratch folder) and reports the full test accuracy.
    ``--recipe cpu`` is the cpu profile's CIFAR-10 run; ``--recipe resnet18`` the ResNet-18 (width 16)
    it replaced.
``ood``
    The ASH sanity check on a ``library`` recipe: penultimate dimension and sign, and the mean AUROC of
    energy, ASH-P@90, ASH-S@95 and KNN over Textures, MNIST and TinyImageNet (CIFAR-10 classes removed).

Throughput on a shared machine: wall-clock rates are inflated by other jobs, so ``--bench`` reports
the best of several short bursts and the rate per second of *process CPU time* with one thread
(close to the rate of one quiet core). The budget is stated as images seen / best rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from ood_core import data
from ood_core.classifiers import CIFAR_MEAN, CIFAR_STD, AirbenchNet
from ood_core.families import random_crop_flip

# ----------------------------------------------------------------------------- scratch loop


class _Group(nn.Module):
    """AirbenchNet's conv group with a choice of activation and of trainable BN scales."""

    def __init__(self, cin: int, cout: int, act: type[nn.Module], dirac: bool, bn_weight: bool) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.act = act()
        if dirac:
            for conv in (self.c1, self.c2):
                w = conv.weight.data
                nn.init.dirac_(w[: min(w.shape[0], w.shape[1])])
        for bn in (self.b1, self.b2):
            bn.weight.requires_grad = bn_weight

    def forward(self, x):
        x = self.act(self.b1(F.max_pool2d(self.c1(x), 2)))
        return self.act(self.b2(self.c2(x)))


class _ScratchNet(nn.Module):
    """Whitening (or a 3x3 conv-BN stem), three groups, max or average pooling, linear head."""

    def __init__(self, widths, act="relu", pool="max", whiten=True, dirac=True, bn_weight=True, scale=1.0):
        super().__init__()
        act_cls = {"relu": nn.ReLU, "gelu": nn.GELU}[act]
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1))
        self.whiten, self.pool, self.act = whiten, pool, act_cls()
        if whiten:  # the library's whitening layer, borrowed so both fit the same filters
            self.white = AirbenchNet(width=1)
            cin = 24
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
                                      nn.BatchNorm2d(widths[0]), act_cls())
            cin = widths[0]
        self.g1 = _Group(cin, widths[0], act_cls, dirac, bn_weight)
        self.g2 = _Group(widths[0], widths[1], act_cls, dirac, bn_weight)
        self.g3 = _Group(widths[1], widths[2], act_cls, dirac, bn_weight)
        self.fc = nn.Linear(widths[2], 10)
        self.fc.weight.data *= scale

    def features(self, x):
        if self.whiten:
            h = self.act(F.conv2d((x - self.mean) / self.std, self.white.whiten_weight, self.white.whiten_bias))
        else:
            h = self.stem((x - self.mean) / self.std)
        h = self.g3(self.g2(self.g1(h)))
        return h.amax((2, 3)) if self.pool == "max" else h.mean((2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


def _scratch_model(a):
    if a.arch == "air":
        net = _ScratchNet([int(v) for v in a.widths.split(",")], a.act, a.pool, bool(a.whiten), bool(a.dirac),
                          bool(a.bnw), a.scale)
        return net, (lambda x: net.white.initialize_from_data(x)) if a.whiten else None
    from ood_core.classifiers import ClassifierConfig, build_classifier

    net = build_classifier(ClassifierConfig(a.arch, width=int(a.widths.split(",")[0])))
    return net, net.initialize_from_data


def scratch(a) -> dict:
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    train_set = data.load("cifar10", "train").subset(a.n, 0)
    test = data.load("cifar10", "test")
    net, init = _scratch_model(a)
    if init is not None:
        init(train_set.x[:5000].float() / 255)
    net = net.to(memory_format=torch.channels_last)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=a.lr, momentum=a.mom, nesterov=True, weight_decay=a.wd)
    generator = torch.Generator().manual_seed(a.seed)

    def step(x, y):
        x = random_crop_flip(x, generator, pad=a.pad) if a.pad else x
        x = x.float().div_(255).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(a.bf16)):
            loss = F.cross_entropy(net(x).float(), y, label_smoothing=a.ls)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    if a.bench:
        best_wall = best_cpu = 0.0
        for _ in range(a.bench):
            t, c = time.perf_counter(), time.process_time()
            for _ in range(5):
                idx = torch.randint(0, len(train_set), (a.bs,), generator=generator)
                step(train_set.x[idx], train_set.y[idx])
            best_wall = max(best_wall, 5 * a.bs / (time.perf_counter() - t))
            best_cpu = max(best_cpu, 5 * a.bs / (time.process_time() - c))
        return dict(mode="bench", arch=a.arch, widths=a.widths, bs=a.bs, bf16=a.bf16, threads=a.threads,
                    tag=a.tag, best_img_s=round(best_wall), best_img_per_cpu_s=round(best_cpu))

    steps_per_epoch = len(train_set) // a.bs
    total = int(round(a.epochs * steps_per_epoch))
    warm = int(a.warm * total)

    def lr_at(s):
        if s < warm:
            return a.lr * (s + 1) / warm
        return a.lr * (a.final + (1 - a.final) * (1 - (s - warm) / max(1, total - warm)))

    ema = {k: v.detach().clone().float() for k, v in net.state_dict().items()} if a.ema else None
    s = 0
    t0, c0 = time.time(), time.process_time()
    net.train()
    while s < total:
        perm = torch.randperm(len(train_set), generator=generator)
        for b in range(steps_per_epoch):
            if s >= total:
                break
            idx = perm[b * a.bs:(b + 1) * a.bs]
            for group in opt.param_groups:
                group["lr"] = lr_at(s)
            loss = step(train_set.x[idx], train_set.y[idx])
            s += 1
            if ema is not None:
                with torch.no_grad():
                    for k, v in net.state_dict().items():
                        if v.dtype.is_floating_point:
                            ema[k].lerp_(v, 1 - a.ema)
                        else:
                            ema[k].copy_(v)
            if s % 50 == 0:
                print(f"step {s}/{total} loss {loss.item():.3f} {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    train_s, train_cpu_s = time.time() - t0, time.process_time() - c0

    def accuracy(tta=False):
        net.eval()
        correct = 0
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(a.bf16)):
            for i in range(0, len(test), 1000):
                x = test.x[i:i + 1000].float() / 255
                logits = net(x).float()
                if tta:
                    logits = logits + net(x.flip(3)).float()
                correct += (logits.argmax(1) == test.y[i:i + 1000]).sum().item()
        net.train()
        return 100 * correct / len(test)

    out = dict(mode="scratch", **{k: v for k, v in vars(a).items() if k not in ("func", "log", "bench")},
               train_s=round(train_s, 1), train_cpu_s=round(train_cpu_s, 1), images=total * a.bs,
               img_per_cpu_s=round(total * a.bs / train_cpu_s), acc=accuracy(), acc_tta=accuracy(True))
    if ema is not None:
        net.load_state_dict(ema)
        out["acc_ema"], out["acc_ema_tta"] = accuracy(), accuracy(True)
    return out


# ----------------------------------------------------------------------------- library runs


def recipe(name: str):
    """``"cpu"``: the cpu profile's CIFAR-10 run; ``"resnet18"``: the ResNet-18 (width 16) it replaced."""
    from ood_core import profiles
    from ood_core.train import TrainConfig

    if name == "cpu":
        return profiles.get_profile("cpu").classifier.runs["cifar10"]
    if name == "resnet18":
        return profiles.classifier("cifar10", profiles.Size(dict(arch="resnet18_cifar", width=16), TrainConfig(
            epochs=4, batch_size=128, lr=0.1, warmup_steps=100, eval_every=0, checkpoint_every=200, **profiles.CLS_OPT)))
    raise ValueError(f"unknown recipe {name!r}; choose cpu or resnet18")


def library(a) -> dict:
    from ood_core.experiment import train_or_load
    from ood_core.families import accuracy

    torch.set_num_threads(a.threads)
    run = recipe(a.recipe)
    if a.epochs:
        run = run.replace(train=dataclasses.replace(run.train, epochs=a.epochs))
    t0, c0 = time.time(), time.process_time()
    trained = train_or_load(run, device="cpu", progress=False)
    test = data.load("cifar10", "test")
    with torch.no_grad():
        acc = accuracy(trained.model, test.x, test.y)
    return dict(mode="library", recipe=a.recipe, label=run.label, key=run.key(), threads=a.threads,
                call_wall_s=round(time.time() - t0, 1), call_cpu_s=round(time.process_time() - c0, 1),
                train_wall_s=round(trained.meta.get("wall_time_s", float("nan")), 1),
                steps=trained.meta.get("steps"), images=trained.meta.get("steps", 0) * run.train.batch_size,
                test_accuracy=acc, feature_dim=trained.model.feature_dim)


def ood(a) -> dict:
    from ood_core import classifier_study

    torch.set_num_threads(a.threads)
    run = recipe(a.recipe)
    sets = ["textures", "mnist", "tiny_imagenet:cifar10_disjoint"]
    evaluation = classifier_study.evaluate(run, 2000, 10000, sets)
    table = evaluation.benchmark(["energy", "ash_p@90", "ash_s@95", "knn"])
    feats = [evaluation.fit_feats["features"], evaluation.id_feats["features"],
             *(f["features"] for f in evaluation.ood_feats.values())]
    return dict(mode="ood", recipe=a.recipe, feature_dim=int(feats[0].shape[1]),
                min_feature=float(min(f.min() for f in feats)),
                zero_fraction_id_test=float((evaluation.id_feats["features"] == 0).mean()),
                accuracy=evaluation.accuracy, missing=list(evaluation.missing),
                table=json.loads(table.reset_index().to_json(orient="records")))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", default=None, help="append the JSON result to this file")
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("scratch", help="exploration loop (see the module docstring)")
    p.add_argument("--arch", default="air", help="air (the scratch net) or a library arch, e.g. resnet18_cifar")
    p.add_argument("--widths", default="32,128,128")
    p.add_argument("--epochs", type=float, default=8)
    p.add_argument("--bs", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--mom", type=float, default=0.9)
    p.add_argument("--warm", type=float, default=0.2, help="fraction of the steps spent warming up")
    p.add_argument("--final", type=float, default=0.0, help="final learning rate, as a fraction of lr")
    p.add_argument("--ls", type=float, default=0.0, help="label smoothing")
    p.add_argument("--pad", type=int, default=4, help="random-crop padding (0: no augmentation)")
    p.add_argument("--whiten", type=int, default=1)
    p.add_argument("--dirac", type=int, default=1)
    p.add_argument("--pool", default="max", choices=("max", "avg"))
    p.add_argument("--act", default="relu", choices=("relu", "gelu"))
    p.add_argument("--scale", type=float, default=1.0, help="initial scale of the head's weights")
    p.add_argument("--bnw", type=int, default=1, help="train the BatchNorm scales")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights per step (0: none)")
    p.add_argument("--bf16", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n", type=int, default=None, help="training subset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    p.add_argument("--bench", type=int, default=0, help="K bursts of 5 steps: report the best img/s and stop")
    p.set_defaults(func=scratch)
    for name, func in (("library", library), ("ood", ood)):
        p = sub.add_parser(name)
        p.add_argument("--recipe", default="cpu")
        p.add_argument("--threads", type=int, default=2)
        if name == "library":
            p.add_argument("--epochs", type=int, default=0, help="override the recipe's epochs")
        p.set_defaults(func=func)
    a = parser.parse_args(argv)
    result = a.func(a)
    print(json.dumps(result), flush=True)
    if a.log:
        with open(a.log, "a") as handle:
            handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

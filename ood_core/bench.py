"""Throughput benchmarks (``make bench`` / ``python -m ood_core bench``): figures, not assertions.

* **Training, ours beside a plain reference of the same size.** For the profile's Glow runs
  (affine and additive coupling) and its CIFAR-10 classifier, one training step -- forward,
  backward and the optimiser step, on dequantised (Glow) or scaled (classifier) random uint8
  batches of the real shape and batch size -- of the project's model and of the textbook model in
  :mod:`ood_core.bench_reference`, timed in turns in one process (``A B B A A B ...``), several
  rounds. Reported: the median images/s of each and the median of the per-round ratios
  ours / reference, with their range. Other work on the machine slows both sides of a round
  alike, so the ratio stays meaningful where the absolute figures do not.
* **Evaluation.** Glow bits/dim scoring (:func:`ood_core.likelihood.flow_log_likelihood`) in
  images/s.
* **Evaluation layout.** The networks' penultimate features (``features``, batch 64) of the
  DenseNet-BC-100, ResNet-56 (width 16) and AirbenchNet architectures (random weights: the time does
  not depend on them) on contiguous and on channels-last CPU batches, in turns: the layout
  :func:`ood_core.scores.compute_logits_and_features` and :func:`ood_core.scores.odin` use on a CPU.
* **ASH.** The classifier's forward time and the overhead of ASH on its penultimate features, as
  a fraction of the forward time (the ASH paper's claim: negligible).

On a CPU the benchmark runs with ``threads`` torch threads (2 by default, the book's machine).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ood_core import data, families, likelihood
from ood_core.bench_reference import ReferenceGlow, ReferenceResNet18, reference_glow_loss
from ood_core.classifiers import CIFAR_MEAN, CIFAR_STD
from ood_core.flows import Glow, initialize_actnorm

#: torch threads of a CPU benchmark (the book's CPU profile is sized for 2 cores).
THREADS = 2
#: Rounds of the interleaved comparison (each times both models).
ROUNDS = 7
#: Learning rate of the benchmark steps (small, so that hundreds of steps on random data stay finite).
BENCH_LR = 1e-4


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn: Callable[[], None], batch: int, seconds: float, device: torch.device, warm_up: bool = True,
          min_calls: int = 1) -> float:
    """Images per second of ``fn`` (one batch per call), timed for at least ``seconds`` and ``min_calls`` calls."""
    if warm_up:
        fn()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < min_calls:
        fn()
        n += 1
    _sync(device)
    return n * batch / (time.perf_counter() - t0)


@dataclass(frozen=True)
class Comparison:
    """Images/s of two training steps measured in turns; one entry per round."""

    ours: tuple[float, ...]
    reference: tuple[float, ...]

    @property
    def ratios(self) -> tuple[float, ...]:
        return tuple(a / b for a, b in zip(self.ours, self.reference))

    @property
    def ratio(self) -> float:
        """Median over rounds of ours / reference (rounds pair measurements taken moments apart)."""
        return statistics.median(self.ratios)

    def describe(self, ours: str = "train ours", reference: str = "reference") -> str:
        lo, hi = min(self.ratios), max(self.ratios)
        return (f"{ours} {statistics.median(self.ours):,.0f} img/s, {reference} "
                f"{statistics.median(self.reference):,.0f} img/s: ratio {self.ratio:.2f} "
                f"(rounds {lo:.2f}-{hi:.2f}, n={len(self.ratios)})")


def compare(ours: Callable[[], None], reference: Callable[[], None], batch: int, device: torch.device,
            seconds: float, rounds: int = ROUNDS) -> Comparison:
    """Time ``ours`` and ``reference`` in turns (``A B``, then ``B A``, ...) for ``rounds`` rounds.

    ``seconds`` is each side's total timing budget; every timing covers at least two steps. The
    order alternates so that a load that rises or falls during a round favours neither side.
    """
    ours()
    reference()
    per_round = seconds / rounds
    a, b = [], []
    for index in range(rounds):
        order = ((ours, a), (reference, b)) if index % 2 == 0 else ((reference, b), (ours, a))
        for fn, out in order:
            out.append(_rate(fn, batch, per_round, device, warm_up=False, min_calls=2))
    return Comparison(tuple(a), tuple(b))


def _glow_steps(run, device: torch.device) -> tuple[Callable[[], None], Callable[[], None], Glow]:
    """Training steps of the project's Glow and of :class:`ReferenceGlow` for ``run``'s shape and batch."""
    config = run.model_config
    batch = run.train.batch_size
    x = torch.randint(0, 256, (batch, *config.image_shape), dtype=torch.uint8, device=device)
    g = torch.Generator(device=device).manual_seed(0)

    torch.manual_seed(0)
    ours = Glow(config).to(device)
    initialize_actnorm(ours, likelihood.preprocess(x, generator=g))
    ours_opt = torch.optim.Adam(ours.parameters(), lr=BENCH_LR)

    torch.manual_seed(0)
    ref = ReferenceGlow(config.image_shape, config.levels, config.steps, config.width,
                        affine=config.coupling == "affine").to(device)
    with torch.no_grad():
        ref(likelihood.preprocess(x, generator=g))  # ActNorm's data-dependent init
    ref_opt = torch.optim.Adam(ref.parameters(), lr=BENCH_LR)

    def ours_step() -> None:
        loss = families.glow_loss(ours, (likelihood.preprocess(x, generator=g),))
        ours_opt.zero_grad(set_to_none=True)
        loss.backward()
        ours_opt.step()

    def ref_step() -> None:
        loss = reference_glow_loss(ref, likelihood.preprocess(x, generator=g))
        ref_opt.zero_grad(set_to_none=True)
        loss.backward()
        ref_opt.step()

    return ours_step, ref_step, ours


def glow_comparison(run, device: torch.device, seconds: float, rounds: int = ROUNDS) -> tuple[Comparison, float]:
    """(training comparison, eval img/s of ours) for ``run``'s architecture at its batch size."""
    ours_step, ref_step, model = _glow_steps(run, device)
    comparison = compare(ours_step, ref_step, run.train.batch_size, device, seconds, rounds)
    model.eval()
    x = torch.randint(0, 256, (run.train.batch_size, *run.model_config.image_shape), dtype=torch.uint8,
                      device=device)
    g = torch.Generator(device=device).manual_seed(0)

    def evaluate() -> None:
        with torch.no_grad():
            likelihood.flow_log_likelihood(model, x, generator=g)

    return comparison, _rate(evaluate, run.train.batch_size, seconds / 2, device)


def classifier_comparison(run, device: torch.device, seconds: float, rounds: int = ROUNDS) -> Comparison:
    """Training steps of the profile's CIFAR ResNet-18 and of :class:`ReferenceResNet18` of the same width.

    Both use the run's optimiser settings (SGD with Nesterov momentum and weight decay in the
    CPU profile); the reference normalises its input as a torchvision transform would.
    """
    from ood_core.classifiers import build_classifier

    batch = run.train.batch_size
    shape = data.spec(run.dataset).shape
    x = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    mean = torch.tensor(CIFAR_MEAN, device=device).view(1, -1, 1, 1)
    std = torch.tensor(CIFAR_STD, device=device).view(1, -1, 1, 1)

    def optimiser(model: torch.nn.Module) -> torch.optim.Optimizer:
        t = run.train
        if t.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=0.9, nesterov=True,
                                   weight_decay=t.weight_decay)
        return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    torch.manual_seed(0)
    ours = build_classifier(run.model).to(device).train()
    torch.manual_seed(0)
    ref = ReferenceResNet18(num_classes=10, in_channels=shape[0], width=run.model.width).to(device).train()
    ours_opt, ref_opt = optimiser(ours), optimiser(ref)

    def ours_step() -> None:
        loss = families.cross_entropy_loss(ours, (x, y))
        ours_opt.zero_grad(set_to_none=True)
        loss.backward()
        ours_opt.step()

    def ref_step() -> None:
        loss = torch.nn.functional.cross_entropy(ref((x.float() / 255.0 - mean) / std), y)
        ref_opt.zero_grad(set_to_none=True)
        loss.backward()
        ref_opt.step()

    return compare(ours_step, ref_step, batch, device, seconds, rounds)


def ash_overhead(device: torch.device, seconds: float, width: int = 16, batch: int = 256) -> tuple[float, float]:
    """(classifier forward ms per batch, ASH-S time as a fraction of it) for a CIFAR ResNet-18."""
    from ood_core import ash
    from ood_core.classifiers import ClassifierConfig, build_classifier

    model = build_classifier(ClassifierConfig(arch="resnet18_cifar", width=width)).to(device).eval()
    x = torch.rand(batch, 3, 32, 32, device=device)
    with torch.no_grad():
        f = model.features(x)
        fwd = _rate(lambda: model(x), batch, seconds, device)
        shp = _rate(lambda: ash.ash_s(f, 90), batch, seconds, device)
    return 1000 * batch / fwd, fwd / shp


LAYOUT_ARCHS = (("densenet_bc100", {}), ("resnet_cifar", {"depth": 56, "width": 16}), ("airbench", {"width": 32}))


def layout_comparison(arch: str, device: torch.device, seconds: float, rounds: int = ROUNDS,
                      batch: int = 64, **model: int) -> Comparison:
    """Penultimate-feature extraction of ``arch`` on channels-last vs contiguous batches (random weights)."""
    from ood_core.classifiers import ClassifierConfig, build_classifier

    torch.manual_seed(0)
    net = build_classifier(ClassifierConfig(arch, **model)).to(device).eval()
    x = torch.rand(batch, 3, 32, 32, device=device)
    x_last = x.contiguous(memory_format=torch.channels_last)

    def features(images: torch.Tensor) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad():
                net.features(images)
        return step

    return compare(features(x_last), features(x), batch, device, seconds, rounds)


def run(device: str | None = None, profile: str = "cpu", seconds: float = 10.0, threads: int | None = THREADS,
        rounds: int = ROUNDS) -> Iterator[str]:
    """Yield the report line by line (see the module docstring); ``seconds`` per side of each comparison."""
    from ood_core.profiles import get_profile

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    previous_threads = torch.get_num_threads()
    if dev.type == "cpu" and threads:
        torch.set_num_threads(threads)
    try:
        P = get_profile(profile)
        where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} threads"
        yield f"device {dev} ({where}), profile {profile}"
        yield ("training = forward + backward + optimiser step on random uint8 batches of the real shape; "
               "ours vs a plain reference of the same size (ood_core.bench_reference)")
        yield (f"measured in turns in one process, {rounds} rounds: other work on the machine slows both sides "
               "alike, so read the ratios (ours / reference, >1 = ours faster); absolute img/s move with the load")
        for ds, r in P.glow.runs.items():
            for coupling in ("affine", "additive"):
                rr = r.with_model(coupling=coupling)
                comparison, ev = glow_comparison(rr, dev, seconds, rounds)
                yield (f"{rr.label} ({'x'.join(map(str, data.spec(ds).shape))}, batch {r.train.batch_size}, Adam): "
                       f"{comparison.describe()}; eval {ev:,.0f} img/s")
        try:
            crun = P.classifier.runs["cifar10"]
            comparison = classifier_comparison(crun, dev, seconds, rounds)
            yield (f"ResNet-18 (w{crun.model.width}) on CIFAR-10 (batch {crun.train.batch_size}, "
                   f"{crun.train.optimizer}): {comparison.describe()}")
            if dev.type == "cpu":
                for arch, model in LAYOUT_ARCHS:
                    comparison = layout_comparison(arch, dev, seconds, rounds, **model)
                    yield (f"{arch} features, batch 64: "
                           f"{comparison.describe('channels-last', 'contiguous')} (>1 = channels-last faster)")
            ms, frac = ash_overhead(dev, seconds)
            yield f"ResNet-18 (w16) forward {ms:.1f} ms / batch 256; ASH-S on its features costs {frac:.2%} of that"
        except ImportError as e:  # classifiers not available in this build
            yield f"classifier benchmarks: skipped ({e})"
    finally:
        torch.set_num_threads(previous_threads)

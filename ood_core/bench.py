"""Throughput benchmarks (``make bench`` / ``python -m ood_core bench``): figures, not assertions.

* Glow training (forward + backward + Adam step) and evaluation (bits/dim) in images per second,
  for the profile's FashionMNIST and CIFAR-10 runs, on random uint8 images of the right shape.
* The classifier's forward time and the overhead of ASH on its penultimate features, as a
  fraction of the forward time (the ASH paper's claim: negligible).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch

from ood_core import data, likelihood
from ood_core.flows import Glow, initialize_actnorm


def _rate(fn: Callable[[], None], batch: int, seconds: float, device: torch.device) -> float:
    fn()  # warm-up (and ActNorm init)
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n == 0:
        fn()
        n += 1
    _sync(device)
    return n * batch / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def glow_throughput(run, device: torch.device, seconds: float) -> tuple[float, float]:
    """(train img/s, eval img/s) of ``run``'s architecture at its batch size."""
    model = Glow(run.model_config).to(device)
    batch = run.train.batch_size
    x = torch.randint(0, 256, (batch, *run.model_config.image_shape), dtype=torch.uint8, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    initialize_actnorm(model, likelihood.preprocess(x, generator=g))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        log_pz, logdet = model.log_prob_parts(likelihood.preprocess(x, generator=g))
        loss = -(log_pz + logdet).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_rate = _rate(step, batch, seconds, device)
    model.eval()

    def evaluate():
        with torch.no_grad():
            likelihood.flow_log_likelihood(model, x, generator=g)

    return train_rate, _rate(evaluate, batch, seconds, device)


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


def run(device: str | None = None, profile: str = "cpu", seconds: float = 10.0) -> Iterator[str]:
    from ood_core.profiles import get_profile

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    P = get_profile(profile)
    yield f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'{torch.get_num_threads()} threads'}), profile {profile}"
    for ds, r in P.glow.runs.items():
        for coupling in ("affine", "additive"):
            rr = r.with_model(coupling=coupling)
            tr, ev = glow_throughput(rr, dev, seconds)
            yield (f"{rr.label} ({'x'.join(map(str, data.spec(ds).shape))}, batch {r.train.batch_size}): "
                   f"train {tr:,.0f} img/s, eval {ev:,.0f} img/s")
    try:
        ms, frac = ash_overhead(dev, seconds)
        yield f"ResNet-18 (w16) forward {ms:.1f} ms / batch 256; ASH-S on its features costs {frac:.2%} of that"
    except ImportError as e:  # classifiers not available in this build
        yield f"ASH overhead: skipped ({e})"

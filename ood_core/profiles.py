"""Every scale knob of the book, in one place.

Three profiles, selected by one notebook parameter (``profile``):

* ``smoke`` -- seconds per notebook; the test suite and CI run every notebook with it. Its numbers
  mean nothing; it only proves the code path works end to end on real data.
* ``cpu`` (default) -- the whole book on a 2-core CPU in well under an hour, still showing each
  paper's effect on real data with small models and short training.
* ``paper`` -- paper-scale models (Glow L=3, K=32, width 512; CIFAR ResNet-18 / DenseNet-BC-100),
  meant for a GPU. Its small results (per-example scores, curves, metrics, config, hardware) are
  committed under ``results/`` and shown by the default book beside the CPU runs.

Notebooks read settings from the profile object and never branch on its name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DataSettings:
    """How much data the data chapter and the evaluations look at."""

    n_stats: int | None  # images per split for pixel statistics (None = all)
    n_grid: int  # images per dataset in the sample grids
    n_eval: int | None  # test images per ID/OOD set scored by every detector (None = all)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    data: DataSettings
    extra: dict = field(default_factory=dict)  # experiment settings added by later chapters

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="seconds per notebook; proves the code path, numbers are meaningless",
        data=DataSettings(n_stats=500, n_grid=16, n_eval=200),
    ),
    "cpu": Profile(
        name="cpu",
        description="default: the whole book on 2 CPU cores in well under an hour, small models on real data",
        data=DataSettings(n_stats=None, n_grid=32, n_eval=2000),
    ),
    "paper": Profile(
        name="paper",
        description="paper-scale models and full test sets; meant for a GPU",
        data=DataSettings(n_stats=None, n_grid=64, n_eval=None),
    ),
}

DEFAULT_PROFILE = "cpu"


def get_profile(name: str = DEFAULT_PROFILE) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None

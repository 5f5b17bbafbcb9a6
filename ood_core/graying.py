"""Nalisnick et al. (2019, arXiv:1810.09136) §5.2: graying an image raises its likelihood.

Their second-order analysis (:mod:`ood_core.second_order`) predicts that any transformation that
lowers the per-pixel variance of a set raises a constant-volume flow's likelihood of it. Their
Sec. 5.2 tests this by blending images toward gray: :func:`blend_gray` is the blend,
:func:`graying_table` the measured bits/dim of each blend beside the closed form's prediction.
Space, sign and variance conventions are those of :mod:`ood_core.second_order`.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from ood_core import data as data_mod
from ood_core import likelihood
from ood_core.second_order import _PIXEL_BINS, _check_images, cv_glow_closed_form, pixel_variance

__all__ = [
    "blend_gray",
    "graying_table",
]


# --------------------------------------------------------------------------------------------
# Graying (their Sec. 5.2)
# --------------------------------------------------------------------------------------------


def blend_gray(x_uint8: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) x + alpha gray(x)``, rounded to ``uint8`` (a new tensor; the input is untouched).

    ``gray`` is :func:`ood_core.data.to_grayscale` (BT.601 luma, repeated to the input's channels),
    so ``alpha = 0`` returns ``x`` exactly and ``alpha = 1`` returns ``to_grayscale(x)`` exactly
    (three equal channels). One-channel images are returned unchanged (copied) for every alpha.
    """
    _check_images(x_uint8)
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    gray = data_mod.to_grayscale(x_uint8, channels=x_uint8.shape[1])
    mixed = (1.0 - alpha) * x_uint8.double() + alpha * gray.double()
    return mixed.round().clamp(0, 255).to(torch.uint8)


def graying_table(model: nn.Module, x_uint8: torch.Tensor, alphas: tuple[float, ...] | list[float], seed: int = 0,
                  batch_size: int = 256, sigma: float = 1.0,
                  bpd: Mapping[float, np.ndarray] | None = None) -> pd.DataFrame:
    """Mean bits/dim of ``blend_gray(x, alpha)`` for each alpha, with the blended data's variance.

    Columns: ``mean bpd`` and its standard error over images; ``measured gain`` =
    ``mean bpd(alpha = 0) - mean bpd(alpha)`` (positive = graying raised the likelihood; the same
    dequantisation noise for every alpha); ``mean per-pixel variance`` on the ``[0, 1]`` scale;
    and for a constant-volume Glow ``closed-form gain`` = :func:`cv_glow_closed_form` of the
    blended set against the original (NaN for affine couplings). The first alpha should be 0.
    ``bpd``: per-example bits/dim of each blended set keyed by alpha, when already scored
    (otherwise scored here with :func:`ood_core.likelihood.score_flow`, ``seed``, ``batch_size``).
    """
    _check_images(x_uint8)
    rows = []
    var_0 = pixel_variance(x_uint8)
    constant_volume = getattr(getattr(model, "config", None), "coupling", None) == "additive"
    for alpha in alphas:
        xb = blend_gray(x_uint8, alpha)
        scores = (np.asarray(bpd[alpha]) if bpd is not None else
                  likelihood.score_flow(model, xb, batch_size=batch_size, seed=seed)["bpd"])
        var_b = pixel_variance(xb)
        rows.append({"alpha": float(alpha), "mean bpd": scores.mean(),
                     "s.e.": scores.std(ddof=1) / math.sqrt(len(scores)) if len(scores) > 1 else float("nan"),
                     "mean per-pixel variance": float(var_b.mean()) * (_PIXEL_BINS / 255.0) ** 2,
                     "closed-form gain": (cv_glow_closed_form(model, var_b, var_0, sigma).gap_bpd
                                          if constant_volume else float("nan"))})
    table = pd.DataFrame(rows).set_index("alpha")
    reference = table["mean bpd"].iloc[0]
    table.insert(2, "measured gain", reference - table["mean bpd"])
    return table

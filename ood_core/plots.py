"""Figure helpers shared by the chapters (matplotlib + seaborn), so notebooks stay free of ``def``."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from torchvision.utils import make_grid


def image_grid(ax: plt.Axes, x: torch.Tensor, title: str = "", nrow: int = 8) -> None:
    """Show uint8 images ``[N, C, H, W]`` as one grid on ``ax`` (gray images in gray)."""
    grid = make_grid(x, nrow=nrow, padding=1, pad_value=255).permute(1, 2, 0).numpy()
    ax.imshow(grid if x.shape[1] == 3 else grid[..., 0], cmap=None if x.shape[1] == 3 else "gray",
              vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def grids(sets: dict[str, torch.Tensor], ncols: int = 3, nrow: int = 8, size: float = 3.2) -> plt.Figure:
    """One grid per named image set, laid out ``ncols`` per row."""
    n = len(sets)
    rows = (n + ncols - 1) // ncols
    first = next(iter(sets.values()))
    aspect = ((len(first) + nrow - 1) // nrow) * first.shape[2] / (min(nrow, len(first)) * first.shape[3])
    fig, axes = plt.subplots(rows, ncols, figsize=(size * ncols, (size * aspect + 0.4) * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, x) in zip(axes.flat, sets.items()):
        image_grid(ax, x, name, nrow=nrow)
    fig.tight_layout()
    return fig


def score_histograms(scores: dict[str, np.ndarray], xlabel: str, ax: plt.Axes | None = None,
                     title: str = "", clip_quantiles: tuple[float, float] | None = (0.005, 0.995)) -> plt.Axes:
    """Overlaid density histograms of per-example scores, one per named set (long-form for seaborn)."""
    df = pd.concat([pd.DataFrame({xlabel: np.asarray(v, dtype=float), "set": k}) for k, v in scores.items()],
                   ignore_index=True)
    if clip_quantiles is not None:
        lo, hi = np.nanquantile(df[xlabel], clip_quantiles)
        df = df[(df[xlabel] >= lo) & (df[xlabel] <= hi)]
    ax = ax or plt.gca()
    sns.histplot(df, x=xlabel, hue="set", stat="density", common_norm=False, element="step", fill=True,
                 alpha=0.25, bins=60, ax=ax)
    ax.set_title(title)
    return ax


def setup() -> None:
    """House look for the book: seaborn's whitegrid theme and plain 3-decimal floats in tables.

    Fixed-point floats keep tables legible when a few values are astronomically large (a flow's
    bits/dim on uniform noise can reach 1e12; scientific notation would then hide every other row).
    """
    sns.set_theme(style="whitegrid", context="notebook")
    pd.set_option("display.float_format", "{:,.3f}".format)
    pd.set_option("display.width", 160)

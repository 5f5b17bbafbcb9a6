"""Figure and table helpers shared by the chapters (matplotlib + seaborn), so notebooks stay free of ``def``."""

from __future__ import annotations

import base64
import html
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from torchvision.utils import make_grid

from ood_core import names


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


# --- tables -------------------------------------------------------------------------------------

#: What a table shows where a value is missing (e.g. "the paper reports no value for this cell").
MISSING = "—"
#: Decimals for float columns that ``digits`` does not name.
DEFAULT_DIGITS = 3
#: From this magnitude on, floats are shown in scientific notation (``1.43 × 10⁶``).
LARGE = 1e6
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _is_missing(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays and other containers are values, not missing
        return False


def _format_cell(value, digits: int, missing: str) -> str:
    if _is_missing(value):
        return missing
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "∞" if value > 0 else "−∞"
        if abs(value) >= LARGE:  # e.g. bits/dim of noise under a barely trained flow: 1.43 × 10¹⁰
            mantissa, exponent = f"{float(value):.2e}".split("e")
            return f"{mantissa} × 10{str(int(exponent)).translate(_SUPERSCRIPT)}"
        text = f"{float(value):,.{digits}f}"
        # "-0.000" says "negative" about a number that rounds to zero: show it unsigned.
        return text[1:] if text.startswith("-") and float(text.replace(",", "")) == 0 else text
    return str(value)


def _column_digits(df: pd.DataFrame, digits) -> dict:
    if isinstance(digits, (int, np.integer)) and not isinstance(digits, bool):
        per_column = {c: int(digits) for c in df.columns}
    elif isinstance(digits, dict):
        unknown = [c for c in digits if c not in df.columns]
        if unknown:
            raise ValueError(f"digits names columns that are not in the table: {unknown}; "
                             f"the columns are {list(df.columns)}")
        per_column = {c: int(digits.get(c, DEFAULT_DIGITS)) for c in df.columns}
    else:
        raise TypeError(f"digits must be an int or a dict {{column: int}}, got {type(digits).__name__}")
    negative = {c: d for c, d in per_column.items() if d < 0}
    if negative:
        raise ValueError(f"digits must be >= 0, got {negative}")
    return per_column


def format_table(df: pd.DataFrame, digits: int | dict = DEFAULT_DIGITS, missing: str = MISSING) -> pd.DataFrame:
    """The table as display strings: floats to ``digits`` decimals, integers exact, missing as ``missing``.

    ``digits`` is one number for every column or a dict ``{column: decimals}`` (columns it does not
    name get :data:`DEFAULT_DIGITS`). Rounding is display-only; :func:`table_html`'s CSV link
    carries the full-precision values.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__} (wrap a Series with .to_frame())")
    if not df.columns.is_unique:
        raise ValueError(f"column names must be unique to format per column, got {list(df.columns)}")
    per_column = _column_digits(df, digits)
    out = pd.DataFrame(index=df.index, columns=df.columns, dtype=object)
    for c in df.columns:
        out[c] = [_format_cell(v, per_column[c], missing) for v in df[c].tolist()]
    return out


def csv_data_uri(df: pd.DataFrame, index: bool = True) -> str:
    """``data:text/csv`` URI of the full-precision table (missing values as empty fields).

    A link with this ``href`` and a ``download`` attribute saves the CSV in the browser without a
    server, a copied file or a network connection.
    """
    payload = base64.b64encode(df.to_csv(index=index).encode("utf-8")).decode("ascii")
    return f"data:text/csv;charset=utf-8;base64,{payload}"


def _csv_file_name(csv_name: str | None, caption: str) -> str:
    if csv_name:
        stem = csv_name[:-4] if csv_name.lower().endswith(".csv") else csv_name
    else:
        stem = caption
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:80] or "table"
    return f"{stem}.csv"


def table_html(df: pd.DataFrame, digits: int | dict = DEFAULT_DIGITS, caption: str = "",
               csv_name: str | None = None, index: bool = True, missing: str = MISSING) -> str:
    """HTML of a table for the book: :func:`format_table`'s strings, a caption and a CSV download link.

    The link is a ``data:text/csv`` URI (:func:`csv_data_uri`) with ``download="<csv_name>"``,
    so it works offline and from a static copy of the book. All text is HTML-escaped.
    """
    shown = format_table(df, digits=digits, missing=missing)
    body = shown.to_html(index=index, escape=True, border=0, classes="ood-table", na_rep=missing)
    if caption:
        body = body.replace(">", f">\n  <caption>{html.escape(caption)}</caption>", 1)
    name = html.escape(_csv_file_name(csv_name, caption), quote=True)
    link = (f'<a class="ood-table-download" download="{name}" href="{csv_data_uri(df, index=index)}">'
            f"download CSV ({name})</a>")
    return f'<div class="ood-table-wrap">\n{body}\n<p class="ood-table-download">{link}</p>\n</div>'


class Table:
    """A table as the book shows it (``_repr_html_``) with a plain-text form for terminals."""

    def __init__(self, df: pd.DataFrame, digits: int | dict = DEFAULT_DIGITS, caption: str = "",
                 csv_name: str | None = None, index: bool = True, missing: str = MISSING):
        self.html = table_html(df, digits=digits, caption=caption, csv_name=csv_name, index=index,
                               missing=missing)
        text = format_table(df, digits=digits, missing=missing).to_string(index=index)
        self.text = f"{caption}\n{text}" if caption else text

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text


def show_table(df: pd.DataFrame, digits: int | dict = DEFAULT_DIGITS, caption: str = "",
               csv_name: str | None = None, index: bool = True, missing: str = MISSING) -> None:
    """Display ``df`` in a notebook: per-column decimals, "—" where a value is missing, a caption
    and an offline "download CSV" link with the full-precision values.

        plots.show_table(table, digits={"AUROC %": 1, "mean bpd": 3}, caption="Glow on FashionMNIST")

    See :func:`table_html` for the rendering and :func:`format_table` for the number formats.
    """
    from IPython.display import display  # only notebooks need IPython; the library itself does not

    display(Table(df, digits=digits, caption=caption, csv_name=csv_name, index=index, missing=missing))


# --- chapter 11: the ASH benchmark ----------------------------------------------------------------

def openood_scatter(vs: pd.DataFrame, title: str) -> plt.Figure:
    """Our near- and far-OOD AUROC against OpenOOD v1.5's, one labelled point per method (dashed: equal).

    ``vs`` has the columns of ``names.OPENOOD_COMPARISON`` (:func:`ood_core.ash_benchmark.openood_comparison`).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    for ax, which in zip(axes, ("near", "far")):
        ours, theirs = names.OPENOOD_COMPARISON[which]
        ax.scatter(vs[theirs], vs[ours], color="C0")
        for method, r in vs.iterrows():
            ax.annotate(method, (r[theirs], r[ours]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        lo = min(50, np.nanmin(vs[[ours, theirs]].to_numpy()) - 2)
        ax.plot([lo, 100], [lo, 100], "k--", lw=0.8)
        ax.set(xlabel=f"OpenOOD v1.5 {which}-OOD AUROC (%)", ylabel=f"ours, {which}-OOD AUROC (%)",
               title=f"{which}-OOD")
    fig.suptitle(f"{title} (dashed: equal)")
    fig.tight_layout()
    return fig


def auroc_heatmap(grid: pd.DataFrame, title: str, row_height: float = 0.42, divider: int | None = None
                  ) -> plt.Figure:
    """AUROC (%) per method (rows) and OOD set (columns), annotated; a white line before column ``divider``."""
    fig, ax = plt.subplots(figsize=(1.1 * grid.shape[1] + 3, row_height * grid.shape[0] + 1.5))
    sns.heatmap(grid, annot=True, fmt=".1f", cmap="viridis", vmin=0, vmax=100, ax=ax,
                cbar_kws={"label": "AUROC (%)"})
    if divider is not None:
        ax.axvline(divider, color="white", lw=3)
    ax.set_title(title)
    return fig


def auroc_fpr_heatmaps(auroc: pd.DataFrame, fpr: pd.DataFrame, label: str) -> plt.Figure:
    """AUROC and FPR95 (%) per method and OOD set side by side, for the network ``label``."""
    fig, axes = plt.subplots(1, 2, figsize=(2.2 * auroc.shape[1] + 6, 0.42 * auroc.shape[0] + 1.8), sharey=True)
    for ax, g, what, cmap in ((axes[0], auroc, "AUROC (%)", "viridis"), (axes[1], fpr, "FPR95 (%)", "viridis_r")):
        sns.heatmap(g, annot=True, fmt=".1f", cmap=cmap, vmin=0, vmax=100, ax=ax, cbar_kws={"label": what})
        ax.set_title(f"{what} per OOD set — {label}")
    fig.tight_layout()
    return fig

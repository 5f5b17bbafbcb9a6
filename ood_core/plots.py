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
from ood_core import second_order as so


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


# --- chapter 07: the second-order analysis ------------------------------------------------------

def pixel_statistics(pixel_stats: dict[str, pd.DataFrame]) -> plt.Figure:
    """Per ID dataset (``{title: frame}``, one row per set and pixel): histograms of the per-pixel means and
    variances of every set (:attr:`ood_core.second_order_study.SecondOrderStudy.pixel_stats`)."""
    fig, axes = plt.subplots(len(pixel_stats), 2, figsize=(13, 3.6 * len(pixel_stats)), squeeze=False)
    for row, (title, long) in zip(axes, pixel_stats.items()):
        for ax, column in zip(row, (names.SO_PIXEL_MEAN, names.SO_PIXEL_VARIANCE)):
            sns.histplot(long, x=column, hue=names.SET, stat="density", common_norm=False, element="step",
                         bins=50, ax=ax)
        row[0].set_title(f"ID {title}: per-pixel means (all channels)")
        row[1].set_title(f"ID {title}: per-pixel variances (all channels)")
    fig.tight_layout()
    return fig


def gap_predictions(second_order: pd.DataFrame, predictors) -> plt.Figure:
    """Predicted against measured gap (bits/dim, + = OOD favoured), one marker per (model, OOD set, predictor);
    ``second_order`` indexed by (``names.SO_MODEL``, ``names.OOD_SET``) with a ``names.SO_MEASURED`` column."""
    predicted = "predicted gap (bits/dim)"
    long = second_order.reset_index().melt(id_vars=[names.SO_MODEL, names.OOD_SET, names.SO_MEASURED],
                                           value_vars=list(predictors), var_name=names.SO_PREDICTION,
                                           value_name=predicted).dropna()
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    sns.scatterplot(long, x=names.SO_MEASURED, y=predicted, hue=names.SO_PREDICTION, style=names.SO_MODEL, s=70,
                    ax=ax)
    lim = np.nanmax(np.abs(long[[names.SO_MEASURED, predicted]].to_numpy())) * 1.1
    ax.plot([-lim, lim], [-lim, lim], color="gray", lw=1, ls="--")
    ax.axhline(0, color="gray", lw=0.5)
    ax.axvline(0, color="gray", lw=0.5)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="measured gap (bits/dim, + = OOD favoured)",
           title="Second-order predictions vs measurement (dashed: perfect)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def curvature_scatter(curvature: pd.DataFrame, forms) -> plt.Figure:
    """Per squeezed channel, each predicted curvature in ``forms`` against the network's Hessian diagonal
    (sign flipped, log-log; channels whose Hutchinson estimate is >= 0 cannot be shown and are counted)."""
    flat = curvature.reset_index()
    negative = flat[flat[names.SO_HESSIAN_DIAG] < 0]
    magnitudes = -negative[[*forms, names.SO_HESSIAN_DIAG]].to_numpy()
    lo, hi = float(magnitudes[magnitudes > 0].min()) / 2, float(magnitudes.max()) * 2
    fig, axes = plt.subplots(1, len(forms), figsize=(12, 4.8), sharey=True, squeeze=False)
    for ax, form in zip(axes[0], forms):
        ax.errorbar(-negative[form], -negative[names.SO_HESSIAN_DIAG], yerr=negative[names.SO_STDERR], fmt="none",
                    ecolor="lightgray", zorder=0)
        sns.scatterplot(x=-negative[form], y=-negative[names.SO_HESSIAN_DIAG], hue=negative[names.SO_MODEL], ax=ax)
        ax.plot([lo, hi], [lo, hi], color="gray", ls="--", lw=1)
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel=f"−{form} (nats)",
               title=f"{form} vs the network")
    axes[0][0].set_ylabel("−Hessian diagonal, Hutchinson ± s.e. (nats)")
    fig.suptitle(f"Per-squeezed-channel curvature, sign flipped (log-log; dashed: equal)\n{len(flat) - len(negative)} "
                 f"of {len(flat)} channels with a Hutchinson estimate ≥ 0 left out")
    fig.tight_layout()
    return fig


def depth_shrinkage(depth_summary: pd.DataFrame, theory: dict[str, dict]) -> plt.Figure:
    """The closed form's and the exact factor against the number of steps K (top row) and their ratio (bottom),
    one column per ID dataset (``theory``: ``{title: {"num_channels", "mean_log_column_sum_sq"}}``): geometric
    mean over channels and draws, a 10-90 % band, trained weights dotted, the theory's slope dashed."""
    closed, exact = so.SHRINKAGE_QUANTITIES
    rows = {"factor (curvature × −σ²)": (closed, exact), names.SO_RATIO: (names.SO_RATIO,)}
    colors = {closed: "C0", exact: "C1", names.SO_RATIO: "C2"}
    fig, axes = plt.subplots(len(rows), len(theory), figsize=(6.4 * len(theory), 4.4 * len(rows)), squeeze=False)
    for row_axes, (ylabel, quantities) in zip(axes, rows.items()):
        for ax, (title, th) in zip(row_axes, theory.items()):
            panel = depth_summary[(depth_summary["ID"] == title) & depth_summary["quantity"].isin(quantities)]
            for (weights, quantity), g in panel.groupby(["weights", "quantity"]):
                is_trained = weights == so.TRAINED_WEIGHTS
                ax.plot(g["K"], np.exp(g["mean"]), color=colors[quantity], ls=":" if is_trained else "-",
                        marker="o" if is_trained else None, markeredgecolor="black", zorder=3 if is_trained else 2,
                        label=f"{quantity}: {weights}")
                ax.fill_between(g["K"], np.exp(g["10%"]), np.exp(g["90%"]), color=colors[quantity],
                                alpha=0.2 if is_trained else 0.1)
            ks = np.arange(0, panel["K"].max() + 1)
            ax.plot(ks, np.exp(ks * th["mean_log_column_sum_sq"]), color="black", ls="--",
                    label=f"theory: exp(K E log s²), E log s² = {th['mean_log_column_sum_sq']:.3f}")
            ax.axhline(1.0, color="gray", lw=0.5)
            ax.set_yscale("log")
            ax.set(xlabel="steps K", ylabel=ylabel, title=f"CV-Glow on {title}: {th['num_channels']} squeezed channels")
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def coupling_views(views: dict, size: float = 2.6) -> plt.Figure:
    """One row per set: the image, a coupling layer's masked half (its target) and the network's prediction of
    it, in image space (:class:`ood_core.flow_diagnostics.CouplingView`, first image, channel mean).
    ``views``: ``{set display name: CouplingView}``."""
    fig, axes = plt.subplots(len(views), 3, figsize=(7.5, size * len(views)), squeeze=False)
    for row, (name, v) in zip(axes, views.items()):
        for ax, (title, img) in zip(row, (("image", v.image[0]), ("masked half (target)", v.target_image[0]),
                                          ("network's prediction", v.prediction_image[0]))):
            ax.imshow(img.mean(0).numpy(), cmap="gray")
            ax.set_title(f"{name}: {title}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return fig


# --- ASH ablations (chapter 12) -----------------------------------------------------------------

_SWEEP_METRICS = (names.ID_ACCURACY, names.FPR95, names.AUROC)


def percentile_sweeps(sweeps: dict[str, pd.DataFrame], baselines: dict[str, pd.Series] | None = None,
                      titles: bool = True, suptitle: str = "") -> plt.Figure:
    """ID accuracy, FPR95 and AUROC against the percentile, one row per network (``shaper`` as hue, rows
    titled by network if ``titles``); ``baselines`` (per network, a row with the same columns) is drawn
    dashed, e.g. plain energy."""
    fig, axes = plt.subplots(len(sweeps), 3, figsize=(15, 3.8 * len(sweeps)), squeeze=False)
    for row, (label, sw) in zip(axes, sweeps.items()):
        for ax, col in zip(row, _SWEEP_METRICS):
            sns.lineplot(sw, x=names.PERCENTILE, y=col, hue=names.SHAPER, marker="o", ax=ax, legend=ax is row[-1])
            if baselines is not None:
                ax.axhline(baselines[label][col], color="gray", ls="--", lw=1)
            ax.set(xlabel="percentile p")
            if titles:
                ax.set(title=label if col == _SWEEP_METRICS[0] else "")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def labelled_scatter(table: pd.DataFrame, x: str, y: str, labels, ax: plt.Axes, **kwargs) -> plt.Axes:
    """A seaborn scatter of ``table`` (``kwargs`` go to ``sns.scatterplot``) with each point annotated by
    its entry of ``labels`` (one per row, in order; small type)."""
    sns.scatterplot(table, x=x, y=y, s=70, ax=ax, **kwargs)
    for text, (_, r) in zip(labels, table.iterrows()):
        ax.annotate(text, (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    return ax


def where_to_ash_bars(where: pd.DataFrame, labels) -> plt.Figure:
    """Per network: mean AUROC of ASH after each block (bars) and the ID accuracy (line, right axis);
    ``where`` is indexed by (network, stage)."""
    fig, axes = plt.subplots(1, len(labels), figsize=(6.5 * len(labels), 3.6), squeeze=False)
    for ax1, label in zip(axes[0], labels):
        w = where.loc[label].reset_index()
        sns.barplot(w, x=names.STAGE, y=names.AUROC, color="C0", ax=ax1)
        ax1.set_ylim(min(50, w[names.AUROC].min() - 5), 100)
        ax1.set_title(label)
        ax2 = ax1.twinx()
        ax2.plot(range(len(w)), w[names.ID_ACCURACY], "o-", color="C3")
        ax2.set_ylabel(names.ID_ACCURACY, color="C3")
    fig.tight_layout()
    return fig


def accuracy_tradeoff(tradeoff: dict[str, pd.DataFrame], groups: dict[str, str], columns) -> plt.Figure:
    """Every method's ID accuracy against its mean AUROC per column (e.g. near and far OOD), one row per
    network; ``tradeoff`` tables are indexed by method title, ``groups`` colours the methods."""
    fig, axes = plt.subplots(len(tradeoff), len(columns), figsize=(6.5 * len(columns), 4.6 * len(tradeoff)),
                             squeeze=False)
    for row, (label, t) in zip(axes, tradeoff.items()):
        points = t.reset_index().assign(group=lambda d: d[names.METHOD].map(groups))
        unpruned = t.loc["energy", names.ID_ACCURACY]
        for ax, col in zip(row, columns):
            sns.scatterplot(points, x=col, y=names.ID_ACCURACY, hue="group", style="group", s=70, ax=ax,
                            legend=ax is row[-1])
            for _, r in points.iterrows():  # methods that keep the prediction share one line: labels upright there
                ax.annotate(r[names.METHOD], (r[col], r[names.ID_ACCURACY]), fontsize=7, xytext=(2, 4),
                            textcoords="offset points", rotation=90 if r[names.ID_ACCURACY] == unpruned else 0)
            ax.margins(y=0.3)
            ax.set(xlabel=f"mean {col} (%)", title=f"{label}: {col.split()[0]}-OOD")
    fig.tight_layout()
    return fig


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

"""Figures of the paper: parity plots (Figs 3-5 a-b), error histograms (Figs 3-5 c-d) and the feature
contribution (Fig 6); the Li -> K substitution (Fig 7) is screening_figures.py's.

Each panel is titled by where its values come from, read from the summary's ``source`` column
('physics' or 'network' per row and target, ensemble.mark_sources): a physics model's values are
not all those of its networks.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from electrode_ml.fileio import atomic_path  # noqa: E402
from electrode_ml.metrics import regression_metrics  # noqa: E402
from electrode_ml.physics import BASIS  # noqa: E402
from electrode_ml.schema import TARGETS, UNITS  # noqa: E402

LABELS = {
    "average_voltage": "Average voltage (V)",
    "capacity_grav": "Gravimetric capacity (mAh/g)",
    "energy_grav": "Specific energy (Wh/kg)",
}
NAMES = {target: label.rsplit(" (", 1)[0].lower() for target, label in LABELS.items()}  # "average voltage"
SPLIT_STYLE = {"train": ("#7b3294", "train"), "val": ("#1b9e77", "validation"), "test": ("#d95f02", "test")}
# An error below this share of the target's largest DFT value is round-off, not a miss.
EXACT_TOLERANCE = 1e-6
# The histograms draw every split's errors within this percentile of its |error| (a symmetric range)...
HISTOGRAM_PERCENTILE = 99
# ...but no wider than |median| + this many interquartile ranges of a split's errors, so that a heavy
# tail does not squeeze the bulk into two bins (5 IQR is 6.7 standard deviations of a normal
# distribution), where that narrower range leaves at most this share of every split undrawn.
HISTOGRAM_IQRS = 5
HISTOGRAM_CAP_SHARE = 0.1


def save(figure: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=130, bbox_inches="tight", format=Path(path).suffix.lstrip("."))
    plt.close(figure)


def physics_share(summary: pd.DataFrame, target: str) -> float:
    """Share of the target's rows whose value the physics gave (0 where the summary has no ``source``)."""
    part = summary[summary["target"] == target]
    if "source" not in part or not len(part):
        return 0.0
    return float((part["source"] == "physics").mean())


def learned_label(summary: pd.DataFrame, learned: str | None = None) -> str:
    """What predicts the values physics does not give: ``learned`` or the mean of the summary's n networks."""
    if learned:
        return learned
    counts = summary["n"].dropna().unique() if "n" in summary else []
    return f"mean of {int(counts[0])} networks" if len(counts) == 1 else "mean of the networks"


def value_sources(summary: pd.DataFrame, learned: str | None = None, voltage_trees: bool = False) -> dict[str, str]:
    """Per target, a short note on where its values come from (each panel's title).

    ``voltage_trees``: the learned voltage is the networks' blended with gradient-boosted trees
    (trees.py). A model with any physics value computes energy as voltage x capacity (physics.combine)."""
    learned = learned_label(summary, learned)
    shares = {target: physics_share(summary, target) for target in TARGETS}
    own = {target: learned for target in TARGETS}
    if voltage_trees:
        own["average_voltage"] = f"{learned} + voltage trees"
    if any(shares.values()):
        own["energy_grav"] = "voltage × capacity of the two panels at left"
    notes = {}
    for target in TARGETS:
        share, physics = shares[target], f"physics, {BASIS[target]}"
        if share == 1:
            notes[target] = f"{physics}: 100 % of rows"
        elif share == 0:
            notes[target] = own[target]
        else:
            notes[target] = f"{physics}: {percent(share)} of rows; else {own[target]}"
    return notes


def percent(share: float) -> str:
    """A share as a percentage that is never rounded to 0 % or 100 % when it is neither."""
    value = 100 * share
    digits = 1 if 0 < value < 1 or 99 < value < 100 else 0
    # one row of 4300 is 0.02 %: a digit more until the text is neither 0 nor 100
    while 0 < value < 100 and float(f"{value:.{digits}f}") in (0.0, 100.0) and digits < 6:
        digits += 1
    return f"{value:.{digits}f} %"


def _panel_title(axis: plt.Axes, text: str) -> None:
    axis.set_title(textwrap.fill(text, 58), fontsize=9)


def parity_figure(summary: pd.DataFrame, title: str, splits=("train", "val"), learned: str | None = None,
                  voltage_trees: bool = False) -> plt.Figure:
    """DFT value against ensemble mean per target, with the identity line and r of each split; each
    panel titled by where its values come from (:func:`value_sources`)."""
    notes = value_sources(summary, learned, voltage_trees)
    figure, axes = plt.subplots(1, len(TARGETS), figsize=(5 * len(TARGETS), 4.8))
    for axis, target in zip(axes, TARGETS):
        part = summary[summary["target"] == target]
        for split in splits:
            points = part[part["split"] == split]
            r = regression_metrics(points["true"], points["mean"])["r"]
            color, name = SPLIT_STYLE[split]
            axis.scatter(points["true"], points["mean"], s=8, alpha=0.5, color=color, label=f"{name} (r = {r:.3f})")
        low = min(part["true"].min(), part["mean"].min())
        high = max(part["true"].max(), part["mean"].max())
        axis.plot([low, high], [low, high], color="#2c7bb6", linewidth=1, label="identity")
        axis.set_xlabel(f"DFT {LABELS[target]}")
        axis.set_ylabel(f"Predicted {LABELS[target]}")
        _panel_title(axis, notes[target])
        axis.legend(loc="upper left", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def message_figure(message: str) -> plt.Figure:
    """A figure that says why there is nothing to draw, where a run's data leave a figure empty."""
    figure = plt.figure(figsize=(8, 2.5))
    figure.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, wrap=True)
    return figure


def is_exact(part: pd.DataFrame, errors: pd.Series) -> bool:
    """Whether every error is round-off: below EXACT_TOLERANCE of the largest DFT value (at least 1)."""
    if not len(errors):
        return False
    scale = max(1.0, float(part["true"].abs().max()))
    return float(errors.abs().max()) <= EXACT_TOLERANCE * scale


def three_digits(value: float) -> str:
    """Three significant digits, trailing zeros kept: an MAE of 4.00 beside 13.1, not 4."""
    return f"{value:#.3g}".rstrip(".")


def histogram_half_width(errors_by_split: list[pd.Series]) -> float:
    """Half the error histograms' range: the largest of the splits' HISTOGRAM_PERCENTILE-th
    percentiles of |error| (read at or above it: with 388 rows an interpolated 99th percentile left
    4 errors, 1.03 %, out), capped at the largest of the splits' |median| + HISTOGRAM_IQRS
    interquartile ranges, where the cap leaves at most HISTOGRAM_CAP_SHARE of every split undrawn
    (not where the IQR is a physics target's round-off and the network rows lie beyond it)."""
    shown = [errors for errors in errors_by_split if len(errors)]
    if not shown:
        return 1.0
    half = max(float(np.percentile(errors.abs(), HISTOGRAM_PERCENTILE, method="higher")) for errors in shown)
    cap = max(abs(float(errors.median())) + HISTOGRAM_IQRS * float(np.subtract(*np.percentile(errors, [75, 25])))
              for errors in shown)
    if 0 < cap < half and all((errors.abs() > cap).mean() <= HISTOGRAM_CAP_SHARE for errors in shown):
        half = cap
    return half if half > 0 else max(float(errors.abs().max()) for errors in shown) or 1.0


def error_histogram_figure(summary: pd.DataFrame, title: str, splits=("train", "val"), learned: str | None = None,
                           voltage_trees: bool = False) -> plt.Figure:
    """Distribution of predicted - DFT per target and split, on the symmetric range of
    :func:`histogram_half_width`: each shown split's own percentile (of the pooled errors, the 3483
    training errors set the range and clipped 4-6 % of the 388 validation ones, the split the
    comparison is about), capped where a heavy tail would squeeze the rest into a few bins
    (capacity's few misses of 400-700 mAh/g stretched it to +-266 mAh/g, and 86-99 % of the errors
    fell into three bins). The errors beyond the range are not drawn (each split's count is in the
    legend), and each split's bars have area = its share within the range.
    A target whose errors are all round-off gets a text panel instead of a histogram of noise."""
    notes = value_sources(summary, learned, voltage_trees)
    figure, axes = plt.subplots(1, len(TARGETS), figsize=(5 * len(TARGETS), 4.4))
    for axis, target in zip(axes, TARGETS):
        part = summary[(summary["target"] == target) & summary["split"].isin(splits)]
        errors = part["mean"] - part["true"]
        unit = UNITS[target]
        _panel_title(axis, notes[target])
        axis.set_xlabel(f"Predicted − DFT {NAMES[target]} ({unit})")
        if is_exact(part, errors):
            physics = physics_share(part, target) == 1
            axis.text(0.5, 0.5, f"exact{': from physics' if physics else ''}\n"
                                f"max |error| {errors.abs().max():.1e} {unit} (round-off)\n"
                                f"{len(errors)} rows ({', '.join(SPLIT_STYLE[s][1] for s in splits)})",
                      transform=axis.transAxes, ha="center", va="center", fontsize=10)
            axis.set_xticks([])
            axis.set_yticks([])
            continue
        half = histogram_half_width([errors[part["split"] == split] for split in splits])
        edges = np.linspace(-half, half, 41)
        width = edges[1] - edges[0]
        for split in splits:
            color, name = SPLIT_STYLE[split]
            split_errors = errors[part["split"] == split]
            inside = split_errors[split_errors.abs() <= half]
            beyond = len(split_errors) - len(inside)
            mae = split_errors.abs().mean() if len(split_errors) else float("nan")
            axis.hist(inside, bins=edges, weights=np.full(len(inside), 1.0 / (max(len(split_errors), 1) * width)),
                      alpha=0.5, color=color, label=f"{name}: MAE {three_digits(mae)} {unit}; {beyond} beyond")
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_xlim(-half, half)
        axis.set_ylim(0, axis.get_ylim()[1] * 1.4)  # room for the legend above the bars
        axis.set_ylabel(f"Density (share of the split per {unit})")
        axis.legend(fontsize=7.5, title=f"not drawn: |error| > {half:.3g} {unit}", title_fontsize=7.5,
                    loc="upper left")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


# Fig 6: a group that helps, one the network does better without.
HELPS, HURTS = "#1b9e77", "#d95f02"


def contribution_figure(summary: pd.DataFrame, per_seed: pd.DataFrame, title: str):
    """Fig 6: Eq. 9 per left-out group, bars = mean over seeds, error bars = std, dots = seeds;
    a legend says so, and the line at 1 marks no contribution."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ordered = summary.sort_values("contribution_mean")
    figure, axis = plt.subplots(figsize=(7.5, 0.5 * len(ordered) + 1.6))
    positions = np.arange(len(ordered))
    colors = [HELPS if value >= 1 else HURTS for value in ordered["contribution_mean"]]
    axis.barh(positions, ordered["contribution_mean"] - 1, left=1, color=colors, alpha=0.75,
              xerr=ordered["contribution_std"].fillna(0), error_kw={"elinewidth": 1, "capsize": 3})
    for position, group in zip(positions, ordered["group"]):
        values = per_seed.loc[per_seed["group"] == group, "contribution"]
        axis.scatter(values, np.full(len(values), position), s=12, color="black", zorder=3)
    low, high = axis.get_xlim()
    pad = 0.03 * (high - low)
    axis.set_xlim(min(low, 1 - pad), max(high, 1 + pad))  # the line at 1 inside the frame, not on its edge
    axis.axvline(1, color="black", linewidth=0.8)
    seeds = summary["n_seeds"].max() if "n_seeds" in summary and len(summary) else None
    over = f"over the {int(seeds)} seeds" if seeds else "over the seeds"
    handles = [Patch(color=HELPS, alpha=0.75, label=f"mean {over}, ≥ 1: the group helps"),
               Patch(color=HURTS, alpha=0.75, label=f"mean {over}, < 1: the network does better without it"),
               Line2D([], [], color="black", linewidth=1, marker="|", markersize=7,
                      label=f"± 1 standard deviation {over}"),
               axis.scatter([], [], s=12, color="black", label="one seed"),
               axis.plot([], [], color="black", linewidth=0.8, label="1: no contribution")[0]]
    axis.set_yticks(positions, ordered["group"])
    axis.set_xlabel("Contribution (Eq. 9): mean r with all features / mean r without the group")
    axis.set_title(title)
    figure.tight_layout()
    # below the figure (saved with bbox_inches="tight"), clear of the bars, dots and x label
    axis.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0),
                bbox_transform=figure.transFigure, ncol=2, frameon=False)
    return figure

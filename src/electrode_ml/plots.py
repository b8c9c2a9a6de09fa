"""Figures of the paper: parity plots (Figs 3-5 a-b) and error histograms (Figs 3-5 c-d)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from electrode_ml.fileio import atomic_path  # noqa: E402
from electrode_ml.schema import TARGETS  # noqa: E402

LABELS = {
    "average_voltage": "Average voltage (V)",
    "capacity_grav": "Gravimetric capacity (mAh/g)",
    "energy_grav": "Specific energy (Wh/kg)",
}
SPLIT_STYLE = {"train": ("#7b3294", "train"), "val": ("#1b9e77", "validation"), "test": ("#d95f02", "test")}


def save(figure: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=130, bbox_inches="tight", format=Path(path).suffix.lstrip("."))
    plt.close(figure)


def parity_figure(summary: pd.DataFrame, title: str, splits=("train", "val")) -> plt.Figure:
    """DFT value against ensemble mean per target, with the identity line and r of each split."""
    figure, axes = plt.subplots(1, len(TARGETS), figsize=(5 * len(TARGETS), 4.6))
    for axis, target in zip(axes, TARGETS):
        part = summary[summary["target"] == target]
        for split in splits:
            points = part[part["split"] == split]
            r = np.corrcoef(points["true"], points["mean"])[0, 1] if len(points) > 1 else float("nan")
            color, name = SPLIT_STYLE[split]
            axis.scatter(points["true"], points["mean"], s=8, alpha=0.5, color=color, label=f"{name} (r = {r:.3f})")
        low = min(part["true"].min(), part["mean"].min())
        high = max(part["true"].max(), part["mean"].max())
        axis.plot([low, high], [low, high], color="#2c7bb6", linewidth=1, label="identity")
        axis.set_xlabel(f"DFT {LABELS[target]}")
        axis.set_ylabel(f"Predicted {LABELS[target]}")
        axis.legend(loc="upper left", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def error_histogram_figure(summary: pd.DataFrame, title: str, splits=("train", "val")) -> plt.Figure:
    """Distribution of prediction - DFT per target and split."""
    figure, axes = plt.subplots(1, len(TARGETS), figsize=(5 * len(TARGETS), 4))
    for axis, target in zip(axes, TARGETS):
        part = summary[summary["target"] == target]
        errors = part["mean"] - part["true"]
        edges = np.linspace(*np.percentile(errors, [1, 99]), 41)
        for split in splits:
            color, name = SPLIT_STYLE[split]
            split_errors = errors[part["split"] == split]
            axis.hist(np.clip(split_errors, edges[0], edges[-1]), bins=edges, density=True, alpha=0.5,
                      color=color, label=f"{name} (MAE {split_errors.abs().mean():.3g})")
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_xlabel(f"Error in {LABELS[target]}")
        axis.set_ylabel("Density")
        axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure

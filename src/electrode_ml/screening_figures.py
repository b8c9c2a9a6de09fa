"""Fig 7 of the paper: each test Li electrode's predicted specific energy against its K twin's.

Apart from plots.py because it reads screening.py: every rule that draws a figure fingerprints
plots.py (code_version.py), and an edit to the screening would rerun the ensembles and the
feature contribution too.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from electrode_ml import screening
from electrode_ml.plots import plt


def k_substitution_figure(table: pd.DataFrame, models: list[str], old: str = "Li", new: str = "K",
                          learned: Mapping[str, str] | None = None):
    """Fig 7: predicted specific energy of each test Li electrode against its K twin, one panel per model.

    Each axis says where its energies come from (:func:`electrode_ml.screening.energy_basis`; ``learned`` names a model's
    learned part, default 'networks'): model2_phys's Li values are physics (DFT), its K values not."""
    learned = dict(learned or {})
    low, up = old.lower(), new.lower()
    ncols = min(2, max(1, len(models)))
    nrows = -(-max(1, len(models)) // ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 5.4 * nrows), squeeze=False)
    for axis in axes.flat[len(models):]:
        axis.set_visible(False)
    half_widths = []
    for label, (axis, model) in zip("abcdefgh", zip(axes.flat, models)):
        before = table[f"{model}_energy_grav_{low}_mean"]
        after = table[f"{model}_energy_grav_{up}_mean"]
        below = screening.lower_as_substituted(before, after) if len(table) else float("nan")
        error = [after - table[f"{model}_energy_grav_{up}_ci_low"], table[f"{model}_energy_grav_{up}_ci_high"] - after]
        half_widths.append((error[0] + error[1]).to_numpy() / 2)
        axis.errorbar(before, after, yerr=error,
                      fmt="o", markersize=3.5, alpha=0.6, color="#7b3294", ecolor="#c2a5cf", elinewidth=0.8,
                      label=f"{len(table)} test {old} electrodes ({below:.0%} lower as {new})")
        values = np.concatenate([before.to_numpy(), after.to_numpy()]) if len(table) else np.array([0.0, 1.0])
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        axis.plot([lo, hi], [lo, hi], color="#2c7bb6", linewidth=1, label="identity (no change)")
        ratio = screening.finite_median(table["stoich_capacity_ratio"])
        if ratio is not None:
            axis.plot([lo, hi], [lo * ratio, hi * ratio], color="#d95f02", linewidth=1, linestyle="--",
                      label=f"mass effect only: x {ratio:.2f} (median C_{new}/C_{old})")
        name = learned.get(model, "networks")
        basis = {side: screening.energy_basis(table, model, side, name) for side in (low, up)}
        axis.set_xlabel(f"Predicted specific energy, {old} electrode (Wh/kg)"
                        + (f"\n{old}: {basis[low]}" if basis[low] else ""))
        axis.set_ylabel(f"Predicted specific energy, {new} substituted (Wh/kg)"
                        + (f"\n{new}: {basis[up]}" if basis[up] else ""))
        title = f"({label}) {model}"
        if basis[low] and basis[up] and basis[low] != basis[up]:
            title += f": {old} and {new} energies from different sources (see axes)"
        axis.set_title(title)
        axis.legend(loc="upper left", fontsize=8)
    heading = f"{old} -> {new} substitution in the test split (paper Fig 7)"
    suptitle = figure.suptitle(f"{heading}\nerror bars: 95 % CI of the ensemble mean of the {new} values")
    figure.tight_layout()
    hidden = _share_within_marker(figure, axes.flat, half_widths, marker_points=3.5)
    shown = [(label, share) for label, share in zip("abcdefgh", hidden) if share is not None]
    if shown:  # the CI of a mean of many networks is narrow: say how often it hides, panel by panel
        shares = (f"{100 * shown[0][1]:.0f} %" if len(shown) == 1
                  else ", ".join(f"{100 * share:.0f} % ({label})" for label, share in shown))
        suptitle.set_text(f"{heading}\nerror bars: 95 % CI of the ensemble mean of the {new} values, "
                          f"within the marker for {shares} of the points")
    return figure


def _share_within_marker(figure, axes, half_widths: list[np.ndarray], marker_points: float) -> list[float | None]:
    """Per panel, the share of its error bars no longer than the marker's radius (``marker_points``
    its diameter); None for a panel without bars. Per panel, since the panels' scales differ: pooled,
    86 % hid model1's 53 %."""
    shares = []
    for axis, widths in zip(axes, half_widths):
        height_points = axis.get_window_extent().height * 72 / figure.dpi
        low, high = axis.get_ylim()
        radius = marker_points / 2 * (high - low) / height_points
        widths = widths[np.isfinite(widths)]
        shares.append(float((widths <= radius).mean()) if len(widths) else None)
    return shares

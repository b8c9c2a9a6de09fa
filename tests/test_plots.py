"""The parity and error-histogram figures say where each panel's values come from and what they leave out."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from electrode_ml import plots
from electrode_ml.schema import TARGETS

TRUE = {"average_voltage": 3.0, "capacity_grav": 150.0, "energy_grav": 450.0}
SPREAD = {"average_voltage": 0.2, "capacity_grav": 10.0, "energy_grav": 40.0}


def synthetic_summary(physics_targets=(), outliers: dict[str, int] | None = None, n: int = 200,
                      n_networks: int = 50) -> pd.DataFrame:
    """n train and n validation rows per target; ``physics_targets`` exact (round-off errors), the rest
    with normal errors, ``outliers[split]`` of each split's rows of every network target 100 spreads off."""
    rng = np.random.default_rng(0)
    outliers = outliers or {}
    rows = []
    for target in TARGETS:
        for split in ("train", "val"):
            true = TRUE[target] + rng.normal(0, SPREAD[target] * 5, n)
            if target in physics_targets:
                error, source = rng.normal(0, 1e-9, n), "physics"
            else:
                error, source = rng.normal(0, SPREAD[target], n), "network"
                error[: outliers.get(split, 0)] = 100 * SPREAD[target]
            rows.append(pd.DataFrame({"battery_id": [f"b{i}" for i in range(n)], "split": split, "target": target,
                                      "true": true, "mean": true + error, "n": n_networks, "source": source}))
    return pd.concat(rows, ignore_index=True)


def titles(figure) -> list[str]:
    return [axis.get_title().replace("\n", " ") for axis in figure.axes]


def legend_texts(axis) -> list[str]:
    legend = axis.get_legend()
    return [legend.get_title().get_text()] + [text.get_text() for text in legend.get_texts()]


def test_a_network_model_is_titled_by_its_networks():
    figure = plots.parity_figure(synthetic_summary(n_networks=50), "m")
    assert titles(figure) == ["mean of 50 networks"] * 3
    plt.close(figure)


def test_parity_panels_give_each_splits_r_and_the_identity_line():
    summary = synthetic_summary()
    summary.loc[(summary["split"] == "val") & (summary["target"] == "capacity_grav"), "mean"] *= -1  # r < 0 there
    figure = plots.parity_figure(summary, "m")
    for axis, target in zip(figure.axes, TARGETS):
        part = summary[summary["target"] == target]
        expected = [f"{name} (r = {np.corrcoef(points['true'], points['mean'])[0, 1]:.3f})"
                    for split, (_, name) in plots.SPLIT_STYLE.items() if split in ("train", "val")
                    for points in [part[part["split"] == split]]]
        assert legend_texts(axis)[1:3] == expected
        identity = next(line for line in axis.get_lines() if line.get_label() == "identity")
        x, y = identity.get_data()
        np.testing.assert_array_equal(x, y)
        assert x[0] <= min(part["true"].min(), part["mean"].min()) and x[-1] >= max(part["true"].max(), part["mean"].max())
    assert "-" in legend_texts(figure.axes[1])[2]
    plt.close(figure)


def test_physics_panels_say_physics_gives_every_row():
    summary = synthetic_summary(physics_targets=("capacity_grav",))
    voltage, capacity, energy = titles(plots.parity_figure(summary, "m", voltage_trees=True))
    assert capacity == "physics, stoichiometry: 100 % of rows"
    assert voltage == "mean of 50 networks + voltage trees"
    assert energy == "voltage × capacity of the two panels at left"  # physics.combine: E = V x C
    every = titles(plots.parity_figure(synthetic_summary(physics_targets=TARGETS), "m"))
    assert every[0] == "physics, DFT energies: 100 % of rows" and all("100 % of rows" in title for title in every)
    plt.close("all")


def test_a_mixed_target_gives_the_physics_share():
    summary = synthetic_summary(physics_targets=("average_voltage",))
    held = summary.index[(summary["target"] == "average_voltage")][:100]  # 100 of 400 rows by the networks
    summary.loc[held, "source"] = "network"
    assert plots.value_sources(summary)["average_voltage"] == \
        "physics, DFT energies: 75 % of rows; else mean of 50 networks"


def test_a_physics_only_target_gets_a_text_panel_not_a_histogram_of_round_off():
    figure = plots.error_histogram_figure(synthetic_summary(physics_targets=("capacity_grav",)), "m")
    capacity = figure.axes[1]
    assert not capacity.patches  # no bars of 1e-9 noise
    text = " ".join(item.get_text() for item in capacity.texts)
    assert "exact: from physics" in text and "max |error|" in text and "mAh/g" in text
    assert figure.axes[0].patches and not figure.axes[0].texts
    plt.close(figure)


def test_the_errors_beyond_the_range_are_counted_not_piled_into_the_end_bins():
    figure = plots.error_histogram_figure(synthetic_summary(outliers={"train": 1, "val": 2}), "m")
    voltage = figure.axes[0]
    texts = legend_texts(voltage)
    half = voltage.get_xlim()[1]
    assert voltage.get_xlim()[0] == pytest.approx(-half)  # symmetric about 0
    assert texts[0] == f"not drawn: |error| > {half:.3g} V"
    train, val = texts[1:]
    assert train.startswith("train: MAE ") and " V; " in train and train.endswith(" beyond")
    # the larger of the splits' 99th percentiles of |error| (200 rows each) leaves out the 3 outliers
    # and at most 1 % of each split
    n_train, n_val = (int(text.rsplit("; ", 1)[1].split()[0]) for text in (train, val))
    assert 1 <= n_train <= 2 and n_val == 2
    summary = synthetic_summary(outliers={"train": 1, "val": 2})
    errors = summary[summary["target"] == "average_voltage"].assign(error=lambda f: f["mean"] - f["true"])
    expected = errors[errors["error"].abs() > half].groupby("split").size()
    assert (n_train, n_val) == (expected.get("train", 0), expected.get("val", 0))
    # the end bins hold no outlier: every bar lies within the range and none is a spike
    heights = [patch.get_height() for patch in voltage.patches]
    assert max(heights[:2] + heights[38:40]) < 0.2 * max(heights)
    assert voltage.get_xlabel() == "Predicted − DFT average voltage (V)"
    plt.close(figure)


def test_each_split_keeps_its_share_within_the_range():
    figure = plots.error_histogram_figure(synthetic_summary(outliers={"val": 3}), "m")
    voltage = figure.axes[0]
    bars = voltage.patches
    per_split = len(bars) // 2
    area = [sum(patch.get_height() * patch.get_width() for patch in bars[i * per_split:(i + 1) * per_split])
            for i in range(2)]
    beyond = [int(text.rsplit("; ", 1)[1].split()[0]) for text in legend_texts(voltage)[1:]]
    assert area == pytest.approx([1 - count / 200 for count in beyond])
    plt.close(figure)


def test_a_split_with_the_heavier_tail_is_clipped_no_more_than_one_percent():
    """The range was the pooled errors' 99th percentile: 3483 training errors set it, and 4-6 % of the
    388 validation errors, the heavier-tailed split the paper compares, went undrawn."""
    summary = synthetic_summary(n=400)
    val = summary.index[(summary["split"] == "val") & (summary["target"] == "average_voltage")]
    summary.loc[val[:40], "mean"] += 5 * SPREAD["average_voltage"]  # a tenth of validation 5 spreads off
    voltage = plots.error_histogram_figure(summary, "m").axes[0]
    n_train, n_val = (int(text.rsplit("; ", 1)[1].split()[0]) for text in legend_texts(voltage)[1:])
    assert n_val <= 4 and n_train == 0
    plt.close("all")


@pytest.mark.parametrize("share, text", [(0.5, "50 %"), (0.995, "99.5 %"), (0.0042, "0.4 %"), (1.0, "100 %"),
                                         (0.0, "0 %"), (0.9996, "99.96 %"), (1 / 4300, "0.02 %"), (0.99998, "99.998 %")])
def test_a_share_is_never_printed_as_0_or_100_percent_when_it_is_neither(share, text):
    """One network row among 4300 physics rows printed "physics: 100.0 % of rows"."""
    assert plots.percent(share) == text


def test_a_heavy_tail_does_not_squeeze_the_bulk_into_a_few_bins():
    """Capacity's few misses of 400-700 mAh/g stretched the range to +-266 mAh/g: 86-99 % of the
    errors fell into three of the 40 bins."""
    summary = synthetic_summary(n=388)
    val = summary.index[(summary["split"] == "val") & (summary["target"] == "capacity_grav")]
    summary.loc[val[:8], "mean"] += 60 * SPREAD["capacity_grav"]  # 2 % of validation far off
    capacity = plots.error_histogram_figure(summary, "m").axes[1]
    errors = summary[summary["target"] == "capacity_grav"].assign(error=lambda f: f["mean"] - f["true"])
    cap = max(abs(part.median()) + plots.HISTOGRAM_IQRS * float(np.subtract(*np.percentile(part, [75, 25])))
              for _, part in errors.groupby("split")["error"])
    half = capacity.get_xlim()[1]
    assert half == pytest.approx(cap)
    uncapped = max(float(np.percentile(part.abs(), 99)) for _, part in errors.groupby("split")["error"])
    assert half < 0.5 * uncapped
    heights = sorted((patch.get_height() for patch in capacity.patches), reverse=True)
    assert sum(heights[:6]) < 0.5 * sum(heights)  # the bulk spreads over many bins
    n_val = int(legend_texts(capacity)[2].rsplit("; ", 1)[1].split()[0])
    assert n_val >= 8
    plt.close("all")


def test_the_percentile_leaves_at_most_one_percent_of_388_rows_undrawn():
    """An interpolated 99th percentile of 388 errors lies between the 384th and 385th: 4 rows, 1.03 %."""
    errors = pd.Series(np.random.default_rng(3).normal(0, 1, 388))
    errors.iloc[:3] = 4.0  # past 5 IQR of a standard normal (6.7) they would be cut by the cap instead
    half = plots.histogram_half_width([errors])
    assert (errors.abs() > half).sum() <= 3
    assert half == errors.abs().sort_values().iloc[384]


@pytest.mark.parametrize("value, text", [(4.0, "4.00"), (13.1, "13.1"), (266.0, "266"), (0.06183, "0.0618")])
def test_legend_values_keep_three_digits(value, text):
    assert plots.three_digits(value) == text


def test_the_cap_follows_a_biased_split_and_leaves_a_mixed_target_drawn():
    """Capped at 5 IQR about 0, a biased split's errors were all undrawn, and a target of round-off
    physics rows plus a fifth of network rows kept only the round-off."""
    rng = np.random.default_rng(4)
    biased = pd.Series(rng.normal(2.0, 0.05, 388))
    half = plots.histogram_half_width([biased])
    assert (biased.abs() > half).mean() <= 0.01
    mixed = pd.Series(np.concatenate([rng.normal(0, 1e-8, 310), rng.normal(0, 0.3, 78)]))
    half = plots.histogram_half_width([mixed])
    assert (mixed.abs() > half).sum() <= 4 and half > 0.3

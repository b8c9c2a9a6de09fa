"""Monte Carlo ensemble: mean over seeds, the paper's 95 % CI (Eq. 8), and Table 3's metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from electrode_ml.metrics import regression_metrics
from electrode_ml.physics import apply_physics
from electrode_ml.schema import TARGETS
from electrode_ml.trees import VoltageTrees, blend_seeds, tree_voltage

Z_95 = 1.959963984540054


def stack_predictions(per_seed: list[pd.DataFrame]) -> pd.DataFrame:
    """Long table: battery_id, split, seed, target, predicted."""
    frames = [frame.melt(id_vars=["battery_id", "split", "seed"], value_vars=list(TARGETS),
                         var_name="target", value_name="predicted") for frame in per_seed]
    return pd.concat(frames, ignore_index=True)


def true_values(feature_frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """battery_id, split, target, true from the feature tables (which carry the targets)."""
    frames = [frame[["battery_id", *TARGETS]].assign(split=name) for name, frame in feature_frames.items()]
    return pd.concat(frames, ignore_index=True).melt(
        id_vars=["battery_id", "split"], value_vars=list(TARGETS), var_name="target", value_name="true")


def aggregate(stacked: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per electrode and target: true, mean, std (ddof=1), n and the paper's CI mean +- 1.96 std / sqrt(n)."""
    grouped = stacked.groupby(["battery_id", "split", "target"], sort=False)["predicted"]
    summary = grouped.agg(mean="mean", std="std", n="count").reset_index()
    half_width = Z_95 * summary["std"] / np.sqrt(summary["n"])
    summary["ci_low"] = summary["mean"] - half_width
    summary["ci_high"] = summary["mean"] + half_width
    merged = truth.merge(summary, on=["battery_id", "split", "target"], how="inner", validate="one_to_one")
    if len(merged) != len(truth):
        raise ValueError(f"{len(truth) - len(merged)} (electrode, target) pairs have no prediction")
    return merged[["battery_id", "split", "target", "true", "mean", "std", "n", "ci_low", "ci_high"]]


def summarise(per_seed: list[pd.DataFrame], truth: pd.DataFrame,
              physics: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stacked predictions and the summary with calibrated intervals of one model.

    With a physics table (battery_id + targets, NaN where physics cannot describe the row), the
    physics takes over where it holds; the base networks alone (energy = voltage x capacity, as
    the physics model computes it for rows physics cannot describe) are the interval fallback.
    """
    fallback = None
    if physics is not None:
        no_physics = physics.assign(**{target: np.nan for target in TARGETS})
        fallback = aggregate(stack_predictions([apply_physics(frame, no_physics) for frame in per_seed]), truth)
        per_seed = [apply_physics(frame, physics) for frame in per_seed]
    stacked = stack_predictions(per_seed)
    summary = add_prediction_intervals(mark_sources(aggregate(stacked, truth), physics), network_fallback=fallback)
    return stacked, summary


def metrics_by_split(frame: pd.DataFrame, predicted: str = "mean") -> dict:
    return {
        split: {target: regression_metrics(part["true"], part[predicted])
                for target, part in by_split.groupby("target", sort=False)}
        for split, by_split in frame.groupby("split", sort=False)
    }


def best_single_seed(stacked: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """Per target, the seed with the lowest validation MAE, and its metrics on every split (Table 3, right)."""
    joined = stacked.merge(truth, on=["battery_id", "split", "target"])
    joined["abs_error"] = (joined["predicted"] - joined["true"]).abs()
    val_mae = joined[joined["split"] == "val"].groupby(["target", "seed"])["abs_error"].mean()
    result = {}
    for target in TARGETS:
        seed = int(val_mae.loc[target].idxmin())
        chosen = joined[(joined["target"] == target) & (joined["seed"] == seed)]
        result[target] = {"seed": seed, **{
            split: regression_metrics(part["true"], part["predicted"]) for split, part in chosen.groupby("split")
        }}
    return result


def ensemble_metrics(stacked: pd.DataFrame, truth: pd.DataFrame, summary: pd.DataFrame,
                     singles: pd.DataFrame | None = None) -> dict:
    """Table 3's metrics and the intervals' coverage; ``singles`` are the members scored as single
    networks where they are not that (a blend with trees), ``stacked`` otherwise."""
    metrics = {
        "n_seeds": int(stacked["seed"].nunique()),
        # which networks the intervals were calibrated on: `electrode-ml predict` loads these and no others
        "seeds": sorted(int(seed) for seed in stacked["seed"].unique()),
        "ensemble_mean": metrics_by_split(summary),
        "best_single_seed": best_single_seed(stacked if singles is None else singles, truth),
        "train_mean_baseline": baseline_metrics(summary),
        "coverage": coverage(summary),
    }
    if "source" in summary and (summary["source"] == "physics").any():
        metrics["coverage_by_source"] = coverage_by_source(summary)
    if "pi_scale" in summary.attrs:
        metrics["prediction_interval"] = summary.attrs["pi_scale"]
    if "unseen_elements" in summary:
        metrics["outside_training"] = outside_training_metrics(summary)
    return metrics


def mark_applicability(summary: pd.DataFrame, flags: pd.DataFrame) -> pd.DataFrame:
    """The summary with each electrode's flags (:func:`electrode_ml.features.applicability`) appended."""
    marked = summary.merge(flags, on="battery_id", how="left", validate="many_to_one")
    marked.attrs = summary.attrs
    return marked


def evaluate_model(per_seed: list[pd.DataFrame], frames: dict[str, pd.DataFrame], *,
                   physics: pd.DataFrame | None = None, trees: VoltageTrees | None = None,
                   flags: pd.DataFrame | None = None, compare_seeds: list[int] | None = None) -> tuple[pd.DataFrame, dict]:
    """One model's summary and metrics from its networks' predictions (one table per seed) on the
    feature tables ``frames`` (split name -> table, which carry the true values).

    ``physics`` is a physics model's table (:func:`electrode_ml.physics.fit_physics`), ``trees`` its
    voltage trees, blended into the networks' voltage and recorded beside the metrics, ``flags`` the
    applicability flags appended to the summary. The ensemble rule and the evaluations on other
    splits (evaluation.py) both go through here, so that their metrics stay comparable.
    ``compare_seeds`` (the grouped evaluation's seeds) adds the metrics of the ensemble of those
    seeds alone as ``compare_seeds``: the grouped split's error set against a random-split ensemble
    of 50 networks would count the larger ensemble's gain as leakage.
    """
    truth = true_values(frames)
    voltage = tree_voltage(trees, frames) if trees is not None else None
    stacked, summary, singles = _summarise_members(per_seed, truth, physics, trees, voltage)
    if flags is not None:
        summary = mark_applicability(summary, flags)
    metrics = ensemble_metrics(stacked, truth, summary, singles)
    if trees is not None:
        metrics["voltage_trees"] = trees.record(voltage, frames)
    chosen = [frame for frame in per_seed if frame["seed"].iloc[0] in set(compare_seeds or ())]
    if chosen and len(chosen) < len(per_seed):
        subset = _summarise_members(chosen, truth, physics, trees, voltage)[1]
        metrics["compare_seeds"] = {"n_seeds": len(chosen), "ensemble_mean": metrics_by_split(subset)}
    return summary, metrics


def _summarise_members(per_seed: list[pd.DataFrame], truth: pd.DataFrame, physics: pd.DataFrame | None,
                       trees: VoltageTrees | None, voltage: pd.DataFrame | None):
    """:func:`summarise` of the members, blended with the trees where a model has them, and then the
    members scored one network at a time (None where they are that already)."""
    singles = None
    if trees is not None and trees.blends:
        alone = blend_seeds(per_seed, trees, voltage, physics, each_alone=True)
        singles = stack_predictions([apply_physics(frame, physics) for frame in alone] if physics is not None else alone)
        per_seed = blend_seeds(per_seed, trees, voltage, physics)
    stacked, summary = summarise(per_seed, truth, physics)
    return stacked, summary, singles


def outside_training(rows: pd.DataFrame, from_network: pd.Series | None = None) -> pd.Series:
    """Rows the training data cannot vouch for: network values of electrodes with elements, or space
    groups, no training electrode held, or with an element's share of a formula outside the training
    range (physics values do not depend on them), and any value of an electrode with DFT fields
    outside the training range. ``from_network`` says which rows hold a network value (default:
    ``source`` is 'network', as in a summary; ``electrode-ml screen`` passes its own for a wide table)."""
    if from_network is None:
        from_network = rows["source"] == "network"
    flagged = (rows["unseen_elements"] != "") & from_network
    for column in ("unseen_space_groups", "composition_outside_training"):
        if column in rows:
            flagged |= (rows[column] != "") & from_network
    if "dft_outside_training" in rows:
        flagged |= rows["dft_outside_training"] != ""
    return flagged


def outside_training_metrics(summary: pd.DataFrame) -> dict:
    """Per split and target with such rows: how many, their MAE beside the other rows', and how
    many of their DFT values the calibrated interval holds (it cannot widen for what it never saw)."""
    flagged = outside_training(summary)
    error = (summary["mean"] - summary["true"]).abs()
    inside = inside_interval(summary, "pi_low", "pi_high")
    result: dict = {}
    for (split, target), rows in summary[flagged].groupby(["split", "target"], sort=False):
        others = (summary["split"] == split) & (summary["target"] == target) & ~flagged
        result.setdefault(split, {})[target] = {
            "rows": int(len(rows)), "mae": float(error[rows.index].mean()),
            "mae_others": float(error[others].mean()), "pi_coverage": float(inside[rows.index].mean()),
            "battery_ids": rows["battery_id"].astype(str).tolist()}
    return result


def spread_floor(summary: pd.DataFrame) -> dict[str, float]:
    """Per target, the smallest spread the conformal score divides by: 1 % of the validation MAE.

    Only so that a zero spread (physics rows, where every seed agrees) never gives a zero-width
    interval. A floor of the median validation spread, as before, evened out the widths and left
    the widest intervals covering less (docs/accuracy.md, "What the coverage figures do not say":
    chosen on the validation split's widest fifth; on the test split 8-19 % narrower network
    intervals at 94-96 % coverage, and more on the framework-grouped split).
    """
    val = summary[summary["split"] == "val"]
    mae = (val["mean"] - val["true"]).abs().groupby(val["target"]).mean()
    return {target: float(max(0.01 * mae[target], 1e-9)) for target in mae.index}


def interval_scale(std, floor) -> np.ndarray:
    """Per-row scale of the conformal score: the ensemble spread combined with the floor."""
    return np.sqrt(np.asarray(std, dtype=float) ** 2 + np.asarray(floor, dtype=float) ** 2)


def conformal_scores(summary: pd.DataFrame, floors: dict[str, float]) -> pd.Series:
    """|DFT - mean| in units of each row's interval scale (spread combined with its target's floor)."""
    return (summary["true"] - summary["mean"]).abs() / interval_scale(summary["std"], summary["target"].map(floors))


def conformal_quantile(scores: np.ndarray, level: float = 0.95) -> float:
    """Split-conformal quantile: the ceil((n + 1) level)-th smallest score (infinite if n is too small)."""
    scores = np.sort(np.asarray(scores, dtype=float))
    rank = int(np.ceil((len(scores) + 1) * level))
    return float(scores[rank - 1]) if rank <= len(scores) else float("inf")


SOURCES = ("network", "physics")
CALIBRATION_SPLITS = {"network": ("val",), "physics": ("train", "val")}


def mark_sources(summary: pd.DataFrame, physics: pd.DataFrame | None) -> pd.DataFrame:
    """Add ``source``: 'physics' where the physics table gives the (electrode, target) outright."""
    summary = summary.copy()
    summary["source"] = "network"
    if physics is not None:
        held = physics.melt(id_vars="battery_id", value_vars=list(TARGETS), var_name="target", value_name="value")
        held = held[held["value"].notna()].set_index(["battery_id", "target"]).index
        is_held = pd.MultiIndex.from_frame(summary[["battery_id", "target"]]).isin(held)
        summary.loc[is_held, "source"] = "physics"
    return summary


def add_prediction_intervals(summary: pd.DataFrame, level: float = 0.95,
                             network_fallback: pd.DataFrame | None = None,
                             spread: np.ndarray | None = None) -> pd.DataFrame:
    """95 % prediction intervals: mean +- q * scale, q calibrated per target and per source.

    Unlike the paper's CI (the uncertainty of the mean of n networks, which shrinks as n grows),
    these are meant to contain the DFT value itself for 95 % of new electrodes. Network values are
    calibrated on the validation split, which no network trained on. Physics values (``source``
    'physics', see :func:`mark_sources`) are calibrated apart, because their errors are orders of
    magnitude smaller and one pooled quantile over-covers them; no parameter of theirs was fitted
    to a single row (stoichiometry fits nothing, the voltage 10 ion references by a median), so
    the training rows calibrate them too. Where a physics model has too few network values on the
    validation split (model2_phys has none), ``network_fallback``, the base networks' own summary,
    calibrates the network values of candidates that physics cannot describe. ``spread``, per
    row, replaces the ensemble spread as what the interval scales with, for a model that has none
    (the peer baseline: one model, std 0); it is taken as it stands, floored only near zero.
    """
    summary = summary.copy()
    if "source" not in summary:
        summary["source"] = "network"
    scored = summary if spread is None else summary.assign(std=np.asarray(spread, dtype=float))
    floors = spread_floor(scored if network_fallback is None else network_fallback)
    scale = interval_scale(scored["std"], summary["target"].map(floors))
    score = conformal_scores(scored, floors)
    quantiles: dict[str, dict[str, float]] = {}
    for target in summary["target"].unique():
        quantiles[target] = {}
        for source in SOURCES:
            rows = ((summary["target"] == target) & (summary["source"] == source)
                    & summary["split"].isin(CALIBRATION_SPLITS[source]))
            quantile = conformal_quantile(score[rows], level)
            if source == "network" and not np.isfinite(quantile) and network_fallback is not None:
                fallback = network_fallback[(network_fallback["target"] == target) & (network_fallback["split"] == "val")]
                quantile = conformal_quantile(conformal_scores(fallback, floors), level)
            if rows.any() or source == "network":
                quantiles[target][source] = quantile
    half = pd.Series([quantiles[target].get(source, np.inf) for target, source in zip(summary["target"], summary["source"])],
                     index=summary.index) * scale
    summary["pi_low"] = summary["mean"] - half
    summary["pi_high"] = summary["mean"] + half
    summary = summary[[name for name in summary.columns if name != "source"] + ["source"]]
    summary.attrs["pi_scale"] = {"level": level, "calibrated_on": {source: "+".join(CALIBRATION_SPLITS[source])
                                                                    for source in SOURCES},
                                 "quantile": quantiles, "spread_floor": floors}
    return summary


def inside_interval(summary: pd.DataFrame, low: str, high: str) -> pd.Series:
    """Whether each row's DFT value lies within its interval, ends included."""
    return (summary["true"] >= summary[low]) & (summary["true"] <= summary[high])


def coverage(summary: pd.DataFrame) -> dict:
    """Share of DFT values inside each interval kind, per split and target. One model (the peer
    baseline, n = 1) has no CI of a mean: its "CI" is the point itself, so no CI coverage."""
    has_ci = "n" not in summary or (summary["n"] > 1).any()
    kinds = ([("ci", "ci_low", "ci_high")] if has_ci else []) + ([("pi", "pi_low", "pi_high")] if "pi_low" in summary else [])
    result: dict = {}
    for kind, low, high in kinds:
        inside = inside_interval(summary, low, high)
        result[kind] = {split: {target: float(values.mean()) for target, values in part.groupby(summary["target"])}
                        for split, part in inside.groupby(summary["split"])}
    return result


def coverage_by_source(summary: pd.DataFrame) -> dict:
    """Test-split coverage of the calibrated interval and row counts, per target and source."""
    test = summary[summary["split"] == "test"]
    inside = inside_interval(test, "pi_low", "pi_high")
    return {target: {source: {"rows": int(len(part)), "pi": float(inside[part.index].mean())}
                     for source, part in by_target.groupby("source")}
            for target, by_target in test.groupby("target")}


def baseline_metrics(summary: pd.DataFrame) -> dict:
    """Predicting the training mean: the floor any model must beat."""
    train_means = summary[summary["split"] == "train"].groupby("target")["true"].mean()
    baseline = summary.assign(baseline=summary["target"].map(train_means))
    return metrics_by_split(baseline, predicted="baseline")

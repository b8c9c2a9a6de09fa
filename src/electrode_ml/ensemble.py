"""Monte Carlo ensemble: mean over seeds, the paper's 95 % CI (Eq. 8), and Table 3's metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from electrode_ml.metrics import regression_metrics
from electrode_ml.schema import TARGETS

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


def ensemble_metrics(stacked: pd.DataFrame, truth: pd.DataFrame, summary: pd.DataFrame) -> dict:
    return {
        "n_seeds": int(stacked["seed"].nunique()),
        "ensemble_mean": metrics_by_split(summary),
        "best_single_seed": best_single_seed(stacked, truth),
        "train_mean_baseline": baseline_metrics(summary),
    }


def baseline_metrics(summary: pd.DataFrame) -> dict:
    """Predicting the training mean: the floor any model must beat."""
    train_means = summary[summary["split"] == "train"].groupby("target")["true"].mean()
    baseline = summary.assign(baseline=summary["target"].map(train_means))
    return metrics_by_split(baseline, predicted="baseline")

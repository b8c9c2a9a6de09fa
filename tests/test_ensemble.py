import numpy as np
import pandas as pd
import pytest

from electrode_ml.ensemble import (Z_95, add_prediction_intervals, aggregate, baseline_metrics, best_single_seed,
                                   conformal_quantile, coverage, coverage_by_source, mark_applicability, mark_sources,
                                   outside_training, outside_training_metrics, stack_predictions)
from electrode_ml.metrics import regression_metrics
from electrode_ml.schema import TARGETS


def test_metrics_on_a_hand_case():
    metrics = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 2.0]))
    assert metrics["mae"] == pytest.approx(0.5)
    assert metrics["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 1) / 3))
    assert metrics["r"] == pytest.approx(np.corrcoef([1, 2, 3], [1.5, 2, 2])[0, 1])


def test_aggregate_gives_the_papers_ci():
    per_seed = [pd.DataFrame({"battery_id": ["a", "b"], "split": ["val", "val"], "seed": seed,
                              "average_voltage": [1.0 + seed, 2.0], "capacity_grav": [100.0, 100.0],
                              "energy_grav": [100.0, 200.0]}) for seed in range(4)]
    truth = stack_predictions(per_seed).drop_duplicates(["battery_id", "target"])[["battery_id", "split", "target"]]
    truth["true"] = 0.0
    summary = aggregate(stack_predictions(per_seed), truth)
    row = summary[(summary["battery_id"] == "a") & (summary["target"] == "average_voltage")].iloc[0]
    std = np.std([1, 2, 3, 4], ddof=1)
    assert row["mean"] == pytest.approx(2.5) and row["std"] == pytest.approx(std)
    assert row["ci_high"] - row["mean"] == pytest.approx(Z_95 * std / 2)  # n = 4 seeds: sqrt(n) = 2
    assert row["mean"] - row["ci_low"] == pytest.approx(Z_95 * std / 2)
    # every seed agrees on b's voltage: no spread, so the CI collapses onto the mean
    still = summary[(summary["battery_id"] == "b") & (summary["target"] == "average_voltage")].iloc[0]
    assert still["std"] == 0 and still["ci_low"] == still["mean"] == still["ci_high"] == 2.0


def test_conformal_quantile_rank():
    scores = np.arange(1, 20)  # n = 19: rank ceil(20 * 0.95) = 19
    assert conformal_quantile(scores, 0.95) == 19
    assert conformal_quantile(np.arange(1, 10), 0.95) == float("inf")  # too few points for 95 %


def test_calibrated_intervals_cover_95_percent_where_the_papers_ci_does_not():
    rng = np.random.default_rng(0)
    n = 6000
    spread = rng.uniform(0.2, 2.0, n)
    summary = pd.DataFrame({
        "battery_id": np.arange(n).astype(str), "split": np.where(np.arange(n) < 3000, "val", "test"),
        "target": "average_voltage", "mean": 0.0, "std": spread, "n": 50,
    })
    summary["true"] = rng.normal(0.0, spread)
    summary["ci_low"] = -Z_95 * spread / np.sqrt(50)
    summary["ci_high"] = -summary["ci_low"]
    result = coverage(add_prediction_intervals(summary))
    assert result["pi"]["test"]["average_voltage"] == pytest.approx(0.95, abs=0.015)
    assert result["pi"]["val"]["average_voltage"] >= 0.95
    assert result["ci"]["test"]["average_voltage"] < 0.4


def test_a_given_spread_scales_the_interval_of_a_model_without_ensemble_spread():
    rng = np.random.default_rng(1)
    n = 6000
    spread = np.where(np.arange(n) % 2 == 0, 0.2, 2.0)  # half the rows ten times noisier
    summary = pd.DataFrame({
        "battery_id": np.arange(n).astype(str), "split": np.where(np.arange(n) < 3000, "val", "test"),
        "target": "average_voltage", "mean": 0.0, "std": 0.0, "n": 1, "ci_low": 0.0, "ci_high": 0.0,
    })
    summary["true"] = rng.normal(0.0, spread)
    test = summary["split"] == "test"
    noisy = spread > 1
    one_width, scaled = add_prediction_intervals(summary), add_prediction_intervals(summary, spread=spread)
    for result in (one_width, scaled):
        inside = (result["true"] >= result["pi_low"]) & (result["true"] <= result["pi_high"])
        assert inside[test].mean() == pytest.approx(0.95, abs=0.015)
    inside = (one_width["true"] >= one_width["pi_low"]) & (one_width["true"] <= one_width["pi_high"])
    assert inside[test & ~noisy].mean() > 0.99 and inside[test & noisy].mean() < 0.92
    inside = (scaled["true"] >= scaled["pi_low"]) & (scaled["true"] <= scaled["pi_high"])
    for rows in (test & ~noisy, test & noisy):
        assert inside[rows].mean() == pytest.approx(0.95, abs=0.02)


def test_zero_spread_rows_still_get_an_interval():
    summary = pd.DataFrame({"battery_id": [str(i) for i in range(40)], "split": "val", "target": "capacity_grav",
                            "true": np.linspace(99, 101, 40), "mean": 100.0, "std": 0.0, "n": 50,
                            "ci_low": 100.0, "ci_high": 100.0})
    widths = add_prediction_intervals(summary).eval("pi_high - pi_low")
    assert (widths > 0).all()


def test_best_single_seed_is_chosen_on_validation():
    # seed 1 is best on validation (error 0.1), seed 0 best on test (0.05): only validation may choose
    rows = []
    for seed, val_error, test_error in ((0, 0.5, 0.05), (1, 0.1, 0.9), (2, 0.3, 0.2)):
        rows.append(pd.DataFrame({"battery_id": ["a", "b"], "split": ["val", "test"], "seed": seed,
                                  "average_voltage": [1 + val_error, 1 + test_error], "capacity_grav": [1.0, 1.0],
                                  "energy_grav": [1.0, 1.0]}))
    stacked = stack_predictions(rows)
    truth = stacked.drop_duplicates(["battery_id", "target"])[["battery_id", "split", "target"]].assign(true=1.0)
    chosen = best_single_seed(stacked, truth)["average_voltage"]
    assert chosen["seed"] == 1
    assert chosen["val"]["mae"] == pytest.approx(0.1) and chosen["test"]["mae"] == pytest.approx(0.9)


def _rows(n, split, source, spread, rng, target="capacity_grav"):
    std = np.zeros(n) if source == "physics" else np.full(n, spread)
    return pd.DataFrame({"battery_id": [f"{split}-{source}-{i}" for i in range(n)], "split": split, "target": target,
                         "mean": 0.0, "std": std, "n": 50, "true": rng.normal(0.0, spread, n), "source": source,
                         "ci_low": 0.0, "ci_high": 0.0})


def test_physics_and_network_values_are_calibrated_apart():
    # physics errors 1000x smaller than the network's: one pooled quantile would cover every physics row
    rng = np.random.default_rng(1)
    summary = pd.concat([_rows(n, split, source, spread, rng)
                         for split, n in (("train", 3000), ("val", 1000), ("test", 4000))
                         for source, spread in (("physics", 0.001), ("network", 1.0))], ignore_index=True)
    result = add_prediction_intervals(summary)
    test = result[result["split"] == "test"]
    inside = (test["true"] >= test["pi_low"]) & (test["true"] <= test["pi_high"])
    for source in ("physics", "network"):
        assert inside[test["source"] == source].mean() == pytest.approx(0.95, abs=0.015)
    assert set(result.attrs["pi_scale"]["quantile"]["capacity_grav"]) == {"physics", "network"}
    assert result.attrs["pi_scale"]["calibrated_on"] == {"network": "val", "physics": "train+val"}


def test_a_physics_model_without_network_rows_borrows_the_base_networks_calibration():
    rng = np.random.default_rng(2)
    summary = pd.concat([_rows(500, split, "physics", 0.001, rng) for split in ("train", "val", "test")],
                        ignore_index=True)
    networks = pd.concat([_rows(500, split, "network", 1.0, rng) for split in ("val", "test")], ignore_index=True)
    quantile = add_prediction_intervals(summary, network_fallback=networks).attrs["pi_scale"]["quantile"]
    assert np.isfinite(quantile["capacity_grav"]["network"]) and quantile["capacity_grav"]["network"] > 1
    assert not np.isfinite(add_prediction_intervals(summary).attrs["pi_scale"]["quantile"]["capacity_grav"]["network"])


def test_mark_sources_follows_the_physics_table():
    summary = pd.DataFrame({"battery_id": ["a", "a", "b"], "target": ["capacity_grav", "average_voltage", "capacity_grav"]})
    physics = pd.DataFrame({"battery_id": ["a", "b"], "average_voltage": [np.nan, np.nan], "capacity_grav": [100.0, np.nan],
                            "energy_grav": [np.nan, np.nan]})
    assert mark_sources(summary, physics)["source"].tolist() == ["physics", "network", "network"]


def test_rows_outside_the_training_data_are_flagged_and_scored_apart():
    summary = pd.DataFrame({
        "battery_id": ["a", "a", "b", "b", "c", "c"],
        "split": ["test"] * 6,
        "target": ["average_voltage", "capacity_grav"] * 3,
        "true": [3.0, 100.0, 3.0, 100.0, 3.0, 100.0],
        "mean": [3.1, 101.0, 4.5, 100.0, 3.0, 90.0],
        "source": ["network", "network", "network", "physics", "network", "network"],
    })
    summary["pi_low"], summary["pi_high"] = summary["mean"] - 0.5, summary["mean"] + 5.0
    flags = pd.DataFrame({"battery_id": ["a", "b", "c"], "unseen_elements": ["", "Pu", ""],
                          "dft_outside_training": ["", "", "charge_band_gap"]})
    marked = mark_applicability(summary, flags)
    assert marked["unseen_elements"].tolist() == ["", "", "Pu", "Pu", "", ""]
    # b's capacity comes from physics, which does not depend on the elements seen in training
    assert outside_training(marked).tolist() == [False, False, True, False, True, True]
    # with the space groups as inputs, a's unseen group flags its network values too (physics: not b's capacity)
    groups = mark_applicability(summary, flags.assign(unseen_space_groups=["charge:56", "discharge:8", ""]))
    assert outside_training(groups).tolist() == [True, True, True, False, True, True]
    scored = outside_training_metrics(marked)["test"]
    assert scored["average_voltage"]["rows"] == 2 and scored["average_voltage"]["battery_ids"] == ["b", "c"]
    assert scored["average_voltage"]["mae"] == pytest.approx(0.75)
    assert scored["average_voltage"]["mae_others"] == pytest.approx(0.1)
    assert scored["average_voltage"]["pi_coverage"] == pytest.approx(0.5)  # b's 3.0 lies below 4.5 - 0.5
    assert scored["capacity_grav"] == {"rows": 1, "mae": 10.0, "mae_others": 0.5, "pi_coverage": 0.0,
                                       "battery_ids": ["c"]}


def test_network_intervals_are_calibrated_on_validation_rows_only():
    # every row: spread 1 and the floor 1 % of the validation MAE of 10, 0.1, so each row's scale is
    # sqrt(1.01) (the median validation spread, 1, was the floor before: sqrt(2))
    val_errors = np.arange(1.0, 20.0)  # 19 validation rows
    train_errors = np.full(20, 0.01)  # networks fit the training rows far better than unseen ones
    errors = np.concatenate([train_errors, val_errors, [3.0, 30.0]])
    splits = ["train"] * 20 + ["val"] * 19 + ["test"] * 2
    summary = pd.DataFrame({"battery_id": [str(i) for i in range(len(errors))], "split": splits,
                            "target": "average_voltage", "true": errors, "mean": 0.0, "std": 1.0, "n": 3,
                            "ci_low": 0.0, "ci_high": 0.0})
    result = add_prediction_intervals(summary)
    # split conformal on the 19 validation scores k / sqrt(1.01): the ceil(20 * 0.95) = 19th smallest;
    # with the 20 training rows pooled in it would be the 38th of 39, the validation row of error 18
    expected = 19 / np.sqrt(1.01)
    assert result.attrs["pi_scale"]["quantile"]["average_voltage"]["network"] == pytest.approx(expected)
    assert result.attrs["pi_scale"]["spread_floor"]["average_voltage"] == pytest.approx(0.1)
    test = result[result["split"] == "test"]
    np.testing.assert_allclose(test["pi_high"], 19.0)  # q x sqrt(1 + 0.01) = the 19th validation error
    np.testing.assert_allclose(test["pi_low"], -19.0)


def test_coverage_by_source_counts_test_rows_only():
    #                 test: network 3 of 4 inside, physics 1 of 2; val: network 0 of 2, physics 1 of 1
    summary = pd.DataFrame({
        "split": ["test"] * 6 + ["val"] * 3,
        "target": "capacity_grav",
        "source": ["network"] * 4 + ["physics"] * 2 + ["network", "network", "physics"],
        "true": [1.0, 2.0, 3.0, 9.0, 5.0, 7.0, 9.0, 9.0, 1.0],
    })
    summary["pi_low"], summary["pi_high"] = 0.0, 5.0
    voltage = summary.assign(target="average_voltage", pi_high=10.0)  # another target: everything inside
    result = coverage_by_source(pd.concat([summary, voltage], ignore_index=True))
    assert result == {"capacity_grav": {"network": {"rows": 4, "pi": 0.75}, "physics": {"rows": 2, "pi": 0.5}},
                      "average_voltage": {"network": {"rows": 4, "pi": 1.0}, "physics": {"rows": 2, "pi": 1.0}}}


def test_baseline_predicts_the_training_mean_of_each_target():
    summary = pd.DataFrame({
        "split": ["train", "train", "val", "test", "test"] * 2,
        "target": ["average_voltage"] * 5 + ["capacity_grav"] * 5,
        "true": [1.0, 3.0, 10.0, 4.0, 6.0] + [100.0, 200.0, 150.0, 150.0, 50.0],
    })
    result = baseline_metrics(summary)
    # training means: 2 V and 150 mAh/g (the mean over every split would be 4.8 V and 130 mAh/g)
    assert result["train"]["average_voltage"]["mae"] == pytest.approx(1.0)
    assert result["val"]["average_voltage"]["mae"] == pytest.approx(8.0)
    assert result["test"]["average_voltage"]["mae"] == pytest.approx(3.0)
    assert result["test"]["average_voltage"]["rmse"] == pytest.approx(np.sqrt((4 + 16) / 2))
    assert result["val"]["capacity_grav"]["mae"] == pytest.approx(0.0)
    assert result["test"]["capacity_grav"]["mae"] == pytest.approx(50.0)


def test_a_network_interval_widens_with_the_ensemble_spread():
    """The score divides by the spread, floored only near zero: an electrode whose networks disagree four
    times as much gets a four times wider interval (with the median spread as the floor, 2.9 times:
    the widest intervals covered least)."""
    rows = 41
    summary = pd.DataFrame({"battery_id": [str(i) for i in range(rows)], "split": ["val"] * 39 + ["test"] * 2,
                            "target": "capacity_grav", "true": np.linspace(0.0, 40.0, rows), "mean": 20.0,
                            "std": [1.0] * 39 + [1.0, 4.0], "n": 50, "ci_low": 0.0, "ci_high": 0.0})
    result = add_prediction_intervals(summary)
    floor = result.attrs["pi_scale"]["spread_floor"]["capacity_grav"]
    assert floor == pytest.approx(0.01 * np.abs(summary["true"][:39] - 20.0).mean())  # 1 % of the validation MAE
    test = result.query("split == 'test'")
    widths = (test["pi_high"] - test["pi_low"]).to_numpy()
    assert widths[1] / widths[0] == pytest.approx(np.sqrt((16 + floor**2) / (1 + floor**2)))
    assert widths[1] / widths[0] > 3.9


@pytest.mark.parametrize("level", [0.1, 2.0, 3.7, 412.3])
def test_r_against_a_constant_prediction_is_undefined_whatever_its_value(level):
    """The training-mean baseline: np.std of a constant came out 0 (r NaN) or 1e-13 (r -1e-16) by value."""
    true = np.random.default_rng(0).normal(size=429)
    assert np.isnan(regression_metrics(true, np.full(429, level))["r"])
    assert np.isnan(regression_metrics(np.full(429, level), true)["r"])
    assert regression_metrics(true, true + level)["r"] == pytest.approx(1.0)


def test_the_grouped_evaluations_seeds_are_also_scored_alone_on_the_random_split():
    """The grouped split's 10 networks were set against all 50 of the random split, counting the
    larger ensemble's gain as leakage; the ensemble rule scores the same seeds' ensemble beside it."""
    from electrode_ml.ensemble import evaluate_model

    rng = np.random.default_rng(0)
    frames = {split: pd.DataFrame({"battery_id": [f"{split}{i}" for i in range(40)],
                                   **{target: rng.uniform(1, 5, 40) for target in TARGETS}})
              for split in ("train", "val", "test")}
    per_seed = [pd.concat([frame.assign(split=split, seed=seed, **{t: frame[t] + rng.normal(0, 1, 40) for t in TARGETS})
                           for split, frame in frames.items()], ignore_index=True)
                for seed in range(5)]
    metrics = evaluate_model(per_seed, frames, compare_seeds=[0, 1])[1]
    alone = evaluate_model(per_seed[:2], frames)[1]
    assert metrics["compare_seeds"] == {"n_seeds": 2, "ensemble_mean": alone["ensemble_mean"]}
    assert metrics["compare_seeds"]["ensemble_mean"] != metrics["ensemble_mean"]
    # no grouped evaluation, or every seed in it: nothing to add
    assert "compare_seeds" not in evaluate_model(per_seed, frames)[1]
    assert "compare_seeds" not in evaluate_model(per_seed, frames, compare_seeds=list(range(5)))[1]


def test_the_papers_ci_uses_the_normal_quantile():
    """The CI constant was only ever compared with itself: 2.0 in its place passed every test."""
    from scipy.stats import norm

    assert Z_95 == pytest.approx(norm.ppf(0.975), abs=1e-12)

"""Gradient-boosted trees beside the networks for model1_phys's learned voltage (trees.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from electrode_ml.schema import TARGETS
from electrode_ml.trees import VOLTAGE, VoltageTrees, blend_seeds, fit_voltage_trees, tree_columns, voltage_mae


def synthetic_frames(rows: int = 300, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Voltage is a step in a redox column; the formula PCA columns are noise."""
    rng = np.random.default_rng(seed)
    frames = {}
    for split, n in (("train", rows), ("val", rows // 3), ("test", rows // 3)):
        redox = rng.uniform(0, 1, n)
        frame = pd.DataFrame({
            "battery_id": [f"{split}-{i}" for i in range(n)],
            "average_voltage": np.where(redox > 0.5, 4.0, 2.0) + rng.normal(0, 0.05, n),
            "capacity_grav": rng.uniform(50, 300, n),
            "energy_grav": rng.uniform(100, 900, n),
            "formula_charge__pca0": rng.normal(size=n),
            "formula_discharge__pca0": rng.normal(size=n),
            "redox__couple_share": redox,
            "ion__working_ion_Li": 1.0,
        })
        frames[split] = frame
    return frames


def fit_trees(frames: dict[str, pd.DataFrame], **settings):
    """fit_voltage_trees of a plain family unless told otherwise: one model, equal weights, one share everywhere."""
    return fit_voltage_trees(frames, **{"bags": 1, "capacity_weights": None, "high_capacity_weight": None, **settings})


def test_the_config_settings_must_be_given():
    """Every voltage_trees key but max_iter has no default: config.yaml's differ from a plain family's."""
    for missing in ("weight", "bags", "capacity_weights", "high_capacity_weight"):
        settings = {"weight": 0.5, "bags": 1, "capacity_weights": None, "high_capacity_weight": None}
        del settings[missing]
        with pytest.raises(TypeError, match=missing):
            fit_voltage_trees(synthetic_frames(rows=30), **settings)


def test_trees_read_every_column_but_the_formula_components():
    names = ["formula_charge__pca0", "redox__a", "formula_discharge__pca3", "ion__working_ion_Na", "crystal__x"]
    np.testing.assert_array_equal(tree_columns(names), [1, 3, 4])


def test_trees_learn_the_voltage_from_the_redox_columns():
    frames = synthetic_frames()
    trees, voltage = fit_trees(frames, weight=0.5)
    assert set(voltage["split"]) == {"train", "val", "test"} and len(voltage) == sum(map(len, frames.values()))
    mae = voltage_mae(voltage, frames)
    spread = (frames["test"]["average_voltage"] - frames["train"]["average_voltage"].mean()).abs().mean()
    assert mae["test"] < 0.1 < spread  # the step is found; predicting the mean is off by about 1 V


def test_bagged_trees_average_models_that_differ_by_their_columns():
    frames = synthetic_frames()
    frames = {split: frame.assign(redox__noise=np.random.default_rng(5).normal(size=len(frame)))
              for split, frame in frames.items()}
    trees, voltage = fit_trees(frames, weight=0.5, bags=3)
    names = trees.feature_names
    x = frames["test"][names].to_numpy(np.float32)
    members = np.array([model.predict(x[:, trees.columns]) for model in trees.models])
    assert len(members) == 3 and not np.allclose(members[0], members[1])
    np.testing.assert_allclose(trees.predict(x), members.mean(axis=0), rtol=1e-12)
    test_voltage = voltage[voltage["split"] == "test"]["average_voltage"].to_numpy()
    np.testing.assert_allclose(test_voltage, trees.predict(x), rtol=1e-12)
    # the family is fixed by bags: a second fit gives the same voltage to the last bit
    again, _ = fit_trees(frames, weight=0.5, bags=3)
    np.testing.assert_array_equal(again.predict(x), trees.predict(x))
    assert trees.record(voltage, frames)["bags"] == 3


def test_capacity_weights_pull_the_voltage_toward_high_capacity_electrodes():
    # The trees cannot tell the two halves apart (no column sees the capacity): equal weights give
    # their plain mean voltage, capacity weights the capacity-weighted mean, here (2*50 + 4*300) / 350.
    frames = synthetic_frames()
    for frame in frames.values():
        high = np.arange(len(frame)) % 2 == 1
        frame["redox__couple_share"] = 0.5
        frame["capacity_grav"] = np.where(high, 300.0, 50.0)
        frame["average_voltage"] = np.where(high, 4.0, 2.0)
    test = frames["test"]
    equal, _ = fit_trees(frames, weight=0.5)
    weighted, voltage = fit_trees(frames, weight=0.5, capacity_weights=(5, 95))
    x = test[equal.feature_names].to_numpy(np.float32)
    np.testing.assert_allclose(equal.predict(x), 3.0, atol=1e-6)
    np.testing.assert_allclose(weighted.predict(x), (2 * 50 + 4 * 300) / 350, atol=1e-6)
    assert equal.weight_bounds is None and weighted.weight_bounds == (50.0, 300.0)
    record = weighted.record(voltage, frames)
    assert record["capacity_weights"] == (5, 95) and record["weight_bounds_mAh_g"] == (50.0, 300.0)


def test_capacity_weights_are_clipped_to_the_percentiles():
    # One alloy-like electrode of 100000 mAh/g and 10 V: unclipped it would outweigh the other 299
    frames = synthetic_frames()
    train = frames["train"]
    train["redox__couple_share"] = 0.5
    train["average_voltage"] = 3.0
    train.loc[0, ["capacity_grav", "average_voltage"]] = [1e5, 10.0]
    trees, _ = fit_trees(frames, weight=0.5, capacity_weights=(0, 99))
    low, high = np.percentile(train["capacity_grav"], [0, 99])
    assert trees.weight_bounds == (low, high) and high < 300
    x = frames["test"][trees.feature_names].to_numpy(np.float32)
    # the outlier weighs at most high / (sum of the others) of the mean: under 0.7 %, so below 3.05 V
    assert np.all(trees.predict(x) < 3.05)


def test_only_formula_columns_is_a_clear_error():
    frames = {split: frame.drop(columns=["redox__couple_share", "ion__working_ion_Li"])
              for split, frame in synthetic_frames().items()}
    with pytest.raises(ValueError, match="formula PCA"):
        fit_trees(frames, weight=0.5)


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_blend_moves_each_network_voltage_toward_the_trees(weight):
    frames = synthetic_frames()
    names = [name for name in frames["train"].columns if name not in ("battery_id", *TARGETS)]
    x = frames["test"][names].to_numpy(np.float32)
    trees = VoltageTrees(names, weight=weight).fit(frames["train"][names].to_numpy(np.float32),
                                                   frames["train"]["average_voltage"].to_numpy())
    rng = np.random.default_rng(1)
    members = rng.normal(3.0, 0.5, size=(7, len(x), len(TARGETS)))
    blended = trees.blend(members, x, frames["test"]["capacity_grav"].to_numpy())
    tree_voltage = trees.predict(x)
    # the mean is the weighted mean of the two families, the spread the networks' times their share
    np.testing.assert_allclose(blended[..., VOLTAGE].mean(0),
                               (1 - weight) * members[..., VOLTAGE].mean(0) + weight * tree_voltage, rtol=1e-12)
    np.testing.assert_allclose(blended[..., VOLTAGE].std(0), (1 - weight) * members[..., VOLTAGE].std(0), atol=1e-12)
    others = [index for index in range(len(TARGETS)) if index != VOLTAGE]
    np.testing.assert_array_equal(blended[..., others], members[..., others])
    assert not np.shares_memory(blended, members)


def test_blend_seeds_matches_blend_and_weight_zero_is_the_networks():
    frames = synthetic_frames()
    trees, voltage = fit_trees(frames, weight=0.25)
    test = frames["test"]
    per_seed = [pd.DataFrame({"battery_id": test["battery_id"], "split": "test", "seed": seed,
                              **{target: np.full(len(test), 1.0 + seed) for target in TARGETS}})
                for seed in range(3)]
    physics = test[["battery_id", *TARGETS]]
    blended = blend_seeds(per_seed, trees, voltage, physics)
    by_id = voltage.set_index("battery_id")["average_voltage"].loc[test["battery_id"]].to_numpy()
    for seed, frame in enumerate(blended):
        np.testing.assert_allclose(frame["average_voltage"], 0.75 * (1.0 + seed) + 0.25 * by_id, rtol=1e-12)
        np.testing.assert_array_equal(frame["capacity_grav"], per_seed[seed]["capacity_grav"])
    trees.weight = 0.0
    assert blend_seeds(per_seed, trees, voltage, physics) is per_seed


def test_above_the_upper_capacity_bound_the_trees_take_their_high_share():
    frames = synthetic_frames()
    trees, voltage = fit_trees(frames, weight=0.5, capacity_weights=(5, 95), high_capacity_weight=0.8)
    bound = np.percentile(frames["train"]["capacity_grav"], 95)
    assert trees.weight_bounds[1] == pytest.approx(bound)
    capacity = np.array([bound - 1.0, bound + 1.0, np.nan, 1000.0])
    np.testing.assert_array_equal(trees.shares(capacity), [0.5, 0.8, 0.5, 0.8])  # NaN: not described
    test = frames["test"]
    physics = test[["battery_id", *TARGETS]].assign(capacity_grav=np.where(np.arange(len(test)) % 2, 1000.0, 10.0))
    per_seed = [test[["battery_id", *TARGETS]].assign(average_voltage=1.0 + seed) for seed in range(3)]
    by_id = voltage.set_index("battery_id")["average_voltage"].loc[test["battery_id"]].to_numpy()
    share = np.where(np.arange(len(test)) % 2, 0.8, 0.5)
    blended = np.stack([frame["average_voltage"] for frame in blend_seeds(per_seed, trees, voltage, physics)])
    # the mean moves the row's share of the way; the spread stays the even blend's (the networks' halved)
    np.testing.assert_allclose(blended.mean(0), (1 - share) * 2.0 + share * by_id, rtol=1e-12)
    np.testing.assert_allclose(blended - blended.mean(0), np.broadcast_to(0.5 * (np.arange(3.0)[:, None] - 1.0), blended.shape),
                               atol=1e-12)
    names = [name for name in test.columns if name not in ("battery_id", *TARGETS)]
    members = np.stack([frame[list(TARGETS)].to_numpy() for frame in per_seed])
    from_arrays = trees.blend(members, test[names].to_numpy(np.float32), physics["capacity_grav"].to_numpy())
    np.testing.assert_allclose(from_arrays[..., VOLTAGE], np.stack(
        [frame["average_voltage"] for frame in blend_seeds(per_seed, trees, voltage, physics)]), rtol=1e-12)
    # weight 0 with a high share still blends above the bound
    trees.weight = 0.0
    assert blend_seeds(per_seed, trees, voltage, physics) is not per_seed
    # rows come back in each seed's own order
    shuffled = [frame.iloc[::-1].reset_index(drop=True) for frame in per_seed]
    again = blend_seeds(shuffled, trees, voltage, physics)
    for frame, other in zip(blend_seeds(per_seed, trees, voltage, physics), again):
        pd.testing.assert_series_equal(frame.set_index("battery_id")["average_voltage"],
                                       other.set_index("battery_id")["average_voltage"].loc[frame["battery_id"]])
    assert trees.record(voltage, frames)["high_capacity_weight"] == 0.8


def test_the_best_single_seed_of_a_blend_is_one_network_with_the_trees():
    """Above the bound a member is the blend's mean plus half its network's offset, which mixes in the
    other networks; the best single seed is scored as that network and the trees alone would predict."""
    from electrode_ml.ensemble import evaluate_model

    frames = synthetic_frames()
    trees, voltage = fit_trees(frames, weight=0.5, capacity_weights=(5, 95), high_capacity_weight=0.8)
    rows = pd.concat([frame.assign(split=split) for split, frame in frames.items()], ignore_index=True)
    physics = rows[["battery_id", *TARGETS]].assign(average_voltage=np.nan, energy_grav=np.nan,
                                                    capacity_grav=np.where(np.arange(len(rows)) % 2, 1000.0, 10.0))
    rng = np.random.default_rng(1)
    per_seed = [rows[["battery_id", "split", *TARGETS]].assign(seed=seed, average_voltage=rows["average_voltage"]
                                                               + rng.normal(0, 0.3 + 0.2 * seed, len(rows)))
                for seed in range(3)]
    metrics = evaluate_model(per_seed, frames, physics=physics, trees=trees)[1]
    best = metrics["best_single_seed"]["average_voltage"]
    by_id = voltage.set_index("battery_id")["average_voltage"]
    share = trees.shares(physics["capacity_grav"].to_numpy())
    alone = {seed: (1 - share) * frame["average_voltage"] + share * by_id.loc[frame["battery_id"]].to_numpy()
             for seed, frame in enumerate(per_seed)}
    val = (rows["split"] == "val").to_numpy()
    val_mae = {seed: np.abs(values[val] - rows["average_voltage"][val]).mean() for seed, values in alone.items()}
    assert best["seed"] == min(val_mae, key=val_mae.get)
    assert best["val"]["mae"] == pytest.approx(val_mae[best["seed"]], rel=1e-12)
    members = blend_seeds(per_seed, trees, voltage, physics)[best["seed"]]["average_voltage"]
    assert np.abs(members[val] - rows["average_voltage"][val]).mean() != pytest.approx(best["val"]["mae"], rel=1e-6)


def test_a_high_capacity_share_needs_the_capacity_weights():
    with pytest.raises(ValueError, match="high_capacity_weight needs capacity_weights"):
        fit_trees(synthetic_frames(), weight=0.5, high_capacity_weight=0.8)


def test_each_tree_model_boosts_the_configured_rounds():
    trees, _ = fit_trees(synthetic_frames(), weight=0.5, bags=2, max_iter=7)
    assert [model.n_iter_ for model in trees.models] == [7, 7]
    assert trees.params["max_iter"] == 7 and trees.params["learning_rate"] == 0.05
    default, _ = fit_trees(synthetic_frames(rows=60), weight=0.5)
    assert default.models[0].n_iter_ == 1000  # config.yaml's voltage_trees.max_iter


def test_trees_pickled_before_the_high_share_blend_evenly():
    trees = VoltageTrees(["redox__a"], weight=0.5)
    del trees.high_capacity_weight  # what an older pickle's __dict__ lacks: the class default answers
    assert trees.high_capacity_weight is None
    np.testing.assert_array_equal(trees.shares(np.array([10.0, 5000.0])), [0.5, 0.5])


def test_float64_features_get_the_voltage_of_their_float32_values():
    # 0.7 repeats, so a split threshold sits exactly on float32(0.7), which is below 0.7: a float64
    # 0.7 compared as is would fall on the other side of the split than the value fitted on
    rng = np.random.default_rng(0)
    column = np.concatenate([rng.uniform(0, 1, 2000), np.full(600, 0.7)])
    features = column[:, None].astype(np.float32)
    voltage = np.where(features[:, 0] > np.float32(0.7), 4.0, 1.0)
    trees = VoltageTrees(["redox__share"], weight=0.5).fit(features, voltage)
    seventy = np.array([[0.7]])
    assert trees.predict(seventy) == pytest.approx(trees.predict(seventy.astype(np.float32)))
    assert trees.predict(seventy)[0] == pytest.approx(1.0, abs=0.1)


class _RecordingModel:
    """A tree model that records the OpenMP threads and the thread it predicted on."""

    def __init__(self, model, seen: list):
        self.model, self.seen = model, seen

    def predict(self, features):
        import threading

        from electrode_ml.trees import openmp_threads

        self.seen.append((openmp_threads(), threading.current_thread().name))
        return self.model.predict(features)


@pytest.mark.parametrize("job_threads, bags, threads_each, pool", [
    (1, 4, 1, False),  # a workflow job of one thread: the models one after the other
    (2, 4, 1, True),   # two threads: the models side by side, one thread each
    (8, 4, 2, True),   # more threads than models: each model its share
    (2, 1, 2, False),  # one model: all the threads, no pool
])
def test_tree_models_predict_side_by_side_on_their_share_of_the_threads(job_threads, bags, threads_each, pool):
    """scikit-learn opens a parallel region per tree: on a busy machine each waited for a descheduled
    thread (on 2 cores, 98,900 candidates 49.3 s beside one busy core, 30.8 s with the models side
    by side). The models now go side by side, the threads shared out among them, and the caller's
    own limit is left as it was."""
    from threadpoolctl import threadpool_limits

    from electrode_ml.trees import openmp_threads

    frames = synthetic_frames()
    trees, _ = fit_trees(frames, weight=0.5, bags=bags)
    x = frames["test"][trees.feature_names].to_numpy(np.float32)
    expected = np.mean([model.predict(x[:, trees.columns]) for model in trees.models], axis=0)
    seen: list = []
    trees.models = [_RecordingModel(model, seen) for model in trees.models]
    with threadpool_limits(limits=job_threads, user_api="openmp"):
        np.testing.assert_array_equal(trees.predict(x), expected)
        assert openmp_threads() == job_threads
    assert [threads for threads, _ in seen] == [threads_each] * bags
    assert any(name.startswith("electrode-ml-trees") for _, name in seen) == pool

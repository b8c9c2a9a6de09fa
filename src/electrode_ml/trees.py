"""Gradient-boosted trees beside model1_redox's networks: a second model family for a learned voltage.

model1_phys has no DFT, so its voltage is learned. Trees and networks err differently on the redox
features, and their average beats either: measured on the snapshot (random split; 50 Huber
networks, one tree model reading every column), validation / test voltage MAE networks 0.344 /
0.359 V, trees 0.338 / 0.372 V, half and half 0.320 / 0.344 V; on the framework-grouped split (10
networks) test 0.483, 0.458 and 0.443 V.

The trees read the redox block, the ion and the crystal systems, not the formula's PCA
components: a tree splits on one column at a time, and rotated element fractions are what it
does worst with (validation 0.383 V with them, 0.338 V without). The family is ``bags`` tree
models that differ only in the random half of the columns each split may choose from
(``max_features``), averaged (what that gained: at ``TREE_PARAMS``). Without early stopping
nothing else is drawn at random, so ``bags`` fixes the family. Each training electrode weighs
its capacity in the fit, clipped (``capacity_weights``, see :func:`fit_voltage_trees`):
model1_phys's energy is V x C, so the voltage errors that matter most sit on high capacities.
Above the upper clip the trees' share rises (``high_capacity_weight``): they were fitted to weigh
those electrodes most, and there they err less than the networks (measured: config.yaml and
docs/accuracy.md, "A higher share above the upper bound"). The electrode's capacity there is the
physics model's, from stoichiometry; a row the physics does not describe keeps the even share.
The family adds no spread: each network's voltage is shifted toward the trees' mean by the same
amount. The ensemble's mean becomes the weighted mean of the two families, its spread (and the
paper's CI) the networks' spread times the networks' share below the bound, and the calibrated
interval is calibrated on the blended values.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import ThreadpoolController

from electrode_ml.metrics import regression_metrics
from electrode_ml.schema import TARGETS
from electrode_ml.tables import frame_matrices

VOLTAGE = TARGETS.index("average_voltage")
CAPACITY = TARGETS.index("capacity_grav")
# Measured on the snapshot (validation / test voltage MAE of the trees, then of the half-and-half
# blend): learning rate 0.1 x 500 trees 0.342 / 0.377, blend 0.319 / 0.346; 0.05 x 1000 0.338 /
# 0.374, blend 0.318 / 0.344; 0.03 x 2000, in twice the time, 0.334 / 0.375, blend 0.315 / 0.345.
# Each split chooses from a random half of the columns; a model's random_state (its index in the
# family) fixes which. On one run's networks, blend voltage MAE validation / test: one model of
# every column 0.320 / 0.344 V, one of half the columns 0.315 / 0.344, the mean of 4 such 0.314 /
# 0.341 (grouped split: 0.393 / 0.444, 0.388 / 0.445, 0.390 / 0.442); 8 such, or a quarter of the
# columns, did no better (0.314 / 0.341 both, with 8). The rounds (max_iter) are the config's
# voltage_trees.max_iter (1000).
TREE_PARAMS = {"learning_rate": 0.05, "early_stopping": False, "max_features": 0.5}
DEFAULT_ROUNDS = 1000
# The feature columns left out: the formulas' PCA components (see the module docstring).
LEFT_OUT_PREFIX = "formula_"


def as_tree_input(features: np.ndarray) -> np.ndarray:
    """Features in float32, the featuriser's dtype, for fitting and predicting alike.

    With more distinct values than bins, a split threshold is a percentile of the column and often
    sits exactly on a repeated value (a fraction such as 1/3); a float64 copy of that value lies on
    the other side of the float32 one. The snapshot's trees fitted on float32 and fed float64 gave
    a training voltage MAE of 0.179 V instead of 0.152 V.
    """
    return np.asarray(features, dtype=np.float32)


def tree_columns(feature_names: list[str]) -> np.ndarray:
    """Indices of the feature columns the trees read."""
    return np.array([index for index, name in enumerate(feature_names) if not name.startswith(LEFT_OUT_PREFIX)])


@dataclass
class VoltageTrees:
    """Trees fitted on the training split's voltage; ``weight`` is their share of the blended voltage,
    ``bags`` the number of tree models averaged, ``capacity_weights`` the config's percentiles
    (None: equal weights), ``weight_bounds`` the capacities (mAh/g) they came to, and
    ``high_capacity_weight`` the trees' share above the upper one (None: ``weight`` everywhere),
    ``max_iter`` each model's boosting rounds."""

    feature_names: list[str]
    weight: float
    bags: int = 1
    capacity_weights: tuple[float, float] | None = None
    weight_bounds: tuple[float, float] | None = None
    models: list[HistGradientBoostingRegressor] = field(default_factory=list, repr=False)
    high_capacity_weight: float | None = None
    max_iter: int = DEFAULT_ROUNDS

    @property
    def params(self) -> dict:
        """Every tree model's settings but its random_state."""
        return {**TREE_PARAMS, "max_iter": self.max_iter}

    @property
    def columns(self) -> np.ndarray:
        return tree_columns(self.feature_names)

    def fit(self, features: np.ndarray, voltage: np.ndarray,
            sample_weight: np.ndarray | None = None) -> "VoltageTrees":
        columns = self.columns
        if len(columns) == 0:
            raise ValueError("voltage trees: every feature column is a formula PCA component; nothing to read")
        features, voltage = as_tree_input(features)[:, columns], np.asarray(voltage, dtype=float)
        self.models = [HistGradientBoostingRegressor(**self.params, random_state=bag)
                       .fit(features, voltage, sample_weight=sample_weight) for bag in range(self.bags)]
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Voltage of each row of the full feature matrix (the featuriser's column order)."""
        features = as_tree_input(features)
        if len(features) == 0:
            return np.zeros(0)
        # scikit-learn predicts in float64: converted once here (exactly: these are float32 values), not
        # once per model side by side (+85 MB peak for 200,000 candidates)
        features = np.ascontiguousarray(features[:, self.columns], dtype=np.float64)
        threads = openmp_threads()
        workers = min(len(self.models), threads)
        if workers == 1:
            return np.mean([model.predict(features) for model in self.models], axis=0)
        each = functools.partial(_prediction_on_threads, threads=threads // workers)
        with ThreadPoolExecutor(workers, thread_name_prefix="electrode-ml-trees") as pool:
            return np.mean(list(pool.map(each, self.models, [features] * len(self.models))), axis=0)

    @property
    def blends(self) -> bool:
        return self.weight > 0 or bool(self.high_capacity_weight)

    def shares(self, capacity: np.ndarray) -> np.ndarray:
        """The trees' share of each row's voltage, from its physics capacity (NaN: not described)."""
        capacity = np.asarray(capacity, dtype=float)
        if self.high_capacity_weight is None:
            return np.full(capacity.shape, self.weight)
        return np.where(capacity > self.weight_bounds[1], self.high_capacity_weight, self.weight)

    def blend_voltages(self, network_voltage: np.ndarray, tree_voltage: np.ndarray, capacity: np.ndarray,
                       each_alone: bool = False) -> np.ndarray:
        """Networks' voltages (n_networks, n_rows) blended with the trees' (n_rows): the mean moves each
        row's share of the way to the trees', from its physics capacity (NaN where it does not hold).
        Each network keeps its offset from the networks' mean times their share below the bound
        (1 - ``weight``), so the spread, hence the CI and the calibrated interval's scale, is that of
        the even blend everywhere: the trees bring no spread of their own to say how much surer a
        higher share makes a row (measured: scaled by the higher share instead, the energy interval
        covered 83 % of the test electrodes above the bound, against 94 % so). ``each_alone``: each
        network blended with the trees by itself, as one network and the trees would predict (the
        best single seed's score); the two agree below the bound."""
        if each_alone:
            return blend_voltage(network_voltage, tree_voltage, self.shares(capacity))
        mean = network_voltage.mean(axis=0)
        return blend_voltage(mean, tree_voltage, self.shares(capacity)) + (1.0 - self.weight) * (network_voltage - mean)

    def blend(self, members: np.ndarray, features: np.ndarray, capacity: np.ndarray) -> np.ndarray:
        """Networks' predictions (n_networks, n_rows, 3) with their voltages blended (:meth:`blend_voltages`)."""
        blended = np.array(members, dtype=float, copy=True)
        if self.blends:
            blended[..., VOLTAGE] = self.blend_voltages(blended[..., VOLTAGE], self.predict(features), capacity)
        return blended

    def record(self, voltage: pd.DataFrame, frames: dict[str, pd.DataFrame]) -> dict:
        """What metrics.json keeps of the trees: their shares and their own voltage MAE per split."""
        return {"weight": self.weight, "high_capacity_weight": self.high_capacity_weight, "bags": self.bags,
                "capacity_weights": self.capacity_weights, "weight_bounds_mAh_g": self.weight_bounds,
                "trees_alone_voltage_mae": voltage_mae(voltage, frames)}


@functools.cache
def _openmp() -> ThreadpoolController:
    """The OpenMP runtimes loaded (scikit-learn's among them), found once: finding them reads every
    loaded library, about 1 ms a time, which five times a call added 6 ms to model1_phys's timing."""
    return ThreadpoolController().select(user_api="openmp")


def openmp_threads() -> int:
    """The OpenMP thread count this thread runs with (a job's ``threads``, all cores outside one)."""
    return max((pool["num_threads"] for pool in _openmp().info()), default=1)


def _prediction_on_threads(model: HistGradientBoostingRegressor, features: np.ndarray, threads: int) -> np.ndarray:
    """One tree model's prediction on its share of the threads; the models go side by side.

    scikit-learn opens a parallel region per tree, 4000 of them per call, and on a busy machine (a
    login node, a second job) each waited for a descheduled thread: on 2 cores, 98,900 candidates
    took 49.3 s to score beside one busy core, 30.8 s with the models side by side on one thread each
    (23.7 s idle, from 26.5). The limit is set in the thread that predicts, since OpenMP keeps it
    per thread.
    """
    with _openmp().limit(limits=threads):
        return model.predict(features)


def blend_voltage(network_voltage: np.ndarray, tree_voltage: np.ndarray, weight: float | np.ndarray) -> np.ndarray:
    return (1.0 - weight) * network_voltage + weight * tree_voltage


def fit_voltage_trees(frames: dict[str, pd.DataFrame], *, weight: float, bags: int,
                      capacity_weights: tuple[float, float] | None,
                      high_capacity_weight: float | None,
                      max_iter: int = DEFAULT_ROUNDS) -> tuple[VoltageTrees, pd.DataFrame]:
    """Fit on the training frame (the feature tables' layout); the trees' voltage for every split.

    The arguments are the config's ``voltage_trees`` section; all but ``max_iter`` (whose default
    is the config's) are required, so that a caller outside the workflow says which family it fits
    (one model, equal weights, one share everywhere: ``bags=1, capacity_weights=None,
    high_capacity_weight=None``; the workflow's are config.yaml's). With ``capacity_weights`` (two
    percentiles) each training electrode weighs its capacity clipped to those percentiles of the
    training capacities: a voltage error costs energy in proportion to the capacity (E = V x C), and
    the clip keeps the few alloy-type electrodes of 1000-2500 mAh/g from steering the fit and the
    near-empty ones from dropping out of it (measured: config.yaml and docs/accuracy.md,
    "Capacity weights"). ``high_capacity_weight`` needs those weights: its bound is their upper one."""
    if high_capacity_weight is not None and capacity_weights is None:
        raise ValueError("voltage trees: high_capacity_weight needs capacity_weights (their upper bound)")
    names = [name for name in frames["train"].columns if name not in ("battery_id", *TARGETS)]
    x_train, y_train = frame_matrices(frames["train"])
    trees = VoltageTrees(names, weight=weight, bags=bags, capacity_weights=capacity_weights,
                         high_capacity_weight=high_capacity_weight, max_iter=max_iter)
    sample_weight = None
    if capacity_weights is not None:
        capacity = y_train[:, CAPACITY]
        trees.weight_bounds = tuple(float(bound) for bound in np.percentile(capacity, capacity_weights))
        sample_weight = np.clip(capacity, *trees.weight_bounds)
    trees.fit(x_train, y_train[:, VOLTAGE], sample_weight)
    return trees, tree_voltage(trees, frames)


def tree_voltage(trees: VoltageTrees, frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """battery_id, split and the trees' voltage for every frame (split name -> feature table)."""
    parts = [pd.DataFrame({"battery_id": frame["battery_id"].to_numpy(), "split": split,
                           "average_voltage": trees.predict(frame_matrices(frame)[0])})
             for split, frame in frames.items()]
    return pd.concat(parts, ignore_index=True)


def voltage_mae(voltage: pd.DataFrame, frames: dict[str, pd.DataFrame]) -> dict[str, float]:
    """The trees' own voltage MAE per split, for the record beside the blend's."""
    truth = pd.concat([frame[["battery_id", "average_voltage"]] for frame in frames.values()])
    joined = voltage.merge(truth, on="battery_id", suffixes=("", "_true"), validate="one_to_one")
    return {split: regression_metrics(part["average_voltage_true"], part["average_voltage"])["mae"]
            for split, part in joined.groupby("split", sort=False)}


def blend_seeds(per_seed: list[pd.DataFrame], trees: VoltageTrees, tree_voltage: pd.DataFrame,
                physics: pd.DataFrame, each_alone: bool = False) -> list[pd.DataFrame]:
    """Every seed's table blended with the trees' voltage (the frame :func:`fit_voltage_trees` returns);
    ``physics`` is the physics model's table (battery_id and its values, NaN where it does not hold),
    ``each_alone`` as in :meth:`VoltageTrees.blend_voltages`."""
    if not trees.blends:
        return per_seed
    ids = per_seed[0]["battery_id"]
    network_voltage = np.stack([frame.set_index("battery_id").loc[ids, "average_voltage"].to_numpy()
                                for frame in per_seed])
    blended_voltage = trees.blend_voltages(
        network_voltage, tree_voltage.set_index("battery_id").loc[ids, "average_voltage"].to_numpy(),
        physics.set_index("battery_id").loc[ids, "capacity_grav"].to_numpy(), each_alone)
    blended = []
    for frame, voltage in zip(per_seed, blended_voltage):
        by_id = pd.Series(voltage, index=ids.to_numpy())
        blended.append(frame.assign(average_voltage=by_id.loc[frame["battery_id"]].to_numpy()))
    return blended

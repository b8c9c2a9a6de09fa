"""Train / validation / test assignment: random (the paper) or grouped by host framework (no leakage)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from electrode_ml.errors import InputError

SPLITS = ("train", "val", "test")
# The 95 % prediction intervals are calibrated on the validation split: their quantile is its
# ceil((n + 1) 0.95)-th smallest score, which exists from n = 19 on (below, every interval is infinite).
MIN_VALIDATION_ROWS = 19


def split_sizes(n_rows: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Largest-remainder rounding, so the sizes always add up to ``n_rows``."""
    exact = np.asarray(fractions, dtype=float) * n_rows
    sizes = np.floor(exact + 1e-9).astype(int)
    order = np.argsort(-(exact - sizes), kind="stable")
    for index in order[: n_rows - sizes.sum()]:
        sizes[index] += 1
    return tuple(int(size) for size in sizes)


def random_split(battery_ids: pd.Series, fractions, seed: int) -> pd.DataFrame:
    """Shuffle with a seeded generator and cut at the split sizes (the paper's random split)."""
    n_train, n_val, _ = split_sizes(len(battery_ids), fractions)
    order = np.random.default_rng(seed).permutation(len(battery_ids))
    labels = np.empty(len(battery_ids), dtype=object)
    labels[order[:n_train]] = "train"
    labels[order[n_train : n_train + n_val]] = "val"
    labels[order[n_train + n_val :]] = "test"
    return pd.DataFrame({"battery_id": battery_ids.to_numpy(), "split": labels})


def group_split(battery_ids: pd.Series, groups: pd.Series, fractions, seed: int) -> pd.DataFrame:
    """Whole groups (host frameworks) go to one side; groups are shuffled and filled in turn.

    The sizes then match the fractions only approximately, because a group is never cut.
    """
    if len(battery_ids) != len(groups):
        raise InputError("group split: ids and groups differ in length")
    group_sizes = groups.value_counts(sort=False)
    names = group_sizes.index.to_numpy()
    names = names[np.random.default_rng(seed).permutation(len(names))]
    targets = np.cumsum(split_sizes(len(battery_ids), fractions))
    assignment: dict[str, str] = {}
    filled = 0
    for name in names:
        split = SPLITS[int(np.searchsorted(targets, filled, side="right"))] if filled < targets[-1] else "test"
        assignment[name] = split
        filled += int(group_sizes[name])
    return pd.DataFrame({"battery_id": battery_ids.to_numpy(), "split": groups.map(assignment).to_numpy()})


def make_split(electrodes: pd.DataFrame, *, method: str, fractions, seed: int) -> pd.DataFrame:
    if method == "random":
        split = random_split(electrodes["battery_id"], fractions, seed)
    elif method == "group":
        split = group_split(electrodes["battery_id"], electrodes["framework_formula"], fractions, seed)
    else:
        raise InputError(f"split.method: unknown method {method!r} (random or group)")
    # every split has a job: training, early stopping and calibration, the reported test figures
    sizes = split["split"].value_counts()
    empty = [name for name in SPLITS if name not in sizes]
    if empty:
        raise InputError(f"config key split.fractions: {list(fractions)} leave the {' and '.join(empty)} split(s) "
                         f"of the {len(split)} electrodes empty ({method} split)")
    if sizes["val"] < MIN_VALIDATION_ROWS:
        raise InputError(f"config key split.fractions: {list(fractions)} leave {sizes['val']} of the {len(split)} "
                         f"electrodes in the val split ({method} split); the 95 % prediction intervals are "
                         f"calibrated on it and need at least {MIN_VALIDATION_ROWS}")
    return split

"""The peer baseline ``peer_gbm``: what a materials scientist tries first.

matminer's Magpie statistics of the charged and the discharged formula, the working ion (one-hot),
the crystal systems (one-hot) and the space-group numbers (as numbers), fed to one scikit-learn
``HistGradientBoostingRegressor`` per target. Same split and same metrics as the networks, written in
the ensemble rule's format (one "seed", so std 0, n 1 and the paper's CI collapses onto the mean) so
that it sits in the same comparison table.

Magpie's element tables ship inside the matminer package: nothing is downloaded at run time.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.preprocessing import OneHotEncoder

from electrode_ml.chemistry import parse_formula
from electrode_ml.schema import CRYSTAL_SYSTEMS, TARGETS, WORKING_IONS
from electrode_ml.split import SPLITS

MODEL = "peer_gbm"
ENDS = ("charge", "discharge")
# A first try, not a tuned model: scikit-learn's defaults except a smaller step and more of them
# (the rounds, max_iter, are config.yaml's peer_gbm.max_iter: 500).
GBM_PARAMS = {"learning_rate": 0.05, "early_stopping": False}
# The two quantile GBMs whose gap scales the peer's prediction interval (a 95 % band).
SPREAD_QUANTILES = (0.025, 0.975)


@lru_cache(maxsize=1)
def _magpie():
    from matminer.featurizers.composition import ElementProperty

    return ElementProperty.from_preset("magpie", impute_nan=False)


def magpie_labels() -> list[str]:
    """The 132 Magpie statistics as column stems, e.g. ``magpie_mean_Number``."""
    return [label.replace("MagpieData ", "magpie_").replace(" ", "_") for label in _magpie().feature_labels()]


def formula_magpie(formulas: pd.Series) -> pd.DataFrame:
    """Magpie features per formula, computed once per unique formula (zero amounts such as Li0 vanish)."""
    featurizer = _magpie()
    unique = pd.unique(formulas.astype(str))
    table = np.array([featurizer.featurize(parse_formula(formula)) for formula in unique], dtype=float)
    table = table.reshape(len(unique), len(magpie_labels()))
    lookup = pd.DataFrame(table, index=unique, columns=magpie_labels())
    return lookup.loc[formulas.astype(str).to_numpy()].reset_index(drop=True)


def magpie_features(electrodes: pd.DataFrame) -> pd.DataFrame:
    """battery_id, then charge_/discharge_ Magpie columns, ion and crystal-system one-hots, space groups.

    The one-hot vocabularies are the schema's, so every table gets the same columns in the same order.
    """
    electrodes = electrodes.reset_index(drop=True)
    blocks = [electrodes[["battery_id"]].astype(str)]
    for end in ENDS:
        blocks.append(formula_magpie(electrodes[f"formula_{end}"]).add_prefix(f"{end}_"))
    blocks.append(one_hot(electrodes["working_ion"], WORKING_IONS, "ion"))
    for end in ENDS:
        blocks.append(one_hot(electrodes[f"{end}_crystal_system"], CRYSTAL_SYSTEMS, f"{end}_crystal"))
    blocks.append(pd.DataFrame({f"{end}_space_group_number": electrodes[f"{end}_space_group_number"].astype(float)
                                for end in ENDS}))
    return pd.concat(blocks, axis=1)


def one_hot(values: pd.Series, vocabulary, prefix: str) -> pd.DataFrame:
    """``{prefix}_{name}`` columns of 0/1 in the vocabulary's order; a value outside it is all zeros."""
    columns = [f"{prefix}_{name}" for name in vocabulary]
    if values.empty:  # scikit-learn refuses to fit on no rows
        return pd.DataFrame(0.0, index=values.index, columns=columns)
    encoder = OneHotEncoder(categories=[list(vocabulary)], handle_unknown="ignore", sparse_output=False)
    return pd.DataFrame(encoder.fit_transform(values.astype(str).to_frame(prefix)), columns=columns, index=values.index)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    return [name for name in frame.columns if name not in ("battery_id", "split", *TARGETS)]


def feature_sets(electrodes: pd.DataFrame, split: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per split: battery_id, the features of :func:`magpie_features` and the three targets."""
    features = magpie_features(electrodes)
    features[list(TARGETS)] = electrodes.reset_index(drop=True)[list(TARGETS)].to_numpy(dtype=float)
    labelled = features.merge(split[["battery_id", "split"]].astype(str), on="battery_id", how="inner",
                              validate="one_to_one")
    return {name: labelled[labelled["split"] == name].drop(columns="split").reset_index(drop=True)
            for name in SPLITS}


def fit_predict_gbm(train: pd.DataFrame, frames: dict[str, pd.DataFrame], seed: int, max_iter: int,
                    **params) -> dict[str, pd.DataFrame]:
    """One gradient-boosted tree model per target, fitted on ``train``; per split battery_id, split, targets."""
    columns = feature_columns(train)
    settings = {**GBM_PARAMS, "max_iter": max_iter, **params}
    predictions = {name: frame[["battery_id"]].assign(split=name).reset_index(drop=True)
                   for name, frame in frames.items()}
    for target in TARGETS:
        model = HistGradientBoostingRegressor(random_state=seed, **settings)
        model.fit(train[columns].to_numpy(dtype=float), train[target].to_numpy(dtype=float))
        for name, frame in frames.items():
            predictions[name][target] = model.predict(frame[columns].to_numpy(dtype=float))
    return predictions


def fit_predict_spread(train: pd.DataFrame, frames: dict[str, pd.DataFrame], seed: int, max_iter: int,
                       **params) -> dict[str, pd.DataFrame]:
    """Per split: battery_id, split and, per target, half the gap between two quantile GBMs.

    The peer is one model, so it has no ensemble spread for its interval to scale with; with one
    width for every electrode its capacity interval covered 98.4 % of the test split. Quantile
    regressions at ``SPREAD_QUANTILES`` say per electrode how unsure the trees are;
    the split-conformal step then calibrates that width on the validation split.
    """
    low, high = (fit_predict_gbm(train, frames, seed, max_iter, loss="quantile", quantile=quantile, **params)
                 for quantile in SPREAD_QUANTILES)
    return {name: low[name].assign(**{target: (high[name][target] - low[name][target]).abs() / 2
                                      for target in TARGETS})
            for name in frames}


def summarise(frames: dict[str, pd.DataFrame], predictions: dict[str, pd.DataFrame], seed: int,
              spread: dict[str, pd.DataFrame]):
    """The ensemble rule's long table and metrics for one model: std 0, n 1, CI = mean, conformal PI
    scaled by ``spread`` (:func:`fit_predict_spread`)."""
    from electrode_ml import ensemble

    truth = ensemble.true_values(frames)

    def stacked_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
        return ensemble.stack_predictions([pd.concat(tables.values(), ignore_index=True).assign(seed=seed)])

    stacked = stacked_table(predictions)
    summary = ensemble.aggregate(stacked, truth)
    summary["std"] = 0.0
    summary["ci_low"] = summary["mean"]
    summary["ci_high"] = summary["mean"]
    row_spread = summary[["battery_id", "split", "target"]].merge(
        stacked_table(spread), on=["battery_id", "split", "target"], how="left", validate="one_to_one")["predicted"]
    summary = ensemble.add_prediction_intervals(summary, spread=row_spread.to_numpy())
    low, high = (f"{100 * quantile:g} %" for quantile in SPREAD_QUANTILES)
    summary.attrs["pi_scale"]["spread"] = f"half the gap between the {low} and {high} quantile GBMs"
    return summary, ensemble.ensemble_metrics(stacked, truth, summary)

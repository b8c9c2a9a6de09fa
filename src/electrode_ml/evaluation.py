"""Honest evaluation: the whole pipeline again on another split of the electrodes.

A random split puts polymorphs of one host, and the same host with another ion, on both sides,
so part of the random-split accuracy is recall of near-duplicates. The grouped evaluation puts
every electrode of one ``framework_formula`` on one side; the gap between the two sets of metrics
is that leakage. ``split_spread`` runs the same on other random splits. The network keeps the
hyperparameters tuned on the workflow's split (re-tuning per split would cost another 30 trials
and is not what is being measured).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pandas as pd

from electrode_ml.ensemble import evaluate_model
from electrode_ml.features import applicability, fit_feature_sets
from electrode_ml.models import is_physics_model, uses_dft, uses_voltage_trees
from electrode_ml.physics import fit_physics
from electrode_ml.split import make_split
from electrode_ml.tables import frame_matrices, seed_predictions
from electrode_ml.trees import fit_voltage_trees

if TYPE_CHECKING:  # the type only: importing the model would import torch
    from electrode_ml.model import Trainer

log = logging.getLogger(__name__)



def grouped_evaluation(electrodes: pd.DataFrame, *, base: str, variants: list[str], split_settings: dict,
                       feature_settings: dict, seeds: list[int], trainer: Trainer,
                       tree_settings: dict) -> dict[str, tuple[pd.DataFrame, dict]]:
    """Split by framework, then :func:`evaluate_on_split`."""
    split = make_split(electrodes, method="group", fractions=split_settings["fractions"], seed=split_settings["seed"])
    return evaluate_on_split(electrodes, split, base=base, variants=variants, feature_settings=feature_settings,
                             seeds=seeds, trainer=trainer, tree_settings=tree_settings)


def evaluate_on_split(electrodes: pd.DataFrame, split: pd.DataFrame, *, base: str, variants: list[str],
                      feature_settings: dict, seeds: list[int], trainer: Trainer,
                      tree_settings: dict) -> dict[str, tuple[pd.DataFrame, dict]]:
    """Featurise on ``split``, train ``seeds`` networks of ``base``; summary and metrics per variant.

    A variant with a learned voltage blends its networks with trees fitted on this split (trees.py),
    ``tree_settings`` being the config's ``voltage_trees`` section (empty when no variant blends trees).
    The ensemble rule's evaluation (:func:`electrode_ml.ensemble.evaluate_model`); only its inputs
    come from this split (the networks, the physics, the trees, the featuriser's applicability), and
    the metrics add the split's sizes.
    """
    featurizer, frames = fit_feature_sets(electrodes, split, base, **feature_settings)
    (x_train, y_train), (x_val, y_val) = frame_matrices(frames["train"]), frame_matrices(frames["val"])
    per_seed = []
    for seed in seeds:
        per_seed.append(seed_predictions(frames, trainer(x_train, y_train, x_val, y_val, seed), seed))
        log.info("%s: seed %d trained", base, seed)
    labelled = electrodes.merge(split, on="battery_id", validate="one_to_one")
    flags = applicability(featurizer, labelled)
    split_sizes = {name: int(n) for name, n in split["split"].value_counts().items()}
    results = {}
    for model in variants:
        physics = fit_physics(labelled, uses_voltage=uses_dft(model))[1] if is_physics_model(model) else None
        trees = fit_voltage_trees(frames, **tree_settings)[0] if uses_voltage_trees(model) else None
        summary, metrics = evaluate_model(per_seed, frames, physics=physics, trees=trees, flags=flags)
        results[model] = (summary, {**metrics, "split_sizes": split_sizes})
    return results

"""One function per workflow rule: read the rule's inputs, call the library, write its outputs atomically.

Each step takes Snakemake-like ``input``, ``output``, ``params`` and ``threads`` so it can be called
from a rule script or directly from a test.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import torch

from electrode_ml import data as data_mod
from electrode_ml import ensemble, plots
from electrode_ml.devices import job_device
from electrode_ml.config import resolve_source
from electrode_ml.features import describe_features, fit_feature_sets
from electrode_ml.fileio import atomic_path, read_json, write_csv, write_json, write_parquet
from electrode_ml.model import NetworkParams, TrainSettings, predict, train_network
from electrode_ml.schema import TARGETS
from electrode_ml.split import make_split
from electrode_ml.tune import SearchSpace, run_tuning

log = logging.getLogger(__name__)


def data_step(input, output, params, threads, **_):
    settings = params.data
    source = resolve_source(settings["source"])
    if source == "mp_api":
        from electrode_ml.mp_download import download_electrodes

        raw = download_electrodes(settings["ions"], tuple(settings["voltage_window"]))
        where = "Materials Project download"
    else:
        raw = data_mod.read_electrode_csv(input.snapshot)
        where = str(input.snapshot)
    log.info("read %d electrodes from %s", len(raw), where)
    electrodes, report = data_mod.validate_electrodes(
        raw, ions=settings["ions"], voltage_window=tuple(settings["voltage_window"]),
        on_bad_row=settings["on_bad_row"], source=source, where=where,
    )
    log.info("kept %d electrodes; dropped %s", len(electrodes), report.dropped)
    write_parquet(electrodes, output.electrodes)
    write_json(report.as_dict(), output.report)


def split_step(input, output, params, threads, **_):
    electrodes = pd.read_parquet(input.electrodes)
    settings = params.split
    split = make_split(electrodes, method=settings["method"], fractions=settings["fractions"], seed=settings["seed"])
    log.info("split sizes: %s", split["split"].value_counts().to_dict())
    write_parquet(split, output.split)


def features_step(input, output, params, threads, wildcards=None, **_):
    electrodes = pd.read_parquet(input.electrodes)
    split = pd.read_parquet(input.split)
    featurizer, frames = fit_feature_sets(electrodes, split, params.model, **params.features)
    description = describe_features(featurizer)
    log.info("%s: %d features from blocks %s", params.model, description["n_features"],
             {name: block["n_out"] for name, block in description["blocks"].items()})
    for name, frame in frames.items():
        write_parquet(frame, output[name])
    with atomic_path(output.transformers) as tmp:
        joblib.dump(featurizer, tmp)
    write_json(description, output.description)


def feature_matrices(path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(table, X, Y) from a features parquet: X = feature columns, Y = the three targets."""
    table = pd.read_parquet(path)
    feature_columns = [name for name in table.columns if name != "battery_id" and name not in TARGETS]
    return table, table[feature_columns].to_numpy(np.float32), table[list(TARGETS)].to_numpy(np.float64)


def train_settings(settings: dict, seed: int, device: str, epochs: int | None = None) -> TrainSettings:
    return TrainSettings(epochs=epochs or settings["epochs"], batch_size=settings["batch_size"],
                         patience=settings["patience"], seed=seed, device=device)


def tune_step(input, output, params, threads, **_):
    torch.set_num_threads(threads)
    _, x_train, y_train = feature_matrices(input.train)
    _, x_val, y_val = feature_matrices(input.val)
    tune = params.tune
    with job_device(params.train["device"]) as device:
        def objective(values: dict) -> float:
            settings = train_settings(params.train, tune["seed"], device, epochs=tune["epochs"])
            settings = replace(settings, log_every=0)
            network = train_network(x_train, y_train, x_val, y_val, NetworkParams.from_dict(values), settings)
            return float(network.history["val_loss"].min())

        space = SearchSpace(lr=tuple(tune["lr"]), units=tuple(tune["units"]), dropout=tuple(tune["dropout"]))
        best = run_tuning(objective, trials=tune["trials"], seed=tune["seed"], state_path=Path(output.state),
                          trials_csv=Path(output.trials), space=space, name=params.model)
    write_json(best, output.best)


def train_step(input, output, params, threads, wildcards=None, **_):
    torch.set_num_threads(threads)
    seed = int(wildcards.seed)
    tables = {}
    matrices = {}
    for split in ("train", "val", "test"):
        tables[split], x, y = feature_matrices(input[split])
        matrices[split] = (x, y)
    network_params = NetworkParams.from_dict(read_json(input.params))
    with job_device(params.train["device"]) as device:
        log.info("training seed %d on %s with %s", seed, device, network_params)
        network = train_network(*matrices["train"], *matrices["val"], network_params,
                                train_settings(params.train, seed, device))
        predictions = pd.concat([
            pd.DataFrame(predict(network, matrices[split][0], device), columns=list(TARGETS))
            .assign(battery_id=tables[split]["battery_id"].to_numpy(), split=split, seed=seed)
            for split in ("train", "val", "test")
        ], ignore_index=True)
    log.info("seed %d: best epoch %d of %d, %.1f s", seed, network.best_epoch, len(network.history), network.seconds)
    with atomic_path(output.model) as tmp:
        torch.save(network.to_checkpoint(), tmp)
    write_csv(network.history, output.history)
    write_parquet(predictions[["battery_id", "split", "seed", *TARGETS]], output.predictions)


def ensemble_step(input, output, params, threads, **_):
    per_seed = [pd.read_parquet(path) for path in input.predictions]
    truth = ensemble.true_values({split: pd.read_parquet(input[split]) for split in ("train", "val", "test")})
    stacked = ensemble.stack_predictions(per_seed)
    summary = ensemble.aggregate(stacked, truth)
    metrics = ensemble.ensemble_metrics(stacked, truth, summary)
    log.info("validation MAE of the ensemble mean: %s",
             {target: round(values["mae"], 4) for target, values in metrics["ensemble_mean"]["val"].items()})
    write_parquet(summary, output.predictions)
    write_json(metrics, output.metrics)
    plots.save(plots.parity_figure(summary, f"{params.model}: ensemble of {metrics['n_seeds']} networks"), output.parity)
    plots.save(plots.error_histogram_figure(summary, f"{params.model}: prediction errors"), output.errors)

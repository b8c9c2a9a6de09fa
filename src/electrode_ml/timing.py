"""Table 4: wall time of tuning, training and prediction, beside the paper's NVIDIA A40 numbers.

Tuning and training times come from the Snakemake benchmark files of those rules (column ``s``),
a resumed tuning's from its trials' recorded seconds (:func:`tuning_seconds`).
Prediction is measured here: the trained ensemble (predict.StackedEnsemble: all networks stacked
into batched products, or through oneDNN where cpu_matmul picks it) predicting the validation
electrodes, best of several repeats.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from electrode_ml.chemistry import fraction_items, parse_formula
from electrode_ml.errors import InputError
from electrode_ml.models import paper_counterpart
from electrode_ml.redox import electrode_features

# Paper Table 4 (NVIDIA A40): BO total over 30 iterations, training one network (mean of 50),
# predicting the 388 validation electrodes with one network (mean of 50). The paper's text says 7.29 /
# 7.57 ms for "a single prediction", a tenth of its table's and abstract's figures: the table's are taken.
PAPER_TIMING = {
    "model1": {"tune_s": 6309.53, "train_mean_s": 238.51, "predict_ms": 72.9},
    "model2": {"tune_s": 7354.65, "train_mean_s": 245.60, "predict_ms": 75.7},
}
PAPER_SEEDS = 50


def read_benchmark(path: str | Path) -> float:
    """Wall seconds of one Snakemake benchmark file (mean when it holds repeats)."""
    table = pd.read_csv(path, sep="\t")
    if "s" not in table.columns or table.empty:
        raise InputError(f"{path}: not a Snakemake benchmark file (no column 's')")
    return float(table["s"].mean())


def tuning_seconds(benchmark_s: float, trial_seconds: Iterable[float]) -> tuple[float, str]:
    """The tuning's wall time for the table, and a note when it is not the job's own.

    A tuning resumed from its saved state (after an interruption, or rerun with its objective
    unchanged) runs only the trials it lacks, so its benchmark file holds that job's time: 4-5 s
    for one with all 30 trials saved. The trials' recorded seconds then tell the tuning's cost,
    short of Ax's suggestions between trials (27 s of a fresh model1 tuning's 426 s)."""
    recorded = float(np.nansum(np.asarray(list(trial_seconds), dtype=float)))
    if recorded > benchmark_s:
        return recorded, "resumed from saved trials: their recorded seconds, without Ax's suggestions"
    return benchmark_s, ""


def best_time(call: Callable[[], object], repeats: int = 20, warmup: int = 2,
              before_each: Callable[[], object] | None = None) -> dict:
    """Best and median wall seconds of ``call`` over ``repeats`` runs after ``warmup`` untimed ones;
    ``before_each`` runs, untimed, before every call."""
    times = []
    for run in range(warmup + repeats):
        if before_each is not None:
            before_each()
        started = time.perf_counter()
        call()
        if run >= warmup:
            times.append(time.perf_counter() - started)
    return {"best_s": float(np.min(times)), "median_s": float(np.median(times)), "repeats": repeats}


def forget_formulas() -> None:
    """Empty the caches of parsed formulas, their fractions and their redox features: a candidate list
    is read once, so its featurisation is timed from its formulas, not from an earlier call's cache."""
    parse_formula.cache_clear()
    fraction_items.cache_clear()
    electrode_features.cache_clear()


def measure_prediction(ensemble, electrodes: pd.DataFrame, repeats: int = 20) -> dict:
    """Time a predict.TrainedEnsemble on ``electrodes``: networks only (features precomputed) and end
    to end (featurisation from the formulas + networks + mean/CI), fewer times."""
    x = ensemble.features(electrodes)
    networks = best_time(lambda: ensemble.networks.predict(x), repeats)
    end_to_end = best_time(lambda: ensemble.predict(electrodes), max(3, repeats // 4), before_each=forget_formulas)
    return {"n_networks": len(ensemble.networks), "n_rows": int(len(electrodes)), "matmul": ensemble.networks.matmul,
            "networks_s": networks["best_s"], "networks_median_s": networks["median_s"],
            "networks_repeats": networks["repeats"], "end_to_end_s": end_to_end["best_s"],
            "end_to_end_median_s": end_to_end["median_s"], "end_to_end_repeats": end_to_end["repeats"]}


def timing_table(model: str, tune_s: float | None, train_s: Iterable[float], prediction: dict,
                 tune_note: str = "", include_training: bool = True, device: str = "cpu") -> pd.DataFrame:
    """Rows of Table 4 for one model: stage, unit, ours, paper, ratio ours/paper, note.

    A physics model reuses its base model's networks, so it gets only the end-to-end prediction row
    (``include_training=False``), which includes evaluating its physics.
    """
    train_s = list(train_s)
    paper = PAPER_TIMING.get(paper_counterpart(model), {})
    n = prediction["n_networks"]
    best_of = lambda stage: f"best of {prediction[stage + '_repeats']}" if stage + "_repeats" in prediction else ""  # noqa: E731
    layout = {"torch": "stacked, one batched product per layer",
              "onednn": "oneDNN's fused linear, first layers five networks at a time",
              }[prediction.get("matmul", "torch")] + ", the networks in one stream per thread"
    rows = [
        ("Bayesian optimisation (total)", "s", tune_s, paper.get("tune_s"), tune_note),
        ("Training, one network (mean over seeds)", "s", float(np.mean(train_s)) if train_s else None,
         paper.get("train_mean_s"), f"{len(train_s)} networks; paper: mean of {PAPER_SEEDS}"),
        ("Training, all networks (sum)", "s", float(np.sum(train_s)) if train_s else None,
         paper["train_mean_s"] * PAPER_SEEDS if paper else None,
         f"sum over {len(train_s)} networks; paper: {PAPER_SEEDS} x its mean"),
    ]
    rows += [
        ("Prediction of the validation set, one network", "ms", 1000 * prediction["networks_s"] / n,
         paper.get("predict_ms"), f"{prediction['n_rows']} electrodes on {device}; ensemble time / {n} networks"),
        ("Prediction of the validation set, whole ensemble", "ms", 1000 * prediction["networks_s"],
         paper["predict_ms"] * PAPER_SEEDS if paper else None,
         f"{n} networks ({layout}), {best_of('networks')}; paper: {PAPER_SEEDS} x one network"),
        ("Prediction incl. featurisation, whole ensemble", "ms", 1000 * prediction["end_to_end_s"], None,
         f"formula parsing, PCA, one-hot (+ physics) + networks + mean and CI, {best_of('end_to_end')}, "
         "each from the formulas (caches emptied)"),
    ]
    if not include_training:  # the networks are the base model's: only the end-to-end time is its own
        rows = rows[-1:]
    table = pd.DataFrame(rows, columns=["stage", "unit", "ours", "paper_a40", "note"])
    table.insert(0, "model", model)
    table[["ours", "paper_a40"]] = table[["ours", "paper_a40"]].astype(float)
    table["ratio"] = table["ours"] / table["paper_a40"]
    return table[["model", "stage", "unit", "ours", "paper_a40", "ratio", "note"]]

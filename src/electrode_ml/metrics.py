"""The paper's accuracy measures (Eqs. 4-6): MAE, RMSE and Pearson r."""

from __future__ import annotations

import numpy as np


def regression_metrics(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    true = np.asarray(true, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    error = predicted - true
    spread = np.std(true) * np.std(predicted)
    pearson = float(np.mean((true - true.mean()) * (predicted - predicted.mean())) / spread) if spread > 0 else float("nan")
    return {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "r": pearson,
        "n": int(true.size),
    }

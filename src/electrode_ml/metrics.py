"""The paper's accuracy measures (Eqs. 4-6): MAE, RMSE and Pearson r."""

from __future__ import annotations

import numpy as np


def regression_metrics(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, r and n; r is NaN (undefined) when either side is constant, such as the
    training-mean baseline, whose np.std is 0 or 1e-13 depending on how its mean rounds."""
    true = np.asarray(true, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    error = predicted - true
    constant = true.size == 0 or np.ptp(true) == 0 or np.ptp(predicted) == 0
    pearson = float("nan") if constant else float(np.corrcoef(true, predicted)[0, 1])
    return {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "r": pearson,
        "n": int(true.size),
    }

"""The feature tables' layout (battery_id, the three targets, then the features) as matrices, and
one network's predictions back as a table: all a training job needs, without the featurisers."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from electrode_ml.schema import TARGETS


def frame_matrices(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    features = frame.drop(columns=["battery_id", *TARGETS])
    return features.to_numpy(np.float32, copy=True), frame[list(TARGETS)].to_numpy(np.float64)


def seed_predictions(frames: dict[str, pd.DataFrame], predict: Callable[[np.ndarray], np.ndarray], seed: int) -> pd.DataFrame:
    """One network's predictions for every split, in the train rule's layout."""
    parts = []
    for split, frame in frames.items():
        values = predict(frame_matrices(frame)[0])
        parts.append(pd.DataFrame(values, columns=list(TARGETS))
                     .assign(battery_id=frame["battery_id"].to_numpy(), split=split, seed=seed))
    return pd.concat(parts, ignore_index=True)[["battery_id", "split", "seed", *TARGETS]]

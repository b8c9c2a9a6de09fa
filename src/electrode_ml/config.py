"""Checks on the workflow configuration that a JSON schema cannot express."""

from __future__ import annotations

import math

from electrode_ml.errors import InputError


def check_config(config: dict) -> None:
    """Raise InputError naming the key when values are individually valid but inconsistent."""
    fractions = config["split"]["fractions"]
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise InputError(f"config key split.fractions: {fractions} sum to {sum(fractions):g}, not 1")
    for key in ("data.voltage_window", "tune.lr", "tune.units", "tune.dropout"):
        section, name = key.split(".")
        low, high = config[section][name]
        if not low < high:
            raise InputError(f"config key {key}: lower bound {low} is not below upper bound {high}")


def seeds(config: dict) -> list[int]:
    first = config["train"]["first_seed"]
    return list(range(first, first + config["train"]["n_seeds"]))

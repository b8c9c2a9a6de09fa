"""The report's inputs: every file the report rule lists, read into one context dict, with the
provenance of the page (package versions, the code's commit).

All reading happens here, figures included (as PNG bytes), so the section builders (report.py)
and the HTML blocks (report_html.py) only turn the context into text.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from electrode_ml.code_version import library_versions


def _paths(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [str(value)]
    return [str(item) for item in value]


def _many(input, name: str) -> list[str]:
    return _paths(getattr(input, name, None) if not isinstance(input, Mapping) else input.get(name))


def _one(input, name: str) -> str | None:
    paths = _many(input, name)
    return paths[0] if paths else None


def _exists(path: str | None) -> bool:
    return bool(path) and Path(path).exists()


def _json(path: str | None) -> Any:
    return json.loads(Path(path).read_text()) if _exists(path) else None


def _png(path: str | None) -> bytes | None:
    """A figure's bytes, None where it was not written."""
    return Path(path).read_bytes() if _exists(path) else None


def _group_metrics(paths: Iterable[str]) -> dict[str, dict]:
    """The framework-grouped metrics of every file merged: model -> metrics (each file holds a base model and its variants)."""
    merged = {}
    for path in paths:
        merged.update(_json(path) or {})
    return merged


def _by_model(paths: Iterable[str], models: list[str]) -> dict[str, str]:
    """Map model -> path, the model named by the file's folder (``ensemble/<model>/metrics.json``), in ``models``' order."""
    found = {Path(path).parent.name: path for path in paths}
    return {model: found[model] for model in models if model in found}


def software_versions() -> dict[str, str]:
    """What the results were computed with: the versions the rules' ``code`` param holds, and Snakemake's."""
    versions = {**library_versions(), "snakemake": importlib.metadata.version("snakemake")}
    import torch

    from electrode_ml.devices import describe_device

    versions["compute"] = describe_device("cuda:0" if torch.cuda.is_available() else "cpu") + " (the report's host)"
    versions["platform"] = platform.platform()
    return versions


def code_provenance(repository: Path = Path(__file__).resolve().parents[2]) -> str:
    """The electrode-ml version and, from a git checkout, its commit and whether tracked files were
    changed: which code wrote the page (results/ outlives many commits)."""
    import subprocess

    text = f"electrode-ml {importlib.metadata.version('electrode-ml')}"
    try:
        git = lambda *args: subprocess.run(["git", "-C", str(repository), *args], capture_output=True, text=True,  # noqa: E731
                                           timeout=10, check=True).stdout.strip()
        commit = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return text  # not a git checkout (an installed copy, an archive)
    return f"{text}, commit {commit}" + (" with uncommitted changes" if changed else "")


def largest_errors(summary: pd.DataFrame, split: str = "val", n: int = 3) -> dict[str, dict]:
    """Per target, the ``n`` electrodes of ``split`` the ensemble mean misses most and the RMSE without
    them: a few large misses carry most of the capacity RMSE (model2: three, 58 % of its squared error)."""
    result = {}
    for target, rows in summary[summary["split"] == split].groupby("target", sort=False):
        error = (rows["mean"] - rows["true"]).abs()
        worst = error.nlargest(n).index
        rest = error.drop(worst)
        result[target] = {"rmse_without": float(np.sqrt((rest ** 2).mean())) if len(rest) else None,
                          "electrodes": rows.loc[worst, ["battery_id", "true", "mean"]].to_dict("records")}
    return result


def screen_table(path: str | Path) -> pd.DataFrame:
    """A screen's CSV with its verdict columns as booleans: a table without rows (no Na electrode in
    the test split) reads them as text, and a mask of text selects columns instead of rows."""
    table = pd.read_csv(path)
    verdicts = [name for name in table.columns if name.endswith("_pass") or name == "trained_on"]
    return table.astype({name: bool for name in verdicts})


def collect(input, params) -> dict:
    """Read every file the report rule lists into one context dict (missing optional parts -> None;
    figures as PNG bytes, None where missing)."""
    models = list(params.models)
    get = lambda name: _one(input, name)  # noqa: E731
    electrodes = pd.read_parquet(get("electrodes"), columns=["battery_id", "working_ion"])
    labelled = electrodes.merge(pd.read_parquet(get("split")), on="battery_id")
    context: dict[str, Any] = {
        "models": models,
        "config": dict(params.config),
        "generated": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "code": code_provenance(),
        "versions": software_versions(),
        "data_report": json.loads(Path(get("data_report")).read_text()),
        "ion_split": pd.crosstab(labelled["working_ion"], labelled["split"]),
        "metrics": {m: json.loads(Path(p).read_text()) for m, p in _by_model(_many(input, "metrics"), models).items()},
        "largest_errors": {m: largest_errors(pd.read_parquet(p, columns=["battery_id", "split", "target", "true", "mean"]))
                           for m, p in _by_model(_many(input, "predictions"), models).items()},
        "parity": {m: _png(p) for m, p in _by_model(_many(input, "parity"), models).items()},
        "errors": {m: _png(p) for m, p in _by_model(_many(input, "errors"), models).items()},
    }
    optional = {
        "na_screening": screen_table, "na_all": screen_table, "k_table": pd.read_csv, "timing": pd.read_csv,
        "contribution": pd.read_csv, "contribution_seeds": pd.read_csv,
        "na_metrics": _json, "k_summary": _json, "fig7": _png, "contribution_figure": _png,
        "peer_parity": _png, "peer_errors": _png,
    }
    for name, reader in optional.items():
        path = get(name)
        context[name] = reader(path) if _exists(path) else None
    timing = context["timing"]
    if timing is not None and "compute" in timing:  # where the networks were timed, not this job's host
        context["versions"]["compute"] = ", ".join(timing["compute"].dropna().unique())
    context["peer"] = _json(get("peer"))
    context["group"] = _group_metrics(_many(input, "group"))
    context["physics"] = {m: _json(p) for m, p in _by_model(_many(input, "physics"), models).items() if _exists(p)}
    return context

"""`make split-spread`: how far the accuracy moves with the random split that was drawn.

The paper's figures and the workflow's each come from one random split, of 388 validation
electrodes. This draws other random splits (other seeds), refits the features on each and trains a
few networks per split at the run's tuned widths (not retuned: only the split varies; a physics
model's trees are refitted as in the run), and tabulates each split's MAE, so that one run's
comparison with the paper can be read against the spread. Outside the default DAG: 8 splits of 10
networks took 20-40 min per model on one core (docs/accuracy.md, "Which random split").
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import torch

from electrode_ml.cli import positive_int
from electrode_ml.config import load_config, seed_range
from electrode_ml.devices import job_device
from electrode_ml.errors import InputError
from electrode_ml.evaluation import evaluate_on_split
from electrode_ml.models import KNOWN_MODELS, base_model, voltage_tree_settings
from electrode_ml.fileio import file_sha256, read_json, utc_timestamp, write_csv, write_json
from electrode_ml.model import NetworkParams
from electrode_ml.report_inputs import code_provenance
from electrode_ml.runner import setup_logging
from electrode_ml.split import make_split
from electrode_ml.model import seed_trainer

log = logging.getLogger("electrode_ml.split_spread")

SCORED_SPLITS = ("val", "test")


def split_spread(electrodes: pd.DataFrame, *, model: str, split_seeds: list[int], networks: int, config: dict,
                 network_params: NetworkParams, device: str = "cpu") -> pd.DataFrame:
    """MAE of ``model``'s ensemble (``networks`` networks) per random split seed, split and target."""
    base = base_model(model)
    trainer = seed_trainer(config["train"], network_params, device, base)
    rows = []
    for split_seed in split_seeds:
        split = make_split(electrodes, method="random", fractions=config["split"]["fractions"], seed=split_seed)
        results = evaluate_on_split(electrodes, split, base=base, variants=[model], feature_settings=config["features"],
                                    seeds=seed_range(config["train"], networks), trainer=trainer,
                                    tree_settings=voltage_tree_settings([model], config["voltage_trees"]))
        scores = results[model][1]["ensemble_mean"]
        found = [{"model": model, "split_seed": split_seed, "split": split_name, "target": target,
                  "mae": values["mae"]}
                 for split_name in SCORED_SPLITS for target, values in scores[split_name].items()]
        log.info("split seed %d: %s", split_seed,
                 ", ".join(f"{row['split']} {row['target']} {row['mae']:.4g}" for row in found))
        rows += found
    return pd.DataFrame(rows)


def spread_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per split and target: the lowest, highest and mean MAE over the split seeds, and its spread."""
    grouped = table.groupby(["split", "target"], sort=False)["mae"]
    return grouped.agg(["min", "max", "mean", "std", "count"]).reset_index()


def default_split_seeds(own_seed: int, count: int = 8) -> list[int]:
    """The run's own split seed first (it reproduces the run), then the smallest other seeds from 1."""
    others = [seed for seed in range(1, count + 1) if seed != own_seed]
    return [own_seed, *others[: count - 1]]


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--split-seeds: {text!r} is not a comma-separated list of integers") from None
    if not seeds:
        raise InputError("--split-seeds: no seed given")
    return seeds


def read_run(results: Path, model: str) -> tuple[pd.DataFrame, NetworkParams]:
    """The run's electrodes and the tuned widths of the model's networks."""
    electrodes_path = results / "data" / "electrodes.parquet"
    params_path = results / "tune" / base_model(model) / "best_params.json"
    for path in (electrodes_path, params_path):
        if not path.exists():
            raise InputError(f"split-spread: {path} is missing; run the workflow with {model} in `models` first")
    return pd.read_parquet(electrodes_path), NetworkParams.from_dict(read_json(params_path))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", type=Path, help="a finished run's results folder")
    parser.add_argument("--config", default="config.yaml", type=Path, help="that run's configuration")
    parser.add_argument("--model", default="model2", choices=KNOWN_MODELS)
    parser.add_argument("--split-seeds",
                        help="comma-separated; default: the configuration's split.seed and seven others from 1 on")
    parser.add_argument("--networks", type=positive_int, default=10,
                        help="networks per split (the train jobs' first seeds)")
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        config = load_config(args.config)
        seeds = parse_seeds(args.split_seeds) if args.split_seeds else default_split_seeds(config["split"]["seed"])
        electrodes, network_params = read_run(args.results, args.model)
        torch.set_num_threads(args.threads)
        with job_device(config["train"]["device"]) as device:
            table = split_spread(electrodes, model=args.model, split_seeds=seeds, networks=args.networks,
                                 config=config, network_params=network_params, device=device)
    except InputError as error:
        raise SystemExit(f"error: {error}") from None
    out = args.results / "analysis" / f"split_spread_{args.model}.csv"
    write_csv(table.assign(networks=args.networks), out)
    # what a reader needs to reproduce the table: the CSV alone cannot tell 1 network from 10, or the config
    write_json({"model": args.model, "networks": args.networks, "split_seeds": seeds, "threads": args.threads,
                "config": str(args.config), "config_sha256": file_sha256(args.config),
                "network_params": network_params.as_dict(), "code": code_provenance(), "generated": utc_timestamp()},
               out.with_suffix(".json"))
    summary = spread_summary(table)
    print(f"\n{args.model}: ensemble MAE of {args.networks} networks over {len(seeds)} random splits (seeds {seeds})")
    print(summary.to_string(index=False, float_format=lambda value: f"{value:.4g}"))
    print(f"written to {out}")


if __name__ == "__main__":
    main()

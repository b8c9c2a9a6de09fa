"""`make bench`: training speed against the machine's matmul peak, and ensemble prediction latency.

Prints figures and writes them to ``{results}/bench.json``; asserts nothing (timings belong here,
not in tests that flake on a busy machine).
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from electrode_ml import cpu_matmul
from electrode_ml.cli import positive_int
from electrode_ml.config import load_config, seeds
from electrode_ml.data import prepare_electrodes, read_electrode_csv
from electrode_ml.errors import InputError
from electrode_ml.features import fit_feature_sets
from electrode_ml.fileio import read_json, utc_timestamp, write_json
from electrode_ml.model import PAPER_PARAMS, NetworkParams, TrainedNetwork, TrainSettings, native_bfloat16, train_network
from electrode_ml.predict import StackedEnsemble, evaluated_checkpoints
from electrode_ml.report_inputs import code_provenance
from electrode_ml.runner import setup_logging
from electrode_ml.schema import TARGETS, UNITS
from electrode_ml.split import make_split
from electrode_ml.tables import frame_matrices
from electrode_ml.timing import PAPER_TIMING

log = logging.getLogger("electrode_ml.bench")


def matmul_peak_gflops(size: int = 2048, repeats: int = 10, dtype=torch.float32, library: str = "torch") -> float:
    """Best-of-N GEMM rate with the current thread count: the ceiling a dense MLP can reach.
    ``library`` 'onednn' times oneDNN's product instead of torch's ``mm`` (see cpu_matmul.py)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    if library == "onednn":
        packed = cpu_matmul.pack(b)

        def product():
            return cpu_matmul.linear(a, packed, None, relu=False)
    elif library == "torch":
        def product():
            return a @ b
    else:
        raise ValueError(f"library {library!r} is neither 'torch' nor 'onednn'")
    for _ in range(2):
        product()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def training_flops(n_train: int, n_val: int, n_inputs: int, params: NetworkParams, epochs: int) -> float:
    """Dense-layer FLOPs of one training: forward, weight gradients and input gradients (none for
    the first layer, whose input needs no gradient), plus the validation forward every epoch."""
    shapes = params.layer_shapes(n_inputs)
    forward = sum(2 * i * o for i, o in shapes)
    backward = sum(2 * i * o for i, o in shapes) + sum(2 * i * o for i, o in shapes[1:])
    return epochs * (n_train * (forward + backward) + n_val * forward)


def mixed_precision_figures(mixed: TrainedNetwork | None, flops: float, bf16_peak: float) -> dict:
    """bench.json's figures of the bfloat16 training; None where it was skipped."""
    names = ("train_one_network_s_bfloat16", "train_gflops_bfloat16", "train_bfloat16_fraction_of_bfloat16_peak",
             "train_best_val_loss_bfloat16")
    if mixed is None:
        return dict.fromkeys(names)
    gflops = flops / mixed.seconds / 1e9
    values = (round(mixed.seconds, 2), round(gflops, 1), round(gflops / bf16_peak, 3),
              round(float(mixed.history["val_loss"].min()), 5))
    return dict(zip(names, values))


def load_ensemble(results: Path, model: str, run_seeds: list[int]) -> list[TrainedNetwork]:
    """The run's trained networks: those its ensemble was evaluated on, as ``electrode-ml predict``
    loads them (a missing one is refused, not timed without); before the ensemble step has run,
    those of ``run_seeds`` that exist. Not every ``seed_*`` folder: one left by an earlier run with
    more seeds may hold another tuning's widths."""
    metrics_path = results / "ensemble" / model / "metrics.json"
    train_dir = results / "train" / model
    if metrics_path.exists():
        paths = evaluated_checkpoints(train_dir, read_json(metrics_path), metrics_path, model)
    else:
        paths = [path for seed in run_seeds if (path := train_dir / f"seed_{seed}" / "model.pt").exists()]
    return [TrainedNetwork.from_checkpoint(torch.load(path, weights_only=False)) for path in paths]


def time_prediction(ensemble: StackedEnsemble, x: np.ndarray, repeats: int = 50) -> float:
    """Median wall time of predicting ``x`` with every network of the ensemble, in ms."""
    features = torch.tensor(x, dtype=torch.float32)
    for _ in range(3):
        ensemble.predict_scaled(features)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        ensemble.predict_scaled(features)
        samples.append(time.perf_counter() - started)
    return 1000 * float(np.median(samples))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", type=Path)
    parser.add_argument("--config", default="config.yaml", type=Path,
                        help="the workflow configuration whose data, split and features the bench uses")
    parser.add_argument("--snapshot", help="default: the configuration's data.snapshot")
    parser.add_argument("--model", default="model1", choices=sorted(PAPER_PARAMS))
    parser.add_argument("--epochs", type=positive_int, default=1000)
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    parser.add_argument("--n-networks", type=positive_int, default=50,
                        help="copies of the benchmark network to time where the run has no trained ensemble")
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)

    # the network the workflow trains: its data, split and feature settings, the paper's widths
    try:
        config = load_config(args.config)
        snapshot = args.snapshot or config["data"]["snapshot"]
        electrodes, _ = prepare_electrodes(read_electrode_csv(snapshot), config["data"], where=snapshot)
        # the run's networks now, so that a missing one is refused before minutes of training
        trained = load_ensemble(args.results, args.model, seeds(config))
    except InputError as error:
        raise SystemExit(f"error: {error}") from None
    split = make_split(electrodes, method=config["split"]["method"], fractions=config["split"]["fractions"],
                       seed=config["split"]["seed"])
    _, frames = fit_feature_sets(electrodes, split, args.model, **config["features"])
    matrices = {name: frame_matrices(frame) for name, frame in frames.items()}
    x = {name: features for name, (features, _) in matrices.items()}
    y = {name: targets for name, (_, targets) in matrices.items()}

    peak = matmul_peak_gflops()
    # on a CPU where MKL runs slower kernels, torch.mm's rate is not the machine's
    libraries = ("torch", "onednn") if cpu_matmul.onednn_available() else ("torch",)
    onednn_peak = matmul_peak_gflops(library="onednn") if "onednn" in libraries else None
    params = PAPER_PARAMS[args.model]
    paper = PAPER_TIMING[args.model]
    log.info("training one %s network at the paper's settings (full batch, %d epochs, %d threads)",
             args.model, args.epochs, args.threads)
    settings = TrainSettings(epochs=args.epochs, batch_size=None, seed=0, log_every=250)
    network = train_network(x["train"], y["train"], x["val"], y["val"], params, settings)
    flops = training_flops(len(x["train"]), len(x["val"]), x["train"].shape[1], params, args.epochs)
    train_gflops = flops / network.seconds / 1e9
    # the same training on the other library too: the CPU-maker rule's ground for training
    train_s_by_library = {}
    for library in libraries:
        if library == settings.matmul_library():
            train_s_by_library[library] = round(network.seconds, 2)
        else:
            log.info("the same training on %s's products", library)
            other = train_network(x["train"], y["train"], x["val"], y["val"], params, replace(settings, matmul=library))
            train_s_by_library[library] = round(other.seconds, 2)
    bf16_peak = matmul_peak_gflops(dtype=torch.bfloat16)
    # emulated bfloat16 products are slower than float32's: nothing to learn from timing them
    mixed = None
    if native_bfloat16():
        log.info("the same training with bfloat16 matmuls (train.precision: bfloat16)")
        mixed = train_network(x["train"], y["train"], x["val"], y["val"], params, replace(settings, precision="bfloat16"))

    val_features = args.results / "features" / args.model / "val.parquet"
    if len(trained) >= 2 and val_features.exists():
        # the run's own validation features: its configuration may differ from the bench's
        networks, source = trained, f"{len(trained)} trained networks from {args.results}/train/{args.model}"
        x_val = frame_matrices(pd.read_parquet(val_features))[0]
    else:
        networks, x_val = [network] * args.n_networks, x["val"]
        source = f"{args.n_networks} copies of the benchmark network (no trained ensemble under {args.results})"
    ensemble = StackedEnsemble(networks)
    ensemble_ms = time_prediction(ensemble, x_val)
    # both libraries where both exist: what cpu_matmul's choice by CPU maker rests on, on this host
    ms_by_library = {library: round(ensemble_ms if library == ensemble.matmul else
                                    time_prediction(StackedEnsemble(networks, matmul=library), x_val), 2)
                     for library in libraries}
    # bfloat16 inference (electrode-ml predict --precision bfloat16): its speed and what it moves
    bf16_ms = time_prediction(StackedEnsemble(networks, dtype=torch.bfloat16), x_val)
    bf16_shift = np.abs(StackedEnsemble(networks, dtype=torch.bfloat16).predict(x_val).mean(axis=0)
                        - ensemble.predict(x_val).mean(axis=0))
    widths = sorted({(n.params.units_1, n.params.units_2, n.params.units_3) for n in networks})

    figures = {
        "generated": utc_timestamp(),
        "code": code_provenance(),  # bench.json keeps each model's latest entry: a stale one shows here
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "matmul_peak_gflops": round(peak, 1),
        "matmul_peak_gflops_onednn": onednn_peak and round(onednn_peak, 1),
        "train_inputs": int(x["train"].shape[1]),
        "train_space_groups": bool(config["features"]["space_groups"]),
        "train_one_network_s": round(network.seconds, 2),
        "train_matmul": settings.matmul_library(),
        "train_one_network_s_by_matmul": train_s_by_library,
        "train_epochs": args.epochs,
        "train_gflops": round(train_gflops, 1),
        # the goal's figure: against the peak of the library that multiplied (torch.mm's peak is MKL's,
        # 2.4 times below oneDNN's here, which made 40 % of the machine's peak read as 94 %)
        "train_fraction_of_peak": round(train_gflops / (onednn_peak if settings.matmul_library() == "onednn" else peak), 3),
        "train_fraction_of_torch_mm_peak": round(train_gflops / peak, 3),
        "train_fraction_of_onednn_peak": onednn_peak and round(train_gflops / onednn_peak, 3),
        "train_best_val_loss": round(float(network.history["val_loss"].min()), 5),
        **mixed_precision_figures(mixed, flops, bf16_peak),
        "paper_train_one_network_s_A40": paper["train_mean_s"],
        "ensemble_predict_val_ms": round(ensemble_ms, 2),
        "ensemble_predict_matmul": ensemble.matmul,
        "ensemble_predict_val_ms_by_matmul": ms_by_library,
        "ensemble_networks": len(networks),
        "ensemble_source": source,
        "ensemble_widths": widths,
        "val_electrodes": len(x_val),
        "ensemble_predict_val_ms_bfloat16": round(bf16_ms, 2),
        "bfloat16_matmul_peak_gflops": round(bf16_peak, 1),
        "bfloat16_mean_shift": {target: round(float(value), 4) for target, value in zip(TARGETS, bf16_shift.mean(axis=0))},
        "bfloat16_max_shift": {target: round(float(value), 4) for target, value in zip(TARGETS, bf16_shift.max(axis=0))},
        "paper_predict_val_ms_one_network_A40": paper["predict_ms"],
    }
    out = args.results / "bench.json"
    previous = read_json(out) if out.exists() else {}
    write_json({**previous, args.model: figures}, out)
    print(f"\nmatmul peak (float32, {args.threads} threads): {peak:8.1f} GFLOP/s (torch.mm)"
          + (f", {onednn_peak:.1f} GFLOP/s (oneDNN)" if onednn_peak else ""))
    print(f"one {args.model} training ({x['train'].shape[1]} inputs, paper widths), {args.epochs} epochs full batch: "
          f"{network.seconds:8.2f} s  ({settings.matmul_library()} products; {train_gflops:.1f} GFLOP/s = "
          + (f"{100 * train_gflops / onednn_peak:.0f} % of oneDNN's peak, " if onednn_peak else "")
          + f"{100 * train_gflops / peak:.0f} % of torch.mm's; paper {paper['train_mean_s']} s on an A40)")
    print("  the same by the library of the products: "
          + ", ".join(f"{library} {seconds:.2f} s" for library, seconds in train_s_by_library.items()))
    if mixed is None:
        print("the same with bfloat16 matmuls: skipped, this CPU has neither AMX nor AVX512-BF16")
    else:
        print(f"the same with bfloat16 matmuls (peak {bf16_peak:.1f} GFLOP/s): {mixed.seconds:8.2f} s  "
              f"({figures['train_gflops_bfloat16']} GFLOP/s = "
              f"{100 * figures['train_bfloat16_fraction_of_bfloat16_peak']:.0f} % of that peak); best validation "
              f"loss {figures['train_best_val_loss_bfloat16']:.4f} against float32's {figures['train_best_val_loss']:.4f}")
    print(f"predict {len(x_val)} val electrodes with {len(networks)} networks: {ensemble_ms:8.2f} ms "
          f"({ensemble.matmul} products)  "
          f"(paper: {paper['predict_ms']} ms for one network on an A40)  [{source}]")
    print("  the same by the library of the products: "
          + ", ".join(f"{library} {ms:.2f} ms" for library, ms in ms_by_library.items()))
    print(f"the same in bfloat16: {bf16_ms:8.2f} ms; ensemble means move by "
          + ", ".join(f"{UNITS[target]} {value:.4g} (max {worst:.3g})" for target, value, worst
                      in zip(TARGETS, bf16_shift.mean(axis=0), bf16_shift.max(axis=0))))
    print(f"written to {out}")


if __name__ == "__main__":
    main()

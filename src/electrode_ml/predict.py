"""Scoring electrodes with a trained ensemble: the fitted featuriser plus every seed's network,
all evaluated together (StackedEnsemble; OneDNNNetworks on x86 CPUs not made by Intel)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import joblib
import numpy as np
import pandas as pd
import torch

from electrode_ml import cpu_matmul
from electrode_ml.ensemble import Z_95, interval_scale
from electrode_ml.errors import InputError
from electrode_ml.features import applicability, featurizer_inputs
from electrode_ml.fileio import file_sha256, read_json
from electrode_ml.model import TrainedNetwork
from electrode_ml.models import base_model, is_physics_model, uses_voltage_trees
from electrode_ml.physics import PhysicsBaseline, combine
from electrode_ml.schema import TARGETS
from electrode_ml.trees import CAPACITY, VoltageTrees

# candidates featurised and scored this many at a time, to bound the memory of a long list
CHUNK_ROWS = 20_000


def relu_(hidden: torch.Tensor) -> torch.Tensor:
    """In-place ReLU; for bfloat16 as a clamp of the bits read as int16.

    A float's sign bit is its integer's sign bit, so clamping the integers at 0 zeroes exactly the
    negative values (and -0). torch's bfloat16 ``relu_`` on the CPU converts every element to
    float32 and back: 12 ms for one (50, 388, 405) activation on 1 thread, 0.9 ms as int16.
    """
    if hidden.dtype == torch.bfloat16:
        hidden.view(torch.int16).clamp_min_(0)
        return hidden
    return hidden.relu_()


_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def stream_workers(count: int, threads_each: int) -> ThreadPoolExecutor:
    """``count`` threads that each run torch's operators on ``threads_each`` threads of their own,
    started once per shape of pool. The lock makes two first calls at once build one pool (two
    would leave one idle for good), and keeps each setup's moment below from overlapping another."""
    with _pools_lock:
        if (count, threads_each) not in _pools:
            _pools[count, threads_each] = _started_workers(count, threads_each)
        return _pools[count, threads_each]


def _started_workers(count: int, threads_each: int) -> ThreadPoolExecutor:
    """torch's thread count is OpenMP's, kept per thread, but a thread takes up torch's
    process-wide count on its first query or parallel operator, and ``torch.set_num_threads`` sets
    that count too. So each worker queries first, then sets its own; the caller's is set back once
    every worker has (the barrier holds each until all have; its timeout turns a worker that never
    came into an error instead of a hang). A worker's error is raised here and the pool ended."""
    caller_threads = torch.get_num_threads()
    ready = threading.Barrier(count, timeout=60)

    def take_threads():
        torch.get_num_threads()
        torch.set_num_threads(threads_each)
        ready.wait()

    workers = ThreadPoolExecutor(count, thread_name_prefix="electrode-ml-networks")
    started = [workers.submit(take_threads) for _ in range(count)]
    try:
        done, _ = wait(started, return_when=FIRST_EXCEPTION)
        errors = [future.exception() for future in done if future.exception()]
        if errors:  # the first, before the workers waiting at the barrier are freed to end
            ready.abort()
            workers.shutdown(wait=False, cancel_futures=True)
            raise errors[0]
    finally:
        torch.set_num_threads(caller_threads)
    return workers


def _forget_pools() -> None:
    """In a forked child: the pools' threads were not copied, so a task given them would wait for
    ever, and the lock may have been held by a thread of the parent."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools)


def consecutive_shares(items: Sequence, count: int) -> list[Sequence]:
    """``items`` cut into ``count`` consecutive shares of sizes differing by at most one."""
    bounds = [len(items) * share // count for share in range(count + 1)]
    return [items[low:high] for low, high in zip(bounds, bounds[1:])]


def in_streams(items: Sequence, run: Callable[[Sequence], None]) -> None:
    """``run`` on consecutive shares of ``items``, one share per thread of the caller (at most one
    per item), each on a worker thread of its own with the caller's threads shared out among them.

    For many small products: a layer of one network at 388 rows is 0.13 ms of work on 2 threads,
    and the fork and join of each product split over both cost more than the other stream's wait.
    The operators release the GIL, so the streams overlap. An error in a stream is raised here.

    ``run`` should do all the work from its inputs on, the caller's thread none: after an operator
    parallel over the caller's threads, OpenMP keeps them spinning for some milliseconds, on the
    cores the streams need (a conversion and a concatenation of the input, 0.1 MB, before the
    streams took bfloat16 prediction from 9.4 to 16.6 ms). The workers take the caller's grad mode
    (torch keeps it per thread).
    """
    threads = torch.get_num_threads()
    count = max(1, min(threads, len(items)))
    shares = consecutive_shares(items, count)
    if count == 1:
        run(shares[0])
        return
    grad = torch.is_grad_enabled()

    def run_with_grad_mode(share):
        with torch.set_grad_enabled(grad):
            run(share)

    for _ in stream_workers(count, threads // count).map(run_with_grad_mode, shares):
        pass


class OneDNNNetworks:
    """Float32 networks through oneDNN's linear layer, for CPUs where torch's products are slow.

    Each weight is packed once into oneDNN's blocked layout, and the ReLU is fused into the
    product's output. The first layers of ``PASS_NETWORKS`` networks are one product (they read the
    same input); the later layers go network by network.

    The passes go in one stream per thread (:func:`in_streams`), each writing its networks'
    outputs into their place: with this release's networks (2 threads, 388 rows, median of 50)
    model1 took 17.3 instead of 20.1 ms and model2 18.8 instead of 21.2 ms, the same predictions
    bit for bit (docs/timings.md, "Prediction").
    """

    # five networks a pass, so that 50 share out evenly over 2 threads: ten a pass in one stream
    # were 1-2 % faster (model1 20.1 against 20.4 ms, model2 21.2 against 21.4)
    PASS_NETWORKS = 5

    def __init__(self, networks: list[TrainedNetwork], linear_names: list[str]):
        def weight(network, layer):
            return network.state_dict[f"{layer}.weight"].float()

        def bias(network, layer):
            return network.state_dict[f"{layer}.bias"].float().contiguous()

        first, later = linear_names[0], linear_names[1:]
        self.n_networks, self.n_outputs = len(networks), weight(networks[0], linear_names[-1]).shape[0]
        # per pass: its first network's index, the first layers (packed weight, bias), the later
        # layers per network
        self.passes = []
        for start in range(0, len(networks), self.PASS_NETWORKS):
            group = networks[start:start + self.PASS_NETWORKS]
            per_network = [[(cpu_matmul.pack(weight(n, layer)), bias(n, layer)) for layer in later] for n in group]
            self.passes.append((start, (cpu_matmul.pack(torch.cat([weight(n, first) for n in group])),
                                        torch.cat([bias(n, first) for n in group])), per_network))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, inputs) -> (networks, rows, 3), standardised."""
        outputs = torch.empty(self.n_networks, x.shape[0], self.n_outputs, dtype=torch.float32)
        in_streams(self.passes, lambda passes: self._forward(x, passes, outputs))
        return outputs

    @staticmethod
    def _forward(x: torch.Tensor, passes: list, outputs: torch.Tensor) -> None:
        """The networks of ``passes``, pass after pass, each one's (rows, 3) written into ``outputs``."""
        x = x.float()
        for start, (first_weight, first_bias), networks in passes:
            first = cpu_matmul.linear(x, first_weight, first_bias, relu=True)
            units = first.shape[1] // len(networks)
            for index, layers in enumerate(networks):
                hidden = first[:, index * units:(index + 1) * units]
                for depth, (weight, bias) in enumerate(layers):
                    hidden = cpu_matmul.linear(hidden, weight, bias, relu=depth < len(layers) - 1)
                outputs[start + index].copy_(hidden)
            # freed before the next pass allocates its own, so that glibc hands the same, already
            # touched memory back: kept until then, model1's 50 networks took about 1750 page
            # faults a call and 10 % longer
            del first, hidden


class StackedEnsemble:
    """All networks of an ensemble evaluated together instead of S forwards.

    Requires the networks to share their widths (they do: one tuned architecture, many seeds).
    Dropout is off at prediction time, so a layer is just ``relu(W x + b)``. Every network reads
    the same input, so the first layer is one matmul against the weight matrices of all networks
    of a pass stacked; the later layers, where each network has its own input, are one batched
    matmul each. Measured on 50 networks of widths 153/190/512 (388 rows, 2 threads): the single
    first matmul took bfloat16 prediction from 21 to 10 ms and float32 from 62 to 45 ms against a
    batched first layer.

    The biases ride inside the matmuls: each input gets a constant 1 appended, each weight matrix
    the bias as an extra column, and each hidden layer an extra unit that passes the 1 on (weight 1
    from the input's 1, 0 from the rest; ReLU keeps it). An ``addmm``/``baddbmm`` with a bias
    first copies the broadcast bias into its whole output, one more pass over every activation:
    without it, model1's 50 networks took 10.9 instead of 9.5 ms in bfloat16 and model2's 22.6
    instead of 21.4 ms in float32 (2 threads).

    Activations are held as (units, rows) and weights as (out, in): the three-output layer is
    then a matmul with the rows as its long side, half the time of a rows x 3 product.

    ``matmul`` 'onednn' (the default in float32 on x86 CPUs not made by Intel, where torch's
    products are MKL's slower kernels: see cpu_matmul.py) runs the networks through
    :class:`OneDNNNetworks` instead; docs/timings.md, "Prediction", has both paths' times.
    """

    # one pass's widest activation on the CPU (each stream's), in bytes: small enough to stay in cache between
    # layers, large enough for efficient matmuls (see predict_scaled)
    CPU_PASS_BYTES = 8_000_000

    def __init__(self, networks: list[TrainedNetwork], device: str = "cpu", dtype=torch.float32,
                 matmul: str | None = None):
        shapes = {(n.n_inputs, n.params.units_1, n.params.units_2, n.params.units_3) for n in networks}
        if len(shapes) != 1:
            raise ValueError(f"ensemble networks differ in shape: {sorted(shapes)}")
        self.device, self.dtype = device, dtype
        self.matmul = matmul = cpu_matmul.choose_library(matmul, device, dtype)
        linear_names = [name[: -len(".weight")] for name in networks[0].state_dict if name.endswith(".weight")]
        widths = [networks[0].state_dict[f"{layer}.weight"].shape[0] for layer in linear_names]
        self.n_networks, self.n_outputs = len(networks), widths[-1]
        # the widest activation of the stacked layout (a hidden layer carries the constant-1 unit)
        self.widest = max([width + 1 for width in widths[:-1]] + [widths[-1]])
        # one copy of the weights, in the layout of the path taken
        self.onednn = OneDNNNetworks(networks, linear_names) if matmul == "onednn" else None
        self.weights = [] if self.onednn else self._stacked_weights(networks, linear_names, device, dtype)
        self.target_mean = torch.as_tensor(np.stack([n.target_mean for n in networks]), dtype=torch.float64).unsqueeze(1)
        self.target_std = torch.as_tensor(np.stack([n.target_std for n in networks]), dtype=torch.float64).unsqueeze(1)

    def __len__(self) -> int:
        return self.n_networks

    @staticmethod
    def _stacked_weights(networks: list[TrainedNetwork], linear_names: list[str], device, dtype) -> list[torch.Tensor]:
        """Per layer (networks, out (+1), in + 1): the bias folded in, a hidden layer's extra unit
        passing the constant 1 on."""
        weights = []
        for index, layer in enumerate(linear_names):
            weight = torch.stack([n.state_dict[f"{layer}.weight"] for n in networks])  # (S, out, in)
            bias = torch.stack([n.state_dict[f"{layer}.bias"] for n in networks])  # (S, out)
            n_networks, n_out, n_in = weight.shape
            hidden = index < len(linear_names) - 1
            matrix = torch.zeros(n_networks, n_out + hidden, n_in + 1, dtype=weight.dtype)
            matrix[:, :n_out, :n_in] = weight
            matrix[:, :n_out, n_in] = bias
            if hidden:
                matrix[:, n_out, n_in] = 1.0
            weights.append(matrix.to(device, dtype).contiguous())
        return weights

    @torch.no_grad()
    def predict_scaled(self, x: torch.Tensor) -> torch.Tensor:
        """Shape (n_networks, n_rows, 3), standardised.

        On the CPU the networks go through in passes whose widest activation is about
        ``CPU_PASS_BYTES`` (ten of model1's networks at 388 rows; rows in parts where one network's
        would be more), every pass writing into the same activations. All 50 networks at once write and read back up to 38 MB per layer; and
        a fresh activation per pass is a fresh mmap whose pages fault in on first touch. Against
        rows x units activations allocated afresh in passes of 128 rows, this took model1's 50
        networks 21.2 instead of 36.7 ms and model2's 18.4 instead of 20.6 ms (388 rows, float32,
        2 threads; docs/timings.md, "Prediction"). The networks go in one stream per thread
        (:func:`in_streams`), each with activations of its own (so the cache holds one set per
        stream): bfloat16 on an AMD EPYC (2 threads) took 9.4 instead of 12.5 ms (model1) and 9.9
        instead of 12.5 ms (model2).
        """
        if self.onednn:
            return self.onednn(x)
        on_cpu = torch.device(self.device).type == "cpu"
        rows_per_pass = max(1, self.CPU_PASS_BYTES // (self.widest * self.dtype.itemsize))
        if on_cpu and x.shape[0] > rows_per_pass:
            return torch.cat([self.predict_scaled(x[start:start + rows_per_pass])
                              for start in range(0, x.shape[0], rows_per_pass)], dim=1)
        outputs = torch.empty(len(self), self.n_outputs, x.shape[0], dtype=self.dtype, device=self.device)
        if on_cpu:
            in_streams(range(len(self)), lambda networks: self._networks(x, networks, outputs))
        else:
            self._networks(x, range(len(self)), outputs)
        return outputs.transpose(1, 2)

    def _networks(self, x: torch.Tensor, networks: range, outputs: torch.Tensor) -> None:
        """``networks`` on ``x``, written into their rows of ``outputs`` (networks, 3, rows); on the
        CPU in passes whose widest activation is about ``CPU_PASS_BYTES``, every pass writing into
        the same activations."""
        x = x.to(self.device, self.dtype)
        rows = x.shape[0]
        inputs = torch.cat([x, torch.ones(rows, 1, dtype=x.dtype, device=x.device)], dim=1).T
        per_pass = len(networks)
        if x.device.type == "cpu":
            per_pass = min(per_pass, max(1, self.CPU_PASS_BYTES // max(1, rows * self.widest * x.element_size())))
        activations = [x.new_empty(per_pass, weight.shape[1], rows) for weight in self.weights[:-1]]
        for first in range(networks.start, networks.stop, per_pass):
            last = min(first + per_pass, networks.stop)
            self._forward(inputs, first, last, [a[:last - first] for a in activations] + [outputs[first:last]])

    def _forward(self, inputs: torch.Tensor, first: int, last: int, activations: list[torch.Tensor]) -> None:
        """Networks ``first .. last - 1`` on ``inputs`` (inputs + 1, rows), each layer's output
        written into ``activations`` (networks, units, rows)."""
        torch.mm(self.weights[0][first:last].flatten(0, 1), inputs, out=activations[0].flatten(0, 1))
        hidden = relu_(activations[0])
        for weight, activation in zip(self.weights[1:], activations[1:]):
            hidden = torch.bmm(weight[first:last], hidden, out=activation)
            if activation is not activations[-1]:
                hidden = relu_(hidden)

    def predict(self, x: np.ndarray, max_elements: int = 25_000_000) -> np.ndarray:
        """Shape (n_networks, n_rows, 3) in physical units.

        Rows go through in sub-batches so that one activation (networks x rows x width) stays
        near 100 MB: 200,000 candidates through 50 networks of width 512 otherwise peak at 5 GB.
        """
        rows = max(1, max_elements // (len(self) * self.widest))
        # numpy converts on this thread alone, and the outputs wait for the end: a parallel torch
        # operator between the parts would leave OpenMP spinning on the cores (in_streams)
        parts = [self.predict_scaled(torch.from_numpy(np.array(x[start:start + rows], dtype=np.float32)))
                 for start in range(0, len(x), rows)]
        if not parts:
            return np.zeros((len(self), 0, self.n_outputs))
        scaled = torch.cat([part.cpu().double() for part in parts], dim=1)
        return (scaled * self.target_std + self.target_mean).numpy()


@dataclass
class MemberPredictions:
    """Per-network values, shape (n_networks, n_rows, 3); where physics gave a value outright,
    shape (n_rows, 3); and, per row, why the physics did not describe it ('' where it did, and
    for a model without physics)."""

    members: np.ndarray
    held: np.ndarray
    physics_notes: np.ndarray


def _fitted(path: Path, what: str, pronoun: str):
    """A joblib file the workflow fits, or one line saying it is missing."""
    if not path.exists():
        raise InputError(f"no {what} at {path} (rerun the workflow to fit {pronoun})")
    return joblib.load(path)


# A scaled feature beyond this (in training spreads; the training rows' lie within a few dozen)
# cannot be scored: three layers of a few hundred units multiply it by up to about 1e6, and
# float32 ends at 3.4e38. An absurd but computable row (a million ions per framework unit, about
# 1e8 spreads) stays scored, and flagged by its implausible values.
MAX_SCALED_FEATURE = 1e20


def check_consistent(results: Path, base: str, featurizer, checkpoints: list[dict]) -> None:
    """Refuse, in one line, networks and a featuriser that do not belong together.

    The workflow reruns what a code or config change makes stale; a command reading a results
    folder does not. A run stopped midway left new features beside old networks (422 of 429 test
    voltages moved, by up to 2.9 V, exit code 0), and an edit to the featurisation since the run
    scored candidates with features the networks never saw."""
    features_dir = results / "features" / base
    width = len(featurizer.get_feature_names_out())
    if any(checkpoint["n_inputs"] != width for checkpoint in checkpoints):
        raise InputError(f"{results}/train/{base}: networks with {checkpoints[0]['n_inputs']} inputs beside a "
                         f"featuriser of {width} ({features_dir}): the folders come from different runs; rerun the workflow")
    train_path = features_dir / "train.parquet"
    if not train_path.exists():
        return
    recorded = {checkpoint.get("features_sha256") for checkpoint in checkpoints} - {None}  # None: an earlier release
    if recorded and recorded != {file_sha256(train_path)}:
        raise InputError(f"{results}/train/{base}: networks trained on other features than {train_path} (a run stopped "
                         "midway, or folders of two runs): rerun the workflow")
    electrodes_path = results / "data" / "electrodes.parquet"
    if electrodes_path.exists():
        # all of them (0.6 s for model1_redox): a change may touch a few dozen rows of thousands
        stored = pd.read_parquet(train_path)
        electrodes = pd.read_parquet(electrodes_path).set_index("battery_id", drop=False)
        missing = ~stored["battery_id"].isin(electrodes.index)
        if missing.any():
            raise InputError(f"{electrodes_path} lacks {missing.sum()} of the {len(stored)} electrodes {base} was "
                             f"trained on (e.g. {stored['battery_id'][missing].iloc[0]}): data and features of "
                             "different runs; rerun the workflow")
        again = np.asarray(featurizer.transform(electrodes.loc[stored["battery_id"]]), dtype=np.float32)
        expected = stored[list(featurizer.get_feature_names_out())].to_numpy(np.float32)
        if not np.allclose(again, expected, rtol=1e-5, atol=1e-5):
            raise InputError(f"the installed electrode-ml featurises {base}'s training electrodes otherwise than the run "
                             f"under {results} did (its code or its data changed since): rerun the workflow")


def evaluated_checkpoints(train_dir: Path, metrics: dict, metrics_path: Path, model: str) -> list[Path]:
    """The checkpoints of the seeds ``model``'s ensemble was evaluated and calibrated on (its
    metrics.json's ``seeds``), and no others.

    Every ``seed_*`` folder, as before, scored with 2 networks of 50 once 48 folders were gone (a
    calibrated voltage interval 0.056 V wide where the 50 gave 1.3 V, exit code 0), and took in a
    folder left by an earlier run with more seeds."""
    seeds = metrics.get("seeds")
    if seeds is None:  # an earlier release's metrics: every folder, if there are as many as it evaluated
        found = sorted(train_dir.glob("seed_*/model.pt"))
        if len(found) != metrics["n_seeds"]:
            raise InputError(f"{train_dir}: {len(found)} trained networks, but the {model} ensemble was evaluated "
                             f"on {metrics['n_seeds']} (its metrics.json): rerun the workflow")
        return found
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 for seed in seeds)):
        raise InputError(f"{metrics_path}: 'seeds' should list the evaluated seeds as whole numbers, not "
                         f"{seeds!r:.60}: rerun the workflow's ensemble step")
    # in the folders' sorted order, as before: the order the ensemble's means are summed in
    paths = sorted(train_dir / f"seed_{seed}" / "model.pt" for seed in seeds)
    missing = [path.parent.name for path in paths if not path.exists()]
    if missing:
        raise InputError(f"{train_dir}: {len(missing)} of the {len(seeds)} networks the {model} ensemble was "
                         f"evaluated on are missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}):"
                         " rerun the workflow to train them again")
    return paths


@dataclass
class TrainedEnsemble:
    """What a workflow run leaves for later use: featuriser + networks of one model."""

    model: str
    featurizer: object
    networks: StackedEnsemble
    intervals: dict  # the calibration of the 95 % interval (metrics.json's prediction_interval)
    physics: PhysicsBaseline | None = None
    trees: VoltageTrees | None = None

    @classmethod
    def load(cls, results: str | Path, model: str, device: str = "cpu", dtype=torch.float32) -> "TrainedEnsemble":
        """A physics model reuses its base model's featuriser and networks (see physics.py); the
        calibration of the intervals comes from the model's evaluated ensemble (metrics.json)."""
        results = Path(results)
        base = base_model(model)
        transformer_path = results / "features" / base / "transformers.joblib"
        train_dir = results / "train" / base
        if not transformer_path.exists() or not any(train_dir.glob("seed_*/model.pt")):
            raise InputError(f"no trained {model} under {results} (run the workflow first, "
                             f"or pass --results pointing at its output folder)")
        metrics_path = results / "ensemble" / model / "metrics.json"
        if not metrics_path.exists():  # no calibration: the calibrated interval promised would be missing
            raise InputError(f"no evaluated ensemble of {model} at {metrics_path}: the workflow calibrates the "
                             f"intervals of the models in config `models` (add {model} there and rerun)")
        metrics = read_json(metrics_path)
        checkpoints = evaluated_checkpoints(train_dir, metrics, metrics_path, model)
        loaded = [torch.load(path, map_location="cpu", weights_only=False) for path in checkpoints]
        featurizer = joblib.load(transformer_path)
        check_consistent(results, base, featurizer, loaded)
        networks = [TrainedNetwork.from_checkpoint(checkpoint) for checkpoint in loaded]
        physics = _fitted(results / "physics" / model / "physics.joblib", f"fitted physics of {model}",
                          "it") if is_physics_model(model) else None
        trees = None
        if uses_voltage_trees(model):
            trees_path = results / "physics" / model / "voltage_trees.joblib"
            trees = _fitted(trees_path, f"voltage trees of {model}", "them")
            if not getattr(trees, "models", None):
                raise InputError(f"voltage trees of {model} at {trees_path} are an earlier release's single "
                                 f"model (rerun the workflow to fit them again)")
        return cls(model, featurizer, StackedEnsemble(networks, device=device, dtype=dtype),
                   metrics["prediction_interval"], physics, trees)

    @property
    def input_columns(self) -> list[str]:
        """What a candidate must hold: its id and the columns the run's featuriser reads (the physics
        reads the formulas and the ion, and model2_phys the DFT energies, which it reads too)."""
        return ["battery_id", *featurizer_inputs(self.featurizer)]

    def features(self, electrodes: pd.DataFrame) -> np.ndarray:
        """The networks' inputs. The transform's float64 and pandas intermediates are several times
        the result's size, so callers pass a chunk of rows at a time (:data:`CHUNK_ROWS`)."""
        if electrodes.empty:  # some scalers refuse to transform no rows
            return np.empty((0, len(self.featurizer.get_feature_names_out())), dtype=np.float32)
        with np.errstate(over="ignore"):  # an overflow is found by unusable_features, not printed
            return np.asarray(self.featurizer.transform(electrodes), dtype=np.float32)

    def unusable_features(self, features: np.ndarray) -> list[str]:
        """Per row, the input fields whose features lie beyond :data:`MAX_SCALED_FEATURE` (or are not
        finite in float32), space-separated ('' for a usable row): values inside float32's range
        (3.4e38 in a DFT field, a count of 1e300) overflowed once scaled, or in the networks, which
        then returned a constant, inf or NaN, unflagged."""
        blocks = {name: list(columns) for name, _, columns in self.featurizer.transformers_ if name != "remainder"}
        owners = []
        for name in self.featurizer.get_feature_names_out():
            block, _, column = name.partition("__")
            read = blocks.get(block, [name])
            owners.append([column] if column in read else read)  # a scaled field is its own feature
        unusable = ~np.isfinite(features) | (np.abs(features) > MAX_SCALED_FEATURE)
        fields = [""] * len(features)
        for row in np.flatnonzero(unusable.any(axis=1)):
            fields[row] = " ".join(dict.fromkeys(field for column in np.flatnonzero(unusable[row])
                                                 for field in owners[column]))
        return fields

    def predict_members(self, electrodes: pd.DataFrame, chunk_rows: int = CHUNK_ROWS,
                        features: np.ndarray | None = None) -> MemberPredictions:
        """Every network's predictions, computed in chunks to bound memory (see MemberPredictions);
        ``features``, :meth:`features` of the same rows where the caller has them already."""
        parts = [self._predict_chunk(electrodes.iloc[start:start + chunk_rows],
                                     None if features is None else features[start:start + chunk_rows])
                 for start in range(0, len(electrodes), chunk_rows)]
        if not parts:
            return MemberPredictions(np.zeros((len(self.networks), 0, len(TARGETS))),
                                     np.zeros((0, len(TARGETS)), dtype=bool), np.array([], dtype=object))
        return MemberPredictions(np.concatenate([part.members for part in parts], axis=1),
                                 np.concatenate([part.held for part in parts]),
                                 np.concatenate([part.physics_notes for part in parts]))

    def _predict_chunk(self, electrodes: pd.DataFrame, features: np.ndarray | None = None) -> MemberPredictions:
        features = self.features(electrodes) if features is None else features
        members = self.networks.predict(features)
        if self.physics is None:
            return MemberPredictions(members, np.zeros(members.shape[1:], dtype=bool),
                                     np.full(len(electrodes), "", dtype=object))
        notes = self.physics.reasons(electrodes)
        physics = self.physics.transform(electrodes, notes)
        if self.trees is not None:  # the trees' share follows the physics capacity
            members = self.trees.blend(members, features, physics[:, CAPACITY])
        return MemberPredictions(combine(physics[np.newaxis], members), ~np.isnan(physics), notes)

    def predict(self, electrodes: pd.DataFrame, features: np.ndarray | None = None) -> pd.DataFrame:
        """Wide table: battery_id and, per target, mean, std, the paper's 95 % CI of the mean, the
        calibrated 95 % prediction interval (physics values get the physics quantile) and where the
        value came from; then, for a physics model, why the physics did not describe a row, the
        elements no training formula held and, with DFT inputs, the fields outside their training
        range (:func:`electrode_ml.features.applicability`)."""
        predicted = self.predict_members(electrodes, features=features)
        members, held = predicted.members, predicted.held
        n = members.shape[0]
        mean = members.mean(axis=0)
        std = members.std(axis=0, ddof=1)
        half = Z_95 * std / np.sqrt(n)
        columns = {"battery_id": electrodes["battery_id"].to_numpy()}
        for index, target in enumerate(TARGETS):
            columns[f"{target}_mean"] = mean[:, index]
            columns[f"{target}_std"] = std[:, index]
            columns[f"{target}_ci_low"] = mean[:, index] - half[:, index]
            columns[f"{target}_ci_high"] = mean[:, index] + half[:, index]
            quantile = {source: np.inf if value is None else value  # null: too few rows to calibrate
                        for source, value in self.intervals["quantile"][target].items()}
            by_source = np.where(held[:, index], quantile.get("physics", np.inf), quantile["network"])
            pi_half = by_source * interval_scale(std[:, index], self.intervals["spread_floor"][target])
            columns[f"{target}_pi_low"] = mean[:, index] - pi_half
            columns[f"{target}_pi_high"] = mean[:, index] + pi_half
            columns[f"{target}_source"] = np.where(held[:, index], "physics", "network")
        if self.physics is not None:
            columns["physics_note"] = predicted.physics_notes
        flags = applicability(self.featurizer, electrodes)
        columns.update({name: flags[name].to_numpy() for name in flags.columns.drop("battery_id")})
        return pd.DataFrame(columns)

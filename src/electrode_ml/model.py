"""The paper's network (3 x Dense + Dropout, 3 outputs), its training loop, and one network's prediction.

The training loop runs on the hand-written kernels of training_kernels.py; the whole ensemble's
prediction (predict.StackedEnsemble) is in predict.py.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from electrode_ml import cpu_matmul
from electrode_ml.schema import TARGETS
from electrode_ml.training_kernels import FlatRMSprop, ReLUDropout, TrainingStep, keep_freed_memory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkParams:
    """The seven hyperparameters the paper tunes (Table 2)."""

    units_1: int
    units_2: int
    units_3: int
    dropout_1: float
    dropout_2: float
    dropout_3: float
    lr: float

    @classmethod
    def from_dict(cls, values: dict) -> "NetworkParams":
        return cls(**{name: values[name] for name in cls.__dataclass_fields__})

    def as_dict(self) -> dict:
        return asdict(self)

    def layer_shapes(self, n_inputs: int, n_outputs: int = len(TARGETS)) -> list[tuple[int, int]]:
        widths = [n_inputs, self.units_1, self.units_2, self.units_3, n_outputs]
        return list(zip(widths[:-1], widths[1:]))

    def multiply_adds(self, n_inputs: int) -> int:
        """Per row and forward pass: what training and prediction time scale with."""
        return sum(i * o for i, o in self.layer_shapes(n_inputs))


# Table 2 of the paper: the Bayesian-optimisation optimum of each model.
PAPER_PARAMS = {
    "model1": NetworkParams(404, 116, 276, 0.162, 0.207, 0.254, 3.23e-4),
    "model2": NetworkParams(230, 160, 318, 0.245, 0.247, 0.343, 5.29e-4),
}


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 1000
    batch_size: int | None = None  # None = full batch
    patience: int | None = None  # None = train all epochs
    # the tuned learning rate times this: see config.yaml, train.lr_scale
    lr_scale: float = 1.0
    # None: the paper's MSE; a number: Huber loss with this delta (standardised units)
    huber_delta: float | None = None
    # the matmuls' operands: "float32", or "bfloat16" (mixed precision: float32 weights, optimiser,
    # loss and elementwise work; see training_kernels.TrainingStep)
    precision: str = "float32"
    # the float32 products' library, 'torch' or 'onednn'; None: by the CPU's maker (cpu_matmul.py)
    matmul: str | None = None
    seed: int = 0
    device: str = "cpu"
    log_every: int = 100

    def matmul_library(self) -> str:
        """The library that will multiply the training's matrices: 'torch' or 'onednn'."""
        return cpu_matmul.choose_library(self.matmul, self.device, getattr(torch, self.precision))

    @classmethod
    def from_config(cls, train: dict, seed: int, device: str, model: str) -> "TrainSettings":
        """The config's ``train`` section as ``model``'s network of ``seed`` trains (its own Huber delta)."""
        return cls(epochs=train["epochs"], batch_size=train["batch_size"], patience=train["patience"],
                   lr_scale=train["lr_scale"], huber_delta=train["huber_delta"].get(model),
                   precision=train["precision"], seed=seed, device=device)


class MLP(nn.Module):
    def __init__(self, n_inputs: int, params: NetworkParams, n_outputs: int = len(TARGETS)):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for units, rate in ((params.units_1, params.dropout_1), (params.units_2, params.dropout_2),
                            (params.units_3, params.dropout_3)):
            layers += [nn.Linear(width, units), ReLUDropout(rate)]
            width = units
        layers.append(nn.Linear(width, n_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@dataclass
class TrainedNetwork:
    """Weights plus what is needed to map standardised outputs back to physical units."""

    n_inputs: int
    params: NetworkParams
    state_dict: dict
    target_mean: np.ndarray
    target_std: np.ndarray
    history: pd.DataFrame
    best_epoch: int
    seconds: float

    def module(self, device: str = "cpu") -> MLP:
        network = MLP(self.n_inputs, self.params)
        network.load_state_dict(self.state_dict)
        return network.to(device).eval()

    def to_checkpoint(self) -> dict:
        return {
            "n_inputs": self.n_inputs, "params": self.params.as_dict(), "state_dict": self.state_dict,
            "target_mean": self.target_mean, "target_std": self.target_std,
            "best_epoch": self.best_epoch, "seconds": self.seconds,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> "TrainedNetwork":
        return cls(
            n_inputs=checkpoint["n_inputs"], params=NetworkParams.from_dict(checkpoint["params"]),
            state_dict=checkpoint["state_dict"], target_mean=np.asarray(checkpoint["target_mean"]),
            target_std=np.asarray(checkpoint["target_std"]), history=pd.DataFrame(),
            best_epoch=checkpoint["best_epoch"], seconds=checkpoint["seconds"],
        )


def matmul_precision(name: str, device: torch.device) -> torch.dtype:
    """The dtype of the training matmuls' operands; warns where bfloat16 has no hardware."""
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"train.precision: {name!r} is neither float32 nor bfloat16")
    if name == "bfloat16" and device.type == "cpu":
        warn_if_bfloat16_is_emulated()
    return getattr(torch, name)


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16)."""
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


@functools.cache
def warn_if_bfloat16_is_emulated() -> None:
    """Once per process: a tuning trains 30 networks."""
    if not native_bfloat16():
        log.warning("train.precision bfloat16 on a CPU without AMX or AVX512-BF16: its matmuls are emulated "
                    "and slower than float32's")


def train_network(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                  params: NetworkParams, settings: TrainSettings) -> TrainedNetwork:
    """RMSprop on MSE (or Huber) of standardised targets; keeps the weights of the epoch with the
    lowest validation MSE."""
    started = time.perf_counter()
    keep_freed_memory()
    torch.manual_seed(settings.seed)
    shuffler = torch.Generator().manual_seed(settings.seed)
    device = torch.device(settings.device)

    target_mean = y_train.mean(axis=0)
    target_std = y_train.std(axis=0)
    target_std[target_std == 0] = 1.0

    def tensors(x, y):
        # torch.tensor copies: inputs may be read-only views of a parquet-backed frame
        return (torch.tensor(x, dtype=torch.float32, device=device),
                torch.tensor((y - target_mean) / target_std, dtype=torch.float32, device=device))

    xt, yt = tensors(x_train, y_train)
    xv, yv = tensors(x_val, y_val)
    # eval mode: training and its validation score go through the step's own kernels, not forward()
    network = MLP(xt.shape[1], params).to(device).eval()
    # Keras defaults (rho 0.9, eps 1e-7): the paper trained with Keras.
    optimiser = FlatRMSprop(network, lr=params.lr * settings.lr_scale, alpha=0.9, eps=1e-7)
    precision = matmul_precision(settings.precision, device)
    step = TrainingStep(network, optimiser, settings.huber_delta, precision, settings.matmul)
    # the training rows rounded once; validation reads the float32 rows (TrainingStep.evaluate)
    x_steps = xt.to(precision)
    loss_fn = nn.MSELoss()
    n_rows = xt.shape[0]
    batch = settings.batch_size or n_rows

    best_loss, best_epoch, best_weights, waited = float("inf"), 0, None, 0
    records = []
    for epoch in range(1, settings.epochs + 1):
        if batch < n_rows:
            # one gather an epoch; the batches are then contiguous slices of the shuffled copy
            order = torch.randperm(n_rows, generator=shuffler).to(device)
            x_epoch, y_epoch = x_steps.index_select(0, order), yt.index_select(0, order)
        else:
            x_epoch, y_epoch = x_steps, yt
        train_loss = 0.0
        for start in range(0, n_rows, batch):
            loss = step(x_epoch[start:start + batch], y_epoch[start:start + batch])
            train_loss += loss * (min(batch, n_rows - start))
        val_loss = float(loss_fn(step.evaluate(xv), yv))
        train_loss = float(train_loss) / n_rows
        records.append((epoch, train_loss, val_loss))
        if val_loss < best_loss:
            best_loss, best_epoch, waited = val_loss, epoch, 0
            best_weights = optimiser.weights.clone()
        else:
            waited += 1
        if settings.log_every and epoch % settings.log_every == 0:
            log.info("epoch %d/%d  train loss %.4f  val loss %.4f  (best %.4f at %d)",
                     epoch, settings.epochs, train_loss, val_loss, best_loss, best_epoch)
        if settings.patience and waited >= settings.patience:
            log.info("early stop at epoch %d: no val improvement for %d epochs", epoch, settings.patience)
            break

    history = pd.DataFrame(records, columns=["epoch", "train_loss", "val_loss"])
    if best_weights is not None:
        optimiser.weights.copy_(best_weights)
    # clone: the parameters are views of the optimiser's flat buffer, which torch.save would write
    # whole for each of them
    state = {name: tensor.detach().cpu().clone() for name, tensor in network.state_dict().items()}
    return TrainedNetwork(xt.shape[1], params, state, target_mean, target_std, history, best_epoch,
                          time.perf_counter() - started)


def predict(network: TrainedNetwork, x: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Predictions in physical units (V, mAh/g, Wh/kg)."""
    module = network.module(device)
    with torch.no_grad():
        # torch.tensor copies: a read-only view of a parquet-backed frame made torch.as_tensor print
        # a UserWarning into the feature contribution's run output
        scaled = module(torch.tensor(x, dtype=torch.float32, device=device)).cpu().numpy()
    return scaled * network.target_std + network.target_mean


# train(x_train, y_train, x_val, y_val, seed) -> predict(x): how evaluations that train many
# networks (the grouped split, the feature contribution, the split spread) get each one
Trainer = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int], Callable[[np.ndarray], np.ndarray]]


def seed_trainer(train: dict, network_params: NetworkParams, device: str, model: str) -> Trainer:
    """A :data:`Trainer` of ``model``'s networks at ``network_params`` and the config's ``train`` recipe."""
    def trainer(x_train, y_train, x_val, y_val, seed):
        network = train_network(x_train, y_train, x_val, y_val, network_params,
                                replace(TrainSettings.from_config(train, seed, device, model), log_every=0))
        return lambda x: predict(network, x, device)

    return trainer

"""The paper's network (3 x Dense + Dropout, 3 outputs), its training loop, and prediction."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from electrode_ml.schema import TARGETS

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
    # loss and elementwise work; see TrainingStep)
    precision: str = "float32"
    seed: int = 0
    device: str = "cpu"
    log_every: int = 100


class ReLUDropout(nn.Module):
    """ReLU followed by inverted dropout, fused for speed on the CPU.

    The paper's Dense -> Dropout with ReLU units. Two choices took a full-batch epoch of the
    paper's model1 network from 33.3 to 26.2 ms (2 CPU threads) against ReLU then a dropout that
    draws one float per element: the mask comes from random bytes (one 64-bit draw gives eight
    masks), so the rate acts in steps of 1/256 (0.162 acts as 41/256 = 0.1602); and ReLU's and
    dropout's gradients share one saved factor. Seeded by ``torch.manual_seed``: training stays
    deterministic.

    The factor (0 or the dropout scale) is computed without gradient and multiplied in with
    torch's own ``mul``, whose C++ backward multiplies the gradient by that saved factor. A
    Python ``autograd.Function`` doing the same called back into Python once per layer and step:
    a model2 epoch at batch 128 (1 thread) took about 210 ms with it and 190 ms without, with
    identical numbers.

    The factor is built in float32 throughout: torch's CPU kernels that read or write booleans
    (``gt``, ``ge``, a bool-to-float copy) are unvectorised and took 4-6 times as long as a float
    pass of the same size, so the bytes are converted to float, clamped to 0 or 1 against the
    threshold, scaled, and zeroed where ``x <= 0`` by ReLU's own backward kernel: the same factor, bit
    for bit, as boolean masks, in less than half their time (docs/method.md, "Network").
    """

    LEVELS = 256

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)
        self.threshold = round(self.p * self.LEVELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return torch.relu(x)
        return x * self.factor(x.detach())

    def factor(self, x: torch.Tensor, out: torch.Tensor | None = None,
               words: torch.Tensor | None = None) -> torch.Tensor:
        """What training multiplies ``x`` by: 0 where ReLU or the mask drops a unit, else the
        dropout scale (1 without dropout). The optional arguments are buffers to reuse."""
        out = torch.empty_like(x) if out is None else out
        if self.threshold:
            n = x.numel()
            if words is None:
                words = torch.empty((n + 7) // 8, dtype=torch.int64, device=x.device)
            words.random_(-2**63, 2**63 - 1)
            # a byte at or above the threshold keeps its unit: clamped to [t - 1, t], minus t - 1
            out.copy_(words.view(torch.uint8)[:n].view_as(x))
            out.clamp_(self.threshold - 1, self.threshold).sub_(self.threshold - 1)
            out.mul_(self.LEVELS / (self.LEVELS - self.threshold))
        else:
            out.fill_(1.0)
        # ReLU's backward: the factor where x > 0, else 0
        return torch.ops.aten.threshold_backward.grad_input(out, x, 0.0, grad_input=out)


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


class FlatRMSprop:
    """``torch.optim.RMSprop`` (no momentum, not centred, no weight decay) over one flat buffer.

    The network's parameters and gradients are moved into one contiguous tensor each, so a step
    is three elementwise passes over all weights instead of a Python loop of five ops for each of
    the eight parameter tensors. Same operations per element as torch's single-tensor RMSprop,
    so the same numbers bit for bit. On model2's tuned network at batch 128 (1 thread) torch's
    optimiser took 19 % of a mini-batch epoch; with this one the epoch is 12 % shorter.
    """

    # Each parameter starts on a 64-byte boundary (16 floats). The BLAS result depends on the
    # output's alignment; autograd's fresh gradients are 64-byte aligned, so gradients written
    # straight into these slices match autograd's bit for bit.
    ALIGN = 16

    def __init__(self, module: nn.Module, lr: float, alpha: float, eps: float):
        parameters = list(module.parameters())
        offsets = np.cumsum([0] + [-(-p.numel() // self.ALIGN) * self.ALIGN for p in parameters])
        # the padding between parameters stays 0: its gradient is 0, so RMSprop never moves it
        self.weights = parameters[0].new_zeros(int(offsets[-1]))
        self.grads = torch.zeros_like(self.weights)
        self.square_avg = torch.zeros_like(self.weights)
        self.denominator = torch.empty_like(self.weights)
        self.lr, self.alpha, self.eps = lr, alpha, eps
        for parameter, offset in zip(parameters, offsets):
            size = parameter.numel()
            self.weights[offset:offset + size] = parameter.detach().reshape(-1)
            # autograd accumulates into an existing .grad in place: the views fill self.grads
            parameter.data = self.weights[offset:offset + size].view_as(parameter)
            parameter.grad = self.grads[offset:offset + size].view_as(parameter)

    def zero_grad(self) -> None:
        self.grads.zero_()

    @torch.no_grad()
    def step(self) -> None:
        self.square_avg.mul_(self.alpha).addcmul_(self.grads, self.grads, value=1 - self.alpha)
        denominator = torch.sqrt(self.square_avg, out=self.denominator).add_(self.eps)
        self.weights.addcdiv_(self.grads, denominator, value=-self.lr)


class TrainingStep:
    """One RMSprop step on a batch, with the MLP's backward pass written out.

    The loss minimised is MSE, or Huber with ``huber_delta``; the step returns the batch's MSE
    either way, so that every model's ``history.csv`` reads in the same unit.

    Autograd records a graph every step, allocates every activation and gradient afresh, and
    adds each weight gradient into ``.grad``. Here activations and gradients go into buffers kept
    from step to step (one set per batch size) and the weight gradients straight into the
    optimiser's flat buffer. The kernels are autograd's, called the same way (``nn.Linear``'s
    addmm; ``mse_loss_backward``; grad_output^T @ input for a weight; grad_output @ weight for
    an input), so training gives the same numbers bit for bit, 4-6 % faster.

    With ``precision`` bfloat16 the matmuls read bfloat16 operands (mixed precision): the weights
    are rounded once a step from the float32 buffer the optimiser updates, a layer's product is
    read back into float32 for the dropout factor and the loss, and RMSprop stays float32. The
    same numbers, bit for bit, as autograd with each Linear's operands cast to bfloat16 and its
    output back to float32. On a CPU with AMX the matmuls ran 1.6-3.4 times as fast at 128 rows on
    1 thread and 5-7 times at the full batch on 2 (docs/method.md, "Mixed precision").
    """

    def __init__(self, network: MLP, optimiser: FlatRMSprop, huber_delta: float | None = None,
                 precision: torch.dtype = torch.float32):
        self.huber_delta = huber_delta
        modules = list(network.layers)
        self.linears = [module for module in modules if isinstance(module, nn.Linear)]
        self.dropouts = [module for module in modules if isinstance(module, ReLUDropout)]
        self.optimiser = optimiser
        self.precision = precision
        self.mixed = precision != torch.float32
        if self.mixed:
            self.low_weights = optimiser.weights.to(precision)
            self.low_linears = [(self._low_view(linear.weight), self._low_view(linear.bias)) for linear in self.linears]
        self._buffers: dict[int, dict[str, list[torch.Tensor]]] = {}

    def _low_view(self, parameter: torch.Tensor) -> torch.Tensor:
        """``parameter``'s place in the rounded copy of the optimiser's flat buffer."""
        weights = self.optimiser.weights
        start = (parameter.data_ptr() - weights.data_ptr()) // weights.element_size()
        return self.low_weights[start:start + parameter.numel()].view_as(parameter)

    def _buffers_for(self, rows: int, device: torch.device) -> dict[str, list[torch.Tensor]]:
        if rows not in self._buffers:
            widths = [linear.out_features for linear in self.linears]
            hidden = widths[:-1]

            def empty(sizes, dtype=torch.float32):
                return [torch.empty(rows, width, dtype=dtype, device=device) for width in sizes]

            buffers = {
                "pre": empty(widths), "grad": empty(widths), "factor": empty(hidden),
                "activation": empty(hidden, self.precision),
                "words": [torch.empty((rows * width + 7) // 8, dtype=torch.int64, device=device) for width in hidden],
            }
            if self.mixed:
                buffers |= {"low_pre": empty(widths, self.precision), "low_grad": empty(widths, self.precision),
                            "low_weight_grad": [torch.empty_like(weight) for weight, _ in self.low_linears]}
            self._buffers[rows] = buffers
        return self._buffers[rows]

    def _loss_gradient(self, output: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        mean_reduction, one = 1, torch.ones((), device=y.device)
        if self.huber_delta:
            return torch.ops.aten.huber_loss_backward.out(one, output, y, mean_reduction, self.huber_delta,
                                                          grad_input=out)
        return torch.ops.aten.mse_loss_backward.grad_input(one, output, y, mean_reduction, grad_input=out)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward, backward and the optimiser's step; returns the batch's loss (0-dim). ``x`` in
        the step's precision."""
        if self.mixed:
            return self._mixed_step(x, y)
        buffers = self._buffers_for(x.shape[0], x.device)
        inputs = [x]
        for index, (linear, dropout) in enumerate(zip(self.linears, self.dropouts)):
            pre = torch.addmm(linear.bias, inputs[-1], linear.weight.t(), out=buffers["pre"][index])
            factor = dropout.factor(pre, out=buffers["factor"][index], words=buffers["words"][index])
            inputs.append(torch.mul(pre, factor, out=buffers["activation"][index]))
        last = len(self.linears) - 1
        output = torch.addmm(self.linears[last].bias, inputs[-1], self.linears[last].weight.t(),
                             out=buffers["pre"][last])
        loss = nn.functional.mse_loss(output, y)
        grad = self._loss_gradient(output, y, buffers["grad"][last])
        for index in range(last, -1, -1):
            linear = self.linears[index]
            # straight into the optimiser's aligned slices (FlatRMSprop.ALIGN)
            torch.mm(grad.t(), inputs[index], out=linear.weight.grad)
            torch.sum(grad, 0, out=linear.bias.grad)
            if index:
                # ReLU's and dropout's gradient is the same factor the forward multiplied by
                grad = torch.mm(grad, linear.weight, out=buffers["grad"][index - 1]).mul_(buffers["factor"][index - 1])
        self.optimiser.step()
        return loss

    def _mixed_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The step with low-precision matmul operands; products are written rounded (a matmul's
        output has its operands' type) and read back into float32 where elementwise work follows."""
        buffers = self._buffers_for(x.shape[0], x.device)
        self.low_weights.copy_(self.optimiser.weights)
        inputs = [x]
        for index, ((weight, bias), dropout) in enumerate(zip(self.low_linears, self.dropouts)):
            pre = buffers["pre"][index].copy_(torch.addmm(bias, inputs[-1], weight.t(), out=buffers["low_pre"][index]))
            factor = dropout.factor(pre, out=buffers["factor"][index], words=buffers["words"][index])
            inputs.append(torch.mul(pre, factor, out=buffers["activation"][index]))
        last = len(self.linears) - 1
        weight, bias = self.low_linears[last]
        output = buffers["pre"][last].copy_(torch.addmm(bias, inputs[-1], weight.t(), out=buffers["low_pre"][last]))
        loss = nn.functional.mse_loss(output, y)
        low_grad = buffers["low_grad"][last].copy_(self._loss_gradient(output, y, buffers["grad"][last]))
        for index in range(last, -1, -1):
            linear, (weight, _) = self.linears[index], self.low_linears[index]
            linear.weight.grad.copy_(torch.mm(low_grad.t(), inputs[index], out=buffers["low_weight_grad"][index]))
            linear.bias.grad.copy_(torch.sum(low_grad, 0))
            if index:
                product = torch.mm(low_grad, weight, out=buffers["low_pre"][index - 1])
                # the factor's product is taken in float32, then rounded
                low_grad = torch.mul(product, buffers["factor"][index - 1], out=buffers["low_grad"][index - 1])
        self.optimiser.step()
        return loss


@functools.cache
def keep_freed_memory() -> bool:
    """Stop glibc handing freed activations back to the kernel between epochs.

    A full-batch epoch allocates and frees activations of several MB; by default glibc returns
    them with munmap or a heap trim, and the next epoch page-faults them back in, zeroed (about 570
    faults an epoch for the paper's model1 network). Raising the trim and mmap thresholds keeps
    that memory in the process: 5.93 -> 5.70 s for 300 epochs on 2 threads, same numbers. A no-op
    (False) where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    # 32 MiB is glibc's ceiling for the mmap threshold on 64-bit hosts
    return bool(mallopt(m_trim_threshold, 1 << 30)) and bool(mallopt(m_mmap_threshold, 32 << 20))


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
    # eval mode: the training step does not go through forward(), which here scores the validation
    network = MLP(xt.shape[1], params).to(device).eval()
    # Keras defaults (rho 0.9, eps 1e-7): the paper trained with Keras.
    optimiser = FlatRMSprop(network, lr=params.lr * settings.lr_scale, alpha=0.9, eps=1e-7)
    precision = matmul_precision(settings.precision, device)
    step = TrainingStep(network, optimiser, settings.huber_delta, precision)
    # the training rows rounded once; validation reads the float32 rows through forward()
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
        with torch.no_grad():
            val_loss = float(loss_fn(network(xv), yv))
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


class StackedEnsemble:
    """All networks of an ensemble evaluated at once instead of S forwards.

    Requires the networks to share their widths (they do: one tuned architecture, many seeds).
    Dropout is off at prediction time, so a layer is just ``relu(x @ W + b)``. Every network reads
    the same input, so the first layer is one matmul against all S weight matrices side by side;
    the later layers, where each network has its own input, are one batched matmul each. Measured
    on 50 networks of widths 153/190/512 (388 rows, 2 threads): the single first matmul took
    bfloat16 prediction from 21 to 10 ms and float32 from 62 to 45 ms against a batched first layer.

    The biases ride inside the matmuls: each input gets a constant 1 appended, each weight matrix
    the bias as an extra row, and each hidden layer an extra unit that passes the 1 on (weight 1
    from the input's 1, 0 from the rest; ReLU keeps it). An ``addmm``/``baddbmm`` with a bias
    first copies the broadcast bias into its whole output, one more pass over every activation:
    without it, model1's 50 networks took 10.9 instead of 9.5 ms in bfloat16 and model2's 22.6
    instead of 21.4 ms in float32 (388 rows in passes of 128, 2 threads).
    """

    CPU_ROWS_PER_PASS = 128

    def __init__(self, networks: list[TrainedNetwork], device: str = "cpu", dtype=torch.float32):
        shapes = {(n.n_inputs, n.params.units_1, n.params.units_2, n.params.units_3) for n in networks}
        if len(shapes) != 1:
            raise ValueError(f"ensemble networks differ in shape: {sorted(shapes)}")
        self.device, self.dtype = device, dtype
        linear_names = [name[: -len(".weight")] for name in networks[0].state_dict if name.endswith(".weight")]
        augmented = []
        for index, layer in enumerate(linear_names):
            weight = torch.stack([n.state_dict[f"{layer}.weight"].T for n in networks])  # (S, in, out)
            bias = torch.stack([n.state_dict[f"{layer}.bias"] for n in networks])  # (S, out)
            n_networks, n_in, n_out = weight.shape
            hidden = index < len(linear_names) - 1
            matrix = torch.zeros(n_networks, n_in + 1, n_out + hidden, dtype=weight.dtype)
            matrix[:, :n_in, :n_out] = weight
            matrix[:, n_in, :n_out] = bias
            if hidden:
                matrix[:, n_in, n_out] = 1.0
            augmented.append(matrix)
        # the first layer of all networks side by side: (inputs + 1, networks x (units_1 + 1));
        # the later layers stacked per network for one batched matmul each
        self.n_networks, n_inputs, self.first_width = augmented[0].shape
        self.first_weight = (augmented[0].permute(1, 0, 2).reshape(n_inputs, self.n_networks * self.first_width)
                             .to(device, dtype).contiguous())
        self.weights = [matrix.to(device, dtype).contiguous() for matrix in augmented[1:]]
        self.target_mean = torch.as_tensor(np.stack([n.target_mean for n in networks]), dtype=torch.float64).unsqueeze(1)
        self.target_std = torch.as_tensor(np.stack([n.target_std for n in networks]), dtype=torch.float64).unsqueeze(1)

    def __len__(self) -> int:
        return self.n_networks

    @torch.no_grad()
    def predict_scaled(self, x: torch.Tensor) -> torch.Tensor:
        """Shape (n_networks, n_rows, 3), standardised.

        On the CPU the rows go through ``CPU_ROWS_PER_PASS`` at a time. All 388 validation rows in
        one pass write a first-layer activation of up to 50 x 388 x 513 floats (40 MB) and read it
        back; in passes of 128 rows, 50 networks predicted them in 21 instead of 33 ms (model1,
        float32) and 10 instead of 18 ms (bfloat16), 2 threads. Passes of 16-64 rows were slower.
        """
        x = x.to(self.device, self.dtype)
        if x.shape[0] == 0:
            return torch.zeros(len(self), 0, self.weights[-1].shape[-1], dtype=self.dtype, device=x.device)
        rows = self.CPU_ROWS_PER_PASS if x.device.type == "cpu" else x.shape[0]
        return torch.cat([self._forward(x[start:start + rows]) for start in range(0, x.shape[0], rows)], dim=1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with_one = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
        hidden = relu_(torch.mm(with_one, self.first_weight))
        hidden = hidden.view(x.shape[0], len(self), self.first_width).transpose(0, 1)
        for index, weight in enumerate(self.weights):
            hidden = torch.bmm(hidden, weight)
            if index < len(self.weights) - 1:
                hidden = relu_(hidden)
        return hidden

    def predict(self, x: np.ndarray, max_elements: int = 25_000_000) -> np.ndarray:
        """Shape (n_networks, n_rows, 3) in physical units.

        Rows go through in sub-batches so that one activation (networks x rows x width) stays
        near 100 MB: 200,000 candidates through 50 networks of width 512 otherwise peak at 5 GB.
        """
        widest = max([self.first_width] + [weight.shape[-1] for weight in self.weights])
        rows = max(1, max_elements // (len(self) * widest))
        parts = [self.predict_scaled(torch.tensor(x[start:start + rows], dtype=torch.float32)).cpu().double()
                 for start in range(0, len(x), rows)]
        if not parts:
            return np.zeros((len(self), 0, self.weights[-1].shape[-1]))
        scaled = torch.cat(parts, dim=1)
        return (scaled * self.target_std + self.target_mean).numpy()

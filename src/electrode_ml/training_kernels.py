"""The training step's hand-written kernels: torch pieces re-implemented where that measured faster.

model.py's ``train_network`` runs on these instead of torch's dropout, ``torch.optim.RMSprop`` and
autograd: ReLU and dropout fused into one saved factor (:class:`ReLUDropout`), RMSprop over one
flat, aligned buffer (:class:`FlatRMSprop`), the MLP's backward pass written out into buffers kept
from step to step (:class:`TrainingStep`, float32 or mixed bfloat16), and glibc kept from handing
freed activations back to the kernel (:func:`keep_freed_memory`). With torch's products training
gives torch's own numbers bit for bit (tests/test_model.py compares them step by step), in less
time; with oneDNN's (on x86 CPUs not made by Intel, cpu_matmul.py) close to them, faster still: the
measurements are in docs/method.md, "Network" and "Mixed precision", and docs/timings.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import numpy as np
import torch
from torch import nn

from electrode_ml import cpu_matmul


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
    optimiser's flat buffer. With torch's products the kernels are autograd's, called the same way
    (``nn.Linear``'s addmm; ``mse_loss_backward``; grad_output^T @ input for a weight;
    grad_output @ weight for an input), so training gives the same numbers bit for bit, 4-6 % faster.

    ``matmul`` picks the float32 products' library (:func:`cpu_matmul.choose_library`; None: by
    the CPU's maker). With 'onednn' the products go through oneDNN's linear layer, which reads a
    transposed weight operand in place and writes a fresh output (the weight gradient is then
    copied into the optimiser's buffer): on an AMD EPYC (1 thread, 128 rows) a step of model1's
    tuned network took 1.52 -> 1.06-1.11 ms and model2's 2.29 -> 1.48-1.54 ms. The numbers are then
    oneDNN's rounding, within float32 rounding of autograd's but not its bits.

    With ``precision`` bfloat16 the matmuls read bfloat16 operands (mixed precision): the weights
    are rounded once a step from the float32 buffer the optimiser updates, a layer's product is
    read back into float32 for the dropout factor and the loss, and RMSprop stays float32. The
    same numbers, bit for bit, as autograd with each Linear's operands cast to bfloat16 and its
    output back to float32. On a CPU with AMX the matmuls ran 1.6-3.4 times as fast at 128 rows on
    1 thread and 5-7 times at the full batch on 2 (docs/method.md, "Mixed precision").
    """

    def __init__(self, network: nn.Module, optimiser: FlatRMSprop, huber_delta: float | None = None,
                 precision: torch.dtype = torch.float32, matmul: str | None = None):
        self.huber_delta = huber_delta
        modules = list(network.layers)
        self.linears = [module for module in modules if isinstance(module, nn.Linear)]
        self.dropouts = [module for module in modules if isinstance(module, ReLUDropout)]
        self.optimiser = optimiser
        self.precision = precision
        self.mixed = precision != torch.float32
        # mixed precision keeps torch's bfloat16 products (oneDNN's already, underneath)
        self.matmul = cpu_matmul.choose_library(matmul, optimiser.weights.device, precision)
        self.onednn = self.matmul == "onednn"
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

            # oneDNN writes its products into fresh tensors: only the loss gradient needs a buffer
            unkept = [None] * len(hidden)
            buffers = {
                "pre": unkept + [None] if self.onednn else empty(widths),
                "grad": unkept + empty(widths[-1:]) if self.onednn else empty(widths), "factor": empty(hidden),
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
            pre = self._affine(inputs[-1], linear, buffers["pre"][index])
            factor = dropout.factor(pre, out=buffers["factor"][index], words=buffers["words"][index])
            inputs.append(torch.mul(pre, factor, out=buffers["activation"][index]))
        last = len(self.linears) - 1
        output = self._affine(inputs[-1], self.linears[last], buffers["pre"][last])
        loss = nn.functional.mse_loss(output, y)
        grad = self._loss_gradient(output, y, buffers["grad"][last])
        for index in range(last, -1, -1):
            linear = self.linears[index]
            self._weight_gradient(grad, inputs[index], linear.weight.grad)
            torch.sum(grad, 0, out=linear.bias.grad)
            if index:
                # ReLU's and dropout's gradient is the same factor the forward multiplied by
                grad = self._input_gradient(grad, linear.weight, buffers["grad"][index - 1]).mul_(buffers["factor"][index - 1])
        self.optimiser.step()
        return loss

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """The network's float32 output without dropout (the validation score each epoch), on the
        step's products: torch's are nn.Linear's own kernel, so the same numbers as ``network(x)``."""
        for linear in self.linears[:-1]:
            x = torch.relu(self._affine(x, linear, None))
        return self._affine(x, self.linears[-1], None)

    # The float32 products. oneDNN's linear computes a @ b.T, reads a transposed (strided) b in
    # place and copies a strided a; it writes a fresh output, where torch's kernels fill the kept
    # buffers.

    def _affine(self, x: torch.Tensor, linear: nn.Linear, out: torch.Tensor | None) -> torch.Tensor:
        """x @ W.T + b, as nn.Linear's addmm."""
        if self.onednn:
            return cpu_matmul.linear(x, linear.weight, linear.bias)
        return torch.addmm(linear.bias, x, linear.weight.t(), out=out)

    def _weight_gradient(self, grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
        """grad.T @ x, written straight into the optimiser's aligned slice (FlatRMSprop.ALIGN)."""
        if not self.onednn:
            torch.mm(grad.t(), x, out=out)
            return
        rows, inputs = x.shape
        units = grad.shape[1]
        # oneDNN copies its strided first operand: grad.T (rows x units), or x.T (rows x inputs)
        # and then the (inputs x units) result back to (units x inputs); the smaller copy wins
        # (docs/method.md, "Network": at the full batch the paper's model1 step took a third less).
        # Both orders gave the same bits on every shape tried.
        if rows * inputs + inputs * units < rows * units:
            out.copy_(cpu_matmul.linear(x.t(), grad.t()).t())
        else:
            out.copy_(cpu_matmul.linear(grad.t(), x.t()))

    def _input_gradient(self, grad: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """grad @ W: the gradient of the layer's input."""
        if self.onednn:
            return cpu_matmul.linear(grad, weight.t())
        return torch.mm(grad, weight, out=out)

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

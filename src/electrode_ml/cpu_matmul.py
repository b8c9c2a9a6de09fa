"""Which library multiplies float32 matrices on this CPU: torch's own matmuls (MKL) or oneDNN's.

torch's float32 ``mm`` and ``bmm`` on the CPU call MKL, which runs its AVX-512 kernels only on
Intel processors: on an AMD EPYC with AVX-512 (Zen 5) a large product ran at less than half the
rate of oneDNN's, which torch also ships (for bfloat16, convolutions, and ``torch.compile``'s
linear layers) and which picks its kernels by the instructions a CPU has, not by its maker. On
Intel CPUs the two were within the day's noise of one another for the prediction layouts measured,
so there torch's own path stays (figures: docs/timings.md, "Prediction"). Prediction
(predict.StackedEnsemble) and the training step (training_kernels.TrainingStep) both follow
:func:`choose_library`. The choice is a fixed rule by vendor, not a timing, so that one machine
always gives the same numbers. The vendor is read from Linux's /proc/cpuinfo; elsewhere torch's
path is taken.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch


@functools.cache
def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's vendor id (GenuineIntel, AuthenticAMD, ...), or '' where the system does not say."""
    try:
        with cpuinfo.open() as lines:
            for line in lines:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def onednn_available() -> bool:
    """torch was built with oneDNN and has the fused linear operator its compiler uses."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise
        torch.ops.mkldnn._reorder_linear_weight
    except (AttributeError, RuntimeError):
        return False
    return True


def float32_library(vendor: str | None = None) -> str:
    """'onednn' on an x86 CPU of another maker than Intel, where MKL falls back to slower kernels;
    'torch' elsewhere (Intel, other architectures, a torch without MKL or oneDNN)."""
    vendor = cpu_vendor() if vendor is None else vendor
    if (platform.machine() == "x86_64" and vendor not in ("", "GenuineIntel")
            and torch.backends.mkl.is_available() and onednn_available()):
        return "onednn"
    return "torch"


def choose_library(matmul: str | None, device: str | torch.device, dtype: torch.dtype) -> str:
    """The library for a model's products: ``matmul`` ('torch' or 'onednn') where given and
    possible, else :func:`float32_library` in float32 on the CPU and torch's own elsewhere."""
    on_cpu_float32 = torch.device(device).type == "cpu" and dtype == torch.float32
    if matmul is None:
        return float32_library() if on_cpu_float32 else "torch"
    if matmul not in ("torch", "onednn"):
        raise ValueError(f"matmul {matmul!r} is neither 'torch' nor 'onednn'")
    if matmul == "onednn" and not (on_cpu_float32 and onednn_available()):
        raise ValueError(f"oneDNN products need float32 on the CPU and a torch built with oneDNN "
                         f"(device {device}, {dtype})")
    return matmul


def pack(weight: torch.Tensor) -> torch.Tensor:
    """A Linear weight (out, in) in oneDNN's blocked layout, laid out once instead of every call."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """``x @ weight.T + bias``, with the ReLU fused into the product's output where asked.
    ``weight``: (out, in), packed (:func:`pack`, for weights read many times) or any strided view
    (a transposed one is read in place); a strided ``x`` is made contiguous first."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if relu else "none", [], "")


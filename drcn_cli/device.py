"""Device, precision and CPU threads: the choices made once per run, as plain functions."""

from __future__ import annotations

import torch

__all__ = ["PRECISIONS", "autocast_dtype", "memory_budget", "resolve_device", "resolve_precision", "set_threads"]

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; otherwise any torch device string ('cpu', 'cuda:1', 'mps')."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' asked for, but MPS is not available here")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is fp32 on CPU and MPS, bf16 on CUDA where supported, else fp16. Half on CPU is refused."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (use one of {', '.join(PRECISIONS)})")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if device.type == "cpu" and precision == "fp16":
        raise ValueError("fp16 is not supported on the CPU (use fp32 or bf16)")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for a resolved precision, or None to run in fp32."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)


def set_threads(threads: int | None) -> None:
    """Set torch's CPU thread count; None or 0 leaves torch's default."""
    if threads:
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        torch.set_num_threads(threads)


def memory_budget(device: torch.device, cpu_budget_bytes: int = 2 << 30) -> int:
    """Bytes that one tile may use: half the free memory on CUDA, a fixed budget elsewhere."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free // 2
    return cpu_budget_bytes

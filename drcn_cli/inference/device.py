"""Device, precision and CPU threads: the choices made once per run, as plain functions."""

from __future__ import annotations

import ctypes
import functools
import numbers
import os
import platform
import sys

import torch

from ..errors import ConfigError

__all__ = [
    "PRECISIONS",
    "THREADS_PER_CPU",
    "autocast_dtype",
    "cpu_count",
    "cpu_has_native_bf16",
    "cpu_info",
    "max_threads",
    "memory_budget",
    "memory_format",
    "precision_reason",
    "resolve_device",
    "resolve_precision",
    "reuse_freed_memory",
    "set_threads",
    "threads_problem",
]

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")


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
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' asked for, but MPS is not available here")
    return device


def cpu_info() -> tuple[str, frozenset[str] | None]:
    """The CPU's model name and feature flags as Linux lists them in /proc/cpuinfo; elsewhere the platform's
    processor name and None (flags unknown)."""
    fields: dict[str, str] = {}  # the first processor's lines
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = fields.get("flags")
    name = fields.get("model name") or platform.processor() or platform.machine()
    return name, frozenset(flags.split()) if flags is not None else None


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 matrix or vector units (AMX tiles or AVX512-BF16), as torch reports them, and
    oneDNN may use them: ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) set to an ISA without bf16, e.g. AVX2 or
    AVX512_CORE, keeps its convolutions off those units, and bf16 would then be emulated, slower than fp32."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if limit and not any(word in limit.upper() for word in ("BF16", "AMX", "AVX10", "ALL", "DEFAULT")):
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check() for check in checks if check is not None)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 on CUDA where supported (else fp16), bf16 on a CPU with native bf16 units, fp32 elsewhere
    (:func:`drcn_cli.inference.loader.open_model` may then choose int8 on the CPU, by measurement).

    fp16 on the CPU and int8 off it are refused. On bf16 units (AMX or AVX512-BF16) bf16 convolutions run
    several times faster than fp32 and score as fp32 does (docs/speed.md); without such units bf16 is emulated,
    slower.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r} (use one of {', '.join(PRECISIONS)})")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu" and cpu_has_native_bf16():
            return "bf16"
        return "fp32"
    if device.type == "cpu" and precision == "fp16":
        raise ConfigError("fp16 is not supported on the CPU (use fp32, bf16 or int8)")
    if device.type != "cpu" and precision == "int8":
        raise ConfigError(f"int8 runs on the CPU only (device {device.type}: use bf16 or fp16 there)")
    return precision


def precision_reason(requested: str, resolved: str, device: torch.device) -> str:
    """Why ``resolved`` was chosen, in a few words, for the device line ('' when the user asked for it, unless it
    is bf16 on a CPU without bf16 units: emulated, it is far slower than fp32)."""
    if requested != "auto":
        if device.type == "cpu" and resolved == "bf16" and not cpu_has_native_bf16():
            return "emulated: this CPU has no bf16 units, fp32 is faster"
        return ""
    if device.type == "cpu":
        return "CPU has native bf16" if resolved == "bf16" else "CPU has no native bf16"
    if device.type == "cuda":
        return "GPU supports bf16" if resolved == "bf16" else "GPU lacks bf16"
    return "default"


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last (NHWC) where it is faster (docs/speed.md): cuDNN, and oneDNN on the CPU, in fp32 and most of all
    in bf16, whose NCHW convolutions have no AMX path."""
    if device.type in ("cuda", "cpu"):
        return torch.channels_last
    return torch.contiguous_format


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for a resolved precision, or None to run in fp32."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)


# The most CPU threads drcn lets torch start, per CPU this process may run on. More only contend for the same
# cores; far more can crash torch's thread pool where a cgroup limits the number of tasks (docs/failures.md).
THREADS_PER_CPU = 4


def cpu_count() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (a container's or taskset's
    share), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1


def max_threads() -> int:
    """The largest thread count :func:`set_threads` accepts: THREADS_PER_CPU per CPU of :func:`cpu_count`."""
    return THREADS_PER_CPU * cpu_count()


def threads_problem(threads: int | None) -> str | None:
    """Why ``threads`` cannot be a CPU thread count, as a phrase about the value ("must be at most 8 ..."), or
    None. The one check of `--threads` (upscale, bench, train), TrainConfig.threads and the API's ``threads``."""
    if threads is None:
        return None
    if threads < 0:
        return f"must be >= 0 (0: torch's choice), got {threads}"
    if threads > (most := max_threads()):
        return (f"must be at most {most} ({THREADS_PER_CPU} per CPU; this process may use {cpu_count()}), "
                f"got {threads}")
    return None


def set_threads(threads: int | None) -> None:
    """Set torch's CPU thread count; None or 0 leaves torch's default. TypeError for a value that is not a whole
    number, ConfigError for one below 0 or above :func:`max_threads`."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):
        raise TypeError(f"threads must be a whole number or None, got {threads!r}")
    if (problem := threads_problem(int(threads))) is not None:
        raise ConfigError(f"threads {problem}")
    if threads:
        torch.set_num_threads(int(threads))


def memory_budget(device: torch.device, cpu_budget_bytes: int = 2 << 30) -> int:
    """Bytes that one tile may use: half the free memory on CUDA, a fixed budget elsewhere."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free // 2
    return cpu_budget_bytes


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit systems.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20


@functools.cache
def reuse_freed_memory() -> bool:
    """Make the C allocator keep freed blocks of up to 32 MiB for reuse instead of handing them back to the OS.

    A CPU forward allocates a fresh F-channel map for every conv (a 440x440 bf16 window: 25 MB). glibc serves
    such blocks with fresh pages, whose first-touch page faults cost a sizeable share of a forward; after this
    call there are none (docs/speed.md). Process-wide, done once; the bf16 tile policy keeps maps under the
    32 MiB threshold (fp32 tiles are larger: their maps come fresh from mmap, a small cost beside fp32
    arithmetic). Returns False where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # A fixed mmap threshold stops glibc's dynamic one, so set it to the largest allowed; freed memory above it
    # is then kept by the trim threshold, instead of being returned (and faulted in again at the next map).
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))

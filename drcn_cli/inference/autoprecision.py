"""``--precision auto`` on the CPU between int8 and the float precision: chosen by a measurement on this CPU kind.

The float candidate is what :func:`drcn_cli.inference.device.resolve_precision` gives (bf16 where the CPU has bf16
units, else fp32). int8 is chosen when the weights have a calibration within the quality bound
(:meth:`Int8Calibration.within_bound`), ONNX Runtime is installed, and one window ran at least :data:`MIN_SPEEDUP`
times faster in int8 than in the candidate. The timings are measured once per CPU kind (model name, torch's CPU
capability, thread count, library versions) and kept in ``speed.json`` in drcn's cache folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DrcnError
from ..io.atomic import write_atomic
from ..io.paths import drcn_home
from .device import cpu_info

__all__ = ["MIN_SPEEDUP", "Choice", "choose", "cpu_kind", "measure"]

MIN_SPEEDUP = 1.2  # below this the gain does not pay for int8's small loss
_WINDOW = 256  # output side of the probe window (plus the receptive radius each side): as large as a tile


@dataclass(frozen=True)
class Choice:
    precision: str
    reason: str  # for the device line


def cpu_kind() -> str:
    """What makes timings on this machine comparable: CPU model, torch's vector ISA, threads, library versions."""
    name, _flags = cpu_info()
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "-"
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{name} | {capability} | {torch.get_num_threads()} threads | torch {torch.__version__} | ort {ort_version}"


def _best_time(run: Callable[[], object], repeats: int = 2) -> float:
    run()  # warm-up: allocations, ONNX Runtime's first-run work
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def measure(float_network: Callable, int8_network: Callable, radius: int) -> tuple[float, float]:
    """Seconds for one probe window (best of two after a warm-up) in the prepared float network and in int8."""
    side = _WINDOW + 2 * radius
    x = torch.rand(1, 1, side, side, generator=torch.Generator().manual_seed(0))
    x_float = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        float_s = _best_time(lambda: float_network(x_float))
        int8_s = _best_time(lambda: int8_network(x))
    return float_s, int8_s


def _cache_file() -> Path:
    return drcn_home() / "speed.json"


def _read_cache() -> dict:
    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def choose(candidate: str, probe: Callable[[], tuple[float, float]], features: int) -> Choice:
    """int8 or ``candidate`` by the timings of this CPU kind (``probe`` measures them when none are kept)."""
    key = f"{cpu_kind()} | F={features} | {candidate}"
    cache = _read_cache()
    entry = cache.get(key)
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in entry)):
        entry = list(probe())
        cache[key] = entry
        try:
            write_atomic(_cache_file(), json.dumps(cache, indent=1).encode(), overwrite=True)
        except (OSError, DrcnError):
            pass  # a cache that cannot be written only costs the probe again next time
    speedup = entry[0] / entry[1]
    if speedup >= MIN_SPEEDUP:
        return Choice("int8", f"measured {speedup:.1f}x faster than {candidate} on this CPU")
    return Choice(candidate, f"int8 measured {speedup:.1f}x {candidate}'s speed on this CPU")

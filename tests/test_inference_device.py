import pytest
import torch

from drcn_cli.inference import device as device_module
from drcn_cli.inference.device import autocast_dtype, precision_reason, resolve_device, resolve_precision, set_threads


def test_auto_device_on_a_machine_without_cuda_is_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_explicit_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu9")


def test_cuda_asked_for_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_precision_auto_is_fp32_on_a_cpu_without_bf16_units_and_half_on_cpu_is_refused():
    cpu = torch.device("cpu")  # conftest reports no native bf16
    assert resolve_precision("auto", cpu) == "fp32"
    assert precision_reason("auto", "fp32", cpu) == "CPU has no native bf16"
    assert resolve_precision("bf16", cpu) == "bf16"
    assert precision_reason("bf16", "bf16", cpu) == "emulated: this CPU has no bf16 units, fp32 is faster"
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp8", cpu)


def test_precision_auto_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"


def test_autocast_dtype_and_threads():
    assert autocast_dtype("fp32") is None
    assert autocast_dtype("bf16") is torch.bfloat16
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError):
            set_threads(-2)
    finally:
        torch.set_num_threads(before)


def test_precision_auto_is_bf16_on_a_cpu_with_bf16_units(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert precision_reason("auto", "bf16", cpu) == "CPU has native bf16"
    assert resolve_precision("fp32", cpu) == "fp32" and precision_reason("fp32", "fp32", cpu) == ""


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"), [(True, False, True), (False, True, True), (False, False, False)]
)
def test_native_bf16_is_read_from_torchs_cpu_capabilities(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.undo()  # the conftest fixture replaced the function under test
    for limit in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(limit, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert device_module.cpu_has_native_bf16() is expected


@pytest.mark.parametrize(
    ("limit", "expected"),
    [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True), ("AVX512_CORE_AMX", True), ("ALL", True)],
)
def test_an_isa_limit_without_bf16_turns_native_bf16_off(monkeypatch, limit, expected):
    monkeypatch.undo()  # the conftest fixture replaced the function under test
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    assert device_module.cpu_has_native_bf16() is expected
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if expected else "fp32")


class _FakeLibc:
    def __init__(self, accept: bool = True) -> None:
        self.calls: list[tuple[int, int]] = []
        self.accept = accept

        def mallopt(param: int, value: int) -> int:
            self.calls.append((param, value))
            return int(self.accept)

        self.mallopt = mallopt


def test_reuse_freed_memory_sets_glibc_thresholds_once(monkeypatch):
    libc = _FakeLibc()
    monkeypatch.setattr(device_module.sys, "platform", "linux")
    monkeypatch.setattr(device_module.ctypes, "CDLL", lambda name: libc)
    device_module.reuse_freed_memory.cache_clear()
    try:
        assert device_module.reuse_freed_memory() and device_module.reuse_freed_memory()
        # M_MMAP_THRESHOLD (-3) at glibc's 64-bit maximum, 32 MiB, then M_TRIM_THRESHOLD (-1) at the largest int.
        assert libc.calls == [(-3, 32 << 20), (-1, 2**31 - 1)]
    finally:
        device_module.reuse_freed_memory.cache_clear()


@pytest.mark.parametrize("case", ["not linux", "no mallopt", "refused"])
def test_reuse_freed_memory_is_false_where_the_c_library_cannot(monkeypatch, case):
    libc = _FakeLibc(accept=case != "refused")
    if case == "no mallopt":
        del libc.mallopt
    monkeypatch.setattr(device_module.sys, "platform", "darwin" if case == "not linux" else "linux")
    monkeypatch.setattr(device_module.ctypes, "CDLL", lambda name: libc)
    device_module.reuse_freed_memory.cache_clear()
    try:
        assert device_module.reuse_freed_memory() is False
    finally:
        device_module.reuse_freed_memory.cache_clear()


# -- a thread count the machine can take ---------------------------------------------------------------------------


def test_threads_are_bounded_by_the_cpus_this_process_may_use(monkeypatch):
    import numpy as np

    from drcn_cli.errors import ConfigError

    monkeypatch.setattr(device_module, "cpu_count", lambda: 2)
    assert device_module.max_threads() == 2 * device_module.THREADS_PER_CPU == 8
    assert device_module.threads_problem(None) is None and device_module.threads_problem(8) is None
    assert device_module.threads_problem(9) == "must be at most 8 (4 per CPU; this process may use 2), got 9"
    assert device_module.threads_problem(-1).startswith("must be >= 0")
    before = torch.get_num_threads()
    try:
        for bad in (9, 100000, 2**63):
            with pytest.raises(ConfigError, match=f"threads must be at most 8 .*got {bad}$"):
                set_threads(bad)
            assert torch.get_num_threads() == before  # refused before torch was asked
        for not_a_count in (True, 2.0, "4", [2]):
            with pytest.raises(TypeError, match="threads must be a whole number"):
                set_threads(not_a_count)
        set_threads(np.int64(1))  # a numpy integer is a whole number
        assert torch.get_num_threads() == 1
        set_threads(0)  # 0 and None: torch's own choice, unchanged
        set_threads(None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cpu_count_is_the_affinity_mask_where_there_is_one(monkeypatch):
    import os

    if hasattr(os, "sched_getaffinity"):
        assert device_module.cpu_count() == len(os.sched_getaffinity(0))
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert device_module.cpu_count() == 1

"""drcn_cli.inference.autoprecision: int8 or the float candidate by timings kept per CPU kind in speed.json, and
open_model's ``--precision auto`` on the CPU, which asks it only where int8 may run and is within the quality
bound."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import int8_drcn, write_int8_weights

from drcn_cli.inference import autoprecision, device, loader
from drcn_cli.inference.autoprecision import MIN_SPEEDUP, choose, cpu_kind, measure
from drcn_cli.inference.int8 import Int8Network, calibration_path, runtime_problem
from drcn_cli.inference.loader import open_model
from drcn_cli.model import DRCN
from drcn_cli.weights.files import save_weights

needs_runtime = pytest.mark.skipif(runtime_problem() is not None, reason=f"{runtime_problem()}")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """drcn's cache folder (speed.json) in tmp_path, and one CPU kind."""
    monkeypatch.setenv("DRCN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(autoprecision, "cpu_kind", lambda: "Test CPU | AVX512 | 1 threads")
    return tmp_path / "home"


def probe_of(timings, calls):
    def probe():
        calls.append(timings)
        return timings

    return probe


def refusing_probe():
    raise AssertionError("the probe ran although the timings were kept")


def kept(home) -> dict:
    return json.loads((home / "speed.json").read_text(encoding="utf-8"))


# -- choose -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "timings,candidate,precision,reason",
    [((MIN_SPEEDUP, 1.0), "fp32", "int8", f"measured {MIN_SPEEDUP:.1f}x faster than fp32 on this CPU"),
     ((3.0, 1.0), "bf16", "int8", "measured 3.0x faster than bf16 on this CPU"),
     ((0.119, 0.1), "fp32", "fp32", "int8 measured 1.2x fp32's speed on this CPU"),  # 1.19: below, rounded up
     ((1.0, 1.0), "fp32", "fp32", "int8 measured 1.0x fp32's speed on this CPU"),
     ((0.5, 1.0), "bf16", "bf16", "int8 measured 0.5x bf16's speed on this CPU")],
)
def test_int8_is_chosen_from_the_least_speedup_on(timings, candidate, precision, reason):
    choice = choose(candidate, probe_of(timings, []), features=8)
    assert (choice.precision, choice.reason) == (precision, reason)


def test_the_probe_runs_once_per_cpu_kind_and_its_timings_are_kept(home):
    calls = []
    first = choose("fp32", probe_of((2.0, 1.0), calls), features=8)
    assert calls == [(2.0, 1.0)]
    assert kept(home) == {"Test CPU | AVX512 | 1 threads | F=8 | fp32": [2.0, 1.0]}
    again = choose("fp32", refusing_probe, features=8)
    assert again == first
    # another candidate or another width is another measurement, kept beside the first
    choose("bf16", probe_of((1.0, 1.0), calls), features=8)
    choose("fp32", probe_of((1.0, 3.0), calls), features=64)
    assert len(calls) == 3 and len(kept(home)) == 3
    assert choose("fp32", refusing_probe, features=64).precision == "fp32"


def test_each_cpu_kind_has_its_own_timings(home, monkeypatch):
    kinds = iter(["Xeon with AMX | AVX512 | 2 threads", "EPYC | AVX2 | 2 threads"] * 2)
    monkeypatch.setattr(autoprecision, "cpu_kind", lambda: next(kinds))
    assert choose("fp32", probe_of((2.0, 1.0), []), features=8).precision == "int8"
    assert choose("fp32", probe_of((1.0, 2.0), []), features=8).precision == "fp32"
    assert kept(home) == {"Xeon with AMX | AVX512 | 2 threads | F=8 | fp32": [2.0, 1.0],
                          "EPYC | AVX2 | 2 threads | F=8 | fp32": [1.0, 2.0]}
    assert choose("fp32", refusing_probe, features=8).precision == "int8"
    assert choose("fp32", refusing_probe, features=8).precision == "fp32"


KEY = "Test CPU | AVX512 | 1 threads | F=8 | fp32"


@pytest.mark.parametrize(
    "content",
    ["{not json", "", "[1, 2]", "null", json.dumps({KEY: [2.0]}), json.dumps({KEY: [2.0, 0.0]}),
     json.dumps({KEY: [-1.0, 1.0]}), json.dumps({KEY: ["2", "1"]}), json.dumps({KEY: {"fp": 2}}),
     json.dumps({KEY: [2.0, 1.0, 1.0]}), json.dumps({KEY: None})],
)
def test_damaged_timings_are_measured_again(home, content):
    home.mkdir()
    (home / "speed.json").write_text(content, encoding="utf-8")
    calls = []
    assert choose("fp32", probe_of((1.0, 2.0), calls), features=8).precision == "fp32"
    assert calls == [(1.0, 2.0)]
    assert kept(home)[KEY] == [1.0, 2.0]


def test_other_entries_of_the_file_are_kept(home):
    home.mkdir()
    (home / "speed.json").write_text(json.dumps({"another CPU | F=8 | fp32": [1.0, 1.0]}), encoding="utf-8")
    choose("fp32", probe_of((2.0, 1.0), []), features=8)
    assert kept(home) == {"another CPU | F=8 | fp32": [1.0, 1.0], KEY: [2.0, 1.0]}


def test_a_cache_that_cannot_be_written_costs_only_the_probe_again(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("in the way")
    monkeypatch.setenv("DRCN_HOME", str(tmp_path / "file" / "home"))  # a folder under a file: nothing is written
    calls = []
    assert choose("fp32", probe_of((2.0, 1.0), calls), features=8).precision == "int8"
    assert choose("fp32", probe_of((2.0, 1.0), calls), features=8).precision == "int8"
    assert len(calls) == 2


def test_cpu_kind_names_what_makes_timings_comparable():
    kind = cpu_kind()  # the function itself: the fixture replaced the module's name for it
    assert f"torch {torch.__version__}" in kind and f"{torch.get_num_threads()} threads" in kind
    assert torch.backends.cpu.get_cpu_capability() in kind and " | ort " in kind


def test_measure_times_one_window_of_each(monkeypatch):
    shapes = {"float": [], "int8": []}

    def float_network(x):
        shapes["float"].append(tuple(x.shape))
        return x

    def int8_network(x):
        shapes["int8"].append(tuple(x.shape))
        return x

    float_s, int8_s = measure(float_network, int8_network, radius=7)
    assert float_s > 0 and int8_s > 0
    side = autoprecision._WINDOW + 2 * 7  # the probe window: a tile's output pixels and the radius on each side
    assert len(shapes["float"]) == len(shapes["int8"]) >= 2  # a warm-up, then the best of the timed runs
    assert set(shapes["float"]) == set(shapes["int8"]) == {(1, 1, side, side)}


# -- open_model's auto on the CPU ---------------------------------------------------------------------------------


def fake_measure(timings, calls):
    def measured(float_network, int8_network, radius):
        # the float side is the network as prepared for the candidate: bf16 conv weights for a bf16 candidate
        calls.append((type(float_network), type(int8_network), radius, float_network.recursive.weight.dtype))
        return timings

    return measured


WITHIN = {"psnr_drop": "0.0200", "ssim_drop": "0.00020"}
FAST, SLOW = (2.0, 1.0), (1.0, 1.0)


@needs_runtime
@pytest.mark.parametrize(
    "bf16,timings,precision,reason",
    [(False, FAST, "int8", "measured 2.0x faster than fp32 on this CPU"),
     (False, SLOW, "fp32", "int8 measured 1.0x fp32's speed on this CPU"),
     (True, FAST, "int8", "measured 2.0x faster than bf16 on this CPU"),
     (True, SLOW, "bf16", "int8 measured 1.0x bf16's speed on this CPU")],
)
def test_auto_chooses_int8_where_it_measured_faster(tmp_path, monkeypatch, bf16, timings, precision, reason):
    path = write_int8_weights(tmp_path / "w", info=WITHIN)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: bf16)
    calls = []
    monkeypatch.setattr(autoprecision, "measure", fake_measure(timings, calls))
    ready = open_model(path, "cpu", "auto")
    assert (ready.precision, ready.reason, ready.source) == (precision, reason, path)
    assert isinstance(ready.network, Int8Network if precision == "int8" else DRCN)
    assert ready.settings().precision == precision
    assert calls == [(DRCN, Int8Network, 7, torch.bfloat16 if bf16 else torch.float32)]
    again = open_model(path, "cpu", "auto")  # the timings kept in speed.json: no second measurement
    assert (again.precision, again.reason) == (precision, reason) and len(calls) == 1


@pytest.mark.parametrize(
    "info",
    [{}, {"psnr_drop": "0.0600", "ssim_drop": "0.00020"}, {"psnr_drop": "0.0200", "ssim_drop": "0.00060"},
     {"psnr_drop": "0.0200"}],
)
@pytest.mark.parametrize("bf16", [False, True])
def test_auto_keeps_the_float_candidate_without_measuring_outside_the_bound(tmp_path, monkeypatch, info, bf16):
    path = write_int8_weights(tmp_path / "w", info=info)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: bf16)
    calls = []
    monkeypatch.setattr(autoprecision, "measure", fake_measure(FAST, calls))
    ready = open_model(path, "cpu", "auto")
    assert (ready.precision, ready.reason) == ("bf16" if bf16 else "fp32", "") and calls == []


def test_auto_keeps_the_float_candidate_without_a_calibration(tmp_path, monkeypatch):
    path = tmp_path / "tiny.safetensors"
    save_weights(int8_drcn(), path)
    calls = []
    monkeypatch.setattr(autoprecision, "measure", fake_measure(FAST, calls))
    ready = open_model(path, "cpu", "auto")
    assert (ready.precision, ready.reason) == ("fp32", "") and isinstance(ready.network, DRCN) and calls == []
    assert not calibration_path(path).exists()


def test_auto_keeps_the_float_candidate_without_the_runtime(tmp_path, monkeypatch):
    path = write_int8_weights(tmp_path / "w", info=WITHIN)
    monkeypatch.setattr(loader, "runtime_problem", lambda: "int8 needs onnxruntime: pip install 'drcn[int8]'")
    calls = []
    monkeypatch.setattr(autoprecision, "measure", fake_measure(FAST, calls))
    ready = open_model(path, "cpu", "auto")
    assert (ready.precision, ready.reason) == ("fp32", "") and calls == []


@needs_runtime
def test_auto_keeps_the_float_candidate_when_the_calibration_does_not_fit(tmp_path, monkeypatch):
    path = write_int8_weights(tmp_path / "w", info=WITHIN)
    save_weights(int8_drcn(seed=1), path)  # new weights: the calibration is for the old ones
    calls = []
    monkeypatch.setattr(autoprecision, "measure", fake_measure(FAST, calls))
    ready = open_model(path, "cpu", "auto")
    assert (ready.precision, ready.reason) == ("fp32", "") and calls == []


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_precision_asked_for_is_never_measured(tmp_path, monkeypatch, precision):
    path = write_int8_weights(tmp_path / "w", info=WITHIN)
    calls = []
    monkeypatch.setattr(autoprecision, "measure", fake_measure(FAST, calls))
    ready = open_model(path, "cpu", precision)
    assert (ready.precision, ready.reason) == (precision, "") and calls == []


def test_auto_with_a_module_is_never_measured(monkeypatch):
    calls = []
    monkeypatch.setattr(autoprecision, "measure", fake_measure(FAST, calls))
    ready = open_model(int8_drcn(), "cpu", "auto")
    assert (ready.precision, ready.reason) == ("fp32", "") and calls == []

"""The scripts under benchmarks/ that a GPU window runs: their CPU dry run must pass, so no GPU minute is lost to
a change elsewhere in the package (a new argument of DRCN.forward once broke the out-of-memory check)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cuda_checks_pass_on_the_cpu(tmp_path):
    report = tmp_path / "checks.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cuda_checks.py"), "--device", "cpu", "--quick",
         "--json", str(report)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    checks = json.loads(report.read_text())["checks"]
    assert {row["check"] for row in checks} == {
        "bf16 vs fp32", "tiled (64) vs untiled, fp32", "out-of-memory halving",
        "prepared model layout, fp32", "prepared model layout, bf16",
    }  # fmt: skip
    assert all(row["ok"] for row in checks), checks


def fit_steps(tmp_path, rows, *args):
    log = tmp_path / "log.csv"
    log.write_text("kind,step,elapsed_s,val_psnr\n" + "".join(f"{kind},{step},{s},\n" for kind, step, s in rows))
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fit_steps.py"), str(log), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_fit_steps_fits_the_cosine_to_the_minutes_left_after_start_up(tmp_path):
    # 10 steps/s after the first row (the slow first steps are not counted); start-up 30 s of a 40-s probe
    rows = [("train", 10, 5.0), ("train", 20, 6.0), ("val", 20, ""), ("train", 60, 10.0)]
    result = fit_steps(tmp_path, rows, "--minutes", "6", "--wall", "40", "--spare", "0.1")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == int(10 * (360 * 0.9 - 30))
    assert "10.00 steps/s" in result.stderr


def test_fit_steps_refuses_a_log_without_a_rate_or_time_left(tmp_path):
    one_row = fit_steps(tmp_path, [("train", 10, 5.0)], "--minutes", "6", "--wall", "40")
    assert one_row.returncode != 0 and "fewer than 2 train rows" in one_row.stderr
    no_time = fit_steps(tmp_path, [("train", 10, 5.0), ("train", 20, 6.0)], "--minutes", "0.5", "--wall", "60")
    assert no_time.returncode != 0 and "leaves no time" in no_time.stderr


def test_split_copies_reports_zero_for_exact_copies_and_finds_a_copy_that_moved(tmp_path):
    import torch

    from drcn_cli.model import DRCN, DRCNConfig, widen
    from drcn_cli.weights.files import save_weights

    torch.manual_seed(3)
    wide = widen(DRCN(DRCNConfig(features=4, recursions=2)), 10, noise=0.0)
    save_weights(wide, tmp_path / "copies.safetensors")
    with torch.no_grad():
        wide.recursive.weight[7] *= 1.5  # channel 7 copies channel 3: now half as large again
    save_weights(wide, tmp_path / "moved.safetensors")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "split_copies.py"), str(tmp_path / "copies.safetensors"),
         str(tmp_path / "moved.safetensors"), "--source-features", "4"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    copies, moved = result.stdout.split("moved.safetensors")
    rows = {line.split()[0]: line.split()[1:] for line in moved.splitlines()[2:]}
    assert copies.count("0.0000 / 0.0000") == 4  # every copy its source's equal in each of the 4 layers
    assert rows["recursive"] == [f"{0.5 / 6:.4f}", "/", "0.5000"]  # one of 6 copies 50% off its source
    assert rows["embed1"] == ["0.0000", "/", "0.0000"]

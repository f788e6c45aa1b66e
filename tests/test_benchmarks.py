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

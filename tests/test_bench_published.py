"""The published numbers shipped in drcn_cli.bench.published agree with the reference table (tests/data/README.md)."""

from __future__ import annotations

import csv
from pathlib import Path

from drcn_cli.bench.published import DATASETS, METHODS, PUBLISHED, published

TSV = Path(__file__).resolve().parent / "data" / "published_results.tsv"


def test_every_method_dataset_and_scale_is_there():
    assert len(PUBLISHED) == len(METHODS) * len(DATASETS) * 3
    assert published("DRCN", "Set5", 2).psnr == 37.63
    assert published("DRCN", "Urban100", 4).ssim == 0.7510
    assert published("DRCN", "MySet", 2) is None
    assert published("DRCN", "Set5", 8) is None


def test_matches_the_reference_table():
    with TSV.open(newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["method"] in METHODS]
    assert {(r["method"], r["dataset"], int(r["scale"])) for r in rows} == set(PUBLISHED)
    for row in rows:
        entry = PUBLISHED[(row["method"], row["dataset"], int(row["scale"]))]
        assert (entry.psnr, entry.ssim, entry.params) == (float(row["psnr"]), float(row["ssim"]), int(row["params"]))

"""Where tests find real images and reference data (importable as `from testdata import ...`: tests/ is on the path).

* ``DATA``: tests/data, committed: small crops and reference vectors, enough for a clone to run every test that
  does not need a whole benchmark (tests/data/README.md lists the files and where they come from).
* The benchmark datasets (Set5, Set14 ... as folders of PNGs) are not in the repository: the few tests that score
  a whole benchmark find them in the folder named by the environment variable ``DRCN_TEST_DATASETS``, else in
  ``../shared/datasets`` beside the repository where that exists, and skip without them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
DATASETS_ENV = "DRCN_TEST_DATASETS"
DATASETS_SKIP = f"needs the benchmark datasets: set {DATASETS_ENV}"


def datasets_root() -> Path:
    """The folder holding the benchmark datasets: $DRCN_TEST_DATASETS, else ../shared/datasets beside the repo."""
    chosen = os.environ.get(DATASETS_ENV)
    return Path(chosen) if chosen else Path(__file__).resolve().parents[2] / "shared" / "datasets"


def needs_datasets(*names: str) -> pytest.MarkDecorator:
    """Skip unless every one of ``names`` (e.g. "Set5") is a folder in :func:`datasets_root`."""
    root = datasets_root()
    return pytest.mark.skipif(not all((root / name).is_dir() for name in names), reason=DATASETS_SKIP)

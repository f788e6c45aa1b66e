"""drcn_cli.weights.table, .resolve and .publish: the table of known weights, and bundled -> cache -> download
resolution, verified by sha256.

Downloads come from a local stand-in for the hub (tests/hubstub.py). The real table has no checksums until the
trained weights are published, so these tests swap in a table describing a small random-init model saved here.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hubstub import HubStub, point_client_at, skip_retry_sleeps

from drcn_cli.weights import files, publish, resolve, table
from drcn_cli.weights.resolve import ChecksumError, WeightsNotFoundError
from drcn_cli.weights.table import KnownWeights

REPO = "test-org/drcn-test"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A real DRCN weights file (F=8, D=3, random init), as the hub would serve it."""
    import torch

    from drcn_cli.model import DRCN, DRCNConfig

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("published") / "tiny.safetensors"
    files.save_weights(DRCN(DRCNConfig(features=8, recursions=3)), path, {"training_data": "none (test)"})
    return path


def tiny_table(model_file: Path) -> dict[str, KnownWeights]:
    data = model_file.read_bytes()
    entries = (
        KnownWeights("tiny", "tiny.safetensors", hashlib.sha256(data).hexdigest(), len(data), "F=8, D=3", repo_id=REPO),
        KnownWeights("tiny-unpublished", "tiny-unpublished.safetensors", None, None, "no checksum yet", repo_id=REPO),
    )
    return {entry.name: entry for entry in entries}


@pytest.fixture
def env(model_file, monkeypatch, tmp_path):
    """Stub hub serving tiny.safetensors; the table swapped for tiny_table; empty bundled folder and hub cache."""
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    monkeypatch.setattr(files, "BUNDLED_DIR", bundled)
    monkeypatch.setattr(table, "KNOWN_WEIGHTS", tiny_table(model_file))
    monkeypatch.delenv(table.REPO_ID_ENV, raising=False)
    with HubStub() as stub:
        stub.add_file(REPO, "tiny.safetensors", model_file)
        stub.add_file(REPO, "tiny-unpublished.safetensors", model_file)
        cache = tmp_path / "hub"
        point_client_at(monkeypatch, stub.endpoint, cache_dir=cache)
        skip_retry_sleeps(monkeypatch)
        yield SimpleNamespace(stub=stub, cache=cache, bundled=bundled, data=model_file.read_bytes(), mp=monkeypatch)


def cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if ("blobs" in p.parts or "snapshots" in p.parts) and not p.is_dir())


# -- the real table --------------------------------------------------------------------------------------------


def test_real_table_is_well_formed():
    assert {"drcn", "drcn-lite"} <= set(table.KNOWN_WEIGHTS)
    assert len({e.filename for e in table.KNOWN_WEIGHTS.values()}) == len(table.KNOWN_WEIGHTS)
    for name, entry in table.KNOWN_WEIGHTS.items():
        assert entry.name == name
        # bundled files are looked up as weights/<name>.safetensors
        assert entry.filename == f"{name}.safetensors"
        assert entry.repo_id == table.DEFAULT_REPO_ID and "/" in entry.repo_id
        assert entry.description and entry.revision


@pytest.mark.parametrize(
    ("name", "features", "recursions"), [("drcn", 256, 16), ("drcn-lite", 64, 16), ("drcn-lite-photo", 64, 16)]
)
def test_bundled_files_match_the_table(name, features, recursions):
    path = table.bundled_path(name)
    if path is None:
        pytest.skip(f"{name}.safetensors is not in {files.BUNDLED_DIR} (weights not trained/bundled yet)")
    entry = table.KNOWN_WEIGHTS[name]
    assert entry.bundled, f"{path} is shipped but the table says bundled=False"
    assert entry.sha256 is not None, f"{name}: fill sha256/size with `python -m drcn_cli.weights.publish {path}`"
    resolve.verify_file(path, entry.sha256, entry.size)
    model, _ = files.load_weights(path)
    assert (model.config.features, model.config.recursions) == (features, recursions)


def test_entries_validate_their_checksum_fields():
    with pytest.raises(ValueError, match="64 lowercase hex"):
        KnownWeights("x", "x.safetensors", "ABC", 3, "bad")
    with pytest.raises(ValueError, match="both sha256 and size"):
        KnownWeights("x", "x.safetensors", "0" * 64, None, "half")
    with pytest.raises(ValueError, match="positive"):
        KnownWeights("x", "x.safetensors", "0" * 64, 0, "empty")


# -- helpers -----------------------------------------------------------------------------------------------------


def test_sha256_file_and_verify_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1_000_000)  # more than one 1 MiB chunk
    expected = hashlib.sha256(b"abc" * 1_000_000).hexdigest()

    assert resolve.sha256_file(path) == expected
    resolve.verify_file(path, expected, 3_000_000)
    with pytest.raises(ChecksumError, match="has 3000000 bytes, expected 3000001"):
        resolve.verify_file(path, expected, 3_000_001)
    with pytest.raises(ChecksumError, match=f"expected {'0' * 16}"):
        resolve.verify_file(path, "0" * 64)


def test_default_model_prefers_bundled_drcn_then_drcn_lite(monkeypatch, tmp_path):
    monkeypatch.setattr(files, "BUNDLED_DIR", tmp_path)
    assert table.default_model_name() == "drcn"  # nothing bundled: the full model, to be downloaded
    (tmp_path / "drcn-lite.safetensors").write_bytes(b"x")
    assert table.default_model_name() == "drcn-lite"
    (tmp_path / "drcn.safetensors").write_bytes(b"x")
    assert table.default_model_name() == "drcn"


def test_unknown_name_lists_the_known_ones(env):
    with pytest.raises(WeightsNotFoundError, match="unknown model 'nope'; known models: tiny, tiny-unpublished"):
        resolve.resolve_weights("nope")


# -- resolution ----------------------------------------------------------------------------------------------------


def test_an_explicit_path_wins_and_must_exist(env, tmp_path):
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(b"whatever the user trusts")

    assert resolve.resolve_weights("tiny", mine) == mine
    with pytest.raises(WeightsNotFoundError, match="no such weights file"):
        resolve.resolve_weights("tiny", tmp_path / "missing.safetensors")
    assert env.stub.file_requests == []


def test_bundled_file_is_used_without_the_network(env):
    (env.bundled / "tiny.safetensors").write_bytes(env.data)

    assert resolve.resolve_weights("tiny") == env.bundled / "tiny.safetensors"
    assert env.stub.file_requests == []


def test_download_is_announced_verified_then_served_from_the_cache(env):
    notices: list[str] = []

    path = resolve.resolve_weights("tiny", on_download=notices.append)

    assert len(notices) == 1
    assert "tiny" in notices[0] and f"{REPO}@main" in notices[0] and str(env.cache) in notices[0]
    assert env.cache in path.parents and path.read_bytes() == env.data
    model, meta = files.load_weights(path)
    assert (model.config.features, model.config.recursions) == (8, 3) and meta["training_data"] == "none (test)"

    requests = len(env.stub.file_requests)
    assert resolve.resolve_weights("tiny", on_download=notices.append) == path
    assert resolve.cached_weights("tiny") == path
    assert len(notices) == 1 and len(env.stub.file_requests) == requests


def test_without_download_an_uncached_model_says_what_to_run(env):
    with pytest.raises(WeightsNotFoundError, match=r"run `drcn download-weights tiny`"):
        resolve.resolve_weights("tiny", download=False)
    assert env.stub.file_requests == []


def test_checksum_mismatch_is_refused_and_nothing_is_kept(env):
    tampered = bytearray(env.data)
    tampered[len(tampered) // 2] ^= 0xFF
    env.stub.add_file(REPO, "tiny.safetensors", bytes(tampered))  # same size, one byte changed

    with pytest.raises(ChecksumError, match=r"tiny: test-org/drcn-test/tiny.safetensors@main is not the published"):
        resolve.resolve_weights("tiny")

    assert cache_files(env.cache) == []
    assert resolve.cached_weights("tiny") is None


def test_a_corrupt_cached_copy_is_removed_and_downloaded_again(env):
    path = resolve.download_weights("tiny")
    path.resolve().write_bytes(env.data[: len(env.data) // 2])  # as a crash or an edit might leave it

    with pytest.raises(ChecksumError, match="removed from the cache"):
        resolve.cached_weights("tiny")
    assert cache_files(env.cache) == []

    resolve.download_weights("tiny")
    path.resolve().write_bytes(b"garbage")
    notices: list[str] = []
    again = resolve.resolve_weights("tiny", on_download=notices.append)
    assert again.read_bytes() == env.data
    assert "failed the checksum and was removed" in notices[0]


def test_an_interrupted_transfer_is_never_trusted(env):
    env.stub.fault(REPO, "tiny.safetensors", cut_at=len(env.data) // 2)

    with pytest.raises(WeightsNotFoundError, match="transfer failed, the partial file was discarded"):
        resolve.resolve_weights("tiny")
    assert cache_files(env.cache) == []
    with pytest.raises(WeightsNotFoundError, match="not bundled and not in the cache"):
        resolve.resolve_weights("tiny", download=False)

    env.stub.clear_faults()
    assert resolve.resolve_weights("tiny").read_bytes() == env.data


@pytest.mark.parametrize("status", [404, 500])
def test_hub_errors_become_one_line_weights_errors(env, status):
    env.stub.fault(REPO, "tiny.safetensors", status=status)

    with pytest.raises(WeightsNotFoundError) as info:
        resolve.download_weights("tiny")

    message = str(info.value)
    assert message.startswith("tiny: ") and f"HTTP {status}" in message and "\n" not in message
    assert "drcn download-weights tiny" in message


def test_offline_without_a_cached_copy_says_what_to_run(env):
    point_client_at(env.mp, env.stub.endpoint, cache_dir=env.cache, offline=True)
    notices: list[str] = []

    with pytest.raises(WeightsNotFoundError, match=r"HF_HUB_OFFLINE=1 .* run `drcn download-weights tiny`"):
        resolve.resolve_weights("tiny", on_download=notices.append)
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE=1"):
        resolve.download_weights("tiny")
    assert notices == [] and env.stub.requests == []


def test_offline_with_a_cached_copy_works(env):
    path = resolve.download_weights("tiny")
    point_client_at(env.mp, env.stub.endpoint, cache_dir=env.cache, offline=True)
    requests = len(env.stub.requests)

    assert resolve.resolve_weights("tiny") == path
    assert resolve.download_weights("tiny") == path
    assert len(env.stub.requests) == requests


def test_an_entry_without_checksum_is_never_downloaded(env):
    with pytest.raises(ChecksumError, match="no sha256 is recorded"):
        resolve.resolve_weights("tiny-unpublished")
    with pytest.raises(ChecksumError, match="no sha256 is recorded"):
        resolve.download_weights("tiny-unpublished")
    assert env.stub.file_requests == []


def test_repo_id_comes_from_argument_then_environment_then_table(env):
    env.stub.add_file("mirror/drcn", "tiny.safetensors", env.data)
    env.stub.add_file("other/drcn", "tiny.safetensors", env.data)

    env.mp.setenv(table.REPO_ID_ENV, "mirror/drcn")
    assert "models--mirror--drcn" in str(resolve.download_weights("tiny"))
    assert "models--other--drcn" in str(resolve.download_weights("tiny", repo_id="other/drcn"))
    env.mp.delenv(table.REPO_ID_ENV)
    assert "models--test-org--drcn-test" in str(resolve.download_weights("tiny"))


def test_revision_can_pin_a_commit(env):
    commit = env.stub.commit(REPO)
    env.stub.add_file(REPO, "tiny.safetensors", b"newer, different weights")  # main moves on

    path = resolve.download_weights("tiny", revision=commit)

    assert path.parent.name == commit and path.read_bytes() == env.data
    with pytest.raises(ChecksumError):
        resolve.download_weights("tiny")  # main now has a file the table does not vouch for


def test_list_weights_reports_each_status(env):
    statuses = {row.entry.name: row for row in resolve.list_weights()}
    assert statuses["tiny"].status == "available" and statuses["tiny"].location == f"{REPO}/tiny.safetensors@main"
    assert statuses["tiny-unpublished"].status == "unpublished"

    path = resolve.download_weights("tiny")
    assert {r.entry.name: (r.status, r.location) for r in resolve.list_weights()}["tiny"] == ("cached", str(path))

    requests = len(env.stub.file_requests)
    (env.bundled / "tiny.safetensors").write_bytes(env.data)
    assert {r.entry.name: r.status for r in resolve.list_weights()}["tiny"] == "bundled"
    assert len(env.stub.file_requests) == requests  # listing never asks the hub


# -- regenerating the table ------------------------------------------------------------------------------------------


def test_entries_from_files_gives_paste_ready_source(env, model_file, tmp_path):
    other = tmp_path / "drcn-x9.safetensors"
    other.write_bytes(model_file.read_bytes())

    updated, new = publish.entries_from_files([model_file, other])

    assert updated == table.KNOWN_WEIGHTS["tiny"]  # same file, so the same checksum as the table's
    assert new.name == "drcn-x9" and new.size == len(env.data) and "F=8, D=3" in new.description
    rebuilt = eval(publish.entry_source(new).rstrip(","), {"KnownWeights": KnownWeights})
    assert rebuilt == new


def test_python_dash_m_registry_prints_entries(model_file):
    result = subprocess.run(
        [sys.executable, "-m", "drcn_cli.weights.publish", str(model_file)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(publish.__file__).parents[2])},
    )

    assert result.returncode == 0, result.stderr
    assert f"sha256={hashlib.sha256(model_file.read_bytes()).hexdigest()!r}" in result.stdout
    assert f"size={model_file.stat().st_size}" in result.stdout
    assert result.stdout.startswith("KnownWeights(")

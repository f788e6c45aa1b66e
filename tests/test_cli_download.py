"""`drcn download-weights` end to end: the root app, a local stand-in for the hub (tests/hubstub.py), real files."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from hubstub import HubStub, point_client_at, skip_retry_sleeps
from typer.testing import CliRunner

from drcn_cli.cli import app
from drcn_cli.weights import files, resolve
from drcn_cli.weights import table as weights_table
from drcn_cli.weights.table import KnownWeights

REPO = "test-org/drcn-test"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    import torch

    from drcn_cli.model import DRCN, DRCNConfig

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("published") / "drcn.safetensors"
    files.save_weights(DRCN(DRCNConfig(features=8, recursions=3)), path)
    return path


@pytest.fixture
def env(model_file, monkeypatch, tmp_path):
    """The table: `drcn` is the small test model (published on the stub), `drcn-lite` has no checksum yet."""
    data = model_file.read_bytes()
    table = {
        "drcn": KnownWeights(
            "drcn", "drcn.safetensors", hashlib.sha256(data).hexdigest(), len(data), "tiny test model", repo_id=REPO
        ),
        "drcn-lite": KnownWeights("drcn-lite", "drcn-lite.safetensors", None, None, "not published", repo_id=REPO),
    }
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    monkeypatch.setattr(files, "BUNDLED_DIR", bundled)
    monkeypatch.setattr(weights_table, "KNOWN_WEIGHTS", table)
    monkeypatch.delenv(weights_table.REPO_ID_ENV, raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # rich tables: room for whole paths
    with HubStub() as stub:
        stub.add_file(REPO, "drcn.safetensors", data)
        cache = tmp_path / "hub"
        point_client_at(monkeypatch, stub.endpoint, cache_dir=cache)
        skip_retry_sleeps(monkeypatch)
        yield SimpleNamespace(stub=stub, cache=cache, bundled=bundled, data=data, mp=monkeypatch)


def run(*args: str):
    return CliRunner().invoke(app, ["download-weights", *args])


def cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if ("blobs" in p.parts or "snapshots" in p.parts) and not p.is_dir())


def test_download_says_where_the_verified_file_went(env):
    result = run("drcn")

    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert line.startswith("drcn: ") and line.endswith(" (downloaded, sha256 verified)")
    path = Path(line.removeprefix("drcn: ").removesuffix(" (downloaded, sha256 verified)"))
    assert env.cache in path.parents and path.read_bytes() == env.data
    assert "Traceback" not in result.output

    again = run("drcn", "-q")
    assert again.exit_code == 0 and again.stdout.strip() == f"drcn: {path} (already cached, sha256 verified)"


def test_no_name_fetches_the_default_model_and_cache_dir_is_honoured(env, tmp_path):
    result = run("--cache-dir", str(tmp_path / "mine"), "--quiet")

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"drcn: {tmp_path / 'mine'}")
    assert cache_files(env.cache) == []


def test_force_downloads_a_cached_model_again(env):
    assert run("drcn", "-q").exit_code == 0
    gets = sum(r.method == "GET" for r in env.stub.file_requests)

    result = run("drcn", "-q", "--force")

    assert result.exit_code == 0 and "(downloaded, sha256 verified)" in result.stdout
    assert sum(r.method == "GET" for r in env.stub.file_requests) == gets + 1


def test_bundled_models_are_not_downloaded(env):
    (env.bundled / "drcn.safetensors").write_bytes(env.data)

    result = run("drcn")

    assert result.exit_code == 0
    assert result.stdout.strip() == f"drcn: {env.bundled / 'drcn.safetensors'} (bundled, nothing to download)"
    assert env.stub.file_requests == []


def plain_rows(stdout: str) -> dict[str, list[str]]:
    """The plain --list table (stdout is not a terminal): the header, then one model a line, columns two or more
    spaces apart; by model name, each row as a dict of its cells."""
    header, *lines = stdout.splitlines()
    columns = re.split(r" {2,}", header)
    assert columns == ["name", "status", "size", "upscale default", "description", "where"]
    rows = [re.split(r" {2,}", line) for line in lines]
    assert all(len(row) == len(columns) for row in rows), rows
    return {row[0]: dict(zip(columns, row, strict=True)) for row in rows}


def test_list_shows_every_model_and_where_it_is(env):
    before = run("--list")
    assert before.exit_code == 0, before.output
    rows = plain_rows(before.stdout)
    assert set(rows) == {"drcn", "drcn-lite"}
    assert rows["drcn"]["status"] == "downloadable" and rows["drcn"]["where"] == f"{REPO}/drcn.safetensors@main"
    assert rows["drcn-lite"]["status"] == "not published yet"

    path = run("drcn", "-q").stdout.split()[1]
    requests = len(env.stub.file_requests)
    after = plain_rows(run("--list").stdout)
    assert after["drcn"]["status"] == "cached" and after["drcn"]["where"] == path
    assert "models--test-org--drcn-test" in path
    assert len(env.stub.file_requests) == requests  # --list never asks the hub


@pytest.mark.parametrize("extra", [["drcn"], ["--all"]], ids=["a-name", "all"])
def test_list_takes_no_names(env, extra):
    result = run("--list", *extra)
    assert result.exit_code == 2
    assert "--list takes no model names and no --all" in " ".join(result.stderr.split())  # the panel, unfolded
    assert result.stdout == ""  # no table: the command stopped before doing anything
    assert env.stub.file_requests == [] and cache_files(env.cache) == []  # nothing fetched, nothing left behind
    assert not env.cache.exists() or not any(env.cache.rglob("*"))


def test_unknown_names_are_a_usage_error_listing_known_ones(env):
    result = run("drcn", "nope", "nada")

    assert result.exit_code == 2
    assert "error: unknown model 'nope', 'nada'; known models: drcn, drcn-lite" in result.stderr
    assert env.stub.file_requests == []  # nothing was attempted


def test_all_fetches_what_it_can_and_fails_for_the_rest(env):
    result = run("--all", "-q")

    assert result.exit_code == 1
    assert "drcn: " in result.stdout and "(downloaded, sha256 verified)" in result.stdout
    assert result.stderr.strip().startswith("error: drcn-lite: no sha256 is recorded")


@pytest.mark.parametrize("status", [404, 500])
def test_hub_errors_are_one_line_and_exit_1(env, status):
    env.stub.fault(REPO, "drcn.safetensors", status=status)

    result = run("drcn", "-q")

    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: drcn: ") and f"HTTP {status}" in lines[-1]
    assert result.stdout == "" and cache_files(env.cache) == []


def test_tampered_file_is_refused_and_removed(env):
    tampered = bytearray(env.data)
    tampered[100] ^= 1
    env.stub.add_file(REPO, "drcn.safetensors", bytes(tampered))

    result = run("drcn", "-q")

    assert result.exit_code == 1
    assert "is not the published file" in result.stderr and "removed from the cache" in result.stderr
    assert cache_files(env.cache) == []


def test_interrupted_download_exits_1_and_keeps_nothing(env):
    env.stub.fault(REPO, "drcn.safetensors", cut_at=500)

    result = run("drcn", "-q")

    assert result.exit_code == 1 and "transfer failed" in result.stderr
    assert cache_files(env.cache) == []


def test_offline_without_cache_says_what_to_do_and_with_cache_works(env):
    point_client_at(env.mp, env.stub.endpoint, cache_dir=env.cache, offline=True)
    offline = run("drcn", "-q")
    assert offline.exit_code == 1
    assert "HF_HUB_OFFLINE=1" in offline.stderr and "drcn download-weights drcn" in offline.stderr

    point_client_at(env.mp, env.stub.endpoint, cache_dir=env.cache, offline=False)
    assert run("drcn", "-q").exit_code == 0
    point_client_at(env.mp, env.stub.endpoint, cache_dir=env.cache, offline=True)
    requests = len(env.stub.requests)
    cached = run("drcn", "-q")
    assert cached.exit_code == 0 and "(already cached, sha256 verified)" in cached.stdout
    assert len(env.stub.requests) == requests


def test_invalid_repo_id_is_a_one_line_error(env):
    for args in (["drcn", "-q", "--repo-id", "not a repo!"], ["--list", "--repo-id", "not a repo!"]):
        result = run(*args)
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("error: drcn: ") and "not a valid repository id" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("status", [404, 500])
def test_force_with_hub_errors_is_one_line_and_exit_1(env, status):
    assert run("drcn", "-q").exit_code == 0
    env.stub.fault(REPO, "drcn.safetensors", status=status)

    result = run("drcn", "-q", "--force")

    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: drcn: ") and f"HTTP {status}" in lines[0], lines
    assert "Traceback" not in result.output


def test_force_without_network_is_one_line_and_exit_1(env):
    point_client_at(env.mp, "http://127.0.0.1:9", cache_dir=env.cache)  # nothing listens on the discard port

    result = run("drcn", "-q", "--force")

    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: drcn: ") and "cannot reach the hub" in lines[0], lines


def test_an_error_is_the_only_line_on_stderr_no_blank_line_before_it(env):
    for args in (("drcn-lite",), ("drcn-lite", "-q")):  # no checksum recorded: refused before any transfer
        result = run(*args)
        assert result.exit_code == 1
        assert result.stderr.startswith("error: drcn-lite") and result.stderr.count("\n") == 1, repr(result.stderr)


@pytest.mark.parametrize("force", [False, True], ids=["download", "force"])
def test_hf_home_that_is_a_file_is_named_before_any_download(env, tmp_path, force):
    from huggingface_hub import constants

    blocker = tmp_path / "hf-home"
    blocker.write_text("a file")
    env.mp.delenv("HF_HUB_CACHE", raising=False)
    env.mp.setenv("HF_HOME", str(blocker))
    env.mp.setattr(constants, "HF_HUB_CACHE", str(blocker / "hub"))  # as the client computes it from HF_HOME

    result = run("drcn", *(["--force"] if force else []))

    assert result.exit_code == 1, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line == (f"error: drcn: cannot download: the hub cache {blocker / 'hub'} cannot be a folder: {blocker} is "
                    f"a file, not a folder (set by HF_HOME={blocker}); point it to a folder (or unset it), or pass "
                    "--weights PATH")  # fmt: skip
    assert "partial file" not in result.output and "Errno" not in result.output
    assert env.stub.file_requests == [] and blocker.read_text() == "a file"


def test_upscale_names_a_cache_that_cannot_be_a_folder_before_announcing_a_download(env, tmp_path):
    import numpy as np
    from huggingface_hub import constants
    from PIL import Image

    blocker = tmp_path / "cache-file"
    blocker.write_text("a file")
    env.mp.setenv("HF_HUB_CACHE", str(blocker))
    env.mp.setattr(constants, "HF_HUB_CACHE", str(blocker))
    source = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(source)

    result = CliRunner().invoke(app, ["upscale", str(source), "-s", "2", "-m", "drcn", "-o", str(tmp_path / "out.png")])

    assert result.exit_code == 1, result.output
    assert "downloading" not in result.output and "Traceback" not in result.output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert f"the hub cache {blocker} cannot be a folder: {blocker} is a file, not a folder" in line
    assert f"(set by HF_HUB_CACHE={blocker})" in line
    assert env.stub.file_requests == [] and not (tmp_path / "out.png").exists()


def test_list_names_the_upscale_defaults_on_unwrapped_lines_without_the_network(env, tmp_path):
    long = "a description long enough that an 80-column table would have to wrap it, " * 2
    data = env.data
    published = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    table = {
        "drcn": KnownWeights("drcn", "drcn.safetensors", None, None, "not published", repo_id=REPO),
        "drcn-lite": KnownWeights("drcn-lite", "drcn-lite.safetensors", **published, description=long, repo_id=REPO),
        weights_table.PHOTO_MODEL: KnownWeights(
            weights_table.PHOTO_MODEL, f"{weights_table.PHOTO_MODEL}.safetensors", **published,
            description="for photos", repo_id=REPO,
        ),
    }
    env.mp.setattr(weights_table, "KNOWN_WEIGHTS", table)
    for name in ("drcn-lite", weights_table.PHOTO_MODEL):
        (env.bundled / f"{name}.safetensors").write_bytes(data)
    env.mp.setenv("COLUMNS", "80")
    point_client_at(env.mp, "http://127.0.0.1:9", cache_dir=env.cache)  # no hub there: --list must not need one

    result = run("--list")

    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1 + len(table)  # the header, then one model a line
    rows = plain_rows(result.stdout)
    assert rows["drcn-lite"]["description"] == long.strip()  # whole, on its line
    assert rows["drcn-lite"]["status"] == "bundled" and rows["drcn-lite"]["size"] == resolve._format_size(len(data))
    assert rows["drcn-lite"]["upscale default"].startswith("lossless inputs")
    assert rows[weights_table.PHOTO_MODEL]["upscale default"].startswith("JPEG inputs")
    assert rows["drcn"]["upscale default"] == "-" and rows["drcn"]["status"] == "not published yet"
    assert weights_table.model_for_input("PNG") == "drcn-lite"
    assert weights_table.model_for_input("JPEG") == weights_table.PHOTO_MODEL
    assert env.stub.file_requests == []


def test_list_with_nothing_bundled_names_one_default_for_all_inputs(env):
    rows = plain_rows(run("--list").stdout)
    assert rows["drcn"]["upscale default"] == "all inputs" and rows["drcn-lite"]["upscale default"] == "-"

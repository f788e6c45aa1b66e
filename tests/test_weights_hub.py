"""drcn_cli.weights.hub against a local stand-in for the hub (tests/hubstub.py): real HTTP, the real huggingface_hub
client."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest
from hubstub import HubStub, point_client_at, skip_retry_sleeps

from drcn_cli.weights import hub

REPO = "test-org/files"
DATA = bytes(range(256)) * 300  # 76.8 kB: small, but more than one read from the socket


@pytest.fixture(params=[True, False], ids=["lfs", "plain"])
def stub(request, monkeypatch, tmp_path):
    """A running stub serving REPO/data.bin, the client pointed at it with an empty cache, no retry waits."""
    with HubStub(lfs=request.param) as server:
        server.add_file(REPO, "data.bin", DATA)
        point_client_at(monkeypatch, server.endpoint, cache_dir=tmp_path / "hub")
        server.slept = skip_retry_sleeps(monkeypatch)
        yield server


@pytest.fixture
def lfs_stub(monkeypatch, tmp_path):
    with HubStub() as server:
        server.add_file(REPO, "data.bin", DATA)
        point_client_at(monkeypatch, server.endpoint, cache_dir=tmp_path / "hub")
        server.slept = skip_retry_sleeps(monkeypatch)
        yield server


def cache_files(root: Path) -> list[Path]:
    """Every file (or link) under blobs/ and snapshots/ of the cache: what a later run could pick up."""
    return sorted(p for p in root.rglob("*") if ("blobs" in p.parts or "snapshots" in p.parts) and not p.is_dir())


def test_fetch_file_downloads_into_the_hub_cache_layout(stub, tmp_path):
    path = hub.fetch_file(REPO, "data.bin")

    commit = stub.commit(REPO)
    assert path == tmp_path / "hub" / "models--test-org--files" / "snapshots" / commit / "data.bin"
    assert path.read_bytes() == DATA
    assert path.is_symlink() and path.resolve().parent.name == "blobs"
    assert (tmp_path / "hub" / "models--test-org--files" / "refs" / "main").read_text() == commit
    if stub.lfs:  # the hub names LFS blobs by their sha256
        assert path.resolve().name == hashlib.sha256(DATA).hexdigest()


def test_a_cached_file_is_found_without_the_network(stub):
    first = hub.fetch_file(REPO, "data.bin")
    before = len(stub.file_requests)

    assert hub.cached_file(REPO, "data.bin") == first
    assert hub.fetch_file(REPO, "data.bin", local_only=True) == first
    assert hub.fetch_file(REPO, "data.bin", revision=stub.commit(REPO)) == first  # pinned commit: no request
    assert len(stub.file_requests) == before


def test_cached_file_is_none_for_files_never_fetched(stub):
    assert hub.cached_file(REPO, "data.bin") is None
    assert hub.cached_file("test-org/other", "data.bin") is None


def test_cache_dir_argument_overrides_the_hub_cache(stub, tmp_path):
    path = hub.fetch_file(REPO, "data.bin", cache_dir=tmp_path / "elsewhere")

    assert tmp_path / "elsewhere" in path.parents
    assert hub.cached_file(REPO, "data.bin") is None  # the default cache was not touched
    assert hub.cached_file(REPO, "data.bin", cache_dir=tmp_path / "elsewhere") == path
    assert hub.hub_cache_dir(tmp_path / "elsewhere") == tmp_path / "elsewhere"
    assert hub.hub_cache_dir() == tmp_path / "hub"


def test_dataset_files_are_served_and_cached_apart(stub, tmp_path):
    stub.add_file("test-org/images", "set5/baby.png", b"not really a png", repo_type="dataset")

    path = hub.fetch_file("test-org/images", "set5/baby.png", repo_type="dataset")

    assert path.read_bytes() == b"not really a png"
    assert (tmp_path / "hub" / "datasets--test-org--images") in path.parents


def test_progress_callback_sees_every_byte(stub):
    seen: list[tuple[int, int | None]] = []

    hub.fetch_file(REPO, "data.bin", on_progress=lambda done, total: seen.append((done, total)))

    assert seen[-1] == (len(DATA), len(DATA))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_force_downloads_again(stub):
    hub.fetch_file(REPO, "data.bin")
    gets = sum(r.method == "GET" for r in stub.file_requests)

    path = hub.fetch_file(REPO, "data.bin", force=True)

    assert sum(r.method == "GET" for r in stub.file_requests) == gets + 1
    assert path.read_bytes() == DATA


def test_missing_file_repo_and_revision_are_named(stub):
    with pytest.raises(hub.HubError, match=r"test-org/files/nope\.bin@main: no such file"):
        hub.fetch_file(REPO, "nope.bin")
    with pytest.raises(hub.HubError, match=r"no such model repository"):
        hub.fetch_file("test-org/missing", "data.bin")
    with pytest.raises(hub.HubError, match=r"no such revision of test-org/files"):
        hub.fetch_file(REPO, "data.bin", revision="v9")


def test_plain_404_says_what_the_server_answered(stub):
    stub.fault(REPO, "data.bin", status=404)

    with pytest.raises(hub.HubError) as info:
        hub.fetch_file(REPO, "data.bin")

    assert "test-org/files/data.bin@main" in str(info.value)
    assert "HTTP 404 Not Found" in str(info.value)
    assert "\n" not in str(info.value)


def test_server_error_is_retried_then_reported(stub, tmp_path):
    stub.fault(REPO, "data.bin", status=500)

    with pytest.raises(hub.HubError) as info:
        hub.fetch_file(REPO, "data.bin")

    message = str(info.value)
    assert "HTTP 500 Internal Server Error" in message and stub.endpoint in message
    assert "\n" not in message
    assert len(stub.slept) >= 5  # the client backed off (without waiting, here) before giving up
    assert cache_files(tmp_path / "hub") == []


def test_server_error_falls_back_to_a_cached_copy(stub):
    path = hub.fetch_file(REPO, "data.bin")
    stub.fault(REPO, "data.bin", status=503)

    assert hub.fetch_file(REPO, "data.bin") == path


def test_interrupted_transfer_leaves_nothing_in_the_cache(stub, tmp_path):
    stub.fault(REPO, "data.bin", cut_at=len(DATA) // 2)

    with pytest.raises(hub.HubError, match=r"transfer failed, the partial file was discarded"):
        hub.fetch_file(REPO, "data.bin")

    assert cache_files(tmp_path / "hub") == []  # no blob, no link, no .incomplete file
    assert hub.cached_file(REPO, "data.bin") is None
    with pytest.raises(hub.HubError, match="not in the cache"):
        hub.fetch_file(REPO, "data.bin", local_only=True)

    stub.clear_faults()
    assert hub.fetch_file(REPO, "data.bin").read_bytes() == DATA


def test_a_transfer_cut_once_is_retried_to_completion(stub):
    stub.fault(REPO, "data.bin", cut_at=1000, times=1)

    path = hub.fetch_file(REPO, "data.bin")

    assert path.read_bytes() == DATA
    assert sum(r.method == "GET" for r in stub.file_requests) == 2


def test_offline_mode_uses_the_cache_and_nothing_else(stub, monkeypatch, tmp_path):
    path = hub.fetch_file(REPO, "data.bin")
    point_client_at(monkeypatch, stub.endpoint, cache_dir=tmp_path / "hub", offline=True)
    before = len(stub.requests)

    assert hub.offline_mode()
    assert hub.fetch_file(REPO, "data.bin") == path
    with pytest.raises(hub.HubError, match=r"not in the cache .* offline mode is on \(HF_HUB_OFFLINE=1\)"):
        hub.fetch_file(REPO, "other.bin")
    with pytest.raises(hub.HubError, match="offline"):
        hub.fetch_file(REPO, "data.bin", force=True)
    assert len(stub.requests) == before


def test_unreachable_hub_is_reported_as_such(monkeypatch, tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    point_client_at(monkeypatch, f"http://127.0.0.1:{port}", cache_dir=tmp_path / "hub")
    skip_retry_sleeps(monkeypatch)

    with pytest.raises(hub.HubError, match=rf"cannot reach the hub at http://127.0.0.1:{port}"):
        hub.fetch_file(REPO, "data.bin")


def test_invalid_repo_id_is_a_hub_error(stub):
    with pytest.raises(hub.HubError, match="not a valid repository id"):
        hub.fetch_file("not a repo id!", "data.bin")


def test_remove_cached_file_deletes_link_and_blob(lfs_stub):
    path = hub.fetch_file(REPO, "data.bin")
    blob = path.resolve()

    hub.remove_cached_file(path)

    assert not os.path.lexists(path) and not blob.exists()
    assert hub.cached_file(REPO, "data.bin") is None


def test_remove_cached_file_refuses_paths_outside_a_cache(tmp_path):
    mine = tmp_path / "weights.safetensors"
    mine.write_bytes(b"keep me")

    with pytest.raises(ValueError, match="not a file in a hub cache"):
        hub.remove_cached_file(mine)
    assert mine.read_bytes() == b"keep me"


def test_progress_relay_also_serves_the_xet_download_path():
    """Files uploaded to the hub today are stored with Xet, which the stub cannot serve: drive the client's own Xet
    progress reporter with the relay instead, as xet_get does, and check that only bytes written reach the callback.
    """
    import logging

    from huggingface_hub.utils._xet_progress_reporting import XetDownloadProgressReporter

    seen: list[tuple[int, int | None]] = []
    relay = hub._relay_class(lambda done, total: seen.append((done, total)))
    report = type("GroupReport", (), {})
    with XetDownloadProgressReporter(
        reconstruction_desc="data.bin", total=1000, log_level=logging.WARNING, tqdm_class=relay
    ) as progress:
        for written, received in [(0, 300), (400, 600), (1000, 900)]:
            report.total_bytes_completed, report.total_transfer_bytes_completed = written, received
            report.total_bytes, report.total_bytes_completion_rate = 1000, None
            report.total_transfer_bytes_completion_rate = None
            progress.update_progress(report)

    assert seen == [(0, 1000), (400, 1000), (1000, 1000)]


@pytest.mark.parametrize("variable", ["HF_HOME", "HF_HUB_CACHE"])
def test_a_cache_location_that_is_a_file_is_named_before_any_request(lfs_stub, monkeypatch, tmp_path, variable):
    from huggingface_hub import constants

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    cache = blocker / "hub" if variable == "HF_HOME" else blocker
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv(variable, str(blocker))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # what the client computed at import
    expected = (f"the hub cache {cache} cannot be a folder: {blocker} is a file, not a folder "
                f"(set by {variable}={blocker})")  # fmt: skip
    assert hub.cache_location_problem() == expected
    with pytest.raises(hub.CacheLocationError) as raised:
        hub.fetch_file(REPO, "data.bin")
    assert str(raised.value) == f"{expected}: point it to a folder"
    assert "partial file" not in str(raised.value) and "Errno" not in str(raised.value)
    assert lfs_stub.file_requests == []  # refused before asking the hub anything
    assert blocker.read_text() == "a file"
    mine = blocker / "mine"
    assert "(set by the cache folder given (--cache-dir))" in hub.cache_location_problem(mine)
    assert hub.cache_location_problem(tmp_path / "fine") is None


def test_a_cache_the_file_system_refuses_is_named_not_called_a_partial_download(lfs_stub, monkeypatch, tmp_path):
    import errno

    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def read_only(*args, **kwargs):  # as the client meets a read-only or full disk while making its folders
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(cache / "models--test-org--files"))

    monkeypatch.setattr(hub, "_download", read_only)
    with pytest.raises(hub.HubError) as raised:
        hub.fetch_file(REPO, "data.bin")
    assert str(raised.value) == (f"{REPO}/data.bin@main: cannot write in the hub cache {cache}: "
                                 f"{os.strerror(errno.EROFS)} ({cache / 'models--test-org--files'})")  # fmt: skip


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed): connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_refused_connection_is_not_retried(monkeypatch, tmp_path):
    import time

    port = closed_port()
    point_client_at(monkeypatch, f"http://127.0.0.1:{port}", cache_dir=tmp_path / "hub")
    slept = skip_retry_sleeps(monkeypatch)  # records the client's back-off waits, if it ever retried

    start = time.perf_counter()
    with pytest.raises(hub.HubError) as raised:
        hub.fetch_file(REPO, "data.bin")
    elapsed = time.perf_counter() - start

    assert slept == [] and elapsed < 10, (slept, elapsed)
    assert str(raised.value) == (f"{REPO}/data.bin@main: cannot reach the hub at http://127.0.0.1:{port}: "
                                 f"connection refused (and it is not in the cache {tmp_path / 'hub'})")  # fmt: skip
    assert hub.unreachable_reason() == f"cannot reach the hub at http://127.0.0.1:{port}: connection refused"


def test_an_unreachable_hub_still_serves_the_cached_copy_but_not_force(lfs_stub, monkeypatch, tmp_path):
    path = hub.fetch_file(REPO, "data.bin")
    point_client_at(monkeypatch, f"http://127.0.0.1:{closed_port()}", cache_dir=tmp_path / "hub")

    assert hub.fetch_file(REPO, "data.bin") == path and path.read_bytes() == DATA
    with pytest.raises(hub.HubError, match="cannot reach the hub at http://127.0.0.1:"):
        hub.fetch_file(REPO, "data.bin", force=True)


def test_a_live_hub_or_one_behind_a_proxy_is_not_called_unreachable(lfs_stub, monkeypatch):
    assert hub.unreachable_reason() is None
    point_client_at(monkeypatch, f"http://127.0.0.1:{closed_port()}", cache_dir="unused")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")  # only the client knows how to go through it
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert hub.unreachable_reason() is None

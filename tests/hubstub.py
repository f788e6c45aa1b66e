"""A stand-in for the Hugging Face hub on 127.0.0.1, so tests run the real huggingface_hub client over real HTTP.

What it serves is what ``hf_hub_download`` (huggingface_hub 2.x) asks for:

* ``HEAD|GET /{repo_id}/resolve/{revision}/{filename}`` (model repos) and
  ``/datasets/{repo_id}/resolve/...``, ``/spaces/{repo_id}/resolve/...``; ``revision`` is ``main`` or a
  40-hex commit hash. Every answer carries ``X-Repo-Commit``.
* By default files are served like the hub's LFS files: the resolve URL answers ``302`` with
  ``Location`` on a second listener (another port, so another origin: the client does not follow it for HEAD and
  takes the metadata from the redirect itself, as it does with the hub's CDN), ``X-Linked-Etag`` (the sha256, which
  becomes the blob's name in the cache) and ``X-Linked-Size``. With ``lfs=False`` the resolve URL answers ``200``
  with ``ETag`` (the git blob sha1), ``Content-Length`` and the body itself.
* Missing repo, revision or file: ``404`` with the hub's ``X-Error-Code`` (``RepoNotFound``,
  ``RevisionNotFound``, ``EntryNotFound``), which the client maps to its typed errors.
* Content requests honour ``Range: bytes=N-`` (``206``), which the client uses to resume a broken transfer.

Faults (:meth:`HubStub.fault`) make a file answer an HTTP status, or cut its transfer: the response announces the
whole ``Content-Length`` but the connection closes after ``cut_at`` bytes of the file.

The client reads ``HF_ENDPOINT``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` once, at import, into
``huggingface_hub.constants``; :func:`point_client_at` sets both the variables and those constants.
:func:`skip_retry_sleeps` removes the client's retry back-off waits (1, 2, 4, 8, 8 s on a 5xx or a dropped
connection; there is no setting for them), so error tests take milliseconds.

Usage::

    with HubStub() as hub:
        hub.add_file("org/name", "model.safetensors", data)
        point_client_at(monkeypatch, hub.endpoint, cache_dir=tmp_path / "hub")
        skip_retry_sleeps(monkeypatch)
        ...  # hf_hub_download("org/name", "model.safetensors") now downloads from the stub
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

__all__ = ["Fault", "HubStub", "Request", "point_client_at", "skip_retry_sleeps"]

_KINDS = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_RESOLVE = re.compile(r"^/(?:(?P<kind>datasets|spaces)/)?(?P<repo>.+?)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")
_CONTENT = re.compile(r"^/cdn/(?P<kind>model|dataset|space)/(?P<commit>[0-9a-f]{40})/(?P<repo>.+?)/-/(?P<filename>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-$")


@dataclass
class Fault:
    """What goes wrong with one file: an HTTP ``status`` on its resolve URL, or a transfer cut after ``cut_at``
    bytes of the file. ``times``: how many requests it affects (None: all of them)."""

    status: int | None = None
    cut_at: int | None = None
    times: int | None = None


@dataclass(frozen=True)
class Request:
    """One request the stub received."""

    method: str
    path: str
    range: str | None


@dataclass
class _Repo:
    main: str
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubStub:
    """Hub and CDN stand-ins on two 127.0.0.1 ports (port 0: the OS picks free ones); a context manager."""

    def __init__(self, *, lfs: bool = True) -> None:
        self.lfs = lfs
        self.requests: list[Request] = []
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._faults: dict[tuple[str, str, str], Fault] = {}
        self._lock = threading.Lock()
        self._servers = [self._server(), self._server()]
        self._threads: list[threading.Thread] = []

    # -- lifecycle --------------------------------------------------------------------------------------------
    def _server(self) -> ThreadingHTTPServer:
        stub = self

        class Handler(_Handler):
            hub = stub

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        return server

    @property
    def endpoint(self) -> str:
        """What ``HF_ENDPOINT`` should be: ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def start(self) -> HubStub:
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> HubStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- content ----------------------------------------------------------------------------------------------
    def add_file(self, repo_id: str, filename: str, content: bytes | str | Path, *, repo_type: str = "model") -> str:
        """Publish ``content`` (bytes, or the bytes of a file) as ``filename`` in a new commit of ``repo_id``.

        Earlier commits stay resolvable by their hash; ``main`` moves to the new one. Returns the commit hash.
        """
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        key = (repo_type, repo_id)
        with self._lock:
            repo = self._repos.get(key)
            files = dict(repo.commits[repo.main]) if repo else {}
            files[filename] = data
            count = sum(len(r.commits) for r in self._repos.values())
            commit = hashlib.sha1(f"{repo_type}/{repo_id}/{count}".encode()).hexdigest()
            if repo is None:
                repo = self._repos[key] = _Repo(main=commit)
            repo.commits[commit] = files
            repo.main = commit
        return commit

    @property
    def file_requests(self) -> list[Request]:
        """The requests for files (resolve and content URLs), leaving out the client's other calls to the
        endpoint (huggingface_hub 2.x asks once per process for ``/api/agent-harnesses``, answered 404 here)."""
        return [r for r in self.requests if "/resolve/" in r.path or r.path.startswith("/cdn/")]

    def commit(self, repo_id: str, *, repo_type: str = "model") -> str:
        """The commit hash that ``main`` points to."""
        return self._repos[(repo_type, repo_id)].main

    def url(self, repo_id: str, filename: str, *, repo_type: str = "model", revision: str = "main") -> str:
        return f"{self.endpoint}/{_KINDS[repo_type]}{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"

    def fault(
        self,
        repo_id: str,
        filename: str,
        *,
        status: int | None = None,
        cut_at: int | None = None,
        times: int | None = None,
        repo_type: str = "model",
    ) -> None:
        """Make requests for this file fail (see :class:`Fault`); replaces an earlier fault for it."""
        with self._lock:
            self._faults[(repo_type, repo_id, filename)] = Fault(status=status, cut_at=cut_at, times=times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # -- used by the handler ----------------------------------------------------------------------------------
    def _take_fault(self, key: tuple[str, str, str], kind: str) -> Fault | None:
        with self._lock:
            fault = self._faults.get(key)
            if fault is None or getattr(fault, kind) is None:
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[key]
            return fault

    def _lookup(self, repo_type: str, repo_id: str, revision: str, filename: str) -> tuple[int, str | None, Any]:
        """(status, error code or None, (commit, data) when found)."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                return 404, "RepoNotFound", None
            commit = repo.main if revision == "main" else revision
            files = repo.commits.get(commit)
            if files is None:
                return 404, "RevisionNotFound", None
            if filename not in files:
                return 404, "EntryNotFound", (commit, None)
            return 200, None, (commit, files[filename])


class _Handler(BaseHTTPRequestHandler):
    hub: HubStub
    protocol_version = "HTTP/1.0"  # one request per connection: a cut transfer cannot leak into the next one

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the stub records requests in HubStub.requests instead of printing them

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def _route(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        self.hub.requests.append(Request(self.command, path, self.headers.get("Range")))
        if match := _CONTENT.match(path):
            repo_type, commit = match["kind"], match["commit"]
            repo_id, filename = unquote(match["repo"]), unquote(match["filename"])
            status, _, found = self.hub._lookup(repo_type, repo_id, commit, filename)
            if status != 200:
                self._error(404, None, "no such object", body=body)
                return
            self._content((repo_type, repo_id, filename), found[1], body=body)
            return
        match = _RESOLVE.match(path)
        if match is None:
            self._error(404, None, "not a resolve URL", body=body)
            return
        repo_type = {"datasets": "dataset", "spaces": "space", None: "model"}[match["kind"]]
        repo_id, revision, filename = unquote(match["repo"]), unquote(match["revision"]), unquote(match["filename"])
        key = (repo_type, repo_id, filename)
        if fault := self.hub._take_fault(key, "status"):
            self._error(fault.status, None, f"injected HTTP {fault.status}", body=body)
            return
        status, code, found = self.hub._lookup(repo_type, repo_id, revision, filename)
        if status != 200:
            commit = found[0] if found else None
            self._error(status, code, f"{code}: {repo_type} {repo_id}@{revision}/{filename}", body=body, commit=commit)
            return
        commit, data = found
        if not self.hub.lfs:
            self._content(key, data, body=body, etag=_git_blob_sha1(data), commit=commit)
            return
        location = f"{self.hub.cdn}/cdn/{repo_type}/{commit}/{quote(repo_id)}/-/{quote(filename)}"
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{_git_blob_sha1(data)}"')
        self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _content(
        self, key: tuple[str, str, str], data: bytes, *, body: bool, etag: str | None = None, commit: str | None = None
    ) -> None:
        start = 0
        if (requested := self.headers.get("Range")) and (match := _RANGE.match(requested)):
            start = int(match[1])
            if start >= len(data):
                self._error(416, None, "range not satisfiable", body=body)
                return
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{etag or hashlib.sha256(data).hexdigest()}"')
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.end_headers()
        if not body:
            return
        end = len(data)
        if fault := self.hub._take_fault(key, "cut_at"):
            end = max(start, min(end, fault.cut_at))
        self.wfile.write(data[start:end])
        self.wfile.flush()
        self.close_connection = True

    def _error(self, status: int, code: str | None, message: str, *, body: bool, commit: str | None = None) -> None:
        payload = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)


def point_client_at(
    monkeypatch: Any, endpoint: str, *, cache_dir: str | Path, offline: bool = False, home: str | Path | None = None
) -> None:
    """Make huggingface_hub use ``endpoint``, the hub cache ``cache_dir`` and the given offline mode.

    Sets the environment variables (for code that reads them, and for subprocesses) and the
    ``huggingface_hub.constants`` the client read from them at import. Call it again to switch offline mode.
    No token is sent (``HF_HUB_DISABLE_IMPLICIT_TOKEN``), whatever the developer's machine holds.
    """
    from huggingface_hub import constants

    endpoint = endpoint.rstrip("/")
    cache_dir = str(cache_dir)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", cache_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    if home is not None:
        monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache_dir)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)


class _NoSleepTime:
    """The ``time`` module, except that ``sleep`` records how long it was asked to wait and returns at once."""

    def __init__(self, slept: list[float]) -> None:
        self._slept = slept

    def sleep(self, seconds: float) -> None:
        self._slept.append(seconds)

    def __getattr__(self, name: str) -> Any:
        import time

        return getattr(time, name)


def skip_retry_sleeps(monkeypatch: Any) -> list[float]:
    """Let the client retry without waiting; returns the list of waits it asked for (one per retry)."""
    import huggingface_hub.file_download
    import huggingface_hub.utils._http

    slept: list[float] = []
    for module in (huggingface_hub.utils._http, huggingface_hub.file_download):
        monkeypatch.setattr(module, "time", _NoSleepTime(slept))
    return slept

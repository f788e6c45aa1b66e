"""The only module that talks to the Hugging Face hub (huggingface_hub is imported here and nowhere else).

The hub client's own conventions apply: ``HF_ENDPOINT``, ``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``,
``HF_TOKEN``. Files land in the hub's cache layout
(``<cache>/<models|datasets>--<org>--<name>/snapshots/<commit>/<file>``, a link to ``blobs/<etag>``), so other
tools that use the hub share them. The client downloads into a temporary file of its own and renames it only
when the byte count matches, so an interrupted transfer never appears under a cached name; checking contents
against a known checksum is the caller's business (see :mod:`drcn_cli.weights.resolve`).

Every failure of the hub or of the transfer is a :class:`HubError` with a one-line reason (no tracebacks from the
client's internals).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DrcnError
from ..io.atomic import folder_problem

__all__ = [
    "CacheLocationError",
    "HubError",
    "ProgressCallback",
    "cache_location_problem",
    "cached_file",
    "check_cache_location",
    "endpoint",
    "fetch_file",
    "hub_cache_dir",
    "offline_mode",
    "remove_cached_file",
    "unreachable_reason",
]

ProgressCallback = Callable[[int, int | None], None]
"""Called as bytes arrive: ``(bytes received so far, total bytes or None when unknown)``."""


class HubError(DrcnError, RuntimeError):
    """A file could not be had from the hub (offline, missing, server error); the message says what to do."""


class CacheLocationError(HubError):
    """The hub cache's location cannot be a folder (``HF_HOME`` names a file ...); nothing was downloaded."""


def offline_mode() -> bool:
    """Whether the hub client is in offline mode (``HF_HUB_OFFLINE=1``, read by the client at import)."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def endpoint() -> str:
    """The hub address the client uses (``HF_ENDPOINT``, default https://huggingface.co)."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


# How long the reachability check waits for a TCP connection before leaving the question to the client.
_PROBE_TIMEOUT_S = 3.0


def unreachable_reason() -> str | None:
    """Why the hub cannot be reached at all (``cannot reach the hub at URL: connection refused``, a host name that
    does not resolve, no route), or None when it may be reachable.

    One TCP connection to the endpoint, before the client is asked: the client retries a refused connection five
    times with waits of 1, 2, 4, 8, 8 s (about 25 s, a warning line each time) before giving up, and has no setting
    for it. A connection that neither opens nor fails within a few seconds (a slow network) is left to the client
    and its own timeouts (``HF_HUB_ETAG_TIMEOUT``, ``HF_HUB_DOWNLOAD_TIMEOUT``); so is any endpoint reached through a
    proxy (``HTTPS_PROXY`` ...), which only the client knows how to use.
    """
    # Here, not at the top: urllib.request is slow to import, at every start, and only this check needs it.
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    url = endpoint()
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if urllib.request.getproxies() and not urllib.request.proxy_bypass(host):
        return None
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return None
    except TimeoutError:
        return None
    except ConnectionRefusedError:
        why = "connection refused"
    except socket.gaierror as exc:
        why = f"cannot resolve {host} ({exc.strerror or exc})"
    except OSError as exc:
        why = exc.strerror or str(exc)
    return f"cannot reach the hub at {url}: {why}"


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where hub files are cached: ``cache_dir`` if given, else ``HF_HUB_CACHE`` (default ``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()


# The variables that place the hub cache, most specific first (the client's own order).
_CACHE_VARIABLES = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")


def _cache_origin(cache: Path, cache_dir: str | os.PathLike | None) -> str:
    """What put the hub cache at ``cache``: the caller's folder, the variable whose value it lies in, or the default."""
    if cache_dir is not None:
        return "the cache folder given (--cache-dir)"
    for variable in _CACHE_VARIABLES:
        value = os.environ.get(variable)
        if value and cache.is_relative_to(Path(value).expanduser()):
            return f"{variable}={value}"
    return "the default location"


def cache_location_problem(cache_dir: str | os.PathLike | None = None) -> str | None:
    """Why the hub cache (:func:`hub_cache_dir`) cannot be a folder, naming what placed it there (``HF_HOME=/x``,
    ``--cache-dir``), or None. Checked before any download is announced or tried; nothing is created."""
    cache = hub_cache_dir(cache_dir)
    problem = folder_problem(cache)
    if problem is None:
        return None
    return f"the hub cache {cache} cannot be a folder: {problem} (set by {_cache_origin(cache, cache_dir)})"


def check_cache_location(cache_dir: str | os.PathLike | None = None) -> None:
    """CacheLocationError when :func:`cache_location_problem` finds one."""
    if (problem := cache_location_problem(cache_dir)) is not None:
        raise CacheLocationError(f"{problem}: point it to a folder")


def _where(repo_id: str, filename: str, repo_type: str, revision: str | None) -> str:
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return f"{prefix}{repo_id}/{filename}@{revision or 'main'}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _http_status(exc: BaseException) -> str:
    response = exc.response  # type: ignore[attr-defined]
    return f"HTTP {response.status_code} {response.reason_phrase}".rstrip()


class _ProgressRelay:
    """Stands in for the client's tqdm bar and forwards the count of bytes written to ``_callback``.

    The client accepts any class as ``tqdm_class``; it creates a non-tqdm class with plain keyword arguments
    (``total``, ``initial``, ``desc``, ...) and calls the tqdm methods below. Having ``update_transfer`` makes a
    Xet download (the hub's storage backend) use one bar for bytes written, with network bytes sent to
    ``update_transfer``, rather than two bars whose counts would interleave.
    """

    _callback: ProgressCallback

    def __init__(self, *, total: int | None = None, initial: int = 0, **_: Any) -> None:
        self.total = total
        self.n = initial
        self.format_dict: dict[str, Any] = {}
        self._callback(self.n, self.total)

    def update(self, n: int = 1) -> None:
        # n is negative when a resumed transfer has to start over: the count goes back with it.
        self.n += n
        self._callback(self.n, self.total)

    def update_transfer(self, n: int = 1) -> None:
        pass  # network bytes of a Xet download: the bytes written (update) are what the caller sees

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        self._callback(self.n, self.total)  # the client sets .total directly, then refreshes

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_transfer_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _ProgressRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _relay_class(callback: ProgressCallback) -> type[_ProgressRelay]:
    # A class, not a functools.partial: the client looks for `update_transfer` on the class itself.
    return type("ProgressRelay", (_ProgressRelay,), {"_callback": staticmethod(callback)})


def fetch_file(
    repo_id: str,
    filename: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    local_only: bool = False,
    on_progress: ProgressCallback | None = None,
) -> Path:
    """Download (or find in the cache) one file of a hub repo; returns its local path.

    Args:
        repo_id: ``"org/name"``.
        filename: path of the file inside the repo.
        repo_type: ``"model"``, ``"dataset"`` or ``"space"``.
        revision: branch, tag or commit hash (default ``main``). With a commit hash and a cached copy, no request
            is made at all.
        cache_dir: hub cache folder (default: ``HF_HUB_CACHE``).
        force: download again even if cached (refused in offline mode).
        local_only: never use the network; fail if the file is not cached.
        on_progress: receives byte counts during a transfer instead of the client's own tqdm bar
            (which otherwise shows on stderr unless ``HF_HUB_DISABLE_PROGRESS_BARS=1``).

    Returns:
        The file's path in the cache (a link into ``blobs/``). Its contents are what the server sent, complete in
        length; they are not checked against any checksum here.

    Raises:
        HubError: one line saying what failed (offline, not found, HTTP status, broken transfer) and for which file;
            CacheLocationError (one too), before any request, when the cache cannot be a folder (HF_HOME names a
            file ...).
    """
    where = _where(repo_id, filename, repo_type, revision)
    if force and local_only:
        raise ValueError("force and local_only exclude each other")
    if force and offline_mode():
        raise HubError(f"{where}: cannot download again in offline mode (HF_HUB_OFFLINE=1)")
    unreachable = None
    if not local_only:
        check_cache_location(cache_dir)
        unreachable = None if offline_mode() else unreachable_reason()
        if unreachable is not None and force:
            raise HubError(f"{where}: {unreachable}")
    tqdm_class = _relay_class(on_progress) if on_progress is not None else None
    # No request to a hub that cannot answer (the client would retry for ~25 s): a cached copy is still used, as
    # the client itself does when the hub is down.
    cache_only = local_only or unreachable is not None
    try:
        path = _download(repo_id, filename, repo_type, revision, cache_dir, force, cache_only, tqdm_class)
    except Exception as exc:
        reason = _failure_reason(exc, repo_id, repo_type, cache_dir, cache_only)
        if reason is None:
            raise  # not a failure of the hub or of the transfer: left as it is
        if unreachable is not None and reason.startswith("not in the cache"):
            reason = f"{unreachable} (and it is {reason})"
        raise HubError(f"{where}: {reason}") from exc
    return Path(path)


def _download(
    repo_id: str,
    filename: str,
    repo_type: str,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    force: bool,
    local_only: bool,
    tqdm_class: type[_ProgressRelay] | None,
) -> str:
    """hf_hub_download; a failed metadata request is a LocalEntryNotFoundError with or without ``force``."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return hf_hub_download(
            repo_id,
            filename,
            repo_type=repo_type,
            revision=revision,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            force_download=force,
            local_files_only=local_only,
            tqdm_class=tqdm_class,  # type: ignore[arg-type]
        )
    except ValueError as exc:
        # With force_download the client reports a failed metadata request (404, no network ...) as a bare
        # ValueError chained to the real error; without force the same failure is a LocalEntryNotFoundError
        # chained the same way. Treat both alike.
        if force and exc.__cause__ is not None and not isinstance(exc, HFValidationError):
            raise LocalEntryNotFoundError(str(exc)) from exc.__cause__
        raise


def _failure_reason(
    exc: Exception, repo_id: str, repo_type: str, cache_dir: str | os.PathLike | None, local_only: bool
) -> str | None:
    """One line saying why the download failed, or None for an exception that is no failure of the hub or transfer."""
    import httpx2
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # The classes overlap (a GatedRepoError is a RepositoryNotFoundError, an HfHubHTTPError an httpx2.HTTPError,
    # most are OSErrors): tested from the most specific to the most general.
    if isinstance(exc, LocalEntryNotFoundError):
        return _not_fetched_reason(exc, cache_dir, local_only)
    if isinstance(exc, HFValidationError):
        return f"not a valid repository id, revision or file name: {_first_line(exc)}"
    if isinstance(exc, OfflineModeIsEnabled):
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    if isinstance(exc, EntryNotFoundError):
        return "no such file in the repository on the hub"
    if isinstance(exc, RevisionNotFoundError):
        return f"no such revision of {repo_id} on the hub"
    if isinstance(exc, GatedRepoError):
        return "the repository is gated: accept its conditions on the hub and log in (hf auth login)"
    if isinstance(exc, RepositoryNotFoundError):
        return f"no such {repo_type} repository on the hub (or it is private: log in with hf auth login)"
    if isinstance(exc, HfHubHTTPError):
        return f"the hub answered {_http_status(exc)}"
    if isinstance(exc, httpx2.HTTPError):
        return f"transfer failed, the partial file was discarded: {_first_line(exc)}"
    if isinstance(exc, OSError) and exc.errno is not None:
        # The file system refused (a file where a folder should be, permissions, a full disk): say where, and
        # not that a download happened, which may never have started.
        where = f" ({exc.filename})" if exc.filename else ""
        return f"cannot write in the hub cache {hub_cache_dir(cache_dir)}: {exc.strerror or exc}{where}"
    if isinstance(exc, OSError):
        return f"download failed, the partial file was discarded: {_first_line(exc)}"
    return None


def _not_fetched_reason(exc: Exception, cache_dir: str | os.PathLike | None, local_only: bool) -> str:
    """Why the client could not ask the hub and had no cached copy: the reason is in the chained cause."""
    import httpx2
    from huggingface_hub.errors import FileMetadataError, HfHubHTTPError, OfflineModeIsEnabled

    cause = exc.__cause__
    cache = hub_cache_dir(cache_dir)
    if local_only:
        return f"not in the cache {cache}"
    if isinstance(cause, OfflineModeIsEnabled) or offline_mode():
        return f"not in the cache {cache} and offline mode is on (HF_HUB_OFFLINE=1)"
    if isinstance(cause, HfHubHTTPError):
        return f"the hub at {endpoint()} answered {_http_status(cause)}"
    if isinstance(cause, httpx2.HTTPError):
        return f"cannot reach the hub at {endpoint()}: {_first_line(cause)}"
    if isinstance(cause, FileMetadataError):
        return f"{endpoint()} did not answer like a hub: {_first_line(cause)}"
    return _first_line(exc)


def cached_file(
    repo_id: str,
    filename: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path | None:
    """The cached copy of a file at ``revision`` (a branch resolved through the cache's ``refs/``), or None.

    Never uses the network; the contents are not checked. Raises HubError only for an invalid repository id or
    file name.
    """
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(
            repo_id,
            filename,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            revision=revision,
            repo_type=repo_type,
        )
    except HFValidationError as exc:
        where = _where(repo_id, filename, repo_type, revision)
        raise HubError(f"{where}: not a valid repository id or file name: {_first_line(exc)}") from exc
    return Path(found) if isinstance(found, str) else None


def remove_cached_file(path: str | os.PathLike) -> None:
    """Delete a file from the hub cache: its ``snapshots/`` entry and the blob it links to.

    Used on a file whose contents were refused, so that no later run finds it. Another snapshot linking to the same
    blob is left dangling, which the client treats as not cached.

    Raises:
        ValueError: ``path`` is not inside a hub cache's ``snapshots/`` folder (a guard against deleting a user's file).
    """
    path = Path(path)
    if "snapshots" not in (parent.name for parent in path.parents):
        raise ValueError(f"{path}: not a file in a hub cache")
    if path.is_symlink():
        blob = path.resolve()
        path.unlink()
        if blob.parent.name == "blobs":
            blob.unlink(missing_ok=True)
    else:
        # Without symlinks (Windows without developer mode) the client keeps the blob itself in snapshots/.
        path.unlink(missing_ok=True)

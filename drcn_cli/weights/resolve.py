"""How a model name becomes a verified file on disk, and where each known model stands on this machine.

Resolution order (:func:`resolve_weights`):

1. an explicit path (``--weights PATH``): used as it is;
2. the bundled file ``weights/<name>.safetensors`` (``drcn_cli/bundled_weights/`` in a wheel): shipped with the
   code, trusted like the code;
3. the hub cache (no network): used only if its sha256 matches the table;
4. a download from the hub (``on_download`` is told first), used only if its sha256 matches the table.

A file whose sha256 does not match is refused with :class:`ChecksumError` and removed from the cache. An entry
without a recorded sha256 cannot be downloaded, since nothing could vouch for what arrives.

Where the files come from: ``repo_id`` argument (``--repo-id``) > ``DRCN_REPO_ID`` > the entry's ``repo_id``
(:data:`~drcn_cli.weights.table.DEFAULT_REPO_ID`); revision argument (``--revision``) > the entry's ``revision``.
Whatever the source, the file must have the table's checksum (:mod:`drcn_cli.weights.table`). The cache is the
hub's (``HF_HUB_CACHE`` / ``HF_HOME``) unless ``cache_dir`` says otherwise.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from ..errors import DrcnError
from . import hub, table
from .table import REPO_ID_ENV, KnownWeights, bundled_path, default_model_name

__all__ = [
    "ChecksumError",
    "HubOptions",
    "Located",
    "WeightsNotFoundError",
    "WeightsStatus",
    "cached_weights",
    "download_weights",
    "known_weights",
    "list_weights",
    "locate_weights",
    "resolve_weights",
    "sha256_file",
    "split_source",
    "verify_file",
]


class WeightsNotFoundError(DrcnError, RuntimeError):
    """No usable file for a model: unknown name, missing path, not available offline, hub failure.

    The message says what to run."""


class ChecksumError(DrcnError, RuntimeError):
    """A file's sha256 (or size) does not match the table, or the table has no checksum to check against."""


# -- small helpers ---------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | os.PathLike, sha256: str, size: int | None = None) -> None:
    """Raise :class:`ChecksumError` unless the file has this size (checked first: cheap) and sha256."""
    path = Path(path)
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ChecksumError(f"{path.name} has {actual_size} bytes, expected {size}")
    actual = sha256_file(path)
    if actual != sha256:
        raise ChecksumError(f"{path.name} has sha256 {actual[:16]}…, expected {sha256[:16]}…")


def known_weights(name: str) -> KnownWeights:
    """The table entry for ``name``; :class:`WeightsNotFoundError` listing the known names otherwise."""
    try:
        return table.KNOWN_WEIGHTS[name]
    except KeyError:
        known = ", ".join(sorted(table.KNOWN_WEIGHTS))
        raise WeightsNotFoundError(f"unknown model {name!r}; known models: {known}") from None


def _source(entry: KnownWeights, repo_id: str | None, revision: str | None) -> tuple[str, str]:
    return repo_id or os.environ.get(REPO_ID_ENV) or entry.repo_id, revision or entry.revision


def _origin(entry: KnownWeights, repo: str, revision: str) -> str:
    return f"{repo}/{entry.filename}@{revision}"


def _format_size(size: int | None) -> str:
    if size is None:
        return "?"
    value, unit = float(size), "B"
    for larger in ("kB", "MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, larger
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


def _check_or_evict(path: Path, entry: KnownWeights, origin: str) -> None:
    """Verify a cached file against the table; on a mismatch delete it from the cache and raise."""
    sha256 = _require_checksum(entry)
    try:
        verify_file(path, sha256, entry.size)
    except ChecksumError as exc:
        hub.remove_cached_file(path)
        raise ChecksumError(
            f"{entry.name}: {origin} is not the published file ({exc}) and was removed from the cache; "
            "it was corrupted or tampered with, or the file on the hub changed: run again to download it afresh, "
            "or if new weights were published, update the table in drcn_cli/weights/table.py"
        ) from None


def _require_checksum(entry: KnownWeights) -> str:
    if entry.sha256 is None:
        raise ChecksumError(
            f"{entry.name}: no sha256 is recorded for {entry.filename} yet (the weights are not published), "
            "so a download could not be verified; pass --weights PATH with a file you trust"
        )
    return entry.sha256


# -- the three sources -----------------------------------------------------------------------------------------


def cached_weights(
    name: str,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path | None:
    """The verified copy of ``name`` in the hub cache, or None. Never uses the network.

    A copy that fails the checksum is removed and :class:`ChecksumError` raised. An entry without a recorded
    sha256 has no trusted cached copy (None).
    """
    entry = known_weights(name)
    if entry.sha256 is None:
        return None
    repo, rev = _source(entry, repo_id, revision)
    try:
        path = hub.cached_file(repo, entry.filename, revision=rev, cache_dir=cache_dir)
    except hub.HubError as exc:
        raise WeightsNotFoundError(f"{name}: {exc}") from exc
    if path is None:
        return None
    _check_or_evict(path, entry, _origin(entry, repo, rev))
    return path


def download_weights(
    name: str,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    on_progress: hub.ProgressCallback | None = None,
) -> Path:
    """Fetch ``name`` from the hub into the cache (a cached copy is reused unless ``force``) and verify it.

    Returns the verified path in the cache. ``on_progress(done, total)`` receives byte counts (default: the hub
    client's tqdm bar on stderr).

    Raises:
        WeightsNotFoundError: unknown name; offline and not cached; the hub failed (404, 5xx, broken transfer).
        ChecksumError: no checksum recorded for it; or what arrived does not match (it is removed from the cache).
    """
    entry = known_weights(name)
    _require_checksum(entry)
    _check_cache_location(name, cache_dir)
    repo, rev = _source(entry, repo_id, revision)
    origin = _origin(entry, repo, rev)
    try:
        path = hub.fetch_file(
            repo, entry.filename, revision=rev, cache_dir=cache_dir, force=force, on_progress=on_progress
        )
    except hub.HubError as exc:
        if hub.offline_mode():
            raise WeightsNotFoundError(
                f"{name}: not in the cache {hub.hub_cache_dir(cache_dir)} and HF_HUB_OFFLINE=1 forbids downloading; "
                f"run `drcn download-weights {name}` with network access (HF_HUB_OFFLINE unset), "
                "or pass --weights PATH"
            ) from exc
        raise WeightsNotFoundError(
            f"{name}: {exc}. Retry `drcn download-weights {name}`, or pass --weights PATH"
        ) from exc
    _check_or_evict(path, entry, origin)
    return path


def _check_cache_location(name: str, cache_dir: str | os.PathLike | None) -> None:
    """WeightsNotFoundError, before a download is announced or tried, when the hub cache cannot be a folder
    (HF_HOME or HF_HUB_CACHE naming a file ...): the message says which variable (or --cache-dir) points where."""
    if (problem := hub.cache_location_problem(cache_dir)) is not None:
        raise WeightsNotFoundError(
            f"{name}: cannot download: {problem}; point it to a folder (or unset it), or pass --weights PATH"
        )


def split_source(value: str | os.PathLike | None) -> tuple[str | None, Path | None]:
    """Where a name or a path is accepted (``weights=``, ``--init``): ``(name, None)`` or ``(None, path)``.

    A path object is a path; so is a string naming an existing file, or with a suffix (``.safetensors``) or a
    folder separator. Any other string is a model name (``drcn-lite``); None is (None, None), the default model.
    """
    if value is None:
        return None, None
    if not isinstance(value, str):
        return None, Path(value)
    path = Path(value)
    if path.is_file() or path.suffix or os.sep in value or "/" in value:
        return None, path
    return value, None


@dataclass(frozen=True)
class Located:
    """A weights file and where it came from: ``path`` (given by the caller), ``bundled``, ``cached`` or
    ``downloaded``."""

    path: Path
    origin: str


class HubOptions(TypedDict):
    """Where the weights come from: the keyword arguments that :func:`cached_weights` and
    :func:`download_weights` share."""

    repo_id: str | None
    revision: str | None
    cache_dir: str | os.PathLike | None


def locate_weights(
    name: str | None = None,
    path: str | os.PathLike | None = None,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    force: bool = False,
    on_download: Callable[[str], None] | None = None,
    on_stale: Callable[[ChecksumError], None] | None = None,
    on_progress: hub.ProgressCallback | None = None,
) -> Located:
    """The one resolve order: ``path`` if given, else model ``name`` (default :func:`default_model_name`) from
    the bundled files, the hub cache (verified), or a download (verified; ``on_download(message)`` first).

    ``force`` skips the bundled and cached copies and downloads afresh. A cached copy that fails its checksum is
    removed (``on_stale(error)`` is told) and downloaded again. Raises as :func:`resolve_weights`.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"{path}: no such weights file")
        return Located(path, "path")
    name = name or default_model_name()
    entry = known_weights(name)
    options: HubOptions = {"repo_id": repo_id, "revision": revision, "cache_dir": cache_dir}
    if force:
        return Located(download_weights(name, force=True, on_progress=on_progress, **options), "downloaded")
    if (bundled := bundled_path(name)) is not None:
        return Located(bundled, "bundled")
    stale = ""
    try:
        if (cached := cached_weights(name, **options)) is not None:
            return Located(cached, "cached")
    except ChecksumError as exc:
        if not download:
            raise
        if on_stale is not None:
            on_stale(exc)
        stale = "its cached copy failed the checksum and was removed; "
    _require_checksum(entry)
    if not download:
        raise WeightsNotFoundError(
            f"{name}: not bundled and not in the cache {hub.hub_cache_dir(cache_dir)}; "
            f"run `drcn download-weights {name}`, or pass --weights PATH"
        )
    if hub.offline_mode():
        raise WeightsNotFoundError(
            f"{name}: not bundled and not in the cache {hub.hub_cache_dir(cache_dir)}, and HF_HUB_OFFLINE=1 "
            f"forbids downloading; run `drcn download-weights {name}` with network access, or pass --weights PATH"
        )
    _check_cache_location(name, cache_dir)
    repo, rev = _source(entry, repo_id, revision)
    if on_download is not None:
        on_download(
            f"{name}: {stale or 'not bundled or cached; '}downloading {entry.filename} "
            f"({_format_size(entry.size)}) from {repo}@{rev} into {hub.hub_cache_dir(cache_dir)}"
        )
    return Located(download_weights(name, on_progress=on_progress, **options), "downloaded")


def resolve_weights(
    name: str | None = None,
    path: str | os.PathLike | None = None,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    on_download: Callable[[str], None] | None = None,
    on_progress: hub.ProgressCallback | None = None,
) -> Path:
    """The weights file to load: ``path`` if given, else model ``name`` (default :func:`default_model_name`)
    from the bundled files, the hub cache (verified), or a download (verified; ``on_download(message)`` first).

    Raises:
        WeightsNotFoundError: missing ``path``; unknown name; not bundled or cached and ``download`` is False or
            the client is offline; the download failed. The message says what to run.
        ChecksumError: no checksum recorded for a model that must be downloaded; a downloaded file does not
            match (removed from the cache). A cached copy that does not match is removed and downloaded again.
    """
    return locate_weights(
        name,
        path,
        repo_id=repo_id,
        revision=revision,
        cache_dir=cache_dir,
        download=download,
        on_download=on_download,
        on_progress=on_progress,
    ).path


# -- listing ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsStatus:
    """Where a known model stands on this machine.

    ``status``: ``bundled`` | ``cached`` | ``available`` (on the hub, to be downloaded) | ``unpublished`` (no
    checksum recorded yet). ``location``: a local path, or ``repo/file@revision``.
    """

    entry: KnownWeights
    status: str
    location: str
    size: str


def list_weights(
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[WeightsStatus]:
    """Every known model with its status (see :class:`WeightsStatus`). Cached copies are verified; one that fails
    is removed (and listed as available). Never uses the network. Raises WeightsNotFoundError for an invalid
    repository id."""
    rows = []
    for name, entry in table.KNOWN_WEIGHTS.items():
        size = _format_size(entry.size)
        repo, rev = _source(entry, repo_id, revision)
        if (bundled := bundled_path(name)) is not None:
            rows.append(WeightsStatus(entry, "bundled", str(bundled), _format_size(bundled.stat().st_size)))
            continue
        try:
            cached = cached_weights(name, repo_id=repo_id, revision=revision, cache_dir=cache_dir)
        except ChecksumError:
            cached = None
        if cached is not None:
            rows.append(WeightsStatus(entry, "cached", str(cached), size))
        else:
            status = "available" if entry.sha256 is not None else "unpublished"
            rows.append(WeightsStatus(entry, status, _origin(entry, repo, rev), size))
    return rows

"""The only module that talks to the Hugging Face hub (huggingface_hub is imported here and nowhere else).

The hub client's own conventions apply: HF_ENDPOINT, HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["HubError", "fetch_file"]


class HubError(RuntimeError):
    """A file could not be had from the hub (offline, missing, server error); the message says what to do."""


def fetch_file(
    repo_id: str,
    filename: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    local_only: bool = False,
) -> Path:
    """Download (or find in the cache) one file of a hub repo; returns its local path.

    Raises HubError with a one-line reason on any failure. The hub client writes to a temporary
    ``.incomplete`` file and renames it when complete, so an interrupted transfer is never taken for a file.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    try:
        path = hf_hub_download(
            repo_id,
            filename,
            repo_type=repo_type,
            revision=revision,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            force_download=force,
            local_files_only=local_only,
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise HubError(f"{where} is not in the cache and the hub cannot be reached (offline): {exc}") from exc
    except EntryNotFoundError as exc:
        raise HubError(f"{where}: no such file on the hub") from exc
    except RevisionNotFoundError as exc:
        raise HubError(f"{where}: no such revision on the hub") from exc
    except RepositoryNotFoundError as exc:
        raise HubError(f"{repo_id}: no such {repo_type} repository on the hub (or it is private)") from exc
    except HfHubHTTPError as exc:
        raise HubError(f"{where}: the hub answered with an error: {exc}") from exc
    except OSError as exc:
        raise HubError(f"{where}: download failed: {exc}") from exc
    return Path(path)

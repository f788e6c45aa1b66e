"""Benchmark datasets by name (Set5, Set14, B100, Urban100) or any folder of HR images.

Where a named dataset comes from, first found wins (:func:`resolve_dataset`):

1. ``data_dir/<Name>/`` (a folder of HR images, e.g. ``datasets/Set5``; an alias such as
   ``BSD100/`` or the hub's ``<Name>_HR/`` is accepted too);
2. the cache, ``$DRCN_HOME/datasets/<Name>/`` (see :func:`drcn_home`: ``$XDG_CACHE_HOME/drcn``, else the
   system's cache folder, ``~/.cache/drcn`` on Linux);
3. a download of ``data/<HubName>_HR.tar.gz`` from the hub dataset repo (e.g. ``eugenesiow/Set5``) through
   :mod:`drcn_cli.weights.hub`, extracted into the cache.

The archive is downloaded and extracted inside a hidden temporary folder next to the cache entry; only a
complete, checked extraction is renamed into place, so an interrupted or broken download never leaves a
half-filled dataset behind, and the temporary folder (archive included) is removed either way. Members that
could write outside the target (absolute paths, ``..``, links, devices) are refused before anything is
written, and tarfile's ``data`` filter guards the extraction itself.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from ..errors import EXIT_USAGE, DrcnError
from ..inference.color import array_to_tensor
from ..io.atomic import folder_problem
from ..io.formats import IMAGE_EXTENSIONS, ImageReadError
from ..io.images import read_image
from ..io.paths import HOME_ENV, drcn_home
from ..weights.hub import HubError, fetch_file, offline_mode, unreachable_reason
from .degradation import DataError
from .metrics import quantize_8bit

__all__ = [
    "BENCHMARKS",
    "IMAGE_SUFFIXES",
    "ArchiveError",
    "Benchmark",
    "Dataset",
    "DatasetError",
    "UnknownDatasetError",
    "dataset_cache_dir",
    "drcn_home",
    "extract_archive",
    "find_benchmark",
    "list_images",
    "load_image",
    "load_image8",
    "resolve_dataset",
]

IMAGE_SUFFIXES = frozenset(IMAGE_EXTENSIONS)  # the one list of image extensions (io.formats)


@dataclass(frozen=True)
class Benchmark:
    """A dataset known by name: where its HR images are on the hub."""

    name: str  # the name used in the papers' tables (and for the cache folder)
    repo_id: str  # hub dataset repo
    hub_name: str  # the name inside the repo: data/<hub_name>_HR.tar.gz holding <hub_name>_HR/*.png
    aliases: tuple[str, ...] = ()

    @property
    def archive(self) -> str:
        return f"data/{self.hub_name}_HR.tar.gz"

    @property
    def source(self) -> str:
        """Where it is downloaded from, for messages: the hub dataset repository and the archive in it."""
        return f"{self.archive} from the hub dataset {self.repo_id}"

    @property
    def place_it_yourself(self) -> str:
        """The way round a failed download, for messages."""
        return (
            f"download {self.source} yourself and give --data-dir DIR with the HR images in DIR/{self.name}/ "
            f"(or DIR/{self.hub_name}_HR/, as the archive unpacks)"
        )

    @property
    def folder_names(self) -> tuple[str, ...]:
        """Folder names under a data dir that hold this dataset, in the order they are tried."""
        return (self.name, *self.aliases, f"{self.hub_name}_HR")


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("Set5", "eugenesiow/Set5", "Set5"),
        Benchmark("Set14", "eugenesiow/Set14", "Set14"),
        Benchmark("B100", "eugenesiow/BSD100", "BSD100", aliases=("BSD100",)),
        Benchmark("Urban100", "eugenesiow/Urban100", "Urban100"),
    )
}


class DatasetError(DrcnError, RuntimeError):
    """A dataset that cannot be had or read: missing or empty folder, unreadable image, failed download."""


class UnknownDatasetError(DatasetError, ValueError):
    """A name that is neither a known benchmark nor a folder (a usage error)."""

    exit_code = EXIT_USAGE


class ArchiveError(DatasetError):
    """A downloaded archive that is corrupt, truncated, unsafe (paths or links out of the target) or empty."""


@dataclass(frozen=True)
class Dataset:
    """A resolved dataset: its images (sorted) and where they were found.

    source: "folder" (given as a path), "data-dir", "cache" or "hub" (downloaded just now).
    benchmark: the known benchmark it is (None for a custom folder), which is what published results refer to.
    """

    name: str
    root: Path
    images: tuple[Path, ...]
    source: str
    benchmark: Benchmark | None = None


def dataset_cache_dir() -> Path:
    """``$DRCN_HOME/datasets`` (not created here; see :func:`drcn_home`)."""
    return drcn_home() / "datasets"


def find_benchmark(name: str) -> Benchmark | None:
    """The benchmark called ``name`` or one of its aliases, ignoring case (``set5``, ``BSD100``), else None."""
    key = name.casefold()
    for bench in BENCHMARKS.values():
        if key in (n.casefold() for n in (bench.name, *bench.aliases)):
            return bench
    return None


def list_images(folder: str | os.PathLike) -> tuple[Path, ...]:
    """PNG, JPEG, BMP, TIFF and WebP files directly in ``folder``, sorted by name; other files are ignored.

    Raises DatasetError when the folder is missing or holds no such image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    images = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )
    if not images:
        raise DatasetError(f"{folder}: no images in this folder ({' '.join(IMAGE_EXTENSIONS)} files)")
    return tuple(images)


def load_image8(path: str | os.PathLike) -> torch.Tensor:
    """An image file as (C, H, W) float32 on 8-bit levels (k/255): C = 3 for colour, 1 for grey.

    Read upright (its EXIF orientation applied), as `drcn upscale` and `drcn bench` read it: the one reader of
    training, validation and benchmark images. Alpha is dropped; 16-bit images are rounded to 8 bits (training
    and benchmarks work on 8-bit images). Raises DataError.
    """
    try:
        loaded = read_image(path)
    except ImageReadError as exc:
        raise DataError(f"{path}: {exc}") from None  # the reason as `drcn upscale` gives it
    tensor, _fmt = array_to_tensor(loaded.pixels)
    return quantize_8bit(tensor[:3] if tensor.shape[0] >= 3 else tensor[:1])


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """An HR image as (C, H, W) float32 in [0, 1] on 8-bit levels (k / 255): C = 1 for grey, 3 for colour.

    Alpha is dropped; 16-bit images are rounded to 8 bits (the benchmarks are 8-bit). Raises DatasetError.
    """
    try:
        return load_image8(path).contiguous()  # the one reader of training, validation and benchmark images
    except DataError as exc:
        raise DatasetError(str(exc)) from None


def _looks_like_path(spec: str) -> bool:
    separators = [s for s in (os.sep, os.altsep, "/") if s]
    return any(s in spec for s in separators) or spec.startswith((".", "~"))


def _from_data_dir(bench: Benchmark, data_dir: Path) -> Path | None:
    for name in bench.folder_names:
        if (data_dir / name).is_dir():
            return data_dir / name
    return None


def _has_images(folder: Path) -> bool:
    try:
        list_images(folder)
    except DatasetError:
        return False
    return True


def resolve_dataset(
    spec: str,
    data_dir: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    revision: str | None = None,
    on_download: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> Dataset:
    """A dataset from a benchmark name (case ignored; ``BSD100`` is ``B100``) or a folder path.

    ``spec`` is a folder when it contains a path separator or starts with ``.`` or ``~``, or when it is not a
    known name and names an existing folder. ``cache_dir`` defaults to :func:`dataset_cache_dir`.
    ``on_download(message)`` is told before a download; ``on_progress(bytes_done, total)`` follows it.

    Raises:
        UnknownDatasetError: not a known name and not a folder.
        DatasetError: an empty folder; not found locally and ``download`` is False or the hub client is offline
            (``HF_HUB_OFFLINE=1``); the download failed.
        ArchiveError: the downloaded archive is corrupt, truncated, unsafe or holds no images.
    """
    bench = None if _looks_like_path(spec) else find_benchmark(spec)
    if bench is None:
        folder = Path(spec).expanduser()
        if folder.is_dir():
            return Dataset(folder.resolve().name, folder, list_images(folder), "folder")
        if _looks_like_path(spec):
            raise DatasetError(f"{spec}: no such folder")
        known = ", ".join(f"{b.name} ({', '.join(b.aliases)})" if b.aliases else b.name for b in BENCHMARKS.values())
        raise UnknownDatasetError(f"unknown dataset {spec!r}: use one of {known}, or a folder of HR images")

    if data_dir is not None and (found := _from_data_dir(bench, Path(data_dir).expanduser())) is not None:
        return Dataset(bench.name, found, list_images(found), "data-dir", bench)

    root = Path(cache_dir) if cache_dir is not None else dataset_cache_dir()
    cached = root / bench.name
    if _has_images(cached):
        return Dataset(bench.name, cached, list_images(cached), "cache", bench)
    why = "downloads are off" if not download else _why_no_hub()
    if why is not None:
        # Fail at once, before announcing a download or making a temporary folder, and say what would work.
        raise DatasetError(
            f"{bench.name}: not found in {data_dir or 'a --data-dir'} or the cache {cached}, and {why}: "
            f"run `drcn bench -d {bench.name}` once with network access (it keeps the dataset in the cache), "
            f"or {bench.place_it_yourself}"
        )
    _check_home(bench, root, cache_dir)
    if on_download is not None:
        on_download(f"{bench.name}: downloading {bench.repo_id}/{bench.archive} into {cached}")
    folder = _download(bench, root, revision, on_progress)
    return Dataset(bench.name, folder, list_images(folder), "hub", bench)


def _home_origin(root: Path, cache_dir: str | os.PathLike | None) -> str:
    """What put the dataset cache at ``root``: the caller's folder, DRCN_HOME or XDG_CACHE_HOME, or the default."""
    if cache_dir is not None:
        return "the cache folder given"
    for variable in (HOME_ENV, "XDG_CACHE_HOME"):
        value = os.environ.get(variable)
        if value and root.is_relative_to(Path(value).expanduser()):
            return f"{variable}={value}"
    return "the default location"


def _check_home(bench: Benchmark, root: Path, cache_dir: str | os.PathLike | None) -> None:
    """DatasetError, before a download is announced or tried, when the dataset cache cannot be a folder (DRCN_HOME
    naming a file ...): the message says which variable points where."""
    if (problem := folder_problem(root)) is not None:
        raise DatasetError(
            f"{bench.name}: cannot download: the dataset cache {root} cannot be a folder: {problem} (set by "
            f"{_home_origin(root, cache_dir)}): point it to a folder, or give --data-dir DIR with the HR images "
            f"in DIR/{bench.name}/"
        )


def _why_no_hub() -> str | None:
    """Why the hub cannot be asked (offline mode; a refused connection, no network), or None: checked before a
    download is announced, so that it fails at once rather than after the client's retries."""
    if offline_mode():
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    return unreachable_reason()


def _download(
    bench: Benchmark, root: Path, revision: str | None, on_progress: Callable[[int, int | None], None] | None
) -> Path:
    """Fetch and extract ``bench`` into ``root/<name>``; only a complete extraction is renamed into place."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{bench.name}-", suffix=".partial", dir=root))
    except OSError as exc:  # a file in the way, no permission, a read-only or full disk: nothing was downloaded
        raise DatasetError(
            f"{bench.name}: cannot download into the dataset cache {root}: {exc.strerror or exc} (set by "
            f"{_home_origin(root, None)})"
        ) from None
    try:
        try:
            archive = fetch_file(
                bench.repo_id,
                bench.archive,
                repo_type="dataset",
                revision=revision,
                cache_dir=work / "hub",
                on_progress=on_progress,
            )
        except HubError as exc:
            raise DatasetError(
                f"{bench.name}: download failed: {exc}; retry, or {bench.place_it_yourself}"
            ) from None
        try:
            images = extract_archive(archive, work / "extracted", f"{bench.hub_name}_HR")
        except ArchiveError as exc:
            # The archive lies in the temporary folder, removed below: name what was downloaded instead.
            reason = str(exc).removeprefix(f"{archive}: ")
            raise ArchiveError(
                f"{bench.name}: the archive {bench.archive} downloaded from {bench.repo_id} was refused, "
                f"nothing was kept: {reason}"
            ) from None
        target = root / bench.name
        try:
            os.replace(images, target)
        except OSError as exc:
            # Another process may have put a complete copy there in the meantime: use that one.
            if not _has_images(target):
                raise DatasetError(f"{target}: cannot put the dataset there ({exc.strerror or exc})") from None
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or member.name.startswith(("/", "\\")):
        raise ArchiveError(f"{archive}: refused: member {member.name!r} would be written outside the target folder")
    if member.issym() or member.islnk():
        raise ArchiveError(f"{archive}: refused: member {member.name!r} is a link (to {member.linkname!r})")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(f"{archive}: refused: member {member.name!r} is not a regular file or folder")


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike, folder: str) -> Path:
    """Extract a tar(.gz) archive of images safely into ``dest`` (created; must not exist) and return the
    folder holding the images: ``dest/<folder>`` if present, else the top level, else a single sub-folder.

    Every member is checked before anything is written: absolute paths, ``..``, links and special files are
    refused with ArchiveError; extraction then runs with tarfile's ``data`` filter. A corrupt or truncated
    archive raises ArchiveError. On error ``dest`` may hold a partial extraction: callers extract into a
    temporary folder (as :func:`resolve_dataset` does) and remove it.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()  # reads the whole archive: a truncated one fails here
            for member in members:
                _check_member(member, archive)
            dest.mkdir(parents=True)
            tar.extractall(dest, members=members, filter="data")
    except ArchiveError:
        raise
    except tarfile.FilterError as exc:
        raise ArchiveError(f"{archive}: refused by the safe-extraction filter: {exc}") from None
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{archive}: corrupt or truncated archive ({exc or type(exc).__name__})") from None

    candidates = [dest / folder, dest]
    subfolders = [p for p in dest.iterdir() if p.is_dir()]
    if len(subfolders) == 1:
        candidates.append(subfolders[0])
    for candidate in candidates:
        if _has_images(candidate):
            return candidate
    raise ArchiveError(f"{archive}: holds no images (expected {folder}/<image>.png)")

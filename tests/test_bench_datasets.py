"""Dataset resolution (data dir, cache, a local stand-in for the hub), safe extraction, image loading."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hubstub import HubStub, point_client_at, skip_retry_sleeps
from PIL import Image
from testdata import datasets_root, needs_datasets

from drcn_cli.bench import datasets
from drcn_cli.bench.datasets import (
    ArchiveError,
    DatasetError,
    UnknownDatasetError,
    extract_archive,
    find_benchmark,
    list_images,
    load_image,
    resolve_dataset,
)


def png_bytes(seed: int, size=(20, 16), mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buffer, "PNG")
    return buffer.getvalue()


def make_folder(folder: Path, names=("b.png", "a.png")) -> Path:
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        (folder / name).write_bytes(png_bytes(i))
    return folder


def tar_gz(members: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None) -> bytes:
    """A .tar.gz in memory: regular files, plus links name -> (tar type, target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


def set5_archive() -> bytes:
    return tar_gz({"Set5_HR/baby.png": png_bytes(1), "Set5_HR/bird.png": png_bytes(2), "Set5_HR/notes.txt": b"hi"})


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """DRCN_HOME in tmp, so the cache is tmp_path/drcn/datasets."""
    monkeypatch.setenv("DRCN_HOME", str(tmp_path / "drcn"))
    return tmp_path / "drcn"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with HubStub() as stub:
        point_client_at(monkeypatch, stub.endpoint, cache_dir=tmp_path / "hf")
        skip_retry_sleeps(monkeypatch)
        yield stub


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# -------------------------------------------------------------------------------------------------- names


def test_names_and_aliases_ignore_case():
    assert find_benchmark("set5").name == "Set5"
    assert find_benchmark("BSD100").name == "B100"
    assert find_benchmark("b100").repo_id == "eugenesiow/BSD100"
    assert find_benchmark("URBAN100").archive == "data/Urban100_HR.tar.gz"
    assert find_benchmark("Set15") is None


def test_unknown_name_lists_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownDatasetError, match=r"unknown dataset 'Set15'.*Set5, Set14, B100 \(BSD100\), Urban100"):
        resolve_dataset("Set15")


def test_cache_dir_follows_drcn_home_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("DRCN_HOME", str(tmp_path / "h"))
    assert datasets.dataset_cache_dir() == tmp_path / "h" / "datasets"
    monkeypatch.delenv("DRCN_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert datasets.dataset_cache_dir() == tmp_path / "x" / "drcn" / "datasets"


# ---------------------------------------------------------------------------------------- local and cache


def test_data_dir_folder_is_used_first(tmp_path, home):
    make_folder(tmp_path / "data" / "Set5")
    (tmp_path / "data" / "Set5" / "MANIFEST.tsv").write_text("file\n")
    make_folder(home / "datasets" / "Set5", names=("cached.png",))
    ds = resolve_dataset("set5", tmp_path / "data", download=False)
    assert (ds.name, ds.source, ds.benchmark.name) == ("Set5", "data-dir", "Set5")
    assert [p.name for p in ds.images] == ["a.png", "b.png"]  # sorted; the TSV is not an image


def test_data_dir_accepts_the_alias_folder(tmp_path, home):
    make_folder(tmp_path / "data" / "BSD100")
    ds = resolve_dataset("B100", tmp_path / "data", download=False)
    assert (ds.name, ds.root.name) == ("B100", "BSD100")


def test_cache_is_used_when_the_data_dir_lacks_it(tmp_path, home):
    (tmp_path / "data").mkdir()
    make_folder(home / "datasets" / "Set14")
    ds = resolve_dataset("Set14", tmp_path / "data", download=False)
    assert (ds.source, ds.root) == ("cache", home / "datasets" / "Set14")


def test_not_found_without_download_is_an_error(tmp_path, home):
    with pytest.raises(DatasetError, match="downloads are off"):
        resolve_dataset("Urban100", tmp_path, download=False)


def test_a_folder_is_a_custom_dataset(tmp_path):
    folder = make_folder(tmp_path / "mine")
    ds = resolve_dataset(str(folder))
    assert (ds.name, ds.source, ds.benchmark) == ("mine", "folder", None)
    assert len(ds.images) == 2


def test_missing_empty_and_imageless_folders_are_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        resolve_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        resolve_dataset(str(tmp_path / "empty"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x")
    (tmp_path / "docs" / ".hidden.png").write_bytes(png_bytes(0))
    with pytest.raises(DatasetError, match="no images"):
        list_images(tmp_path / "docs")


@needs_datasets("Set14")
def test_shared_datasets_resolve_by_name():
    ds = resolve_dataset("Set14", datasets_root(), download=False)
    assert len(ds.images) == 14 and ds.images[0].name == "baboon.png"


# ----------------------------------------------------------------------------------------------------- hub


def test_download_from_the_hub_then_the_cache(tmp_path, home, hub):
    hub.add_file("eugenesiow/Set5", "data/Set5_HR.tar.gz", set5_archive(), repo_type="dataset")
    messages = []
    ds = resolve_dataset("Set5", on_download=messages.append)
    assert ds.source == "hub" and ds.root == home / "datasets" / "Set5"
    assert [p.name for p in ds.images] == ["baby.png", "bird.png"]
    assert "eugenesiow/Set5" in messages[0]
    assert leftovers(home / "datasets") == ["Set5"]  # the temporary folder and the archive are gone
    assert (tmp_path / "hf").exists() is False or not any((tmp_path / "hf").rglob("*.tar.gz"))
    requests = len(hub.file_requests)
    again = resolve_dataset("Set5")
    assert again.source == "cache" and len(hub.file_requests) == requests


def test_b100_downloads_from_the_bsd100_repo(home, hub):
    archive = tar_gz({"BSD100_HR/3096.png": png_bytes(3)})
    hub.add_file("eugenesiow/BSD100", "data/BSD100_HR.tar.gz", archive, repo_type="dataset")
    ds = resolve_dataset("BSD100")
    assert ds.name == "B100" and ds.root == home / "datasets" / "B100"


def test_missing_repo_is_an_error_and_leaves_nothing(home, hub):
    with pytest.raises(DatasetError, match="download failed"):
        resolve_dataset("Urban100")
    assert leftovers(home / "datasets") == []


@pytest.mark.parametrize(
    "archive, message",
    [
        (b"this is not a tar archive at all", "corrupt or truncated"),
        (set5_archive()[:-40], "corrupt or truncated"),
        (tar_gz({"Set5_HR/../../evil.png": png_bytes(0)}), "outside the target"),
        (tar_gz({"Set5_HR/a.png": png_bytes(0)}, {"Set5_HR/b.png": (tarfile.SYMTYPE, "/etc/passwd")}), "is a link"),
        (tar_gz({"Set5_HR/notes.txt": b"no images"}), "holds no images"),
    ],
    ids=["garbage", "truncated", "dotdot", "symlink", "no-images"],
)
def test_bad_archives_from_the_hub_leave_no_dataset(home, hub, archive, message):
    hub.add_file("eugenesiow/Set5", "data/Set5_HR.tar.gz", archive, repo_type="dataset")
    with pytest.raises(ArchiveError, match=message) as error:
        resolve_dataset("Set5")
    # The message names what was downloaded, not the temporary file that no longer exists.
    assert str(error.value).startswith("Set5: the archive data/Set5_HR.tar.gz downloaded from eugenesiow/Set5")
    assert ".partial" not in str(error.value)
    assert leftovers(home / "datasets") == []
    assert not (home.parent / "evil.png").exists()


# ------------------------------------------------------------------------------------------ safe extraction


@pytest.mark.parametrize(
    "members, links, message",
    [
        ({"../evil.png": b"x"}, None, "outside the target"),
        ({"/tmp/evil.png": b"x"}, None, "outside the target"),
        ({"ok/a.png": b"x"}, {"ok/link.png": (tarfile.SYMTYPE, "../../outside.png")}, "is a link"),
        ({"ok/a.png": b"x"}, {"ok/hard.png": (tarfile.LNKTYPE, "ok/a.png")}, "is a link"),
        ({"ok/a.png": b"x"}, {"ok/fifo": (tarfile.FIFOTYPE, "")}, "not a regular file"),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink", "fifo"],
)
def test_extract_refuses_unsafe_members_before_writing(tmp_path, members, links, message):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(tar_gz(members, links))
    dest = tmp_path / "work" / "out"
    with pytest.raises(ArchiveError, match=message):
        extract_archive(archive, dest, "ok")
    assert not dest.exists()
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "outside.png").exists()


def test_extract_finds_the_image_folder(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz({"Set5_HR/x.png": png_bytes(0), "Set5_HR/sub/y.png": png_bytes(1)}))
    folder = extract_archive(archive, tmp_path / "out", "Set5_HR")
    assert folder == tmp_path / "out" / "Set5_HR"
    archive.write_bytes(tar_gz({"x.png": png_bytes(0)}))  # images at the top level
    assert extract_archive(archive, tmp_path / "out2", "Set5_HR") == tmp_path / "out2"


# --------------------------------------------------------------------------------------------- load_image


def test_load_image_modes(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    t = load_image(tmp_path / "g.png")
    assert t.shape == (1, 9, 7) and t.dtype == torch.float32
    assert torch.equal((t[0] * 255).round().to(torch.uint8), torch.from_numpy(grey))

    rgba = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    assert load_image(tmp_path / "c.png").shape == (3, 5, 6)

    deep = (rng.integers(0, 65536, (4, 4))).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    levels = load_image(tmp_path / "d.png") * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # rounded to 8-bit levels


def test_load_image_reports_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"bad\.png: not an image"):
        load_image(tmp_path / "bad.png")


def test_drcn_home_follows_the_environment_then_the_systems_cache_folder(monkeypatch, tmp_path):
    import platformdirs

    from drcn_cli.bench.datasets import dataset_cache_dir, drcn_home

    monkeypatch.setenv("DRCN_HOME", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert drcn_home() == tmp_path / "mine" and dataset_cache_dir() == tmp_path / "mine" / "datasets"
    monkeypatch.delenv("DRCN_HOME")
    assert drcn_home() == tmp_path / "xdg" / "drcn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert drcn_home() == Path.home() / ".cache" / "drcn"  # what platformdirs says on Linux
    # Elsewhere, the folder is the one platformdirs names for the system (macOS: ~/Library/Caches/drcn).
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda name, appauthor=None: f"/Users/u/Library/Caches/{name}")
    assert drcn_home() == Path("/Users/u/Library/Caches/drcn")


def test_drcn_home_that_is_a_file_is_named_before_a_download_is_announced(tmp_path, monkeypatch, hub):
    blocker = tmp_path / "home-file"
    blocker.write_text("a file")
    monkeypatch.setenv("DRCN_HOME", str(blocker))
    hub.add_file("eugenesiow/Set5", "data/Set5_HR.tar.gz", set5_archive(), repo_type="dataset")
    told: list[str] = []
    with pytest.raises(DatasetError) as raised:
        resolve_dataset("Set5", on_download=told.append)
    message = str(raised.value)
    assert message.startswith(f"Set5: cannot download: the dataset cache {blocker / 'datasets'} cannot be a folder: "
                              f"{blocker} is a file, not a folder (set by DRCN_HOME={blocker})")  # fmt: skip
    assert "Errno" not in message and told == [] and hub.file_requests == []
    assert blocker.read_text() == "a file"
    monkeypatch.delenv("DRCN_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.raises(DatasetError, match=rf"\(set by XDG_CACHE_HOME={blocker}\)"):
        resolve_dataset("Set5", on_download=told.append)
    assert told == []


def test_an_unreachable_hub_fails_at_once_naming_the_source_and_leaves_nothing(home, tmp_path, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nothing listens on once closed: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    point_client_at(monkeypatch, f"http://127.0.0.1:{port}", cache_dir=tmp_path / "hf")
    slept = skip_retry_sleeps(monkeypatch)
    told: list[str] = []
    with pytest.raises(DatasetError) as raised:
        resolve_dataset("B100", on_download=told.append)
    message = str(raised.value)
    assert f"cannot reach the hub at http://127.0.0.1:{port}: connection refused" in message
    assert "data/BSD100_HR.tar.gz from the hub dataset eugenesiow/BSD100" in message
    assert "--data-dir DIR with the HR images in DIR/B100/ (or DIR/BSD100_HR/" in message
    assert told == [] and slept == [] and leftovers(home / "datasets") == []

"""drcn_cli.atomic: the one file writer. Only regular files are replaced, an existing file only when asked, the
temporary file is short-named, hidden, fsync'ed, of the umask's permissions, and never outlives the call."""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
from pathlib import Path

import pytest

from drcn_cli import atomic, imageio
from drcn_cli.atomic import NotRegularFileError, OutputExistsError, WriteError, write_atomic
from drcn_cli.errors import EXIT_FAILURE, DrcnError

TEMPORARY = re.compile(r"\.drcn-[0-9a-f]{8}\.tmp")


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def identity(path: Path) -> tuple[int, int, int, int]:
    """What must not change about a node drcn refuses to replace."""
    st = os.lstat(path)
    return st.st_mode, st.st_ino, st.st_rdev, st.st_size


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_socket(path: Path):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    return server


def make_folder(path: Path) -> None:
    path.mkdir()
    (path / "inside.txt").write_text("kept")


def make_link_to_file(path: Path) -> None:
    (path.parent / "target.txt").write_text("the link's target")
    path.symlink_to(path.parent / "target.txt")


def make_link_to_null(path: Path) -> None:
    path.symlink_to("/dev/null")


def make_link_to_stdout(path: Path) -> None:
    path.symlink_to("/proc/self/fd/1")


def make_dangling_link(path: Path) -> None:
    path.symlink_to(path.parent / "nowhere")


def make_char_device(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers


NODES = {
    "fifo": (make_fifo, "a FIFO"),
    "socket": (make_socket, "a socket"),
    "folder": (make_folder, "a folder"),
    "link-to-file": (make_link_to_file, "a symbolic link (to "),
    "link-to-null": (make_link_to_null, "a symbolic link (to /dev/null)"),
    "link-to-stdout": (make_link_to_stdout, "a symbolic link (to /proc/self/fd/1)"),
    "dangling-link": (make_dangling_link, "a symbolic link (to "),
    "char-device": (make_char_device, "a character device"),
}


@pytest.fixture(params=sorted(NODES))
def node(request, tmp_path):
    """(path, what the error calls it) of a non-regular file standing where the output goes."""
    make, kind = NODES[request.param]
    path = tmp_path / "out.json"
    kept = make(path)
    yield path, kind
    if kept is not None:
        kept.close()


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("as_callback", [False, True])
def test_only_a_regular_file_is_ever_replaced(node, overwrite, as_callback):
    path, kind = node
    before = identity(path)
    called = []
    data = (lambda tmp: called.append(tmp)) if as_callback else b'{"a": 1}\n'
    with pytest.raises(NotRegularFileError) as raised:
        write_atomic(path, data, overwrite=overwrite)
    message = str(raised.value)
    assert message.startswith(f"{path} is {kind}") and "drcn replaces only regular files" in message
    assert "\n" not in message
    assert identity(path) == before  # the same node, untouched: still a FIFO, a device, a link ...
    assert called == []  # refused before any work
    assert temporaries(path.parent) == []
    if kind == "a folder":
        assert (path / "inside.txt").read_text() == "kept"
    if (path.parent / "target.txt").exists():  # a link is not followed either
        assert (path.parent / "target.txt").read_text() == "the link's target"
    assert not (path.parent / "nowhere").exists()


def test_the_error_is_a_drcn_error_of_exit_code_1_and_an_os_error():
    for error in (NotRegularFileError, OutputExistsError, WriteError):
        assert issubclass(error, DrcnError) and issubclass(error, OSError)
        assert error("x").exit_code == EXIT_FAILURE
    # The names the image module has always had are the writer's own classes.
    assert imageio.OutputExistsError is OutputExistsError and imageio.ImageWriteError is WriteError
    assert imageio.NotRegularFileError is NotRegularFileError


def test_a_stream_hint_for_fifos_none_for_folders(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "dir").mkdir()
    with pytest.raises(NotRegularFileError, match=r"is a FIFO: drcn replaces only regular files \(use - for a"):
        write_atomic(tmp_path / "pipe", b"x", overwrite=True)
    with pytest.raises(NotRegularFileError, match=r"is a folder: drcn replaces only regular files$"):
        write_atomic(tmp_path / "dir", b"x", overwrite=True)


@pytest.mark.parametrize("make", [make_fifo, make_link_to_null, make_folder], ids=["fifo", "link", "folder"])
def test_a_node_that_appears_while_writing_is_not_replaced(tmp_path, make):
    path = tmp_path / "out.bin"

    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"new")
        make(path)  # another process, between the first check and the publication

    with pytest.raises(NotRegularFileError):
        write_atomic(path, writer, overwrite=True)
    assert not stat.S_ISREG(os.lstat(path).st_mode)
    assert temporaries(tmp_path) == []


def test_overwrite_replaces_a_regular_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_bytes(b"old")
    assert write_atomic(path, b"new content", overwrite=True) == len(b"new content")
    assert path.read_bytes() == b"new content" and temporaries(tmp_path) == []

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(b"from a callback")

    assert write_atomic(path, writer, overwrite=True) == len(b"from a callback")
    assert path.read_bytes() == b"from a callback" and temporaries(tmp_path) == []


def test_without_overwrite_an_existing_file_is_refused(tmp_path):
    path = tmp_path / "out.json"
    path.write_bytes(b"old")
    called = []
    with pytest.raises(OutputExistsError, match="exists"):
        write_atomic(path, lambda tmp: called.append(tmp), overwrite=False)
    assert path.read_bytes() == b"old" and called == [] and temporaries(tmp_path) == []
    assert write_atomic(tmp_path / "new.json", b"{}", overwrite=False) == 2
    assert (tmp_path / "new.json").read_bytes() == b"{}"


@pytest.mark.parametrize("hard_links", [True, False])
def test_without_overwrite_a_file_that_appears_meanwhile_is_kept(tmp_path, monkeypatch, hard_links):
    if not hard_links:
        def no_links(src, dst):
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(atomic.os, "link", no_links)
    path = tmp_path / "out.json"

    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"mine")
        path.write_bytes(b"the other process's")  # appears while this one is being written

    with pytest.raises(OutputExistsError, match="appeared meanwhile"):
        write_atomic(path, writer, overwrite=False)
    assert path.read_bytes() == b"the other process's" and temporaries(tmp_path) == []
    assert write_atomic(tmp_path / "free.json", b"ok", overwrite=False) == 2  # the fallback publishes too
    assert (tmp_path / "free.json").read_bytes() == b"ok" and temporaries(tmp_path) == []


def test_the_link_itself_refuses_a_file_created_after_the_last_check(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    real_link = os.link

    def racing_link(src, dst):
        Path(dst).write_bytes(b"won the race")  # after the check right before publishing
        return real_link(src, dst)

    monkeypatch.setattr(atomic.os, "link", racing_link)
    with pytest.raises(OutputExistsError, match="appeared meanwhile"):
        write_atomic(path, b"mine", overwrite=False)
    assert path.read_bytes() == b"won the race" and temporaries(tmp_path) == []


def test_the_temporary_is_hidden_short_beside_the_destination_and_fsynced_before_publishing(tmp_path, monkeypatch):
    path = tmp_path / "sub" / ("n" * 200 + ".json")
    seen = []

    def writer(tmp: Path) -> None:
        seen.append(tmp)
        assert stat.S_ISREG(os.lstat(tmp).st_mode) and tmp.stat().st_size == 0
        tmp.write_bytes(b"data")

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.fstat(fd).st_size)
        assert not path.exists()  # synced before it has its name
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    assert write_atomic(path, writer, overwrite=False) == 4
    (tmp,) = seen
    assert tmp.parent == path.parent and TEMPORARY.fullmatch(tmp.name)
    assert synced == [4] and path.read_bytes() == b"data" and not tmp.exists()


def test_a_name_of_255_bytes_works_and_256_is_one_error(tmp_path):
    longest = tmp_path / ("x" * 250 + ".json")
    assert len(longest.name.encode()) == 255
    assert write_atomic(longest, b"{}", overwrite=False) == 2
    assert longest.read_bytes() == b"{}"
    assert write_atomic(longest, lambda tmp: tmp.write_bytes(b"[]"), overwrite=True) == 2
    too_long = tmp_path / ("y" * 251 + ".json")
    with pytest.raises(WriteError) as raised:
        write_atomic(too_long, b"{}", overwrite=False)
    assert isinstance(raised.value, DrcnError)
    assert str(raised.value) == f"cannot write {too_long}: file name too long for the file system"
    assert sorted(p.name for p in tmp_path.iterdir()) == [longest.name]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit, ValueError])
def test_any_exception_of_the_callback_leaves_nothing(tmp_path, interrupt):
    path = tmp_path / "out.bin"

    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise interrupt("stop")

    with pytest.raises(interrupt):  # passed on as it is
        write_atomic(path, writer, overwrite=True)
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"old")
    with pytest.raises(interrupt):
        write_atomic(path, writer, overwrite=True)
    assert path.read_bytes() == b"old" and temporaries(tmp_path) == []


def test_an_interrupt_while_publishing_leaves_nothing_partial(tmp_path, monkeypatch):
    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "out.bin", b"data", overwrite=True)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def no_space(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "write", no_space)
    with pytest.raises(WriteError, match=r"^cannot write .*out\.bin: disk full$"):
        write_atomic(tmp_path / "out.bin", b"data", overwrite=True)
    assert list(tmp_path.iterdir()) == []


def test_a_writer_that_swaps_the_temporary_is_refused(tmp_path):
    def swaps(tmp: Path) -> None:
        other = tmp.with_name("other")
        other.write_bytes(b"x")
        os.replace(other, tmp)  # as safetensors' save_file does: its own private file renamed into place

    with pytest.raises(WriteError, match="replaced its temporary file"):
        write_atomic(tmp_path / "out.bin", swaps, overwrite=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_permissions_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_atomic(tmp_path / "a.bin", b"data", overwrite=False)
        write_atomic(tmp_path / "b.bin", lambda tmp: tmp.write_bytes(b"data"), overwrite=False)
        (tmp_path / "c.bin").write_bytes(b"old")
        os.chmod(tmp_path / "c.bin", 0o600)
        write_atomic(tmp_path / "c.bin", b"data", overwrite=True)  # a new file: not the old one's mode
    finally:
        os.umask(previous)
    for name in ("a.bin", "b.bin", "c.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def test_missing_folders_are_created_and_a_file_in_their_way_is_reported(tmp_path):
    assert write_atomic(tmp_path / "a" / "b" / "out.bin", b"1", overwrite=False) == 1
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match="a file is in the way"):
        write_atomic(tmp_path / "file" / "out.bin", b"1", overwrite=False)

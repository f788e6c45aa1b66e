"""drcn_cli.io.atomic: the one file writer. Only regular files are replaced, an existing file only when asked, the
temporary file is short-named, hidden, fsync'ed, of the umask's permissions, and never outlives the call."""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
from pathlib import Path

import pytest

from drcn_cli.errors import EXIT_FAILURE, DrcnError
from drcn_cli.io import atomic, formats
from drcn_cli.io.atomic import NotRegularFileError, OutputExistsError, WriteError, write_atomic

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
    # The name the image modules have always had is the writer's own class.
    assert formats.ImageWriteError is WriteError


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


# ------------------------------------------------------------------------------ links that lead nowhere, leftovers


def test_a_link_is_named_with_where_it_leads_and_a_stream_hint_only_for_streams(tmp_path):
    (tmp_path / "file.txt").write_text("kept")
    links = {
        "dangling": ("nowhere/x.png", "(to nowhere/x.png, which does not exist): drcn replaces only regular files"),
        "through-a-file": ("file.txt/x.png", "(to file.txt/x.png, which cannot exist: a file is in the way of its "
                           "folder): drcn replaces only regular files"),
        "loop": ("loop", "(to loop, a loop of links that leads nowhere): drcn replaces only regular files"),
        "to-a-file": ("file.txt", "(to file.txt): drcn replaces only regular files"),
        "to-null": ("/dev/null", "(to /dev/null): drcn replaces only regular files (use - for a stream)"),
    }
    for name, (target, said) in links.items():
        link = tmp_path / name if name != "loop" else tmp_path / "loop"
        link.symlink_to(target)
        expected = f"{link} is a symbolic link {said}"
        assert atomic.non_regular_reason(link) == expected  # what a planner says before any work ...
        for overwrite in (False, True):
            with pytest.raises(NotRegularFileError) as raised:  # ... is what the writer says
                write_atomic(link, b"new", overwrite=overwrite)
            assert str(raised.value) == expected
            assert "meanwhile" not in str(raised.value)
        assert os.readlink(link) == target  # untouched
    assert (tmp_path / "file.txt").read_text() == "kept" and not (tmp_path / "nowhere").exists()
    assert atomic.non_regular_reason(tmp_path / "file.txt") is None
    assert atomic.non_regular_reason(tmp_path / "missing.png") is None
    assert atomic.non_regular_reason(tmp_path / ("n" * 300)) is None  # a name too long is another error


def test_folder_problem_names_what_stands_in_the_way(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert atomic.folder_problem(tmp_path / "new" / "deeper") is None
    assert atomic.folder_problem(tmp_path) is None
    assert atomic.folder_problem(tmp_path / "file" / "hub") == f"{tmp_path / 'file'} is a file, not a folder"
    assert atomic.folder_problem(tmp_path / "file") == f"{tmp_path / 'file'} is a file, not a folder"
    assert atomic.folder_problem(tmp_path / "dangling" / "hub") == (
        f"{tmp_path / 'dangling'} is a symbolic link (to {tmp_path / 'nowhere'}, which does not exist), where a "
        "folder should be"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "file"]  # nothing created


_HOLDER = r"""
import os, sys, time
from pathlib import Path
from drcn_cli.io.atomic import write_atomic

def writer(tmp):
    with open(tmp, "wb") as f:
        f.write(b"\x89PNG" + os.urandom(4 << 20))  # a large image, half written
        f.flush()
        print(tmp.name, flush=True)
        time.sleep(600)

write_atomic(Path(sys.argv[1]) / "big.png", writer, overwrite=False)
"""


def _start_writer(folder: Path):
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    name = process.stdout.readline().strip()
    assert TEMPORARY.fullmatch(name), name
    return process, folder / name


@pytest.mark.skipif(atomic.fcntl is None or not os.path.isdir("/proc/self/fd"), reason="flock and /proc (Linux)")
def test_a_later_run_removes_the_temporaries_of_killed_writers_and_nothing_else(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "out"
    folder.mkdir()
    killed, killed_tmp = _start_writer(folder)
    live, live_tmp = _start_writer(folder)
    killed.send_signal(signal.SIGKILL)  # as the OOM killer or a power cut: no clean-up of its own
    killed.wait()
    assert killed_tmp.exists() and live_tmp.exists()
    # What must stay: names of other patterns, a folder and a link named like a temporary, and a temporary that a
    # live process holds open without a lock (an older drcn, a viewer).
    kept = {".drcn-zzzzzzzz.tmp", ".drcn-0123abcd.tmp.keep", "drcn-0123abcd.tmp", ".drcn-0123abcd.TMP",
            ".drcn-0123abcde.tmp", "photo.png"}
    for name in kept:
        (folder / name).write_bytes(b"mine")
    (folder / ".drcn-aaaaaaaa.tmp").mkdir()
    (folder / ".drcn-bbbbbbbb.tmp").symlink_to(folder / "photo.png")
    held = folder / ".drcn-cccccccc.tmp"
    held.write_bytes(b"open elsewhere")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; f = open(sys.argv[1], 'rb'); "
                               "print('open', flush=True); time.sleep(600)", str(held)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "open"
    time.sleep(0.05)  # every leftover strictly older than the later run
    try:
        later = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; from drcn_cli.io.atomic import write_atomic; "
             "write_atomic(Path(sys.argv[1]) / 'new.png', b'png', overwrite=False)", str(folder)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert later.returncode == 0, later.stderr
        assert not killed_tmp.exists()  # the killed writer's leftover is gone ...
        assert live_tmp.exists() and held.exists()  # ... the live writer's and the one held open are not
        left = {p.name for p in folder.iterdir()}
        assert left == kept | {live_tmp.name, held.name, ".drcn-aaaaaaaa.tmp", ".drcn-bbbbbbbb.tmp", "new.png"}
        assert (folder / "photo.png").read_bytes() == b"mine" and (folder / ".drcn-bbbbbbbb.tmp").is_symlink()
    finally:
        for process in (live, holder):
            process.kill()
            process.wait()
            process.stdout.close()
        killed.stdout.close()


@pytest.mark.skipif(atomic.fcntl is None, reason="flock")
def test_only_temporaries_older_than_the_run_and_unlocked_are_stale(tmp_path):
    import fcntl
    import time

    old, new, locked = (tmp_path / f".drcn-{n}.tmp" for n in ("00000001", "00000002", "00000003"))
    for path in (old, new, locked):
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    os.utime(locked, (time.time() - 3600, time.time() - 3600))
    started = time.time() - 60  # `new` was written after this run began: another run's, maybe not yet locked
    with open(locked, "rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live writer holds its temporary
        assert atomic.remove_stale_temporaries(tmp_path, before=started) == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == [new.name, locked.name]
    assert atomic.remove_stale_temporaries(tmp_path / "missing") == []


def test_the_writer_holds_its_temporary_locked_until_it_is_published(tmp_path):
    seen = []

    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"data")
        seen.append(atomic.remove_stale_temporaries(tmp_path, before=float("inf")))  # a sweep meanwhile

    assert write_atomic(tmp_path / "out.bin", writer, overwrite=False) == 4
    assert seen == [[]] and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]

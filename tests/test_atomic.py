"""Atomic writes: a failed write leaves the previous file untouched and no
temporary file behind; a successful one has ordinary permissions.  Writes
respect the target (issue 24): a symlink is written through, a FIFO, a
device or /dev/stdout written in place, a folder or socket refused; what a
killed writer left is removed by the next write of the name, never while
its writer runs; a folder built by atomic_folder appears whole or not at all."""

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fault_points import CHILD_ENV, kill, start_until_ready
from misc.data import safe_pickle
from misc.data.atomic import WriteError, atomic_folder, atomic_open, check_writable, write_text
from misc.data.images import save_image


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "notes.txt"
    write_text("first version\n", str(path))
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_open(str(path), "w", encoding="utf-8") as f:
            f.write("half of the second ver")
            raise RuntimeError("disk full")
    assert path.read_text() == "first version\n"
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_permissions_are_those_of_a_plain_open(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    write_text("x", str(tmp_path / "atomic.txt"))
    # A temporary file alone would be 0600 whatever the umask.
    assert stat.S_IMODE(os.stat(tmp_path / "atomic.txt").st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


def test_writers_round_trip_and_create_folders(tmp_path):
    array = np.arange(64 * 48 * 3, dtype=np.uint8).reshape(64, 48, 3)
    save_image(array, str(tmp_path / "a" / "b" / "sheet.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "b" / "sheet.png")), array)
    save_image(array, str(tmp_path / "sheet.jpg"))
    assert Image.open(tmp_path / "sheet.jpg").format == "JPEG"
    safe_pickle.dump({"k": [1, 2]}, str(tmp_path / "c" / "x.pickle"))
    assert safe_pickle.load(str(tmp_path / "c" / "x.pickle")) == {"k": [1, 2]}
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


# -- outputs that are not plain files (issue 24) -------------------------------------

def test_a_symlink_is_written_through_and_kept(tmp_path):
    target = tmp_path / "real" / "result.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_text("new", str(link))
    assert link.is_symlink() and os.readlink(link) == str(target) and target.read_text() == "new"
    dangling = tmp_path / "dangling.json"  # a link to a file not written yet: the file is made
    dangling.symlink_to(tmp_path / "real" / "made.json")
    write_text("made", str(dangling))
    assert dangling.is_symlink() and (tmp_path / "real" / "made.json").read_text() == "made"
    loop = tmp_path / "loop.json"
    loop.symlink_to(tmp_path / "loop2.json")
    (tmp_path / "loop2.json").symlink_to(loop)
    with pytest.raises(WriteError, match="a loop of symbolic links"):
        write_text("x", str(loop))
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["made.json", "result.json"]


def test_folders_sockets_and_bad_parents_are_refused_before_anything_is_written(tmp_path):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "s.sock"))
    (tmp_path / "a_file").write_text("x")
    cases = [(str(tmp_path), "is a folder"), (str(tmp_path / "s.sock"), "is a socket"),
             (str(tmp_path / "a_file" / "out.json"), "is not a folder"), ("", "no file name")]
    try:
        for path, message in cases:
            with pytest.raises(WriteError, match=message):
                check_writable(path, "--json")
            with pytest.raises(WriteError, match=message):
                write_text("x", path)
    finally:
        server.close()
    assert sorted(os.listdir(tmp_path)) == ["a_file", "s.sock"]


def test_a_fifo_is_written_in_place_or_refused_without_waiting(tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(WriteError, match="nothing reads from this FIFO"):
        write_text("nobody listens", str(fifo))
    assert time.monotonic() - started < 5
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:  # cat opens the FIFO soon after it starts
            try:
                write_text("through the fifo\n", str(fifo))
                break
            except WriteError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        received = reader.communicate(timeout=30)[0]
    assert received == b"through the fifo\n" and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    write_text("discarded", "/dev/null")
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


WRITE_TO = """
import sys
from misc.data.atomic import write_text
print("printed first", flush=True)
write_text("written through the descriptor\\n", sys.argv[1])
"""


def test_dev_stdout_reaches_the_process_output_and_is_never_replaced(tmp_path):
    piped = subprocess.run([sys.executable, "-c", WRITE_TO, "/dev/stdout"], capture_output=True, text=True,
                           env=CHILD_ENV, timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == "printed first\nwritten through the descriptor\n"
    out = tmp_path / "out.txt"  # standard output redirected to a file: appended, same file
    with open(out, "w") as f:
        inode = os.fstat(f.fileno()).st_ino
        done = subprocess.run([sys.executable, "-c", WRITE_TO, "/dev/fd/1"], stdout=f, env=CHILD_ENV,
                              timeout=60)
    assert done.returncode == 0
    assert out.read_text() == "printed first\nwritten through the descriptor\n"
    assert os.stat(out).st_ino == inode and os.listdir(tmp_path) == ["out.txt"]


HANG_WHILE_WRITING = """
import os, sys, time
from misc.data.atomic import atomic_open
with atomic_open(sys.argv[1], "w") as f:
    f.write("half of a new vers")
    f.flush()
    open(sys.argv[2], "w").close()
    time.sleep(600)
"""


def start_hanging_writer(path, ready):
    return start_until_ready([sys.executable, "-c", HANG_WHILE_WRITING, str(path), str(ready)], ready)


def temporaries(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith(".tmp-"))


def test_a_killed_writer_leaves_a_temporary_that_the_next_write_of_the_name_removes(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("complete old version")
    live = start_hanging_writer(path, tmp_path / "live.ready")
    try:
        # a writer that still runs: its temporary is left alone
        write_text("another writer", str(path))
        assert len(temporaries(tmp_path)) == 1 and path.read_text() == "another writer"
    finally:
        kill(live)
    (leftover,) = temporaries(tmp_path)
    assert leftover.endswith("-result.json") and (tmp_path / leftover).read_text() == "half of a new vers"
    assert path.read_text() == "another writer"
    write_text("next version", str(path))
    assert temporaries(tmp_path) == [] and path.read_text() == "next version"


def test_a_folder_appears_complete_or_not_at_all(tmp_path):
    out = tmp_path / "converted"
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(str(out)) as building:
            (Path(building) / "part.bin").write_bytes(b"x")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
    with atomic_folder(str(out)) as building:
        (Path(building) / "part.bin").write_bytes(b"x")
        assert not out.exists()
    assert os.listdir(out) == ["part.bin"] and os.listdir(tmp_path) == ["converted"]
    with pytest.raises(WriteError, match="exists and is not empty"):
        with atomic_folder(str(out)):
            pass
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_folder(str(empty)) as building:
        (Path(building) / "a").write_text("a")
    assert os.listdir(empty) == ["a"]
    stale = tmp_path / ".tmp-abcd1234-again"  # what a killed conversion leaves
    stale.mkdir()
    (stale / "half.h5").write_bytes(b"partial")
    with atomic_folder(str(tmp_path / "again")):
        pass
    assert sorted(os.listdir(tmp_path)) == ["again", "converted", "empty"]

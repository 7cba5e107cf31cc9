"""Atomic writes: a failed write leaves the previous file untouched and no
temporary file behind; a successful one has ordinary permissions."""

import os
import stat

import numpy as np
import pytest
from PIL import Image

from misc import safe_pickle
from misc.atomic import atomic_open, write_text
from misc.image_utils import save_image


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

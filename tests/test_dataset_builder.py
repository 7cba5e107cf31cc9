"""data/build_dataset.py: a folder of captioned pictures to a StackGAN dataset
(misc/data/dataset_builder.py)."""

import glob
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from captioned_folder import write_captioned_folder
from misc.commands import build_dataset
from misc.commands.common import run_main
from misc.config import load_config, load_text_encoder_config
from misc.data import safe_pickle
from misc.data.datasets import caption_file
from misc.data.preprocessing import load_rgb, make_low_resolution, prepare_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "data", "build_dataset.py")
CLASSES = ("red", "green", "blue", "yellow", "purple")


def build(argv, capsys=None):
    """Run the command in-process; returns (exit code, stdout, stderr)."""
    try:
        run_main(build_dataset.main, argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr() if capsys else ("", "")
    return code, out, err


def tree_bytes(folder):
    """{relative path: bytes} of every file below ``folder``."""
    files = {}
    for path in glob.glob(os.path.join(folder, "**"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


@pytest.fixture
def pictures(tmp_path):
    return write_captioned_folder(str(tmp_path / "pics"), classes=CLASSES, per_class=3, size=40)


def test_the_dataset_is_the_reference_layout(pictures, tmp_path, capsys):
    out = str(tmp_path / "data" / "mine")
    code, stdout, _ = build(["--images", pictures, "--out", out, "--test-fraction", "0.4"], capsys)
    assert code == 0
    assert ("15 pictures of 5 classes, 3 captions each: train 9 pictures of 3 classes, test 6 pictures of 2 "
            "classes") in stdout
    lines = open(os.path.join(out, "classes.txt")).read().splitlines()
    classes = dict(line.split("\t")[::-1] for line in lines)
    assert classes == {c: str(i) for i, c in enumerate(sorted(CLASSES), start=1)}
    seen = {}
    for split in ("train", "test"):
        names = safe_pickle.load(os.path.join(out, split, "filenames.pickle"))
        ids = safe_pickle.load(os.path.join(out, split, "class_info.pickle"))
        hr = safe_pickle.load(os.path.join(out, split, "304images.pickle"))
        lr = safe_pickle.load(os.path.join(out, split, "76images.pickle"))
        assert names == sorted(names) and len(names) == len(ids) == len(hr) == len(lr)
        for name, class_id, big, small in zip(names, ids, hr, lr):
            colour = name.split("/")[0]
            assert class_id == int(classes[colour])
            expected = prepare_image(load_rgb(os.path.join(pictures, name + ".png")), 304)
            np.testing.assert_array_equal(big, expected)
            np.testing.assert_array_equal(small, make_low_resolution(expected, 76))
            with open(caption_file(out, name, class_id), "rb") as f:
                written = f.read()
            with open(os.path.join(pictures, name + ".txt"), "rb") as f:
                assert written == f.read()
        seen[split] = {n.split("/")[0] for n in names}
    assert not seen["train"] & seen["test"] and len(seen["test"]) == 2  # whole classes held out
    for stage in ("stageI", "stageII"):
        config = load_config(os.path.join(out, f"{stage}.yml"))
        assert (config.DATASET_NAME, config.DATA_DIR) == ("mine", os.path.dirname(out))
        assert config.TRAIN.BATCH_SIZE == 9
        assert config.GAN.GF_DIM == 128 and config.TRAIN.NUM_EMBEDDING == 4  # the reference birds config
    stage_ii = load_config(os.path.join(out, "stageII.yml"))
    assert stage_ii.TRAIN.PRETRAINED_MODEL == os.path.join("ckt_logs", "mine")
    encoder = load_text_encoder_config(os.path.join(out, "text_encoder.yml"))
    assert (encoder.DATASET_NAME, encoder.TRAIN.BATCH_SIZE) == ("mine", 3)
    assert encoder.TRAIN.LEARNING_RATE == 0.0007
    assert sorted(os.listdir(tmp_path / "data")) == [".mine.lock", "mine"]  # nothing else left beside it


def test_split_by_pictures_labels_file_and_captions_folder(tmp_path, capsys):
    source = write_captioned_folder(str(tmp_path / "src"), classes=("red", "blue"), per_class=3, size=36)
    flat, captions = tmp_path / "flat", tmp_path / "captions"
    flat.mkdir()
    captions.mkdir()
    lines = []
    for path in sorted(glob.glob(os.path.join(source, "*", "*.png"))):
        stem = os.path.basename(path)[:-4]
        os.rename(path, flat / f"{stem}.png")
        os.rename(path[:-4] + ".txt", captions / f"{stem}.txt")
        lines.append(f"{stem}.png\t{'warm colours' if stem.startswith('red') else 'cold colours'}")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "data" / "flat")
    argv = ["--images", str(flat), "--captions", str(captions), "--labels", str(labels), "--out", out,
            "--split", "images", "--test-fraction", "0.3"]
    assert build(argv, capsys)[0] == 0
    for split in ("train", "test"):
        ids = safe_pickle.load(os.path.join(out, split, "class_info.pickle"))
        assert sorted(set(ids)) == [1, 2]  # every class in both splits
    assert open(os.path.join(out, "classes.txt")).read() == "1\tcold colours\n2\twarm colours\n"
    names = safe_pickle.load(os.path.join(out, "test", "filenames.pickle"))
    assert names == ["blue_002", "red_001"]  # drawn from --seed 0
    assert os.path.isfile(os.path.join(out, "text_c10", "blue_002.txt"))


def test_fewer_captions_are_repeated_and_capitals_noted(pictures, tmp_path, capsys):
    with open(os.path.join(pictures, "red", "red_000.txt"), "w") as f:
        f.write("One Red square\n")
    out = str(tmp_path / "data" / "mine")
    code, stdout, _ = build(["--images", pictures, "--out", out], capsys)
    assert code == 0
    assert "1 picture(s) have fewer than 3 captions" in stdout and "1 caption(s) contain capital" in stdout
    assert open(os.path.join(out, "text_c10", "red", "red_000.txt")).read() == "One Red square\n" * 3


def break_picture(pictures, tmp_path):
    with open(os.path.join(pictures, "blue", "blue_001.png"), "r+b") as f:
        f.truncate(120)


def small_bomb_limit(pictures, tmp_path, limit):
    Image.MAX_IMAGE_PIXELS = limit


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


BAD_INPUTS = {
    "picture without captions": (lambda p, t: os.remove(os.path.join(p, "red", "red_001.txt")),
                                 ["red_001.png: has no captions", "red_001.txt is missing"]),
    "captions without a picture": (lambda p, t: write(os.path.join(p, "red", "extra.txt"), b"a red thing\n"),
                                   ["extra.txt: a caption file without a picture"]),
    "unreadable picture": (break_picture, ["blue_001.png: not a readable picture",
                                           "Replace or remove it (and its captions)."]),
    # 40 x 40 pictures: beyond twice the limit Pillow raises, beyond the limit it warns
    "decompression bomb": (lambda p, t: small_bomb_limit(p, t, 700),
                           ["blue_000.png: 1,600 pixels, above Pillow's decompression-bomb limit of 700"]),
    "decompression-bomb warning": (lambda p, t: small_bomb_limit(p, t, 1000),
                                   ["blue_000.png: 1,600 pixels, above Pillow's decompression-bomb limit"
                                    " of 1,000"]),
    "empty caption": (lambda p, t: write(os.path.join(p, "green", "green_002.txt"), b"green\n \nmore\n"),
                      ["green_002.txt: line 2 is an empty caption"]),
    "caption too long": (lambda p, t: write(os.path.join(p, "green", "green_000.txt"), b"ok\n" + b"x" * 202),
                         ["green_000.txt: line 2 is 202 bytes long; the char-CNN-RNN encoder reads 201"]),
    "not UTF-8": (lambda p, t: write(os.path.join(p, "green", "green_000.txt"), b"caf\xe9\n"),
                  ["green_000.txt: not UTF-8 text"]),
    "picture outside a class folder": (
        lambda p, t: Image.new("RGB", (8, 8)).save(os.path.join(p, "loose.png")),
        ["loose.png: not in a class folder"]),
    "two pictures, one name": (
        lambda p, t: Image.new("RGB", (8, 8)).save(os.path.join(p, "red", "red_000.jpg")),
        ["red_000.png: has the same name as", "red_000.jpg but another extension"]),
    "a name the loader misreads": (lambda p, t: os.rename(os.path.join(p, "red"), os.path.join(p, "myjpg")),
                                   ["contains 'jpg/'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_nothing_written(pictures, tmp_path, capsys, monkeypatch, case):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    setup, parts = BAD_INPUTS[case]
    setup(pictures, tmp_path)
    out = tmp_path / "data" / "mine"
    code, stdout, err = build(["--images", pictures, "--out", str(out)], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    for part in parts:
        assert part in err, err
    assert not out.exists()
    if (tmp_path / "data").exists():
        assert os.listdir(tmp_path / "data") == [".mine.lock"]


def test_classes_too_small_for_the_split_and_other_arguments(pictures, tmp_path, capsys):
    os.remove(os.path.join(pictures, "yellow", "yellow_001.png"))
    os.remove(os.path.join(pictures, "yellow", "yellow_001.txt"))
    os.remove(os.path.join(pictures, "yellow", "yellow_002.png"))
    os.remove(os.path.join(pictures, "yellow", "yellow_002.txt"))
    out = str(tmp_path / "data" / "mine")
    cases = [
        (["--split", "images"], [os.path.join(pictures, "yellow") + ": class 'yellow' has 1 picture(s)"]),
        (["--test-fraction", "0.7"], ["5 classes; holding out 4 for the test split leaves fewer than 2"]),
        (["--test-fraction", "1.5"], ["--test-fraction 1.5: give a fraction between 0 and 1"]),
        (["--labels", str(tmp_path / "none.txt")], ["--labels", "none.txt: not found"]),
    ]
    for argv, parts in cases:
        code, _, err = build(["--images", pictures, "--out", out] + argv, capsys)
        assert code == 2 and err.count("\n") == 1 and all(p in err for p in parts), err
        assert not os.path.exists(out)
    inside = os.path.join(pictures, "data")
    code, _, err = build(["--images", pictures, "--out", inside], capsys)
    assert code == 2 and "must not be the images folder, inside it" in err and not os.path.exists(inside)


def test_an_existing_dataset_is_replaced_only_with_force(pictures, tmp_path, capsys):
    out = str(tmp_path / "data" / "mine")
    assert build(["--images", pictures, "--out", out], capsys)[0] == 0
    first = tree_bytes(out)
    code, _, err = build(["--images", pictures, "--out", out, "--seed", "1"], capsys)
    assert code == 2 and "exists; give --force to replace it" in err and tree_bytes(out) == first
    assert build(["--images", pictures, "--out", out, "--seed", "1", "--force"], capsys)[0] == 0
    assert tree_bytes(out) != first  # another split
    assert build(["--images", pictures, "--out", out, "--force"], capsys)[0] == 0
    assert tree_bytes(out) == first  # the same input and seed: the same bytes
    assert sorted(os.listdir(tmp_path / "data")) == [".mine.lock", "mine"]


def start(argv, tmp_path):
    return subprocess.Popen([sys.executable, SCRIPT] + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=tmp_path, text=True)


def wait_for_preparation(child):
    """Block until the child starts preparing pictures (all checks passed)."""
    for line in child.stdout:
        if line.startswith("Preparing "):
            return
    raise AssertionError(f"the build ended before preparing pictures: {child.stderr.read()}")


def test_an_interrupted_build_leaves_nothing_and_a_rerun_gives_the_same_bytes(tmp_path, monkeypatch, capsys):
    pictures = write_captioned_folder(str(tmp_path / "pics"), classes=CLASSES, per_class=8, size=600,
                                      suffix=".jpg")
    argv = ["--images", pictures, "--out", os.path.join("data", "mine")]
    reference, work = tmp_path / "reference", tmp_path / "work"
    for folder in (reference, work):
        folder.mkdir()
    monkeypatch.chdir(reference)
    assert build(argv, capsys)[0] == 0  # uninterrupted
    for how in (signal.SIGTERM, signal.SIGKILL):
        child = start(argv, work)
        wait_for_preparation(child)
        child.send_signal(how)
        code = child.wait(timeout=120)
        assert code == (143 if how == signal.SIGTERM else -signal.SIGKILL), child.stderr.read()
        assert os.listdir(work / "data") == [".mine.lock"]  # nothing written
        if how == signal.SIGTERM:
            assert "Stopped by SIGTERM; nothing was written." in child.stdout.read()
    # what a build killed outright while writing leaves: its half-written temporary folder
    (work / "data" / ".mine.building" / "train").mkdir(parents=True)
    (work / "data" / ".mine.building" / "train" / "76images.pickle").write_bytes(b"\x80\x02]q")
    monkeypatch.chdir(work)
    code, out, _ = build(argv, capsys)
    assert code == 0 and "Removed" in out and ".mine.building, left by an interrupted build" in out
    assert tree_bytes(work / "data" / "mine") == tree_bytes(reference / "data" / "mine")
    assert sorted(os.listdir(work / "data")) == [".mine.lock", "mine"]

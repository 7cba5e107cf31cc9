"""Tests for data/generate_shapes.py and misc/evaluation/shapes_attributes.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from misc.data import safe_pickle
from misc.data.preprocessing import resize_bicubic
from misc.data.shapes import (
    BACKGROUNDS,
    COLORS,
    POSITION_OFFSET,
    POSITIONS,
    SHAPES,
    SIZES,
    class_id,
    ensure_dataset,
    generate,
    required_files,
)
from misc.evaluation.shapes_attributes import ALL_ATTRIBUTES, chance_levels, measure, score

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PICKLES = ("76images.pickle", "304images.pickle", "char-CNN-RNN-embeddings.pickle",
           "class_info.pickle", "filenames.pickle")


def quiet(*_args, **_kwargs):
    pass


def load_split(dataset_dir, split):
    data = {name: safe_pickle.load(os.path.join(dataset_dir, split, name)) for name in PICKLES}
    with open(os.path.join(dataset_dir, split, "attributes.json"), encoding="utf-8") as f:
        data["attributes"] = json.load(f)
    return data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny") / "shapes")
    generate(out, num_train=12, num_test=6, seed=0, log=quiet)
    return out


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    """A larger test split for the attribute measurement."""
    out = str(tmp_path_factory.mktemp("eval") / "shapes")
    generate(out, num_train=1, num_test=90, seed=3, log=quiet)
    split = load_split(out, "test")
    return np.stack(split["76images.pickle"]), np.stack(split["304images.pickle"]), split["attributes"]


def test_file_format(tiny):
    filenames_seen = set()
    for split, count in (("train", 12), ("test", 6)):
        data = load_split(tiny, split)
        for size, name in ((76, "76images.pickle"), (304, "304images.pickle")):
            images = data[name]
            assert isinstance(images, list) and len(images) == count
            assert all(im.dtype == np.uint8 and im.shape == (size, size, 3) for im in images)
        emb = data["char-CNN-RNN-embeddings.pickle"]
        assert emb.dtype == np.float32 and emb.shape == (count, 10, 1024)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=2), 32.0, rtol=1e-4)

        filenames, classes, attributes = (data["filenames.pickle"], data["class_info.pickle"],
                                          data["attributes"])
        assert len(filenames) == len(classes) == len(attributes) == count
        assert all(type(c) is int for c in classes)
        for filename, cls, attrs in zip(filenames, classes, attributes):
            assert isinstance(filename, str) and filename not in filenames_seen
            filenames_seen.add(filename)
            assert filename.startswith(f"{attrs['color']}_{attrs['shape']}/shapes_")
            assert cls == class_id(attrs["shape"], attrs["color"])
            assert 0 <= cls < len(SHAPES) * len(COLORS)
            assert set(attrs) == set(ALL_ATTRIBUTES)
            with open(os.path.join(tiny, "text_c10", filename + ".txt"), encoding="utf-8") as f:
                lines = f.read().split("\n")
            captions = lines[:-1]
            assert lines[-1] == "" and len(captions) == 10 and len(set(captions)) == 10
            for caption in captions:
                assert attrs["color"] in caption and attrs["shape"] in caption, caption
            assert sum(attrs["background"] in c for c in captions) >= 7
        # Ten different captions give ten different embeddings.
        assert np.abs(emb[0, 0] - emb[0, 1]).max() > 0.1


def test_pixels_are_exact_palette_colours_and_share_the_real_data_path(tiny):
    data = load_split(tiny, "train")
    for hr, lr, attrs in zip(data["304images.pickle"], data["76images.pickle"], data["attributes"]):
        np.testing.assert_array_equal(lr, resize_bicubic(hr, 76))
        np.testing.assert_array_equal(hr[0, 0], BACKGROUNDS[attrs["background"]])
        dx, dy = POSITIONS[attrs["position"]]
        cx, cy = (int(304 * (0.5 + d * POSITION_OFFSET)) for d in (dx, dy))
        np.testing.assert_array_equal(hr[cy, cx], COLORS[attrs["color"]])
        # Whole object inside the central 256 px crop: its border is background.
        crop = hr[24:280, 24:280]
        for edge in (crop[0], crop[-1], crop[:, 0], crop[:, -1]):
            assert (edge == BACKGROUNDS[attrs["background"]]).all()


def test_same_seed_same_files_other_seed_other_files(tiny, tmp_path):
    again = str(tmp_path / "again")
    generate(again, num_train=12, num_test=6, seed=0, log=quiet)
    for split in ("train", "test"):
        for name in PICKLES + ("attributes.json",):
            with open(os.path.join(tiny, split, name), "rb") as a, \
                    open(os.path.join(again, split, name), "rb") as b:
                assert a.read() == b.read(), (split, name)
    other = str(tmp_path / "other")
    generate(other, num_train=12, num_test=6, seed=1, log=quiet)
    assert load_split(other, "train")["attributes"] != load_split(tiny, "train")["attributes"]


def test_ensure_dataset_generates_only_missing_files(tmp_path):
    messages = []
    path = ensure_dataset(str(tmp_path), num_train=4, num_test=2, log=messages.append)
    assert path == os.path.join(str(tmp_path), "shapes") and len(messages) == 1
    stamps = {p: os.stat(p).st_mtime_ns for p in required_files(path)}
    assert ensure_dataset(str(tmp_path), num_train=4, num_test=2, log=messages.append) == path
    assert len(messages) == 1
    assert stamps == {p: os.stat(p).st_mtime_ns for p in required_files(path)}

    os.remove(os.path.join(path, "test", "filenames.pickle"))  # as if interrupted
    ensure_dataset(str(tmp_path), num_train=4, num_test=2, log=messages.append)
    assert len(messages) == 2
    assert all(os.path.isfile(p) for p in required_files(path))

    # A generation killed mid-write leaves atomic_open's temporaries: removed, nothing else.
    captions = os.path.join(path, "text_c10", sorted(os.listdir(os.path.join(path, "text_c10")))[0])
    leftovers = [os.path.join(path, "train", ".tmp-k3j2_x.pickle"), os.path.join(captions, ".tmp-9a8b.txt")]
    for leftover in leftovers:
        with open(leftover, "wb") as f:
            f.write(b"half a pickle")
    stamps = {p: os.stat(p).st_mtime_ns for p in required_files(path)}
    ensure_dataset(str(tmp_path), num_train=4, num_test=2, log=messages.append)
    assert not any(os.path.exists(p) for p in leftovers)
    assert messages[-1].startswith(f"Removed 2 temporary file(s) left in {path}")
    assert stamps == {p: os.stat(p).st_mtime_ns for p in required_files(path)}  # not regenerated


def test_cli_runs_from_the_repository_root(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, os.path.join("data", "generate_shapes.py"), "--out", str(out),
                             "--num-train", "3", "--num-test", "2", "--seed", "5"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train 3, test 2 images" in result.stdout
    assert len(safe_pickle.load(str(out / "test" / "filenames.pickle"))) == 2


def test_attribute_measurement_scores_real_images_near_perfectly(eval_set):
    lr, hr, truth = eval_set
    views = {"76": lr, "304": hr, "64 crop": lr[:, 6:70, 6:70], "256 crop": hr[:, 24:280, 24:280]}
    for name, images in views.items():
        accuracy = score(measure(images), truth, attributes=ALL_ATTRIBUTES)
        assert min(accuracy.values()) >= 0.95, (name, accuracy)


def test_attribute_measurement_gives_chance_on_noise(eval_set):
    _, _, truth = eval_set
    chance = chance_levels(ALL_ATTRIBUTES)
    assert chance == {"shape": 1 / len(SHAPES), "color": 1 / len(COLORS), "background": 1 / len(BACKGROUNDS),
                      "size": 1 / len(SIZES), "position": 1 / len(POSITIONS)}
    rng = np.random.default_rng(0)
    for size in (64, 76):
        noise = rng.integers(0, 256, size=(len(truth), size, size, 3), dtype=np.uint8)
        accuracy = score(measure(noise), truth, attributes=ALL_ATTRIBUTES)
        for attribute, value in accuracy.items():
            assert value <= chance[attribute] + 0.2, (size, attribute, accuracy)
    # The default scores leave out position (training flips left and right).
    assert set(score(measure(noise[:2]), truth[:2])) == {"shape", "color", "background", "size"}


def test_largest_objects_at_the_extremes_stay_inside_the_training_crops():
    from misc.data.shapes import POSITION_JITTER, SIZE_JITTER, make_images
    for shape in SHAPES:
        for position, (dx, dy) in POSITIONS.items():
            attrs = {"shape": shape, "color": "red", "background": "gray", "size": "large",
                     "position": position}
            push = (POSITION_JITTER * (dx or 1), POSITION_JITTER * (dy or 1))
            hr, lr = make_images(attrs, 1 + SIZE_JITTER, push)
            for image, margin in ((hr, 24), (lr, 6)):
                crop = image[margin:-margin, margin:-margin]
                for edge in (crop[0], crop[-1], crop[:, 0], crop[:, -1]):
                    assert (edge == BACKGROUNDS["gray"]).all(), (shape, position, image.shape)


def test_stage_one_only_dataset_drops_stale_high_resolution_files(tmp_path):
    path = str(tmp_path / "shapes")
    generate(path, num_train=2, num_test=2, seed=0, log=quiet)
    generate(path, num_train=3, num_test=2, seed=0, hr=False, log=quiet)
    assert not os.path.exists(os.path.join(path, "train", "304images.pickle"))
    assert len(safe_pickle.load(os.path.join(path, "train", "76images.pickle"))) == 3
    messages = []
    ensure_dataset(str(tmp_path), hr=False, log=messages.append)
    assert messages == []  # complete for stage I
    ensure_dataset(str(tmp_path), hr=True, num_train=3, num_test=2, log=messages.append)
    assert len(messages) == 1 and os.path.isfile(os.path.join(path, "train", "304images.pickle"))

"""Tests for data/generate_shapes.py and misc/evaluation/shapes_attributes.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from misc.data import safe_pickle, shapes
from misc.data.formats import LR_IMAGE_SIZE, LR_LOAD_SIZE
from misc.data.preprocessing import resize_bicubic
from misc.data.shapes import (
    BACKGROUNDS,
    COLORS,
    LADDER,
    POSITION_JITTER,
    POSITION_OFFSET,
    POSITIONS,
    QUICK_START,
    RECIPES,
    SIZE_JITTER,
    ensure_dataset,
    generate,
    make_images,
    required_files,
)
from misc.evaluation.shapes_attributes import ALL_ATTRIBUTES, EDGE_UNIT_WIDTH, chance_levels, measure, score

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PICKLES = ("76images.pickle", "304images.pickle", "char-CNN-RNN-embeddings.pickle",
           "class_info.pickle", "filenames.pickle")


def quiet(*_args, **_kwargs):
    pass


RECIPE = RECIPES[QUICK_START]
ONE_SIZE = "shapes_l5_background"  # a ladder rung: every shape, colour and background, large, centred
CROP_MARGIN = LR_LOAD_SIZE - LR_IMAGE_SIZE  # training crops start at offsets 0 .. CROP_MARGIN - 1


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


@pytest.fixture(scope="module", params=[QUICK_START, ONE_SIZE])
def eval_set(request, tmp_path_factory):
    """A larger test split of a recipe for the attribute measurement."""
    out = str(tmp_path_factory.mktemp("eval") / request.param)
    recipe = RECIPES[request.param]
    generate(out, num_train=1, num_test=90, seed=3, log=quiet, recipe=recipe)
    split = load_split(out, "test")
    images = (np.stack(split["76images.pickle"]), np.stack(split["304images.pickle"]))
    return (*images, split["attributes"], recipe)


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
            shape, colour = RECIPE.shapes.index(attrs["shape"]), list(COLORS).index(attrs["color"])
            assert cls == shape * len(COLORS) + colour
            assert cls == RECIPE.class_id(attrs) and 0 <= cls < RECIPE.num_classes == 30
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


def test_ensure_dataset_generates_a_ladder_rung_from_its_recipe(tmp_path):
    path = ensure_dataset(str(tmp_path), "shapes_l2_two", hr=False, num_train=8, num_test=2, log=quiet)
    with open(os.path.join(path, "train", "attributes.json"), encoding="utf-8") as f:
        attributes = json.load(f)
    assert {a["shape"] for a in attributes} == {"circle", "square"}
    assert {(a["color"], a["background"], a["size"], a["position"]) for a in attributes} == \
        {("red", "black", "large", "center")}
    assert sorted(set(safe_pickle.load(os.path.join(path, "train", "class_info.pickle")))) == [0, 1]
    with pytest.raises(ValueError, match="unknown bundled dataset 'shapes_l9'"):
        ensure_dataset(str(tmp_path), "shapes_l9", log=quiet)


def test_cli_runs_from_the_repository_root(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, os.path.join("data", "generate_shapes.py"), "--out", str(out),
                             "--num-train", "3", "--num-test", "2", "--seed", "5"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train 3, test 2 images" in result.stdout
    assert len(safe_pickle.load(str(out / "test" / "filenames.pickle"))) == 2


def test_attribute_measurement_scores_real_images_near_perfectly(eval_set):
    lr, hr, truth, recipe = eval_set
    views = {"76": lr, "304": hr, "64 crop": lr[:, 6:70, 6:70], "256 crop": hr[:, 24:280, 24:280]}
    for name, images in views.items():
        accuracy = score(measure(images, recipe), truth, attributes=ALL_ATTRIBUTES)
        assert min(accuracy.values()) >= 0.95, (name, accuracy)


def test_attribute_measurement_gives_chance_on_noise(eval_set):
    _, _, truth, recipe = eval_set
    chance = chance_levels(ALL_ATTRIBUTES, recipe)
    assert chance == {a: 1 / len(recipe.values(a)) for a in ALL_ATTRIBUTES}
    if recipe is RECIPE:
        assert chance == {"shape": 1 / 5, "color": 1 / 6, "background": 1 / 4, "size": 1 / 3,
                          "position": 1 / 5}
    rng = np.random.default_rng(0)
    for size in (64, 76):
        noise = rng.integers(0, 256, size=(len(truth), size, size, 3), dtype=np.uint8)
        accuracy = score(measure(noise, recipe), truth, attributes=ALL_ATTRIBUTES)
        for attribute, value in accuracy.items():
            assert value <= chance[attribute] + 0.2, (size, attribute, accuracy)
    # The default scores leave out position (training flips left and right).
    assert set(score(measure(noise[:2], recipe), truth[:2])) == {"shape", "color", "background", "size"}


def test_edge_width_is_about_a_pixel_and_follows_a_gaussian_blur(eval_set):
    """The 10-90% transition of a step blurred by a Gaussian of standard
    deviation s is 2 * 1.2816 * s wide (the normal quantiles): the measured
    edge width of the real 256 px pictures follows that after a blur."""
    _, hr, _, recipe = eval_set
    large = [k for k, m in enumerate(measure(hr[:, 24:280, 24:280], recipe)) if m["size"] == "large"][:12]
    crops = hr[large, 24:280, 24:280]
    sharp = np.mean([m["edge_width"] for m in measure(crops, recipe)])
    assert 0.3 < sharp < 1.2
    assert EDGE_UNIT_WIDTH == crops.shape[1]
    for sigma in (1.0, 2.0):
        blurred = ndimage.gaussian_filter(crops.astype(np.float32), (0, sigma, sigma, 0))
        blurred = np.clip(np.round(blurred), 0, 255).astype(np.uint8)
        width = np.mean([m["edge_width"] for m in measure(blurred, recipe)])
        assert width == pytest.approx(np.hypot(2 * 1.2816 * sigma, sharp), rel=0.12), sigma


def object_bounds(recipe, shape, position, push):
    """(top, bottom, left, right) of the object pixels of the largest
    ``shape`` of ``recipe`` at ``position``, jitter pushed to its extremes,
    in the 76 px picture."""
    dx, dy = POSITIONS[position]
    attrs = {"shape": shape, "color": recipe.colors[0], "background": recipe.backgrounds[0],
             "size": max(recipe.radii, key=recipe.radii.get), "position": position}
    offset = (POSITION_JITTER * (dx or push[0]), POSITION_JITTER * (dy or push[1]))
    _, lr = make_images(attrs, recipe, 1 + SIZE_JITTER, offset)
    ys, xs = np.nonzero(np.abs(lr.astype(int) - lr[0, 0].astype(int)).max(axis=2) > 127)
    return ys.min(), ys.max(), xs.min(), xs.max()


@pytest.mark.parametrize("name", list(RECIPES))
def test_largest_objects_at_the_extremes_stay_inside_the_centre_crops(name):
    recipe = RECIPES[name]
    margin = CROP_MARGIN // 2
    for shape in recipe.shapes:
        for position in recipe.positions:
            for push in ((-1, -1), (1, 1)):
                top, bottom, left, right = object_bounds(recipe, shape, position, push)
                assert margin <= min(top, left) and max(bottom, right) < margin + LR_IMAGE_SIZE, \
                    (name, shape, position, push)


@pytest.mark.parametrize("name", [n for n, r in LADDER.items() if r.positions == ("center",)])
def test_centred_rungs_keep_the_object_inside_every_training_crop(name):
    """Training crops start at 0 .. CROP_MARGIN - 1 pixels in each direction,
    so the part of a 76 px picture that every crop contains is the square
    from CROP_MARGIN - 1 up to LR_IMAGE_SIZE: a centred object lies inside
    it.  (The quick start's off-centre large objects do not:
    docs/shapes_diagnosis.md.)"""
    recipe = RECIPES[name]
    for shape in recipe.shapes:
        for push in ((-1, -1), (1, 1)):
            top, bottom, left, right = object_bounds(recipe, shape, "center", push)
            assert CROP_MARGIN - 1 <= min(top, left) and max(bottom, right) <= LR_IMAGE_SIZE - 1, \
                (name, shape, push)


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


def test_words_no_bundled_caption_uses_are_named_by_the_demo(capsys):
    """Issue 25: the bundled encoder embeds any word, so a typed word the
    shapes captions never use is drawn as noise; the demo names it."""
    from easydict import EasyDict

    from misc.commands.demo import warn_unknown_words

    rng = np.random.default_rng(0)
    generated = [caption for attrs in shapes.sample_attributes(rng, 60, shapes.RECIPES["shapes"])
                 for caption in shapes.make_captions(attrs, rng)]
    assert not any(shapes.unknown_words(caption) for caption in generated)
    assert {"circle", "purple", "backdrop", "little", "middle"} <= shapes.vocabulary()
    assert shapes.unknown_words("A purple Hexagon on pink, a pink hexagon") == ["hexagon", "pink"]
    captions = ["a small blue circle on a black background", "a purple hexagon on pink"]
    warn_unknown_words(EasyDict(DATASET_NAME="shapes"), captions)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: caption 2 ") and "hexagon, pink;" in lines[0]
    warn_unknown_words(EasyDict(DATASET_NAME="birds"), captions)
    assert capsys.readouterr().out == ""

"""Tests for misc/data/preprocessing.py and the birds/flowers preprocessing scripts,
including their hostile inputs (issue 24)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import hostile_files
from misc.data import safe_pickle
from misc.data.formats import HR_LOAD_SIZE, LR_LOAD_SIZE
from misc.data.preprocessing import bytescale, custom_crop, load_rgb, prepare_image, resize_bicubic

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(name, *args):
    return subprocess.run([sys.executable, "-m", f"misc.commands.{name.removesuffix('.py')}", *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def random_image(rng, height, width):
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------- image ops

def test_custom_crop_follows_the_reference_rule():
    img = np.arange(100 * 120 * 3).reshape(100, 120, 3)
    # centre (50, 30), R = int(40 * 0.75) = 30: rows [0, 60), cols [20, 80)
    np.testing.assert_array_equal(custom_crop(img, [30, 20, 40, 20]), img[0:60, 20:80])
    # centre (115, 84), R = 22, clipped at the bottom and right edges
    np.testing.assert_array_equal(custom_crop(img, [100, 70, 30, 28]), img[62:100, 93:120])
    # odd sums truncate: centre int(61 / 2) = 30, int(45 / 2) = 22, R = int(21 * 0.75) = 15
    np.testing.assert_array_equal(custom_crop(img, [20, 12, 21, 21]), img[7:37, 15:45])


def test_bytescale_stretches_like_scipy_imresize():
    data = np.array([[10.0, 60.0, 110.0], [160.0, 210.0, 35.3]]).reshape(1, 2, 3)
    # (x - 10) * (255 / 200), clipped, + 0.5, truncated.  255 / 200 is just
    # below 1.275 in float64, so 100 * scale + 0.5 truncates to 127, not 128:
    # the reference's own rounding, which the published pickles carry.
    expected = np.array([[0, 64, 127], [191, 255, 32]], dtype=np.uint8).reshape(1, 2, 3)
    out = bytescale(data)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_bytescale_uses_all_channels_jointly_and_handles_flat_images():
    low_contrast = np.full((4, 4, 3), 50, dtype=np.uint8)
    low_contrast[0, 0] = (150, 100, 50)
    out = bytescale(low_contrast)
    # scale 255 / 100 is just below 2.55, so 50 * scale + 0.5 truncates to 127
    np.testing.assert_array_equal(out[0, 0], [255, 127, 0])
    assert out[1:].max() == 0
    full_range = np.array([[[0, 17, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(bytescale(full_range), full_range)
    np.testing.assert_array_equal(bytescale(np.full((2, 2, 3), 7.0)), np.zeros((2, 2, 3)))


def test_prepare_image_is_crop_bytescale_then_pillow_bicubic():
    rng = np.random.default_rng(0)
    img = (random_image(rng, 90, 130) // 2 + 40).astype(np.uint8)  # not full range
    bbox = [40, 20, 50, 30]
    out = prepare_image(img, HR_LOAD_SIZE, bbox)
    crop = bytescale(custom_crop(img, bbox))
    assert crop.min() == 0 and crop.max() == 255
    expected = np.asarray(Image.fromarray(crop).resize((HR_LOAD_SIZE, HR_LOAD_SIZE), Image.BICUBIC))
    assert out.shape == (HR_LOAD_SIZE, HR_LOAD_SIZE, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    low = resize_bicubic(out, LR_LOAD_SIZE)
    assert low.shape == (LR_LOAD_SIZE, LR_LOAD_SIZE, 3) and low.dtype == np.uint8


def test_load_rgb_and_prepare_image_colourise(tmp_path):
    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1))
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    loaded = load_rgb(tmp_path / "grey.png")
    assert loaded.shape == (20, 25, 3)
    np.testing.assert_array_equal(loaded[..., 0], grey)
    np.testing.assert_array_equal(loaded[..., 2], grey)

    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "alpha.png"), rgba[..., :3])

    from_grey_array = prepare_image(grey, 32)
    assert from_grey_array.shape == (32, 32, 3)
    assert (from_grey_array[..., 0] == from_grey_array[..., 1]).all()


# ---------------------------------------------------------- fake datasets

def make_fake_cub(root, rng):
    """Three JPEGs, CUB index files (ids out of order, float boxes) and split lists."""
    cub = root / "CUB_200_2011"
    entries = [  # id, key, size (w, h), bbox text
        (1, "001.Black_footed_Albatross/Black_Footed_Albatross_0001_1", (120, 90), "10.0 15.0 60.0 40.0"),
        (2, "001.Black_footed_Albatross/Black_Footed_Albatross_0002_2", (80, 100), "5 20 50.7 70.2"),
        (3, "002.Laysan_Albatross/Laysan_Albatross_0003_3", (100, 100), "0 0 100 100"),
    ]
    for _, key, (w, h), _ in entries:
        path = cub / "images" / (key + ".jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(random_image(rng, h, w)).save(path, quality=95)
    (cub / "images.txt").write_text("".join(f"{i} {key}.jpg\n" for i, key, _, _ in reversed(entries)))
    (cub / "bounding_boxes.txt").write_text("".join(f"{i} {box}\n" for i, _, _, box in entries))
    keys = [key for _, key, _, _ in entries]
    safe_pickle.dump([keys[2], keys[0]], str(root / "train" / "filenames.pickle"))
    safe_pickle.dump([keys[1]], str(root / "test" / "filenames.pickle"))
    boxes = {keys[0]: [10, 15, 60, 40], keys[1]: [5, 20, 50, 70], keys[2]: [0, 0, 100, 100]}
    return cub, boxes


def check_split(split_dir, expected_hr):
    hr = safe_pickle.load(str(split_dir / f"{HR_LOAD_SIZE}images.pickle"))
    lr = safe_pickle.load(str(split_dir / f"{LR_LOAD_SIZE}images.pickle"))
    assert isinstance(hr, list) and isinstance(lr, list)
    assert len(hr) == len(lr) == len(expected_hr)
    for got_hr, got_lr, want in zip(hr, lr, expected_hr):
        assert got_hr.dtype == np.uint8 and got_hr.shape == (HR_LOAD_SIZE, HR_LOAD_SIZE, 3)
        assert got_lr.dtype == np.uint8 and got_lr.shape == (LR_LOAD_SIZE, LR_LOAD_SIZE, 3)
        np.testing.assert_array_equal(got_hr, want)
        np.testing.assert_array_equal(got_lr, resize_bicubic(want, LR_LOAD_SIZE))


def test_preprocess_birds_writes_cropped_pickles_in_filename_order(tmp_path):
    cub, boxes = make_fake_cub(tmp_path, np.random.default_rng(1))
    result = run_script("preprocess_birds.py", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"train: 2 images -> {HR_LOAD_SIZE}images.pickle (2, 304, 304, 3) uint8" in result.stdout

    def expected(key):
        return prepare_image(load_rgb(cub / "images" / (key + ".jpg")), HR_LOAD_SIZE, boxes[key])

    for split in ("train", "test"):
        keys = safe_pickle.load(str(tmp_path / split / "filenames.pickle"))
        check_split(tmp_path / split, [expected(k) for k in keys])
    # The crop really happened: the uncropped picture gives different pixels.
    key = safe_pickle.load(str(tmp_path / "train" / "filenames.pickle"))[1]
    uncropped = prepare_image(load_rgb(cub / "images" / (key + ".jpg")), HR_LOAD_SIZE)
    assert not np.array_equal(safe_pickle.load(str(tmp_path / "train" / "304images.pickle"))[1], uncropped)


def test_preprocess_flowers_writes_resized_pickles_in_filename_order(tmp_path):
    rng = np.random.default_rng(2)
    keys = [f"jpg/image_{i:05d}" for i in (7, 1, 3)]
    for i, key in enumerate(keys):
        (tmp_path / "jpg").mkdir(exist_ok=True)
        Image.fromarray(random_image(rng, 60 + 10 * i, 80)).save(tmp_path / (key + ".jpg"), quality=95)
    safe_pickle.dump(keys[:2], str(tmp_path / "train" / "filenames.pickle"))
    safe_pickle.dump(keys[2:], str(tmp_path / "test" / "filenames.pickle"))
    result = run_script("preprocess_flowers.py", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for split, split_keys in (("train", keys[:2]), ("test", keys[2:])):
        check_split(tmp_path / split,
                    [prepare_image(load_rgb(tmp_path / (k + ".jpg")), HR_LOAD_SIZE) for k in split_keys])


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("script, expected_path, download", [
    ("preprocess_birds.py", os.path.join("CUB_200_2011", "images.txt"), "CUB_200_2011.tgz"),
    ("preprocess_flowers.py", "jpg", "102flowers.tgz"),
])
def test_missing_tree_gives_one_line_error(tmp_path, script, expected_path, download):
    data_dir = tmp_path / "nothing_here"
    result = run_script(script, "--data-dir", str(data_dir))
    assert_one_line_error(result, os.path.join(str(data_dir), expected_path), download)


def test_missing_split_lists_and_images_are_named(tmp_path):
    cub, _ = make_fake_cub(tmp_path, np.random.default_rng(3))
    os.remove(tmp_path / "test" / "filenames.pickle")
    result = run_script("preprocess_birds.py", "--data-dir", str(tmp_path))
    assert_one_line_error(result, os.path.join(str(tmp_path), "test", "filenames.pickle"), "birds.zip")
    assert not (tmp_path / "train" / "304images.pickle").exists()  # checked before any work

    cub, _ = make_fake_cub(tmp_path, np.random.default_rng(3))
    missing = cub / "images" / "002.Laysan_Albatross" / "Laysan_Albatross_0003_3.jpg"
    os.remove(missing)
    result = run_script("preprocess_birds.py", "--data-dir", str(tmp_path))
    assert_one_line_error(result, str(missing))


def test_hostile_photographs_lists_and_outputs_give_one_line_before_any_output(tmp_path):
    """Issue 24: a decompression bomb among the photographs, a file list that
    allocates from a size or leaves the folder, a malformed box file and an
    output that is a folder are each one line, before any pickle is written."""
    cub, _ = make_fake_cub(tmp_path, np.random.default_rng(4))
    photo = cub / "images" / "001.Black_footed_Albatross" / "Black_Footed_Albatross_0002_2.jpg"
    good = photo.read_bytes()
    photo.write_bytes(hostile_files.png_claiming(20000, 20000))
    assert_one_line_error(run_script("preprocess_birds.py", "--data-dir", str(tmp_path)), str(photo),
                          "400,000,000 pixels, above Pillow's decompression-bomb limit")
    photo.write_bytes(good)
    names = tmp_path / "test" / "filenames.pickle"
    keys = names.read_bytes()
    names.write_bytes(b"\x80\x02c__builtin__\nbytes\nJ\x00\x94\x35\x77\x85R.")
    assert_one_line_error(run_script("preprocess_birds.py", "--data-dir", str(tmp_path)), str(names),
                          "bytes(2000000000,)")
    safe_pickle.dump(["../../../etc/passwd"], str(names))
    assert_one_line_error(run_script("preprocess_birds.py", "--data-dir", str(tmp_path)), str(names),
                          "contains a '..' component")
    names.write_bytes(keys)
    boxes = cub / "bounding_boxes.txt"
    box_lines = boxes.read_text()
    boxes.write_text(box_lines.replace("5 20 50.7 70.2", "5 20 wide 70.2"))
    assert_one_line_error(run_script("preprocess_birds.py", "--data-dir", str(tmp_path)), str(boxes),
                          "is not four numbers")
    boxes.write_text(box_lines + "4 7\n")
    assert_one_line_error(run_script("preprocess_birds.py", "--data-dir", str(tmp_path)), str(boxes),
                          "line 4 has 2 field(s), expected 5")
    boxes.write_text(box_lines)
    (tmp_path / "test" / f"{LR_LOAD_SIZE}images.pickle").mkdir()
    assert_one_line_error(run_script("preprocess_birds.py", "--data-dir", str(tmp_path)),
                          f"{LR_LOAD_SIZE}images.pickle", "is a folder")
    for split in ("train", "test"):
        assert sorted(os.listdir(tmp_path / split)) in (["filenames.pickle"],
                                                        ["76images.pickle", "filenames.pickle"])
    assert not (tmp_path / "train" / f"{HR_LOAD_SIZE}images.pickle").exists()

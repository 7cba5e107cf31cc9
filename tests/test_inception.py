"""misc/evaluation/inception.py: the authors' Inception-v3 evaluation model and score.

The fixture (tests/inception_support.py) was computed by the authors'
unmodified inception_score.py; here the Keras model loads its checkpoint and
reproduces, for the same ten pictures, the resized images, the logits, the
softmax and the score.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import inception_support
from misc.evaluation.inception import (
    AVERAGE_SUFFIX,
    AuthorsInceptionV3,
    ImageFolderError,
    InceptionCheckpoint,
    InceptionError,
    authors_resize,
    authors_selection,
    inception_score,
    list_images,
    prepare_batch,
    read_image,
    to_uint8_truncated,
)


@pytest.fixture(scope="module")
def fixture_checkpoint(tmp_path_factory):
    return inception_support.checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return inception_support.scorer(tmp_path_factory)


@pytest.fixture(scope="module")
def pictures():
    order = inception_support.meta()["load_order"]
    return order, [read_image(os.path.join(inception_support.IMAGES_DIR, n)) for n in order]


def test_variables_are_those_the_authors_restore():
    meta = inception_support.meta()
    model = AuthorsInceptionV3(meta["flags"]["num_classes"] + 1)
    model.build_variables()
    ours = {name: list(var.shape) for name, var in model.reference_variables().items()}
    theirs = {n: s for n, s in meta["model_variables"].items() if not n.startswith("aux_logits/")}
    assert ours == theirs  # names and shapes of slim's inception_v3, without the auxiliary head
    restore = meta["restore_map"]  # checkpoint name -> variable, from variables_to_restore()
    assert all(restore[name + AVERAGE_SUFFIX] == name for name in ours)
    assert len(ours) == 378


def test_the_fixture_tells_averages_from_raw_values(fixture_checkpoint):
    reader = tf.train.load_checkpoint(fixture_checkpoint)
    for name in ("conv0/weights", "mixed_8x8x2048b/branch_pool/Conv/BatchNorm/moving_mean",
                 "logits/logits/weights"):
        assert not np.allclose(reader.get_tensor(name), reader.get_tensor(name + AVERAGE_SUFFIX))


def test_resize_matches_the_authors(pictures):
    arrays = inception_support.golden()
    for name, image in zip(*pictures):
        np.testing.assert_array_equal(authors_resize(image), arrays[f"resized/{name}"], err_msg=name)
    gray = dict(zip(*pictures))["gray.png"]
    assert gray.ndim == 2  # reshaped by np.resize as the authors' preprocess does


def test_predictions_and_score_match_the_authors(scorer, pictures):
    meta, arrays = inception_support.meta(), inception_support.golden()
    logits, probabilities = scorer.outputs(pictures[1])
    np.testing.assert_allclose(logits, arrays["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(probabilities, arrays["preds"], atol=1e-4, rtol=0)
    assert probabilities.argmax(axis=1).tolist() == arrays["preds"].argmax(axis=1).tolist()
    flags = meta["flags"]
    chosen = authors_selection(len(probabilities), flags["batch_size"], meta["seed"])
    mean, std, _ = inception_score(probabilities[chosen], flags["splits"])
    assert abs(mean - meta["score"]["mean"]) < 1e-4 and abs(std - meta["score"]["std"]) < 1e-4
    assert mean > 2.0  # the random classifier tells the pictures apart


def test_load_report(scorer, fixture_checkpoint):
    report = scorer.report
    assert report.num_classes == 50 and len(report.filled) == 378
    assert sorted(report.raw) == sorted(report.filled)
    assert len(report.not_needed) == 20 and all(n.startswith("aux_logits/") for n in report.not_needed)
    assert report.leftovers == {"global_step": ["global_step"]} and report.unused == []
    text = report.summary()
    assert fixture_checkpoint in text and "378 raw values" in text and "auxiliary head" in text


def write_v2(prefix, tensors):
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])
    return prefix


def test_v2_checkpoint_and_training_leftovers(scorer, fixture_checkpoint, pictures, tmp_path):
    reader = tf.train.load_checkpoint(fixture_checkpoint)
    tensors = {n + AVERAGE_SUFFIX: reader.get_tensor(n + AVERAGE_SUFFIX) for n in scorer.report.filled}
    tensors.update({"conv0/weights/RMSProp": np.zeros((3, 3, 3, 32), np.float32),
                    "conv0/weights/RMSProp_1": np.zeros((3, 3, 3, 32), np.float32),
                    "tower_0/total_loss/avg": np.float32(1.0), "global_step": np.int64(5000),
                    "something/else": np.zeros(2, np.float32)})
    prefix = write_v2(str(tmp_path / "model.ckpt-5000"), tensors)
    expected = scorer.outputs(pictures[1][:3])
    report = InceptionCheckpoint(prefix).load(scorer.model)
    assert report.raw == [] and report.not_needed == [] and report.unused == ["something/else"]
    assert report.leftovers == {"optimizer slots": ["conv0/weights/RMSProp", "conv0/weights/RMSProp_1"],
                                "loss averages": ["tower_0/total_loss/avg"], "global_step": ["global_step"]}
    assert "something/else" in report.summary()
    for ours, theirs in zip(scorer.outputs(pictures[1][:3]), expected):
        np.testing.assert_array_equal(ours, theirs)


def one_line_error(call, *args):
    with pytest.raises(InceptionError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_wrong_files_are_refused(tmp_path, fixture_checkpoint, scorer):
    missing = str(tmp_path / "nothing.ckpt")
    assert "not found" in one_line_error(InceptionCheckpoint, missing)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint" * 100)
    assert "not a TensorFlow checkpoint" in one_line_error(InceptionCheckpoint, str(garbage))
    raw_only = write_v2(str(tmp_path / "raw"), {"logits/logits/weights": np.zeros((2048, 51), np.float32)})
    assert "no moving averages" in one_line_error(InceptionCheckpoint, raw_only)
    stackgan = write_v2(str(tmp_path / "stackgan"), {"g_net/custom_fully_connected/Linear/Matrix":
                                                     np.zeros((4, 4), np.float32)})
    assert "not the authors' Inception evaluation model" in one_line_error(InceptionCheckpoint, stackgan)
    tf_slim = write_v2(str(tmp_path / "tfslim"), {"InceptionV3/Logits/Conv2d_1c_1x1/weights":
                                                  np.zeros((1, 1, 2048, 1001), np.float32)})
    assert "TF-Slim" in one_line_error(InceptionCheckpoint, tf_slim)

    checkpoint = InceptionCheckpoint(fixture_checkpoint)
    key = "mixed_17x17x768c/branch7x7dbl/Conv_3/weights" + AVERAGE_SUFFIX
    del checkpoint.shapes[key]
    message = one_line_error(checkpoint.load, scorer.model)
    assert "1 variable(s)" in message and key in message
    checkpoint = InceptionCheckpoint(fixture_checkpoint)
    checkpoint.shapes[key] = (1, 7, 160, 160)  # 1x7 where slim has 7x1
    message = one_line_error(checkpoint.load, scorer.model)
    assert key in message and "[1, 7, 160, 160]" in message and "[7, 1, 160, 160]" in message


# -- score arithmetic ------------------------------------------------------------

def test_identical_predictions_score_one():
    p = np.random.default_rng(0).dirichlet(np.ones(7), size=1)
    mean, std, splits = inception_score(np.repeat(p, 40, axis=0), splits=4)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    assert len(splits) == 4


@pytest.mark.parametrize("classes", [1, 2, 5, 13])
def test_equiprobable_confident_classes_score_their_number(classes):
    one_hot = np.eye(classes, 20)[np.arange(10 * classes) % classes]  # exact zeros included
    mean, std, _ = inception_score(one_hot, splits=10)
    assert mean == pytest.approx(classes, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)


def test_non_finite_predictions_give_nan_as_in_the_authors_script():
    p = np.eye(4)[np.arange(8) % 4]
    p[5] = np.nan  # an overflowing network's softmax
    _, _, splits = inception_score(p, splits=2)
    assert splits[0] == pytest.approx(4.0) and np.isnan(splits[1])


def test_score_per_split_is_exp_of_mean_kl():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.full(5, 0.3), size=10)
    mean, std, splits = inception_score(p, splits=3)
    expected = []
    for part in (p[0:3], p[3:6], p[6:10]):  # i * n // splits boundaries
        marginal = part.mean(axis=0)
        expected.append(np.exp(np.mean([np.sum(q * np.log(q / marginal)) for q in part])))
    np.testing.assert_allclose(splits, expected, rtol=1e-12)
    assert mean == pytest.approx(np.mean(expected)) and std == pytest.approx(np.std(expected))


def test_selection_is_the_authors_shuffle_and_whole_batches():
    state = np.random.get_state()
    try:
        np.random.seed(7)
        indices = list(np.arange(150))
        np.random.shuffle(indices)  # what get_inception_score does
    finally:
        np.random.set_state(state)
    chosen = authors_selection(150, batch_size=64, seed=7)
    assert chosen.tolist() == [int(i) for i in indices[:128]]
    assert len(authors_selection(63, batch_size=64)) == 0


# -- preprocessing and pictures ------------------------------------------------------

def test_generated_pictures_are_truncated_like_the_authors_saved_them():
    values = np.array([-1.0, -0.999, 0.0, 0.00393, 0.999, 1.0, 1.5, -2.0], np.float32)
    assert to_uint8_truncated(values).tolist() == [0, 0, 127, 128, 254, 255, 255, 0]


def test_prepare_batch_scales_like_preprocess():
    image = np.arange(299 * 299 * 3, dtype=np.int64).reshape(299, 299, 3) % 256
    batch = prepare_batch([image.astype(np.uint8)])
    assert batch.shape == (1, 299, 299, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0], image.astype(np.float32) / np.float32(127.5) - np.float32(1))


def test_folder_is_read_as_load_data_reads_it(tmp_path):
    folder = tmp_path / "samples"
    (folder / "sub").mkdir(parents=True)
    rgb = np.random.default_rng(1).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    for name in ("a.png", "b.jpg", "sub/c.png", "d.JPG", "e.jpeg", "notes.txt"):
        Image.fromarray(rgb).save(folder / name, format="PNG" if "png" in name or "txt" in name else "JPEG")
    Image.fromarray(np.dstack([rgb, np.full((8, 10), 9, np.uint8)]), "RGBA").save(folder / "alpha.png")
    expected = [os.path.join(d, n) for d, _, files in os.walk(folder) for n in files
                if "jpg" in n or "png" in n]
    found = list_images(str(folder))
    assert found == expected and len(found) == 4  # 'JPG', 'jpeg' and 'txt' are not read
    alpha = read_image(str(folder / "alpha.png"))
    np.testing.assert_array_equal(alpha, rgb)  # the alpha channel is dropped
    Image.new("CMYK", (4, 4)).save(folder / "cmyk.jpg")
    with pytest.raises(ImageFolderError, match="CMYK"):
        read_image(str(folder / "cmyk.jpg"))
    (folder / "broken.png").write_bytes(b"no picture")
    with pytest.raises(ImageFolderError, match="not a readable picture"):
        read_image(str(folder / "broken.png"))
    with pytest.raises(ImageFolderError, match="not found"):
        list_images(str(tmp_path / "missing"))

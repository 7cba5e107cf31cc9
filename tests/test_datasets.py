"""Dataset loading (reference format, restricted unpickling) and the
reference's batch sampling; the tf.data pipeline and its noise."""

import io
import os
import pickle

import numpy as np
import pytest
import tensorflow as tf

from misc.config import DatasetError, default_config
from misc.data import safe_pickle
from misc.data.datasets import TextDataset, load_dataset
from misc.data.input_pipeline import noise_for_step, training_dataset
from tiny_dataset import write_tiny_dataset


class _Python2StrPickler(safe_pickle._Python2Pickler):
    """Also writes ``str`` as Python 2 ``str`` (BINSTRING), as Python 2 did
    for the file names in the published pickles."""

    def save_str_as_py2_str(self, obj):
        self.save_bytes_as_str(obj.encode("latin1"))

    dispatch = dict(safe_pickle._Python2Pickler.dispatch)
    dispatch[str] = save_str_as_py2_str


def py2_pickle(obj, path):
    buf = io.BytesIO()
    _Python2StrPickler(buf, protocol=2).dump(obj)
    data = buf.getvalue()
    assert b"_codecs" not in data  # really the Python 2 encoding
    with open(path, "wb") as f:
        f.write(data)


def test_python2_pickles_load(tmp_path):
    images = [np.arange(76 * 76 * 3, dtype=np.uint8).reshape(76, 76, 3)] * 2
    py2_pickle(images, tmp_path / "76images.pickle")
    py2_pickle(["002.Laysan_Albatross/Laysan_Albatross_0002_1027", "b"], tmp_path / "f.pickle")
    loaded = safe_pickle.load(str(tmp_path / "76images.pickle"))
    assert len(loaded) == 2 and loaded[0].dtype == np.uint8
    np.testing.assert_array_equal(loaded[1], images[1])
    first = safe_pickle.load(str(tmp_path / "f.pickle"))[0]
    assert first == "002.Laysan_Albatross/Laysan_Albatross_0002_1027"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_that_runs_code_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "class_info.pickle"
    path.write_bytes(pickle.dumps([1, _Evil()]))
    with pytest.raises(safe_pickle.UnsafePickleError) as err:
        safe_pickle.load(str(path))
    assert str(path) in str(err.value) and "posix.system" in str(err.value)


def test_damaged_pickle_error_names_the_file(tmp_path):
    path = tmp_path / "filenames.pickle"
    path.write_bytes(pickle.dumps(["a", "b"])[:-5])
    with pytest.raises(pickle.UnpicklingError, match=str(path)):
        safe_pickle.load(str(path))


@pytest.fixture
def tiny(tmp_path):
    write_tiny_dataset(str(tmp_path / "data"), num_train=12, num_test=6, stage_ii=True)
    config = default_config()
    config.DATA_DIR = str(tmp_path / "data")
    config.DATASET_NAME = "tiny"
    return config


def test_load_dataset_reads_both_stages_formats(tiny):
    lr = load_dataset(tiny, hr_lr_ratio=1)
    assert lr.train.images.shape == (12, 76, 76, 3) and lr.test.num_examples == 6
    assert lr.embedding_shape == [24] and lr.train.crop_size == 64
    hr = load_dataset(tiny, hr_lr_ratio=4, splits=("train",))
    assert hr.train.images.shape == (12, 304, 304, 3) and hr.train.crop_size == 256
    assert hr.train.captions(0)[3] == "caption 3 of class_1/train_000"


def test_flowers_caption_path_rewrite(tiny):
    split = load_dataset(tiny, 1).train
    split.filenames[0] = "jpg/image_06734"
    assert split.caption_path(0).endswith(os.path.join("text_c10", "class_00001", "image_06734.txt"))


@pytest.mark.parametrize("damage, message", [
    (lambda d: os.remove(os.path.join(d, "train", "76images.pickle")), "missing image pickle"),
    (lambda d: os.remove(os.path.join(d, "test", "char-CNN-RNN-embeddings.pickle")), "text-embedding"),
    (lambda d: safe_pickle.dump(["x"], os.path.join(d, "train", "filenames.pickle")), "has 1 file names"),
    (lambda d: safe_pickle.dump(np.zeros((6, 10, 7), np.float32),
                                os.path.join(d, "test", "char-CNN-RNN-embeddings.pickle")),
     "embedding dimension 7 differs"),
    (lambda d: safe_pickle.dump(np.zeros((12, 64, 64, 3), np.uint8),
                                os.path.join(d, "train", "76images.pickle")), "76 x 76 x 3"),
])
def test_bad_dataset_files_name_the_file(tiny, damage, message):
    damage(os.path.join(tiny.DATA_DIR, "tiny"))
    with pytest.raises(DatasetError, match=message) as err:
        load_dataset(tiny, 1)
    assert os.path.join(tiny.DATA_DIR, "tiny") in str(err.value)


def test_missing_dataset_folder(tiny):
    tiny.DATASET_NAME = "birds"
    with pytest.raises(DatasetError, match="dataset folder not found.*shapes"):
        load_dataset(tiny, 1)


def test_wrong_images_follow_the_collision_rule(tiny):
    split = load_dataset(tiny, 1).train  # classes 1,2,3,1,2,3,...
    ids = np.arange(12)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    wrong = split.wrong_indices(rng_a, ids)
    drawn = rng_b.integers(12, size=12)
    collide = split.class_ids[ids] == split.class_ids[drawn]
    assert collide.any()
    offset = rng_b.integers(100, 200)
    expected = drawn.copy()
    expected[collide] = (drawn[collide] + offset) % 12
    np.testing.assert_array_equal(wrong, expected)


def test_crops_flips_and_embedding_means(tiny):
    split = load_dataset(tiny, 1).train
    split.images = np.broadcast_to(np.arange(76, dtype=np.uint8)[None, None, :, None],
                                   (12, 76, 76, 3)).copy()  # pixel value = column
    rng = np.random.default_rng(0)
    crops = split.crops(np.arange(12), split.crop_draws(rng, 12))
    assert crops.shape == (12, 64, 64, 3)
    rows = crops[:, 0, :, 0].astype(int)
    steps = np.diff(rows, axis=1)
    assert set(np.unique(steps[:, 0])) == {1, -1}  # some flipped, some not
    assert np.all(np.abs(steps) == 1) and rows.min() >= 0 and rows.max() <= 75
    emb, captions = split.sample_embeddings(np.random.default_rng(1), np.array([0, 1]), 4)
    assert captions is None and emb.shape == (2, 24)
    # the mean of 4 distinct caption embeddings of each image
    for i in range(2):
        found = False
        for combo in __import__("itertools").combinations(range(10), 4):
            if np.allclose(split.embeddings[i, list(combo)].mean(0), emb[i], atol=1e-6):
                found = True
                break
        assert found
    emb1, captions1 = split.sample_embeddings(np.random.default_rng(1), np.array([3]), 1)
    k = int(captions1[0].split()[1])
    np.testing.assert_array_equal(emb1[0], split.embeddings[3, k])


def test_epochs_are_deterministic_and_drop_the_remainder(tiny):
    split = load_dataset(tiny, 1).train
    a = list(split.epoch_batches(seed=3, epoch=7, batch_size=5, num_embedding=4))
    b = list(split.epoch_batches(seed=3, epoch=7, batch_size=5, num_embedding=4))
    c = list(split.epoch_batches(seed=3, epoch=8, batch_size=5, num_embedding=4))
    assert len(a) == 2 == split.steps_per_epoch(5)
    np.testing.assert_array_equal(a[1]["images"], b[1]["images"])
    assert not np.array_equal(a[0]["embeddings"], c[0]["embeddings"])


def test_pipeline_batches_carry_per_step_noise(tiny):
    split = load_dataset(tiny, 1).train
    spec = {"eps": (8, "truncated_normal"), "z": (5, "normal")}
    ds = training_dataset(split, 4, 4, spec, seed=9, first_step=6)  # epoch 2, batch 0
    batches = list(ds.take(4))
    assert batches[0]["images"].dtype == tf.uint8 and batches[0]["images"].shape == (4, 64, 64, 3)
    assert batches[0]["eps"].shape == (4, 8) and batches[0]["z"].shape == (4, 5)
    assert float(tf.reduce_max(tf.abs(batches[0]["eps"]))) <= 2.0  # truncated at 2 sigma
    expected = noise_for_step(9, 7, 4, spec)
    np.testing.assert_array_equal(batches[1]["z"], expected["z"])
    # epoch 3 starts after 3 batches of epoch 2, as the split's own epochs
    epoch3 = next(split.epoch_batches(9, 3, 4, 4))
    np.testing.assert_array_equal(batches[3]["images"], epoch3["images"])
    # started mid-epoch (iteration 7: epoch 2, batch 1), the same batches and noise
    resumed = list(training_dataset(split, 4, 4, spec, seed=9, first_step=7).take(3))
    for a, b in zip(batches[1:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_reference_text_dataset_api(tiny):
    ds = TextDataset(os.path.join(tiny.DATA_DIR, "tiny"), "cnn-rnn", 4)
    assert ds.image_shape == [256, 256, 3]
    split = ds.get_data(os.path.join(tiny.DATA_DIR, "tiny", "test"))
    assert split.num_examples == 6 and ds.embedding_shape == [24]
    with pytest.raises(DatasetError, match="EMBEDDING_TYPE"):
        TextDataset("x", "glove", 1)

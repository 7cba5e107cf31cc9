"""misc/commands/train_text_encoder.py (misc/training/sje_trainer.py): DS-SJE training of a
char-CNN-RNN on a dataset built from a captioned folder."""

import glob
import json
import os
import signal
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from captioned_folder import COLOURS, write_captioned_folder
from misc.commands import train_text_encoder
from misc.commands.common import run_main
from misc.data.dataset_builder import build
from misc.evaluation.caption_embeddings import load_encoder
from misc.nets.char_cnn_rnn import CharCNNRNN, TextEncoderError, embed_captions
from misc.nets.image_encoders import FeatureExtractor, crop_views
from misc.training import sje_trainer
from test_reliability import sigterm_during
from test_run_exp import assert_same_variables, summary_values

# 6 classes x 6 pictures, 4 captions each; split by pictures: 24 to train, 12 to test
TINY = {"DATASET_NAME": "own", "ENCODER": {"CONV_CHANNELS": [16, 16, 16], "EMBEDDING_DIM": 16},
        "IMAGE": {"CHANNELS": [8, 16]}, "TRAIN": {"BATCH_SIZE": 6, "SNAPSHOT_INTERVAL": 0}}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    write_captioned_folder(str(root / "pics"), classes=tuple(COLOURS), per_class=6, size=32, captions=4)
    build(str(root / "pics"), str(root / "data" / "own"), split="images", test_fraction=0.34,
          log=lambda *a: None)
    return root


@pytest.fixture
def workdir(dataset, monkeypatch):
    monkeypatch.chdir(dataset)
    return dataset


def config_file(name, **sections):
    """TINY with ``sections`` merged in, as a YAML file."""
    tree = json.loads(json.dumps(TINY))
    for key, value in sections.items():
        if isinstance(value, dict):
            tree.setdefault(key, {}).update(value)
        else:
            tree[key] = value
    path = f"{name}.yml"
    with open(path, "w") as f:
        yaml.safe_dump(tree, f)
    return path


def train(capsys, name, **sections):
    """Run the command in-process: (exit code, stdout, stderr, the new run folder or None)."""
    before = set(glob.glob(os.path.join(sje_trainer.LOG_ROOT, "own", "*")))
    try:
        run_main(train_text_encoder.main, ["--cfg", config_file(name, **sections)])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    created = sorted(set(glob.glob(os.path.join(sje_trainer.LOG_ROOT, "own", "*"))) - before)
    return code, out, err, (created[-1] if created else None)


def figures_of(out):
    return next(line for line in out.splitlines() if line.startswith("Zero-shot"))


def test_a_few_hundred_steps_raise_retrieval_accuracy_above_chance(workdir, capsys):
    code, out, _, _ = train(capsys, "untrained", TRAIN={"MAX_EPOCH": 0})
    assert code == 0 and "Nothing to train" in out
    untrained = float(figures_of(out).split("top-1 accuracy ")[1].split("%")[0])
    code, out, _, run = train(capsys, "trained", TRAIN={"MAX_EPOCH": 50, "LEARNING_RATE": 0.003})
    assert code == 0
    line = figures_of(out)
    assert "(12 images of 6 classes, seen in training)" in line and "(chance 16.7%)" in line
    trained = float(line.split("top-1 accuracy ")[1].split("%")[0])
    assert untrained <= 25.0 and trained >= 50.0, (untrained, trained)
    with open(os.path.join(run, "model-300-zero_shot.json")) as f:
        assert json.load(f)["top1"] == pytest.approx(trained / 100, abs=1e-3)
    tags = summary_values(run)
    assert [step for step, _ in tags["loss"]] == list(range(1, 301))
    rates = dict(tags["learning_rate"])
    # 6 iterations an epoch: the rate is 0.98 times lower from the 7th
    assert rates[6] == pytest.approx(0.003) and rates[7] == pytest.approx(0.003 * 0.98)
    assert rates[300] == pytest.approx(0.003 * 0.98 ** 49)
    assert np.mean([a for _, a in tags["accuracy"][-30:]]) > np.mean([a for _, a in tags["accuracy"][:30]])
    assert sorted(n for n in os.listdir(run) if not n.startswith("events.out.tfevents.")) == [
        ".lock", "checkpoint", "model-300-zero_shot.json", "model-300.data-00000-of-00001", "model-300.index",
        "text_encoder.keras"]


def test_resumed_and_preempted_runs_end_bit_identical_to_an_uninterrupted_one(workdir, capsys, monkeypatch):
    chain = {"MAX_EPOCH": 3, "SNAPSHOT_INTERVAL": 4}  # 18 iterations
    code, full_out, _, full = train(capsys, "full", TRAIN=chain)
    assert code == 0 and os.path.isfile(os.path.join(full, "model-18.index"))
    restore = sigterm_during(monkeypatch, 9)
    code, out, _, stopped = train(capsys, "preempted", TRAIN=chain)
    restore()
    assert code == 143 and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert f"Stopped by SIGTERM at iteration 10; resume with TRAIN.PRETRAINED_MODEL: {stopped}/model-10" \
        in out
    assert os.path.isfile(os.path.join(stopped, "text_encoder.keras"))
    code, out, _, last = train(capsys, "resumed", TRAIN={**chain, "PRETRAINED_MODEL": stopped})
    assert code == 0 and "Training from iteration 10 (epoch 1, batch 4)" in out
    assert [step for step, _ in summary_values(last)["loss"]] == list(range(11, 19))
    assert_same_variables(os.path.join(full, "model-18"), os.path.join(last, "model-18"))
    captions = ["a picture of a red square on grey", "look at a blue circle"]
    full_encoder, _ = load_encoder(full)
    last_encoder, _ = load_encoder(os.path.join(last, "text_encoder.keras"))
    embedded = embed_captions(full_encoder, captions)
    np.testing.assert_array_equal(embedded, embed_captions(last_encoder, captions))
    assert not np.allclose(embedded[0], embedded[1])
    os.remove(os.path.join(full, "model-18-zero_shot.json"))
    code, out, _, run = train(capsys, "evaluated", TRAIN={"FLAG": False, "PRETRAINED_MODEL": full})
    assert code == 0 and run is None
    assert figures_of(out) == figures_of(full_out).replace("seen in training", "classes")
    assert os.path.isfile(os.path.join(full, "model-18-zero_shot.json"))


def test_the_exported_encoder_is_checked_before_it_is_built(tmp_path):
    model = CharCNNRNN.birds(conv_channels=(8, 8, 8), embedding_dim=5)
    path = str(tmp_path / "text_encoder.keras")
    sje_trainer.export_encoder(model, path)
    loaded, info = load_encoder(str(tmp_path))
    assert info == {"path": path, "source": "keras"}
    captions = ["a red bird", "a blue one"]
    np.testing.assert_array_equal(embed_captions(loaded, captions), embed_captions(model, captions))

    def rewritten(name, edit):
        target = str(tmp_path / name)
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(target, "w") as out:
            for item in source.namelist():
                data = source.read(item)
                if item == "config.json":
                    config = json.loads(data)
                    edit(config)
                    data = json.dumps(config)
                out.writestr(item, data)
        return target

    cases = {
        rewritten("huge.keras", lambda c: c["config"].update(conv_channels=[8, 8, 100000])): "out of range",
        rewritten("many.keras", lambda c: c["config"].update(conv_channels=[8, 8, 8000],
                                                              embedding_dim=8000)): "weights; at most",
        rewritten("other.keras", lambda c: c.update(class_name="Sequential")): "holds a 'Sequential'",
        rewritten("wide.keras", lambda c: c["config"].update(embedding_dim=6)): "not a text encoder written",
    }
    with open(tmp_path / "broken.keras", "wb") as f:
        f.write(b"PK\x03\x04 not really")
    cases[str(tmp_path / "broken.keras")] = "not a text encoder written by misc/commands/train_text_en"
    for target, part in cases.items():
        with pytest.raises(TextEncoderError) as error:
            load_encoder(target)
        assert part in str(error.value) and "\n" not in str(error.value), str(error.value)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(TextEncoderError, match="no text_encoder.keras in this folder or below it"):
        load_encoder(str(tmp_path / "nothing"))


@pytest.mark.parametrize("sections, part", [
    ({"TRAIN": {"BATCH_SIZE": 7}}, "TRAIN.BATCH_SIZE 7 is more than the 6 classes of the training split"),
    ({"ENCODER": {"ARCHITECTURE": "cats"}}, "ENCODER.ARCHITECTURE is 'cats'; use 'birds' or 'flowers'"),
    ({"ENCODER": {"CONV_CHANNELS": [8, 8]}}, "ENCODER.CONV_CHANNELS is [8, 8]; give three positive"),
    ({"IMAGE": {"NETWORK": "GoogLeNet", "WEIGHTS": "w.h5"}}, "IMAGE.NETWORK is 'GoogLeNet'; use 'scratch'"),
    ({"IMAGE": {"NETWORK": "ResNet50"}}, "IMAGE.WEIGHTS is ''; give the weights file of"),
    ({"IMAGE": {"NETWORK": "ResNet50", "WEIGHTS": "no.h5"}}, "IMAGE.WEIGHTS 'no.h5': file not found"),
    ({"TRAIN": {"LEARNING_RATE": 7}}, "config key 'TRAIN.LEARNING_RATE' expects float, got int"),
    ({"TRAIN": {"EPOCHS": 7}}, "unknown config key 'TRAIN.EPOCHS'"),
    ({"DATASET_NAME": "absent"}, "absent/test: dataset split folder not found"),
    ({"TRAIN": {"PRETRAINED_MODEL": "data"}}, "data: no checkpoint in this folder or below it"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(workdir, capsys, sections, part):
    code, _, err, run = train(capsys, "bad", **sections)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and part in err, err
    assert run is None


def test_a_named_keras_network_with_a_weights_file(workdir, tmp_path, capsys):
    """Features of keras.applications.MobileNetV2 from a weights file (its
    '_notop' layout, and the full one with its classifier), cached; then
    training against those fixed features."""
    network = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3),
                                             pooling="avg")
    weights = str(tmp_path / "mobilenet_notop.weights.h5")
    network.save_weights(weights)
    images = np.random.default_rng(0).integers(0, 256, (3, 76, 76, 3), dtype=np.uint8)
    images_path = str(tmp_path / "images.pickle")
    with open(images_path, "wb") as f:
        f.write(images.tobytes())
    extractor = FeatureExtractor("MobileNetV2", weights, 32)
    features = extractor.features(images, images_path, 64, 2, str(tmp_path), log=lambda *a: None)
    views = crop_views(images, [0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1], 64)
    expected = network(keras.applications.mobilenet_v2.preprocess_input(
        tf.image.resize(tf.constant(views, tf.float32), (32, 32))), training=False).numpy()
    np.testing.assert_allclose(features.reshape(6, -1), expected, rtol=1e-5, atol=1e-5)
    cache = tmp_path / "image-features-MobileNetV2.npz"
    assert cache.is_file()
    np.testing.assert_array_equal(np.load(cache)["features"], features)
    messages = []
    extractor.features(images, images_path, 64, 2, str(tmp_path), log=messages.append)
    assert messages == [f"Image features of {images_path} read from {cache}"]

    full = keras.applications.MobileNetV2(include_top=True, weights=None, input_shape=(32, 32, 3))
    full_weights = str(tmp_path / "mobilenet_full.h5")  # keras.applications' legacy HDF5, with the classifier
    full.save(full_weights)
    # the notop network cannot read it: the features come from the full one
    with pytest.raises(ValueError, match="Layer count mismatch"):
        keras.applications.MobileNetV2(include_top=False, weights=full_weights, input_shape=(32, 32, 3))
    code, out, _, run = train(capsys, "pretrained", IMAGE={"NETWORK": "MobileNetV2", "WEIGHTS": full_weights,
                                                            "SIZE": 32, "VIEWS": 2},
                              TRAIN={"MAX_EPOCH": 1})
    assert code == 0, out
    assert "Computing MobileNetV2 features of 24 images x 2 views (32 px)" in out and "1280-d output" in out
    cached = np.load(os.path.join("data", "own", "train", "image-features-MobileNetV2.npz"))["features"]
    own = sje_trainer.read_split(os.path.join("data", "own"), "train", high_resolution=True)
    (pool,) = [layer for layer in full.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    view = crop_views(own.images, [5], [1], own.crop)
    expected = keras.Model(full.inputs, pool.output)(keras.applications.mobilenet_v2.preprocess_input(
        tf.image.resize(tf.constant(view, tf.float32), (32, 32))), training=False).numpy()
    np.testing.assert_allclose(cached[5, 1], expected[0], rtol=1e-4, atol=1e-5)
    encoder, _ = load_encoder(run)
    assert encoder.embedding_dim == 1280

"""End to end: stageI/run_exp.py and stageII/run_exp.py on tiny datasets."""

import glob
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from golden_support import tiny_config, unpack_checkpoint
from misc.commands.common import run_main
from misc.config import load_config
from misc.data import safe_pickle
from misc.data.datasets import Split, load_dataset
from misc.training import callbacks as callbacks_module
from misc.training.checkpoints import describe_checkpoint, restore_native
from stageI import experiment as stage_i
from stageII import experiment as stage_ii
from tiny_dataset import stage_i_main, stage_ii_main, tiny_train_config, write_config, write_tiny_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiny_dataset("data", stage_ii=True)
    return tmp_path


def run(main, name, **overrides):
    """Run a stage's main() (what run_exp.py runs) on a tiny config; return its log directory."""
    before = set(glob.glob("ckt_logs/*/*"))
    run_main(main, ["--cfg", write_config(f"{name}.yml", tiny_train_config(**overrides))])
    created = sorted(set(glob.glob("ckt_logs/*/*")) - before)
    return created[-1] if created else None


def summary_values(log_dir):
    """{tag: [(step, value or None for non-scalars)]} from the event files."""
    values = {}
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                scalar = v.metadata.plugin_data.plugin_name == "scalars"
                number = float(tf.make_ndarray(v.tensor)) if scalar else None
                values.setdefault(v.tag, []).append((event.step, number))
    return values


def assert_same_variables(expected, actual):
    """Two snapshots hold the same variables with the same bits."""
    a, b = tf.train.load_checkpoint(expected), tf.train.load_checkpoint(actual)
    names = [n for n in a.get_variable_to_shape_map() if "save_counter" not in n and "OBJECT_GRAPH" not in n]
    assert sorted(names) == sorted(n for n in b.get_variable_to_shape_map()
                                   if "save_counter" not in n and "OBJECT_GRAPH" not in n)
    for name in names:
        np.testing.assert_array_equal(b.get_tensor(name), a.get_tensor(name), err_msg=name)


def epoch_lines(text):
    return [line for line in text.splitlines() if line.startswith("Epoch ") and "|" in line]


def test_stage_i_trains_and_writes_snapshots_summaries_and_images(workdir, capsys):
    log_dir = run(stage_i_main, "train", **{"TRAIN.MAX_EPOCH": 2, "TRAIN.SNAPSHOT_INTERVAL": 4})
    # 12 images / batch 4 = 3 iterations per epoch: a snapshot at 4, and the final state
    snapshots = sorted(os.path.basename(p)[:-len(".index")]
                       for p in glob.glob(os.path.join(log_dir, "*.index")))
    assert snapshots == ["model-4", "model-6"]
    tags = summary_values(log_dir)
    for tag in ("d_loss", "d_loss_real", "d_loss_wrong", "d_loss_fake", "g_loss", "g_loss_kl_loss",
                "d_learning_rate", "g_learning_rate"):
        assert [step for step, _ in tags[tag]] == [1, 2, 3, 4, 5, 6], tag
        assert all(np.isfinite(v) for _, v in tags[tag])
    assert len(tags["hist_c"]) == len(tags["hist_z"]) == 6
    assert {"train", "test"} <= set(tags)  # sample images
    # LR_DECAY_EPOCH 1: the rate halves at the start of epoch 1
    assert [v for _, v in tags["g_learning_rate"]] == pytest.approx([2e-4] * 3 + [1e-4] * 3)
    for name in ("train.jpg", "test.jpg"):  # NUM_COPY 2: rows of a real image + 2 samples
        assert Image.open(os.path.join(log_dir, name)).size == (3 * 64, 2 * 64)
    assert open(os.path.join(log_dir, "test.txt")).read().count("***row") == 2
    lines = epoch_lines(capsys.readouterr().out)
    assert len(lines) == 2 and lines[0].startswith("Epoch 1/2 | d_loss: ")
    assert lines[1].startswith("Epoch 2/2 | d_loss: ")


def test_a_native_snapshot_restores_every_weight(workdir):
    log_dir = run(stage_i_main, "train", **{"TRAIN.MAX_EPOCH": 1})
    config = load_config("train.yml")
    gans = [stage_i.build_gan(config, 24, tf.distribute.get_strategy()) for _ in range(2)]
    fresh = {n: v.numpy() for n, v in gans[0].generator.reference_variables().items()}
    restore_native(gans[0], os.path.join(log_dir, "model-3"))
    restore_native(gans[1], os.path.join(log_dir, "model-3"), parts=("generator", "discriminator", "counter"))
    assert int(gans[0].counter.numpy()) == 3 and int(gans[0].global_step.numpy()) == 6
    for net_a, net_b in zip(gans[0].networks().values(), gans[1].networks().values()):
        for name, var in net_a.reference_variables().items():
            np.testing.assert_array_equal(var.numpy(), net_b.reference_variables()[name].numpy())
    # every weight and every batch-norm moving statistic was trained, and came back
    changed = [n for n, v in gans[0].generator.reference_variables().items()
               if not np.array_equal(v.numpy(), fresh[n])]
    assert len(changed) == len(fresh)
    assert int(gans[0].g_optimizer.iterations.numpy()) == 3


def test_stage_i_evaluation_writes_a_sheet_per_test_image(workdir):
    log_dir = run(stage_i_main, "train", **{"TRAIN.MAX_EPOCH": 1})
    run(stage_i_main, "eval", **{"TRAIN.FLAG": False,
                                 "TRAIN.PRETRAINED_MODEL": os.path.join(log_dir, "model-3")})
    sheets = sorted(glob.glob(os.path.join(log_dir, "model-3-1real-2samples", "test", "*", "*.jpg")))
    assert len(sheets) == 6 and sheets[0].endswith("test_000_sentence0.jpg")
    assert Image.open(sheets[0]).size == (3 * 64, 64)  # real image + NUM_COPY samples


def _evil_pickle(path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo hacked",))
    with open(path, "wb") as f:
        pickle.dump([1, Evil()], f)


@pytest.mark.parametrize("case", ["no dataset", "no image pickle", "refused pickle",
                                  "no checkpoint", "other embedding size", "eval without checkpoint"])
def test_bad_input_gives_a_one_line_error(workdir, capsys, case):
    overrides = {"TRAIN.MAX_EPOCH": 1}
    expect = None
    if case == "no dataset":
        overrides["DATASET_NAME"] = "birds"
        expect = os.path.join("data", "birds")
    elif case == "no image pickle":
        expect = os.path.join("data", "tiny", "train", "76images.pickle")
        os.remove(expect)
    elif case == "refused pickle":
        expect = os.path.join("data", "tiny", "test", "class_info.pickle")
        _evil_pickle(expect)
    elif case == "no checkpoint":
        overrides["TRAIN.PRETRAINED_MODEL"] = expect = "ckt_logs/nope/model-5"
    elif case == "other embedding size":
        log_dir = run(stage_i_main, "first", **overrides)
        for split in ("train", "test"):  # a dataset with 16-d instead of 24-d embeddings
            path = os.path.join("data", "tiny", split, "char-CNN-RNN-embeddings.pickle")
            safe_pickle.dump(safe_pickle.load(path)[..., :16], path)
        overrides["TRAIN.PRETRAINED_MODEL"] = os.path.join(log_dir, "model-3")
        expect = "takes 24-d text embeddings but data/tiny/train/char-CNN-RNN-embeddings.pickle holds 16-d"
    else:
        overrides["TRAIN.FLAG"] = False
        expect = "TRAIN.PRETRAINED_MODEL"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(stage_i_main, "bad", **overrides)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and expect in err and "Traceback" not in err


def test_nan_stops_training_and_keeps_the_last_good_snapshot(workdir, capsys, monkeypatch):
    # Poison the embeddings of the second batch (iteration 2); a dataset with
    # non-finite embeddings is refused before training, so the batch itself.
    original = Split.batch_arrays
    built = []

    def poisoned(self, draws):
        batch = original(self, draws)
        built.append(1)
        if len(built) == 2:
            batch["embeddings"][:] = np.nan
        return batch

    monkeypatch.setattr(Split, "batch_arrays", poisoned)
    with pytest.raises(SystemExit) as exit_info:
        run(stage_i_main, "nan", **{"TRAIN.SNAPSHOT_INTERVAL": 1})
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    log_dir = glob.glob("ckt_logs/tiny/stageI_*")[0]
    assert "training diverged at iteration 2" in err and "model-1" in err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert os.path.exists(os.path.join(log_dir, "model-1.index"))
    assert not glob.glob(os.path.join(log_dir, "model-2*"))
    reader = tf.train.load_checkpoint(os.path.join(log_dir, "model-1"))
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), name


def test_ctrl_c_saves_a_snapshot_to_resume_from(workdir, monkeypatch, capsys):
    original = callbacks_module.TensorBoardSummaries.on_train_batch_end

    def ctrl_c_at_two(self, batch, logs=None):
        original(self, batch, logs)
        if int(self.gan.counter.numpy()) == 2:  # a real SIGINT, as Ctrl-C sends
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(callbacks_module.TensorBoardSummaries, "on_train_batch_end", ctrl_c_at_two)
    # what the process had: Python's default, or SIG_IGN when started in the background by a shell
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as exit_info:
        run(stage_i_main, "ctrl_c", **{"TRAIN.MAX_EPOCH": 2})
    assert exit_info.value.code == 130
    log_dir = glob.glob("ckt_logs/tiny/stageI_*")[0]
    # the signal came during iteration 2's callbacks: training stops after iteration 3
    assert glob.glob(os.path.join(log_dir, "model-*.index")) == [os.path.join(log_dir, "model-3.index")]
    out = capsys.readouterr().out
    assert "SIGINT received: stopping after iteration 3" in out
    assert f"Stopped by SIGINT at iteration 3; resume with TRAIN.PRETRAINED_MODEL: {log_dir}/model-3" in out
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_command_line_from_the_repository_root_without_pythonpath(workdir):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    write_config("cli.yml", tiny_train_config(**{"TRAIN.MAX_EPOCH": 2}))
    done = subprocess.run([sys.executable, os.path.join(ROOT, "stageI", "run_exp.py"), "--cfg", "cli.yml"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Epoch 2/2 | d_loss" in done.stdout and glob.glob("ckt_logs/tiny/stageI_*/model-6.index")
    # Not a terminal: plain dated progress lines, no bar; a closing line names the outputs.
    assert "\x1b" not in done.stdout and "\b" not in done.stdout and "\r" not in done.stdout
    # each epoch's line numbers the epoch it ends, as the epoch summary below it does
    for epoch, iteration in ((1, 3), (2, 6)):
        assert re.search(rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d epoch {epoch}/2, iteration {iteration}/6, "
                         r"[\d.e-]+ s/iteration, \d:\d\d:\d\d left: d_loss: [\d.]+; g_loss: [\d.]+\n"
                         rf"Epoch {epoch}/2 \| d_loss", done.stdout, re.M), done.stdout
    (run_dir,) = glob.glob("ckt_logs/tiny/stageI_*")
    assert done.stdout.strip().splitlines()[-1] == (
        f"Done: iteration 6 (epoch 2) in {run_dir}: the snapshot model-6, the sample sheets test.jpg, "
        f"train.jpg; TensorBoard: tensorboard --logdir {run_dir}")
    # README's Stage-II step before its Stage-I step: one line saying to train
    # Stage-I first, before the dataset is generated.
    started = time.monotonic()
    command = [sys.executable, os.path.join(ROOT, "stageII", "run_exp.py"), "--cfg",
               os.path.join(ROOT, "stageII", "cfg", "shapes.yml")]
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and time.monotonic() - started < 60
    assert done.stderr == (
        "error: ckt_logs/shapes: no model to start Stage-II from (TRAIN.PRETRAINED_MODEL). Train Stage-I "
        "first: python stageI/run_exp.py --cfg stageI/cfg/shapes.yml; Stage-II then starts from its newest "
        "snapshot.\n")
    # (one line: TensorFlow's start-up lines -- absl banner, INFO notes, and without an
    # NVIDIA driver the cuInit failure -- follow TF_CPP_MIN_LOG_LEVEL)
    assert not os.path.exists(os.path.join("data", "shapes"))


STAGE_II = {"CONFIG_NAME": "stageII", "TRAIN.PRETRAINED_EPOCH": 0}


def test_stage_ii_starts_from_stage_i_trains_resumes_and_evaluates(workdir, capsys):
    stage_i_dir = run(stage_i_main, "s1", **{"TRAIN.MAX_EPOCH": 1})
    start = os.path.join(stage_i_dir, "model-3")
    config = load_config(write_config("s2.yml", tiny_train_config(
        **STAGE_II, **{"TRAIN.PRETRAINED_MODEL": start})))
    # Stage-I trainable weights and the counter come over, not the BN statistics.
    gan = stage_ii.build_gan(config, 24, tf.distribute.get_strategy())
    stage_ii.restore(gan, describe_checkpoint(start), config, load_dataset(config, 4, splits=("train",)))
    first = stage_i.build_gan(config, 24, tf.distribute.get_strategy())
    restore_native(first, start)
    assert int(gan.counter.numpy()) == 3
    for ours, theirs in ((gan.generator, first.generator), (gan.discriminator, first.discriminator)):
        for name, var in ours.reference_variables().items():
            if var.trainable:
                np.testing.assert_array_equal(var.numpy(), theirs.reference_variables()[name].numpy())
            elif name.endswith("/variance"):
                np.testing.assert_array_equal(var.numpy(), np.ones(var.shape))
    capsys.readouterr()
    log_dir = run(stage_ii_main, "s2", **STAGE_II, **{"TRAIN.MAX_EPOCH": 2, "TRAIN.PRETRAINED_MODEL": start,
                                                      "TRAIN.SNAPSHOT_INTERVAL": 2})
    out = capsys.readouterr().out
    assert "Stage-I checkpoint" in out and "Training from iteration 3 (epoch 1)" in out
    assert os.path.exists(os.path.join(log_dir, "model-4.index"))  # mid-epoch
    assert os.path.exists(os.path.join(log_dir, "model-6.index"))
    for name in ("lr_fake_train", "lr_fake_test", "hr_fake_train", "hr_fake_test"):
        width = 64 if name.startswith("lr") else 256
        assert Image.open(os.path.join(log_dir, f"{name}.jpg")).size == (3 * width, 2 * width)
    tags = summary_values(log_dir)
    for tag in ("hr_d_loss", "hr_g_loss", "hr_d_loss_real", "hr_d_loss_wrong", "hr_d_loss_fake",
                "hr_g_loss_fake", "d_loss", "g_loss", "hr_d_learning_rate", "hist_hr_c"):
        assert len(tags[tag]) == 3, tag
    # Resumed from the mid-epoch snapshot, the run ends where the uninterrupted one did, bit for bit.
    middle = os.path.join(log_dir, "model-4")
    resumed = run(stage_ii_main, "s2r", **STAGE_II, **{"TRAIN.MAX_EPOCH": 2, "TRAIN.SNAPSHOT_INTERVAL": 2,
                                                       "TRAIN.PRETRAINED_MODEL": middle})
    out = capsys.readouterr().out
    assert "Stage-II checkpoint" in out and "Training from iteration 4 (epoch 1, batch 1)" in out
    assert glob.glob(os.path.join(resumed, "model-*.index")) == [os.path.join(resumed, "model-6.index")]
    assert_same_variables(os.path.join(log_dir, "model-6"), os.path.join(resumed, "model-6"))
    run(stage_ii_main, "s2e", **STAGE_II, **{"TRAIN.FLAG": False, "TRAIN.NUM_COPY": 9,
                                             "TRAIN.PRETRAINED_MODEL": os.path.join(resumed, "model-6")})
    sheets = glob.glob(os.path.join(resumed, "model-6-1real-9samples", "test", "*", "*_sentence0.jpg"))
    assert len(sheets) == 6
    width, height = Image.open(sheets[0]).size
    # caption strip, two blocks of (Stage-I row + Stage-II row), real image + 8 samples per row
    assert (width, height) == (256 * 10 + 20, 128 + 4 * 256 + 64)


def test_stage_ii_starts_from_a_reference_stage_i_checkpoint(workdir, tmp_path):
    checkpoint = unpack_checkpoint("stageI", "v1", str(tmp_path / "ref"))
    write_tiny_dataset("data", name="tiny32", embedding_dim=32, stage_ii=True)
    config = tiny_config()
    config.DATASET_NAME = "tiny32"
    gan = stage_ii.build_gan(config, 32, tf.distribute.get_strategy())
    info = describe_checkpoint(checkpoint)
    assert stage_ii.restore(gan, info, config, load_dataset(config, 4, splits=("train",))) == info.path
    assert info.stage == 1 and int(gan.counter.numpy()) == 100  # from model_100.ckpt
    reader = tf.train.load_checkpoint(checkpoint)
    for net in (gan.generator, gan.discriminator):
        for name, var in net.reference_variables().items():
            if var.trainable:
                np.testing.assert_array_equal(var.numpy(), reader.get_tensor(name))
            elif name.endswith("/mean"):  # the fixture's BN statistics are not taken
                assert not np.array_equal(var.numpy(), reader.get_tensor(name))
                np.testing.assert_array_equal(var.numpy(), np.zeros(var.shape))

"""Never lose a run, never a bare traceback (issue 11).

* A tiny Stage-I run is killed inside a snapshot write (kill -9), resumed and
  killed mid-epoch (kill -9), resumed and stopped by SIGTERM, and resumed to
  the end: its final weights are bit for bit those of an uninterrupted run,
  at the same final iteration, with the same epoch means.
* Bad inputs of every kind end in one line "error: ..." naming the file or
  key, exit code 2, with nothing written and nothing lost.
* A full disk during a snapshot or a preview names the file and the last
  good snapshot (exit 2); earlier snapshots stay intact.
* Leftovers of interrupted saves are removed (only ours, and not while
  another run holds the folder); every run gets its own log folder; GPU ids
  are checked; TensorFlow's start-up lines follow TF_CPP_MIN_LOG_LEVEL.
"""

import errno
import glob
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from misc.commands import startup
from misc.commands.common import run_main
from misc.config import ConfigError, load_config, parse_gpu_ids
from misc.data import safe_pickle
from misc.data.atomic import WriteError, exclusive_lock
from misc.training import callbacks as callbacks_module
from misc.training import checkpoints, loop
from misc.training.checkpoints import RUN_LOCK, remove_snapshot_leftovers, training_checkpoint
from misc.training.devices import make_strategy
from stageI import experiment as stage_i
from test_run_exp import assert_same_variables, epoch_lines, summary_values
from tiny_dataset import stage_i_main, stage_ii_main, tiny_train_config, write_config, write_tiny_dataset

TESTS = os.path.dirname(os.path.abspath(__file__))
FAULT_SCRIPT = os.path.join(TESTS, "fault_injection.py")
DATA = os.path.join("data", "tiny")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiny_dataset("data")
    return tmp_path


def new_dirs(before):
    return sorted(set(glob.glob("ckt_logs/*/*")) - before)


def run_in_process(main, name, **overrides):
    """main(argv) on a tiny config, as run_exp.py runs it; returns (exit code, log folder)."""
    before = set(glob.glob("ckt_logs/*/*"))
    config = tiny_train_config(**overrides)
    code = 0
    try:
        run_main(main, ["--cfg", write_config(f"{name}.yml", config)])
    except SystemExit as exc:
        code = exc.code
    created = [d for d in new_dirs(before) if os.path.basename(d).startswith(config["CONFIG_NAME"] + "_")]
    return code, (created[-1] if created else None)


def start_training(name, fault, iteration, **overrides):
    """Start training in a subprocess (tests/fault_injection.py) that stops
    at the fault point; ``kill_at_fault`` ends it."""
    cfg = write_config(f"{name}.yml", tiny_train_config(**overrides))
    with open(f"{name}.out", "w") as out:
        return subprocess.Popen([sys.executable, FAULT_SCRIPT, "1", f"{name}.ready", fault, str(iteration),
                                 "--", "--cfg", cfg], stdout=out, stderr=subprocess.STDOUT)


def kill_at_fault(child, name):
    """Wait until the child reached its fault point, kill -9 it; return its
    output."""
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(f"{name}.ready"):
            assert child.poll() is None, open(f"{name}.out").read()[-3000:]
            assert time.monotonic() < deadline, "the fault point was not reached"
            time.sleep(0.05)
    finally:
        child.kill()  # SIGKILL: no handler, no cleanup
        child.wait()
    assert child.returncode == -signal.SIGKILL
    return open(f"{name}.out").read()


def run_until_killed(name, fault, iteration, **overrides):
    """Train in a subprocess until the fault point, kill -9 it; returns its
    log folder and output."""
    before = set(glob.glob("ckt_logs/*/*"))
    out = kill_at_fault(start_training(name, fault, iteration, **overrides), name)
    (log_dir,) = new_dirs(before)
    return log_dir, out


def snapshots(log_dir):
    return sorted(int(os.path.basename(p)[len("model-"):-len(".index")])
                  for p in glob.glob(os.path.join(log_dir, "model-*.index")))


def sigterm_during(monkeypatch, iteration):
    """The process sends itself SIGTERM while the callbacks of ``iteration``
    run (from TensorBoardSummaries, after StopOnSignal has seen that step);
    returns the function that ends this."""
    original = callbacks_module.TensorBoardSummaries.on_train_batch_end

    def signalling(self, batch, logs=None):
        original(self, batch, logs)
        if int(self.gan.counter.numpy()) == iteration:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(callbacks_module.TensorBoardSummaries, "on_train_batch_end", signalling)
    return lambda: monkeypatch.setattr(callbacks_module.TensorBoardSummaries, "on_train_batch_end", original)


# 12 training images, batch 2: 6 iterations per epoch, 12 in all; snapshots every 4
CHAIN = {"TRAIN.BATCH_SIZE": 2, "TRAIN.MAX_EPOCH": 2, "TRAIN.SNAPSHOT_INTERVAL": 4}


def test_killed_resumed_and_preempted_runs_end_bit_identical_to_an_uninterrupted_one(
        workdir, capsys, monkeypatch):
    # 1. kill -9 while snapshot model-8 is being written (model-8_temp/ holds its shards);
    #    meanwhile (on the other core) the uninterrupted run
    child = start_training("killed_in_save", "in-snapshot", 8, CONFIG_NAME="killed", **CHAIN)
    code, full = run_in_process(stage_i_main, "full", **CHAIN)
    assert code == 0 and snapshots(full) == [4, 8, 12]
    full_lines = epoch_lines(capsys.readouterr().out)
    assert len(full_lines) == 2
    kill_at_fault(child, "killed_in_save")
    (first,) = glob.glob("ckt_logs/tiny/killed_*")
    assert snapshots(first) == [4]
    assert os.path.isdir(os.path.join(first, "model-8_temp"))
    assert tf.train.latest_checkpoint(first) == os.path.join(first, "model-4")

    # 2. resume from that folder (its newest complete snapshot, model-4: epoch 0, batch 4),
    #    then kill -9 mid-epoch after iteration 10 (model-8 was saved)
    second, out = run_until_killed("killed_mid_epoch", "after-step", 10, **CHAIN,
                                   **{"TRAIN.PRETRAINED_MODEL": first})
    assert f"Removed {os.path.join(first, 'model-8_temp')}, left by an interrupted snapshot." in out
    assert not os.path.exists(os.path.join(first, "model-8_temp"))
    assert "Training from iteration 4 (epoch 0, batch 4)" in out
    assert epoch_lines(out) == full_lines[:1]  # the resumed epoch's means are the uninterrupted ones
    assert snapshots(second) == [8]

    # 3. resume (model-8: epoch 1, batch 2) and receive SIGTERM during iteration 9
    restore = sigterm_during(monkeypatch, 9)
    code, third = run_in_process(stage_i_main, "preempted", **CHAIN, **{"TRAIN.PRETRAINED_MODEL": second})
    restore()
    out = capsys.readouterr().out
    assert code == 143 and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert "Training from iteration 8 (epoch 1, batch 2)" in out
    assert snapshots(third) == [10]  # stopped after the step in progress, and saved
    assert f"Stopped by SIGTERM at iteration 10; resume with TRAIN.PRETRAINED_MODEL: {third}/model-10" in out

    # 4. resume to the end
    code, last = run_in_process(stage_i_main, "last", **CHAIN,
                                **{"TRAIN.PRETRAINED_MODEL": os.path.join(third, "model-10")})
    out = capsys.readouterr().out
    assert code == 0 and snapshots(last) == [12]  # the same final iteration
    assert "Training from iteration 10 (epoch 1, batch 4)" in out
    assert epoch_lines(out) == full_lines[1:]
    assert [step for step, _ in summary_values(last)["d_loss"]] == [11, 12]
    assert_same_variables(os.path.join(full, "model-12"), os.path.join(last, "model-12"))


# -- bad input: one line, exit 2, nothing written, nothing lost ----------------------

def damage_pickle(split, name, value):
    safe_pickle.dump(value, os.path.join(DATA, split, name))


def replace_in_pickle(split, name, change):
    path = os.path.join(DATA, split, name)
    value = safe_pickle.load(path)
    safe_pickle.dump(change(value), path)


def poison(value):
    def change(embeddings):
        embeddings[2, 3, 1] = value
        return embeddings
    return change


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)


def other_image_size(images):
    images[3] = np.zeros((80, 80, 3), np.uint8)
    return images


def empty_test_split():
    for name, value in (("76images.pickle", []), ("char-CNN-RNN-embeddings.pickle", np.zeros((0, 10, 24))),
                        ("filenames.pickle", []), ("class_info.pickle", [])):
        damage_pickle("test", name, value)


def flip_a_byte(path):
    with open(path, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture(scope="module")
def tiny_gan(tmp_path_factory):
    """A fresh Stage-I trainer of the tiny config."""
    config = load_config(write_config(str(tmp_path_factory.mktemp("cfg") / "c.yml"), tiny_train_config()))
    return stage_i.build_gan(config, 24, tf.distribute.get_strategy())


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_gan, tmp_path_factory):
    """The fresh trainer saved as our runs save."""
    return training_checkpoint(tiny_gan).write(str(tmp_path_factory.mktemp("ckpt") / "model-0"))


def with_checkpoint(damage):
    def setup(workdir, checkpoint):
        os.makedirs("run")
        for path in glob.glob(checkpoint + ".*"):
            with open(path, "rb") as src:
                write_file(os.path.join("run", os.path.basename(path)), src.read())
        damage(os.path.join("run", "model-0.data-00000-of-00001"))
        return {"TRAIN.PRETRAINED_MODEL": os.path.join("run", "model-0")}
    return setup


# (case, setup(workdir, checkpoint) -> config overrides (or a --cfg/--gpu argv list), words the line
# must hold).  Config errors come before the dataset is read, dataset errors before the model is built.
BAD_INPUTS = [
    ("YAML list", lambda w, c: (write_file("bad.yml", b"- TRAIN\n- GAN\n"), ["--cfg", "bad.yml"])[1],
     ["bad.yml", "expected a mapping of config keys", "list"]),
    ("YAML scalar", lambda w, c: (write_file("bad.yml", b"3\n"), ["--cfg", "bad.yml"])[1],
     ["bad.yml", "expected a mapping of config keys", "int"]),
    ("--cfg a directory", lambda w, c: ["--cfg", "data"], ["data: is a directory"]),
    ("--cfg a binary file", lambda w, c: (write_file("bad.yml", bytes(range(256))), ["--cfg", "bad.yml"])[1],
     ["bad.yml: not a text file"]),
    ("batch 0", lambda w, c: {"TRAIN.BATCH_SIZE": 0}, ["TRAIN.BATCH_SIZE is 0; it must be at least 1"]),
    ("batch -4", lambda w, c: {"TRAIN.BATCH_SIZE": -4}, ["TRAIN.BATCH_SIZE is -4; it must be at least 1"]),
    ("batch > images", lambda w, c: {"TRAIN.BATCH_SIZE": 16},
     ["TRAIN.BATCH_SIZE 16 is larger than the 12 images of the train split in data/tiny"]),
    ("network type", lambda w, c: {"GAN.NETWORK_TYPE": "bogus"},
     ["GAN.NETWORK_TYPE is 'bogus'; use 'default' or 'simple'"]),
    ("GF_DIM 0", lambda w, c: {"GAN.GF_DIM": 0}, ["GAN.GF_DIM is 0"]),
    ("DF_DIM -1", lambda w, c: {"GAN.DF_DIM": -1}, ["GAN.DF_DIM is -1"]),
    ("EMBEDDING_DIM 0", lambda w, c: {"GAN.EMBEDDING_DIM": 0}, ["GAN.EMBEDDING_DIM is 0"]),
    ("Z_DIM 0", lambda w, c: {"Z_DIM": 0}, ["Z_DIM is 0"]),
    ("NUM_COPY 0", lambda w, c: {"TRAIN.NUM_COPY": 0}, ["TRAIN.NUM_COPY is 0"]),
    ("NUM_EMBEDDING 0", lambda w, c: {"TRAIN.NUM_EMBEDDING": 0}, ["TRAIN.NUM_EMBEDDING is 0"]),
    ("SEED -1", lambda w, c: {"SEED": -1}, ["SEED is -1; it must be between 0 and 4294967295"]),
    ("SEED 2**32", lambda w, c: {"SEED": 2**32}, ["SEED is 4294967296"]),
    ("NaN rate", lambda w, c: {"TRAIN.GENERATOR_LR": math.nan}, ["TRAIN.GENERATOR_LR is nan"]),
    ("--gpu -1", lambda w, c: ["--gpu=-1"], ["--gpu '-1': give GPU ids"]),
    ("--gpu x", lambda w, c: ["--gpu", "first"], ["--gpu 'first': give GPU ids"]),
    ("images of two sizes", lambda w, c: replace_in_pickle("train", "76images.pickle", other_image_size),
     ["data/tiny/train/76images.pickle: image 3 is uint8 (80, 80, 3)"]),
    ("float images", lambda w, c: damage_pickle("train", "76images.pickle", np.zeros((12, 76, 76, 3))),
     ["data/tiny/train/76images.pickle", "got float64"]),
    ("string embeddings", lambda w, c: damage_pickle("train", "char-CNN-RNN-embeddings.pickle", ["a"] * 12),
     ["data/tiny/train/char-CNN-RNN-embeddings.pickle: holds <U1 values, not numbers"]),
    ("ragged embeddings", lambda w, c: damage_pickle("train", "char-CNN-RNN-embeddings.pickle",
                                                     [[1.0, 2.0]] * 11 + [[1.0]]),
     ["data/tiny/train/char-CNN-RNN-embeddings.pickle: not an array of numbers"]),
    ("embeddings of rank 1", lambda w, c: damage_pickle("train", "char-CNN-RNN-embeddings.pickle",
                                                        np.zeros(12, np.float32)),
     ["data/tiny/train/char-CNN-RNN-embeddings.pickle: has shape (12,)"]),
    ("NaN train embeddings", lambda w, c: replace_in_pickle("train", "char-CNN-RNN-embeddings.pickle",
                                                            poison(np.nan)),
     ["data/tiny/train/char-CNN-RNN-embeddings.pickle: the embeddings of 1 image(s) contain NaN",
      "image 2 (class_3/train_002)"]),
    ("infinite test embeddings", lambda w, c: replace_in_pickle("test", "char-CNN-RNN-embeddings.pickle",
                                                                poison(np.inf)),
     ["data/tiny/test/char-CNN-RNN-embeddings.pickle: the embeddings of 1 image(s) contain NaN"]),
    ("class ids of strings", lambda w, c: damage_pickle("train", "class_info.pickle", ["a"] * 12),
     ["data/tiny/train/class_info.pickle: entry 0 is 'a'; expected integer class ids"]),
    ("class ids None", lambda w, c: damage_pickle("test", "class_info.pickle", None),
     ["data/tiny/test/class_info.pickle: holds a NoneType"]),
    ("empty test split", lambda w, c: empty_test_split(), ["data/tiny/test/76images.pickle: has no images"]),
    ("absolute file name", lambda w, c: replace_in_pickle("train", "filenames.pickle",
                                                          lambda f: f[:5] + ["/etc/passwd"] + f[6:]),
     ["data/tiny/train/filenames.pickle: entry 5 ('/etc/passwd') is an absolute path"]),
    ("'..' in a file name", lambda w, c: replace_in_pickle("test", "filenames.pickle",
                                                           lambda f: ["class_1/../../../x"] + f[1:]),
     ["data/tiny/test/filenames.pickle: entry 0 ('class_1/../../../x') contains a '..' component"]),
    ("NUL in a file name", lambda w, c: replace_in_pickle("test", "filenames.pickle",
                                                          lambda f: ["a\0b"] + f[1:]),
     ["data/tiny/test/filenames.pickle: entry 0", "contains a NUL byte"]),
    ("missing training caption, NUM_EMBEDDING 1",
     lambda w, c: (os.remove(os.path.join(DATA, "text_c10", "class_2", "train_001.txt")),
                   {"TRAIN.NUM_EMBEDDING": 1})[1],
     ["data/tiny/text_c10/class_2/train_001.txt: caption file missing (1 of the 12 train images"]),
    ("missing test caption",
     lambda w, c: os.remove(os.path.join(DATA, "text_c10", "class_1", "test_003.txt")),
     ["data/tiny/text_c10/class_1/test_003.txt: caption file missing (1 of the 6 test images"]),
    ("no captions folder", lambda w, c: os.rename(os.path.join(DATA, "text_c10"), "text_c10_elsewhere"),
     ["data/tiny/text_c10: caption folder missing"]),
    ("truncated checkpoint data", with_checkpoint(lambda p: os.truncate(p, 1000)),
     ["run/model-0.data-00000-of-00001: checkpoint data truncated or corrupted"]),
    ("missing checkpoint data", with_checkpoint(os.remove),
     ["run/model-0.data-*: checkpoint data missing"]),
    ("corrupted checkpoint data", with_checkpoint(flip_a_byte),
     ["run/model-0.data-00000-of-00001: checkpoint data truncated or corrupted", "Checksum"]),
]


def file_states(root):
    states = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            states[path] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
    return states


@pytest.mark.parametrize("case, setup, words", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_nothing_written(workdir, capsys, tiny_checkpoint, case, setup,
                                                          words):
    given = setup(workdir, tiny_checkpoint)
    if isinstance(given, list):
        argv = given if "--cfg" in given else ["--cfg", write_config("run.yml", tiny_train_config())] + given
    else:
        argv = ["--cfg", write_config("run.yml", tiny_train_config(**(given or {})))]
    before = file_states(workdir)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(stage_i_main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    assert file_states(workdir) == before  # nothing written, nothing changed or lost
    assert not os.path.exists("ckt_logs")


def test_stage_ii_limits_and_evaluation_inputs_are_checked_first(workdir, capsys, tiny_checkpoint):
    cases = [
        (stage_ii_main, {"GAN.GF_DIM": 2}, "GAN.GF_DIM is 2; Stage-II needs at least 4"),
        (stage_ii_main, {"GAN.NETWORK_TYPE": "simple"}, "Stage-II exists only for 'default'"),
        # evaluation writes <checkpoint>-1real-2samples/test/<file name>_sentence0.jpg: names are checked
        (stage_i_main, {"TRAIN.FLAG": False, "TRAIN.PRETRAINED_MODEL": tiny_checkpoint},
         "data/tiny/test/filenames.pickle: entry 0 ('/tmp/outside') is an absolute path"),
    ]
    replace_in_pickle("test", "filenames.pickle", lambda f: ["/tmp/outside"] + f[1:])
    before = file_states(workdir)
    for main, overrides, words in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            run_main(main, ["--cfg", write_config("x.yml", tiny_train_config(**overrides))])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and words in err, err
        os.remove("x.yml")
    assert file_states(workdir) == before
    assert not glob.glob(tiny_checkpoint + "-1real*")


# -- full disk ------------------------------------------------------------------

def test_a_full_disk_during_a_snapshot_names_it_and_keeps_the_earlier_ones(tiny_gan, tmp_path, monkeypatch):
    from tensorflow.python.ops import gen_io_ops

    merge = gen_io_ops.merge_v2_checkpoints

    def disk_full_at_two(prefixes, destination, *args, **kwargs):
        if os.path.basename(destination.numpy().decode()) == "model-2":  # shards written, then ENOSPC
            raise tf.errors.ResourceExhaustedError(None, None, f"{destination.numpy().decode()}.index; "
                                                               "No space left on device")
        return merge(prefixes, destination, *args, **kwargs)

    monkeypatch.setattr(gen_io_ops, "merge_v2_checkpoints", disk_full_at_two)
    folder = str(tmp_path / "run")
    snapshotter = checkpoints.Snapshotter(tiny_gan, folder)
    try:
        tiny_gan.counter.assign(1)
        first = snapshotter.save()
        tiny_gan.counter.assign(2)
        with pytest.raises(WriteError) as error:
            snapshotter.save()
    finally:
        tiny_gan.counter.assign(0)
    message = str(error.value)
    assert message.startswith(f"{folder}/model-2: could not write the snapshot ({folder}/model-2.index; "
                              "No space left on device); earlier snapshots are intact.")
    assert snapshotter.resume_hint(" once that is fixed") == (
        f"The last good snapshot is {first}; resume from it once that is fixed with "
        f"TRAIN.PRETRAINED_MODEL: {first}.")  # what the driver adds (see the preview case below)
    assert tf.train.latest_checkpoint(folder) == first == os.path.join(folder, "model-1")
    assert os.path.isdir(os.path.join(folder, "model-2_temp")) is False  # its partial shards removed
    assert not checkpoints.snapshot_leftovers(folder)
    checkpoints.verify_checkpoint_data(first)  # intact


def test_a_full_disk_during_a_preview_names_the_file_and_the_last_good_snapshot(workdir, capsys, monkeypatch):
    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", no_space)
    code, log_dir = run_in_process(stage_i_main, "full_disk", **{"TRAIN.MAX_EPOCH": 2})
    err = capsys.readouterr().err
    last = os.path.join(log_dir, "model-3")  # saved at the end of epoch 0, before its preview
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {log_dir}/train.jpg: could not write it (No space left on device); ")
    assert f"The last good snapshot is {last}; resume from it once that is fixed" in err
    assert snapshots(log_dir) == [3] and not glob.glob(os.path.join(log_dir, ".tmp-*"))


# -- leftovers, log folders, GPU ids, start-up lines ------------------------------

def test_only_our_leftovers_are_removed_and_not_while_another_run_holds_the_folder(tmp_path):
    run = tmp_path / "stageI_2024"
    (run / "model-8_temp").mkdir(parents=True)
    (run / "model-8_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half")
    leftovers = [run / "model-8_temp", run / ("checkpoint.tmp" + "0123456789abcdef" * 2), run / ".tmp-x1.jpg"]
    for path in leftovers[1:]:
        path.write_text("partial")
    kept = ["model-4.index", "model-4.data-00000-of-00001", "checkpoint", "train.jpg", "model-8_temperature",
            "checkpoint.tmp", "notes_temp"]
    for name in kept:
        (run / name).write_text("ours")
    with exclusive_lock(str(run / RUN_LOCK)):  # another run is writing there
        assert remove_snapshot_leftovers(str(run)) == []
        assert all(p.exists() for p in leftovers)
    assert sorted(remove_snapshot_leftovers(str(run))) == sorted(str(p) for p in leftovers)
    assert sorted(os.listdir(run)) == sorted(kept + [RUN_LOCK])


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    import datetime

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2024, 5, 17, 12, 0, 0)

    monkeypatch.setattr(loop.datetime, "datetime", Frozen)
    config = load_config()
    config.CONFIG_NAME = "stageI"
    folders = [loop.new_log_dir(config, root=str(tmp_path)) for _ in range(3)]
    base = os.path.join(str(tmp_path), "birds", "stageI_2024_05_17_12_00_00")
    assert folders == [base, base + "-2", base + "-3"] and all(os.path.isdir(f) for f in folders)


def test_gpu_ids_are_checked(monkeypatch, capsys):
    for text in ("-1", "x", "0,0", ""):
        with pytest.raises(ConfigError, match="give GPU ids"):
            parse_gpu_ids(text)
    assert parse_gpu_ids("1,0") == [1, 0]
    two_gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(2)]
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: two_gpus)
    with pytest.raises(ConfigError, match=r"--gpu 0,2: GPU 2 does not exist; 2 GPU\(s\) are visible"):
        make_strategy("0,2")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    messages = []
    assert make_strategy("0", log=messages.append)[0] is tf.distribute.get_strategy()
    assert messages[0].startswith("warning: --gpu 0: no GPU is visible to TensorFlow")


def test_start_up_lines_follow_the_log_level():
    lines = [
        b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        b"I0000 00:00:1796244009.620420   29171 port.cc:153] oneDNN custom operations are on.\n",
        b"I0000 00:00:1796244009.620860   29171 cudart_stub.cc:31] Could not find cuda drivers on your "
        b"machine, GPU will not be used.\n",
        b"I0000 00:00:1796244009.7   29171 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.\n",
        b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.\n",
        b"W0000 00:00:1796244009.8   29171 some.cc:1] a warning\n",
        b"E0000 00:00:1796244017.576345   29171 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
        b"CUDA error\n",
        b"E0000 00:00:1796244017.6   29171 io.cc:9] a real error\n",
        b"Traceback (most recent call last):\n",
        b"To enable the following instructions: (not after a CPU note: kept)\n",
    ]
    kept = list(startup.kept_lines(lines, level=2, no_driver=True))
    assert kept == lines[7:]
    assert list(startup.kept_lines(lines, level=2, no_driver=False)) == [lines[6]] + lines[7:]
    assert list(startup.kept_lines(lines, level=0, no_driver=True)) == lines
    assert list(startup.kept_lines(lines, level=1, no_driver=False)) == [lines[5], lines[6]] + lines[7:]


def test_config_values_are_checked_where_the_config_is_read(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump({"TRAIN": {"NUM_EMBEDDING": 0}}))
    with pytest.raises(ConfigError, match=f"{path}: TRAIN.NUM_EMBEDDING is 0; it must be at least 1 "
                                          r"\(captions averaged per training image\)"):
        load_config(str(path))
    assert load_config().SEED == 0  # the defaults are valid

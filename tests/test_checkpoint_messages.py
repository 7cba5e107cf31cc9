"""Checkpoint messages point at the real cause (issue 24): the .index or
.data file of a checkpoint given instead of its prefix; a 'checkpoint' state
file naming a snapshot whose files are gone (and which ones are there); a
GAN.NETWORK_TYPE hint only when the network types really differ; a tensor
that claims more bytes than the data files hold, refused before it is read;
the option the path came from, as the user typed it."""

import os

import numpy as np
import pytest
import tensorflow as tf

from golden_support import TEXT_DIM, tiny_config, unpack_checkpoint
from misc.config import CheckpointError
from misc.evaluation.sampling import load_generator
from misc.reference.importer import import_reference_checkpoint
from misc.training.checkpoints import describe_checkpoint, resolve, training_checkpoint
from stageI.model import build_stage_i
from stageI.trainer import StageIGAN
from stageII.model import build_stage_ii
from stageII.trainer import StageIIGAN
from test_reference_import import write_tf1_checkpoint


def one_line(call, *args, **kwargs):
    with pytest.raises(CheckpointError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def native_run(tmp_path_factory):
    """A run folder with snapshots model-4 and model-8 of a tiny Stage-I model."""
    config = tiny_config()
    gan = StageIGAN.from_config_tree(config, *build_stage_i(config, TEXT_DIM))
    folder = tmp_path_factory.mktemp("run")
    manager = tf.train.CheckpointManager(training_checkpoint(gan), str(folder), max_to_keep=5,
                                         checkpoint_name="model")
    for counter in (4, 8):
        manager.save(checkpoint_number=counter)
    return folder


def test_a_file_of_the_checkpoint_is_named_as_such(native_run):
    prefix = str(native_run / "model-8")
    for part in (".index", ".data-00000-of-00001"):
        message = one_line(resolve, prefix + part, "--checkpoint")
        assert message.startswith(f"{prefix}{part}: one of the files of the checkpoint {prefix}")
        assert f"give --checkpoint the checkpoint's prefix {prefix} (without {part})" in message


def test_a_state_file_naming_a_deleted_snapshot_says_so(native_run, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for name in os.listdir(native_run):
        if not name.startswith("model-8"):
            (folder / name).write_bytes((native_run / name).read_bytes())
    message = one_line(resolve, str(folder), "--checkpoint")
    assert "its 'checkpoint' state file names model-8 as the newest snapshot" in message
    assert f"{folder / 'model-8'}.index is missing" in message
    assert f"the folder still holds model-4: point --checkpoint at {folder / 'model-4'}" in message
    # a log folder above it says the same, rather than "no 'checkpoint' state file"
    assert "names model-8 as the newest snapshot" in one_line(resolve, str(tmp_path), "--checkpoint")
    (folder / "checkpoint").write_text("this is { not a state file")
    assert "not a readable 'checkpoint' state file" in one_line(resolve, str(folder), "--checkpoint")
    os.remove(folder / "checkpoint")
    message = one_line(resolve, str(folder), "TEST.PRETRAINED_MODEL of demo.yml")
    assert "no 'checkpoint' state file" in message and "TEST.PRETRAINED_MODEL of demo.yml" in message


def reference_tensors(stage="stageI"):
    reader = tf.train.load_checkpoint(unpack_checkpoint(stage, "v1", str(reference_tensors.dir)))
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}


def test_the_network_type_is_blamed_only_when_it_differs(tmp_path):
    reference_tensors.dir = tmp_path / "ref"
    tensors = reference_tensors()
    incomplete = {n: v for n, v in tensors.items() if n != "g_net/custom_conv2d_1/custom_conv2d_1/w"}
    path = write_tf1_checkpoint(str(tmp_path / "incomplete" / "model_100.ckpt"), incomplete)
    config = tiny_config()
    message = one_line(load_generator, config, path)
    assert "are not in the checkpoint, e.g. g_net/custom_conv2d_1/custom_conv2d_1/w" in message
    assert "the checkpoint lacks them" in message and "NETWORK_TYPE" not in message

    # a 'simple' Stage-I checkpoint: Stage-I with the 'default' networks is told to switch ...
    simple_config = tiny_config()
    simple_config.GAN.NETWORK_TYPE = "simple"
    source = StageIGAN.from_config_tree(simple_config, *build_stage_i(simple_config, TEXT_DIM))
    simple = {n: v.numpy() for net in source.networks().values()
              for n, v in net.reference_variables().items()}
    simple_path = write_tf1_checkpoint(str(tmp_path / "simple" / "model_3.ckpt"), simple)
    default_stage_i = StageIGAN.from_config_tree(config, *build_stage_i(config, TEXT_DIM))
    message = one_line(import_reference_checkpoint, default_stage_i, simple_path, network_type="simple")
    assert "holds a 'simple' Stage-I network and the config builds a 'default' one" in message
    assert "set GAN.NETWORK_TYPE: simple in the config" in message
    # ... Stage-II, which exists only on the 'default' network, is not
    stage_ii = StageIIGAN.from_config_tree(config, *build_stage_ii(config, TEXT_DIM))
    message = one_line(import_reference_checkpoint, stage_ii, simple_path, trainable_only=True,
                       scopes=("g_net", "d_net"), optimizer_state=False, network_type="simple")
    assert message.startswith(f"{simple_path}: holds a 'simple' Stage-I network; Stage-II builds on the "
                              "'default' Stage-I network only")
    assert "set GAN.NETWORK_TYPE" not in message


def test_a_tensor_larger_than_the_data_is_refused_before_it_is_read(native_run, tmp_path):
    prefix = str(tmp_path / "big" / "model.ckpt")
    write_tf1_checkpoint(prefix, {"g_net/custom_fully_connected/Linear/Matrix": np.ones((500, 500),
                                                                                          np.float32)})
    data = prefix + ".data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(1000)
    message = one_line(describe_checkpoint, prefix)
    assert message.startswith(f"{data}: checkpoint damaged: g_net/custom_fully_connected/Linear/Matrix has "
                              "the shape [500, 500] (1,000,000 bytes), more than the 1,000 bytes of its data")

"""Config tree and YAML merging by the reference's rules."""

import os

import pytest

from misc.config import ConfigError, cfg_from_file, default_config, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(tmp_path, text):
    path = tmp_path / "c.yml"
    path.write_text(text)
    return str(path)


def test_defaults_are_the_reference_tree():
    c = default_config()
    assert (c.DATASET_NAME, c.EMBEDDING_TYPE, c.GPU_ID, c.Z_DIM) == ("birds", "cnn-rnn", 0, 100)
    assert (c.TEST.LR_IMSIZE, c.TEST.HR_IMSIZE, c.TEST.NUM_COPY, c.TEST.BATCH_SIZE) == (64, 256, 16, 64)
    t = c.TRAIN
    assert (t.FLAG, t.BATCH_SIZE, t.NUM_COPY, t.MAX_EPOCH, t.SNAPSHOT_INTERVAL) == (True, 64, 4, 600, 2000)
    assert (t.PRETRAINED_EPOCH, t.DISCRIMINATOR_LR, t.GENERATOR_LR, t.LR_DECAY_EPOCH) == (600, 2e-4, 2e-4, 50)
    assert (t.NUM_EMBEDDING, t.COND_AUGMENTATION, t.B_WRONG, t.COEFF.KL) == (4, True, True, 2.0)
    assert (t.FINETUNE_LR, t.FT_LR_RETIO) == (False, 0.1)
    assert (c.GAN.EMBEDDING_DIM, c.GAN.DF_DIM, c.GAN.GF_DIM, c.GAN.NETWORK_TYPE) == (128, 64, 128, "default")


@pytest.mark.parametrize("name", ["stageI/cfg/birds.yml", "stageI/cfg/flowers.yml"])
def test_reference_configs_load(name):
    c = load_config(os.path.join(ROOT, name))
    assert c.CONFIG_NAME == "stageI" and c.TRAIN.LR_DECAY_EPOCH == 50
    assert c.DATASET_NAME == os.path.basename(name)[:-4]


def test_merge_overrides_nested_keys_and_keeps_the_rest(tmp_path):
    c = load_config(write(tmp_path, "TRAIN:\n  COEFF:\n    KL: 1.0\n  MAX_EPOCH: 3\nZ_DIM: 20\n"))
    assert (c.TRAIN.COEFF.KL, c.TRAIN.MAX_EPOCH, c.Z_DIM, c.TRAIN.BATCH_SIZE) == (1.0, 3, 20, 64)
    assert default_config().Z_DIM == 100  # fresh trees are independent


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "TRAIN:\n  COEFF:\n    KLL: 1.0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "TRAIN.COEFF.KLL" in str(err.value) and path in str(err.value)


def test_type_mismatch_names_key_expected_and_given(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "TRAIN:\n  MAX_EPOCH: '600'\n"))
    msg = str(err.value)
    assert "TRAIN.MAX_EPOCH" in msg and "expects int" in msg and "got str" in msg
    with pytest.raises(ConfigError, match="expects float, got int.*2.0"):
        load_config(write(tmp_path, "TRAIN:\n  COEFF:\n    KL: 2\n"))
    with pytest.raises(ConfigError, match="2.0e-4"):  # YAML reads 2e-4 as a string
        load_config(write(tmp_path, "TRAIN:\n  GENERATOR_LR: 2e-4\n"))
    with pytest.raises(ConfigError, match="section"):
        load_config(write(tmp_path, "TRAIN: 3\n"))


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "TRAIN: [\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yml"))


def test_reference_api_merges_into_the_given_tree(tmp_path):
    tree = default_config()
    cfg_from_file(write(tmp_path, "GAN:\n  NETWORK_TYPE: simple\n"), tree)
    assert tree.GAN.NETWORK_TYPE == "simple"


def test_the_stage_ii_configs_continue_their_stage_i_configs():
    """README's path, Stage-I then Stage-II on the same data: each Stage-II
    config starts where its Stage-I config stops (PRETRAINED_EPOCH is
    Stage-I's MAX_EPOCH: the learning rates decay after it) and trains on
    (MAX_EPOCH above it; the epochs count on from Stage-I's counter), with
    the dataset, text embeddings and networks of its Stage-I config."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    names = sorted(os.listdir(os.path.join(root, "stageII", "cfg")))
    assert "shapes.yml" in names
    for name in names:
        stage_i = load_config(os.path.join(root, "stageI", "cfg", name))
        stage_ii = load_config(os.path.join(root, "stageII", "cfg", name))
        assert stage_ii.TRAIN.PRETRAINED_EPOCH == stage_i.TRAIN.MAX_EPOCH, name
        assert stage_ii.TRAIN.MAX_EPOCH > stage_ii.TRAIN.PRETRAINED_EPOCH, name
        for key in ("DATASET_NAME", "EMBEDDING_TYPE", "Z_DIM"):
            assert stage_ii[key] == stage_i[key], (name, key)
        for key in ("EMBEDDING_DIM", "GF_DIM", "DF_DIM", "NETWORK_TYPE"):
            assert stage_ii.GAN[key] == stage_i.GAN[key], (name, key)

"""README, "Your own data": its commands, as written there, end to end on a
tiny folder of captioned pictures (the configs the first command writes are
made tiny before the others read them); and the bundled encoder through
demo/embed.py."""

import glob
import os
import re
import shlex
import shutil

import numpy as np
import yaml

from captioned_folder import write_captioned_folder
from misc.commands import build_dataset, demo, embed, train_text_encoder
from misc.commands.common import run_main
from misc.config import load_config
from misc.data import safe_pickle, shapes
from misc.data.datasets import caption_file, load_dataset
from misc.evaluation.caption_embeddings import load_encoder
from misc.nets.char_cnn_rnn import embed_captions
from tiny_dataset import stage_i_main, stage_ii_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {"data/build_dataset.py": build_dataset.main,
            "misc.commands.train_text_encoder": train_text_encoder.main, "demo/embed.py": embed.main,
            "stageI/run_exp.py": stage_i_main, "stageII/run_exp.py": stage_ii_main, "demo/demo.py": demo.main}
GAN = {"EMBEDDING_DIM": 8, "DF_DIM": 4, "GF_DIM": 8}
TINY = {
    "text_encoder.yml": {"ENCODER": {"CONV_CHANNELS": [8, 8, 8], "EMBEDDING_DIM": 16},
                         "IMAGE": {"CHANNELS": [4, 8]}, "TRAIN": {"MAX_EPOCH": 2}},
    "stageI.yml": {"Z_DIM": 8, "GAN": GAN, "TRAIN": {"MAX_EPOCH": 1, "NUM_COPY": 1, "SNAPSHOT_INTERVAL": 0}},
    "stageII.yml": {"Z_DIM": 8, "GAN": GAN, "TEST": {"NUM_COPY": 1},
                    "TRAIN": {"MAX_EPOCH": 2, "PRETRAINED_EPOCH": 1, "NUM_COPY": 1, "SNAPSHOT_INTERVAL": 0}},
}


def readme_blocks(section):
    """The bash blocks of a README section, each as a list of commands."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", body, re.S):
        lines = block.replace("\\\n", " ").splitlines()
        blocks.append([part.strip() for line in lines for part in line.split("&&") if part.strip()])
    return blocks


def run(command):
    """A README command line, run in-process; fails the test unless it ends well."""
    words = shlex.split(command)
    if words[1] == "-m":
        words = words[1:]
    assert words[0] in ("python", "-m") and words[1] in COMMANDS, command
    run_main(COMMANDS[words[1]], words[2:])


def shrink(config_path, overrides):
    with open(config_path) as f:
        config = yaml.safe_load(f)
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f)


def test_the_readme_commands_from_a_folder_to_samples(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # 4 classes of 2 pictures: 3 classes to train on (one batch of 6 pictures), 1 to test
    write_captioned_folder("my_pictures", classes=("red", "green", "blue", "yellow"), per_class=2, size=40,
                           captions=3)
    (block,) = readme_blocks("Your own data")
    build, train_encoder, embed_dataset, *train_gan, draw = block[:6]  # then export and separation
    assert train_gan[0].startswith("python stageI/") and train_gan[1].startswith("python stageII/")
    assert draw.startswith("python demo/demo.py")
    run(build)
    for name, overrides in TINY.items():
        shrink(os.path.join("data", "mydata", name), overrides)
    run(train_encoder)
    (encoder_file,) = glob.glob("ckt_logs/text_encoders/mydata/text_encoder_*/text_encoder.keras")
    run(embed_dataset)
    encoder, _ = load_encoder(encoder_file)
    for split in ("train", "test"):
        names = safe_pickle.load(os.path.join("data", "mydata", split, "filenames.pickle"))
        ids = safe_pickle.load(os.path.join("data", "mydata", split, "class_info.pickle"))
        embeddings = safe_pickle.load(os.path.join("data", "mydata", split, "char-CNN-RNN-embeddings.pickle"))
        assert embeddings.shape == (len(names), 3, 16)
        with open(caption_file(os.path.join("data", "mydata"), names[0], ids[0]), "rb") as f:
            captions = f.read().splitlines()
        np.testing.assert_allclose(embeddings[0], embed_captions(encoder, captions), rtol=1e-6, atol=1e-6)
    dataset = load_dataset(load_config(os.path.join("data", "mydata", "stageII.yml")), hr_lr_ratio=4)
    assert dataset.train.num_examples == 6 and dataset.test.num_examples == 2
    for command in train_gan:
        run(command)
    assert glob.glob("ckt_logs/mydata/stageI_*/model-1.index")
    assert glob.glob("ckt_logs/mydata/stageII_*/model-2.index")  # 1 iteration an epoch, to epoch 2
    run(draw.replace("--caption", "--out samples --caption"))
    out = capsys.readouterr().out
    assert "char-CNN-RNN: 3 temporal convolutions (70 -> 8 -> 8 -> 8)" in out
    assert os.path.isfile(os.path.join("samples", "sentence0.jpg"))


def test_the_bundled_encoder_through_embed_gives_the_shapes_embeddings(tmp_path, capsys):
    shapes.generate(str(tmp_path / "shapes"), num_train=6, num_test=3, hr=False, log=lambda *a: None)
    shutil.copytree(tmp_path / "shapes", tmp_path / "again")
    run_main(embed.main, ["--text-encoder", "hash", "--dataset", str(tmp_path / "again"),
                                     "--force"])
    assert "the bundled hash encoder" in capsys.readouterr().out
    for split in ("train", "test"):
        name = os.path.join(split, "char-CNN-RNN-embeddings.pickle")
        np.testing.assert_array_equal(safe_pickle.load(str(tmp_path / "again" / name)),
                                      safe_pickle.load(str(tmp_path / "shapes" / name)))

"""The caption-consistency evaluator of the shapes dataset."""

import copy
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from misc.commands.evaluate_shapes import consistency, evaluate, format_table, main
from misc.commands.stages import build_stage_gan
from misc.config import ConfigError, load_config
from misc.data.datasets import load_dataset
from misc.data.shapes import QUICK_START, RECIPES, generate
from misc.evaluation.shapes_attributes import caption_attributes, chance_levels, measure
from misc.training.checkpoints import training_checkpoint

RECIPE = RECIPES[QUICK_START]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate(str(root / "shapes"), num_train=30, num_test=40, seed=3, log=lambda *a: None)
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config(os.path.join(repository, "stageI", "cfg", "shapes.yml"))
    config.DATA_DIR = str(root)
    config.TRAIN.BATCH_SIZE = 8
    return config


def test_captions_state_what_the_pictures_show(shapes):
    test = load_dataset(shapes, 1, splits=("test",)).test
    with open(os.path.join(shapes.DATA_DIR, "shapes", "test", "attributes.json")) as f:
        truth = json.load(f)
    stated_counts = {}
    for index, attributes in enumerate(truth):
        for caption in test.captions(index):
            stated = caption_attributes(caption)
            assert {"shape", "color"} <= set(stated), caption
            for key, value in stated.items():
                assert value == attributes[key], caption
                stated_counts[key] = stated_counts.get(key, 0) + 1
    assert stated_counts["size"] > 200 and stated_counts["background"] > 200  # of 400 captions
    assert stated_counts["shape"] == stated_counts["color"] == 400


def test_real_images_score_near_100_and_noise_near_chance(shapes):
    test = load_dataset(shapes, 1, splits=("test",)).test
    ids = np.arange(test.num_examples)
    stated = [caption_attributes(c) for i in ids for c in test.captions(i)[:3]]
    real = measure(np.repeat(test.center_crops(ids), 3, axis=0), RECIPE)
    for attribute, (accuracy, count) in consistency(real, stated).items():
        assert count > 0 and accuracy >= 0.95, attribute
    noise = np.random.default_rng(0).integers(0, 256, (120, 64, 64, 3), dtype=np.uint8)
    chance = chance_levels(recipe=RECIPE)
    assert chance == {"shape": 1 / 5, "color": 1 / 6, "background": 1 / 4, "size": 1 / 3}
    for attribute, (accuracy, _) in consistency(measure(noise, RECIPE), stated).items():
        assert accuracy < chance[attribute] + 0.2, attribute


def write_checkpoint(config, stage, path):
    gan = build_stage_gan(config, stage, 1024, tf.distribute.get_strategy())
    return training_checkpoint(gan).write(str(path))


def test_command_on_a_checkpoint(shapes, tmp_path, capsys):
    prefix = write_checkpoint(shapes, 1, tmp_path / "model-0")
    config_path = tmp_path / "shapes.yml"
    gan_dims = shapes.GAN
    config_path.write_text(
        f"DATASET_NAME: 'shapes'\nDATA_DIR: '{shapes.DATA_DIR}'\nZ_DIM: {shapes.Z_DIM}\n"
        f"GAN:\n  EMBEDDING_DIM: {gan_dims.EMBEDDING_DIM}\n  DF_DIM: {gan_dims.DF_DIM}\n"
        f"  GF_DIM: {gan_dims.GF_DIM}\n")
    result = main(["--cfg", str(config_path), "--checkpoint", prefix, "--num", "10", "--copies", "2",
                   "--json", str(tmp_path / "out.json")])
    assert result["captions"] == 10 and result["stage"] == 1
    assert set(result["scores"]) == {"Stage-I samples", "real test images", "uniform noise"}
    assert set(result["edge_width"]) == set(result["scores"])
    assert result["scores"]["real test images"]["color"][0] == 1.0
    assert result["scores"]["Stage-I samples"]["color"][1] == 20  # every sample's caption names it
    # Real 64 px crops: edges about a pixel wide at 64 px, four at the 256 px unit.
    assert 2.0 < result["edge_width"]["real test images"] < 5.0
    assert json.load(open(tmp_path / "out.json"))["copies"] == 2
    table = capsys.readouterr().out
    assert "chance" in table and "real test images" in table and format_table(result) in table
    assert "edge width" in table


def test_a_stage_ii_model_gets_rows_at_both_resolutions(shapes, tmp_path):
    prefix = write_checkpoint(shapes, 2, tmp_path / "model-0")
    result = evaluate(shapes, prefix, num=4, copies=1)
    assert result["stage"] == 2
    assert list(result["scores"]) == ["Stage-I samples", "Stage-II samples", "real test images",
                                      "real test images 256 px", "uniform noise"]
    real = result["scores"]["real test images 256 px"]
    assert all(real[a][0] == 1.0 for a in ("shape", "color", "background"))
    # The same real scenes: four times the pixels, about the same edge in 256 px units.
    assert result["edge_width"]["real test images 256 px"] < 1.5
    assert result["edge_width"]["real test images"] > 2.0


def test_only_bundled_datasets(shapes, tmp_path, capsys):
    birds = copy.deepcopy(shapes)
    birds.DATASET_NAME = "birds"
    with pytest.raises(ConfigError, match="DATASET_NAME is 'birds'; the shapes evaluator"):
        evaluate(birds, "nowhere")
    config_path = tmp_path / "birds.yml"
    config_path.write_text("DATASET_NAME: 'birds'\n")
    with pytest.raises(ConfigError, match="the shapes evaluator measures the bundled datasets only"):
        main(["--cfg", str(config_path), "--checkpoint", "nowhere"])

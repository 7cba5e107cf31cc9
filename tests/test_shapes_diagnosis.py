"""The diagnosis measurements of the shapes datasets (misc/evaluation/shapes_diagnosis.py)."""

import math

import pytest

from misc.commands.shapes_diagnosis import main
from misc.config import ConfigError, default_config
from misc.data.datasets import dataset_dir
from misc.data.shapes import RECIPES, SQUARE_HALF_SIDE, ensure_dataset, load_run_dataset, read_attributes
from misc.evaluation.shapes_diagnosis import combinations, geometry, pipeline_checks


def quiet(*_args, **_kwargs):
    pass


def test_combinations_against_pictures():
    everything = combinations(RECIPES["shapes"])
    assert everything["combinations"] == 5 * 6 * 4 * 3 * 5 and everything["classes"] == 30
    assert everything["pictures_per_combination"] == pytest.approx(1200 / 1800)
    assert combinations(RECIPES["shapes_l3_shape"])["pictures_per_shape"] == 240


def test_object_area_at_64_px():
    """A circle of radius r covers pi r^2 pixels, a square (half side 0.8 r)
    2.56 r^2: the two-shape rung's mean area, r = 0.23 of the 76 px picture."""
    (row,) = geometry(RECIPES["shapes_l2_two"])
    r = 0.23 * 76
    assert row["radius_px"] == pytest.approx(r)
    assert row["area_px"] == pytest.approx((math.pi + (2 * SQUARE_HALF_SIDE) ** 2) * r * r / 2, rel=0.05)
    assert row["area_share"] == pytest.approx(row["area_px"] / 64 ** 2)
    assert 0 < row["closest_pair_px"] <= row["circle_square_px"]


@pytest.mark.parametrize("name", ["shapes", "shapes_l5_background"])
def test_pipeline_checks(tmp_path, name):
    ensure_dataset(str(tmp_path), name, hr=False, num_train=80, num_test=2, log=quiet)
    config = default_config()
    config.DATA_DIR, config.DATASET_NAME = str(tmp_path), name
    split = load_run_dataset(config, hr_lr_ratio=1, splits=("train",)).train
    checks = pipeline_checks(split, read_attributes(dataset_dir(config), "train"), RECIPES[name], 4)
    assert checks["pictures"] == 80 and checks["captions"] == 800
    assert checks["captions_disagreeing"] == 0 and checks["captions_naming_shape_and_colour"] == 1.0
    assert checks["flipped_shape_kept"] == 1.0
    assert min(checks["evaluator_real"].values()) >= 0.95
    assert checks["wrong_pairs_same_shape_and_color"] == 0.0  # wrong pictures are of another class
    assert checks["pictures_some_crop_cuts_by_position"]["center"] == 0.0
    if name == "shapes":  # some large off-centre objects reach out of some training crops
        assert checks["pictures_some_crop_cuts"] > 0 and checks["crops_cutting_objects"] > 0
    else:
        assert checks["pictures_some_crop_cuts"] == 0 and checks["crops_cutting_objects"] == 0.0


def test_command_refuses_other_datasets():
    with pytest.raises(ConfigError, match="dataset 'birds' is not a bundled one"):
        main(["--dataset", "birds"])
    with pytest.raises(ConfigError, match="--checkpoint needs the --cfg"):
        main(["--dataset", "shapes_l1_square", "--checkpoint", "somewhere"])

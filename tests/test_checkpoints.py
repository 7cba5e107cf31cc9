"""Native checkpoints hold every variable of every network.

(Keras 3 keeps list attributes in containers that tf.train.Checkpoint does
not see; a variable held only there would silently be lost.)
"""

import numpy as np
import pytest
import tensorflow as tf

from golden_support import TEXT_DIM, tiny_config
from stageI.model import build_stage_i
from stageII.model import build_stage_ii


def networks(kind):
    config = tiny_config()
    if kind == "stage_ii":
        return build_stage_ii(config, TEXT_DIM)
    config.GAN.NETWORK_TYPE = kind
    return build_stage_i(config, TEXT_DIM)


@pytest.mark.parametrize("kind", ["default", "simple", "stage_ii"])
def test_every_network_variable_round_trips(kind, tmp_path):
    saved = networks(kind)
    rng = np.random.default_rng(0)
    for net in saved:
        for var in net.reference_variables().values():
            var.assign(rng.normal(size=var.shape).astype(np.float32))
    path = tf.train.Checkpoint(**{f"net{i}": n for i, n in enumerate(saved)}).write(str(tmp_path / "c"))
    stored = [n for n in tf.train.load_checkpoint(path).get_variable_to_shape_map() if "VARIABLE_VALUE" in n]
    assert len(stored) == sum(len(n.reference_variables()) for n in saved)
    loaded = networks(kind)
    tf.train.Checkpoint(**{f"net{i}": n for i, n in enumerate(loaded)}).read(path).assert_consumed()
    for a, b in zip(saved, loaded):
        for name, var in b.reference_variables().items():
            np.testing.assert_array_equal(var.numpy(), a.reference_variables()[name].numpy(), err_msg=name)


def test_integer_upsampling_is_the_legacy_nearest_resize():
    from misc.nets.layers import resize_nearest

    x = tf.random.normal((2, 4, 4, 3))
    for size in ((8, 8), (16, 8), (6, 6)):
        legacy = tf.raw_ops.ResizeNearestNeighbor(images=x, size=size, align_corners=False,
                                                  half_pixel_centers=False)
        np.testing.assert_array_equal(resize_nearest(x, size).numpy(), legacy.numpy())

"""Test session setup.

The CPU is split into two logical devices before TensorFlow starts, so the
data-parallel tests can run a two-replica MirroredStrategy on any machine;
everything else runs on the first device as usual.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
import tensorflow as tf

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


@pytest.fixture(scope="session")
def two_replicas():
    """One two-replica MirroredStrategy for the whole session: strategies over
    the same devices in one process would hand out colliding collective-op
    keys (a real run has one)."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

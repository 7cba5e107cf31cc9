"""Test session setup.

Determinism: TensorFlow runs with fixed thread counts and op determinism on,
and every test starts from the same random seeds, so a test gives the same
bits on every run and on every machine of the same kind, whatever else the
machine is doing (the golden tests assert this).

The CPU is split into two logical devices before TensorFlow starts, so the
data-parallel tests can run a two-replica MirroredStrategy on any machine;
everything else runs on the first device as usual.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import pytest
import tensorflow as tf

THREADS = 2  # the suite's own machine; fixed so reductions split the same way everywhere
tf.config.threading.set_intra_op_parallelism_threads(THREADS)
tf.config.threading.set_inter_op_parallelism_threads(THREADS)
tf.config.experimental.enable_op_determinism()

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


@pytest.fixture(autouse=True)
def _seeded():
    """Python, NumPy and TensorFlow seeds reset before every test."""
    keras.utils.set_random_seed(0)


@pytest.fixture(scope="session")
def two_replicas():
    """One two-replica MirroredStrategy for the whole session: strategies over
    the same devices in one process would hand out colliding collective-op
    keys (a real run has one)."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

"""Test session setup.

Determinism: TensorFlow runs with fixed thread counts and op determinism on,
and every test starts from the same random seeds, so a test gives the same
bits on every run and on every machine of the same kind, whatever else the
machine is doing (the golden tests assert this).

The CPU is split into two logical devices before TensorFlow starts, so the
data-parallel tests can run a two-replica MirroredStrategy on any machine;
everything else runs on the first device as usual.
"""

import gc
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


# The suite's imports (TensorFlow's ~0.5 million objects) live as long as the
# session: moved out of the collector's way, so full collections cost less.
gc.freeze()


@pytest.fixture(autouse=True, scope="module")
def _released():
    """Each module's graphs released when it ends, as if it ran on its own.

    In a graph, ``tf.custom_gradient`` (misc/nets/layers.py uses it for batch norm
    and up-sampling) registers a new global gradient function at every call
    and never removes it; the function holds its graph, so every traced
    training step would stay alive for the whole session (5 GB by its end,
    full collections of seconds; releasing them took the suite from 868 s to
    730 s on the same machine the same day).  A training run
    traces its step once or twice, so there it costs one graph; the suite
    traces hundreds.  Each module's entries are dropped after it (no later
    module uses its graphs) along with Keras's global state."""
    before = set(_gradient_registry())
    yield
    registry = _gradient_registry()
    for name in [n for n in registry if n.startswith("CustomGradient-") and n not in before]:
        del registry[name]
    keras.backend.clear_session(free_memory=True)


def _gradient_registry():
    from tensorflow.python.framework import ops  # no public API lists or removes gradients

    return ops._gradient_registry._registry


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

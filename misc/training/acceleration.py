"""How the training step runs: XLA compilation and mixed precision.

Both are config choices (``TRAIN.XLA``, ``TRAIN.PRECISION``; the trainers'
``--xla`` and ``--precision`` flags override them) resolved here against the
devices the run trains on (and ``TRAIN.INTRA_OP_THREADS``, the threads of
one CPU op, is set here):

* ``TRAIN.XLA``: ``'auto'`` compiles the step with XLA where that was
  measured faster (docs/performance.md): on CPUs whose TensorFlow kernels do
  not go through oneDNN (TF_ENABLE_ONEDNN_OPTS=0; XLA is slower than
  oneDNN's kernels, TensorFlow's default on x86), not on GPUs, where it has
  not been measured, nor under op determinism (which Keras does not
  compile); ``'on'`` and ``'off'`` force it.
* ``TRAIN.PRECISION``: ``'float32'`` (the reference); ``'mixed'`` computes
  in float16 on GPUs (with dynamic loss scaling) and in bfloat16 on CPUs
  that have native bfloat16 arithmetic (AVX512_BF16 or AMX), keeping float32
  weights, optimizer state, batch-norm statistics and losses (float32 where
  there is no native bfloat16); ``'mixed_float16'`` and ``'mixed_bfloat16'``
  force one.
"""

import contextlib
import dataclasses
import os

import keras
import tensorflow as tf

from misc.config import PRECISIONS, XLA_SETTINGS, ConfigError
from misc.nets.layers import replica_sum
from misc.training import machine


def configure_threads(config, log=print):
    """``TRAIN.INTRA_OP_THREADS`` (0: TensorFlow's default, all cores): how
    many threads one CPU op may use.  Small networks run faster with one (the
    cores then run independent ops side by side instead of splitting small
    ones); TensorFlow takes it only before it starts."""
    threads = config.TRAIN.INTRA_OP_THREADS
    if threads <= 0 or tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        log(f"TRAIN.INTRA_OP_THREADS {threads}: TensorFlow has already started in this process; "
            f"keeping {tf.config.threading.get_intra_op_parallelism_threads() or 'its default'}.")


def check_settings(config):
    """Fail with a one-line error on an unknown TRAIN.XLA / TRAIN.PRECISION
    (``misc.config.validate_config`` checks config files; this, trees built
    in code)."""
    for key, value, valid in (("XLA", config.TRAIN.XLA, XLA_SETTINGS),
                              ("PRECISION", config.TRAIN.PRECISION, PRECISIONS)):
        if value not in valid:
            raise ConfigError(f"TRAIN.{key} is {value!r}; use one of "
                              f"{', '.join(repr(v) for v in valid)}.")


def training_on_gpu():
    """Whether the step runs on GPUs: a GPU is visible to TensorFlow (after
    --gpu chose them).  Asks without starting TensorFlow's runtime, which a
    multi-worker strategy must configure first."""
    return bool(tf.config.get_visible_devices("GPU"))


@dataclasses.dataclass(frozen=True)
class StepChoices:
    """How this run's training step runs: compiled with XLA or not, and the
    Keras dtype policy of the networks.  Decided once per run
    (``choose_step``); in a multi-worker run the chief's choices hold for
    every worker (``misc.training.cluster.rendezvous``)."""

    xla: bool
    precision: str

    def as_dict(self):
        return dataclasses.asdict(self)


def choose_step(config, multi_worker=False, names=None, log=print):
    """This machine's ``StepChoices`` for the config's TRAIN.XLA and
    TRAIN.PRECISION.  ``multi_worker``: the step all-reduces across worker
    processes, which XLA cannot compile on CPUs (TensorFlow has no XLA
    collectives for CPU devices): 'auto' then never compiles, and 'on' is a
    one-line error.  ``names`` maps 'XLA' / 'PRECISION' to what the user
    typed (e.g. '--xla'), for the messages."""
    check_settings(config)
    names = {"XLA": "TRAIN.XLA", "PRECISION": "TRAIN.PRECISION", **(names or {})}
    setting = config.TRAIN.XLA
    on_gpu = training_on_gpu()
    if setting == "on" and multi_worker and not on_gpu:
        typed = f"{names['XLA']} on" if names["XLA"].startswith("--") else f"{names['XLA']} is 'on'"
        raise ConfigError(f"{typed}, but this multi-worker run trains on CPUs, where XLA "
                          "cannot compile the step's all-reduce across workers (TensorFlow has no XLA "
                          "collectives for CPU devices); use 'auto' or 'off'.")
    if setting == "auto":
        xla = auto_xla(on_gpu=on_gpu, multi_worker=multi_worker)
    else:
        xla = setting == "on"
    return StepChoices(xla=xla, precision=dtype_policy_name(config, log=log))


def auto_xla(on_gpu, multi_worker):
    """TRAIN.XLA 'auto': compile the step with XLA where that was measured
    faster (docs/performance.md): on CPUs whose TensorFlow kernels do not go
    through oneDNN; never on GPUs (not measured), never for a step that
    all-reduces across worker processes on CPUs (no XLA collectives there),
    never under op determinism (which Keras does not compile)."""
    if on_gpu or multi_worker or op_determinism_enabled():
        return False
    return not onednn_enabled()


def use_xla(config):
    """Whether to compile the training step with XLA (``TRAIN.XLA``) in a
    single-process run."""
    return choose_step(config, log=lambda message: None).xla


def onednn_enabled():
    """Whether TensorFlow runs its CPU kernels through oneDNN (the default on
    x86 Linux and Windows; TF_ENABLE_ONEDNN_OPTS=0 turns it off).  TensorFlow
    has no public getter; its tests ask the same function."""
    try:
        from tensorflow.python.util._pywrap_util_port import IsMklEnabled
    except ImportError:
        return False
    return bool(IsMklEnabled())


def op_determinism_enabled():
    """``tf.config.experimental.enable_op_determinism()`` is on (TensorFlow
    has no public getter; Keras asks the same function)."""
    try:
        from tensorflow.python.framework.config import is_op_determinism_enabled
    except ImportError:
        return False
    return is_op_determinism_enabled()


def dtype_policy_name(config, log=print):
    """The Keras dtype policy of the networks for ``TRAIN.PRECISION``."""
    check_settings(config)
    precision = config.TRAIN.PRECISION
    if precision != "mixed":
        return precision
    if training_on_gpu():
        return "mixed_float16"
    if machine.cpu_has_native_bfloat16():
        return "mixed_bfloat16"
    log("TRAIN.PRECISION 'mixed': this CPU has no native bfloat16 arithmetic "
        f"({' or '.join(machine.CPU_BFLOAT16_FLAGS)}); training in float32.")
    return "float32"


@contextlib.contextmanager
def dtype_policy(name):
    """Layers created inside the block take the Keras dtype policy ``name``
    (their variables stay float32 under the mixed policies)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras's dynamic loss scaling, with the finiteness check agreed over all
    replicas: each replica checks its own (not yet all-reduced) gradients, and
    replicas that disagreed would skip or apply the update differently."""

    def check_finite(self, grads):
        # ReduceOp has only SUM and MEAN: count the replicas that saw a
        # non-finite gradient
        not_finite = 1.0 - tf.cast(super().check_finite(grads), tf.float32)
        return replica_sum(not_finite) == 0


def describe(config, jit, policy_name):
    """One line for the run's log."""
    devices = "GPU" if training_on_gpu() else "CPU"
    return (f"Training step: XLA {'on' if jit else 'off'} (TRAIN.XLA {config.TRAIN.XLA!r}), "
            f"precision {policy_name} (TRAIN.PRECISION {config.TRAIN.PRECISION!r}) on {devices} "
            f"({os.cpu_count()} CPU cores)")

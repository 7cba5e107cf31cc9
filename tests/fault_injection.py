"""Run a stage's training as its run_exp.py does, with a fault point, so
that tests/test_reliability.py can kill it at a known moment.

    python tests/fault_injection.py STAGE READY_FILE FAULT N -- [run_exp arguments]

STAGE is 1 or 2.  FAULT is one of

  in-snapshot  while snapshot model-N is being written: TensorFlow has written
               its shard files into model-N_temp/ and not yet merged them
  after-step   after iteration N, before any callback has seen it
  signal-after-step
               after iteration N, before any callback has seen it, the process
               sends itself SIGTERM (READY_FILE is created) and trains on

At the fault point the process creates READY_FILE and (but for
signal-after-step) sleeps until it is killed.  The test suite's TensorFlow
settings (threads, op determinism) are those of tests/conftest.py, so the
bits match in-process runs.  The hooks
patch TensorFlow and Keras here, in the test tree; production code has none.
"""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras
import tensorflow as tf
from tensorflow.python.ops import gen_io_ops

import conftest  # applies the suite's TensorFlow settings
from misc.commands.train import cli


def hang(ready_file):
    with open(ready_file, "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(1)


def hang_in_snapshot(iteration, ready_file):
    merge = gen_io_ops.merge_v2_checkpoints

    def merge_or_hang(checkpoint_prefixes, destination_prefix, *args, **kwargs):
        if os.path.basename(destination_prefix.numpy().decode()) == f"model-{iteration}":
            hang(ready_file)
        return merge(checkpoint_prefixes, destination_prefix, *args, **kwargs)

    gen_io_ops.merge_v2_checkpoints = merge_or_hang


def hang_after_step(iteration, ready_file):
    batch_end = keras.callbacks.CallbackList.on_train_batch_end

    def batch_end_or_hang(self, batch, logs=None):
        if int(self.model.counter.numpy()) == iteration:
            hang(ready_file)
        return batch_end(self, batch, logs)

    keras.callbacks.CallbackList.on_train_batch_end = batch_end_or_hang


def signal_after_step(iteration, ready_file):
    batch_end = keras.callbacks.CallbackList.on_train_batch_end

    def batch_end_with_signal(self, batch, logs=None):
        if int(self.model.counter.numpy()) == iteration and not os.path.exists(ready_file):
            open(ready_file, "w").close()
            os.kill(os.getpid(), signal.SIGTERM)  # handled before the callbacks below run
        return batch_end(self, batch, logs)

    keras.callbacks.CallbackList.on_train_batch_end = batch_end_with_signal


def main():
    stage, ready_file, fault, iteration = sys.argv[1:5]
    assert sys.argv[5] == "--"
    assert tf.config.threading.get_intra_op_parallelism_threads() == conftest.THREADS
    {"in-snapshot": hang_in_snapshot, "after-step": hang_after_step,
     "signal-after-step": signal_after_step}[fault](int(iteration), ready_file)
    cli(sys.argv[6:], stage=int(stage))


if __name__ == "__main__":
    main()

"""Our native training checkpoints, and resolving TRAIN/TEST.PRETRAINED_MODEL.

A native checkpoint is a ``tf.train.Checkpoint`` of the networks, the
optimizers (slots, step counts, learning rates) and the counters, written by
a ``tf.train.CheckpointManager`` as ``<log dir>/model-<counter>``.  TensorFlow
writes the data and index through temporary files and renames them, and
updates the ``checkpoint`` state file only after a save completed, so an
interrupted save never damages the previous snapshot.

``PRETRAINED_MODEL`` may name a native checkpoint prefix, a directory of
them (the newest is used), or a reference checkpoint (``*.ckpt``, see
``misc.tf1_checkpoint``).
"""

import os

import tensorflow as tf

from misc.tf1_checkpoint import CheckpointError, is_reference_checkpoint

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def training_checkpoint(gan):
    """The tf.train.Checkpoint holding a trainer's whole training state."""
    return tf.train.Checkpoint(counter=gan.counter, global_step=gan.global_step,
                               **gan.networks(), **gan.optimizers())


class Snapshotter:
    """Writes native snapshots into a run's log directory."""

    def __init__(self, gan, directory, max_to_keep=5, keep_every_n_hours=2):
        self.gan = gan
        self.manager = tf.train.CheckpointManager(
            training_checkpoint(gan), directory, max_to_keep=max_to_keep,
            keep_checkpoint_every_n_hours=keep_every_n_hours, checkpoint_name="model")

    def save(self):
        """Save at the current counter; return the checkpoint prefix."""
        return self.manager.save(checkpoint_number=int(self.gan.counter.numpy()))


def resolve(path):
    """Classify ``path``: ('native', prefix) or ('reference', path)."""
    if not path:
        raise CheckpointError("no checkpoint given: set TRAIN.PRETRAINED_MODEL (or TEST.PRETRAINED_MODEL).")
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path}: directory holds no checkpoint (no 'checkpoint' state file).")
        return "native", latest
    if os.path.exists(path + ".index") or os.path.exists(path):
        try:
            reader = tf.train.load_checkpoint(path)
        except Exception:
            raise CheckpointError(
                f"{path}: not a TensorFlow checkpoint. Point PRETRAINED_MODEL at a "
                "model-<N> prefix written by this project, a directory of them, or a "
                "reference .ckpt file.") from None
        if reader.has_tensor(OBJECT_GRAPH_KEY):
            return "native", path
        if is_reference_checkpoint(path):
            return "reference", path
        raise CheckpointError(f"{path}: a TensorFlow checkpoint, but not a StackGAN one.")
    raise CheckpointError(
        f"{path}: checkpoint not found (neither the file nor {path}.index exists). "
        "Check TRAIN.PRETRAINED_MODEL / TEST.PRETRAINED_MODEL.")


def restore_native(gan, prefix, parts=None):
    """Restore a native checkpoint (all of it, or the named ``parts``)."""
    everything = {"counter": gan.counter, "global_step": gan.global_step,
                  **gan.networks(), **gan.optimizers()}
    objects = everything if parts is None else {k: everything[k] for k in parts}
    checkpoint = tf.train.Checkpoint(**objects)
    try:
        status = checkpoint.restore(prefix)
        status.assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as exc:
        raise CheckpointError(
            f"{prefix}: does not fit the models built from this config ({exc}). "
            "Use the config the checkpoint was trained with.") from None
    return prefix

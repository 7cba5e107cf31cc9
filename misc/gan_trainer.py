"""Training mechanics shared by the Stage-I and Stage-II GANs.

A trainer is a ``keras.Model`` whose ``train_step`` runs the reference's
alternating updates on one batch.  Batches carry their own noise (see
``misc.input_pipeline``), so a step is a deterministic function of the batch
and the state: N replicas of a ``tf.distribute`` strategy compute what one device
computes on the same global batch (losses are global-batch means,
batch-norm statistics are synchronised, gradients are all-reduced by the
optimizer).

``train_step`` returns logs with three kinds of entries:
  * ``<name>``: running means over the epoch of the losses the reference
    printed at the end of each epoch (shown by the progress bar);
  * ``summary/<tag>``: this step's scalars, as the reference wrote them to
    TensorBoard;
  * ``histogram/<tag>``: this step's tensors for TensorBoard histograms.
"""

import keras
import tensorflow as tf

from misc.acceleration import LossScaleOptimizer
from misc.losses import replica_total

SUMMARY_PREFIX = "summary/"
HISTOGRAM_PREFIX = "histogram/"


def gather_batch(values):
    """Concatenate a per-replica batch tensor over the replicas."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return values
    return ctx.all_gather(values, axis=0)


def learning_rate_for_epoch(base_lr, epoch, decay_every, decay_after=0):
    """The reference schedule, as a function of the epoch: the rate halves at
    the start of every epoch ``e`` with ``e % decay_every == 0`` and
    ``e > decay_after`` (Stage-I: ``e != 0``; Stage-II: ``e > PRETRAINED_EPOCH``);
    docs/reference_quirks.md#q13.

    Unlike the reference loop, which recomputed the rate only from the epoch
    it (re)started at, a resumed run gets the rate of an uninterrupted run.
    """
    if decay_every <= 0:
        return base_lr
    first = (decay_after // decay_every + 1) * decay_every
    first = max(first, decay_every)
    halvings = 0 if epoch < first else (epoch - first) // decay_every + 1
    return base_lr * 0.5 ** halvings


class GANTrainer(keras.Model):
    """Base of the stage trainers: iteration and optimizer-step counters,
    epoch-mean trackers, gradient application and log assembly.  The update
    rules themselves live in each stage's ``trainer.py``."""

    #: losses averaged over the epoch and printed, as the reference did (set
    #: by each trainer)
    epoch_log_keys = ()

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Training iterations (the reference's ``counter``, which names the
        # snapshots) and optimizer applications (the reference's
        # ``global_step``, kept for checkpoint compatibility).
        self.counter = keras.Variable(0, dtype="int64", trainable=False, name="counter",
                                      aggregation="only_first_replica")
        self.global_step = keras.Variable(0, dtype="int64", trainable=False, name="global_step",
                                          aggregation="only_first_replica")
        self.trackers = {k: keras.metrics.Mean(name=k) for k in self.epoch_log_keys}
        self._scalers = {}  # id(optimizer) -> its LossScaleOptimizer (float16)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def optimizers(self):
        """Name -> optimizer, for checkpoints and learning-rate schedules."""
        raise NotImplementedError

    def networks(self):
        """Name -> network, for checkpoints."""
        raise NotImplementedError

    def compute_policy(self):
        """The dtype policy the networks compute in (e.g. ``mixed_bfloat16``)."""
        return next(iter(self.networks().values())).dtype_policy.name

    def use_loss_scaling(self):
        """Wrap every optimizer in a dynamic loss scale (float16 training).
        The optimizers themselves stay what the checkpoints hold; the
        scales are not saved (a resumed run starts again at 2^15)."""
        self._scalers = {}
        for optimizer in self.optimizers().values():
            scaler = LossScaleOptimizer(optimizer)
            scaler.build(optimizer._trainable_variables)
            self._scalers[id(optimizer)] = scaler

    def scale_loss(self, optimizer, loss):
        """The loss to differentiate for ``optimizer``'s update: scaled by its
        dynamic loss scale under float16, else itself.  Call it inside the
        gradient tape."""
        scaler = self._scalers.get(id(optimizer))
        return loss if scaler is None else scaler.scale_loss(loss)

    def apply_gradients(self, optimizer, gradients, variables):
        """One optimizer application (one step of the reference's
        ``global_step``); under loss scaling the gradients are unscaled, and
        a step with non-finite gradients is skipped (and lowers the scale)."""
        self._scalers.get(id(optimizer), optimizer).apply_gradients(zip(gradients, variables))
        self.global_step.assign_add(1)

    def finish_step(self, epoch_values, summaries, histograms):
        """Sum the per-replica loss shares, update the epoch means, and build
        the step's logs."""
        epoch_values, summaries = replica_total((epoch_values, summaries))
        for key, tracker in self.trackers.items():
            tracker.update_state(epoch_values[key])
        self.counter.assign_add(1)
        logs = {key: tracker.result() for key, tracker in self.trackers.items()}
        logs.update({SUMMARY_PREFIX + k: v for k, v in summaries.items()})
        logs.update({HISTOGRAM_PREFIX + k: gather_batch(tf.cast(v, tf.float32))
                     for k, v in histograms.items()})
        return logs

"""Training mechanics shared by the Stage-I and Stage-II GANs.

A trainer is a ``keras.Model`` whose ``train_step`` runs the reference's
alternating updates on one batch.  Batches carry their own noise (see
``misc.data.input_pipeline``), so a step is a deterministic function of the batch
and the state: N replicas of a ``tf.distribute`` strategy compute what one device
computes on the same global batch (losses are global-batch means,
batch-norm statistics are synchronised, gradients are all-reduced by the
optimizer).

``train_step`` returns logs with three kinds of entries, the same on every
replica (``finish_step`` synchronises them; ``fit`` shows the first
replica's):
  * ``<name>``: running means over the epoch of the losses the reference
    printed at the end of each epoch (shown by the progress bar);
  * ``summary/<tag>``: this step's scalars, as the reference wrote them to
    TensorBoard;
  * ``histogram/<tag>``: this step's tensors for TensorBoard histograms;
and ``stop_requested`` (``STOP_KEY``), > 0 when a process asked to stop.
"""

import keras
import tensorflow as tf

from misc.nets.layers import replica_context
from misc.training.acceleration import LossScaleOptimizer
from misc.training.losses import replica_total

SUMMARY_PREFIX = "summary/"
HISTOGRAM_PREFIX = "histogram/"
# Log entry > 0 when a process training this model asked to stop (its
# ``stop_requested`` was set): every worker of a multi-worker run sees it
# after the same iteration.
STOP_KEY = "stop_requested"


def global_batch_slot(values):
    """This replica's batch tensor placed at its rows of a zero global batch
    (replica ``r`` of ``n`` holds rows ``r*b .. (r+1)*b - 1``): summed over
    the replicas (``replica_total``) it is the global batch, exactly (x + 0
    is x).  A sum, not ``all_gather``, so that it travels in the step's one
    batched all-reduce and works under MultiWorkerMirroredStrategy too."""
    ctx = replica_context()
    if ctx is None:
        return values
    n, b = ctx.num_replicas_in_sync, tf.shape(values)[0]
    rows = tf.range(b) + tf.cast(ctx.replica_id_in_sync_group, tf.int32) * b
    shape = tf.concat([[n * b], tf.shape(values)[1:]], axis=0)
    return tf.scatter_nd(rows[:, None], values, shape)


def normalize_images(images):
    """uint8 [0, 255] -> float32 [-1, 1] exactly as the reference loader
    (``x * (2 / 255) - 1`` in float32); float input is returned unchanged."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) * (2.0 / 255) - 1.0
    return images


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
        # Set to 1 by a process that received SIGINT / SIGTERM; summed over
        # the replicas in every step (the STOP_KEY log), so that the workers
        # of a multi-worker run stop after the same iteration.
        self.stop_requested = keras.Variable(0.0, dtype="float32", trainable=False, name="stop_requested")
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

    def loss_scale(self, optimizer):
        """``scale(loss)``: the loss to differentiate for ``optimizer``'s
        update, scaled by its dynamic loss scale under float16, else itself.
        Call it inside the gradient tape."""
        scaler = self._scalers.get(id(optimizer))
        return (lambda loss: loss) if scaler is None else scaler.scale_loss

    def apply_gradients(self, optimizer, gradients, variables):
        """One optimizer application (one step of the reference's
        ``global_step``); under loss scaling the gradients are unscaled, and
        a step with non-finite gradients is skipped (and lowers the scale)."""
        self._scalers.get(id(optimizer), optimizer).apply_gradients(zip(gradients, variables))
        self.global_step.assign_add(1)

    def finish_step(self, epoch_values, summaries, histograms, rates):
        """Sum the per-replica loss shares and gather the histograms' global
        batch (one all-reduce), update the epoch means, and build the step's
        logs.  ``rates`` (the learning rates) are the same on every replica
        and are logged as they are, not summed."""
        slots = {k: global_batch_slot(tf.cast(v, tf.float32)) for k, v in histograms.items()}
        epoch_values, summaries, histograms, stop = replica_total(
            (epoch_values, summaries, slots, self.stop_requested.value))
        for key, tracker in self.trackers.items():
            tracker.update_state(epoch_values[key])
        self.counter.assign_add(1)
        logs = {key: tracker.result() for key, tracker in self.trackers.items()}
        logs.update({SUMMARY_PREFIX + k: v for k, v in summaries.items()})
        logs.update({SUMMARY_PREFIX + k: tf.cast(v, tf.float32) for k, v in rates.items()})
        logs.update({HISTOGRAM_PREFIX + k: v for k, v in histograms.items()})
        logs[STOP_KEY] = stop
        return logs

    # -- fit() under tf.distribute ------------------------------------------

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Nothing to build: ``compile`` builds the networks and optimizers.
        (Keras's version draws a batch and reduces it over the replicas,
        which MultiWorkerMirroredStrategy cannot do for a dict of batches.)"""

    def make_train_function(self, force=False):
        """``fit``'s step: ``train_step`` on every replica, then the first
        replica's logs (``finish_step`` made them equal on all).  Keras's own
        step would average them over the replicas instead: an extra
        all-reduce per step, which under MultiWorkerMirroredStrategy also
        fails for scalars."""
        if self.train_function is not None and not force:
            return self.train_function
        strategy = self.distribute_strategy

        def one_step(batch):
            logs = strategy.run(self.train_step, args=(batch,))
            return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], logs)

        if not self.run_eagerly:
            # No AutoGraph: the step's Python control flow depends on the
            # config, never on tensor values, and converting every call
            # costs a third of the trace (Stage-II: 9.6 s instead of 14 s).
            one_step = tf.function(one_step, reduce_retracing=True, autograph=False,
                                   jit_compile=self.jit_compile)

        def train_function(iterator):
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                raise StopIteration
            return one_step(batch.get_value())

        # The one step object both ``fit`` and the benchmark
        # (misc/training/benchmark.py) run.
        self.distributed_step = one_step
        self.train_function = train_function
        return train_function

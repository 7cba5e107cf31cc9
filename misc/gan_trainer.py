"""Training mechanics shared by the Stage-I and Stage-II GANs.

A trainer is a ``keras.Model`` whose ``train_step`` runs the reference's
alternating updates on one batch.  Batches carry their own noise (see
``misc.datasets``), so a step is a deterministic function of the batch and
the state: N replicas of a ``tf.distribute`` strategy compute what one device
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

from misc.losses import discriminator_losses, generator_adversarial_loss, kl_loss, replica_total

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
    ``e > decay_after`` (Stage-I: ``e != 0``; Stage-II: ``e > PRETRAINED_EPOCH``).

    Unlike the reference loop, which recomputed the rate only from the epoch
    it (re)started at, a resumed run gets the rate of an uninterrupted run.
    """
    if decay_every <= 0:
        return base_lr
    first = (decay_after // decay_every + 1) * decay_every
    first = max(first, decay_every)
    halvings = 0 if epoch < first else (epoch - first) // decay_every + 1
    return base_lr * 0.5 ** halvings


class ConditionalGAN(keras.Model):
    """Base class: the reference's D and G runs, counters, epoch-mean
    trackers and log assembly."""

    #: losses averaged over the epoch and printed, as the reference did
    epoch_log_keys = ("d_loss", "g_loss")

    def __init__(self, *, kl_coeff=2.0, use_wrong=True, cond_augmentation=True, **kwargs):
        super().__init__(**kwargs)
        self.kl_coeff = kl_coeff
        self.use_wrong = use_wrong
        self.cond_augmentation = cond_augmentation
        # Training iterations (the reference's ``counter``, which names the
        # snapshots) and optimizer applications (the reference's
        # ``global_step``, kept for checkpoint compatibility).
        self.counter = keras.Variable(0, dtype="int64", trainable=False, name="counter",
                                      aggregation="only_first_replica")
        self.global_step = keras.Variable(0, dtype="int64", trainable=False, name="global_step",
                                          aggregation="only_first_replica")
        self.trackers = {k: keras.metrics.Mean(name=k) for k in self.epoch_log_keys}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def optimizers(self):
        """Name -> optimizer, for checkpoints and learning-rate schedules."""
        raise NotImplementedError

    def networks(self):
        """Name -> network, for checkpoints."""
        raise NotImplementedError

    def apply_gradients(self, optimizer, loss, tape, variables):
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        self.global_step.assign_add(1)

    def kl_term(self, ca_out):
        """COEFF.KL * KL of a generator's CA output (the reference's
        ``g_loss_kl_loss``); zero without conditioning augmentation."""
        if not self.cond_augmentation:
            return tf.constant(0.0)
        return self.kl_coeff * kl_loss(ca_out["mean"], ca_out["log_sigma"])

    def critic_losses(self, discriminator, real, wrong, fake, embeddings):
        """D on the three image sets, each pass with its own batch statistics,
        and the reference losses: ``d_loss``, ``d_loss_real``,
        ``d_loss_wrong`` (with B_WRONG), ``d_loss_fake`` and ``g_loss_fake``
        (the generator's adversarial term on the same fakes).

        The reference leaves the order of the three moving-average updates
        undefined (golden README, Q11); we apply them wrong, real, fake: the
        order its executor chose for almost all layers.  Without B_WRONG the
        reference never evaluates the wrong pass.
        """
        wrong_logit = discriminator(wrong, embeddings, training=True) if self.use_wrong else None
        real_logit = discriminator(real, embeddings, training=True)
        fake_logit = discriminator(fake, embeddings, training=True)
        losses = discriminator_losses(real_logit, wrong_logit, fake_logit, self.use_wrong)
        losses["g_loss_fake"] = generator_adversarial_loss(fake_logit)
        return losses, {"logit_real": real_logit, "logit_wrong": wrong_logit, "logit_fake": fake_logit}

    def update_critic(self, discriminator, optimizer, real, wrong, fake, embeddings):
        """D's three passes and, unless ``optimizer`` is None, one D update
        on ``d_loss``; returns the losses and logits (see ``critic_losses``)."""
        fake = tf.stop_gradient(fake)
        if optimizer is None:
            return self.critic_losses(discriminator, real, wrong, fake, embeddings)
        with tf.GradientTape() as tape:
            losses, logits = self.critic_losses(discriminator, real, wrong, fake, embeddings)
        self.apply_gradients(optimizer, losses["d_loss"], tape, discriminator.trainable_weights)
        return losses, logits

    def discriminator_run(self, generator, discriminator, optimizer, real, wrong, embeddings, eps, z):
        """The reference's D run for one stage-I pair: G forward in training
        mode (its batch norms update), D's three passes, a D update; also the
        G loss that run logged.  ``optimizer=None`` only evaluates."""
        g_out = generator(embeddings, eps, z, training=True)
        losses, logits = self.update_critic(discriminator, optimizer, real, wrong, g_out["images"], embeddings)
        losses["g_loss_kl_loss"] = self.kl_term(g_out)
        losses["g_loss"] = losses["g_loss_fake"] + losses["g_loss_kl_loss"]
        return losses, {**logits, **g_out}

    def generator_run(self, generator, discriminator, optimizer, embeddings, eps, z):
        """The reference's G run for one stage-I pair: G (CA included) is
        updated through D's verdict (D in training mode) on fresh fakes."""
        with tf.GradientTape() as tape:
            g_out = generator(embeddings, eps, z, training=True)
            fake_logit = discriminator(g_out["images"], embeddings, training=True)
            adversarial = generator_adversarial_loss(fake_logit)
            kl = self.kl_term(g_out)
            g_loss = adversarial + kl
        self.apply_gradients(optimizer, g_loss, tape, generator.trainable_weights)
        return {"g_loss": g_loss, "g_loss_kl_loss": kl, "g_loss_fake": adversarial}

    def finish_step(self, epoch_values, summaries, histograms):
        """Sum the per-replica loss shares, update the epoch means, and build
        the step's logs."""
        epoch_values, summaries = replica_total((epoch_values, summaries))
        for key, tracker in self.trackers.items():
            tracker.update_state(epoch_values[key])
        self.counter.assign_add(1)
        logs = {key: tracker.result() for key, tracker in self.trackers.items()}
        logs.update({SUMMARY_PREFIX + k: v for k, v in summaries.items()})
        logs.update({HISTOGRAM_PREFIX + k: gather_batch(v) for k, v in histograms.items()})
        return logs

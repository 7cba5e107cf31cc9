"""GAN losses of the reference, written for data-parallel training.

Every "mean" here is a mean over the *global* batch: a replica returns its
share (sum of its elements / global element count), so summing over replicas
-- what the optimizer's gradient all-reduce and ``replica_total`` do -- gives
exactly the single-device value.
"""

import tensorflow as tf

from misc.nets.conditioning import kl_divergence_terms
from misc.nets.layers import accumulation_dtype, replica_context, replica_sum


def num_replicas():
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        return tf.distribute.get_strategy().num_replicas_in_sync
    return ctx.num_replicas_in_sync


def global_mean(values):
    """This replica's share of the mean of ``values`` over the global batch."""
    dtype = accumulation_dtype(values.dtype)
    values = tf.cast(values, dtype)
    count = tf.cast(tf.size(values) * num_replicas(), dtype)
    return tf.reduce_sum(values) / count


def replica_total(values):
    """Sum a (structure of) per-replica share(s) over all replicas."""
    if replica_context() is None:
        return values
    # Copies made here, on this replica's device: a variable's value (or
    # anything captured from outside the step) can have no device, which
    # MultiWorkerMirroredStrategy's all-reduce rejects.
    return replica_sum(tf.nest.map_structure(tf.identity, values))


def sigmoid_cross_entropy(logits, label):
    logits = tf.cast(logits, accumulation_dtype(logits.dtype))
    labels = tf.fill(tf.shape(logits), tf.constant(label, logits.dtype))
    return global_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))


def kl_loss(mean, log_sigma):
    dtype = accumulation_dtype(mean.dtype)
    return global_mean(kl_divergence_terms(tf.cast(mean, dtype), tf.cast(log_sigma, dtype)))


def discriminator_losses(real_logit, wrong_logit, fake_logit, use_wrong=True):
    """Reference D loss: real + (wrong + fake) / 2 with B_WRONG, else real + fake.

    Returns ``{"d_loss", "d_loss_real", "d_loss_fake"[, "d_loss_wrong"]}``.
    """
    real = sigmoid_cross_entropy(real_logit, 1.0)
    fake = sigmoid_cross_entropy(fake_logit, 0.0)
    if use_wrong:
        wrong = sigmoid_cross_entropy(wrong_logit, 0.0)
        return {"d_loss": real + (wrong + fake) / 2.0, "d_loss_real": real,
                "d_loss_wrong": wrong, "d_loss_fake": fake}
    return {"d_loss": real + fake, "d_loss_real": real, "d_loss_fake": fake}


def generator_adversarial_loss(fake_logit):
    return sigmoid_cross_entropy(fake_logit, 1.0)

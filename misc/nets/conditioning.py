"""Conditioning Augmentation (CA): text embedding -> conditioning code c."""

import keras
import tensorflow as tf

from misc.nets.layers import Dense, leaky_relu


class ConditioningAugmentation(keras.layers.Layer):
    """FC(text -> 2 * ef_dim) with leaky ReLU on the whole output, split into
    ``mean`` and ``log_sigma``; ``c = mean + exp(log_sigma) * eps`` with
    truncated-normal ``eps`` (also at test time), or ``c = mean`` without
    augmentation (TRAIN.COND_AUGMENTATION False); see
    docs/reference_quirks.md#q1.

    The FC layer is named by the caller (``custom_fully_connected`` in the
    reference generator scopes).
    """

    def __init__(self, ef_dim, use_augmentation=True, fc_name="custom_fully_connected", **kwargs):
        super().__init__(**kwargs)
        self.ef_dim = ef_dim
        self.use_augmentation = use_augmentation
        self.fc = Dense(2 * ef_dim, name=fc_name)

    def call(self, embeddings, eps=None):
        h = leaky_relu(self.fc(embeddings))
        mean, log_sigma = h[:, : self.ef_dim], h[:, self.ef_dim :]
        if self.use_augmentation:
            if eps is None:
                eps = tf.random.truncated_normal(tf.shape(mean), dtype=mean.dtype)
            c = mean + tf.exp(log_sigma) * eps
        else:
            c = mean
        return c, mean, log_sigma


def kl_divergence_terms(mean, log_sigma):
    """Per-element KL(N(mean, sigma^2) || N(0, 1)) of the reference; its mean
    over batch *and* code dimensions is the reference KL loss."""
    return -log_sigma + 0.5 * (-1.0 + tf.exp(2.0 * log_sigma) + tf.square(mean))

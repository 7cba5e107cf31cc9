"""Network building blocks shared by the Stage-I and Stage-II networks."""

import keras
import tensorflow as tf

from misc.nets.layers import (
    BatchNorm,
    Chain,
    Conv2D,
    Deconv2D,
    Dense,
    ReferenceNetwork,
    leaky_relu,
    resize_nearest,
    tile_to_map,
)


class LayerFactory:
    """Creates reference-named layers for one network scope (see
    ``misc.nets.layers.ReferenceNamer``): build a network in the reference's
    construction order and its variable names follow."""

    def __init__(self, names):
        self.names = names

    def conv(self, filters, kernel, strides=1):
        return Conv2D(filters, kernel, strides, name=self.names("custom_conv2d"))

    def bn(self):
        return BatchNorm(name=self.names("conv_batch_norm"))

    def fc(self, units):
        return Dense(units, name=self.names("custom_fully_connected"))

    def deconv(self, filters):
        return Deconv2D(filters, name=self.names("custom_deconv2d"))


def up(size):
    """Nearest-neighbour up-sampling to size x size (a Chain step)."""
    return lambda x: resize_nearest(x, (size, size))


def relu(x):
    return tf.nn.relu(x)


class ConditionalLogit(keras.layers.Layer):
    """Joint image/text head of every discriminator: the text code (own FC +
    leaky ReLU on the raw embedding) tiled to the image code's s16 x s16 grid
    and concatenated after it, 1x1 conv + BN + leaky ReLU, then an
    s16-kernel stride-s16 conv to one logit per image."""

    def __init__(self, df_dim, s16, context_fc, build, **kwargs):
        super().__init__(**kwargs)
        self.s16 = s16
        self.context_fc = context_fc
        self.head = Chain([
            build.conv(df_dim * 8, 1), build.bn(), leaky_relu,
            build.conv(1, s16, s16),
        ])

    def call(self, image_code, embeddings, training=False):
        text_code = leaky_relu(self.context_fc(embeddings))
        joint = tf.concat([image_code, tile_to_map(text_code, self.s16)], axis=3)
        return self.head(joint, training=training)


class ConditionedDiscriminator(ReferenceNetwork):
    """Every reference discriminator: ``call(images, embeddings, training)``
    -> logits (B, 1, 1, 1) from an image encoder and a ``ConditionalLogit``,
    which subclasses create as ``self.encoder`` and ``self.logit``.  Like the
    reference's, it always runs in training mode unless told otherwise."""

    def call(self, images, embeddings, training=True):
        return self.logit(self.encoder(images, training=training), embeddings, training=training)


class ResidualBlock(keras.layers.Layer):
    """``relu(x + BN(conv3x3(relu(BN(conv3x3(x))))))`` (Stage-II generator)."""

    def __init__(self, filters, build, **kwargs):
        super().__init__(**kwargs)
        self.branch = Chain([
            build.conv(filters, 3), build.bn(), relu,
            build.conv(filters, 3), build.bn(),
        ])

    def call(self, x, training=False):
        return relu(x + self.branch(x, training=training))

"""Stage-I StackGAN networks: text embedding -> 64x64 image, and its critic.

Layers are created in the reference's construction order, so the
``ReferenceNamer`` reproduces the reference variable names (``g_net/...``,
``d_net/...``) used to import the authors' checkpoints.  The quirks of the
reference network are kept on purpose (docs/reference_quirks.md#q4): no
ReLU after the first FC + BN, none after the first block of each residual
pair, and the discriminator's encoder has BN layers without an activation.
"""

import keras
import tensorflow as tf

from misc.config import NETWORK_TYPES
from misc.data.formats import LR_IMAGE_SIZE
from misc.nets.blocks import ConditionalLogit, ConditionedDiscriminator, LayerFactory, relu, up
from misc.nets.conditioning import ConditioningAugmentation
from misc.nets.layers import BatchNorm, Chain, ReferenceNamer, ReferenceNetwork, leaky_relu


def check_network_type(network_type):
    if network_type not in NETWORK_TYPES:
        raise ValueError(
            f"GAN.NETWORK_TYPE is '{network_type}'; the Stage-I networks are "
            f"{' or '.join(repr(t) for t in NETWORK_TYPES)}."
        )


def check_image_size(image_size):
    if image_size % 16:
        raise ValueError(f"image size {image_size} must be a multiple of 16.")


class DefaultImageGenerator(keras.layers.Layer):
    """[c, z] -> image: FC + BN to s16 x s16 x 8gf, two residual stages and
    three nearest-upsample + conv stages (reference ``generator``)."""

    def __init__(self, gf_dim, image_size, build, **kwargs):
        super().__init__(**kwargs)
        s = image_size
        self.s16, gf = s // 16, gf_dim
        self.fc = build.fc(self.s16 * self.s16 * gf * 8)
        # fc_batch_norm hides prettytensor's name argument: fixed scope.
        self.fc_bn = BatchNorm(name=build.names("fc_batch_norm"), scope="fc_batch_norm/batch_norm")
        self.gf8 = gf * 8
        self.node1_1 = Chain([
            build.conv(gf * 2, 1), build.bn(), relu,
            build.conv(gf * 2, 3), build.bn(), relu,
            build.conv(gf * 8, 3), build.bn(),
        ])
        self.node2_0 = Chain([up(s // 8), build.conv(gf * 4, 3), build.bn()])
        self.node2_1 = Chain([
            build.conv(gf, 1), build.bn(), relu,
            build.conv(gf, 3), build.bn(), relu,
            build.conv(gf * 4, 3), build.bn(),
        ])
        self.output_stack = Chain([
            up(s // 4), build.conv(gf * 2, 3), build.bn(), relu,
            up(s // 2), build.conv(gf, 3), build.bn(), relu,
            up(s), build.conv(3, 3), tf.nn.tanh,
        ])

    def call(self, code, training=False):
        h = self.fc_bn(self.fc(code), training=training)
        node1_0 = tf.reshape(h, (-1, self.s16, self.s16, self.gf8))
        node1 = relu(node1_0 + self.node1_1(node1_0, training=training))
        node2_0 = self.node2_0(node1, training=training)
        node2 = relu(node2_0 + self.node2_1(node2_0, training=training))
        return self.output_stack(node2, training=training)


class SimpleImageGenerator(keras.layers.Layer):
    """[c, z] -> image with four stride-2 transposed convolutions
    (reference ``generator_simple``)."""

    def __init__(self, gf_dim, image_size, build, **kwargs):
        super().__init__(**kwargs)
        self.s16, gf = image_size // 16, gf_dim
        self.gf8 = gf * 8
        self.fc = build.fc(self.s16 * self.s16 * gf * 8)
        self.stack = Chain([
            build.bn(), relu,
            build.deconv(gf * 4), build.bn(), relu,
            build.deconv(gf * 2), build.bn(), relu,
            build.deconv(gf), build.bn(), relu,
            build.deconv(3), tf.nn.tanh,
        ])

    def call(self, code, training=False):
        h = tf.reshape(self.fc(code), (-1, self.s16, self.s16, self.gf8))
        return self.stack(h, training=training)


class StageIGenerator(ReferenceNetwork):
    """Reference ``g_net``: Conditioning Augmentation, then the generator.

    ``call(embeddings, eps, z, training)`` returns a dict with ``images``
    (B, s, s, 3) in [-1, 1] and the CA outputs ``c``, ``mean``, ``log_sigma``.
    ``eps`` (B, ef_dim, truncated normal) and ``z`` (B, z_dim) may be None
    to sample them.
    """

    scope = "g_net"

    def __init__(self, *, z_dim, ef_dim, gf_dim, image_size=LR_IMAGE_SIZE, network_type="default",
                 cond_augmentation=True, name="g_net", **kwargs):
        super().__init__(name=name, **kwargs)
        check_network_type(network_type)
        check_image_size(image_size)
        self.z_dim, self.ef_dim, self.image_size = z_dim, ef_dim, image_size
        names = ReferenceNamer()
        self.ca = ConditioningAugmentation(
            ef_dim, cond_augmentation, fc_name=names("custom_fully_connected"), name="ca")
        body = DefaultImageGenerator if network_type == "default" else SimpleImageGenerator
        self.image_generator = body(gf_dim, image_size, LayerFactory(names), name="generator")

    def call(self, embeddings, eps=None, z=None, training=False):
        c, mean, log_sigma = self.ca(embeddings, eps)
        if z is None:
            z = tf.random.normal((tf.shape(c)[0], self.z_dim), dtype=c.dtype)
        images = self.image_generator(tf.concat([c, z], axis=1), training=training)
        return {"images": images, "c": c, "mean": mean, "log_sigma": log_sigma}

class DefaultImageEncoder(keras.layers.Layer):
    """Image -> s16 x s16 x 8df code with a residual block
    (reference ``d_encode_image``)."""

    def __init__(self, df_dim, build, **kwargs):
        super().__init__(**kwargs)
        df = df_dim
        self.node1_0 = Chain([
            build.conv(df, 4, 2), leaky_relu,
            build.conv(df * 2, 4, 2), build.bn(), leaky_relu,
            build.conv(df * 4, 4, 2), build.bn(),
            build.conv(df * 8, 4, 2), build.bn(),
        ])
        self.node1_1 = Chain([
            build.conv(df * 2, 1), build.bn(), leaky_relu,
            build.conv(df * 2, 3), build.bn(), leaky_relu,
            build.conv(df * 8, 3), build.bn(),
        ])

    def call(self, images, training=False):
        node1_0 = self.node1_0(images, training=training)
        return leaky_relu(node1_0 + self.node1_1(node1_0, training=training))


def simple_image_encoder(df_dim, build):
    """Plain four-conv image encoder (reference ``d_encode_image_simple``)."""
    df = df_dim
    return Chain([
        build.conv(df, 4, 2), leaky_relu,
        build.conv(df * 2, 4, 2), build.bn(), leaky_relu,
        build.conv(df * 4, 4, 2), build.bn(), leaky_relu,
        build.conv(df * 8, 4, 2), build.bn(), leaky_relu,
    ], name="encoder")


class StageIDiscriminator(ConditionedDiscriminator):
    """Reference ``d_net``: ``call(images, embeddings, training)`` -> logits
    (B, 1, 1, 1).  The reference always runs it in training mode (batch
    statistics, moving-average updates), once per image set."""

    scope = "d_net"

    def __init__(self, *, df_dim, ef_dim, image_size=LR_IMAGE_SIZE, network_type="default",
                 name="d_net", **kwargs):
        super().__init__(name=name, **kwargs)
        check_network_type(network_type)
        check_image_size(image_size)
        self.image_size = image_size
        build = LayerFactory(ReferenceNamer())
        if network_type == "default":
            self.encoder = DefaultImageEncoder(df_dim, build, name="encoder")
        else:
            self.encoder = simple_image_encoder(df_dim, build)
        context_fc = build.fc(ef_dim)
        self.logit = ConditionalLogit(df_dim, image_size // 16, context_fc, build, name="logit")


def build_stage_i(config, embedding_dim, image_size=LR_IMAGE_SIZE):
    """Create the Stage-I generator and discriminator from a config tree and
    create their variables."""
    gan = config.GAN
    generator = StageIGenerator(
        z_dim=config.Z_DIM, ef_dim=gan.EMBEDDING_DIM, gf_dim=gan.GF_DIM,
        image_size=image_size, network_type=gan.NETWORK_TYPE,
        cond_augmentation=config.TRAIN.COND_AUGMENTATION,
    )
    discriminator = StageIDiscriminator(
        df_dim=gan.DF_DIM, ef_dim=gan.EMBEDDING_DIM, image_size=image_size,
        network_type=gan.NETWORK_TYPE,
    )
    build_networks(generator, discriminator, embedding_dim, config.Z_DIM, gan.EMBEDDING_DIM, image_size)
    return generator, discriminator


def build_networks(generator, discriminator, embedding_dim, z_dim, ef_dim, image_size):
    """Create all variables with one inference-mode pass (no state changes)."""
    emb = tf.zeros((1, embedding_dim))
    generator(emb, tf.zeros((1, ef_dim)), tf.zeros((1, z_dim)), training=False)
    discriminator(tf.zeros((1, image_size, image_size, 3)), emb, training=False)

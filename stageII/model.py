"""Stage-II StackGAN networks: (Stage-I image, text) -> 4x larger image, and
its critic.  The Stage-I networks (``g_net``, ``d_net``) are those of
``stageI.model``; Stage-II adds ``hr_g_net`` and ``hr_d_net``.

As in Stage-I, layers are created in the reference's construction order so
that the reference variable names follow (docs/reference_quirks.md#names).
"""

import keras
import tensorflow as tf

from misc.data.formats import LR_IMAGE_SIZE
from misc.nets.blocks import ConditionalLogit, ConditionedDiscriminator, LayerFactory, ResidualBlock, relu, up
from misc.nets.conditioning import ConditioningAugmentation
from misc.nets.layers import Chain, ReferenceNamer, ReferenceNetwork, leaky_relu, tile_to_map, track_layers
from stageI.model import build_stage_i, check_image_size


class StageIIGenerator(ReferenceNetwork):
    """Reference ``hr_g_net``: its own Conditioning Augmentation; the Stage-I
    image encoded to s4 x s4 x 4gf (3x3 conv + ReLU, two 4x4 stride-2 convs +
    BN + ReLU); the text code tiled and concatenated; a joint 3x3 conv + BN +
    ReLU; four residual blocks; four nearest-upsample + 3x3 conv + BN + ReLU
    stages to 4s; a 3x3 conv to RGB + tanh.

    ``call(lr_images, embeddings, eps, training)`` returns a dict with
    ``images`` (B x 4s x 4s x 3) and the CA outputs.
    """

    scope = "hr_g_net"

    def __init__(self, *, ef_dim, gf_dim, lr_size=LR_IMAGE_SIZE, cond_augmentation=True,
                 name="hr_g_net", **kwargs):
        super().__init__(name=name, **kwargs)
        check_image_size(lr_size)
        self.ef_dim, self.lr_size = ef_dim, lr_size
        s, gf = lr_size, gf_dim
        names = ReferenceNamer()
        build = LayerFactory(names)
        self.ca = ConditioningAugmentation(
            ef_dim, cond_augmentation, fc_name=names("custom_fully_connected"), name="ca")
        self.image_encoder = Chain([
            build.conv(gf, 3), relu,
            build.conv(gf * 2, 4, 2), build.bn(), relu,
            build.conv(gf * 4, 4, 2), build.bn(), relu,
        ], name="image_encoder")
        self.joint = Chain([build.conv(gf * 4, 3), build.bn(), relu], name="joint")
        self.residual_blocks = track_layers(
            self, "residual", [ResidualBlock(gf * 4, build, name=f"residual_{i}") for i in range(4)])
        self.upsampler = Chain([
            up(s // 2), build.conv(gf * 2, 3), build.bn(), relu,
            up(s), build.conv(gf, 3), build.bn(), relu,
            up(s * 2), build.conv(gf // 2, 3), build.bn(), relu,
            up(s * 4), build.conv(gf // 4, 3), build.bn(), relu,
            build.conv(3, 3), tf.nn.tanh,
        ], name="upsampler")

    def call(self, lr_images, embeddings, eps=None, training=False):
        c, mean, log_sigma = self.ca(embeddings, eps)
        image_code = self.image_encoder(lr_images, training=training)
        h = tf.concat([image_code, tile_to_map(c, self.lr_size // 4)], axis=3)
        h = self.joint(h, training=training)
        for block in self.residual_blocks:
            h = block(h, training=training)
        images = self.upsampler(h, training=training)
        return {"images": images, "c": c, "mean": mean, "log_sigma": log_sigma}

class StageIIImageEncoder(keras.layers.Layer):
    """4s x 4s image -> s16 x s16 x 8df code (reference ``hr_d_encode_image``):
    six 4x4 stride-2 convs up to 32df, two 1x1 convs down to 8df (the last
    without activation), a residual branch, leaky ReLU on the sum."""

    def __init__(self, df_dim, build, **kwargs):
        super().__init__(**kwargs)
        df = df_dim
        self.node1_0 = Chain([
            build.conv(df, 4, 2), leaky_relu,
            build.conv(df * 2, 4, 2), build.bn(), leaky_relu,
            build.conv(df * 4, 4, 2), build.bn(), leaky_relu,
            build.conv(df * 8, 4, 2), build.bn(), leaky_relu,
            build.conv(df * 16, 4, 2), build.bn(), leaky_relu,
            build.conv(df * 32, 4, 2), build.bn(), leaky_relu,
            build.conv(df * 16, 1), build.bn(), leaky_relu,
            build.conv(df * 8, 1), build.bn(),
        ])
        self.node1_1 = Chain([
            build.conv(df * 2, 1), build.bn(), leaky_relu,
            build.conv(df * 2, 3), build.bn(), leaky_relu,
            build.conv(df * 8, 3), build.bn(),
        ])

    def call(self, images, training=False):
        node1_0 = self.node1_0(images, training=training)
        return leaky_relu(node1_0 + self.node1_1(node1_0, training=training))


class StageIIDiscriminator(ConditionedDiscriminator):
    """Reference ``hr_d_net``: ``call(images, embeddings, training)`` ->
    logits (B, 1, 1, 1) for 4s x 4s images.  Like every reference
    discriminator it always runs in training mode."""

    scope = "hr_d_net"

    def __init__(self, *, df_dim, ef_dim, lr_size=LR_IMAGE_SIZE, name="hr_d_net", **kwargs):
        super().__init__(name=name, **kwargs)
        check_image_size(lr_size)
        self.image_size = 4 * lr_size
        build = LayerFactory(ReferenceNamer())
        context_fc = build.fc(ef_dim)  # the reference defines the context template first
        self.encoder = StageIIImageEncoder(df_dim, build, name="encoder")
        self.logit = ConditionalLogit(df_dim, lr_size // 16, context_fc, build, name="logit")


def build_stage_ii(config, embedding_dim, lr_size=LR_IMAGE_SIZE):
    """Create the four networks of Stage-II from a config tree (and their
    variables): Stage-I generator and discriminator, Stage-II generator and
    discriminator."""
    gan, aug = config.GAN, config.TRAIN.COND_AUGMENTATION
    if gan.NETWORK_TYPE != "default":
        raise ValueError(f"GAN.NETWORK_TYPE is '{gan.NETWORK_TYPE}'; Stage-II exists only for 'default'.")
    generator, discriminator = build_stage_i(config, embedding_dim, lr_size)
    hr_generator = StageIIGenerator(ef_dim=gan.EMBEDDING_DIM, gf_dim=gan.GF_DIM, lr_size=lr_size,
                                    cond_augmentation=aug)
    hr_discriminator = StageIIDiscriminator(df_dim=gan.DF_DIM, ef_dim=gan.EMBEDDING_DIM, lr_size=lr_size)
    emb = tf.zeros((1, embedding_dim))
    eps = tf.zeros((1, gan.EMBEDDING_DIM))
    lr = generator(emb, eps, tf.zeros((1, config.Z_DIM)), training=False)["images"]
    hr = hr_generator(lr, emb, eps, training=False)["images"]
    hr_discriminator(hr, emb, training=False)
    return generator, discriminator, hr_generator, hr_discriminator

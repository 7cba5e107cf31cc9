"""Stage-I training: one discriminator update, then one generator update, per
batch, each with its own noise, exactly as the reference loop."""

import tensorflow as tf

from misc.gan_trainer import ConditionalGAN
from misc.image_utils import normalize_images
from misc.optimizers import ReferenceAdam


class StageIGAN(ConditionalGAN):
    """Stage-I trainer.

    A batch is a dict with ``images``, ``wrong_images`` (uint8 or [-1, 1]
    float, B x s x s x 3), ``embeddings`` (B x D) and the noise of both
    updates: ``d_eps``, ``d_z`` (discriminator update) and ``g_eps``, ``g_z``
    (generator update); ``eps`` is truncated normal (B x EMBEDDING_DIM),
    ``z`` normal (B x Z_DIM).
    """

    def __init__(self, generator, discriminator, name="stage_i_gan", **kwargs):
        super().__init__(name=name, **kwargs)
        self.generator = generator
        self.discriminator = discriminator

    @classmethod
    def from_config_tree(cls, config, generator, discriminator):
        train = config.TRAIN
        gan = cls(generator, discriminator, kl_coeff=train.COEFF.KL, use_wrong=train.B_WRONG,
                  cond_augmentation=train.COND_AUGMENTATION)
        gan.compile(g_optimizer=ReferenceAdam(train.GENERATOR_LR),
                    d_optimizer=ReferenceAdam(train.DISCRIMINATOR_LR))
        return gan

    def compile(self, g_optimizer, d_optimizer, **kwargs):
        super().compile(**kwargs)
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.g_optimizer.build(self.generator.trainable_weights)
        self.d_optimizer.build(self.discriminator.trainable_weights)
        self.built = True  # the networks are built; the trainer has no call() of its own

    def optimizers(self):
        return {"g_optimizer": self.g_optimizer, "d_optimizer": self.d_optimizer}

    def networks(self):
        return {"generator": self.generator, "discriminator": self.discriminator}

    def reference_optimizer_layout(self):
        """(optimizer, network scope, Adam slot names, beta-power suffix) as
        the reference Stage-I trainer created them (generator first)."""
        return [(self.g_optimizer, "g_net", ("Adam", "Adam_1"), ""),
                (self.d_optimizer, "d_net", ("Adam", "Adam_1"), "_1")]

    def noise_spec(self):
        """Noise each batch must carry: name -> (size, distribution)."""
        ef, z = self.generator.ef_dim, self.generator.z_dim
        return {"d_eps": (ef, "truncated_normal"), "d_z": (z, "normal"),
                "g_eps": (ef, "truncated_normal"), "g_z": (z, "normal")}

    def discriminator_step(self, batch):
        """Update D; return the reference's D-run values (incl. its g_loss)
        and outputs (CA, fakes, logits)."""
        return self.discriminator_run(
            self.generator, self.discriminator, self.d_optimizer,
            normalize_images(batch["images"]), normalize_images(batch["wrong_images"]),
            batch["embeddings"], batch["d_eps"], batch["d_z"])

    def generator_step(self, batch):
        """Update G (CA included) through D's verdict on fresh fakes."""
        return self.generator_run(self.generator, self.discriminator, self.g_optimizer,
                                  batch["embeddings"], batch["g_eps"], batch["g_z"])

    def train_step(self, batch):
        d_losses, d_out = self.discriminator_step(batch)
        g_losses = self.generator_step(batch)
        # As the reference's summaries: d_* from the D run, g_* from the G run.
        summaries = {k: v for k, v in d_losses.items() if k.startswith("d_")}
        summaries.update({k: g_losses[k] for k in ("g_loss", "g_loss_kl_loss")})
        summaries["d_learning_rate"] = tf.cast(self.d_optimizer.learning_rate, tf.float32)
        summaries["g_learning_rate"] = tf.cast(self.g_optimizer.learning_rate, tf.float32)
        epoch_values = {"d_loss": d_losses["d_loss"], "g_loss": d_losses["g_loss"]}
        return self.finish_step(epoch_values, summaries, {"hist_c": d_out["c"], "hist_z": batch["d_z"]})

    def sample(self, embeddings, eps=None, z=None):
        """Inference-mode images (moving BN statistics); ``z=None`` draws
        fresh noise, pass zeros for the reference trainer's sampler."""
        return self.generator(embeddings, eps, z, training=False)["images"]

"""Stage-I training: one discriminator update, then one generator update, per
batch, each with its own noise, exactly as the reference loop.

``StageIRules`` are the reference's Stage-I update rules -- the losses of a
discriminator run and a generator run, and their gradients -- on whatever
networks they are given; the trainer (``StageIGAN``) runs them on its
networks and applies the gradients.  The Stage-II trainer reuses the rules
for its own networks and for the Stage-I networks it fine-tunes.

One name per layer of an update: the trainer's ``*_update`` (run the rules,
apply the gradients), the rules' ``*_gradients`` (differentiate) and
``*_losses`` (the forward passes and losses).
"""

import tensorflow as tf

from misc.training.acceleration import use_xla
from misc.training.gan_trainer import GANTrainer, learning_rate_for_epoch, normalize_images
from misc.training.losses import discriminator_losses, generator_adversarial_loss, kl_loss
from misc.training.optimizers import ReferenceAdam


class StageIRules:
    """The reference's Stage-I losses and gradients on given networks.

    Keyword arguments:
      kl_coeff: TRAIN.COEFF.KL, the weight of the CA's KL term.
      use_wrong: TRAIN.B_WRONG, the discriminator's wrong-pair term.
      cond_augmentation: TRAIN.COND_AUGMENTATION (without it no KL term).
    ``scale(loss)`` (the gradients' methods) is the loss to differentiate:
    scaled by a dynamic loss scale under float16, else the loss itself.
    """

    def __init__(self, *, kl_coeff=2.0, use_wrong=True, cond_augmentation=True):
        self.kl_coeff = kl_coeff
        self.use_wrong = use_wrong
        self.cond_augmentation = cond_augmentation

    def kl_term(self, ca_out):
        """COEFF.KL * KL of a generator's CA output (the reference's
        ``g_loss_kl_loss``); zero without conditioning augmentation."""
        if not self.cond_augmentation:
            return tf.constant(0.0)
        return self.kl_coeff * kl_loss(ca_out["mean"], ca_out["log_sigma"])

    def discriminator_losses(self, discriminator, real, wrong, fake, embeddings):
        """D on the three image sets, each pass with its own batch statistics,
        and the reference losses: ``d_loss``, ``d_loss_real``,
        ``d_loss_wrong`` (with B_WRONG), ``d_loss_fake`` and ``g_loss_fake``
        (the generator's adversarial term on the same fakes).  Returns
        (losses, logits).

        The reference leaves the order of the three moving-average updates
        undefined (docs/reference_quirks.md#q11); we apply them wrong, real,
        fake: the order its executor chose for almost all layers.  Without
        B_WRONG the reference never evaluates the wrong pass.
        """
        wrong_logit = discriminator(wrong, embeddings, training=True) if self.use_wrong else None
        real_logit = discriminator(real, embeddings, training=True)
        fake_logit = discriminator(fake, embeddings, training=True)
        losses = discriminator_losses(real_logit, wrong_logit, fake_logit, self.use_wrong)
        losses["g_loss_fake"] = generator_adversarial_loss(fake_logit)
        return losses, {"logit_real": real_logit, "logit_wrong": wrong_logit, "logit_fake": fake_logit}

    def discriminator_gradients(self, discriminator, real, wrong, fake, embeddings, scale):
        """The gradients of ``d_loss`` for D's trainable weights (the fakes
        held constant), and ``discriminator_losses``'s losses and logits."""
        fake = tf.stop_gradient(fake)
        with tf.GradientTape() as tape:
            losses, logits = self.discriminator_losses(discriminator, real, wrong, fake, embeddings)
            objective = scale(losses["d_loss"])
        return tape.gradient(objective, discriminator.trainable_weights), losses, logits

    def generator_losses(self, generator, discriminator, embeddings, eps, z):
        """G (CA included) on fresh noise and D's verdict on its fakes, both
        in training mode: ``g_loss`` = adversarial term + KL term."""
        g_out = generator(embeddings, eps, z, training=True)
        adversarial = generator_adversarial_loss(discriminator(g_out["images"], embeddings, training=True))
        kl = self.kl_term(g_out)
        return {"g_loss": adversarial + kl, "g_loss_kl_loss": kl, "g_loss_fake": adversarial}

    def generator_gradients(self, generator, discriminator, embeddings, eps, z, scale):
        """The gradients of ``g_loss`` for G's trainable weights, and the
        losses."""
        with tf.GradientTape() as tape:
            losses = self.generator_losses(generator, discriminator, embeddings, eps, z)
            objective = scale(losses["g_loss"])
        return tape.gradient(objective, generator.trainable_weights), losses


class StageIGAN(GANTrainer):
    """Stage-I trainer.

    A batch is a dict with ``images``, ``wrong_images`` (uint8 or [-1, 1]
    float, B x s x s x 3), ``embeddings`` (B x D) and the noise of both
    updates: ``d_eps``, ``d_z`` (discriminator update) and ``g_eps``, ``g_z``
    (generator update); ``eps`` is truncated normal (B x EMBEDDING_DIM),
    ``z`` normal (B x Z_DIM).  Keyword arguments: those of ``StageIRules``.
    """

    epoch_log_keys = ("d_loss", "g_loss")

    def __init__(self, generator, discriminator, *, kl_coeff=2.0, use_wrong=True,
                 cond_augmentation=True, name="stage_i_gan", **kwargs):
        super().__init__(name=name, **kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.rules = StageIRules(kl_coeff=kl_coeff, use_wrong=use_wrong, cond_augmentation=cond_augmentation)

    @classmethod
    def from_config_tree(cls, config, generator, discriminator, jit_compile=None):
        """The trainer of a config; ``jit_compile``: compile the step with
        XLA (default: ``use_xla``, this machine's choice for TRAIN.XLA)."""
        train = config.TRAIN
        gan = cls(generator, discriminator, kl_coeff=train.COEFF.KL, use_wrong=train.B_WRONG,
                  cond_augmentation=train.COND_AUGMENTATION)
        gan.compile(**{name: ReferenceAdam(rate) for name, rate in base_learning_rates(config).items()},
                    jit_compile=use_xla(config) if jit_compile is None else jit_compile)
        if generator.compute_dtype == "float16":
            gan.use_loss_scaling()
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

    def discriminator_update(self, batch):
        """The reference's D run: G forward in training mode (its batch norms
        update), D's three passes, one D update; also the G loss that run
        logged.  Returns (losses, outputs: CA, fakes and logits)."""
        embeddings = batch["embeddings"]
        g_out = self.generator(embeddings, batch["d_eps"], batch["d_z"], training=True)
        gradients, losses, logits = self.rules.discriminator_gradients(
            self.discriminator, normalize_images(batch["images"]), normalize_images(batch["wrong_images"]),
            g_out["images"], embeddings, self.loss_scale(self.d_optimizer))
        self.apply_gradients(self.d_optimizer, gradients, self.discriminator.trainable_weights)
        losses["g_loss_kl_loss"] = self.rules.kl_term(g_out)
        losses["g_loss"] = losses["g_loss_fake"] + losses["g_loss_kl_loss"]
        return losses, {**logits, **g_out}

    def generator_update(self, batch):
        """The reference's G run: G (CA included) updated through D's verdict
        (D in training mode) on fresh fakes.  Returns its losses."""
        gradients, losses = self.rules.generator_gradients(
            self.generator, self.discriminator, batch["embeddings"], batch["g_eps"], batch["g_z"],
            self.loss_scale(self.g_optimizer))
        self.apply_gradients(self.g_optimizer, gradients, self.generator.trainable_weights)
        return losses

    def train_step(self, batch):
        d_losses, d_out = self.discriminator_update(batch)
        g_losses = self.generator_update(batch)
        # As the reference's summaries: d_* from the D run, g_* from the G run.
        summaries = {k: v for k, v in d_losses.items() if k.startswith("d_")}
        summaries.update({k: g_losses[k] for k in ("g_loss", "g_loss_kl_loss")})
        rates = {"d_learning_rate": self.d_optimizer.learning_rate,
                 "g_learning_rate": self.g_optimizer.learning_rate}
        epoch_values = {"d_loss": d_losses["d_loss"], "g_loss": d_losses["g_loss"]}
        return self.finish_step(epoch_values, summaries, {"hist_c": d_out["c"], "hist_z": batch["d_z"]},
                                rates)

    def sample(self, embeddings, eps=None, z=None):
        """Inference-mode images (moving BN statistics), float32 whatever the
        compute precision; ``z=None`` draws fresh noise, pass zeros for the
        reference trainer's sampler."""
        return tf.cast(self.generator(embeddings, eps, z, training=False)["images"], tf.float32)


def base_learning_rates(config):
    """Initial rate of each optimizer (generator first, as the reference
    created them)."""
    train = config.TRAIN
    return {"g_optimizer": train.GENERATOR_LR, "d_optimizer": train.DISCRIMINATOR_LR}


def learning_rate_schedule(config):
    """``rate_for(optimizer name, epoch)``: the rates halve every
    TRAIN.LR_DECAY_EPOCH epochs (docs/reference_quirks.md#q13)."""
    base = base_learning_rates(config)
    decay_every = config.TRAIN.LR_DECAY_EPOCH
    return lambda name, epoch: learning_rate_for_epoch(base[name], epoch, decay_every)

"""Stage-I training: one discriminator update, then one generator update, per
batch, each with its own noise, exactly as the reference loop.

``StageIUpdates`` holds the reference's Stage-I update rules (losses, the
discriminator step, the generator step) as functions of the networks and
optimizers they are given; ``StageIGAN`` applies them to its own networks,
and the Stage-II trainer reuses them for its networks and for the Stage-I
networks it fine-tunes.
"""

import tensorflow as tf

from misc.acceleration import use_xla
from misc.gan_trainer import GANTrainer, learning_rate_for_epoch
from misc.image_utils import normalize_images
from misc.losses import discriminator_losses, generator_adversarial_loss, kl_loss
from misc.optimizers import ReferenceAdam


class StageIUpdates:
    """The reference's Stage-I updates on given networks and optimizers.

    ``apply_gradients(optimizer, gradients, variables)`` applies one update
    (the trainer's, which also counts ``global_step``); ``scale_loss(optimizer,
    loss)`` is the loss to differentiate for it (loss scaling under float16).  ``kl_coeff``,
    ``use_wrong`` and ``cond_augmentation`` are TRAIN.COEFF.KL, TRAIN.B_WRONG
    and TRAIN.COND_AUGMENTATION.
    """

    def __init__(self, apply_gradients, scale_loss, *, kl_coeff=2.0, use_wrong=True, cond_augmentation=True):
        self.apply_gradients = apply_gradients
        self.scale_loss = scale_loss
        self.kl_coeff = kl_coeff
        self.use_wrong = use_wrong
        self.cond_augmentation = cond_augmentation

    def kl_term(self, ca_out):
        """COEFF.KL * KL of a generator's CA output (the reference's
        ``g_loss_kl_loss``); zero without conditioning augmentation."""
        if not self.cond_augmentation:
            return tf.constant(0.0)
        return self.kl_coeff * kl_loss(ca_out["mean"], ca_out["log_sigma"])

    def _discriminator_passes(self, discriminator, real, wrong, fake, embeddings):
        """D on the three image sets, each pass with its own batch statistics,
        and the reference losses: ``d_loss``, ``d_loss_real``,
        ``d_loss_wrong`` (with B_WRONG), ``d_loss_fake`` and ``g_loss_fake``
        (the generator's adversarial term on the same fakes).

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

    def discriminator_update(self, discriminator, optimizer, real, wrong, fake, embeddings):
        """D's three passes on given fakes and, unless ``optimizer`` is None,
        one D update on ``d_loss``; returns the losses and logits (see
        ``_discriminator_passes``)."""
        fake = tf.stop_gradient(fake)
        if optimizer is None:
            return self._discriminator_passes(discriminator, real, wrong, fake, embeddings)
        with tf.GradientTape() as tape:
            losses, logits = self._discriminator_passes(discriminator, real, wrong, fake, embeddings)
            objective = self.scale_loss(optimizer, losses["d_loss"])
        variables = discriminator.trainable_weights
        self.apply_gradients(optimizer, tape.gradient(objective, variables), variables)
        return losses, logits

    def discriminator_step(self, generator, discriminator, optimizer, real, wrong, embeddings, eps, z):
        """The reference's D run: G forward in training mode (its batch norms
        update), D's three passes, a D update; also the G loss that run
        logged.  Returns (losses, outputs: CA, fakes and logits)."""
        g_out = generator(embeddings, eps, z, training=True)
        losses, logits = self.discriminator_update(discriminator, optimizer, real, wrong,
                                                   g_out["images"], embeddings)
        losses["g_loss_kl_loss"] = self.kl_term(g_out)
        losses["g_loss"] = losses["g_loss_fake"] + losses["g_loss_kl_loss"]
        return losses, {**logits, **g_out}

    def generator_step(self, generator, discriminator, optimizer, embeddings, eps, z):
        """The reference's G run: G (CA included) is updated through D's
        verdict (D in training mode) on fresh fakes."""
        with tf.GradientTape() as tape:
            g_out = generator(embeddings, eps, z, training=True)
            fake_logit = discriminator(g_out["images"], embeddings, training=True)
            adversarial = generator_adversarial_loss(fake_logit)
            kl = self.kl_term(g_out)
            g_loss = adversarial + kl
            objective = self.scale_loss(optimizer, g_loss)
        variables = generator.trainable_weights
        self.apply_gradients(optimizer, tape.gradient(objective, variables), variables)
        return {"g_loss": g_loss, "g_loss_kl_loss": kl, "g_loss_fake": adversarial}


class StageIGAN(GANTrainer):
    """Stage-I trainer.

    A batch is a dict with ``images``, ``wrong_images`` (uint8 or [-1, 1]
    float, B x s x s x 3), ``embeddings`` (B x D) and the noise of both
    updates: ``d_eps``, ``d_z`` (discriminator update) and ``g_eps``, ``g_z``
    (generator update); ``eps`` is truncated normal (B x EMBEDDING_DIM),
    ``z`` normal (B x Z_DIM).
    """

    epoch_log_keys = ("d_loss", "g_loss")

    def __init__(self, generator, discriminator, *, kl_coeff=2.0, use_wrong=True,
                 cond_augmentation=True, name="stage_i_gan", **kwargs):
        super().__init__(name=name, **kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.updates = StageIUpdates(self.apply_gradients, self.scale_loss, kl_coeff=kl_coeff,
                                     use_wrong=use_wrong, cond_augmentation=cond_augmentation)

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

    def discriminator_step(self, batch):
        """Update D; return the reference's D-run values (incl. its g_loss)
        and outputs (CA, fakes, logits)."""
        return self.updates.discriminator_step(
            self.generator, self.discriminator, self.d_optimizer,
            normalize_images(batch["images"]), normalize_images(batch["wrong_images"]),
            batch["embeddings"], batch["d_eps"], batch["d_z"])

    def generator_step(self, batch):
        """Update G (CA included) through D's verdict on fresh fakes."""
        return self.updates.generator_step(self.generator, self.discriminator, self.g_optimizer,
                                           batch["embeddings"], batch["g_eps"], batch["g_z"])

    def train_step(self, batch):
        d_losses, d_out = self.discriminator_step(batch)
        g_losses = self.generator_step(batch)
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

"""Stage-II training, as the reference loop.

Per batch (TRAIN.FINETUNE_LR False): one Stage-II discriminator update, then
one Stage-II generator update, each with fresh noise (z and eps for the
Stage-I generator, eps for the Stage-II CA).  The Stage-I generator runs in
training mode (batch statistics; its moving statistics update) but stays
frozen.  The Stage-I discriminator's losses on the low-resolution images are
computed and logged in the first update, as the reference did (which also
updates that discriminator's moving statistics: docs/reference_quirks.md#q10).

With FINETUNE_LR True there are four updates per batch: Stage-II D; Stage-II
G together with the Stage-I G fine-tuned on the Stage-II G loss at
FT_LR_RETIO * lr (both gradients from the same pre-update state); Stage-I D
and Stage-I G on their own losses at FT_LR_RETIO * lr
(docs/reference_quirks.md#q14).
"""

import tensorflow as tf

from misc.nets.layers import downsample_like_reference
from misc.training.acceleration import use_xla
from misc.training.gan_trainer import GANTrainer, learning_rate_for_epoch, normalize_images
from misc.training.losses import generator_adversarial_loss
from misc.training.optimizers import ReferenceAdam
from stageI.trainer import StageIRules


def prefixed(prefix, values):
    return {prefix + k: v for k, v in values.items()}


class StageIIRules(StageIRules):
    """The reference's Stage-II rules: the Stage-I ones (the Stage-II D and
    its losses are the Stage-I ones on the high-resolution networks), and
    the Stage-II generator's loss, through the Stage-I generator it starts
    from."""

    def hr_generator_gradients(self, generator, hr_generator, hr_discriminator, embeddings, eps, z,
                               hr_eps, scale, finetune_scale=None):
        """The Stage-I G (training mode, frozen: outside the tape) makes
        images, the Stage-II G (CA included) refines them, D's verdict gives
        ``hr_g_loss``.  Returns (its gradients for the Stage-II G, with
        ``finetune_scale`` (FINETUNE_LR) its gradients for the Stage-I G from
        the same state, else None; the losses)."""
        finetune = finetune_scale is not None
        with tf.GradientTape(persistent=finetune) as tape:
            if finetune:
                g_out = generator(embeddings, eps, z, training=True)
            else:
                with tape.stop_recording():
                    g_out = generator(embeddings, eps, z, training=True)
            hr_out = hr_generator(g_out["images"], embeddings, hr_eps, training=True)
            adversarial = generator_adversarial_loss(
                hr_discriminator(hr_out["images"], embeddings, training=True))
            hr_g_loss = adversarial + self.kl_term(hr_out)
            objective = scale(hr_g_loss)
            if finetune:
                ft_objective = finetune_scale(hr_g_loss)
        gradients = tape.gradient(objective, hr_generator.trainable_weights)
        ft_gradients = tape.gradient(ft_objective, generator.trainable_weights) if finetune else None
        del tape
        return gradients, ft_gradients, {"hr_g_loss": hr_g_loss, "hr_g_loss_fake": adversarial}


class StageIIGAN(GANTrainer):
    """Stage-II trainer.

    A batch holds ``images``, ``wrong_images`` (4s x 4s), ``embeddings`` and
    the noise of each update (see ``noise_spec``): ``d_*`` for the Stage-II D
    update, ``g_*`` for the Stage-II G update, and with FINETUNE_LR ``ld_*``,
    ``lg_*`` for the Stage-I D and G updates.
    """

    epoch_log_keys = ("hr_d_loss", "hr_g_loss", "d_loss", "g_loss")

    def __init__(self, generator, discriminator, hr_generator, hr_discriminator, *,
                 kl_coeff=2.0, use_wrong=True, cond_augmentation=True, finetune_lr=False,
                 name="stage_ii_gan", **kwargs):
        super().__init__(name=name, **kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.hr_generator = hr_generator
        self.hr_discriminator = hr_discriminator
        self.finetune_lr = finetune_lr
        self.rules = StageIIRules(kl_coeff=kl_coeff, use_wrong=use_wrong, cond_augmentation=cond_augmentation)

    @classmethod
    def from_config_tree(cls, config, generator, discriminator, hr_generator, hr_discriminator,
                         jit_compile=None):
        """The trainer of a config; ``jit_compile``: compile the step with
        XLA (default: ``use_xla``, this machine's choice for TRAIN.XLA)."""
        train = config.TRAIN
        gan = cls(generator, discriminator, hr_generator, hr_discriminator,
                  kl_coeff=train.COEFF.KL, use_wrong=train.B_WRONG,
                  cond_augmentation=train.COND_AUGMENTATION, finetune_lr=train.FINETUNE_LR)
        rates = base_learning_rates(config)
        gan.compile(**{name: ReferenceAdam(rate) for name, rate in rates.items()},
                    jit_compile=use_xla(config) if jit_compile is None else jit_compile)
        if hr_generator.compute_dtype == "float16":
            gan.use_loss_scaling()
        return gan

    def compile(self, d_optimizer, g_optimizer, hr_d_optimizer, hr_g_optimizer, ft_g_optimizer,
                **kwargs):
        """The reference's five optimizers, in its creation order."""
        super().compile(**kwargs)
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer
        self.hr_d_optimizer, self.hr_g_optimizer = hr_d_optimizer, hr_g_optimizer
        self.ft_g_optimizer = ft_g_optimizer
        for optimizer, network in self._optimizer_networks():
            optimizer.build(network.trainable_weights)
        self.built = True  # the networks are built; the trainer has no call() of its own

    def _optimizer_networks(self):
        return [(self.d_optimizer, self.discriminator), (self.g_optimizer, self.generator),
                (self.hr_d_optimizer, self.hr_discriminator),
                (self.hr_g_optimizer, self.hr_generator), (self.ft_g_optimizer, self.generator)]

    def optimizers(self):
        return {"d_optimizer": self.d_optimizer, "g_optimizer": self.g_optimizer,
                "hr_d_optimizer": self.hr_d_optimizer, "hr_g_optimizer": self.hr_g_optimizer,
                "ft_g_optimizer": self.ft_g_optimizer}

    def networks(self):
        return {"generator": self.generator, "discriminator": self.discriminator,
                "hr_generator": self.hr_generator, "hr_discriminator": self.hr_discriminator}

    def reference_optimizer_layout(self):
        """(optimizer, scope, Adam slot names, beta-power suffix) as the
        reference Stage-II trainer created them: d_, g_, hr_d_, hr_g_, ft."""
        return [(self.d_optimizer, "d_net", ("Adam", "Adam_1"), ""),
                (self.g_optimizer, "g_net", ("Adam", "Adam_1"), "_1"),
                (self.hr_d_optimizer, "hr_d_net", ("Adam", "Adam_1"), "_2"),
                (self.hr_g_optimizer, "hr_g_net", ("Adam", "Adam_1"), "_3"),
                (self.ft_g_optimizer, "g_net", ("Adam_2", "Adam_3"), "_4")]

    def noise_spec(self):
        ef, z = self.hr_generator.ef_dim, self.generator.z_dim
        runs = ("d", "g", "ld", "lg") if self.finetune_lr else ("d", "g")
        spec = {}
        for run in runs:
            spec[f"{run}_eps"] = (ef, "truncated_normal")
            spec[f"{run}_z"] = (z, "normal")
            if run in ("d", "g"):
                spec[f"{run}_hr_eps"] = (ef, "truncated_normal")
        return spec

    # -- the reference's runs ---------------------------------------------

    def images_of(self, batch):
        """HR real/wrong images and their low-resolution versions (the
        reference's legacy bilinear resize: every 4th pixel)."""
        real = normalize_images(batch["images"])
        wrong = normalize_images(batch["wrong_images"])
        size = (self.generator.image_size, self.generator.image_size)
        return real, wrong, downsample_like_reference(real, size), downsample_like_reference(wrong, size)

    def stage_ii_forward(self, embeddings, eps, z, hr_eps):
        """Stage-I G then Stage-II G, both in training mode."""
        g_out = self.generator(embeddings, eps, z, training=True)
        hr_out = self.hr_generator(g_out["images"], embeddings, hr_eps, training=True)
        return g_out, hr_out

    def hr_discriminator_update(self, batch):
        """Update the Stage-II D; also the logged values of that run: both
        stages' G losses and the Stage-I D losses on the LR images."""
        real, wrong, lr_real, lr_wrong = self.images_of(batch)
        emb = batch["embeddings"]
        g_out, hr_out = self.stage_ii_forward(emb, batch["d_eps"], batch["d_z"], batch["d_hr_eps"])
        gradients, hr_losses, hr_logits = self.rules.discriminator_gradients(
            self.hr_discriminator, real, wrong, hr_out["images"], emb, self.loss_scale(self.hr_d_optimizer))
        self.apply_gradients(self.hr_d_optimizer, gradients, self.hr_discriminator.trainable_weights)
        hr_losses["g_loss"] = hr_losses["g_loss_fake"] + self.rules.kl_term(hr_out)
        lr_losses, lr_logits = self.rules.discriminator_losses(
            self.discriminator, lr_real, lr_wrong, tf.stop_gradient(g_out["images"]), emb)
        lr_losses["g_loss_kl_loss"] = self.rules.kl_term(g_out)
        lr_losses["g_loss"] = lr_losses["g_loss_fake"] + lr_losses["g_loss_kl_loss"]
        outputs = {**g_out, **prefixed("hr_", hr_out), **lr_logits, **prefixed("hr_", hr_logits),
                   "lr_real_images": lr_real, "lr_wrong_images": lr_wrong}
        return {**lr_losses, **prefixed("hr_", hr_losses)}, outputs

    def hr_generator_update(self, batch):
        """Update the Stage-II G (CA included); with FINETUNE_LR also the
        Stage-I G on the same loss at the fine-tuning rate, from the same
        pre-update state."""
        gradients, ft_gradients, losses = self.rules.hr_generator_gradients(
            self.generator, self.hr_generator, self.hr_discriminator, batch["embeddings"], batch["g_eps"],
            batch["g_z"], batch["g_hr_eps"], self.loss_scale(self.hr_g_optimizer),
            self.loss_scale(self.ft_g_optimizer) if self.finetune_lr else None)
        if ft_gradients is not None:
            self.apply_gradients(self.ft_g_optimizer, ft_gradients, self.generator.trainable_weights)
        self.apply_gradients(self.hr_g_optimizer, gradients, self.hr_generator.trainable_weights)
        return losses

    def finetune_discriminator_update(self, batch):
        """FINETUNE_LR's Stage-I D update on its own loss, on the
        low-resolution images (G in training mode first, as in Stage-I);
        returns its losses."""
        _, _, lr_real, lr_wrong = self.images_of(batch)
        emb = batch["embeddings"]
        g_out = self.generator(emb, batch["ld_eps"], batch["ld_z"], training=True)
        gradients, losses, _ = self.rules.discriminator_gradients(
            self.discriminator, lr_real, lr_wrong, g_out["images"], emb, self.loss_scale(self.d_optimizer))
        self.apply_gradients(self.d_optimizer, gradients, self.discriminator.trainable_weights)
        return losses

    def finetune_generator_update(self, batch):
        """FINETUNE_LR's Stage-I G update on its own loss; returns its losses."""
        gradients, losses = self.rules.generator_gradients(
            self.generator, self.discriminator, batch["embeddings"], batch["lg_eps"], batch["lg_z"],
            self.loss_scale(self.g_optimizer))
        self.apply_gradients(self.g_optimizer, gradients, self.generator.trainable_weights)
        return losses

    def train_step(self, batch):
        d_losses, d_out = self.hr_discriminator_update(batch)
        hr_g_losses = self.hr_generator_update(batch)
        summaries = {k: v for k, v in d_losses.items() if k.startswith("hr_d_")}
        summaries.update(hr_g_losses)
        rates = {"hr_d_learning_rate": self.hr_d_optimizer.learning_rate,
                 "hr_g_learning_rate": self.hr_g_optimizer.learning_rate}
        if self.finetune_lr:
            d_losses_i = self.finetune_discriminator_update(batch)
            g_losses_i = self.finetune_generator_update(batch)
            summaries.update({k: v for k, v in d_losses_i.items() if k.startswith("d_")})
            summaries.update({k: g_losses_i[k] for k in ("g_loss", "g_loss_kl_loss", "g_loss_fake")})
        else:
            # The Stage-I losses the reference logged from the first run.
            summaries.update({k: v for k, v in d_losses.items() if k.startswith(("d_", "g_"))})
        epoch_values = {k: d_losses[k] for k in self.epoch_log_keys}
        histograms = {"hist_c": d_out["c"], "hist_z": batch["d_z"], "hist_hr_c": d_out["hr_c"]}
        return self.finish_step(epoch_values, summaries, histograms, rates)

    def sample(self, embeddings, eps=None, z=None, hr_eps=None):
        """Inference-mode Stage-I and Stage-II images, float32 (random z and
        eps unless given, as the reference sampler)."""
        lr = self.generator(embeddings, eps, z, training=False)["images"]
        hr = self.hr_generator(lr, embeddings, hr_eps, training=False)["images"]
        return tf.cast(lr, tf.float32), tf.cast(hr, tf.float32)


def base_learning_rates(config):
    """Initial rate of each optimizer: the Stage-I networks train at
    FT_LR_RETIO times the configured rates."""
    train = config.TRAIN
    ratio = train.FT_LR_RETIO
    return {"d_optimizer": train.DISCRIMINATOR_LR * ratio, "g_optimizer": train.GENERATOR_LR * ratio,
            "hr_d_optimizer": train.DISCRIMINATOR_LR, "hr_g_optimizer": train.GENERATOR_LR,
            "ft_g_optimizer": train.GENERATOR_LR * ratio}


def learning_rate_schedule(config):
    """``rate_for(optimizer name, epoch)``: the rates halve every
    TRAIN.LR_DECAY_EPOCH epochs after TRAIN.PRETRAINED_EPOCH
    (docs/reference_quirks.md#q13)."""
    base = base_learning_rates(config)
    train = config.TRAIN
    return lambda name, epoch: learning_rate_for_epoch(
        base[name], epoch, train.LR_DECAY_EPOCH, decay_after=train.PRETRAINED_EPOCH)

"""Stage-II update order and learning-rate ratios (docs/reference_quirks.md#q14).

FINETUNE_LR False: per batch, the Stage-II D then the Stage-II G update; the
Stage-I networks only have their batch-norm statistics moved.
FINETUNE_LR True: four updates per batch -- Stage-II D; Stage-II G and the
Stage-I G fine-tuned on the Stage-II G loss at FT_LR_RETIO * lr, both from
the same pre-update state; Stage-I D; Stage-I G, both at FT_LR_RETIO * lr.

A full ``train_step`` is compared with the same updates replayed one by one
on an identical copy: after one step from fresh Adam slots, each
optimizer's first moment is (1 - beta1) * (the gradient it applied), which
pins down the state each gradient was taken at.
"""

import numpy as np
import pytest
import tensorflow as tf

from golden_support import TEXT_DIM, tiny_config
from misc.data.input_pipeline import noise_for_step
from misc.training.losses import generator_adversarial_loss
from stageII.model import build_stage_ii
from stageII.trainer import StageIIGAN

LR = 2e-4
RATIO = 0.1
# A step measured as the difference of float32 weights is exact only up to an
# ulp of the weight (~0.1% of a 2e-5 step); the rates compared differ 10x.
STEP_TOLERANCE = dict(rel=5e-3)


def config(finetune):
    c = tiny_config()
    c.TRAIN.FINETUNE_LR = finetune
    c.TRAIN.FT_LR_RETIO = RATIO
    return c


def make_pair(finetune):
    """Two trainers with identical weights."""
    first = StageIIGAN.from_config_tree(config(finetune), *build_stage_ii(config(finetune), TEXT_DIM))
    second = StageIIGAN.from_config_tree(config(finetune), *build_stage_ii(config(finetune), TEXT_DIM))
    for a, b in zip(first.networks().values(), second.networks().values()):
        for name, var in b.reference_variables().items():
            var.assign(a.reference_variables()[name])
    return first, second


def batch_for(gan, seed=0):
    rng = np.random.default_rng(seed)
    batch = {"images": rng.integers(0, 256, (4, 256, 256, 3), dtype=np.uint8),
             "wrong_images": rng.integers(0, 256, (4, 256, 256, 3), dtype=np.uint8),
             "embeddings": rng.normal(size=(4, TEXT_DIM)).astype(np.float32)}
    batch.update({k: v.numpy() for k, v in noise_for_step(3, 0, 4, gan.noise_spec()).items()})
    return batch


def trainables(network):
    return {n: v.numpy() for n, v in network.reference_variables().items() if v.trainable}


def first_moment(optimizer, network):
    return {n: optimizer.slots(v)[0].numpy() for n, v in network.reference_variables().items() if v.trainable}


def gradient(loss_fn, network):
    variables = [v for v in network.reference_variables().values() if v.trainable]
    with tf.GradientTape() as tape:
        loss = loss_fn()
    names = [n for n, v in network.reference_variables().items() if v.trainable]
    return dict(zip(names, (g.numpy() for g in tape.gradient(loss, variables))))


def assert_applied(moments, grads, label):
    """The optimizer applied exactly these gradients (m = 0.5 g)."""
    for name, g in grads.items():
        np.testing.assert_allclose(2.0 * moments[name], g, rtol=1e-4, atol=1e-7, err_msg=f"{label}: {name}")


def max_step(before, after):
    return max(float(np.max(np.abs(after[n] - before[n]))) for n in before)


@pytest.fixture(scope="module")
def finetune_run():
    gan, replay = make_pair(finetune=True)
    batch = batch_for(gan)
    before = {k: trainables(n) for k, n in gan.networks().items()}
    gan.train_step(batch)
    return gan, replay, batch, before


def test_finetuning_learning_rates_and_steps(finetune_run):
    gan, _, _, before = finetune_run
    rates = {name: float(opt.learning_rate.numpy()) for name, opt in gan.optimizers().items()}
    assert rates == pytest.approx({"d_optimizer": RATIO * LR, "g_optimizer": RATIO * LR,
                                   "ft_g_optimizer": RATIO * LR, "hr_d_optimizer": LR,
                                   "hr_g_optimizer": LR})
    assert all(int(opt.iterations.numpy()) == 1 for opt in gan.optimizers().values())
    assert int(gan.global_step.numpy()) == 5  # one per optimizer application
    after = {k: trainables(n) for k, n in gan.networks().items()}
    # A first Adam step moves a weight by at most its rate (the full rate for
    # ordinary gradients); the Stage-I G takes two steps of 0.1 lr.
    expected = {"hr_discriminator": LR, "hr_generator": LR, "discriminator": RATIO * LR,
                "generator": 2 * RATIO * LR}
    for name, step in expected.items():
        assert max_step(before[name], after[name]) == pytest.approx(step, **STEP_TOLERANCE), name


def test_finetuning_update_order(finetune_run):
    gan, replay, batch, _ = finetune_run
    emb = batch["embeddings"]
    # 1. Stage-II D, from the initial state.
    replay.hr_discriminator_update(batch)
    np.testing.assert_equal(trainables(replay.hr_discriminator), trainables(gan.hr_discriminator))

    # 2. Stage-II G and the fine-tuning of Stage-I G: both gradients of the
    #    Stage-II G loss at the state after update 1.
    def hr_g_loss():
        g_out, hr_out = replay.stage_ii_forward(emb, batch["g_eps"], batch["g_z"], batch["g_hr_eps"])
        logit = replay.hr_discriminator(hr_out["images"], emb, training=True)
        return generator_adversarial_loss(logit) + replay.rules.kl_term(hr_out)

    assert_applied(first_moment(gan.hr_g_optimizer, gan.hr_generator),
                   gradient(hr_g_loss, replay.hr_generator), "Stage-II G")
    assert_applied(first_moment(gan.ft_g_optimizer, gan.generator),
                   gradient(hr_g_loss, replay.generator), "fine-tuned Stage-I G")
    replay.hr_generator_update(batch)
    np.testing.assert_equal(trainables(replay.hr_generator), trainables(gan.hr_generator))

    # 3. Stage-I D on the low-resolution images, after update 2.
    _, _, lr_real, lr_wrong = replay.images_of(batch)

    def d_loss():
        fake = replay.generator(emb, batch["ld_eps"], batch["ld_z"], training=True)["images"]
        losses, _ = replay.rules.discriminator_losses(replay.discriminator, lr_real, lr_wrong,
                                                      tf.stop_gradient(fake), emb)
        return losses["d_loss"]

    assert_applied(first_moment(gan.d_optimizer, gan.discriminator),
                   gradient(d_loss, replay.discriminator), "Stage-I D")
    replay.finetune_discriminator_update(batch)
    np.testing.assert_equal(trainables(replay.discriminator), trainables(gan.discriminator))

    # 4. Stage-I G on its own loss, after update 3.
    def g_loss():
        g_out = replay.generator(emb, batch["lg_eps"], batch["lg_z"], training=True)
        logit = replay.discriminator(g_out["images"], emb, training=True)
        return generator_adversarial_loss(logit) + replay.rules.kl_term(g_out)

    assert_applied(first_moment(gan.g_optimizer, gan.generator),
                   gradient(g_loss, replay.generator), "Stage-I G")


def test_without_finetuning_the_stage_i_networks_stay_frozen():
    gan = StageIIGAN.from_config_tree(config(False), *build_stage_ii(config(False), TEXT_DIM))
    batch = batch_for(gan)
    assert not any(k.startswith(("ld_", "lg_")) for k in gan.noise_spec())
    before = {k: {n: v.numpy() for n, v in net.reference_variables().items()}
              for k, net in gan.networks().items()}
    logs = gan.train_step(batch)
    for key in ("generator", "discriminator"):
        for name, var in gan.networks()[key].reference_variables().items():
            if var.trainable:
                np.testing.assert_array_equal(var.numpy(), before[key][name], err_msg=name)
    # ... but their batch norms ran in training mode (the reference's quirk)
    g_mean = gan.generator.reference_variables()["g_net/fc_batch_norm/batch_norm/mean"].numpy()
    assert not np.array_equal(g_mean, before["generator"]["g_net/fc_batch_norm/batch_norm/mean"])
    d_mean = gan.discriminator.reference_variables()["d_net/conv_batch_norm/conv_batch_norm/mean"].numpy()
    assert not np.array_equal(d_mean, before["discriminator"]["d_net/conv_batch_norm/conv_batch_norm/mean"])
    stage_i_optimizers = (gan.d_optimizer, gan.g_optimizer, gan.ft_g_optimizer)
    assert [int(o.iterations.numpy()) for o in stage_i_optimizers] == [0, 0, 0]
    assert int(gan.global_step.numpy()) == 2
    assert {"hr_d_loss", "hr_g_loss", "d_loss", "g_loss"} <= set(logs)

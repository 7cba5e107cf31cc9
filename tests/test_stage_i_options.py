"""Stage-I options beyond the golden fixture's configuration."""

import numpy as np
import pytest
import tensorflow as tf

from golden_support import TEXT_DIM, recorded_batch_statistics, tiny_config
from misc.data.input_pipeline import noise_for_step
from misc.nets.conditioning import kl_divergence_terms
from misc.nets.layers import BatchNorm
from stageI.model import build_stage_i
from stageI.trainer import StageIGAN


def make_gan(**options):
    config = tiny_config()
    for key, value in options.items():
        section, name = key.split(".")
        config[section][name] = value
    return StageIGAN.from_config_tree(config, *build_stage_i(config, TEXT_DIM))


def batch_for(gan, seed=0):
    rng = np.random.default_rng(seed)
    batch = {"images": rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8),
             "wrong_images": rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8),
             "embeddings": rng.normal(size=(4, TEXT_DIM)).astype(np.float32)}
    batch.update({k: v.numpy() for k, v in noise_for_step(0, 0, 4, gan.noise_spec()).items()})
    return batch


def test_simple_network_shapes_forward_and_training_step():
    gan = make_gan(**{"GAN.NETWORK_TYPE": "simple"})
    names = set(gan.generator.reference_variables())
    assert "g_net/custom_deconv2d_3/custom_deconv2d_3/w" in names  # four transposed convs
    assert not any("custom_conv2d" in n for n in names)            # and no convolutions
    assert tuple(gan.generator.reference_variables()["g_net/custom_deconv2d/custom_deconv2d/w"].shape) \
        == (4, 4, 64, 128)  # [k, k, out = 4 gf, in = 8 gf]
    batch = batch_for(gan)
    images = gan.sample(batch["embeddings"], batch["d_eps"], batch["d_z"]).numpy()
    assert images.shape == (4, 64, 64, 3) and np.all(np.abs(images) <= 1)
    logits = gan.discriminator(tf.constant(images), batch["embeddings"], training=True)
    assert logits.shape == (4, 1, 1, 1)
    before = {n: v.numpy() for n, v in gan.generator.reference_variables().items() if v.trainable}
    logs = gan.train_step(batch)
    assert np.isfinite(float(logs["d_loss"])) and np.isfinite(float(logs["g_loss"]))
    moved = [n for n, v in gan.generator.reference_variables().items()
             if v.trainable and not np.array_equal(v.numpy(), before[n])]
    assert len(moved) == len(before)


def test_without_conditioning_augmentation_c_is_the_mean_and_there_is_no_kl():
    gan = make_gan(**{"TRAIN.COND_AUGMENTATION": False})
    batch = batch_for(gan)
    out = gan.generator(batch["embeddings"], batch["d_eps"], batch["d_z"], training=False)
    np.testing.assert_array_equal(out["c"].numpy(), out["mean"].numpy())
    losses, _ = gan.discriminator_update(batch)
    assert float(losses["g_loss_kl_loss"]) == 0.0
    assert float(losses["g_loss"]) == pytest.approx(float(losses["g_loss_fake"]))
    augmented = make_gan()
    out = augmented.generator(batch["embeddings"], batch["d_eps"], batch["d_z"], training=False)
    expected = out["mean"] + tf.exp(out["log_sigma"]) * batch["d_eps"]
    np.testing.assert_allclose(out["c"].numpy(), expected.numpy(), rtol=1e-6)
    losses, outputs = augmented.discriminator_update(batch)
    kl = 2.0 * float(tf.reduce_mean(kl_divergence_terms(outputs["mean"], outputs["log_sigma"])))
    assert float(losses["g_loss_kl_loss"]) == pytest.approx(kl, rel=1e-5)


def test_without_wrong_images_the_loss_is_real_plus_fake_and_wrong_is_never_run():
    gan = make_gan(**{"TRAIN.B_WRONG": False})
    batch = batch_for(gan)
    with recorded_batch_statistics((gan.generator, gan.discriminator)) as records:
        losses, _ = gan.discriminator_update(batch)
    assert "d_loss_wrong" not in losses
    assert float(losses["d_loss"]) == pytest.approx(float(losses["d_loss_real"] + losses["d_loss_fake"]))
    d_layers = {id(layer) for layer in gan.discriminator._flatten_layers(include_self=False, recursive=True)
                if isinstance(layer, BatchNorm)}
    d_calls = [layer for layer, _, _ in records if id(layer) in d_layers]
    assert len(d_calls) == 2 * len(d_layers)  # real and fake passes only

"""TRAIN.PRECISION: mixed bfloat16 (CPUs) and float16 with loss scaling (GPUs;
run here on the CPU), float32 weights, optimizer state, batch-norm
statistics and losses.

The golden fixture's forward pass stays close to the reference's float32
values: measured on the bundled fixture, the training-mode images differ by at
most 0.026 (bfloat16) and 0.0036 (float16) against an image spread of 0.14,
the logits by 0.019 and 0.0018, the losses by 0.0026 and 0.0003; the
tolerances below are about twice that.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from golden_support import BUNDLED, tiny_config
from misc.config import ConfigError
from misc.data.input_pipeline import noise_for_step
from misc.reference.importer import import_reference_checkpoint
from misc.training.acceleration import LossScaleOptimizer, dtype_policy, dtype_policy_name
from stageI.experiment import build_gan
from stageI.model import build_stage_i
from stageI.trainer import StageIGAN

BATCH = 4
TEXT_DIM = 12
# policy: (train images, logits, losses, test images) max |mixed - reference float32|
TOLERANCES = {"mixed_bfloat16": (0.06, 0.04, 0.006, 5e-4),
              "mixed_float16": (0.008, 0.004, 6e-4, 5e-5)}


def tiny_gan(precision):
    config = tiny_config()
    config.TRAIN.BATCH_SIZE = BATCH
    config.TRAIN.PRECISION = precision
    return build_gan(config, TEXT_DIM)


def batches(gan, steps):
    rng = np.random.default_rng(0)
    out = []
    for step in range(steps):
        batch = {"images": rng.integers(0, 256, (BATCH, 64, 64, 3), dtype=np.uint8),
                 "wrong_images": rng.integers(0, 256, (BATCH, 64, 64, 3), dtype=np.uint8),
                 "embeddings": rng.normal(size=(BATCH, TEXT_DIM)).astype(np.float32)}
        batch.update({k: v.numpy() for k, v in noise_for_step(0, step, BATCH, gan.noise_spec()).items()})
        out.append(batch)
    return tf.data.Dataset.from_tensor_slices({k: np.stack([b[k] for b in out]) for k in out[0]})


def all_float32_state(gan):
    state = [v for net in gan.networks().values() for v in net.variables]
    state += [v for opt in gan.optimizers().values() for v in opt.variables if v.dtype != "int64"]
    return all(v.dtype == "float32" for v in state)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_trains_in_low_precision_with_float32_state(precision):
    gan = tiny_gan(precision)
    compute = precision[len("mixed_"):]
    assert gan.compute_policy() == precision and gan.generator.compute_dtype == compute
    assert all_float32_state(gan)
    for scaler in gan._scalers.values():  # float16: no step skipped while the scale settles
        scaler.dynamic_scale.assign(2.0 ** 8)
    before = [v.numpy().copy() for v in gan.trainable_weights]
    for batch in batches(gan, 2):  # eager steps: tracing the step would take longer
        logs = gan.train_step(batch)
        assert all(np.isfinite(float(logs[k])) for k in ("d_loss", "g_loss", "summary/g_loss_kl_loss"))
        assert all(logs[k].dtype == tf.float32 for k in ("summary/d_loss", "summary/g_loss"))
    assert all(np.all(np.isfinite(v.numpy())) for v in gan.trainable_weights)
    assert all(np.any(v.numpy() != w) for v, w in zip(gan.trainable_weights, before))
    assert all(int(o.iterations.numpy()) == 2 for o in gan.optimizers().values())
    assert all_float32_state(gan) and int(gan.global_step.numpy()) == 4
    assert gan.sample(np.zeros((2, TEXT_DIM), np.float32)).dtype == tf.float32


def test_float16_loss_scaling_skips_non_finite_updates():
    gan = tiny_gan("mixed_float16")
    optimizer, variables = gan.d_optimizer, gan.discriminator.trainable_weights
    scaler = gan._scalers[id(optimizer)]
    assert set(gan._scalers) == {id(o) for o in gan.optimizers().values()}
    scale = float(scaler.dynamic_scale.numpy())
    assert float(gan.loss_scale(optimizer)(tf.constant(2.0))) == 2.0 * scale
    before = [v.numpy().copy() for v in variables]
    gradients = [tf.fill(v.shape, np.inf) for v in variables]
    gan.apply_gradients(optimizer, gradients, variables)
    assert all(np.array_equal(v.numpy(), w) for v, w in zip(variables, before))
    assert float(scaler.dynamic_scale.numpy()) == scale / 2 and int(optimizer.iterations.numpy()) == 0
    gan.apply_gradients(optimizer, [tf.ones_like(v) * scale / 2 for v in variables], variables)
    assert int(optimizer.iterations.numpy()) == 1
    m, _ = optimizer.slots(variables[0])
    np.testing.assert_allclose(m.numpy(), 0.5)  # (1 - beta1) * the unscaled gradient 1


def test_a_non_finite_gradient_on_one_replica_skips_the_step_on_all():
    """Each replica checks its own gradients before they are all-reduced: the
    verdict must be the same everywhere (two logical CPUs, one sees inf)."""
    # (reduced through one device: collective ops would share instance keys
    # with the other tests' strategies in this process)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        scaler = LossScaleOptimizer(keras.optimizers.SGD(1.0))

    def verdict():
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        gradient = tf.where(replica == 1, np.inf, 1.0)
        return scaler.check_finite([tf.fill([3], gradient)])

    verdicts = strategy.experimental_local_results(strategy.run(tf.function(verdict)))
    assert [bool(v) for v in verdicts] == [False, False]

    def all_finite():
        return scaler.check_finite([tf.ones([3])])

    assert [bool(v) for v in strategy.experimental_local_results(strategy.run(tf.function(all_finite)))] \
        == [True, True]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    fx = BUNDLED["stageI"]
    return fx, fx.unpack_checkpoint("v1", str(tmp_path_factory.mktemp("stageI_v1")))


@pytest.mark.parametrize("policy", sorted(TOLERANCES))
def test_golden_forward_stays_close_to_float32(reference, policy):
    fx, checkpoint = reference
    a = fx.arrays
    with dtype_policy(policy):
        config = fx.config()
        gan = StageIGAN.from_config_tree(config, *build_stage_i(config, fx.text_dim))
    import_reference_checkpoint(gan, checkpoint)
    z = np.zeros((fx.batch_size, fx.params["Z_DIM"]), np.float32)
    test = gan.sample(a["in/embeddings"], a["in/eps_test"], z)
    losses, out = gan.discriminator_update({
        "images": a["in/real_images"], "wrong_images": a["in/wrong_images"],
        "embeddings": a["in/embeddings"], "d_eps": a["in/eps_train"], "d_z": a["in/z_train"]})
    images, logits, loss, test_images = TOLERANCES[policy]

    def error(ours, key):
        ref = a[key]
        return float(np.max(np.abs(np.asarray(tf.cast(ours, tf.float32)).reshape(ref.shape) - ref)))

    train_error = error(out["images"], "train/fake_images")
    assert 1e-4 < train_error <= images  # computed in low precision, and close
    for which in ("real", "wrong", "fake"):
        assert error(out[f"logit_{which}"], f"train/logit_{which}") <= logits
    logged = [k[len("log/"):] for k in a if k.startswith("log/") and not k.endswith("learning_rate")]
    assert logged
    for key in logged:
        assert losses[key].dtype == tf.float32 and error(losses[key], f"log/{key}") <= loss
    assert error(test, "test/fake_images") <= test_images


def test_mixed_resolves_by_device_and_bad_values_are_named():
    config = tiny_config()
    config.TRAIN.PRECISION = "mixed"
    messages = []
    name = dtype_policy_name(config, log=messages.append)
    assert name in ("mixed_bfloat16", "float32")  # this suite runs on CPUs
    assert (name == "float32") == bool(messages)
    config.TRAIN.PRECISION = "half"
    with pytest.raises(ConfigError, match="TRAIN.PRECISION is 'half'"):
        dtype_policy_name(config)

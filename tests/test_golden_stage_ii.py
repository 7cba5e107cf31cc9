"""Stage-II against the reference's own outputs (../shared/golden/stageII).

The tiny reference checkpoint is imported by name (V1 and V2), the fixture's
noise is fed, and the test-phase sampler, the train-phase forward pass (both
stages, low-resolution images, all logits, losses and batch statistics), one
Stage-II D update and one Stage-II G update are compared with the fixture.

Conditioning of this fixture state (measured, and re-measured below against
a float64 evaluation): the generators are barely trained, so the fake image
batches are nearly constant and the Stage-II discriminator's first batch
norms see near-zero variances.  Its gradients then amplify the ~1e-5
rounding differences of any two float32 evaluations of the generators about
1000-fold.  Therefore:
  * the D update is compared on identical inputs -- fed the fixture's own
    Stage-II fake images -- where it matches to ~1e-6;
  * the G update's gradients are only defined to ~1% in float32 (the
    reference's own differ from float64 by 0.3-0.6%, ours by ~1%); they are
    compared at 3%, and weights must take the reference's step on >= 99% of
    their elements.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from golden_support import (
    TEXT_DIM,
    assert_adam_first_step,
    assert_close,
    check_adam_slots,
    bn_layer_names,
    check_deterministic_moving_statistics,
    check_discriminator_moving_statistics,
    check_statistics,
    label_statistics,
    load_arrays,
    read_manifest,
    reference_values,
    tiny_config,
    unpack_checkpoint,
)
from misc.conditioning import kl_divergence_terms
from misc.layers import record_batch_statistics
from misc.reference_import import import_reference_checkpoint
from stageII.model import build_stage_ii
from stageII.trainer import StageIIGAN

LR = 2e-4
G_GRADIENT_RTOL = 3e-2


def build_gan(checkpoint):
    config = tiny_config()
    gan = StageIIGAN.from_config_tree(config, *build_stage_ii(config, TEXT_DIM))
    return gan, import_reference_checkpoint(gan, checkpoint)


def networks(gan):
    return tuple(gan.networks().values())


def golden_batch(a):
    return {
        "images": a["in/real_images"], "wrong_images": a["in/wrong_images"],
        "embeddings": a["in/embeddings"],
        "d_eps": a["in/eps_train"], "d_z": a["in/z_train"], "d_hr_eps": a["in/hr_eps_train"],
        "g_eps": a["in/eps_gstep"], "g_z": a["in/z_gstep"], "g_hr_eps": a["in/hr_eps_gstep"],
    }


def slots(optimizer, network):
    return {n: [s.numpy() for s in optimizer.slots(v)]
            for n, v in network.reference_variables().items() if v.trainable}


@pytest.fixture(scope="module")
def arrays():
    return load_arrays("stageII")


@pytest.fixture(scope="module", params=["v1", "v2"])
def run(request, tmp_path_factory, arrays):
    checkpoint = unpack_checkpoint("stageII", request.param, str(tmp_path_factory.mktemp(request.param)))
    batch = golden_batch(arrays)
    r = {}
    # Sampler and the D run's forward values, on our own generated images.
    gan, r["report"] = build_gan(checkpoint)
    names = bn_layer_names(networks(gan))
    r["before"] = reference_values(networks(gan))
    r["test"] = gan.sample(arrays["in/embeddings"], arrays["in/eps_test"], arrays["in/z_test"],
                           arrays["in/hr_eps_test"])
    r["after_test"] = reference_values(networks(gan))
    emb = arrays["in/embeddings"]
    r["test_ca"] = {"": gan.generator.ca(emb, arrays["in/eps_test"]),
                    "hr_": gan.hr_generator.ca(emb, arrays["in/hr_eps_test"])}
    with record_batch_statistics() as records:
        r["d_losses"], r["d_out"] = gan.hr_discriminator_step(batch)
    r["d_stats"] = label_statistics(records, names, d_call_labels=(1, 0, 2, 1, 0, 2))
    r["d_grads_own_fakes"] = {n: 2 * m for n, (m, _) in slots(gan.hr_d_optimizer, gan.hr_discriminator).items()}

    # The two updates, the D update fed the fixture's Stage-II fakes.
    gan, _ = build_gan(checkpoint)
    names = bn_layer_names(networks(gan))
    r["gan"] = gan
    with record_batch_statistics() as records:
        r["fed_losses"], _ = gan.hr_discriminator_step(batch, hr_fake=arrays["train/hr_fake_images"])
    r["fed_stats"] = label_statistics(records, names, d_call_labels=(1, 0, 2, 1, 0, 2))
    r["after_d"] = reference_values(networks(gan))
    r["d_slots"] = slots(gan.hr_d_optimizer, gan.hr_discriminator)
    r["d_powers"] = [opt.beta_powers() for opt, *_ in gan.reference_optimizer_layout()]
    r["global_step_d"] = int(gan.global_step.numpy())
    with record_batch_statistics() as records:
        r["g_losses"] = gan.hr_generator_step(batch)
    r["g_stats"] = label_statistics(records, names, d_call_labels=(2,))
    r["after_g"] = reference_values(networks(gan))
    r["g_slots"] = slots(gan.hr_g_optimizer, gan.hr_generator)
    r["g_powers"] = [opt.beta_powers() for opt, *_ in gan.reference_optimizer_layout()]
    r["global_step_g"] = int(gan.global_step.numpy())
    return r


def test_our_variables_are_the_reference_manifest():
    ours = {n: tuple(v.shape) for net in build_stage_ii(tiny_config(), TEXT_DIM)
            for n, v in net.reference_variables().items()}
    assert ours == read_manifest("manifest_stageII_tiny.txt")


def test_import_fills_every_variable_and_the_optimizer_state(run):
    report = run["report"]
    assert len(report.filled) == 231 and report.unused == [] and report.optimizer_state
    assert report.counter == 200
    assert run["global_step_d"] == 401  # 400 in the checkpoint, +1 per optimizer run


def test_test_phase_both_stages(run, arrays):
    lr, hr = run["test"]
    assert_close("test/fake_images", lr, arrays["test/fake_images"], atol=1e-4)
    assert_close("test/hr_fake_images", hr, arrays["test/hr_fake_images"], atol=1e-4)
    for name, value in run["before"].items():
        np.testing.assert_array_equal(run["after_test"][name], value, err_msg=name)


def test_test_phase_conditioning_augmentation(run, arrays):
    for prefix, (c, mean, log_sigma) in run["test_ca"].items():
        assert_close(f"test/{prefix}ca_mean", mean, arrays[f"test/{prefix}ca_mean"], atol=1e-5)
        assert_close(f"test/{prefix}ca_log_sigma", log_sigma, arrays[f"test/{prefix}ca_log_sigma"], atol=1e-5)
        assert_close(f"test/{prefix}c", c, arrays[f"test/{prefix}c"], atol=1e-5)


def test_train_phase_forward(run, arrays):
    out, losses = run["d_out"], run["d_losses"]
    for key, ours in (("ca_mean", out["mean"]), ("ca_log_sigma", out["log_sigma"]), ("c", out["c"]),
                      ("hr_ca_mean", out["hr_mean"]), ("hr_ca_log_sigma", out["hr_log_sigma"]),
                      ("hr_c", out["hr_c"])):
        assert_close(f"train/{key}", ours, arrays[f"train/{key}"], atol=1e-5)
    assert_close("train/kl_term", losses["g_loss_kl_loss"], arrays["train/kl_term"], atol=1e-5)
    assert_close("train/hr_kl_term", losses["hr_g_loss"] - losses["hr_g_loss_fake"],
                 arrays["train/hr_kl_term"], atol=1e-5)
    assert_close("train/fake_images", out["images"], arrays["train/fake_images"], atol=1e-4)
    assert_close("train/hr_fake_images", out["hr_images"], arrays["train/hr_fake_images"], atol=1e-4)
    for key in ("lr_real_images", "lr_wrong_images"):  # exactly every 4th pixel
        np.testing.assert_array_equal(out[key], arrays[f"train/{key}"])
        np.testing.assert_array_equal(out[key], arrays["in/" + key[3:]][:, ::4, ::4])
    for which in ("real", "wrong", "fake"):
        assert_close(f"train/logit_{which}", out[f"logit_{which}"], arrays[f"train/logit_{which}"], atol=1e-4)
        assert_close(f"train/hr_logit_{which}", out[f"hr_logit_{which}"],
                     arrays[f"train/hr_logit_{which}"], atol=1e-4)


def test_logged_values(run, arrays):
    losses = run["d_losses"]
    logged = [k[len("log/"):] for k in arrays if k.startswith("log/") and "learning_rate" not in k]
    assert len(logged) == 13
    for key in logged:
        assert_close(f"log/{key}", losses[key], arrays[f"log/{key}"], atol=1e-5)
    for key in ("hr_d_loss", "hr_g_loss", "d_loss", "g_loss"):
        assert_close(f"step/dstep/{key}", losses[key], arrays[f"step/dstep/{key}"], atol=1e-5)
    gan = run["gan"]
    assert_close("log/hr_d_learning_rate", gan.hr_d_optimizer.learning_rate, arrays["log/hr_d_learning_rate"])
    assert_close("log/hr_g_learning_rate", gan.hr_g_optimizer.learning_rate, arrays["log/hr_g_learning_rate"])
    assert_close("FT rate", gan.g_optimizer.learning_rate, 0.1 * arrays["log/hr_g_learning_rate"], rtol=1e-6)


def test_batch_statistics_of_every_batch_norm_call(run, arrays):
    assert len(run["d_stats"]) == 79
    check_statistics("D run", run["d_stats"], arrays, "bnstat/")
    check_statistics("D run fed the reference fakes", run["fed_stats"], arrays, "bnstat/")


def test_generator_update_batch_statistics(run, arrays):
    check_statistics("G run", run["g_stats"], arrays, "step/gstep_bnstat/")


def test_discriminator_update_on_identical_inputs(run, arrays):
    assert_close("fed hr_d_loss", run["fed_losses"]["hr_d_loss"], arrays["step/dstep/hr_d_loss"], atol=1e-5)
    for key, ref in arrays.items():
        if key.startswith("step/dstep_grad/"):
            name = key[len("step/dstep_grad/"):]
            assert_close(key, 2.0 * run["d_slots"][name][0], ref, atol=1e-5, rtol=1e-4)
    d_trainables = [n for n in arrays if n.startswith("step/after_dstep/hr_d_net")
                    and not n.endswith(("/Adam", "/Adam_1"))]
    assert len(d_trainables) == 9
    for key in d_trainables:
        name = key[len("step/after_dstep/"):]
        assert_adam_first_step(name, run["before"][name], run["after_d"][name], arrays[key], LR,
                               2.0 * run["d_slots"][name][0])
    check_adam_slots(arrays, "after_dstep", run["d_slots"])
    # only the Stage-II D and the step counter moved
    for name, value in run["after_d"].items():
        if not name.startswith("hr_d_net/") and not name.endswith(("/mean", "/variance")):
            np.testing.assert_array_equal(value, run["before"][name], err_msg=name)
    check_powers(run["d_powers"], arrays, "after_dstep")
    assert run["global_step_d"] == arrays["step/after_dstep/global_step"]


def test_discriminator_update_on_our_own_fakes(run, arrays):
    """End to end the gradient is as well defined as float32 allows here."""
    for key, ref in arrays.items():
        if key.startswith("step/dstep_grad/"):
            ours = run["d_grads_own_fakes"][key[len("step/dstep_grad/"):]]
            assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < G_GRADIENT_RTOL, key


def check_powers(ours, arrays, phase):
    for (b1, b2), suffix in zip(ours, ("", "_1", "_2", "_3", "_4")):
        assert_close(f"beta1_power{suffix}", b1, arrays[f"step/{phase}/beta1_power{suffix}"], rtol=1e-6)
        assert_close(f"beta2_power{suffix}", b2, arrays[f"step/{phase}/beta2_power{suffix}"], rtol=1e-6)


def test_generator_update(run, arrays):
    assert_close("step/gstep/hr_g_loss", run["g_losses"]["hr_g_loss"], arrays["step/gstep/hr_g_loss"], atol=1e-5)
    for key, ref in arrays.items():
        if key.startswith("step/gstep_grad/"):
            ours = 2.0 * run["g_slots"][key[len("step/gstep_grad/"):]][0]
            assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < G_GRADIENT_RTOL, key
    g_trainables = [n for n in arrays if n.startswith("step/after_gstep/hr_g_net")
                    and not n.endswith(("/Adam", "/Adam_1"))]
    assert len(g_trainables) == 9
    for key in g_trainables:
        name = key[len("step/after_gstep/"):]
        ours, ref, before = run["after_g"][name], arrays[key], run["after_d"][name]
        assert np.all(np.abs(ours - before) <= LR * (1 + 1e-3)), name
        same_step = np.abs(ours - ref) <= 0.01 * LR
        assert same_step.mean() >= 0.99, (name, same_step.mean())
    for key, ref in arrays.items():
        if key.startswith("step/after_gstep/") and key.endswith("/Adam"):
            name = key[len("step/after_gstep/"):-len("/Adam")]
            ours = run["g_slots"][name][0]
            assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < G_GRADIENT_RTOL, key
    for name, value in run["after_g"].items():
        if not name.startswith("hr_g_net/") and not name.endswith(("/mean", "/variance")):
            np.testing.assert_array_equal(value, run["after_d"][name], err_msg=name)
    check_powers(run["g_powers"], arrays, "after_gstep")
    assert run["global_step_g"] == arrays["step/after_gstep/global_step"] == 402


def test_moving_statistics_after_both_updates(run, arrays):
    check_deterministic_moving_statistics(run["after_d"], arrays, "after_dstep", ["g_net", "hr_g_net"])
    check_deterministic_moving_statistics(run["after_g"], arrays, "after_gstep", ["g_net", "hr_g_net", "d_net"])
    for scope in ("d_net", "hr_d_net"):  # three updates each in the D run
        same = check_discriminator_moving_statistics(
            run["before"], run["after_d"], run["fed_stats"], arrays, scope,
            run["after_g"] if scope == "hr_d_net" else None,
            run["g_stats"] if scope == "hr_d_net" else None)
        assert same == {"d_net": 14, "hr_d_net": 22}[scope]


def _float64_generator_gradient(gan, batch):
    """The Stage-II G-update gradient of two variables, in float64."""
    keras.config.set_dtype_policy("float64")
    try:
        config = tiny_config()
        g, _, hg, hd = build_stage_ii(config, TEXT_DIM)
        for src, dst in ((gan.generator, g), (gan.hr_generator, hg), (gan.hr_discriminator, hd)):
            values = src.reference_variables()
            for name, var in dst.reference_variables().items():
                var.assign(tf.cast(values[name], tf.float64))
        emb = tf.cast(batch["embeddings"], tf.float64)
        with tf.GradientTape() as tape:
            lr = g(emb, tf.cast(batch["g_eps"], tf.float64), tf.cast(batch["g_z"], tf.float64),
                   training=True)["images"]
            out = hg(lr, emb, tf.cast(batch["g_hr_eps"], tf.float64), training=True)
            logit = hd(out["images"], emb, training=True)
            loss = (tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
                labels=tf.ones_like(logit), logits=logit))
                + 2.0 * tf.reduce_mean(kl_divergence_terms(out["mean"], out["log_sigma"])))
        names = ["hr_g_net/conv_batch_norm_2/conv_batch_norm_2/gamma",
                 "hr_g_net/custom_fully_connected/Linear/Matrix"]
        variables = hg.reference_variables()
        return dict(zip(names, (t.numpy() for t in tape.gradient(loss, [variables[n] for n in names]))))
    finally:
        keras.config.set_dtype_policy("float32")


def test_float32_resolution_of_the_generator_gradient(tmp_path, arrays):
    """Why the G-update tolerance is 3%: against float64, the reference's
    own float32 gradient is off by more than 0.1% here and ours by under 3%."""
    gan, _ = build_gan(unpack_checkpoint("stageII", "v1", str(tmp_path)))
    batch = golden_batch(arrays)
    gan.hr_discriminator_step(batch, hr_fake=arrays["train/hr_fake_images"])
    exact = _float64_generator_gradient(gan, batch)
    gan.hr_generator_step(batch)
    for name, g64 in exact.items():
        ref = arrays[f"step/gstep_grad/{name}"]
        ours = 2.0 * gan.hr_g_optimizer.slots(gan.hr_generator.reference_variables()[name])[0].numpy()
        norm = np.linalg.norm(g64)
        assert np.linalg.norm(ref - g64) / norm > 1e-3, name
        assert np.linalg.norm(ours - g64) / norm < G_GRADIENT_RTOL, name

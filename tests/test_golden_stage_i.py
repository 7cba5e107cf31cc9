"""Stage-I against the reference's own outputs (../shared/golden/stageI).

The tiny reference checkpoint is imported by variable name (V1 file and V2
prefix), the fixture's noise is fed, and then: the test-phase sampler, the
train-phase forward pass, one discriminator update and one generator update
are compared array by array within the golden README's tolerances (atol 1e-4
on images/logits, 1e-5 on CA outputs and losses, rtol 1e-4 on batch-norm
statistics).
"""

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
    stat_tolerance,
    tiny_config,
    unpack_checkpoint,
)
from misc.layers import record_batch_statistics
from misc.reference_import import import_reference_checkpoint
from stageI.model import build_stage_i
from stageI.trainer import StageIGAN

LR = 2e-4
# The FC bias feeding the generator's first batch norm: BN removes any shift,
# so its exact gradient is zero (its Adam steps are rounding noise).
ZERO_GRADIENT_VARIABLES = {"g_net/custom_fully_connected_1/Linear/bias"}


def build_gan(checkpoint):
    config = tiny_config()
    generator, discriminator = build_stage_i(config, TEXT_DIM)
    gan = StageIGAN.from_config_tree(config, generator, discriminator)
    report = import_reference_checkpoint(gan, checkpoint)
    return gan, report


def snapshot(gan):
    return reference_values((gan.generator, gan.discriminator))


def gan_variables(gan):
    return {**gan.generator.reference_variables(), **gan.discriminator.reference_variables()}


def golden_batch(a):
    return {
        "images": a["in/real_images"], "wrong_images": a["in/wrong_images"],
        "embeddings": a["in/embeddings"],
        "d_eps": a["in/eps_train"], "d_z": a["in/z_train"],
        "g_eps": a["in/eps_gstep"], "g_z": a["in/z_gstep"],
    }


@pytest.fixture(scope="module")
def arrays():
    return load_arrays("stageI")


@pytest.fixture(scope="module", params=["v1", "v2"])
def run(request, tmp_path_factory, arrays):
    """Everything the reference ran on its checkpoint, done by our port."""
    checkpoint = unpack_checkpoint("stageI", request.param, str(tmp_path_factory.mktemp(request.param)))
    gan, report = build_gan(checkpoint)
    names = bn_layer_names((gan.generator, gan.discriminator))
    r = {"report": report, "gan": gan, "before": snapshot(gan)}
    r["test"] = gan.generator(arrays["in/embeddings"], arrays["in/eps_test"],
                              tf.zeros((4, 10)), training=False)
    r["after_test"] = snapshot(gan)
    batch = golden_batch(arrays)
    with record_batch_statistics() as records:
        r["d_losses"], r["d_out"] = gan.discriminator_step(batch)
    r["d_stats"] = label_statistics(records, names, d_call_labels=(1, 0, 2))
    r["after_d"] = snapshot(gan)
    r["d_slots"] = {n: [s.numpy() for s in gan.d_optimizer.slots(v)]
                    for n, v in gan.discriminator.reference_variables().items() if v.trainable}
    r["d_powers"] = (gan.g_optimizer.beta_powers(), gan.d_optimizer.beta_powers())
    r["global_step_d"] = int(gan.global_step.numpy())
    with record_batch_statistics() as records:
        r["g_losses"] = gan.generator_step(batch)
    r["g_stats"] = label_statistics(records, names, d_call_labels=(2,))
    r["after_g"] = snapshot(gan)
    r["g_slots"] = {n: [s.numpy() for s in gan.g_optimizer.slots(v)]
                    for n, v in gan.generator.reference_variables().items() if v.trainable}
    r["g_powers"] = (gan.g_optimizer.beta_powers(), gan.d_optimizer.beta_powers())
    r["global_step_g"] = int(gan.global_step.numpy())
    return r


def test_our_variables_are_the_reference_manifest():
    config = tiny_config()
    generator, discriminator = build_stage_i(config, TEXT_DIM)
    ours = {n: tuple(v.shape) for m in (generator, discriminator)
            for n, v in m.reference_variables().items()}
    assert ours == read_manifest("manifest_stageI_tiny.txt")


def test_import_fills_every_variable_and_reads_counters(run):
    report = run["report"]
    assert len(report.filled) == 93 and report.unused == [] and report.stage == 1
    assert report.optimizer_state
    assert report.counter == 100
    assert int(run["gan"].counter.numpy()) == 100  # from model_100.ckpt


def test_v1_and_v2_forms_hold_the_same_values(tmp_path):
    v1, _ = build_gan(unpack_checkpoint("stageI", "v1", str(tmp_path / "a")))
    v2, _ = build_gan(unpack_checkpoint("stageI", "v2", str(tmp_path / "b")))
    a, b = snapshot(v1), snapshot(v2)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_test_phase_sampler(run, arrays):
    out = run["test"]
    assert_close("test/ca_mean", out["mean"], arrays["test/ca_mean"], atol=1e-5)
    assert_close("test/ca_log_sigma", out["log_sigma"], arrays["test/ca_log_sigma"], atol=1e-5)
    assert_close("test/c", out["c"], arrays["test/c"], atol=1e-5)
    assert_close("test/fake_images", out["images"], arrays["test/fake_images"], atol=1e-4)
    for name, value in run["before"].items():  # inference changes no state
        np.testing.assert_array_equal(run["after_test"][name], value, err_msg=name)


def test_train_phase_forward(run, arrays):
    out, losses = run["d_out"], run["d_losses"]
    for key, ours in (("ca_mean", out["mean"]), ("ca_log_sigma", out["log_sigma"]), ("c", out["c"])):
        assert_close(f"train/{key}", ours, arrays[f"train/{key}"], atol=1e-5)
    assert_close("train/kl_term", losses["g_loss_kl_loss"], arrays["train/kl_term"], atol=1e-5)
    assert_close("train/fake_images", out["images"], arrays["train/fake_images"], atol=1e-4)
    for which in ("real", "wrong", "fake"):
        assert_close(f"train/logit_{which}", out[f"logit_{which}"], arrays[f"train/logit_{which}"], atol=1e-4)


def test_logged_values(run, arrays):
    losses = run["d_losses"]
    for key in ("d_loss", "d_loss_real", "d_loss_wrong", "d_loss_fake", "g_loss", "g_loss_kl_loss"):
        assert_close(f"log/{key}", losses[key], arrays[f"log/{key}"], atol=1e-5)
        if key in ("d_loss", "g_loss"):
            assert_close(f"step/dstep/{key}", losses[key], arrays[f"step/dstep/{key}"], atol=1e-5)
    gan = run["gan"]
    assert_close("log/g_learning_rate", gan.g_optimizer.learning_rate, arrays["log/g_learning_rate"])
    assert_close("log/d_learning_rate", gan.d_optimizer.learning_rate, arrays["log/d_learning_rate"])


def test_batch_statistics_of_every_batch_norm_call(run, arrays):
    assert len(run["d_stats"]) == 31
    check_statistics("D update", run["d_stats"], arrays, "bnstat/")


def test_generator_update_batch_statistics(run, arrays):
    check_statistics("G update", run["g_stats"], arrays, "step/gstep_bnstat/")


def test_gradients_of_both_updates(run, arrays):
    # After one step from zero slots, m = (1 - beta1) g = g / 2 exactly.
    for key, ref in arrays.items():
        if key.startswith(("step/dstep_grad/", "step/gstep_grad/")):
            name = key.split("/", 2)[2]
            slots = run["d_slots"] if key.startswith("step/dstep_grad/") else run["g_slots"]
            assert_close(key, 2.0 * slots[name][0], ref, atol=1e-5, rtol=1e-4)


def test_weights_and_adam_state_after_the_discriminator_update(run, arrays):
    d_trainables = [n for n, v in run["gan"].discriminator.reference_variables().items() if v.trainable]
    assert len(d_trainables) == 25
    conditioned = [
        assert_adam_first_step(name, run["before"][name], run["after_d"][name],
                               arrays[f"step/after_dstep/{name}"], LR, 2.0 * run["d_slots"][name][0])
        for name in d_trainables]
    assert np.mean(conditioned) > 0.95
    for name, ours in run["after_d"].items():  # G weights untouched by the D update
        if name.startswith("g_net/") and not name.endswith(("/mean", "/variance")):
            np.testing.assert_array_equal(ours, run["before"][name], err_msg=name)
    check_adam_slots(arrays, "after_dstep", run["d_slots"])
    (g1, g2), (d1, d2) = run["d_powers"]
    assert_close("beta1_power", g1, arrays["step/after_dstep/beta1_power"])
    assert_close("beta2_power", g2, arrays["step/after_dstep/beta2_power"], rtol=1e-6)
    assert_close("beta1_power_1", d1, arrays["step/after_dstep/beta1_power_1"])
    assert_close("beta2_power_1", d2, arrays["step/after_dstep/beta2_power_1"], rtol=1e-6)
    assert run["global_step_d"] == arrays["step/after_dstep/global_step"] == 201


def test_weights_and_adam_state_after_the_generator_update(run, arrays):
    g_trainables = [n for n, v in run["gan"].generator.reference_variables().items() if v.trainable]
    assert len(g_trainables) == 34
    conditioned = [
        assert_adam_first_step(name, run["after_d"][name], run["after_g"][name],
                               arrays[f"step/after_gstep/{name}"], LR, 2.0 * run["g_slots"][name][0])
        for name in g_trainables if name not in ZERO_GRADIENT_VARIABLES]
    assert np.mean(conditioned) > 0.95
    for name in ZERO_GRADIENT_VARIABLES:  # rounding noise only, in both implementations
        assert np.all(np.abs(2.0 * run["g_slots"][name][0]) < 1e-6), name
    for name, ours in run["after_g"].items():  # D weights untouched by the G update
        if name.startswith("d_net/") and not name.endswith(("/mean", "/variance")):
            np.testing.assert_array_equal(ours, run["after_d"][name], err_msg=name)
    check_adam_slots(arrays, "after_gstep", run["g_slots"])
    assert_close("step/gstep/g_loss", run["g_losses"]["g_loss"], arrays["step/gstep/g_loss"], atol=1e-5)
    (g1, g2), (d1, d2) = run["g_powers"]
    for ours, key in ((g1, "beta1_power"), (g2, "beta2_power"), (d1, "beta1_power_1"), (d2, "beta2_power_1")):
        assert_close(key, ours, arrays[f"step/after_gstep/{key}"], rtol=1e-6)
    assert run["global_step_g"] == arrays["step/after_gstep/global_step"] == 202


def test_generator_moving_statistics_after_both_updates(run, arrays):
    # One train-mode G pass per update: deterministic.
    check_deterministic_moving_statistics(run["after_d"], arrays, "after_dstep", ["g_net"])
    check_deterministic_moving_statistics(run["after_g"], arrays, "after_gstep", ["g_net"])


def test_discriminator_moving_statistics_order_aware(run, arrays):
    """Three EMA updates per D layer in the D update, in an order the
    reference leaves undefined (golden README, Q11)."""
    same_order = check_discriminator_moving_statistics(
        run["before"], run["after_d"], run["d_stats"], arrays, "d_net", run["after_g"], run["g_stats"])
    assert same_order == 13  # of 14: the fixture's executor order equals ours


def test_fresh_layer_gets_the_plain_ema(tmp_path, arrays):
    """TF 0.11 semantics: a fresh layer moves 10% towards the batch
    statistic (TF 0.12's zero-debiasing would jump to x / 1.9)."""
    gan, _ = build_gan(unpack_checkpoint("stageI", "v1", str(tmp_path)))
    layer = "g_net/conv_batch_norm/conv_batch_norm"
    variables = gan_variables(gan)
    variables[f"{layer}/mean"].assign(tf.zeros(32))
    variables[f"{layer}/variance"].assign(tf.ones(32))
    batch = golden_batch(arrays)
    gan.discriminator_step(batch)
    for stat in ("mean", "variance"):
        ref = arrays[f"fresh_ema/after_dstep/{layer}/{stat}"]
        tol = stat_tolerance(arrays[f"fresh_ema/after_dstep/{layer}/variance"])
        assert_close(f"fresh after D {stat}", variables[f"{layer}/{stat}"].numpy(), ref, **tol)
    gan.generator_step(batch)
    for stat in ("mean", "variance"):
        ref = arrays[f"fresh_ema/after_gstep/{layer}/{stat}"]
        tol = stat_tolerance(arrays[f"fresh_ema/after_gstep/{layer}/variance"])
        assert_close(f"fresh after G {stat}", variables[f"{layer}/{stat}"].numpy(), ref, **tol)

"""Stage-II against the reference's own outputs (tests/golden/stageII, or
the folder named by STACKGAN_GOLDEN).

The reference checkpoint is imported by name, the fixture's noise is fed,
and the test-phase sampler, the training-mode forward pass (both stages,
low-resolution images, all logits, losses and batch statistics), one Stage-II
discriminator update (from the checkpoint) and one Stage-II generator update
(from the reference's state after its discriminator update, where the
fixture stores it) are compared with what the reference computed.

Arrays are compared as in ``test_golden_stage_i`` (see its docstring): plain
tolerances for the well-conditioned ones, and for everything downstream of
float32 rounding in an update the rule against the float64 evaluation of the
same computation.  The rule matters most here: the barely trained generators
make nearly constant fake batches, so the Stage-II discriminator's first
batch norms see near-zero variances and its gradients amplify any float32
rounding of the generators about a thousandfold; the exact value and the
reference's own distance from it say how far a faithful float32 evaluation
can be.
"""

import numpy as np
import pytest
import tensorflow as tf

from golden_support import (
    OUR_D_UPDATE_ORDER,
    Fixture,
    GoldenStage,
    Update,
    assert_close,
    check_checkpoint_model_variables,
    check_forward_statistics,
    check_repeat_is_bit_identical,
    check_v1_and_v2_hold_the_same_state,
    reference_variables,
)
from misc.reference.importer import import_reference_checkpoint
from stageII.model import build_stage_ii
from stageII.trainer import StageIIGAN


def golden_batch(a):
    return {
        "images": a["in/real_images"], "wrong_images": a["in/wrong_images"],
        "embeddings": a["in/embeddings"],
        "d_eps": a["in/eps_train"], "d_z": a["in/z_train"], "d_hr_eps": a["in/hr_eps_train"],
        "g_eps": a["in/eps_gstep"], "g_z": a["in/z_gstep"], "g_hr_eps": a["in/hr_eps_gstep"],
    }


STAGE = GoldenStage(
    Fixture("stageII"),
    lambda config, text_dim: StageIIGAN.from_config_tree(config, *build_stage_ii(config, text_dim)),
    golden_batch,
    [Update("hr_d_optimizer", "hr_discriminator_update", "hr_discriminator", 2, OUR_D_UPDATE_ORDER,
            "after_dstep", "dstep_grad"),
     Update("hr_g_optimizer", "hr_generator_update", "hr_generator", 3, (2,),
            "after_gstep", "gstep_grad", "gstep_bnstat")],
    {"generator": "train/fake_images", "hr_generator": "train/hr_fake_images"})
FX = STAGE.fx


@pytest.fixture(scope="module")
def arrays():
    return FX.arrays


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return FX.unpack_checkpoint("v1", str(tmp_path_factory.mktemp("stageII_v1")))


@pytest.fixture(scope="module")
def run(checkpoint, arrays):
    gan = STAGE.make_gan()
    report = import_reference_checkpoint(gan, checkpoint)
    nets = STAGE.networks(gan)
    before = {n: v.numpy().copy() for n, v in reference_variables(nets).items()}
    a = arrays
    test = gan.sample(a["in/embeddings"], a["in/eps_test"], a["in/z_test"], a["in/hr_eps_test"])
    test_ca = {"": gan.generator.ca(a["in/embeddings"], a["in/eps_test"]),
               "hr_": gan.hr_generator.ca(a["in/embeddings"], a["in/hr_eps_test"])}
    after_test = {n: v.numpy().copy() for n, v in reference_variables(nets).items()}
    r = STAGE.run(gan, checkpoint)
    r.update(report=report, test=test, test_ca=test_ca, before_test=before, after_test=after_test)
    return r


def test_our_variables_are_the_checkpoint_model_variables(checkpoint):
    check_checkpoint_model_variables(STAGE, checkpoint)


def test_import_fills_every_variable_and_the_optimizer_state(run):
    report = run["report"]
    assert len(report.filled) == len(run["before"]) and report.unused == [] and report.stage == 2
    assert report.optimizer_state
    assert report.counter == FX.meta["counter"]
    assert int(run["gan"].counter.numpy()) == FX.meta["counter"]


def test_v1_and_v2_forms_hold_the_same_state(tmp_path):
    check_v1_and_v2_hold_the_same_state(STAGE, tmp_path)


def test_test_phase_both_stages(run, arrays):
    lr, hr = run["test"]
    assert_close("test/fake_images", lr, arrays["test/fake_images"], atol=1e-4)
    assert_close("test/hr_fake_images", hr, arrays["test/hr_fake_images"], atol=1e-4)
    for prefix, (c, mean, log_sigma) in run["test_ca"].items():
        assert_close(f"test/{prefix}ca_mean", mean, arrays[f"test/{prefix}ca_mean"], atol=1e-5)
        assert_close(f"test/{prefix}ca_log_sigma", log_sigma, arrays[f"test/{prefix}ca_log_sigma"], atol=1e-5)
        assert_close(f"test/{prefix}c", c, arrays[f"test/{prefix}c"], atol=1e-5)
    for name, value in run["before_test"].items():
        np.testing.assert_array_equal(run["after_test"][name], value, err_msg=name)


def test_train_phase_forward(run, arrays):
    losses, out = run["after_dstep"]["ours"].losses
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


def test_train_phase_forward_under_xla(checkpoint, arrays):
    """Both generators' training-mode forward pass compiled with XLA.  (The
    Stage-II updates are compiled in no test: that takes minutes on a CPU;
    Stage-I's are, in test_golden_stage_i.)"""
    gan = STAGE.make_gan()
    import_reference_checkpoint(gan, checkpoint)
    b = golden_batch(arrays)
    forward = tf.function(gan.stage_ii_forward, jit_compile=True)
    g_out, hr_out = forward(*(tf.constant(b[k]) for k in ("embeddings", "d_eps", "d_z", "d_hr_eps")))
    for prefix, out in (("", g_out), ("hr_", hr_out)):
        assert_close(f"train/{prefix}c", out["c"], arrays[f"train/{prefix}c"], atol=1e-5)
        assert_close(f"train/{prefix}fake_images", out["images"], arrays[f"train/{prefix}fake_images"],
                     atol=1e-4)


def test_logged_values(run, arrays):
    losses, _ = run["after_dstep"]["ours"].losses
    logged = [k[len("log/"):] for k in arrays if k.startswith("log/") and not k.endswith("learning_rate")]
    assert logged
    for key in logged:
        assert_close(f"log/{key}", losses[key], arrays[f"log/{key}"], atol=1e-5)
    gan = run["gan"]
    for key in (k for k in arrays if k.startswith("log/") and k.endswith("learning_rate")):
        optimizer = getattr(gan, key[len("log/"):-len("learning_rate")] + "optimizer")
        assert_close(key, optimizer.learning_rate, arrays[key])
        assert np.float32(arrays[key]) == FX.learning_rate
    ratio = gan.config_tree_finetune_ratio if hasattr(gan, "config_tree_finetune_ratio") else 0.1
    assert_close("Stage-I fine-tuning rate", gan.g_optimizer.learning_rate, ratio * FX.learning_rate,
                 rtol=1e-6)


def test_batch_statistics_of_the_discriminator_update(run, arrays):
    check_forward_statistics("D update", run["after_dstep"]["ours"].statistics, arrays, "bnstat/")


def test_discriminator_update(run):
    STAGE.check_update(run, STAGE.updates[0])


def test_generator_update_from_the_reference_state(run):
    STAGE.check_update(run, STAGE.updates[1])


def test_moving_statistics_after_the_discriminator_update(run):
    STAGE.check_discriminator_moving_statistics(run)


def test_updates_are_bit_identical_on_repeat(run):
    check_repeat_is_bit_identical(STAGE, run)

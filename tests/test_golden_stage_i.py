"""Stage-I against the reference's own outputs (tests/golden/stageI, or the
folder named by STACKGAN_GOLDEN).

The reference checkpoint is imported by variable name, the fixture's noise is
fed, and the test-phase sampler, the training-mode forward pass, one
discriminator update (from the checkpoint) and one generator update (from the
reference's state after its discriminator update) are compared with what the
reference computed.

How arrays are compared
-----------------------
Well-conditioned arrays -- images, CA outputs, logits, the losses of the
first update, the forward batch statistics and the moving statistics of the
discriminator update -- keep plain tolerances (atol 1e-4 on images and
logits, 1e-5 on CA outputs and losses, rtol 1e-4 on batch-norm statistics).

Every array downstream of float32 rounding in an update -- gradients, the
weights and Adam slots after it, and for the generator update (which starts
from a state that came out of a float32 Adam step) its batch statistics, the
moving statistics they update and its loss -- is judged against the exact
answer: the same computation (our trainer's own update code, with an
optimizer stand-in that only records gradients) evaluated in float64 from the
same state and inputs, with the reference's TF1 Adam kernel applied to that
gradient in float64.  Both float32 evaluations, ours and the reference's, are
measured by their distance from it (L2 over the array), and each must be

    within twice the other's distance, or within NOISE_LEVELS (8) times the
    array's float32 noise level.

The noise level comes from float32 evaluations of the same update from the
state and inputs moved by one ulp (each rounds anew): the RMS deviation of
the underlying gradient or statistic from the exact value, pooled over its
elements, carried through the update (Adam step, moving average) and
combined with one ulp of each exact value.  A gradient's band of float32
outcomes also spans the rectifier kinks float32 leaves open: where a leaky
ReLU's or ReLU's input is within float32 noise of zero (its channel's noise
at least), a float32 evaluation may take either slope, so the exact
gradients with all such kinks taken on the right and on the left belong to
the band (``GoldenStage.kink_gradients``).

Adam steps whose sign float32 leaves open.  A weight after an Adam step
moves against the sign of its updated first moment, by about lr on a fresh
slot whatever the gradient's size.  Where the gradient's band (widened by
SIGN_MARGIN: rounding in the tail of float32's distribution, a kink flipped
deep in the network, moves many elements at once) lets that moment change
sign, the sign of the step is not defined in float32 and either kernel set
-- oneDNN's or TensorFlow's own, both measured -- may land on either side;
there each evaluation is judged by what is defined, Adam's bound on the
step (``adam_max_step``: lr for a fresh slot), and every other element of
the array by the rule above (``check_adam_weights``).  This depends neither
on the kernels nor on the random draws of the noise samples: with the
bundled fixture, the Stage-II discriminator update passes with both
TF_ENABLE_ONEDNN_OPTS settings and every seed tried for the samples, where
the array-wide rule alone failed for TensorFlow's own kernels (one of 512
weights stepped by the reference against the sign of its exact gradient of
7e-6, 2 lr from the exact weight).

Why this is right.  Two float32 evaluations of one graph differ by rounding,
and where the computation is ill-conditioned that difference is not small:
Adam's first step amplifies a gradient near epsilon / sqrt(1 - beta2)
~3e-7 about sixty-fold, a bias feeding batch norm has an exact gradient of
zero so both implementations step on rounding noise, and near-constant
batches make batch norm amplify rounding a thousandfold.  A fixed tolerance
is then either too loose for the well-conditioned elements or fails on noise.
The exact value is the referee, and it checks both directions: the reference
must be within float32 noise of the exact value of *our* computation (else
the two compute different things, e.g. a gradient that skips the batch
statistics, which a forward comparison cannot see), and we must be about as
close as the reference.  Pooling the noise level over an array's elements
keeps one element near a singular point from setting the scale by the luck
of one draw.  Measured on the bundled fixture, both implementations sit 1-3
noise levels from the exact value; the meta-tests at the end show the rule
rejecting a 1% learning-rate error and a gradient that ignores the
batch-statistics' dependence on the input.

Where the fixture does not store the whole state after the discriminator
update (the bundled Stage-II fixture keeps 9 of its weights), the rest is our
update fed the reference's own generated images, and the noise samples of the
generator update start from the discriminator update's noise samples: what
the fixture leaves unknown widens the floor instead of failing the test.
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
    evaluate_update_with_xla,
    reference_variables,
    stat_tolerance,
)
from misc.reference.importer import import_reference_checkpoint
from stageI.model import build_stage_i
from stageI.trainer import StageIGAN


def golden_batch(a):
    return {
        "images": a["in/real_images"], "wrong_images": a["in/wrong_images"],
        "embeddings": a["in/embeddings"],
        "d_eps": a["in/eps_train"], "d_z": a["in/z_train"],
        "g_eps": a["in/eps_gstep"], "g_z": a["in/z_gstep"],
    }


STAGE = GoldenStage(
    Fixture("stageI"),
    lambda config, text_dim: StageIGAN.from_config_tree(config, *build_stage_i(config, text_dim)),
    golden_batch,
    [Update("d_optimizer", "discriminator_update", "discriminator", 1, OUR_D_UPDATE_ORDER,
            "after_dstep", "dstep_grad"),
     Update("g_optimizer", "generator_update", "generator", 0, (2,),
            "after_gstep", "gstep_grad", "gstep_bnstat")],
    {"generator": "train/fake_images"})
FX = STAGE.fx


@pytest.fixture(scope="module")
def arrays():
    return FX.arrays


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return FX.unpack_checkpoint("v1", str(tmp_path_factory.mktemp("stageI_v1")))


@pytest.fixture(scope="module")
def run(checkpoint, arrays):
    """Everything the reference ran on its checkpoint, done by our port, with
    the exact (float64) evaluations of both updates."""
    gan = STAGE.make_gan()
    report = import_reference_checkpoint(gan, checkpoint)
    nets = STAGE.networks(gan)
    before = {n: v.numpy().copy() for n, v in reference_variables(nets).items()}
    z_test = arrays.get("in/z_test", np.zeros((FX.batch_size, FX.params["Z_DIM"]), np.float32))
    test = gan.generator(arrays["in/embeddings"], arrays["in/eps_test"], z_test, training=False)
    after_test = {n: v.numpy().copy() for n, v in reference_variables(nets).items()}
    r = STAGE.run(gan, checkpoint)
    r.update(report=report, test=test, before_test=before, after_test=after_test)
    return r


def test_our_variables_are_the_checkpoint_model_variables(checkpoint):
    check_checkpoint_model_variables(STAGE, checkpoint)


def test_import_fills_every_variable_and_reads_counters(run):
    report, gan = run["report"], run["gan"]
    assert len(report.filled) == len(run["before"]) and report.unused == [] and report.stage == 1
    assert report.optimizer_state
    assert report.counter == FX.meta["counter"]
    assert int(gan.counter.numpy()) == FX.meta["counter"]


def test_v1_and_v2_forms_hold_the_same_state(tmp_path):
    check_v1_and_v2_hold_the_same_state(STAGE, tmp_path)


def test_test_phase_sampler(run, arrays):
    out = run["test"]
    for key, ours in (("ca_mean", out["mean"]), ("ca_log_sigma", out["log_sigma"]), ("c", out["c"])):
        assert_close(f"test/{key}", ours, arrays[f"test/{key}"], atol=1e-5)
    assert_close("test/fake_images", out["images"], arrays["test/fake_images"], atol=1e-4)
    for name, value in run["before_test"].items():  # inference changes no state
        np.testing.assert_array_equal(run["after_test"][name], value, err_msg=name)


def test_train_phase_forward(run, arrays):
    losses, out = run["after_dstep"]["ours"].losses
    for key, ours in (("ca_mean", out["mean"]), ("ca_log_sigma", out["log_sigma"]), ("c", out["c"])):
        assert_close(f"train/{key}", ours, arrays[f"train/{key}"], atol=1e-5)
    assert_close("train/kl_term", losses["g_loss_kl_loss"], arrays["train/kl_term"], atol=1e-5)
    assert_close("train/fake_images", out["images"], arrays["train/fake_images"], atol=1e-4)
    for which in ("real", "wrong", "fake"):
        assert_close(f"train/logit_{which}", out[f"logit_{which}"], arrays[f"train/logit_{which}"], atol=1e-4)


def test_logged_values(run, arrays):
    losses, _ = run["after_dstep"]["ours"].losses
    logged = [k[len("log/"):] for k in arrays if k.startswith("log/") and not k.endswith("learning_rate")]
    assert logged
    for key in logged:
        assert_close(f"log/{key}", losses[key], arrays[f"log/{key}"], atol=1e-5)
    for key in (k for k in arrays if k.startswith("log/") and k.endswith("learning_rate")):
        optimizer = getattr(run["gan"], key[len("log/"):-len("learning_rate")] + "optimizer")
        assert_close(key, optimizer.learning_rate, arrays[key])
        assert np.float32(arrays[key]) == FX.learning_rate


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


def test_fresh_layer_gets_the_plain_ema(checkpoint, arrays):
    """TF 0.11 semantics: a fresh layer moves 10% towards the batch
    statistic (TF 0.12's zero-debiasing would jump to x / 1.9)."""
    fresh = [k[len("fresh_ema/after_dstep/"):] for k in arrays if k.startswith("fresh_ema/after_dstep/")]
    assert fresh, "the fixture has no fresh_ema arrays"
    gan = STAGE.make_gan()
    import_reference_checkpoint(gan, checkpoint)
    variables = reference_variables(STAGE.networks(gan))
    for name in fresh:
        initial = tf.zeros_like if name.endswith("/mean") else tf.ones_like
        variables[name].assign(initial(variables[name]))
    batch = golden_batch(arrays)
    for phase, step in (("after_dstep", gan.discriminator_update), ("after_gstep", gan.generator_update)):
        step(batch)
        for name in fresh:
            tol = stat_tolerance(arrays[f"fresh_ema/{phase}/{name.rsplit('/', 1)[0]}/variance"])
            ref = arrays[f"fresh_ema/{phase}/{name}"]
            assert_close(f"fresh {phase} {name}", variables[name].numpy(), ref, **tol)


# -- the same updates compiled with XLA ------------------------------------------------

@pytest.fixture(scope="module")
def xla_run(run):
    """Both updates again from the same states, each step compiled with XLA
    (judged by the same rule, against the same exact evaluations)."""
    return STAGE.rerun(run, evaluate_update_with_xla)


def test_train_phase_forward_under_xla(xla_run, arrays):
    losses, out = xla_run["after_dstep"]["ours"].losses
    assert_close("train/fake_images", out["images"], arrays["train/fake_images"], atol=1e-4)
    for which in ("real", "wrong", "fake"):
        assert_close(f"train/logit_{which}", out[f"logit_{which}"], arrays[f"train/logit_{which}"], atol=1e-4)
    check_forward_statistics("D update (XLA)", xla_run["after_dstep"]["ours"].statistics, arrays, "bnstat/")


def test_discriminator_update_under_xla(xla_run):
    STAGE.check_update(xla_run, STAGE.updates[0])
    STAGE.check_discriminator_moving_statistics(xla_run)


def test_generator_update_under_xla(xla_run):
    STAGE.check_update(xla_run, STAGE.updates[1])


# -- the rule can fail -------------------------------------------------------------

def test_the_rule_rejects_a_one_percent_learning_rate_error(run):
    """Weights that moved 1% too far are caught, except in the odd array whose
    float32 noise is larger than that (ill-conditioned elements throughout)."""
    update = STAGE.updates[0]
    u = run[update.phase]
    accepted = []
    for name in u["exact"].gradients:
        wrong = u["start"][name] + 1.01 * (u["after"][name] - u["start"][name])
        try:
            STAGE.check_update(run, update, replace_after={name: wrong})
        except AssertionError as error:
            assert f"step/{update.phase}/{name}:" in str(error)
        else:
            accepted.append(name)
    assert len(accepted) <= 0.1 * len(u["exact"].gradients), accepted


def test_the_rule_rejects_a_gradient_that_ignores_the_batch_statistics(checkpoint, monkeypatch):
    """Batch norm with its statistics treated as constants computes the same
    forward pass and another gradient; a port doing so is caught by the
    reference being far from the exact value of the port's computation."""
    from misc.nets.layers import BatchNorm

    moments = BatchNorm.batch_moments
    monkeypatch.setattr(BatchNorm, "batch_moments",
                        lambda self, x: tuple(tf.stop_gradient(m) for m in moments(self, x)))
    gan = STAGE.make_gan()
    import_reference_checkpoint(gan, checkpoint)
    wrong = STAGE.run(gan, checkpoint)
    with pytest.raises(AssertionError, match="the reference is not within float32 noise"):
        STAGE.check_update(wrong, STAGE.updates[0])

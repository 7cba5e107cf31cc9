"""Importing the authors' TF1 checkpoints (issue 5): name/shape mapping at
full size against the golden manifests, the tiny fixture checkpoints through
the same importer, errors for foreign checkpoints, and the converter.
"""

import gc
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from golden_support import (
    TEXT_DIM,
    assert_close,
    load_arrays,
    manifest_rows,
    tiny_config,
    unpack_checkpoint,
)
from misc.commands import convert_checkpoint
from misc.commands.convert_checkpoint import load_reference_trainer
from misc.config import CheckpointError, default_config, load_config
from misc.evaluation.sampling import Sampler, StackGANGenerator, load_generator
from misc.reference.importer import import_reference_checkpoint
from misc.reference.tf1_checkpoint import leftover_kind, plan_import
from misc.training.checkpoints import describe_checkpoint, resolve, restore_native, training_checkpoint
from stageI.model import build_stage_i
from stageI.trainer import StageIGAN
from stageII.model import build_stage_ii
from stageII.trainer import StageIIGAN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_KINDS = ("model", "bn_moving_stat")
FULL_TEXT_DIM = 1024  # char-CNN-RNN embeddings of the published models


def shapes_of(variables):
    return {n: tuple(v.shape) for n, v in variables.items()}


@pytest.fixture(scope="module")
def full_size_shapes():
    """{reference name: shape} of the default-size networks; the models are
    dropped once their shapes are read (Stage-II has ~93M parameters)."""
    config = default_config()
    out = {}
    nets = build_stage_ii(config, FULL_TEXT_DIM)
    out["stageII"] = {n: s for net in nets for n, s in shapes_of(net.reference_variables()).items()}
    out["demo"] = {n: s for net in nets[::2] for n, s in shapes_of(net.reference_variables()).items()}
    del nets
    nets = build_stage_i(config, FULL_TEXT_DIM)
    out["stageI"] = {n: s for net in nets for n, s in shapes_of(net.reference_variables()).items()}
    config.GAN.NETWORK_TYPE = "simple"
    nets = build_stage_i(config, FULL_TEXT_DIM)
    out["simple"] = {n: s for net in nets for n, s in shapes_of(net.reference_variables()).items()}
    del nets
    gc.collect()
    return out


def check_one_to_one(model_shapes, rows, expected_leftovers):
    plan = plan_import(model_shapes, {n: s for n, (s, _) in rows.items()})
    model_rows = sorted(n for n, (_, k) in rows.items() if k in MODEL_KINDS)
    assert plan.matched == model_rows == sorted(model_shapes)
    assert plan.mismatched == [] and plan.missing == [] and plan.unused == [] and plan.not_needed == []
    for kind, names in plan.leftovers.items():
        assert all(rows[n][1] == kind for n in names), kind
    assert {k: len(v) for k, v in plan.leftovers.items()} == expected_leftovers


STAGE_I_LEFTOVERS = {"adam_slot": 118, "adam_beta_power": 4, "global_step": 1}
STAGE_II_LEFTOVERS = {"adam_slot": 358, "adam_beta_power": 10, "global_step": 1}


@pytest.mark.parametrize("suffix", ["", "_tf012"])
def test_full_size_stage_i_maps_one_to_one(full_size_shapes, suffix):
    rows = manifest_rows(f"manifest_stageI_default{suffix}.txt")
    expected = dict(STAGE_I_LEFTOVERS, **({"bn_zero_debias": 68} if suffix else {}))
    assert len(full_size_shapes["stageI"]) == 59 + 34
    check_one_to_one(full_size_shapes["stageI"], rows, expected)


@pytest.mark.parametrize("suffix", ["", "_tf012"])
def test_full_size_stage_ii_maps_one_to_one(full_size_shapes, suffix):
    rows = manifest_rows(f"manifest_stageII_default{suffix}.txt")
    expected = dict(STAGE_II_LEFTOVERS, **({"bn_zero_debias": 172} if suffix else {}))
    assert len(full_size_shapes["stageII"]) == 145 + 86
    check_one_to_one(full_size_shapes["stageII"], rows, expected)


def test_full_size_sampling_generators_map_one_to_one(full_size_shapes):
    """The generators the demo builds are exactly what the reference demo
    restored; in a training checkpoint the critics are 'not needed'."""
    demo = manifest_rows("manifest_demo_inference_default.txt")
    check_one_to_one(full_size_shapes["demo"], demo, {})
    rows = manifest_rows("manifest_stageII_default_tf012.txt")
    plan = plan_import(full_size_shapes["demo"], {n: s for n, (s, _) in rows.items()})
    assert plan.matched == sorted(demo) and not (plan.missing or plan.mismatched or plan.unused)
    critics = sorted(n for n, (_, k) in rows.items()
                     if k in MODEL_KINDS and n.split("/")[0] in ("d_net", "hr_d_net"))
    assert plan.not_needed == critics and len(critics) == 231 - 133
    assert all(leftover_kind(n) for names in plan.leftovers.values() for n in names)


def simple_network_names(t=FULL_TEXT_DIM, z=100, ef=128, gf=128, df=64, s16=4):
    """The reference 'simple' Stage-I variables (stageI/model.py
    generator_simple, d_encode_image_simple) by prettytensor's naming."""
    names = {}

    def bn(scope, name, c):
        for stat in ("mean", "variance", "gamma", "beta"):
            names[f"{scope}/{name}/{name}/{stat}"] = (c,)

    names["g_net/custom_fully_connected/Linear/Matrix"] = (t, 2 * ef)
    names["g_net/custom_fully_connected/Linear/bias"] = (2 * ef,)
    names["g_net/custom_fully_connected_1/Linear/Matrix"] = (ef + z, s16 * s16 * gf * 8)
    names["g_net/custom_fully_connected_1/Linear/bias"] = (s16 * s16 * gf * 8,)
    channels = [gf * 8, gf * 4, gf * 2, gf, 3]
    for i in range(4):
        bn("g_net", "conv_batch_norm" + (f"_{i}" if i else ""), channels[i])
        deconv = "custom_deconv2d" + (f"_{i}" if i else "")
        names[f"g_net/{deconv}/{deconv}/w"] = (4, 4, channels[i + 1], channels[i])
    d_in = [3, df, df * 2, df * 4]
    for i in range(4):
        conv = "custom_conv2d" + (f"_{i}" if i else "")
        names[f"d_net/{conv}/{conv}/w"] = (4, 4, d_in[i], d_in[i] * 2 if i else df)
        if i:
            bn("d_net", "conv_batch_norm" + (f"_{i - 1}" if i > 1 else ""), d_in[i] * 2)
    names["d_net/custom_fully_connected/Linear/Matrix"] = (t, ef)
    names["d_net/custom_fully_connected/Linear/bias"] = (ef,)
    names["d_net/custom_conv2d_4/custom_conv2d_4/w"] = (1, 1, df * 8 + ef, df * 8)
    bn("d_net", "conv_batch_norm_3", df * 8)
    names["d_net/custom_conv2d_5/custom_conv2d_5/w"] = (s16, s16, df * 8, 1)
    return names


def test_simple_network_follows_the_reference_naming(full_size_shapes):
    assert full_size_shapes["simple"] == simple_network_names()


def write_tf1_checkpoint(prefix, tensors):
    """A name-based (TF1-style, no object graph) V2 checkpoint."""
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])
    return prefix


def test_simple_network_checkpoint_round_trips(tmp_path):
    config = tiny_config()
    config.GAN.NETWORK_TYPE = "simple"
    source = StageIGAN.from_config_tree(config, *build_stage_i(config, TEXT_DIM))
    rng = np.random.default_rng(5)
    tensors = {}
    for net in source.networks().values():
        for name, var in net.reference_variables().items():
            tensors[name] = rng.standard_normal(var.shape).astype(np.float32)
            if var.trainable:
                tensors[name + "/Adam"] = rng.standard_normal(var.shape).astype(np.float32)
                tensors[name + "/Adam_1"] = rng.uniform(0, 1, var.shape).astype(np.float32)
    tensors.update({"beta1_power": np.float32(0.5 ** 4), "beta2_power": np.float32(0.999 ** 4),
                    "beta1_power_1": np.float32(0.5 ** 4), "beta2_power_1": np.float32(0.999 ** 4),
                    "global_step": np.int32(6)})
    path = write_tf1_checkpoint(str(tmp_path / "simple" / "model_3.ckpt"), tensors)

    gan = StageIGAN.from_config_tree(config, *build_stage_i(config, TEXT_DIM))
    report = import_reference_checkpoint(gan, path)
    assert sorted(report.filled) == sorted(simple_network_names(t=TEXT_DIM, z=10, ef=16, gf=16, df=8))
    assert report.unused == []
    assert report.optimizer_state and report.counter == 3 and int(gan.global_step.numpy()) == 6
    for net in gan.networks().values():
        for name, var in net.reference_variables().items():
            np.testing.assert_array_equal(var.numpy(), tensors[name], err_msg=name)
    deconv = gan.generator.reference_variables()["g_net/custom_deconv2d/custom_deconv2d/w"]
    m, v = gan.g_optimizer.slots(deconv)
    np.testing.assert_array_equal(m.numpy(), tensors["g_net/custom_deconv2d/custom_deconv2d/w/Adam"])
    assert int(gan.g_optimizer.iterations.numpy()) == 3

    info = describe_checkpoint(path)
    assert (info.kind, info.stage, info.network_type, info.embedding_dim) == (
        "reference", 1, "simple", TEXT_DIM)
    model, report, _ = load_generator(config, path)
    assert sorted(report.filled) == sorted(gan.generator.reference_variables())
    assert all(n.startswith("d_net/") for n in report.not_needed) and report.unused == []
    for name, var in model.reference_variables().items():
        np.testing.assert_array_equal(var.numpy(), tensors[name], err_msg=name)
    with pytest.raises(CheckpointError, match="set GAN.NETWORK_TYPE: simple"):
        load_generator(tiny_config(), path)
    # the same for a checkpoint of ours
    native = training_checkpoint(gan).write(str(tmp_path / "native" / "model-3"))
    assert describe_checkpoint(native).network_type == "simple"
    model, _, _ = load_generator(config, native)
    for name, var in model.reference_variables().items():
        np.testing.assert_array_equal(var.numpy(), tensors[name], err_msg=name)
    with pytest.raises(CheckpointError, match="set GAN.NETWORK_TYPE: simple"):
        load_generator(tiny_config(), native)


MANIFEST_TINY = {"stageI": "manifest_stageI_tiny.txt", "stageII": "manifest_stageII_tiny.txt"}


@pytest.mark.parametrize("form", ["v1", "v2"])
@pytest.mark.parametrize("stage", ["stageI", "stageII"])
def test_tiny_fixture_through_the_importer(tmp_path, stage, form):
    path = unpack_checkpoint(stage, form, str(tmp_path))
    rows = manifest_rows(MANIFEST_TINY[stage])
    model_rows = sorted(n for n, (_, k) in rows.items() if k in MODEL_KINDS)
    if form == "v1":  # the V2 files hold the same tensors (docs/reference_quirks.md#checkpoints)
        gan, report, info = load_reference_trainer(tiny_config(), path)
        assert sorted(report.filled) == model_rows and report.unused == [] and report.not_needed == []
        assert {k: len(v) for k, v in report.leftovers.items()} == (
            STAGE_I_LEFTOVERS if stage == "stageI" else STAGE_II_LEFTOVERS)
        assert report.optimizer_state
        assert info.counter == int(gan.counter.numpy()) == {"stageI": 100, "stageII": 200}[stage]

    model, report, info = load_generator(tiny_config(), path)
    assert info.stage == model.stage == (1 if stage == "stageI" else 2)
    assert sorted(report.filled) == sorted(n for n in model_rows if n.split("/")[0] in ("g_net", "hr_g_net"))
    critics = sorted(n for n in model_rows if n.split("/")[0] in ("d_net", "hr_d_net"))
    assert sorted(report.not_needed) == critics
    a = load_arrays(stage)
    emb, eps = a["in/embeddings"], a["in/eps_test"]
    if stage == "stageI":  # the reference Stage-I sampler feeds z = 0
        lr, hr = Sampler(model)(emb, eps, np.zeros((len(emb), 10), np.float32))
        assert hr is None
    else:
        lr, hr = Sampler(model)(emb, eps, a["in/z_test"], a["in/hr_eps_test"])
        assert_close("test/hr_fake_images", hr, a["test/hr_fake_images"], atol=1e-4)
    assert_close("test/fake_images", lr, a["test/fake_images"], atol=1e-4)


# -- errors ------------------------------------------------------------------------

def test_checkpoint_of_another_config_names_the_variable_and_both_shapes(tmp_path):
    config = tiny_config()
    config.GAN.GF_DIM = 32
    for stage, load in (("stageII", load_generator), ("stageI", load_reference_trainer)):
        path = unpack_checkpoint(stage, "v1", str(tmp_path / stage))
        with pytest.raises(CheckpointError) as info:
            load(config, path)
        message = str(info.value)
        assert "\n" not in message and path in message
        assert "g_net/conv_batch_norm/conv_batch_norm/beta: checkpoint [32], model [64]" in message
        assert "GAN.GF_DIM 16" in message and "Z_DIM 10" in message


def test_files_that_are_not_stackgan_checkpoints(tmp_path):
    config = tiny_config()
    noise = tmp_path / "random.ckpt"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    other = write_tf1_checkpoint(str(tmp_path / "other" / "model.ckpt"),
                                 {"dense/kernel": np.ones((3, 2), np.float32), "global_step": np.int32(1)})
    dense = keras.layers.Dense(2)
    dense(tf.zeros((1, 3)))
    keras_ckpt = tf.train.Checkpoint(model=dense).write(str(tmp_path / "keras" / "ckpt"))
    cases = [(str(noise), "not a TensorFlow checkpoint"), (other, "not a StackGAN"),
             (keras_ckpt, "not a StackGAN"), (str(tmp_path / "missing.ckpt"), "not found")]
    for path, message in cases:
        for load in (describe_checkpoint, lambda p: load_generator(config, p)):
            with pytest.raises(CheckpointError, match=message) as info:
                load(path)
            assert path in str(info.value) and "\n" not in str(info.value)


# -- conversion --------------------------------------------------------------------

def write_config(path, config):
    with open(path, "w") as f:
        yaml.safe_dump({"Z_DIM": config.Z_DIM,
                        "GAN": {k: config.GAN[k] for k in ("EMBEDDING_DIM", "GF_DIM", "DF_DIM")}}, f)
    return path


def test_conversion_of_the_stage_ii_fixture(tmp_path):
    source = unpack_checkpoint("stageII", "v1", str(tmp_path / "ref"))
    cfg = write_config(str(tmp_path / "tiny.yml"), tiny_config())
    out_dir = str(tmp_path / "converted")
    result = convert_checkpoint.main([source, out_dir, "--cfg", cfg])

    # the native checkpoint: what run_exp accepts as TRAIN.PRETRAINED_MODEL
    kind, prefix = resolve(out_dir)
    assert (kind, prefix) == ("native", result["native"]) and prefix.endswith("model-200")
    assert describe_checkpoint(prefix).stage == 2
    config = tiny_config()
    gan = StageIIGAN.from_config_tree(config, *build_stage_ii(config, TEXT_DIM))
    restore_native(gan, prefix)
    reader = tf.train.load_checkpoint(source)
    for net in gan.networks().values():
        for name, var in net.reference_variables().items():
            np.testing.assert_array_equal(var.numpy(), reader.get_tensor(name), err_msg=name)
    assert int(gan.counter.numpy()) == 200 and int(gan.global_step.numpy()) == 400
    g_var = gan.hr_generator.reference_variables()["hr_g_net/custom_fully_connected/Linear/Matrix"]
    np.testing.assert_array_equal(gan.hr_g_optimizer.slots(g_var)[1].numpy(),
                                  reader.get_tensor("hr_g_net/custom_fully_connected/Linear/Matrix/Adam_1"))

    # the Keras weights file, in a fresh generator wrapper
    a = load_arrays("stageII")
    model = StackGANGenerator.for_config(load_config(cfg), TEXT_DIM, stage=2)
    model.load_weights(result["weights"])
    out = model(a["in/embeddings"], a["in/eps_test"], a["in/z_test"], a["in/hr_eps_test"])
    assert_close("keras test/fake_images", out["fake_images"], a["test/fake_images"], atol=1e-4)
    assert_close("keras test/hr_fake_images", out["hr_fake_images"], a["test/hr_fake_images"], atol=1e-4)

    # the converted checkpoint samples like the reference one (TEST.PRETRAINED_MODEL)
    native_model, report, info = load_generator(config, out_dir)
    assert (info.kind, info.stage, info.embedding_dim, info.counter) == ("native", 2, TEXT_DIM, 200)
    lr, hr = Sampler(native_model)(a["in/embeddings"], a["in/eps_test"], a["in/z_test"], a["in/hr_eps_test"])
    assert_close("native test/hr_fake_images", hr, a["test/hr_fake_images"], atol=1e-4)
    with open(os.path.join(out_dir, "conversion.json")) as f:
        details = json.load(f)
    assert details["stage"] == 2 and details["embedding_dim"] == TEXT_DIM and details["iteration"] == 200


def test_conversion_of_a_stage_i_checkpoint_without_optimizer_state(tmp_path):
    source = unpack_checkpoint("stageI", "v2", str(tmp_path / "ref"))
    cfg = write_config(str(tmp_path / "tiny.yml"), tiny_config())
    result = convert_checkpoint.main([source, str(tmp_path / "out"), "--cfg", cfg, "--no-optimizer-state"])
    config = tiny_config()
    gan = StageIGAN.from_config_tree(config, *build_stage_i(config, TEXT_DIM))
    restore_native(gan, result["native"])
    assert int(gan.g_optimizer.iterations.numpy()) == 0 and int(gan.counter.numpy()) == 100
    model = StackGANGenerator.for_config(config, TEXT_DIM, stage=1)
    model.load_weights(result["weights"])
    assert model.hr_generator is None
    a = load_arrays("stageI")
    out = model(a["in/embeddings"], a["in/eps_test"], np.zeros((4, 10), np.float32))
    assert_close("keras test/fake_images", out["fake_images"], a["test/fake_images"], atol=1e-4)


def test_reference_demo_configs_load_unchanged():
    expected = {"birds": "./models/birds_model_164000.ckpt", "flowers": "./models/flowers_model_130000.ckpt"}
    for dataset, model in expected.items():
        demo = load_config(os.path.join(ROOT, "demo", "cfg", f"{dataset}-demo.yml"))
        assert demo.TEST.PRETRAINED_MODEL == model and demo.TEST.NUM_COPY == 8
        assert demo.TEST.BATCH_SIZE == 64 and demo.DATASET_NAME == dataset and demo.CONFIG_NAME == "stageII"
        evaluation = load_config(os.path.join(ROOT, "demo", "cfg", f"{dataset}-eval.yml"))
        assert evaluation.TRAIN.PRETRAINED_MODEL == model and evaluation.TRAIN.FLAG is False
        assert evaluation.EMBEDDING_TYPE == "cnn-rnn" and evaluation.TRAIN.NUM_COPY == 8
        for config in (demo, evaluation):
            dims = (config.Z_DIM, config.GAN.EMBEDDING_DIM, config.GAN.DF_DIM, config.GAN.GF_DIM)
            assert dims == (100, 128, 64, 128)


@pytest.mark.parametrize("steps, name", [(200, "model_200.ckpt"), (164000, "birds_model_164000.ckpt")])
def test_adam_step_count_survives_underflowed_powers(tmp_path, steps, name):
    """A TF1 Adam stores beta ** (steps + 1) in float32: 0.5 ** 201 is already
    zero, and after the published 164,000 iterations so is 0.999 ** 164001.
    The imported optimizer must take the step the reference would take next."""
    reader = tf.train.load_checkpoint(unpack_checkpoint("stageI", "v1", str(tmp_path / "ref")))
    tensors = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}
    for suffix in ("", "_1"):
        tensors[f"beta1_power{suffix}"] = np.float32(0.5 ** (steps + 1))
        tensors[f"beta2_power{suffix}"] = np.float32(0.999 ** (steps + 1))
    assert tensors["beta1_power"] == 0.0 and (tensors["beta2_power"] > 0.0) == (steps < 100_000)
    path = write_tf1_checkpoint(str(tmp_path / "edited" / name), tensors)
    config = tiny_config()
    gan = StageIGAN.from_config_tree(config, *build_stage_i(config, TEXT_DIM))
    import_reference_checkpoint(gan, path)
    assert int(gan.d_optimizer.iterations.numpy()) == steps
    # the next step, as TF1's ApplyAdam computes it from the stored powers
    var = gan.discriminator.reference_variables()["d_net/custom_conv2d/custom_conv2d/w"]
    w0 = var.numpy().astype(np.float64)
    m0, v0 = (s.numpy().astype(np.float64) for s in gan.d_optimizer.slots(var))
    grad = np.random.default_rng(1).normal(size=var.shape).astype(np.float32)
    gan.d_optimizer.apply_gradients([(tf.constant(grad), var)])
    b1p, b2p = (np.float64(tensors[f"beta{i}_power_1"]) for i in (1, 2))
    lr_t = 2e-4 * np.sqrt(1 - b2p) / (1 - b1p)
    m = m0 + (grad - m0) * 0.5
    v = v0 + (grad.astype(np.float64) ** 2 - v0) * (1 - np.float64(np.float32(0.999)))
    np.testing.assert_allclose(var.numpy(), w0 - lr_t * m / (np.sqrt(v) + 1e-8), rtol=0, atol=1e-8)

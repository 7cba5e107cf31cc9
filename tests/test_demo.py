"""demo/demo.py: the reference demo on our port (issue 5).

The tiny reference checkpoints are sampled through the demo with the
fixture's noise (--noise) and their test-phase outputs reproduced from the
raw arrays (--save-arrays), with the embeddings given as .npy + captions,
as a .t7 file written like demo/get_embedding.lua does, and as a pickle;
typed captions run on a checkpoint of ours; bad input ends in a one-line
error.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from fault_points import one_line_error
from golden_support import TEXT_DIM, assert_close, load_arrays, tiny_config, unpack_checkpoint
from misc.commands import demo as demo_script
from misc.data import safe_pickle
from misc.data.hash_encoder import encode_captions
from misc.evaluation import sampling
from misc.evaluation.sampling import draw_noise
from misc.training.checkpoints import training_checkpoint
from stageI.model import build_stage_i
from stageI.trainer import StageIGAN
from test_torch7 import embedding_file, nested_tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONS = ["this bird is red with white wings", "a small yellow bird with a black crown",
            "the flower has five pink petals", "a bird with a long curved beak"]


def write_config(path, checkpoint, num_copy=1, batch_size=4, gf_dim=16):
    c = tiny_config()
    with open(path, "w") as f:
        yaml.safe_dump({"Z_DIM": c.Z_DIM,
                        "GAN": {"EMBEDDING_DIM": c.GAN.EMBEDDING_DIM, "GF_DIM": gf_dim,
                                "DF_DIM": c.GAN.DF_DIM},
                        "TEST": {"PRETRAINED_MODEL": checkpoint, "NUM_COPY": num_copy,
                                 "BATCH_SIZE": batch_size}}, f)
    return path


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def fixture_noise(path, a, stage):
    if stage == "stageI":  # the reference Stage-I sampler feeds z = 0
        np.savez(path, z=np.zeros((4, 10), np.float32), eps=a["in/eps_test"])
    else:
        np.savez(path, z=a["in/z_test"], eps=a["in/eps_test"], hr_eps=a["in/hr_eps_test"])
    return path


def load_npz(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def demo_error(argv, capsys):
    """Run the demo as its __main__ does; return the one-line error."""
    return one_line_error(demo_script.main, argv, capsys)


@pytest.fixture(scope="module")
def stage_ii_arrays():
    return load_arrays("stageII")


@pytest.fixture(scope="module")
def native_stage_i(tmp_path_factory):
    """A tiny random Stage-I model of ours, saved as our trainers save."""
    config = tiny_config()
    gan = StageIGAN.from_config_tree(config, *build_stage_i(config, TEXT_DIM))
    prefix = training_checkpoint(gan).write(str(tmp_path_factory.mktemp("native") / "model-0"))
    return gan, prefix


def check_stage_ii_sheets(out_dir, count):
    for i in range(count):
        with Image.open(os.path.join(out_dir, f"sentence{i}.jpg")) as sheet:
            assert sheet.size == (2 * 256, 128 + 2 * 256)  # caption strip, Stage-I row, Stage-II row


def test_npy_embeddings_reproduce_the_reference_stage_ii(tmp_path, stage_ii_arrays):
    a = stage_ii_arrays
    ckpt = unpack_checkpoint("stageII", "v1", str(tmp_path / "ckpt"))
    cfg = write_config(str(tmp_path / "tiny.yml"), ckpt)
    emb = str(tmp_path / "captions.npy")
    np.save(emb, a["in/embeddings"])
    write_lines(str(tmp_path / "captions.txt"), CAPTIONS)  # found next to the .npy
    noise = fixture_noise(str(tmp_path / "noise.npz"), a, "stageII")
    out = str(tmp_path / "raw.npz")
    written = demo_script.main(["--cfg", cfg, "--caption_path", emb, "--noise", noise, "--save-arrays", out])
    assert len(written) == 4
    check_stage_ii_sheets(str(tmp_path / "captions"), 4)
    raw = load_npz(out)
    assert raw["fake_images"].shape == (4, 1, 64, 64, 3)
    assert raw["hr_fake_images"].shape == (4, 1, 256, 256, 3)
    assert_close("test/fake_images", raw["fake_images"][:, 0], a["test/fake_images"], atol=1e-4)
    assert_close("test/hr_fake_images", raw["hr_fake_images"][:, 0], a["test/hr_fake_images"], atol=1e-4)
    assert list(raw["captions"]) == CAPTIONS and int(raw["stage"]) == 2
    np.testing.assert_array_equal(raw["embeddings"], a["in/embeddings"])
    for key, ref in (("z", "in/z_test"), ("eps", "in/eps_test"), ("hr_eps", "in/hr_eps_test")):
        np.testing.assert_array_equal(raw[key], a[ref])


def test_t7_embeddings_reproduce_the_reference_stage_ii(tmp_path, stage_ii_arrays):
    a = stage_ii_arrays
    ckpt = unpack_checkpoint("stageII", "v2", str(tmp_path / "ckpt"))
    cfg = write_config(str(tmp_path / "tiny.yml"), ckpt, batch_size=3)  # batches of 3 + 1
    t7 = embedding_file(str(tmp_path / "example_captions.t7"), CAPTIONS, a["in/embeddings"])
    noise = fixture_noise(str(tmp_path / "noise.npz"), a, "stageII")
    out = str(tmp_path / "raw.npz")
    demo_script.main(["--cfg", cfg, "--gpu", "0", "--caption_path", t7, "--noise", noise,
                      "--save-arrays", out])
    check_stage_ii_sheets(str(tmp_path / "example_captions"), 4)  # the reference's output folder
    raw = load_npz(out)
    assert_close("test/fake_images", raw["fake_images"][:, 0], a["test/fake_images"], atol=1e-4)
    assert_close("test/hr_fake_images", raw["hr_fake_images"][:, 0], a["test/hr_fake_images"], atol=1e-4)
    assert list(raw["captions"]) == CAPTIONS


def test_reference_stage_i_checkpoint_gives_stage_i_sheets(tmp_path):
    a = load_arrays("stageI")
    ckpt = unpack_checkpoint("stageI", "v1", str(tmp_path / "ckpt"))
    cfg = write_config(str(tmp_path / "tiny.yml"), ckpt)
    emb = str(tmp_path / "emb.pickle")
    safe_pickle.dump(a["in/embeddings"], emb)
    caps = write_lines(str(tmp_path / "sentences.txt"), CAPTIONS)
    noise = fixture_noise(str(tmp_path / "noise.npz"), a, "stageI")
    out_dir = str(tmp_path / "sheets")
    demo_script.main(["--cfg", cfg, "--caption_path", emb, "--caption_file", caps, "--noise", noise,
                      "--out", out_dir, "--save-arrays", str(tmp_path / "raw.npz")])
    raw = load_npz(str(tmp_path / "raw.npz"))
    assert "hr_fake_images" not in raw and int(raw["stage"]) == 1
    assert_close("test/fake_images", raw["fake_images"][:, 0], a["test/fake_images"], atol=1e-4)
    for i in range(4):
        with Image.open(os.path.join(out_dir, f"sentence{i}.jpg")) as sheet:
            assert sheet.size == (64, 64 + 64)  # caption strip over one row of samples


def test_typed_captions_on_our_stage_i_checkpoint(tmp_path, native_stage_i):
    gan, prefix = native_stage_i
    cfg = write_config(str(tmp_path / "ours.yml"), prefix, num_copy=3)
    captions = ["a red circle on a blue background", "a green square"]
    out_dir, raw_path = str(tmp_path / "typed"), str(tmp_path / "raw.npz")
    argv = ["--cfg", cfg, "--caption", captions[0], "--caption", captions[1], "--out", out_dir,
            "--seed", "3", "--save-arrays", raw_path]
    written = demo_script.main(argv)
    assert sorted(os.listdir(out_dir)) == ["sentence0.jpg", "sentence1.jpg"] and len(written) == 2
    with Image.open(written[0]) as sheet:
        assert sheet.size == (3 * 64, 64 + 64)
    raw = load_npz(raw_path)
    assert raw["fake_images"].shape == (2, 3, 64, 64, 3) and raw["z"].shape == (6, 10)
    assert np.all(np.abs(raw["eps"]) <= 2.0)
    # the samples are our generator's, with the saved noise laid out caption-major
    embeddings = encode_captions(captions, dim=TEXT_DIM)
    np.testing.assert_allclose(raw["embeddings"], embeddings)
    expected = gan.sample(np.repeat(embeddings, 3, axis=0), raw["eps"], raw["z"]).numpy()
    assert_close("typed samples", raw["fake_images"].reshape(6, 64, 64, 3), expected, atol=1e-5)
    # the saved arrays are valid --noise: the run is reproduced exactly
    again = str(tmp_path / "again.npz")
    demo_script.main(argv[:-4] + ["--noise", raw_path, "--save-arrays", again])
    np.testing.assert_array_equal(load_npz(again)["fake_images"], raw["fake_images"])


def test_one_noise_set_reused_for_every_caption(tmp_path, native_stage_i):
    gan, prefix = native_stage_i
    cfg = write_config(str(tmp_path / "ours.yml"), prefix, num_copy=2)
    rng = np.random.default_rng(0)
    noise = {"z": rng.standard_normal((2, 10)).astype(np.float32),
             "eps": rng.uniform(-1, 1, (2, 16)).astype(np.float32)}
    np.savez(str(tmp_path / "noise.npz"), **noise)
    captions = write_lines(str(tmp_path / "caps.txt"), ["a red bird", "1234 5678", "a blue flower"])
    demo_script.main(["--cfg", cfg, "--caption_path", captions, "--noise", str(tmp_path / "noise.npz"),
                      "--save-arrays", str(tmp_path / "raw.npz")])
    # captions without letters are skipped (as the reference), the numbering kept
    assert sorted(os.listdir(str(tmp_path / "caps"))) == ["sentence0.jpg", "sentence2.jpg"]
    raw = load_npz(str(tmp_path / "raw.npz"))
    np.testing.assert_array_equal(raw["z"], np.tile(noise["z"], (3, 1)))
    np.testing.assert_array_equal(raw["eps"], np.tile(noise["eps"], (3, 1)))
    emb = encode_captions(["a red bird", "1234 5678", "a blue flower"], dim=TEXT_DIM)
    for k in range(2):
        expected = gan.sample(emb, np.repeat(noise["eps"][k:k + 1], 3, 0),
                              np.repeat(noise["z"][k:k + 1], 3, 0))
        assert_close(f"copy {k}", raw["fake_images"][:, k], expected, atol=1e-5)


def test_bad_input_is_a_one_line_error(tmp_path, capsys, native_stage_i, stage_ii_arrays):
    _, prefix = native_stage_i
    cfg = write_config(str(tmp_path / "ours.yml"), prefix)
    emb31 = str(tmp_path / "emb31.npy")
    np.save(emb31, np.zeros((2, 31), np.float32))
    write_lines(str(tmp_path / "emb31.txt"), ["a", "b"])
    lonely = str(tmp_path / "lonely.npy")
    np.save(lonely, np.zeros((2, TEXT_DIM), np.float32))
    two = str(tmp_path / "two.npy")
    np.save(two, np.zeros((2, TEXT_DIM), np.float32))
    three_lines = write_lines(str(tmp_path / "three.txt"), ["a", "b", "c"])
    bad_t7 = str(tmp_path / "bad.t7")
    with open(bad_t7, "wb") as f:
        f.write(b"\x03\x00\x00\x00\x01\x00\x00\x00\xff\xff")
    np.savez(str(tmp_path / "bad_noise.npz"), z=np.zeros((1, 9), np.float32),
             eps=np.zeros((1, 16), np.float32))
    deep_t7 = tmp_path / "deep.t7"
    deep_t7.write_bytes(nested_tables(200_000))
    a_file = write_lines(str(tmp_path / "a_file"), ["not a folder"])
    before = sorted(os.listdir(tmp_path))
    cases = [
        (["--caption_path", str(deep_t7)], ["deep.t7", "nested deeper than 10000 levels"]),
        (["--caption", "a bird", "--out", a_file], [a_file, "not a folder"]),
        (["--caption", "a bird", "--save-arrays", str(tmp_path)], [str(tmp_path), "is a folder"]),
        (["--caption", "a bird", "--gpu", "-2"], ["--gpu -2", "GPU id"]),
        (["--caption_path", str(tmp_path / "nope.t7")], ["nope.t7", "not found"]),
        (["--caption_path", emb31], ["emb31.npy", "31 dimensions", f"takes {TEXT_DIM}", prefix]),
        (["--caption_path", lonely], ["lonely.txt", "--caption_file"]),
        (["--caption_path", two, "--caption_file", three_lines], ["three.txt", "3 captions", "2 embeddings"]),
        (["--caption_path", bad_t7], ["bad.t7", "get_embedding.lua"]),
        (["--caption", "a bird", "--noise", str(tmp_path / "bad_noise.npz")],
         ["bad_noise.npz", "'z' has shape [1, 9]"]),
        (["--caption", "a bird", "--noise", str(tmp_path / "missing.npz")], ["missing.npz", "not found"]),
        ([], ["no captions", "--caption_path"]),
    ]
    for argv, parts in cases:
        err = demo_error(["--cfg", cfg] + argv, capsys)
        for part in parts:
            assert part in err, (argv, err)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written

    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(np.random.default_rng(0).bytes(1000))
    ref = unpack_checkpoint("stageII", "v1", str(tmp_path / "ref"))
    other = str(tmp_path / "other" / "model.ckpt")
    os.makedirs(os.path.dirname(other))
    tf.raw_ops.SaveV2(prefix=other, tensor_names=["dense/kernel"], shape_and_slices=[""],
                      tensors=[tf.ones((3, 2))])
    checkpoints = [
        (write_config(str(tmp_path / "junk.yml"), str(junk)), [str(junk), "not a TensorFlow checkpoint"]),
        (write_config(str(tmp_path / "other.yml"), other), [other, "not a StackGAN"]),
        (write_config(str(tmp_path / "empty.yml"), ""), ["no checkpoint: give --checkpoint"]),
        (write_config(str(tmp_path / "wide.yml"), ref, gf_dim=32),
         [ref, "g_net/conv_batch_norm/conv_batch_norm/beta: checkpoint [32], model [64]", "GAN.GF_DIM 16"]),
    ]
    for config_path, parts in checkpoints:
        err = demo_error(["--cfg", config_path, "--caption", "a bird"], capsys)
        for part in parts:
            assert part in err, err


def test_command_line_error_from_the_repository_root(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    cfg = write_config(str(tmp_path / "junk.yml"), str(junk))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "demo/demo.py", "--cfg", cfg, "--caption", "a bird"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {junk}: not a TensorFlow checkpoint")


def test_drawn_noise_is_seeded_and_eps_truncated_at_two_sigma():
    first, again = (draw_noise(np.random.default_rng(5), 20000, 10, 16) for _ in range(2))
    for key, width in (("z", 10), ("eps", 16), ("hr_eps", 16)):
        assert first[key].shape == (20000, width) and first[key].dtype == np.float32
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["eps"], first["hr_eps"])
    for key in ("eps", "hr_eps"):
        assert np.max(np.abs(first[key])) <= 2.0
        # a standard normal cut at +-2 has mean 0 and standard deviation 0.8796
        assert abs(float(first[key].mean())) < 0.01 and abs(float(first[key].std()) - 0.8796) < 0.005
    assert np.max(np.abs(first["z"])) > 3.0 and abs(float(first["z"].std()) - 1.0) < 0.005


def test_hostile_inputs_and_outputs_are_refused_before_the_model_is_loaded(tmp_path, capsys, monkeypatch,
                                                                           native_stage_i):
    """Issue 24: one line each, naming the option as typed; nothing written."""
    _, prefix = native_stage_i
    cfg = write_config(str(tmp_path / "ours.yml"), prefix)

    def no_sampling(*_args, **_kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(sampling, "load_generator", no_sampling)  # demo.py imports it when it runs
    np.savez_compressed(tmp_path / "bomb.npz", z=np.zeros((20000, 10000), np.float32))  # 800 MB inflated
    np.save(tmp_path / "claims.npy", np.zeros((2, TEXT_DIM), np.float32))
    data = (tmp_path / "claims.npy").read_bytes()
    (tmp_path / "claims.npy").write_bytes(data.replace(b"'shape': (2, 32)", b"'shape': (99999999, 32)"))
    write_lines(str(tmp_path / "claims.txt"), ["a", "b"])
    (tmp_path / "sized.pickle").write_bytes(b"\x80\x02c__builtin__\nbytes\nJ\x00\x94\x35\x77\x85R.")
    write_lines(str(tmp_path / "sized.txt"), ["a"])
    np.savez(tmp_path / "nan.npz", z=np.full((1, 10), np.nan, np.float32), eps=np.zeros((1, 16), np.float32))
    np.savez(tmp_path / "text.npz", z=np.array([["a"] * 10]), eps=np.zeros((1, 16), np.float32))
    os.mkfifo(tmp_path / "captions.fifo")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "sheets" / "sentence0.jpg").mkdir(parents=True)
    before = sorted(os.listdir(tmp_path))
    typed = ["--cfg", cfg, "--caption", "a bird"]
    cases = [
        (typed + ["--seed", "-1"], ["--seed -1: must be from 0 to"]),
        (typed + ["--noise", str(tmp_path / "bomb.npz")], ["bomb.npz", "z.npy", "more than the"]),
        (typed + ["--noise", str(tmp_path / "captions.fifo")], ["--noise", "is a FIFO"]),
        (typed + ["--noise", str(tmp_path / "nan.npz")], ["nan.npz", "'z' holds float32 values"]),
        (typed + ["--noise", str(tmp_path / "text.npz")], ["text.npz", "'z' holds <U1 values"]),
        (["--cfg", cfg, "--caption_path", str(tmp_path / "claims.npy")],
         ["claims.npy", "shape [99999999, 32]", "more than the"]),
        (["--cfg", cfg, "--caption_path", str(tmp_path / "sized.pickle")],
         ["sized.pickle", "refused", "bytes(2000000000,)"]),
        (["--cfg", cfg, "--caption_path", str(tmp_path / "captions.fifo")], ["--caption_path", "is a FIFO"]),
        (typed + ["--checkpoint", str(tmp_path / "missing")], ["missing", "Check --checkpoint"]),
        (typed + ["--checkpoint", prefix + ".index"], ["one of the files", "give --checkpoint"]),
        (typed + ["--out", str(tmp_path / "a_file" / "sheets")], ["--out", "a_file is not a folder"]),
        (typed + ["--out", str(tmp_path / "sheets")], ["sentence0.jpg", "is a folder"]),
        (typed + ["--save-arrays", str(tmp_path / "a_file" / "raw.npz")], ["--save-arrays", "not a folder"]),
        (typed + ["--gpu", "two"], ["argument --gpu: invalid int value: 'two'"]),
        (typed + ["--save-arrays", cfg], ["--save-arrays", "an input of this command"]),
        (typed + ["--save-arrays", prefix + ".index"], ["an input of this command"]),
    ]
    for argv, parts in cases:
        err = demo_error(argv, capsys)
        for part in parts:
            assert part in err, (argv, err)
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(tmp_path / "sheets") == ["sentence0.jpg"]


def test_sheets_and_arrays_go_through_links_and_to_devices(tmp_path, native_stage_i, monkeypatch):
    _, prefix = native_stage_i
    monkeypatch.chdir(tmp_path)
    cfg = write_config("ours.yml", prefix)
    os.makedirs("real_sheets")
    os.symlink("real_sheets", "sheets")  # --out a link to a folder
    os.makedirs("kept")
    os.symlink(os.path.join("..", "kept", "first.jpg"), os.path.join("real_sheets", "sentence0.jpg"))
    written = demo_script.main(["--cfg", cfg, "--caption", "a red bird", "--caption", "a blue bird",
                                "--out", "sheets", "--save-arrays", "/dev/null"])
    assert len(written) == 2 and os.path.islink(os.path.join("real_sheets", "sentence0.jpg"))
    with Image.open(os.path.join("kept", "first.jpg")) as sheet:  # the link's target holds the sheet
        assert sheet.size == (64, 64 + 64)
    assert sorted(os.listdir("real_sheets")) == ["sentence0.jpg", "sentence1.jpg"]
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    demo_script.main(["--cfg", cfg, "--caption", "a green bird"])  # typed captions, no --out
    assert os.listdir(os.path.join("outputs", "demo")) == ["sentence0.jpg"]


def test_a_config_that_does_not_fit_gives_its_one_line_alone(tmp_path, native_stage_i):
    """TensorFlow used to log every value it had not restored (169 lines)
    after the one-line error."""
    _, prefix = native_stage_i
    cfg = write_config(str(tmp_path / "wide.yml"), prefix, gf_dim=32)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "demo/demo.py", "--cfg", cfg, "--caption", "a bird", "--out",
                             str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {prefix}: does not fit the models built from this config")
    assert result.stderr.count("\n") == 1, result.stderr[:3000]
    assert not os.path.exists(tmp_path / "out")

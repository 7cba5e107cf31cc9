"""misc/commands/evaluate.py end to end: a tiny Stage-II model, the Inception fixture
(tests/inception_support.py), a small FID graph; a folder of pictures; bad
inputs."""

import glob
import json
import os
import shutil
import types

import numpy as np
import pytest

import hostile_files
import inception_support
from fault_points import one_line_error
from misc.commands.evaluate import main
from misc.config import load_config
from misc.data.datasets import load_dataset
from misc.evaluation import scoring
from misc.evaluation.inception import (
    authors_selection,
    inception_score,
    list_images,
    to_uint8_truncated,
)
from misc.evaluation.sampling import Sampler, draw_noise, load_generator
from misc.evaluation.scoring import ModelSamples
from misc.training.checkpoints import training_checkpoint
from stageI.model import build_stage_i
from stageI.trainer import StageIGAN
from stageII.model import build_stage_ii
from stageII.trainer import StageIIGAN
from test_fid import write_fid_graph
from tiny_dataset import tiny_train_config, write_config, write_tiny_dataset

TEXT_DIM = 24
_GENERATORS = {}  # checkpoint -> generator, loaded once


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    return inception_support.checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return inception_support.scorer(tmp_path_factory)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny dataset (4 test images, 2 captions each), its config, random
    Stage-II and Stage-I checkpoints of ours and a small FID graph."""
    root = tmp_path_factory.mktemp("evaluate")
    write_tiny_dataset(str(root / "data"), num_train=4, num_test=4, embedding_dim=TEXT_DIM,
                       captions_per_image=2, stage_ii=True)
    cfg = write_config(str(root / "tiny.yml"), tiny_train_config(
        CONFIG_NAME="stageII", DATA_DIR=str(root / "data")))
    config = load_config(cfg)
    gan = StageIIGAN.from_config_tree(config, *build_stage_ii(config, TEXT_DIM))
    gan.counter.assign(7)
    prefix = training_checkpoint(gan).write(str(root / "run" / "model-7"))
    stage_i = StageIGAN.from_config_tree(config, *build_stage_i(config, TEXT_DIM))
    stage_i_prefix = training_checkpoint(stage_i).write(str(root / "stage_i" / "model-0"))
    graph, _ = write_fid_graph(str(root / "classify_image_graph_def.pb"))
    return types.SimpleNamespace(root=root, cfg=cfg, config=config, prefix=prefix,
                                 stage_i_prefix=stage_i_prefix, graph=graph)


def expected_score(model, prefix, scorer, count, batch_size, splits, seed):
    """The score recomputed from the parts: samples for caption i // 4 of
    test image i % 4 at the final stage's resolution, truncated to uint8,
    the authors' selection and splits."""
    if prefix not in _GENERATORS:
        _GENERATORS[prefix] = load_generator(model.config, prefix)[0]
    generator = _GENERATORS[prefix]
    test = load_dataset(model.config, 1, splits=("test",)).test
    rows = np.arange(count)
    embeddings = test.embeddings[rows % 4, (rows // 4) % 2]
    noise = draw_noise(np.random.default_rng(seed), count, generator.z_dim, generator.ef_dim)
    lr, hr = Sampler(generator)(embeddings, noise["eps"], noise["z"], noise["hr_eps"])
    pictures = to_uint8_truncated(lr if hr is None else hr)
    probabilities = scorer.probabilities(list(pictures))
    chosen = authors_selection(count, batch_size, seed)
    return inception_score(probabilities[chosen], splits)[:2]


def test_a_stage_ii_model_with_fid(model, inception, scorer, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output goes to outputs/ of the current folder
    result = main(["--cfg", model.cfg, "--checkpoint", model.prefix, "--inception", inception,
                   "--fid-weights", model.graph, "--batch-size", "4", "--splits", "2", "--seed", "3"])
    assert result["pictures"] == 8 and result["scored"] == 8 and result["resolution"] == 256
    assert result["stage"] == 2 and result["iteration"] == 7 and result["captions_per_image"] == 2
    mean, std = expected_score(model, model.prefix, scorer, 8, 4, 2, 3)
    assert result["inception_score"]["mean"] == pytest.approx(mean, abs=1e-6)
    assert result["inception_score"]["std"] == pytest.approx(std, abs=1e-6)
    assert np.isfinite(result["fid"]) and result["fid"] > 0 and result["fid_real_images"] == 4
    with open(os.path.join("outputs", "evaluation", "run_model-7_evaluation.json")) as f:
        assert json.load(f) == json.loads(json.dumps(result))
    cache = os.path.join(model.root, "data", "tiny", "test", "fid_statistics_256.npz")
    assert os.path.isfile(cache)
    out = capsys.readouterr().out
    assert "Inception Score" in out and f"{mean:.2f} ± {std:.2f}" in out and "FID" in out
    assert "8 Stage-II samples (4 test images x 2 captions), 256x256" in out


def test_a_stage_i_model_and_the_sample_count(model, inception, scorer, tmp_path):
    out = str(tmp_path / "stage1.json")
    result = main(["--cfg", model.cfg, "--checkpoint", model.stage_i_prefix, "--inception", inception,
                   "--num-samples", "6", "--batch-size", "4", "--splits", "2", "--json", out])
    assert result["pictures"] == 6 and result["scored"] == 4 and result["resolution"] == 64
    assert result["stage"] == 1 and result["fid"] is None and os.path.isfile(out)
    mean, std = expected_score(model, model.stage_i_prefix, scorer, 6, 4, 2, 0)
    assert result["inception_score"]["mean"] == pytest.approx(mean, abs=1e-6)
    assert result["inception_score"]["std"] == pytest.approx(std, abs=1e-6)


def test_samples_take_the_captions_in_turn():
    emb = np.arange(3 * 2 * 1).reshape(3, 2, 1)  # 3 images, 2 captions, 1-d
    fake = types.SimpleNamespace(test=types.SimpleNamespace(num_examples=3, embeddings=emb), captions=2)
    rows = np.arange(8)
    taken = ModelSamples.embeddings(fake, rows)[:, 0]
    # first captions of images 0,1,2, then second captions, then again from the first
    assert taken.tolist() == [emb[0, 0, 0], emb[1, 0, 0], emb[2, 0, 0], emb[0, 1, 0], emb[1, 1, 0],
                              emb[2, 1, 0], emb[0, 0, 0], emb[1, 0, 0]]


def test_a_folder_is_scored_as_the_authors_script_scores_it(inception, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = shutil.copytree(inception_support.IMAGES_DIR, str(tmp_path / "samples"))
    meta, golden = inception_support.meta(), inception_support.golden()
    flags = meta["flags"]
    result = main(["--images", folder, "--inception", inception, "--batch-size",
                   str(flags["batch_size"]), "--splits", str(flags["splits"]), "--seed", str(meta["seed"])])
    # The authors' predictions, in the order this folder is walked here.
    by_name = dict(zip(meta["load_order"], golden["preds"]))
    preds = np.stack([by_name[os.path.relpath(p, folder)] for p in list_images(folder)])
    chosen = authors_selection(len(preds), flags["batch_size"], meta["seed"])
    mean, std, _ = inception_score(preds[chosen], flags["splits"])
    assert result["inception_score"]["mean"] == pytest.approx(mean, abs=1e-4)
    assert result["inception_score"]["std"] == pytest.approx(std, abs=1e-4)
    assert result["pictures"] == 10 and result["scored"] == 8
    assert os.listdir(os.path.join("outputs", "evaluation")) == ["samples_evaluation.json"]


def run_error(argv, capsys):
    return one_line_error(main, argv, capsys)


def test_bad_inputs_give_one_line_and_write_nothing(model, inception, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = set(glob.glob(str(model.root / "**"), recursive=True))
    base = ["--cfg", model.cfg, "--checkpoint", model.prefix]
    missing = str(tmp_path / "model.ckpt-5000")
    assert missing in run_error(base + ["--inception", missing], capsys)
    assert "not the authors' Inception" in run_error(base + ["--inception", model.prefix], capsys)
    garbage = tmp_path / "graph.pb"
    garbage.write_bytes(b"\x00garbage" * 10)
    assert "not the FID Inception graph" in run_error(
        base + ["--inception", inception, "--fid-weights", str(garbage)], capsys)
    absent = write_config(str(tmp_path / "absent.yml"), tiny_train_config(
        CONFIG_NAME="stageII", DATASET_NAME="absent", DATA_DIR=str(model.root / "data")))
    assert "dataset folder not found" in run_error(
        ["--cfg", absent, "--checkpoint", model.prefix, "--inception", inception], capsys)
    assert "fewer than the 10 splits" in run_error(base + ["--inception", inception], capsys)
    assert "no Stage-II pictures" in run_error(["--cfg", model.cfg, "--checkpoint", model.stage_i_prefix,
                                                "--inception", inception, "--stage", "2"], capsys)
    folder = tmp_path / "pictures"
    shutil.copytree(inception_support.IMAGES_DIR, folder)
    assert "not both" in run_error(base + ["--images", str(folder), "--inception", inception], capsys)
    assert "whole batches of 64" in run_error(["--images", str(folder), "--inception", inception], capsys)
    (folder / "broken.png").write_bytes(b"not a picture")
    assert "broken.png" in run_error(["--images", str(folder), "--inception", inception,
                                      "--batch-size", "2", "--splits", "2"], capsys)
    assert "--cfg" in run_error(["--images", str(folder), "--inception", inception,
                                 "--fid-weights", model.graph], capsys)
    assert set(glob.glob(str(model.root / "**"), recursive=True)) == before
    assert not os.path.exists("outputs")


def test_hostile_arguments_and_inputs_are_refused_before_the_work(model, inception, tmp_path, capsys,
                                                                  monkeypatch):
    """Issue 24: every argument and input is checked before the first picture
    is drawn or scored (scoring here would fail the test), each with one line
    naming the option as typed, nothing written."""
    monkeypatch.chdir(tmp_path)

    def no_scoring(*_args, **_kwargs):
        raise AssertionError("the scoring started")

    monkeypatch.setattr(scoring, "InceptionScorer", no_scoring)
    before = set(glob.glob(str(model.root / "**"), recursive=True))
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    for name in os.listdir(os.path.dirname(model.prefix)):
        shutil.copy(os.path.join(os.path.dirname(model.prefix), name), checkpoint)
    os.remove(checkpoint / "model-7.data-00000-of-00001")
    inception_data = open(inception, "rb").read()
    (tmp_path / "truncated.ckpt").write_bytes(hostile_files.truncated(inception_data, 0.9))
    (tmp_path / "flipped.ckpt").write_bytes(hostile_files.bit_flipped(inception_data, 0.6))
    os.mkfifo(tmp_path / "graph.fifo")
    run_folder = tmp_path / "run"  # its state file names a snapshot that was deleted
    run_folder.mkdir()
    (run_folder / "checkpoint").write_text('model_checkpoint_path: "model-9"\n')
    base = ["--cfg", model.cfg, "--inception", inception, "--batch-size", "4", "--splits", "2"]
    sample = base + ["--checkpoint", model.prefix]
    cases = [
        (sample + ["--seed", "-1"], ["--seed -1: must be from 0 to 4,294,967,295"]),
        (sample + ["--seed", "4294967296"], ["--seed 4294967296"]),
        (sample + ["--seed", "one"], ["argument --seed: invalid int value: 'one'"]),
        (sample + ["--num-samples", "10000000000"], ["--num-samples 10000000000: must be from 1 to 100,000"]),
        (sample + ["--num-samples", "-5"], ["--num-samples -5"]),
        (sample + ["--batch-size", "1000000"], ["--batch-size 1000000"]),
        (sample + ["--splits", "0"], ["--splits 0"]),
        (sample + ["--gpu", "x"], ["--gpu 'x': give GPU ids"]),
        (sample + ["--json", str(tmp_path)], ["--json", "is a folder"]),
        (sample + ["--json", str(tmp_path / "a_file" / "x.json")], ["a_file is not a folder"]),
        (sample + ["--json", str(tmp_path / "loop.json")], ["a loop of symbolic links"]),
        (sample + ["--json", model.prefix + ".index"], ["--json", "an input of this command"]),
        (sample + ["--json", model.cfg], [f"is {model.cfg}, an input of this command"]),
        (base + ["--checkpoint", model.prefix + ".index"],
         ["one of the files of the checkpoint", f"give --checkpoint the checkpoint's prefix {model.prefix}"]),
        (base + ["--checkpoint", str(tmp_path / "nothing")], ["checkpoint not found", "Check --checkpoint"]),
        (base + ["--checkpoint", str(checkpoint / "model-7")], ["model-7.data-*", "missing"]),
        (base + ["--checkpoint", str(run_folder)],
         ["names model-9 as the newest snapshot", "model-9.index is missing"]),
        (sample[:2] + sample[4:] + ["--inception", str(tmp_path / "truncated.ckpt")],
         ["truncated.ckpt", "a damaged one"]),
        (sample[:2] + sample[4:] + ["--inception", str(tmp_path / "flipped.ckpt")],
         ["flipped.ckpt", "Download the authors' model.ckpt-5000 again"]),
        (sample + ["--fid-weights", str(tmp_path / "graph.fifo")], ["graph.fifo", "is a FIFO"]),
        (sample + ["--fid-weights", str(tmp_path)], ["--fid-weights", "is a folder"]),
    ]
    for argv, parts in cases:
        err = run_error(argv, capsys)
        for part in parts:
            assert part in err, (argv, err)
    folder = tmp_path / "pictures"
    shutil.copytree(inception_support.IMAGES_DIR, folder)
    (folder / "huge.png").write_bytes(hostile_files.png_claiming(20000, 20000))
    images = ["--images", str(folder), "--inception", inception, "--batch-size", "2", "--splits", "2"]
    err = run_error(images, capsys)
    assert "huge.png: 400,000,000 pixels, above Pillow's decompression-bomb limit" in err, err
    os.remove(folder / "huge.png")
    whole = (folder / os.listdir(folder)[0]).read_bytes()
    (folder / "cut.png").write_bytes(hostile_files.truncated(whole, 0.6))
    err = run_error(images, capsys)
    assert "cut.png: not a readable picture" in err, err
    assert set(glob.glob(str(model.root / "**"), recursive=True)) == before
    assert not os.path.exists("outputs")


def test_the_result_reaches_dev_stdout_without_replacing_it(inception, tmp_path, capfd, monkeypatch):
    """--json /dev/stdout prints the result after the table (a link such as
    link.json is written through like any output: tests/test_atomic.py)."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "samples"
    folder.mkdir()
    for name in sorted(os.listdir(inception_support.IMAGES_DIR))[:4]:
        shutil.copy(os.path.join(inception_support.IMAGES_DIR, name), folder)
    capfd.readouterr()
    main(["--images", str(folder), "--inception", inception, "--batch-size", "2", "--splits", "2",
          "--json", "/dev/stdout"])
    out = capfd.readouterr().out
    written = out[out.index("{\n"):out.index("}\nWritten to /dev/stdout") + 1]
    assert json.loads(written)["pictures"] == 4 and out.index("Inception Score") < out.index("{\n")
    assert os.path.islink("/dev/stdout") and os.listdir(tmp_path) == ["samples"]

"""demo/embed.py and demo.py --text-encoder (issue 21): captions embedded with
encoders laid out as the authors' .t7 files, compared with the float64 Lua
reference of tests/lua_encoder_fixture.py; the dataset re-embedding; the
demo drawing typed captions end to end; bad input as one-line errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

from golden_support import TEXT_DIM, unpack_checkpoint
from lua_encoder_fixture import encoder_file, random_parameters, reference_embeddings
from misc.commands import demo as demo_script
from misc.commands import embed
from misc.commands.common import run_main
from misc.config import InputError
from misc.data import safe_pickle
from misc.data.datasets import TextDataset
from misc.reference import torch7
from test_char_cnn_rnn import CAPTIONS, TOLERANCE
from test_demo import load_npz, write_config
from test_torch7 import HOSTILE_FILES, T7Object, embedding_file, write_t7
from tiny_dataset import write_tiny_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def birds(tmp_path_factory):
    """(parameters, path) of a small birds encoder with the tiny golden
    checkpoints' text dimension, as a trainer checkpoint."""
    params = random_parameters(21, "birds", embedding_dim=TEXT_DIM)
    return params, encoder_file(str(tmp_path_factory.mktemp("enc") / "birds.t7"), params)


def caption_file(path, captions):
    """One caption per line, as bytes (a carriage return stays in its caption)."""
    with open(path, "wb") as f:
        f.write(b"\n".join(c.encode("utf-8") for c in captions) + b"\n")
    return str(path)


def one_line_error(main, argv, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_t7_and_npy_outputs(tmp_path, birds, capsys):
    params, encoder = birds
    captions = caption_file(tmp_path / "captions.txt", CAPTIONS)
    expected = reference_embeddings(params, CAPTIONS)
    assert embed.main(["--text-encoder", encoder, "--captions", captions, "--out", str(tmp_path / "e.t7"),
                       "--batch-size", "3"]) == len(CAPTIONS)
    assert "captions/s" in capsys.readouterr().out.splitlines()[-1]
    table = torch7.load(str(tmp_path / "e.t7"))
    assert torch7.as_list(table["raw_txt"]) == CAPTIONS  # get_embedding.lua's raw_txt: the lines as read
    rows = torch7.as_list(table["fea_txt"])
    assert all(r.shape == (1, TEXT_DIM) and r.dtype == np.float32 for r in rows)
    assert np.abs(np.concatenate(rows) - expected).max() < TOLERANCE
    embed.main(["--text-encoder", encoder, "--captions", captions, "--out", str(tmp_path / "e.npy")])
    array = np.load(str(tmp_path / "e.npy"))
    assert array.shape == (len(CAPTIONS), TEXT_DIM) and array.dtype == np.float32
    assert np.abs(array - expected).max() < TOLERANCE
    ascii_captions = [c for c in CAPTIONS if c.isascii()]
    lower = caption_file(tmp_path / "lower.txt", ascii_captions)
    embed.main(["--text-encoder", encoder, "--captions", lower, "--out", str(tmp_path / "l.npy"),
                "--lowercase"])
    expected = reference_embeddings(params, ascii_captions, lowercase=True)
    assert np.abs(np.load(str(tmp_path / "l.npy")) - expected).max() < TOLERANCE


def test_command_line(tmp_path, birds):
    params, encoder = birds
    captions = caption_file(tmp_path / "c.txt", CAPTIONS[:2])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = str(tmp_path / "c.npy")
    argv = ["demo/embed.py", "--text-encoder", encoder, "--captions", captions, "--out", out]
    result = subprocess.run([sys.executable] + argv, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    first_line = result.stdout.splitlines()[0]
    assert first_line.startswith("char-CNN-RNN: 3 temporal convolutions (70 -> 16 -> 16 -> 12)")
    expected = reference_embeddings(params, CAPTIONS[:2])
    assert np.abs(np.load(out) - expected).max() < TOLERANCE


def test_dataset_reembedding(tmp_path, birds, capsys):
    """text_c10 -> train/ and test/ char-CNN-RNN-embeddings.pickle, N x 10 x D
    in filenames.pickle order, as the dataset loader reads them; an existing
    file only with --force; a bad caption file stops it before anything is
    written."""
    params, encoder = birds
    base = write_tiny_dataset(str(tmp_path), num_train=3, num_test=2, embedding_dim=TEXT_DIM)
    loaded = TextDataset(base)
    loaded.train = loaded.get_data(os.path.join(base, "train"))
    more = ["A CAPITAL caption", "x y z", "a", "é"]
    first = caption_file(loaded.train.caption_path(0), CAPTIONS[2:] + more)
    assert first.endswith("text_c10/class_1/train_000.txt")
    argv = ["--text-encoder", encoder, "--dataset", base]
    before = {split: open(os.path.join(base, split, "char-CNN-RNN-embeddings.pickle"), "rb").read()
              for split in ("train", "test")}
    err = one_line_error(embed.main, argv, capsys)
    assert "train/char-CNN-RNN-embeddings.pickle: exists; give --force" in err
    assert embed.main(argv + ["--force"]) == 5 * 10
    dataset = TextDataset(base)
    for split in ("train", "test"):
        data = dataset.get_data(os.path.join(base, split))
        assert data.embeddings.shape == (data.num_examples, 10, TEXT_DIM)
        assert open(os.path.join(base, split, "char-CNN-RNN-embeddings.pickle"), "rb").read() != before[split]
        for i in range(data.num_examples):
            expected = reference_embeddings(params, data.captions(i))
            assert np.abs(data.embeddings[i] - expected).max() < TOLERANCE
    # nine captions in one file: named, and nothing replaced
    done = {split: open(os.path.join(base, split, "char-CNN-RNN-embeddings.pickle"), "rb").read()
            for split in ("train", "test")}
    short = caption_file(dataset.get_data(os.path.join(base, "test")).caption_path(1),
                         [f"caption {k}" for k in range(9)])
    err = one_line_error(embed.main, argv + ["--force"], capsys)
    assert f"{short}: has 9 captions; the split's first file has 10" in err
    for split in ("train", "test"):
        assert open(os.path.join(base, split, "char-CNN-RNN-embeddings.pickle"), "rb").read() == done[split]


def test_flowers_caption_folders(tmp_path, birds):
    """Oxford-102's file names (jpg/image_<n>) have their captions in
    text_c10/class_<id>/image_<n>.txt."""
    params, encoder = birds
    base = tmp_path / "flowers"
    for split, names, classes in (("train", ["jpg/image_00001", "jpg/image_00007"], [1, 3]),
                                  ("test", ["jpg/image_00002"], [77])):
        os.makedirs(base / split)
        safe_pickle.dump(names, str(base / split / "filenames.pickle"))
        safe_pickle.dump(classes, str(base / split / "class_info.pickle"))
        for name, class_id in zip(names, classes):
            folder = base / "text_c10" / f"class_{class_id:05d}"
            os.makedirs(folder, exist_ok=True)
            caption_file(folder / (name[4:] + ".txt"), [f"flower {name} petal {k}" for k in range(3)])
    embed.main(["--text-encoder", encoder, "--dataset", str(base)])
    out = safe_pickle.load(str(base / "test" / "char-CNN-RNN-embeddings.pickle"))
    assert out.shape == (1, 3, TEXT_DIM) and out.dtype == np.float32
    expected = reference_embeddings(params, [f"flower jpg/image_00002 petal {k}" for k in range(3)])
    assert np.abs(out[0] - expected).max() < TOLERANCE


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, birds, capsys):
    params, encoder = birds
    good = caption_file(tmp_path / "good.txt", ["a bird"])
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    folder = tmp_path / "a_folder.npy"
    folder.mkdir()
    embeddings = embedding_file(str(tmp_path / "embeddings.t7"), ["a bird"], np.ones((1, 8)))
    linear = write_t7(str(tmp_path / "linear.t7"), T7Object("nn.Linear", {"weight": np.ones((2, 3))}))
    no_encoder = write_t7(str(tmp_path / "no_enc_doc.t7"), {"protos": {"enc_image": 1.0}, "opt": {}})
    untied = encoder_file(str(tmp_path / "untied.t7"), {**params, "untied": ("h2h_update", 5)})
    wide = random_parameters(1, "birds")
    wide["convs"][0] = (np.ones((16, 4 * 71)), *wide["convs"][0][1:])
    wide_path = encoder_file(str(tmp_path / "wide.t7"), wide)
    nan = random_parameters(1, "flowers")
    nan["projection"][0][0, 0] = np.nan
    nan_path = encoder_file(str(tmp_path / "nan.t7"), nan, layout="module")
    hostile = tmp_path / "hostile.t7"
    hostile.write_bytes(HOSTILE_FILES["zero strides"][0])
    newline = write_t7(str(tmp_path / "newline.t7"), T7Object("nn.Bad\nclass\x1b[2J", {}))
    junk = tmp_path / "junk.t7"
    junk.write_bytes(np.random.default_rng(0).bytes(500))
    out = str(tmp_path / "out.npy")
    cases = [
        (["--captions", str(tmp_path / "nope.txt"), "--out", out], ["nope.txt", "caption file not found"]),
        (["--captions", str(empty), "--out", out], ["empty.txt", "is empty"]),
        (["--captions", good, "--out", str(tmp_path / "out.txt")], ["out.txt", "ending in .t7"]),
        (["--captions", good, "--out", str(folder)], ["a_folder.npy", "is a folder"]),
        (["--captions", good], ["--captions FILE.txt --out"]),
        (["--captions", good, "--out", out, "--dataset", str(tmp_path)], ["--dataset DIR"]),
        (["--captions", good, "--out", out, "--batch-size", "0"], ["--batch-size 0"]),
        (["--dataset", str(tmp_path / "nodata")], ["nodata: dataset folder not found"]),
        (["--dataset", str(tmp_path)], ["train/filenames.pickle: not found"]),
    ]
    encoders = [
        (str(tmp_path / "missing.t7"), ["missing.t7", "text encoder not found"]),
        (good, ["good.txt", "neither a .t7 nor a .keras file"]),
        (embeddings, ["embeddings.t7", "found a table (fea_txt, raw_txt), expected an nn.gModule"]),
        (linear, ["linear.t7", "found nn.Linear, expected an nn.gModule"]),
        (no_encoder, ["no_enc_doc.t7", "a checkpoint without protos.enc_doc"]),
        (untied, ["untied.t7", "step 6's h2h_update Linear holds other weights than the first step's"]),
        (wide_path, ["wide.t7", "convolution 1 takes 71", "not the 70 of the alphabet"]),
        (nan_path, ["nan.t7", "the weights of its projection layer hold NaN or infinite values"]),
        (str(hostile), ["hostile.t7", "beyond what a file of"]),
        (str(junk), ["junk.t7", "not a torch7 binary file"]),
        (newline, ["newline.t7", "found nn.Bad?class?[2J, expected an nn.gModule"]),
    ]
    cases += [(["--captions", good, "--out", out], parts, path) for path, parts in encoders]
    before = sorted(os.listdir(tmp_path))
    for case in cases:
        argv, parts = case[0], case[1]
        err = one_line_error(embed.main, ["--text-encoder", case[2] if len(case) > 2 else encoder] + argv,
                             capsys)
        for part in parts:
            assert part in err, (argv, err)
    assert sorted(os.listdir(tmp_path)) == before


def test_demo_draws_typed_captions_with_the_authors_encoder(tmp_path, birds, capsys):
    """demo.py --text-encoder: the authors' encoder layout and a checkpoint of
    the reference layout (Stage-II, then Stage-I), typed captions to sheets
    in one command; the same as embedding with embed.py and drawing its .t7."""
    params, encoder = birds
    typed = ["This bird is RED with a short beak", "A small yellow bird; its wings are grey-black."]
    checkpoint = unpack_checkpoint("stageII", "v1", str(tmp_path / "ii"))
    stage_ii = write_config(str(tmp_path / "ii.yml"), checkpoint)
    raw = str(tmp_path / "raw.npz")
    sheets = str(tmp_path / "sheets")
    written = demo_script.main(["--cfg", stage_ii, "--text-encoder", encoder, "--lowercase", "--caption",
                                typed[0], "--caption", typed[1], "--out", sheets, "--seed", "1",
                                "--save-arrays", raw])
    assert [os.path.basename(p) for p in written] == ["sentence0.jpg", "sentence1.jpg"]
    arrays = load_npz(raw)
    lowered = reference_embeddings(params, typed, lowercase=True)
    assert np.abs(arrays["embeddings"] - lowered).max() < TOLERANCE
    assert arrays["hr_fake_images"].shape == (2, 1, 256, 256, 3)

    stage_i = write_config(str(tmp_path / "i.yml"), unpack_checkpoint("stageI", "v1", str(tmp_path / "i")))
    typed_file = caption_file(tmp_path / "typed.txt", typed)
    demo_script.main(["--cfg", stage_i, "--text-encoder", encoder, "--caption_path", typed_file,
                      "--seed", "2", "--save-arrays", raw])
    arrays = load_npz(raw)
    assert np.abs(arrays["embeddings"] - reference_embeddings(params, typed)).max() < TOLERANCE
    t7, again = str(tmp_path / "typed.t7"), str(tmp_path / "again.npz")
    embed.main(["--text-encoder", encoder, "--captions", typed_file, "--out", t7])
    demo_script.main(["--cfg", stage_i, "--caption_path", t7, "--noise", raw, "--save-arrays", again])
    np.testing.assert_allclose(load_npz(again)["fake_images"], arrays["fake_images"], atol=1e-5)
    for argv, part in ((["--caption", "a bird", "--lowercase"], "--lowercase applies to --text-encoder"),
                       (["--caption_path", t7, "--text-encoder", encoder],
                        "typed.t7: holds embeddings already")):
        assert part in one_line_error(demo_script.main, ["--cfg", stage_i] + argv, capsys)


def test_unwritable_outputs_are_found_before_embedding(tmp_path, birds, capsys, monkeypatch):
    """(The tests run as root, for whom every folder is writable: the
    permission is simulated.)"""
    _, encoder = birds
    base = write_tiny_dataset(str(tmp_path), num_train=2, num_test=1, embedding_dim=TEXT_DIM)
    good = caption_file(tmp_path / "good.txt", ["a bird"])
    locked = {os.path.join(base, "test"), str(tmp_path / "locked")}
    os.makedirs(tmp_path / "locked")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: path not in locked and real_access(path, mode))
    before = {split: open(os.path.join(base, split, "char-CNN-RNN-embeddings.pickle"), "rb").read()
              for split in ("train", "test")}
    err = one_line_error(embed.main, ["--text-encoder", encoder, "--dataset", base, "--force"], capsys)
    assert f"{os.path.join(base, 'test')}: not writable" in err
    for split in ("train", "test"):
        assert open(os.path.join(base, split, "char-CNN-RNN-embeddings.pickle"), "rb").read() == before[split]
    out = str(tmp_path / "locked" / "out.npy")
    err = one_line_error(embed.main, ["--text-encoder", encoder, "--captions", good, "--out", out], capsys)
    assert f"--out {out}: its folder is not writable" in err


def test_demo_refuses_get_embedding_files_with_ragged_rows(tmp_path):
    """fea_txt rows of different or zero sizes (a damaged file) are one-line
    errors, not numpy's."""
    for name, rows in (("ragged", [np.ones((1, 4), np.float32), np.ones((1, 5), np.float32)]),
                       ("empty", [np.zeros((1, 0), np.float32)])):
        path = write_t7(str(tmp_path / f"{name}.t7"), {"raw_txt": ["a"] * len(rows), "fea_txt": rows})
        with pytest.raises(InputError, match=f"{name}.t7: .*fea_txt's tensors must all have one size D > 0"):
            demo_script.read_t7(path)

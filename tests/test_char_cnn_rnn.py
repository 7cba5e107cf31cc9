"""The authors' char-CNN-RNN text encoders (issue 21): misc/nets/char_cnn_rnn.py and
misc/reference/torch7_encoder.py against files laid out as the authors' .t7 files are
and against what their Lua computes, both from tests/lua_encoder_fixture.py
(an emulation of torch/nngraph and the authors' modules, and a float64 NumPy
forward pass written from the Lua; neither uses the code under test).

The real files cannot be downloaded here: equality with Lua is shown on
files laid out like theirs, not on theirs.
"""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from lua_encoder_fixture import (
    PUBLIC_PORT_POSITIONS,
    encoder_file,
    lua_input,
    random_parameters,
    reference_embeddings,
    rnn_module_positions,
)
from misc.evaluation.caption_embeddings import load_encoder
from misc.nets.char_cnn_rnn import CharCNNRNN, caption_lines, embed_captions, one_hot
from misc.reference import torch7_encoder

TOLERANCE = 1e-4  # of the float64 Lua reference (issue 21)
# Captions of every kind get_embedding.lua meets: capitals, digits,
# punctuation and the alphabet's symbols ('-' is listed twice), non-ASCII
# UTF-8 (2-, 3- and 4-byte), an empty line, more than 201 bytes, a tab and a
# carriage return (not in the alphabet).
CAPTIONS = [
    "This bird has a RED crown, 2 white wing-bars and a short, pointed beak!",
    "",
    "the flower's petals are pale-pink (nearly white); its stamen: yellow & long?",
    "café-crème oiseau — ünïcode wings \U0001f426 here, with a-b-c",
    "a very long caption " * 15,
    "\\|_@#$%^&*~`+-=<>()[]{}/\"';:,.!? all 0123456789 symbols",
    "ALL CAPITALS: A BIRD WITH A BLACK HEAD AND GREY WINGS",
    "a tab\there and a return\r",
]
# Each changes the result by far more than the tolerance; GRU-only ones only
# for birds.
MUTATIONS = {"lowercase": "both", "dash_first": "both", "characters": "both", "last_state": "both",
             "channel_major": "both", "standard_gru_start": "birds", "swap_gates": "birds"}


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """The birds and flowers encoders (small sizes) as the authors' trainer
    checkpoints hold them, loaded; with their parameters and file info."""
    out = {}
    for seed, kind in enumerate(("birds", "flowers")):
        params = random_parameters(seed + 10, kind)
        path = encoder_file(str(tmp_path_factory.mktemp(kind) / f"{kind}.t7"), params)
        model, info = load_encoder(path)
        out[kind] = params, model, info
    return out


def test_input_is_get_embedding_lua_byte_loop():
    x = one_hot(CAPTIONS)
    assert x.shape == (len(CAPTIONS), 201, 70) and x.dtype == np.float32
    np.testing.assert_array_equal(x, lua_input(CAPTIONS))
    first_dash, later_dash, space = 36, 59, 69  # '-' is the alphabet's 37th and 60th symbol
    assert not x[:, :, first_dash].any()
    np.testing.assert_array_equal(one_hot(["-"])[0, 0], np.eye(70)[later_dash])
    assert x[1].sum() == 0  # the empty line
    assert x[4].sum() == 201 and x[4, 200].sum() == 1  # cut at 201 bytes
    assert x[6, :3].sum() == 0 and x[6, 3, space] == 1  # "ALL ": capitals are outside the alphabet
    # bytes, not characters: 'é' is two bytes, two zero columns, then '-'
    assert x[3, 3:5].sum() == 0 and x[3, 5, later_dash] == 1
    ascii_captions = [c for c in CAPTIONS if c.isascii()]
    np.testing.assert_array_equal(one_hot(ascii_captions, lowercase=True),
                                  lua_input([c.lower() for c in ascii_captions]))
    np.testing.assert_array_equal(one_hot([c.encode("utf-8") for c in CAPTIONS]), x)


def test_caption_lines_are_lua_io_lines():
    assert caption_lines(b"a\n\nb\r\nc") == [b"a", b"", b"b\r", b"c"]
    assert caption_lines(b"a\n") == [b"a"]
    assert caption_lines(b"\n") == [b""]
    assert caption_lines(b"\n\n") == [b"", b""]
    assert caption_lines(b"") == []


@pytest.mark.parametrize("kind", ["birds", "flowers"])
def test_authors_layout_reproduces_the_lua_embeddings(encoders, kind):
    params, model, info = encoders[kind]
    out = embed_captions(model, CAPTIONS, batch_size=3)
    expected = reference_embeddings(params, CAPTIONS)
    assert np.abs(out - expected).max() < TOLERANCE, np.abs(out - expected).max()
    assert np.abs(expected).max() > 0.5  # outputs of order 1, not all near zero
    assert info["source"] == "trainer checkpoint (protos.enc_doc)"
    assert (info["rnn"], info["steps"], info["average"]) == (("gru", 18, True) if kind == "birds"
                                                             else ("rnn", 8, True))
    if kind == "birds":
        # each GRU Linear's role, found from the graph, sits where a public
        # PyTorch port reads it, as the emulated nngraph orders the modules
        assert info["positions"] == PUBLIC_PORT_POSITIONS == rnn_module_positions(params)


@pytest.mark.parametrize("kind", ["birds", "flowers"])
def test_mutations_change_the_embeddings_far_beyond_the_tolerance(encoders, kind):
    params, model, _ = encoders[kind]
    out = embed_captions(model, CAPTIONS)
    for mutation, kinds in MUTATIONS.items():
        if kinds in ("both", kind):
            changed = np.abs(out - reference_embeddings(params, CAPTIONS, **{mutation: True})).max()
            assert changed > 100 * TOLERANCE, (mutation, changed)


@pytest.mark.parametrize("variant", [
    {"layout": "module", "element": "Double", "field_order": "modules first",
     "classes": {"nn.Tanh": "cudnn.Tanh", "nn.Sigmoid": "cudnn.Sigmoid"}},
    {"element": "Float", "average": False, "dropout": 0.25, "dropout_v2": False},
    {"dropout": 0.5}])
def test_file_variants(tmp_path, variant):
    """A bare gModule with double tensors, the modules written before the
    nodes and cudnn's twins; float tensors, FixedGRU's last state and an
    old-style dropout; a new-style dropout."""
    param_keys = ("average", "dropout", "dropout_v2")
    params = random_parameters(3, "birds", **{k: v for k, v in variant.items() if k in param_keys})
    path = encoder_file(str(tmp_path / "enc.t7"), params,
                        **{k: v for k, v in variant.items() if k not in param_keys})
    model, info = load_encoder(path)
    out = embed_captions(model, CAPTIONS[:4])
    assert np.abs(out - reference_embeddings(params, CAPTIONS[:4])).max() < TOLERANCE
    assert info["average"] == params["average"]
    if params["dropout"]:  # active in training only
        x = one_hot(CAPTIONS[:1])
        trained = [model(x, training=True).numpy() for _ in range(2)]
        assert not np.allclose(trained[0], trained[1]) and not np.allclose(trained[0], out[:1])


def weight_total(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_real_sizes(tmp_path):
    """The birds encoder at the authors' sizes: 70 -> 384 -> 512 -> 512, a GRU
    of 512, 1024-d output."""
    start = time.perf_counter()
    params = random_parameters(4, "birds", channels=(384, 512, 512), embedding_dim=1024)
    model, info = load_encoder(encoder_file(str(tmp_path / "birds.t7"), params))
    out = embed_captions(model, CAPTIONS[:4])
    assert out.shape == (4, 1024)
    assert np.abs(out - reference_embeddings(params, CAPTIONS[:4])).max() < TOLERANCE
    assert info["positions"] == PUBLIC_PORT_POSITIONS
    convolutions = (280 * 384 + 384) + (1536 * 512 + 512) + (2048 * 512 + 512)
    gru, projection = 6 * (512 * 512 + 512), 512 * 1024 + 1024
    # the weights (dropout's random state, saved with them, is not one)
    assert weight_total(model) == weight_total(CharCNNRNN.birds()) == convolutions + gru + projection
    assert time.perf_counter() - start < 60


def test_architectures_and_training():
    """The model trains: sizes are keyword arguments, dropout is active in
    training, every weight gets a gradient; the config round-trips."""
    assert CharCNNRNN.birds().num_steps == 18 and CharCNNRNN.flowers().num_steps == 8
    model = CharCNNRNN.flowers(conv_channels=(8, 8, 6), embedding_dim=5, dropout=0.5)
    x = one_hot(CAPTIONS[:3])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True) ** 2)
    grads = tape.gradient(loss, model.trainable_weights)
    assert len(grads) == 2 * (3 + 2 + 1) and all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
    clone = CharCNNRNN.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone(x).numpy(), model(x).numpy())
    assert keras.saving.get_registered_object("stackgan>CharCNNRNN") is CharCNNRNN


def test_weights_are_bounded_before_they_are_copied():
    """However a file's views repeat elements, the encoder copies at most
    MAX_WEIGHTS weights, all finite."""
    huge = np.broadcast_to(np.float32(0.5), (torch7_encoder.MAX_WEIGHTS + 1,))  # no memory behind it
    with pytest.raises(torch7_encoder.LayoutMismatch, match=f"{huge.size + 1} weights; at most"):
        torch7_encoder.checked_weights({"conv1": [huge, np.zeros(1)]})
    with pytest.raises(torch7_encoder.LayoutMismatch, match="its i2h layer hold NaN or infinite"):
        torch7_encoder.checked_weights({"i2h": [np.ones((2, 2)), np.array([1.0, np.inf])]})
    copies = torch7_encoder.checked_weights({"h2h": [np.ones((2, 2)), np.zeros(2)]})
    assert [a.dtype for a in copies["h2h"]] == [np.float32, np.float32]

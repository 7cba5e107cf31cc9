"""The char-CNN-RNN text encoder of Reed et al. (CVPR 2016), whose 1024-d
embeddings the published StackGAN models are conditioned on, as a Keras model.

Written from the authors' Lua: reedscot/cvpr2016 and reedscot/icml2016
``modules/HybridCNNLong.lua``, ``HybridCNN.lua``, ``FixedGRU.lua``,
``FixedRNN.lua`` and the StackGAN demo's ``get_embedding.lua``, with torch/nn's
layer semantics:

* **Input** (``get_embedding.lua``): a caption's *bytes* (not characters, no
  lower-casing), the first ``SEQUENCE_LENGTH`` (201) of them, each a one-hot
  column over the 70-symbol ``ALPHABET``; a byte outside it, and every
  position after the caption's end, is an all-zero column.  The alphabet
  lists '-' twice; its lookup table is built in order, so '-' gets the later
  index and the earlier channel is never set.
* **CNN**: temporal convolutions (``nn.TemporalConvolution``: valid, stride
  ``dW``; torch's weight ``outputFrame x (kW * inputFrame)`` flattens the
  window frame by frame), each followed by ``nn.Threshold`` (x where
  x > 1e-6, else 0) and, where the architecture has one,
  ``nn.TemporalMaxPooling(kW, dW)`` (valid: a remainder shorter than the
  window is dropped).  Birds (``HybridCNNLong``): 70 -> 384 -> 512 -> 512
  with kernels 4 and pooling (3, 3) after the first two: 201 -> 18 frames.
  Flowers (``HybridCNN``): the same plus pooling (3, 2) after the third:
  8 frames.
* **RNN** over the frames (``nn.SplitTable(2)``: one step per frame), all
  steps sharing their weights; every ``nn.Linear`` has a bias.
  ``FixedGRU`` (birds): the first step is ``h1 = tanh(i2h x1)``, with no
  recurrent term; then ``u = sigmoid(i2h_update x + h2h_update h)``,
  ``r = sigmoid(i2h_reset x + h2h_reset h)``,
  ``c = tanh(i2h x + h2h (r * h))``, ``h' = u * c + (1 - u) * h``.
  ``FixedRNN`` (flowers): ``h1 = relu(i2h x1)``, ``h' = relu(i2h x + h2h h)``.
  The output is the mean of the hidden states (``h1 + ... + hT``, then times
  ``1 / T``); FixedGRU without ``avg`` takes the last state.
* **Head**: ``nn.Dropout`` (identity at evaluation: torch's default "v2"
  dropout scales in training; an old-style one scales by ``1 - p`` at
  evaluation instead) and a ``nn.Linear`` to the embedding size (1024).

``CharCNNRNN`` takes the one-hot input ``(batch, 201, 70)`` (``one_hot``)
and is an ordinary trainable Keras model: its sizes are keyword arguments,
dropout is active with ``training=True``.  ``misc.evaluation.caption_embeddings.load_encoder``
reads an encoder file: the authors' ``.t7`` files (``misc.reference.torch7_encoder``)
or one that ``misc/commands/train_text_encoder.py`` trained (``.keras``,
``load_keras_encoder``).
"""

import json
import zipfile

import keras
import numpy as np
import tensorflow as tf

from misc.config import CheckpointError
from misc.data.formats import SEQUENCE_LENGTH

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"/\\|_@#$%^&*~`+-=<>()[]{} "
ALPHABET_SIZE = len(ALPHABET)
RNN_TYPES = ("gru", "rnn")
# The authors' networks (HybridCNNLong.lua, HybridCNN.lua): per convolution its
# output channels, kernel width and the pooling (kW, dW) after it, if any.
BIRDS_CNN = {"conv_channels": (384, 512, 512), "conv_widths": (4, 4, 4),
             "pools": ((3, 3), (3, 3), None)}
FLOWERS_CNN = {"conv_channels": (384, 512, 256), "conv_widths": (4, 4, 4),
               "pools": ((3, 3), (3, 3), (3, 2))}
DEFAULT_BATCH_SIZE = 64  # as fast per caption as 128 on two CPU cores, with 90 MB less memory
# A batch is made smaller where a layer's float32 output would exceed this
# (not for the authors' encoders: 110 captions fit), so that an encoder file
# with very wide layers cannot exhaust memory.
MAX_ACTIVATION_BYTES = 1 << 25
PROGRESS_MIN_CAPTIONS = 1000  # a progress bar for inputs at least this long
# Largest layer size and number of weights accepted from an encoder file (the
# authors' largest layer has 1024 units, their birds encoder 4 M weights).
MAX_LAYER_SIZE = 8192
MAX_WEIGHTS = 1 << 25
# What misc/commands/train_text_encoder.py writes (model.save) and how it is read.
ENCODER_FILE = "text_encoder.keras"
KERAS_CONFIG = "config.json"
MAX_CONFIG_BYTES = 1 << 20
KERAS_CONFIG_KEYS = ("alphabet_size", "sequence_length", "conv_channels", "conv_widths", "conv_strides",
                     "pools", "rnn", "average", "embedding_dim", "dropout", "dropout_scaled_in_training",
                     "threshold", "threshold_value")


class TextEncoderError(CheckpointError):
    """A text-encoder file that cannot be used; the message names it."""


# -- preprocessing (get_embedding.lua) ----------------------------------------

def byte_channels():
    """(256,) int: the one-hot channel of every byte value, -1 for bytes
    outside the alphabet.  Built in alphabet order as the Lua lookup table
    is, so a repeated symbol keeps its later index."""
    channels = np.full(256, -1, np.int64)
    for index, symbol in enumerate(ALPHABET.encode("ascii")):
        channels[symbol] = index
    return channels


BYTE_CHANNELS = byte_channels()


def caption_lines(data):
    """The lines of a caption file's bytes as Lua's ``io.lines`` gives them:
    split at b"\\n", which is dropped (a "\\r" stays); empty lines are
    captions too; a final newline does not start another line."""
    if not data:
        return []
    lines = data.split(b"\n")
    return lines[:-1] if data.endswith(b"\n") else lines


def as_bytes(caption):
    """A caption as bytes (``str`` is encoded as UTF-8)."""
    return caption.encode("utf-8") if isinstance(caption, str) else bytes(caption)


def one_hot(captions, lowercase=False, length=SEQUENCE_LENGTH):
    """The encoder input of ``captions`` (bytes or str): float32
    ``(len(captions), length, ALPHABET_SIZE)``, byte by byte as
    get_embedding.lua builds it.  ``lowercase`` first maps the bytes A-Z to
    a-z (Lua's ``string.lower``), a deviation from get_embedding.lua for
    typed captions that start with a capital."""
    codes = np.full((len(captions), length), -1, np.int64)
    for row, caption in enumerate(captions):
        data = as_bytes(caption)[:length]
        if lowercase:
            data = data.lower()  # ASCII letters only, as string.lower in the C locale
        codes[row, :len(data)] = BYTE_CHANNELS[np.frombuffer(data, np.uint8)]
    out = np.zeros(codes.shape + (ALPHABET_SIZE,), np.float32)
    rows, steps = np.nonzero(codes >= 0)
    out[rows, steps, codes[rows, steps]] = 1.0
    return out


# -- the network ----------------------------------------------------------------

def frames_after(length, width, stride):
    """Frames of a valid temporal convolution or max pooling (torch: a
    remainder shorter than the window is dropped); 0 if none."""
    return 0 if length < width else (length - width) // stride + 1


@keras.saving.register_keras_serializable(package="stackgan")
class TorchDropout(keras.layers.Layer):
    """``nn.Dropout(p)``: with ``scaled_in_training`` (torch's default, "v2")
    the kept values are scaled by 1 / (1 - p) in training and evaluation is
    the identity; without it (old-style) training only masks and evaluation
    scales by 1 - p."""

    def __init__(self, rate=0.0, scaled_in_training=True, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.scaled_in_training = bool(scaled_in_training)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # An attribute, so that tf.train.Checkpoint saves the masks' random
        # state with the weights (a resumed training run draws the masks an
        # uninterrupted one draws).
        self.seed_state = self.seed_generator.state

    def call(self, inputs, training=False):
        if self.rate == 0.0:
            return inputs
        if training:
            kept = keras.random.dropout(inputs, self.rate, seed=self.seed_generator)
            return kept if self.scaled_in_training else kept * (1.0 - self.rate)
        return inputs if self.scaled_in_training else inputs * (1.0 - self.rate)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate,
                "scaled_in_training": self.scaled_in_training, "seed": self.seed}


@keras.saving.register_keras_serializable(package="stackgan")
class CharCNNRNN(keras.Model):
    """The char-CNN-RNN encoder (see the module docstring).

    Keyword arguments (defaults: the authors' birds encoder):
      alphabet_size: input channels (70, ``len(ALPHABET)``).
      sequence_length: input bytes (201).
      conv_channels, conv_widths: output channels and kernel width of each
        temporal convolution; conv_strides: their strides (default 1).
      pools: per convolution the max pooling ``(kW, dW)`` after it, or None.
      rnn: "gru" (FixedGRU) or "rnn" (FixedRNN); its size is the last
        convolution's channels.
      average: the mean of the hidden states (True) or the last one.
      embedding_dim: the output size (1024).
      dropout: the dropout rate before the output layer;
        dropout_scaled_in_training: torch's "v2" dropout (see TorchDropout).
      threshold, threshold_value: the ``nn.Threshold`` after each convolution.
    """

    def __init__(self, alphabet_size=ALPHABET_SIZE, sequence_length=SEQUENCE_LENGTH,
                 conv_channels=BIRDS_CNN["conv_channels"], conv_widths=BIRDS_CNN["conv_widths"],
                 conv_strides=None, pools=BIRDS_CNN["pools"], rnn="gru", average=True,
                 embedding_dim=1024, dropout=0.0, dropout_scaled_in_training=True,
                 threshold=1e-6, threshold_value=0.0, **kwargs):
        super().__init__(**kwargs)
        conv_strides = conv_strides or (1,) * len(conv_channels)
        if not len(conv_channels) == len(conv_widths) == len(conv_strides) == len(pools) >= 1:
            raise ValueError("conv_channels, conv_widths, conv_strides and pools need one entry "
                             "per convolution")
        if rnn not in RNN_TYPES:
            raise ValueError(f"rnn must be one of {RNN_TYPES}, got {rnn!r}")
        self.alphabet_size, self.sequence_length = int(alphabet_size), int(sequence_length)
        self.conv_channels = tuple(int(c) for c in conv_channels)
        self.conv_widths = tuple(int(w) for w in conv_widths)
        self.conv_strides = tuple(int(s) for s in conv_strides)
        self.pools = tuple(None if p is None else (int(p[0]), int(p[1])) for p in pools)
        self.rnn, self.average, self.embedding_dim = rnn, bool(average), int(embedding_dim)
        self.dropout_rate, self.dropout_scaled_in_training = float(dropout), bool(dropout_scaled_in_training)
        self.threshold, self.threshold_value = float(threshold), float(threshold_value)
        self.num_steps, self.activation_size = self.sequence_length, 0
        for channels, width, stride, pool in zip(self.conv_channels, self.conv_widths, self.conv_strides,
                                                 self.pools):
            self.num_steps = frames_after(self.num_steps, width, stride)
            self.activation_size = max(self.activation_size, self.num_steps * channels)  # per caption
            if pool is not None:
                self.num_steps = frames_after(self.num_steps, *pool)
        if self.num_steps < 1:
            raise ValueError(f"the convolutions and poolings leave no frame of {self.sequence_length}")
        self.convolutions = [keras.layers.Conv1D(c, w, strides=s, name=f"conv{i + 1}")
                             for i, (c, w, s) in enumerate(zip(self.conv_channels, self.conv_widths,
                                                               self.conv_strides))]
        self.poolings = [None if p is None else keras.layers.MaxPooling1D(p[0], p[1], name=f"pool{i + 1}")
                         for i, p in enumerate(self.pools)]
        size = self.conv_channels[-1]
        self.gates = {name: keras.layers.Dense(size, name=name) for name in self.gate_names()}
        self.dropout = TorchDropout(self.dropout_rate, self.dropout_scaled_in_training, name="dropout")
        self.projection = keras.layers.Dense(self.embedding_dim, name="projection")
        self.build((None, self.sequence_length, self.alphabet_size))

    @classmethod
    def birds(cls, **kwargs):
        """The authors' birds architecture (HybridCNNLong with FixedGRU, the mean of
        the states); its cnn_dim is the last convolution's channels (512)."""
        return cls(**{**BIRDS_CNN, "rnn": "gru", "average": True, **kwargs})

    @classmethod
    def flowers(cls, **kwargs):
        """The authors' flowers architecture (HybridCNN with FixedRNN), with
        HybridCNN.lua's default cnn_dim of 256 (the published flowers
        encoder's is read from its file)."""
        return cls(**{**FLOWERS_CNN, "rnn": "rnn", "average": True, **kwargs})

    def gate_names(self):
        """The Linear layers of the RNN, named as in FixedGRU.lua / FixedRNN.lua."""
        if self.rnn == "gru":
            return ("i2h", "h2h", "i2h_update", "h2h_update", "i2h_reset", "h2h_reset")
        return ("i2h", "h2h")

    def build(self, input_shape):
        shape = tuple(input_shape)
        for convolution, pooling in zip(self.convolutions, self.poolings):
            convolution.build(shape)
            shape = convolution.compute_output_shape(shape)
            if pooling is not None:
                shape = pooling.compute_output_shape(shape)
        for gate in self.gates.values():
            gate.build((None, self.conv_channels[-1]))
        self.projection.build((None, self.conv_channels[-1]))
        super().build(input_shape)

    def call(self, inputs, training=False):
        frames = inputs
        threshold = keras.ops.cast(self.threshold, frames.dtype)
        for convolution, pooling in zip(self.convolutions, self.poolings):
            frames = convolution(frames)
            frames = keras.ops.where(frames > threshold, frames,
                                     keras.ops.cast(self.threshold_value, frames.dtype))
            if pooling is not None:
                frames = pooling(frames)
        states = self.gru_states(frames) if self.rnn == "gru" else self.rnn_states(frames)
        if self.average:
            hidden = states[0]
            for state in states[1:]:
                hidden = hidden + state
            hidden = hidden * (1.0 / len(states))
        else:
            hidden = states[-1]
        return self.projection(self.dropout(hidden, training=training))

    def gru_states(self, frames):
        """FixedGRU's hidden states, one per frame (the input projections of
        all frames are computed at once)."""
        g = self.gates
        x, x_update, x_reset = g["i2h"](frames), g["i2h_update"](frames), g["i2h_reset"](frames)
        state = keras.ops.tanh(x[:, 0])
        states = [state]
        for t in range(1, self.num_steps):
            update = keras.ops.sigmoid(x_update[:, t] + g["h2h_update"](state))
            reset = keras.ops.sigmoid(x_reset[:, t] + g["h2h_reset"](state))
            candidate = keras.ops.tanh(x[:, t] + g["h2h"](reset * state))
            state = update * candidate + (1.0 - update) * state
            states.append(state)
        return states

    def rnn_states(self, frames):
        """FixedRNN's hidden states, one per frame."""
        x = self.gates["i2h"](frames)
        state = keras.ops.relu(x[:, 0])
        states = [state]
        for t in range(1, self.num_steps):
            state = keras.ops.relu(x[:, t] + self.gates["h2h"](state))
            states.append(state)
        return states

    def get_config(self):
        return {**super().get_config(), "alphabet_size": self.alphabet_size,
                "sequence_length": self.sequence_length, "conv_channels": self.conv_channels,
                "conv_widths": self.conv_widths, "conv_strides": self.conv_strides, "pools": self.pools,
                "rnn": self.rnn, "average": self.average, "embedding_dim": self.embedding_dim,
                "dropout": self.dropout_rate, "dropout_scaled_in_training": self.dropout_scaled_in_training,
                "threshold": self.threshold, "threshold_value": self.threshold_value}

    def describe(self):
        """One line: the architecture."""
        channels = " -> ".join(str(c) for c in (self.alphabet_size,) + self.conv_channels)
        rnn = "GRU" if self.rnn == "gru" else "ReLU RNN"
        summary = "mean of the states" if self.average else "last state"
        return (f"char-CNN-RNN: {len(self.conv_channels)} temporal convolutions ({channels}), "
                f"{rnn} of {self.conv_channels[-1]} over {self.num_steps} steps ({summary}), "
                f"{self.embedding_dim}-d output")


# -- embedding captions ------------------------------------------------------------

def inference_function(model):
    """The model's evaluation-mode forward pass as one traced function for
    batches of any size."""
    spec = tf.TensorSpec((None, model.sequence_length, model.alphabet_size), tf.float32)
    return tf.function(lambda inputs: model(inputs, training=False), input_signature=[spec])


def embed_captions(model, captions, lowercase=False, batch_size=DEFAULT_BATCH_SIZE, progress=None):
    """Embed ``captions`` (bytes or str) with ``model``: float32
    ``(len(captions), model.embedding_dim)``.  ``progress``: show a progress
    bar (default: for PROGRESS_MIN_CAPTIONS captions or more)."""
    forward = inference_function(model)
    batch_size = max(1, min(batch_size, MAX_ACTIVATION_BYTES // (4 * model.activation_size)))
    count = len(captions)
    if progress is None:
        progress = count >= PROGRESS_MIN_CAPTIONS
    bar = keras.utils.Progbar(count, unit_name="caption") if progress else None
    out = np.zeros((count, model.embedding_dim), np.float32)
    for start in range(0, count, batch_size):
        batch = captions[start:start + batch_size]
        out[start:start + len(batch)] = forward(one_hot(batch, lowercase, model.sequence_length)).numpy()
        if bar is not None:
            bar.add(len(batch))
    return out


# -- encoders trained here (.keras) ---------------------------------------------

def weight_count(conv_channels, conv_widths, rnn, embedding_dim, alphabet_size=ALPHABET_SIZE, **_):
    """How many weights a CharCNNRNN of these sizes has (before building it)."""
    inputs = [alphabet_size] + list(conv_channels[:-1])
    total = sum(i * w * o + o for i, w, o in zip(inputs, conv_widths, conv_channels))
    size = conv_channels[-1]
    gates = 6 if rnn == "gru" else 2
    return total + gates * (size * size + size) + size * embedding_dim + embedding_dim


def check_sizes(kwargs, path):
    """A .keras encoder's sizes, bounded before anything is allocated."""
    sizes = list(kwargs["conv_channels"]) + [kwargs["embedding_dim"]]
    widths = list(kwargs["conv_widths"]) + [w for p in kwargs["pools"] if p for w in p]
    if kwargs["alphabet_size"] != ALPHABET_SIZE or kwargs["sequence_length"] != SEQUENCE_LENGTH:
        raise TextEncoderError(f"{path}: reads {kwargs['sequence_length']} x {kwargs['alphabet_size']} "
                               f"inputs; the captions are {SEQUENCE_LENGTH} x {ALPHABET_SIZE}.")
    if not all(1 <= int(v) <= MAX_LAYER_SIZE for v in sizes) or \
            not all(1 <= int(w) <= SEQUENCE_LENGTH for w in widths):
        raise TextEncoderError(f"{path}: layer sizes {sizes} or widths {widths} out of range (sizes 1 to "
                               f"{MAX_LAYER_SIZE}, widths 1 to {SEQUENCE_LENGTH}).")
    if weight_count(**kwargs) > MAX_WEIGHTS:
        raise TextEncoderError(f"{path}: {weight_count(**kwargs)} weights; at most {MAX_WEIGHTS} are "
                               "supported.")


def load_keras_encoder(path):
    """A CharCNNRNN saved by misc/commands/train_text_encoder.py
    (``model.save``): its config is read and checked first (a CharCNNRNN of
    bounded size), then the model is built from it and its weights are
    loaded."""
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.getinfo(KERAS_CONFIG).file_size > MAX_CONFIG_BYTES:
                raise ValueError(f"{KERAS_CONFIG} is over {MAX_CONFIG_BYTES} bytes")
            saved = json.loads(archive.read(KERAS_CONFIG))
        if saved.get("class_name") != CharCNNRNN.__name__:
            raise ValueError(f"it holds a {saved.get('class_name')!r}, not a {CharCNNRNN.__name__}")
        kwargs = {key: saved["config"][key] for key in KERAS_CONFIG_KEYS}
        check_sizes(kwargs, path)
        model = CharCNNRNN(**kwargs)
        model.load_weights(path)
    except TextEncoderError:
        raise
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, TypeError, AttributeError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise TextEncoderError(f"{path}: not a text encoder written by misc/commands/train_text_encoder.py "
                               f"({type(exc).__name__}: {detail}).") from None
    return model, {"path": path, "source": "keras"}

"""The Inception Score as the StackGAN authors computed it.

The authors scored their samples with ``inception_score.py`` of
github.com/hanzhanggit/StackGAN-inception-model: Inception-v3 as defined by
the old TF-Slim library of tensorflow/models (``inception/slim``,
``inception_v3``), fine-tuned on CUB (50 classes + background) or Oxford-102
(20 + 1), restored from the exponential moving averages of its variables.
This module reproduces that computation:

* ``AuthorsInceptionV3``: the same network in inference mode.  Slim's
  ``conv2d`` with batch norm: a bias-free convolution, batch norm on the moving
  statistics with a learned offset and no scale (``center=True``,
  ``scale=False``, epsilon 0.001, ``tf.nn.batch_normalization``), ReLU;
  the final 8x8 average pool, (inactive) dropout and the fully connected
  ``logits`` layer.  The auxiliary head only served training and is not built.
* ``InceptionCheckpoint``: loads the authors' checkpoints (``model.ckpt-5000``,
  TF 1.x V1 file or V2 prefix) by variable name with a shape check.  As their
  script (``ExponentialMovingAverage.variables_to_restore()``), every variable,
  the batch-norm moving statistics included, is read from
  ``<name>/ExponentialMovingAverage``.
* Preprocessing: ``scipy.misc.imresize(img, (299, 299, 3), interp='bilinear')``
  -- for uint8 pictures a Pillow bilinear resize -- then ``x / 127.5 - 1``;
  a grayscale picture is first reshaped with ``np.resize`` to three channels
  as their ``preprocess`` does (which repeats the pixel values in row-major
  order rather than copying the gray channel).
* The score: softmax over the logits without the background class (column
  0); the images are shuffled with NumPy's legacy generator, only whole
  batches of 64 are scored (the rest is dropped), and in each of 10 equal
  consecutive splits ``exp(mean_x KL(p(y|x) || p(y)))`` with ``p(y)`` the
  split's mean prediction; reported as mean and (population) standard
  deviation over the splits.  The script shuffled with an unseeded generator;
  ``authors_selection(..., seed)`` equals its order after
  ``np.random.seed(seed)``.
"""

import dataclasses
import os
import re

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from misc.config import CheckpointError
from misc.data.pictures import PictureError, decoded_picture
from misc.evaluation.defaults import AUTHORS_BATCH_SIZE, AUTHORS_SPLITS
from misc.reference.tf1_checkpoint import load_reader
from misc.training.checkpoints import check_checkpoint_files, verify_checkpoint_data

INPUT_SIZE = 299
BN_EPSILON = 0.001
AVERAGE_SUFFIX = "/ExponentialMovingAverage"
LOGITS_WEIGHTS = "logits/logits/weights"
AUX_SCOPE = "aux_logits"
# The authors' load_data takes every file whose name contains one of these.
IMAGE_NAME_MARKERS = ("jpg", "png")

_OPTIMIZER_SLOT = re.compile(r"/(RMSProp|Momentum|Adam|Adagrad|Ftrl)(_\d+)?$")


class InceptionError(CheckpointError):
    """An evaluation-model file that cannot be used; names the file and the fix."""


class ImageFolderError(PictureError):
    """A folder of pictures that cannot be scored; names the path and the fix."""


# -- the network ----------------------------------------------------------------

class SlimConv(keras.layers.Layer):
    """Slim's ``ops.conv2d`` with batch norm, in inference mode: convolution
    (no bias), ``tf.nn.batch_normalization`` on the moving statistics with
    offset ``beta`` and no scale, ReLU.  ``scope`` is the variable scope in
    the authors' graph (``conv0``, ``mixed_35x35x256a/branch5x5/Conv_1``...)."""

    def __init__(self, scope, filters, kernel, stride=1, padding="SAME", **kwargs):
        super().__init__(name=scope.replace("/", "__"), **kwargs)
        self.scope = scope
        self.filters = filters
        self.kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        self.stride = stride
        self.padding = padding

    def build(self, input_shape):
        channels = (self.filters,)
        # Placeholders: the evaluation model is always loaded from a checkpoint.
        self.weights_ = self.add_weight(
            shape=self.kernel + (int(input_shape[-1]), self.filters), name="weights",
            initializer="zeros")
        self.beta = self.add_weight(shape=channels, name="beta", initializer="zeros")
        self.moving_mean = self.add_weight(shape=channels, name="moving_mean", initializer="zeros",
                                           trainable=False)
        self.moving_variance = self.add_weight(shape=channels, name="moving_variance",
                                               initializer="ones", trainable=False)

    def call(self, x):
        y = tf.nn.conv2d(x, self.weights_.value, strides=self.stride, padding=self.padding)
        y = tf.nn.batch_normalization(y, self.moving_mean.value, self.moving_variance.value,
                                      self.beta.value, None, BN_EPSILON)
        return tf.nn.relu(y)

    def reference_variables(self):
        return {f"{self.scope}/weights": self.weights_,
                f"{self.scope}/BatchNorm/beta": self.beta,
                f"{self.scope}/BatchNorm/moving_mean": self.moving_mean,
                f"{self.scope}/BatchNorm/moving_variance": self.moving_variance}


class Pool(keras.layers.Layer):
    """Slim's ``max_pool`` / ``avg_pool`` (TensorFlow's: an average over
    SAME padding counts only the pixels inside the picture)."""

    def __init__(self, kind, size, stride, padding, **kwargs):
        super().__init__(**kwargs)
        self.kind, self.size, self.stride, self.padding = kind, size, stride, padding

    def call(self, x):
        pool = tf.nn.max_pool2d if self.kind == "max" else tf.nn.avg_pool2d
        return pool(x, self.size, self.stride, self.padding)

    def reference_variables(self):
        return {}


class Fork(keras.layers.Layer):
    """Convolutions side by side on one input, concatenated (the 8x8 blocks'
    1x3 / 3x1 pairs)."""

    def __init__(self, convs, **kwargs):
        super().__init__(**kwargs)
        self.convs = list(convs)

    def call(self, x):
        return tf.concat([conv(x) for conv in self.convs], 3)

    def reference_variables(self):
        return {k: v for conv in self.convs for k, v in conv.reference_variables().items()}


class Branch(keras.layers.Layer):
    """One branch of an Inception block: its steps in sequence."""

    def __init__(self, steps, **kwargs):
        super().__init__(**kwargs)
        self.steps = list(steps)

    def call(self, x):
        for step in self.steps:
            x = step(x)
        return x

    def reference_variables(self):
        return {k: v for step in self.steps for k, v in step.reference_variables().items()}


class Mixed(keras.layers.Layer):
    """An Inception block: branches on one input, concatenated in order."""

    def __init__(self, branches, **kwargs):
        super().__init__(**kwargs)
        self.branches = list(branches)

    def call(self, x):
        return tf.concat([branch(x) for branch in self.branches], 3)

    def reference_variables(self):
        return {k: v for b in self.branches for k, v in b.reference_variables().items()}


# Block layouts of slim's inception_v3, in graph-construction order.  A conv
# is (filters, kernel[, stride, padding]); "avg" / "max" are the 3x3 pools
# (stride 1 SAME / stride 2 VALID); a list inside a branch is a Fork.
def _c(filters, kernel, stride=1, padding="SAME"):
    return (filters, kernel, stride, padding)


def _block_35(pool_filters):
    return {"branch1x1": [_c(64, 1)],
            "branch5x5": [_c(48, 1), _c(64, 5)],
            "branch3x3dbl": [_c(64, 1), _c(96, 3), _c(96, 3)],
            "branch_pool": ["avg", _c(pool_filters, 1)]}


def _block_17(width):
    return {"branch1x1": [_c(192, 1)],
            "branch7x7": [_c(width, 1), _c(width, (1, 7)), _c(192, (7, 1))],
            "branch7x7dbl": [_c(width, 1), _c(width, (7, 1)), _c(width, (1, 7)),
                             _c(width, (7, 1)), _c(192, (1, 7))],
            "branch_pool": ["avg", _c(192, 1)]}


def _block_8():
    return {"branch1x1": [_c(320, 1)],
            "branch3x3": [_c(384, 1), [_c(384, (1, 3)), _c(384, (3, 1))]],
            "branch3x3dbl": [_c(448, 1), _c(384, 3), [_c(384, (1, 3)), _c(384, (3, 1))]],
            "branch_pool": ["avg", _c(192, 1)]}


BLOCKS = (
    ("mixed_35x35x256a", _block_35(32)),
    ("mixed_35x35x288a", _block_35(64)),
    ("mixed_35x35x288b", _block_35(64)),
    ("mixed_17x17x768a", {"branch3x3": [_c(384, 3, 2, "VALID")],
                          "branch3x3dbl": [_c(64, 1), _c(96, 3), _c(96, 3, 2, "VALID")],
                          "branch_pool": ["max"]}),
    ("mixed_17x17x768b", _block_17(128)),
    ("mixed_17x17x768c", _block_17(160)),
    ("mixed_17x17x768d", _block_17(160)),
    ("mixed_17x17x768e", _block_17(192)),
    ("mixed_17x17x1280a", {"branch3x3": [_c(192, 1), _c(320, 3, 2, "VALID")],
                           "branch7x7x3": [_c(192, 1), _c(192, (1, 7)), _c(192, (7, 1)),
                                           _c(192, 3, 2, "VALID")],
                           "branch_pool": ["max"]}),
    ("mixed_8x8x2048a", _block_8()),
    ("mixed_8x8x2048b", _block_8()),
)

STEM = (("conv0", _c(32, 3, 2, "VALID")), ("conv1", _c(32, 3, 1, "VALID")),
        ("conv2", _c(64, 3, 1, "SAME")), ("pool1", "max"),
        ("conv3", _c(80, 1, 1, "VALID")), ("conv4", _c(192, 3, 1, "VALID")), ("pool2", "max"))


def _pool(kind, name):
    if kind == "avg":
        return Pool("avg", 3, 1, "SAME", name=name)
    return Pool("max", 3, 2, "VALID", name=name)


def _build_branch(block, branch, steps):
    scope = f"{block}/{branch}"
    names = iter(["Conv"] + [f"Conv_{i}" for i in range(1, 16)])  # slim's names for unnamed convs
    layers = []
    for i, step in enumerate(steps):
        if isinstance(step, str):
            layers.append(_pool(step, f"{block}__{branch}__pool{i}"))
        elif isinstance(step, list):
            layers.append(Fork([SlimConv(f"{scope}/{next(names)}", *spec) for spec in step],
                               name=f"{block}__{branch}__fork{i}"))
        else:
            layers.append(SlimConv(f"{scope}/{next(names)}", *step))
    return Branch(layers, name=f"{block}__{branch}")


def _build_block(block, layout):
    return Mixed([_build_branch(block, branch, steps) for branch, steps in layout.items()], name=block)


class AuthorsInceptionV3(keras.Model):
    """Slim's ``inception_v3`` in inference mode: (B, 299, 299, 3) images in
    [-1, 1] -> (B, num_classes) logits, class 0 the background."""

    def __init__(self, num_classes, **kwargs):
        kwargs.setdefault("name", "authors_inception_v3")
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.stem = [SlimConv(scope, *spec) if isinstance(spec, tuple) else _pool(spec, scope)
                     for scope, spec in STEM]
        self.blocks = [_build_block(block, layout) for block, layout in BLOCKS]
        self.final_pool = Pool("avg", 8, 1, "VALID", name="logits__pool")

    def build(self, input_shape=None):
        self.logits_weights = self.add_weight(shape=(2048, self.num_classes), name="logits_weights",
                                              initializer="zeros")
        self.logits_biases = self.add_weight(shape=(self.num_classes,), name="logits_biases",
                                             initializer="zeros")
        super().build(input_shape)

    def call(self, images):
        x = images
        for layer in self.stem:
            x = layer(x)
        for block in self.blocks:
            x = block(x)
        x = tf.reshape(self.final_pool(x), [-1, 2048])
        return tf.nn.bias_add(tf.matmul(x, self.logits_weights.value), self.logits_biases.value)

    def build_variables(self):
        """Create every variable with one pass over a blank picture."""
        self(tf.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))

    def reference_variables(self):
        """{variable name in the authors' graph: variable}."""
        found = {}
        for layer in self.stem + self.blocks:
            found.update(layer.reference_variables())
        found[LOGITS_WEIGHTS] = self.logits_weights
        found["logits/logits/biases"] = self.logits_biases
        return found


# -- the authors' checkpoints -----------------------------------------------------

@dataclasses.dataclass
class InceptionReport:
    """What loading an evaluation model did."""

    path: str
    num_classes: int   # classes scored (without the background)
    filled: list       # model variables set (from their moving averages)
    raw: list          # checkpoint variables whose moving average was used instead
    not_needed: list   # the auxiliary head (training only)
    leftovers: dict    # kind -> names: optimizer slots, global_step, loss averages
    unused: list       # anything else nothing took

    def summary(self):
        lines = [f"Loaded the Inception-v3 evaluation model {self.path}: {self.num_classes} classes "
                 f"+ background, {len(self.filled)} variables from their moving averages."]
        parts = [f"{len(self.raw)} raw values (their averages were used)"]
        if self.not_needed:
            parts.append(f"{len(self.not_needed)} of the auxiliary head (training only)")
        parts += [f"{len(v)} {k}" for k, v in sorted(self.leftovers.items())]
        lines.append("Not used: " + ", ".join(parts) + ".")
        if self.unused:
            lines.append(f"Checkpoint variables nothing took ({len(self.unused)}): {', '.join(self.unused)}")
        return "\n".join(lines)


def _leftover_kind(name):
    if name == "global_step":
        return "global_step"
    if _OPTIMIZER_SLOT.search(name):
        return "optimizer slots"
    if name.endswith("/avg"):  # inception_train's loss averages
        return "loss averages"
    return None


class InceptionCheckpoint:
    """An Inception-v3 checkpoint of the authors' evaluation model."""

    def __init__(self, path):
        self.path = path
        if not os.path.isdir(path):
            check_checkpoint_files(path, "--inception", InceptionError)
        self.reader = load_reader(
            path, InceptionError,
            missing="{path}: Inception checkpoint not found (looked for the file and for {path}.index). "
                    "Give --inception the model.ckpt-5000 of the authors' evaluation model (see README, "
                    "'Evaluating a model').",
            unreadable="{path}: not a TensorFlow checkpoint, or a damaged one ({error}). Give --inception "
                       "the authors' model.ckpt-5000 (V1 file, or V2 prefix without .index; download it "
                       "again if it is damaged).")
        self.shapes = {k: tuple(v) for k, v in self.reader.get_variable_to_shape_map().items()}
        key = LOGITS_WEIGHTS + AVERAGE_SUFFIX
        if key not in self.shapes:
            hint = ("it has no moving averages, which the authors' script restores"
                    if LOGITS_WEIGHTS in self.shapes else
                    "TF-Slim's later InceptionV3/... checkpoints are a different model"
                    if any(n.startswith("InceptionV3/") for n in self.shapes) else
                    "it is not the authors' Inception-v3")
            raise InceptionError(
                f"{path}: not the authors' Inception evaluation model: no {key} ({hint}). Use the "
                "fine-tuned model.ckpt-5000 of hanzhanggit/StackGAN-inception-model.")
        shape = self.shapes[key]
        if len(shape) != 2 or shape[0] != 2048 or shape[1] < 2:
            raise InceptionError(f"{path}: {key} has shape {list(shape)}; the authors' Inception-v3 "
                                 "has [2048, classes + 1].")
        self.num_classes = int(shape[1])  # with the background class
        verify_checkpoint_data(path, InceptionError, "Download the authors' model.ckpt-5000 again "
                                                     "(--inception).")

    def load(self, model):
        """Fill ``model`` (an ``AuthorsInceptionV3``) from the moving averages
        after checking every name and shape; returns an ``InceptionReport``."""
        variables = model.reference_variables()
        missing, mismatched = [], []
        for name, var in sorted(variables.items()):
            key = name + AVERAGE_SUFFIX
            if key not in self.shapes:
                missing.append(key)
            elif self.shapes[key] != tuple(var.shape):
                mismatched.append((key, self.shapes[key], tuple(var.shape)))
        if mismatched:
            key, ckpt_shape, model_shape = mismatched[0]
            raise InceptionError(
                f"{self.path}: {len(mismatched)} variable(s) have another shape than in slim's "
                f"Inception-v3, e.g. {key}: checkpoint {list(ckpt_shape)}, model {list(model_shape)}; "
                "it is not the authors' evaluation model.")
        if missing:
            raise InceptionError(
                f"{self.path}: {len(missing)} variable(s) of slim's Inception-v3 are not in the "
                f"checkpoint, e.g. {', '.join(missing[:3])}; it is not the authors' evaluation "
                "model (their script restores these moving averages).")
        for name, var in variables.items():
            var.assign(np.asarray(self.reader.get_tensor(name + AVERAGE_SUFFIX), dtype=var.dtype))
        taken = {name + AVERAGE_SUFFIX for name in variables}
        raw, not_needed, unused = [], [], []
        leftovers = {}
        for name in sorted(self.shapes):
            if name in taken:
                continue
            if name in variables:
                raw.append(name)
            elif name.startswith(AUX_SCOPE + "/"):
                not_needed.append(name)
            elif _leftover_kind(name):
                leftovers.setdefault(_leftover_kind(name), []).append(name)
            else:
                unused.append(name)
        return InceptionReport(self.path, self.num_classes - 1, sorted(variables), raw, not_needed,
                               leftovers, unused)


class InceptionScorer:
    """The authors' evaluation model, loaded, with its preprocessing."""

    def __init__(self, checkpoint):
        """``checkpoint``: an ``InceptionCheckpoint`` or its path."""
        if not isinstance(checkpoint, InceptionCheckpoint):
            checkpoint = InceptionCheckpoint(checkpoint)
        self.model = AuthorsInceptionV3(checkpoint.num_classes)
        self.model.build_variables()
        self.report = checkpoint.load(self.model)
        self._forward = tf.function(self._outputs, input_signature=[
            tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.float32)])  # one trace for all batches

    @property
    def num_classes(self):
        """Classes scored (the background excluded)."""
        return self.model.num_classes - 1

    def _outputs(self, images):
        logits = self.model(images)
        return logits, tf.nn.softmax(logits[:, 1:])

    def outputs(self, images):
        """(logits, class probabilities without background) of a batch of
        uint8 pictures (any sizes: a list of arrays, or one array)."""
        batch = tf.convert_to_tensor(prepare_batch(images))
        logits, probs = self._forward(batch)
        return logits.numpy(), probs.numpy()

    def probabilities(self, images):
        return self.outputs(images)[1]


# -- preprocessing --------------------------------------------------------------

def to_uint8_truncated(images):
    """Generator output in [-1, 1] -> uint8 as the authors' sample savers did
    (``(x + 1) * 127.5``, clipped, truncated toward zero)."""
    values = (np.asarray(images, np.float32) + np.float32(1.0)) * np.float32(127.5)
    return np.clip(values, 0, 255).astype(np.uint8)


def authors_resize(image):
    """``preprocess`` of the authors' script before scaling: a grayscale
    picture reshaped by ``np.resize`` to three channels, then
    ``scipy.misc.imresize(img, (299, 299, 3), interp='bilinear')``, which for
    uint8 RGB is Pillow's bilinear resize."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = np.resize(image, image.shape + (3,))
    if image.shape[:2] == (INPUT_SIZE, INPUT_SIZE):
        return image
    resized = Image.fromarray(image, "RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
    return np.asarray(resized)


def prepare_batch(images):
    """uint8 pictures -> (B, 299, 299, 3) float32 in [-1, 1] as ``preprocess``."""
    resized = np.stack([authors_resize(img) for img in images])
    return resized.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


# -- the score ------------------------------------------------------------------

def authors_selection(count, batch_size=AUTHORS_BATCH_SIZE, seed=0):
    """Indices of the images ``get_inception_score`` scores, in its order:
    ``list(range(count))`` shuffled in place by NumPy's legacy generator
    (here seeded), cut to whole batches."""
    indices = list(np.arange(count))
    np.random.RandomState(seed).shuffle(indices)
    used = count // batch_size * batch_size
    return np.asarray(indices[:used], dtype=np.int64)


def inception_score(probabilities, splits=AUTHORS_SPLITS):
    """(mean, std, per-split scores) of exp(E_x KL(p(y|x) || p(y))) over
    ``splits`` consecutive parts (part i: rows i*n//splits ... (i+1)*n//splits),
    in float64; 0 * log 0 counts as 0 (where the authors' float32 arithmetic
    gives NaN).  Non-finite probabilities (an overflowing network) make their
    split's score NaN, as in the authors' script."""
    p = np.asarray(probabilities, np.float64)
    n = len(p)
    if n < splits:
        raise ValueError(f"{n} predictions cannot be cut into {splits} splits")
    scores = []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        marginal = part.mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part == 0, 0.0, part * (np.log(part) - np.log(marginal)))
        scores.append(float(np.exp(kl.sum(axis=1).mean())))
    return float(np.mean(scores)), float(np.std(scores)), scores


# -- folders of pictures ----------------------------------------------------------

def list_images(folder):
    """Paths the authors' ``load_data`` reads, in its order: ``os.walk``,
    every file whose name contains 'jpg' or 'png'."""
    if not os.path.isdir(folder):
        raise ImageFolderError(f"{folder}: image folder not found (--images).")
    found = []
    for path, _, files in os.walk(folder):
        for name in files:
            if any(marker in name for marker in IMAGE_NAME_MARKERS):
                filename = os.path.join(path, name)
                if os.path.isfile(filename):
                    found.append(filename)
    if not found:
        raise ImageFolderError(f"{folder}: no pictures in it (the authors' script takes files whose "
                               "name contains 'jpg' or 'png').")
    return found


READABLE_MODES = ("RGB", "L", "P", "1", "RGBA")
# How to get past a picture of a folder that cannot be scored.
FOLDER_FIX = "Remove it from the folder or rename it (names containing 'jpg' or 'png' are read)."


def _check_mode(path, image):
    if image.mode not in READABLE_MODES:
        raise ImageFolderError(f"{path}: a {image.mode} picture; the authors' script reads only 8-bit RGB, "
                               "grayscale or palette pictures. Convert it to 8-bit RGB.")


def check_image(path):
    """Refuse a file ``read_image`` cannot read: its header (mode, Pillow's
    decompression-bomb limit) and then its data, decoded and dropped, so a
    truncated file is found before any work."""
    with decoded_picture(path, FOLDER_FIX, ImageFolderError) as image:
        _check_mode(path, image)
        image.load()


def read_image(path):
    """A picture as ``scipy.misc.imread`` (SciPy 1.0) returned it: uint8 RGB,
    or 2-D for grayscale; palette pictures converted to RGB.  An alpha
    channel is dropped (the authors' script fails on it); other modes are
    refused."""
    with decoded_picture(path, FOLDER_FIX, ImageFolderError) as image:
        _check_mode(path, image)
        image.load()
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        elif image.mode == "1":
            image = image.convert("L")
        if image.mode == "RGBA":
            image = image.convert("RGB")
        return np.array(image)

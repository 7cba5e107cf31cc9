"""The reference fixtures and the rules the tests compare against them by.

A fixture folder (``tests/golden/``, described in its README, or the folder
named by the environment variable ``STACKGAN_GOLDEN``) holds, per stage,
``<stage>/<stage>_<config>_golden.npz`` (the arrays the reference computed),
``<stage>_<config>_golden_meta.json`` (its config, checkpoint name, counters,
learning rate), the reference checkpoint gzipped as a V1 file and as a V2
prefix under ``v2/``.  Everything the golden tests need to know about a
fixture -- sizes, file names, counters, batch size, text dimension, which
arrays exist -- is read from these files, so another reference run of any size
is compared by the same tests unchanged.  The other tests always use the
bundled fixture (``BUNDLED``).

Comparison rules (see ``check_update_array`` for the one used downstream of
float32 rounding, and the golden test modules' docstrings for why).
"""

import contextlib
import functools
import glob
import gzip
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from misc.config import default_config
from misc.nets.layers import BatchNorm

TESTS = os.path.dirname(os.path.abspath(__file__))
BUNDLED_DIR = os.path.join(TESTS, "golden")
GOLDEN_DIR = os.environ.get("STACKGAN_GOLDEN") or BUNDLED_DIR

# The reference's Adam constants and batch-norm moving-average rate, as the
# float32 values its kernels used.
ADAM_BETA1 = np.float32(0.5)
ADAM_BETA2 = np.float32(0.999)
ADAM_EPSILON = np.float32(1e-8)
EMA_RATE = np.float32(1.0 - 0.9)

# Our discriminator applies its three moving-average updates wrong, real,
# fake (docs/reference_quirks.md, Q11); the fixture
# codes chains 0/1/2 as real/wrong/fake.
OUR_D_UPDATE_ORDER = (1, 0, 2)
D_SCOPES = ("d_net", "hr_d_net")


# -- fixtures -----------------------------------------------------------------

class Fixture:
    """One stage of a reference fixture folder."""

    def __init__(self, stage, root=GOLDEN_DIR):
        self.stage = stage
        self.dir = os.path.join(root, stage)
        metas = sorted(glob.glob(os.path.join(self.dir, "*_golden_meta.json")))
        if len(metas) != 1:
            pytest.fail(f"{self.dir}: expected one *_golden_meta.json, found {len(metas)} "
                        "(see tests/golden/README.md for the layout)")
        self.prefix = metas[0][:-len("_meta.json")]
        with open(metas[0]) as f:
            self.meta = json.load(f)
        self.params = self.meta["params"]
        self._arrays = None

    @property
    def arrays(self):
        if self._arrays is None:
            with np.load(self.prefix + ".npz") as data:
                self._arrays = {k: data[k] for k in data.files}
        return self._arrays

    @property
    def text_dim(self):
        return int(self.params["TEXT_DIM"])

    @property
    def batch_size(self):
        return int(self.params["BATCH_SIZE"])

    @property
    def learning_rate(self):
        """The rate the reference run fed, as its float32."""
        return np.float32(self.meta["learning_rate_fed"])

    def config(self):
        """Our config tree with the fixture's sizes."""
        p = self.params
        c = default_config()
        c.Z_DIM = int(p["Z_DIM"])
        c.GAN.EMBEDDING_DIM = int(p["EMBEDDING_DIM"])
        c.GAN.GF_DIM = int(p["GF_DIM"])
        c.GAN.DF_DIM = int(p["DF_DIM"])
        c.GAN.NETWORK_TYPE = str(p.get("NETWORK_TYPE", "default"))
        c.TRAIN.BATCH_SIZE = self.batch_size
        c.TRAIN.NUM_COPY = int(p["NUM_COPY"])
        c.TRAIN.FINETUNE_LR = bool(p.get("FINETUNE_LR", False))
        return c

    def unpack_checkpoint(self, form, dst_dir):
        """Decompress the reference checkpoint; return the path TensorFlow
        opens (V1: the file; V2: the prefix)."""
        name = self.meta["checkpoint"]
        os.makedirs(dst_dir, exist_ok=True)
        if form == "v1":
            return _gunzip(os.path.join(self.dir, name + ".gz"), dst_dir)
        for suffix in (".index", ".data-00000-of-00001"):
            _gunzip(os.path.join(self.dir, "v2", name + suffix + ".gz"), dst_dir)
        return os.path.join(dst_dir, name)


def _gunzip(src, dst_dir):
    if not os.path.exists(src):
        pytest.fail(f"reference fixture file missing: {src}")
    dst = os.path.join(dst_dir, os.path.basename(src)[:-3])
    with gzip.open(src, "rb") as f, open(dst, "wb") as g:
        shutil.copyfileobj(f, g)
    return dst


# The bundled fixture, for the tests that use its checkpoints as test data.
BUNDLED = {stage: Fixture(stage, BUNDLED_DIR) for stage in ("stageI", "stageII")}
TEXT_DIM = BUNDLED["stageI"].text_dim


def tiny_config():
    """The bundled fixture's tiny config."""
    return BUNDLED["stageI"].config()


def load_arrays(stage):
    return BUNDLED[stage].arrays


def unpack_checkpoint(stage, form, dst_dir):
    return BUNDLED[stage].unpack_checkpoint(form, dst_dir)


def manifest_rows(filename):
    """{name: (shape, kind)} of every row of a bundled manifest; reads both
    layouts (name, shape, dtype, trainable, kind, index) and the demo's
    (name, shape, kind)."""
    rows = {}
    with open(os.path.join(BUNDLED_DIR, filename)) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            kind = fields[4] if len(fields) == 6 else fields[2]
            rows[fields[0]] = (tuple(int(d) for d in fields[1].strip("[]").split(",") if d), kind)
    return rows


# -- plain comparisons --------------------------------------------------------

def assert_close(name, ours, ref, atol=0.0, rtol=0.0):
    ours = np.asarray(ours, np.float64).reshape(np.shape(ref))
    ref = np.asarray(ref, np.float64)
    err = np.abs(ours - ref)
    bound = atol + rtol * np.abs(ref)
    worst = np.argmax(err - bound) if err.size else 0
    assert np.all(err <= bound), (
        f"{name}: max |ours - ref| = {err.max():.3e} exceeds atol {atol:g} + rtol {rtol:g} "
        f"(at flat index {worst}: ours {ours.ravel()[worst]:.8g}, ref {ref.ravel()[worst]:.8g})")


def stat_tolerance(variance):
    """Batch-norm statistics: rtol 1e-4 plus an absolute floor of 1e-5 of the
    layer's activation scale (means of layers fed by normalised maps are zero
    up to rounding, where a relative error means nothing)."""
    scale = float(np.sqrt(np.mean(np.abs(variance))))
    return dict(rtol=1e-4, atol=1e-5 * scale)


# -- the rule for arrays downstream of float32 rounding -----------------------

# How many float32 noise levels an evaluation may be from the exact value.
NOISE_LEVELS = 8


def l2(x):
    return float(np.linalg.norm(np.asarray(x, np.float64).ravel()))


def noise_band(samples):
    """Per element, NOISE_LEVELS noise levels of a quantity from float32
    evaluations of it (see ``noise_sensitivity``)."""
    samples = [np.asarray(s, np.float64) for s in samples]
    pairs = [(a, b) for i, a in enumerate(samples) for b in samples[i + 1:]]
    scatter = np.sqrt(np.mean([np.square(a - b) / 2.0 for a, b in pairs], axis=0))
    return NOISE_LEVELS * np.maximum(scatter, np.sqrt(np.mean(np.square(scatter))))


def noise_sensitivity(exact, samples, update=None, band=None):
    """The float32 noise floor of an array, from float32 evaluations of it.

    ``samples`` are float32 evaluations of a quantity Y (a variable's
    gradient, a batch statistic, a loss): ours, and ours from the state and
    inputs with every float32 number moved one ulp (random sign), each
    rounding anew.  Their scatter -- RMS difference of pairs over sqrt(2) --
    is Y's noise level: per element, but never below the level pooled over
    the array's elements, so one element whose few draws happen to agree
    does not get a floor of zero, while an element far noisier than the rest
    (a channel of near-constant activations under batch norm) keeps its own.
    The floor of ``update(Y)`` (elementwise: the new weights or Adam slots, a
    moving average; default the identity) is the L2 norm over elements of the
    largest change of each element when Y, at its ``exact`` value, moves by
    up to +-NOISE_LEVELS noise levels: where ``update`` is steep or bends
    (Adam's first step is nearly sign(g) * lr), an element within that band
    of a bend may land anywhere the band reaches.
    """
    exact = np.asarray(exact, np.float64)
    band = noise_band(samples) if band is None else band
    if update is None:
        return l2(band)
    base = update(exact)
    reach = np.zeros_like(base)
    for fraction in BAND_POINTS:  # the band, including the bends inside it
        reach = np.maximum(reach, np.abs(update(exact + fraction * band) - base))
    return l2(reach)


# Where a function of a noisy quantity is evaluated across its noise band.
BAND_POINTS = np.linspace(-1.0, 1.0, 65)
# How many of its bands a gradient may land from its exact value in an
# Adam-updated weight (its step's sign, and near zero its size, hang on it):
# a band comes from three float32 evaluations (and the rectifier kinks taken
# either way), and rounding that lands in the tail of float32's
# distribution -- a kink flipped deep in the network moves many elements at
# once -- reaches past it.
SIGN_MARGIN = 2.0


def check_update_array(name, ours, ref, exact, noise):
    """Both float32 evaluations -- ours and the reference's -- against the
    exact value (L2 over the array): each must be within twice the other's
    distance, or within the float32 noise floor (``noise``, from
    ``noise_sensitivity``, combined with NOISE_LEVELS ulps of each exact
    value).  Returns the two distances."""
    ours, ref, exact = (np.asarray(a, np.float64).reshape(np.shape(exact)) for a in (ours, ref, exact))
    d_ours, d_ref = l2(ours - exact), l2(ref - exact)
    rounding = NOISE_LEVELS * l2(np.spacing(np.abs(exact).astype(np.float32)))
    floor = float(np.hypot(noise, rounding))
    detail = (f"|ours - exact| = {d_ours:.3e}, |reference - exact| = {d_ref:.3e}, float32 noise floor "
              f"{floor:.3e} (L2 over {exact.size} values)")
    assert d_ref <= max(2.0 * d_ours, floor), (
        f"{name}: the reference is not within float32 noise of the exact value of our computation: "
        + detail)
    assert d_ours <= max(2.0 * d_ref, floor), f"{name}: ours is too far from the exact value: {detail}"
    return d_ours, d_ref


def gradient_band(exact, samples, kinked):
    """A gradient's band of float32 outcomes around its exact value: its
    ``noise_band``, widened where the exact gradients with the open
    rectifier kinks taken on either side (``kinked``) lie further."""
    band = noise_band(samples)
    for other in kinked:
        band = np.maximum(band, np.abs(np.asarray(other, np.float64) - np.asarray(exact, np.float64)))
    return band


def check_adam_weights(name, ours, ref, w0, g64, band, adam, first_moment, max_step):
    """Weights after an Adam step, element by element where the step's sign
    is not defined in float32.

    Adam's step takes the sign of the updated first moment ``m``: where the
    gradient's band of float32 outcomes (``gradient_band``, SIGN_MARGIN
    times) lets ``m`` cross zero, float32 evaluations -- ours, the reference's, either kernel set's
    -- may step either way, and by a size that hangs on a gradient known
    only to that band (a fresh slot steps by about lr whatever the
    gradient's size, less near zero).  What is defined there is Adam's bound
    on the step, ``max_step`` (lr for a fresh slot): both evaluations must
    move each such element by at most that (plus NOISE_LEVELS float32 ulps).
    The other elements, whose step has a defined sign, are judged by
    ``check_update_array`` against the exact value, with the noise floor of
    those elements alone (over the same band).  ``adam(g)`` and ``first_moment(g)`` are the
    float64 weight and first moment after the step on gradient ``g``.
    Returns the number of elements judged by the bound.
    """
    shape = np.shape(g64)
    ours, ref, w0 = (np.asarray(x, np.float64).reshape(shape) for x in (ours, ref, w0))
    g64 = np.asarray(g64, np.float64)
    band = SIGN_MARGIN * band
    moments = np.stack([first_moment(g64 + f * band) for f in BAND_POINTS])
    open_sign = (moments.min(axis=0) <= 0) & (moments.max(axis=0) >= 0)
    if open_sign.any():
        limit = max_step + NOISE_LEVELS * np.spacing(np.abs(w0).astype(np.float32))
        for who, value in (("ours", ours), ("the reference", ref)):
            outside = open_sign & (np.abs(value - w0) > limit)
            assert not outside.any(), (
                f"{name}: {who} steps beyond Adam's bound at {int(outside.sum())} of the "
                f"{int(open_sign.sum())} elements whose step sign float32 leaves open (first at flat "
                f"index {int(np.flatnonzero(outside)[0])})")
    keep = ~open_sign
    if keep.any():
        check_update_array(name, ours[keep], ref[keep], adam(g64)[keep],
                           noise_sensitivity(g64[keep], None, lambda g: _restrict(adam, g, g64, keep),
                                             band=band[keep]))
    return int(open_sign.sum())


def _restrict(function, values, full, keep):
    """``function`` of an array ``full`` whose ``keep`` elements are
    ``values``, restricted to them (elementwise functions only)."""
    whole = np.array(full, np.float64)
    whole[keep] = values
    return function(whole)[keep]


def adam_max_step(m, v, beta1_power, beta2_power, lr):
    """The largest step TF1 ``ApplyAdam`` can take from slots ``m`` and ``v``,
    whatever the gradient: ``lr_t (|b1 m| / sqrt(b2 v) + (1 - b1) /
    sqrt(1 - b2))``, which is lr for fresh slots on the first step."""
    b1, b2 = np.float64(ADAM_BETA1), np.float64(ADAM_BETA2)
    lr_t = np.float64(lr) * np.sqrt(1.0 - np.float64(beta2_power)) / (1.0 - np.float64(beta1_power))
    m, v = np.asarray(m, np.float64), np.asarray(v, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        carried = np.where(m == 0, 0.0, np.abs(b1 * m) / np.sqrt(b2 * v))
    return lr_t * (carried + (1.0 - b1) / np.sqrt(1.0 - b2))


def adam_step(weight, gradient, m, v, beta1_power, beta2_power, lr):
    """TF1 ``ApplyAdam`` (the reference's kernel) in float64 with the
    reference's float32 constants: returns (weight, m, v) after the step."""
    b1, b2, eps = (np.float64(c) for c in (ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON))
    lr_t = np.float64(lr) * np.sqrt(1.0 - np.float64(beta2_power)) / (1.0 - np.float64(beta1_power))
    m = m + (gradient - m) * (1.0 - b1)
    v = v + (gradient * gradient - v) * (1.0 - b2)
    return weight - lr_t * m / (np.sqrt(v) + eps), m, v


# -- float64 evaluation --------------------------------------------------------

class GradientRecorder:
    """Takes an optimizer's place in the float64 evaluation: keeps the
    gradients it is given and changes no variable."""

    def __init__(self):
        self.learning_rate = tf.Variable(0.0, dtype=tf.float64)
        self.gradients = []

    def build(self, variables):
        pass

    def apply_gradients(self, pairs):
        self.gradients.extend((g, v) for g, v in pairs)


def build_in_dtype(dtype, build):
    keras.config.set_dtype_policy(dtype)
    try:
        return build()
    finally:
        keras.config.set_dtype_policy("float32")


def reference_variables(networks):
    return {n: v for net in networks for n, v in net.reference_variables().items()}


def reference_values(networks):
    """{reference name: numpy copy} of every variable of the networks."""
    return {n: v.numpy().copy() for n, v in reference_variables(networks).items()}


def assign_values(networks, values):
    for name, var in reference_variables(networks).items():
        var.assign(np.asarray(values[name]).astype(tf.as_dtype(var.dtype).as_numpy_dtype))


def perturb_one_ulp(values, rng):
    """Every float32 number moved one ulp up or down at random."""
    out = {}
    for name, value in values.items():
        value = np.asarray(value)
        if value.dtype != np.float32:
            out[name] = value
            continue
        up = rng.random(value.shape) < 0.5
        out[name] = np.where(up, np.nextafter(value, np.float32(np.inf)),
                             np.nextafter(value, np.float32(-np.inf))).astype(np.float32)
    return out


def batch_norm_layers(networks):
    return [layer for net in networks for layer in net._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, BatchNorm)]


@contextlib.contextmanager
def recorded_batch_statistics(networks):
    """Record ``(layer, mean, variance)`` of every training-mode batch-norm
    call of the networks inside the block, in call order, by wrapping each
    layer's ``batch_moments`` (eager execution)."""
    records = []
    layers = batch_norm_layers(networks)
    for layer in layers:
        def observed(x, _layer=layer, _moments=layer.batch_moments):
            mean, variance = _moments(x)
            records.append((_layer, mean, variance))
            return mean, variance
        object.__setattr__(layer, "batch_moments", observed)
    try:
        yield records
    finally:
        for layer in layers:
            object.__delattr__(layer, "batch_moments")


@contextlib.contextmanager
def recorded_gradients(optimizer, names):
    """Keep ``{reference name: gradient}`` of what ``optimizer`` applies
    inside the block (it still applies them); tensors, symbolic inside a
    ``tf.function``."""
    gradients = {}
    apply = optimizer.apply_gradients

    def observed(pairs):
        pairs = list(pairs)
        gradients.update({names[id(v)]: g for g, v in pairs})
        return apply(pairs)

    object.__setattr__(optimizer, "apply_gradients", observed)
    try:
        yield gradients
    finally:
        object.__delattr__(optimizer, "apply_gradients")


def variable_names(networks):
    return {id(v): n for n, v in reference_variables(networks).items()}


def label_statistics(records, names, d_call_labels=(1, 0, 2)):
    """{'<scope>/<bn scope>/<k>': (mean, variance)} with the fixture's k:
    the call index for generator layers; for discriminator layers the
    construct (0 real, 1 wrong, 2 fake) of each call, given their call order."""
    calls, out = {}, {}
    for layer, mean, variance in records:
        name = names[id(layer)]
        index = calls.get(name, 0)
        calls[name] = index + 1
        k = d_call_labels[index] if name.split("/", 1)[0] in D_SCOPES else index
        out[f"{name}/{k}"] = (np.asarray(mean), np.asarray(variance))
    return out


def bn_layer_names(networks):
    """{id(batch-norm layer): '<scope>/<bn scope>'} (the fixture's layer keys)."""
    return {id(layer): f"{net.scope}/{layer.scope}" for net in networks
            for layer in net._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, BatchNorm)}


# -- rectifier kinks ------------------------------------------------------------

# The rectifiers the networks call (misc/nets/layers.py, misc/nets/blocks.py), by the
# TensorFlow function they go through, and the derivative left of the kink.
RECTIFIERS = {"leaky_relu": lambda kwargs: kwargs.get("alpha", 0.2), "relu": lambda kwargs: 0.0}


@contextlib.contextmanager
def patched_rectifiers(wrap):
    """Inside the block ``tf.nn.<name>`` is ``wrap(name, original)`` for
    every rectifier (the networks look them up at call time)."""
    originals = {name: getattr(tf.nn, name) for name in RECTIFIERS}
    for name, original in originals.items():
        setattr(tf.nn, name, wrap(name, original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(tf.nn, name, original)


@contextlib.contextmanager
def recorded_rectifier_inputs():
    """The input of every rectifier call inside the block, in call order
    (eager execution)."""
    inputs = []

    def wrap(name, original):
        def recording(features, *args, **kwargs):
            inputs.append(np.asarray(features))
            return original(features, *args, **kwargs)
        return recording

    with patched_rectifiers(wrap):
        yield inputs


@contextlib.contextmanager
def forced_kinks(masks, side):
    """Inside the block the derivative of the k-th rectifier call is that of
    ``side`` ('right': 1, 'left': the slope below zero) at the elements
    ``masks[k]`` marks, wherever their input lies; elsewhere the usual one."""
    calls = iter(masks)

    def wrap(name, original):
        def forced(features, *args, **kwargs):
            mask = tf.constant(next(calls))
            left = RECTIFIERS[name](kwargs)

            @tf.custom_gradient
            def rectify(x):
                def gradient(dy):
                    one, slope = tf.ones_like(x), tf.cast(left, x.dtype) * tf.ones_like(x)
                    usual = tf.where(x > 0, one, slope)
                    return dy * tf.where(mask, one if side == "right" else slope, usual)
                return original(x, *args, **kwargs), gradient

            return rectify(features)
        return forced

    with patched_rectifiers(wrap):
        yield


def open_kinks(exact_inputs, sample_inputs):
    """Per rectifier call, the elements whose input is within float32 noise
    of the kink: there float32 may take either branch of the derivative.
    An input's noise is NOISE_LEVELS times the scatter of the float32
    evaluations' inputs, never less than its channel's (a channel of
    near-constant activations under batch norm is noisy as a whole, and its
    level pooled over the batch does not hang on a few draws)."""
    masks = []
    for x64, samples in zip(exact_inputs, zip(*sample_inputs)):
        samples = [np.asarray(s, np.float64) for s in samples]
        pairs = [(a, b) for i, a in enumerate(samples) for b in samples[i + 1:]]
        scatter = np.sqrt(np.mean([np.square(a - b) / 2.0 for a, b in pairs], axis=0))
        channel = np.sqrt(np.mean(np.square(scatter).reshape(-1, scatter.shape[-1]), axis=0))
        masks.append(np.abs(np.asarray(x64, np.float64)) <= NOISE_LEVELS * np.maximum(scatter, channel))
    return masks


class Evaluation:
    """What one update computed: the gradients it applied, the batch
    statistics of every training-mode batch-norm call and the input of every
    rectifier call."""

    def __init__(self, gradients, statistics, losses, rectifier_inputs=()):
        self.gradients = gradients
        self.statistics = statistics
        self.losses = losses  # what the step returned: losses, or (losses, outputs)
        self.rectifier_inputs = rectifier_inputs

    def loss(self, name):
        losses = self.losses[0] if isinstance(self.losses, tuple) else self.losses
        return np.asarray(losses[name])


def evaluate_update(gan, networks, optimizer, step, batch, d_call_labels):
    """Run ``step(batch)`` on ``gan``, recording what ``optimizer`` is given."""
    with recorded_batch_statistics(networks) as records, recorded_rectifier_inputs() as inputs:
        with recorded_gradients(optimizer, variable_names(networks)) as gradients:
            losses = step(batch)
    statistics = label_statistics(records, bn_layer_names(networks), d_call_labels)
    return Evaluation({k: g.numpy() for k, g in gradients.items()}, statistics, losses, inputs)


def evaluate_update_with_xla(gan, networks, optimizer, step, batch, d_call_labels):
    """``evaluate_update`` with the step compiled by XLA: the gradients and
    batch statistics recorded while tracing are outputs of the compiled
    function."""
    traced = {}

    @tf.function(jit_compile=True)
    def compiled(batch):
        with recorded_batch_statistics(networks) as records:
            with recorded_gradients(optimizer, variable_names(networks)) as gradients:
                losses = step(batch)
        traced["layers"] = [layer for layer, _, _ in records]
        traced["names"] = list(gradients)
        return losses, list(gradients.values()), [(mean, variance) for _, mean, variance in records]

    batch = {k: tf.constant(v) for k, v in batch.items()}
    losses, gradients, moments = compiled(batch)
    records = [(layer, mean, variance) for layer, (mean, variance) in zip(traced["layers"], moments)]
    statistics = label_statistics(records, bn_layer_names(networks), d_call_labels)
    return Evaluation({n: g.numpy() for n, g in zip(traced["names"], gradients)}, statistics, losses)


# -- the reference's optimizer state --------------------------------------------

class ReferenceOptimizerState:
    """Adam slots and beta powers before an update, as the reference checkpoint
    holds them (absent slots are zero: a fresh optimizer)."""

    def __init__(self, checkpoint):
        self.reader = tf.train.load_checkpoint(checkpoint)
        self.names = set(self.reader.get_variable_to_shape_map())

    def slot(self, name, slot, shape):
        key = f"{name}/{slot}"
        return self.reader.get_tensor(key).astype(np.float64) if key in self.names else np.zeros(shape)

    def beta_powers(self, suffix):
        return tuple(np.float32(self.reader.get_tensor(f"beta{i}_power{suffix}")) for i in (1, 2))


# -- batch-norm moving statistics -------------------------------------------------

def replay_ema(value, schedule, stats):
    """Float32 replay of interleaved reference EMA chains on one variable.

    ``schedule``: event codes, 2k = chain k reads the variable, 2k+1 = chain k
    writes ``var - (read_k - stats[k]) * 0.1``.
    """
    var = np.asarray(value, np.float32).copy()
    reads = {}
    for event in schedule:
        chain, write = divmod(int(event), 2)
        if write:
            var = (var - (reads[chain] - np.asarray(stats[chain], np.float32)) * EMA_RATE).astype(np.float32)
        else:
            reads[chain] = var.copy()
    return var


def sequential_schedule(order):
    return [code for k in order for code in (2 * k, 2 * k + 1)]


def bn_layers(values, scope):
    return [n[:-len("/mean")] for n in values if n.startswith(scope + "/") and n.endswith("/mean")]


# -- one stage's golden run ------------------------------------------------------

# Float32 evaluations from perturbed inputs per update, for its noise level.
NOISE_SAMPLES = 2


class Update:
    """One of the reference's optimizer runs, as our trainer performs it."""

    def __init__(self, optimizer, step, network, layout_index, d_call_labels, phase, gradient_key,
                 statistics_key=None):
        self.optimizer = optimizer          # trainer attribute of the optimizer
        self.step = step                    # trainer method taking a batch
        self.network = network              # key in gan.networks() of what it trains
        self.layout_index = layout_index    # index in gan.reference_optimizer_layout()
        self.d_call_labels = d_call_labels  # construct of each discriminator call
        self.phase = phase                  # fixture phase of the state after it
        self.gradient_key = gradient_key    # fixture key of its gradients
        self.statistics_key = statistics_key  # fixture key of its batch statistics (or None)

    @property
    def loss_key(self):
        return self.phase[len("after_"):]


class GoldenStage:
    """Runs a stage's reference computations with our trainer and checks them.

    ``make_trainer(config, text_dim)`` builds our trainer; ``golden_batch``
    maps the fixture's inputs to our batch; ``updates`` lists the
    discriminator and generator ``Update`` in the reference's order;
    ``reference_images`` maps each generator (key in ``gan.networks()``) to
    the fixture key of the images it made in the discriminator run.
    """

    def __init__(self, fixture, make_trainer, golden_batch, updates, reference_images):
        self.fx = fixture
        self._make_trainer = make_trainer
        self.golden_batch = golden_batch
        self.updates = updates
        self.reference_images = reference_images

    def make_gan(self, dtype="float32"):
        config = self.fx.config()
        if config.TRAIN.FINETUNE_LR:
            pytest.fail(f"{self.fx.dir}: a FINETUNE_LR fixture; these tests compare the "
                        "reference's two-run iteration (FINETUNE_LR False)")
        return build_in_dtype(dtype, lambda: self._make_trainer(config, self.fx.text_dim))

    @staticmethod
    def networks(gan):
        return tuple(gan.networks().values())

    def exact(self, update, values, batch, kinks=None):
        """``update`` evaluated in float64 from ``values`` and ``batch``
        (``kinks``: ``forced_kinks``'s arguments, for its step)."""
        gan = self.make_gan("float64")
        for name in gan.optimizers():
            setattr(gan, name, GradientRecorder())
        nets = self.networks(gan)
        assign_values(nets, values)
        batch = {k: tf.constant(np.asarray(v, np.float64)) for k, v in batch.items()}
        with forced_kinks(*kinks) if kinks else contextlib.nullcontext():
            return evaluate_update(gan, nets, getattr(gan, update.optimizer), getattr(gan, update.step),
                                   batch, update.d_call_labels)

    def kink_gradients(self, update, values, batch, exact, evaluations):
        """The exact gradients of ``update`` with the rectifier kinks that
        float32 leaves open (``open_kinks``) all taken on the right, then all
        on the left: float32 evaluations may land on either branch there, so
        both belong to the band of float32 outcomes (empty when none is
        open)."""
        masks = open_kinks(exact.rectifier_inputs, [e.rectifier_inputs for e in evaluations])
        if not any(mask.any() for mask in masks):
            return []
        return [self.exact(update, values, batch, kinks=(masks, side)).gradients
                for side in ("right", "left")]

    def run(self, gan, checkpoint):
        """Both updates by ``gan`` (imported from ``checkpoint``): the first
        from the checkpoint, the second from the reference's state after the
        first (``reference_state_after``).  For each: its exact (float64)
        evaluation, and ``NOISE_SAMPLES`` float32 evaluations from one-ulp
        perturbed state and inputs (its noise)."""
        nets = self.networks(gan)
        batch = self.golden_batch(self.fx.arrays)
        rng = np.random.default_rng(self.fx.meta["numpy_seed"])
        r = {"gan": gan, "checkpoint": checkpoint, "before": reference_values(nets)}
        start = r["before"]
        noise_starts = [start] * NOISE_SAMPLES
        for update in self.updates:
            optimizer = getattr(gan, update.optimizer)
            step = getattr(gan, update.step)
            evaluate = functools.partial(self.evaluate_and_reset, gan, update)
            noise = [evaluate(perturb_one_ulp(values, rng), perturb_one_ulp(batch, rng))
                     for values in noise_starts]
            last = update is self.updates[-1]
            fed = evaluate(start, batch, self.fed_reference_images(gan)) if not last else None
            assign_values(nets, start)
            ours = evaluate_update(gan, nets, optimizer, step, batch, update.d_call_labels)
            after = reference_values(nets)
            trained = gan.networks()[update.network].reference_variables()
            exact = self.exact(update, start, batch)
            r[update.phase] = {
                "start": start, "ours": ours, "after": after, "noise": noise,
                "kink_gradients": self.kink_gradients(update, start, batch, exact, [ours, *noise]),
                "slots": {n: [s.numpy() for s in optimizer.slots(v)] for n, v in trained.items()
                          if v.trainable},
                "powers": [opt.beta_powers() for opt, *_ in gan.reference_optimizer_layout()],
                "global_step": int(gan.global_step.numpy()),
                "exact": exact,
            }
            if not last:
                start = self.reference_state_after(update, fed.after)
                noise_starts = [self.reference_state_after(update, n.after) for n in noise]
        return r

    def rerun(self, r, evaluate):
        """Both updates of ``run``'s result ``r`` again from the same states
        on a freshly imported trainer, each evaluated by ``evaluate`` (e.g.
        compiled with XLA); the result has ``run``'s layout, with the exact
        evaluations and noise samples of ``r``, for ``check_update``."""
        from misc.reference.importer import import_reference_checkpoint

        gan = self.make_gan()
        import_reference_checkpoint(gan, r["checkpoint"])
        nets = self.networks(gan)
        out = {"gan": gan, "checkpoint": r["checkpoint"], "before": r["before"]}
        for update in self.updates:
            optimizer = getattr(gan, update.optimizer)
            assign_values(nets, r[update.phase]["start"])
            ours = evaluate(gan, nets, optimizer, getattr(gan, update.step),
                            self.golden_batch(self.fx.arrays), update.d_call_labels)
            trained = gan.networks()[update.network].reference_variables()
            out[update.phase] = {
                **r[update.phase], "ours": ours, "after": reference_values(nets),
                "slots": {n: [s.numpy() for s in optimizer.slots(v)] for n, v in trained.items()
                          if v.trainable},
                "powers": [opt.beta_powers() for opt, *_ in gan.reference_optimizer_layout()],
                "global_step": int(gan.global_step.numpy()),
            }
        return out

    def evaluate_and_reset(self, gan, update, values, inputs, feed=None):
        """``update`` from ``values``; the optimizer and global_step are
        reset to where they were, so the real update can follow."""
        nets = self.networks(gan)
        optimizer = getattr(gan, update.optimizer)
        optimizer_state = [v.numpy() for v in optimizer.variables]
        global_step = gan.global_step.numpy()
        assign_values(nets, values)
        with feed or contextlib.nullcontext():
            evaluation = evaluate_update(gan, nets, optimizer, getattr(gan, update.step), inputs,
                                         update.d_call_labels)
        evaluation.after = reference_values(nets)
        for var, value in zip(optimizer.variables, optimizer_state):
            var.assign(value)
        gan.global_step.assign(global_step)
        return evaluation

    def stored_keys(self, update, name):
        a = self.fx.arrays
        return [k for k in (f"step/{update.phase}/{name}", f"step/{update.phase}/bn/{name}") if k in a]

    def reference_state_after(self, update, fallback):
        """The reference's state after ``update``: what the fixture stores of
        it, the rest from ``fallback``.  The main run's fallback is our update
        fed the images the reference's generators made (the reference's own
        inputs); a noise sample's is that sample's own state, so the noise
        of the next update includes what the fixture leaves unknown."""
        a = self.fx.arrays
        out = {}
        for name in fallback:
            keys = self.stored_keys(update, name)
            out[name] = a[keys[0]] if keys else fallback[name]
        return out

    def fed_reference_images(self, gan):
        """Inside the block the generators' images are the fixture's."""
        networks = gan.networks()
        return replaced_images({networks[k]: self.fx.arrays[key] for k, key in self.reference_images.items()})

    def check_update(self, r, update, replace_after=None):
        """One update by the float64 rule: gradients, weights and Adam slots;
        for an update with recorded batch statistics (the generator's), those
        statistics and the moving statistics they update.  Also: what it does
        not change is untouched; its losses, beta powers and global_step."""
        a, gan = self.fx.arrays, r["gan"]
        u = r[update.phase]
        ours, exact, noise, start, after = u["ours"], u["exact"], u["noise"], u["start"], u["after"]
        after = {**after, **(replace_after or {})}  # (tests of this rule: a wrong port)
        _, _, slot_names, suffix = gan.reference_optimizer_layout()[update.layout_index]
        state = ReferenceOptimizerState(r["checkpoint"])
        beta1_power, beta2_power = state.beta_powers(suffix)
        assert set(ours.gradients) == set(exact.gradients)
        checked = 0
        for name, g64 in exact.gradients.items():
            m0 = state.slot(name, slot_names[0], g64.shape)
            v0 = state.slot(name, slot_names[1], g64.shape)
            w0 = np.asarray(start[name], np.float64)

            def adam(index, w0=w0, m0=m0, v0=v0):
                return lambda g: adam_step(w0, g, m0, v0, beta1_power, beta2_power,
                                           self.fx.learning_rate)[index]

            samples = [e.gradients[name] for e in (ours, *noise)]
            band = gradient_band(g64, samples, [kinked[name] for kinked in u["kink_gradients"]])
            weight_key = f"step/{update.phase}/{name}"
            if weight_key in a:
                max_step = adam_max_step(m0, v0, beta1_power, beta2_power, self.fx.learning_rate)
                check_adam_weights(weight_key, after[name], a[weight_key], w0, g64, band, adam(0), adam(1),
                                   max_step)
                checked += 1
            for key, value, function in (
                    (f"step/{update.gradient_key}/{name}", ours.gradients[name], None),
                    (f"step/{update.phase}/{name}/{slot_names[0]}", u["slots"][name][0], adam(1)),
                    (f"step/{update.phase}/{name}/{slot_names[1]}", u["slots"][name][1], adam(2))):
                if key in a:
                    expected = g64 if function is None else function(g64)
                    noise_level = noise_sensitivity(g64, samples, function, band=band)
                    check_update_array(key, value, a[key], expected, noise_level)
                    checked += 1
        moved = set(exact.gradients)
        if update.statistics_key:
            names = {label.rsplit("/", 1)[0] for label in exact.statistics}
            assert set(ours.statistics) == set(exact.statistics)
            for label, stats in exact.statistics.items():
                layer = label.rsplit("/", 1)[0]
                for index, stat in enumerate(("mean", "variance")):
                    samples = [e.statistics[label][index] for e in (ours, *noise)]
                    moving = np.asarray(start[f"{layer}/{stat}"], np.float64)

                    def ema(x, moving=moving):
                        return moving - (moving - x) * np.float64(EMA_RATE)

                    for key, value, function in (
                            (f"step/{update.statistics_key}/{label}/{stat}",
                             ours.statistics[label][index], None),
                            (f"step/{update.phase}/bn/{layer}/{stat}", after[f"{layer}/{stat}"], ema)):
                        if key in a:
                            expected = stats[index] if function is None else function(stats[index])
                            check_update_array(key, value, a[key], expected,
                                               noise_sensitivity(stats[index], samples, function))
                            checked += 1
            moved |= {f"{layer}/{stat}" for layer in names for stat in ("mean", "variance")}
        assert checked, f"the fixture stores no array of the update before {update.phase}"
        for name, value in after.items():  # what the update does not change is untouched
            moving_statistic = name.endswith(("/mean", "/variance"))
            if name not in moved and not (update.statistics_key is None and moving_statistic):
                np.testing.assert_array_equal(value, start[name], err_msg=name)
        # The losses of the first update are forward values from the
        # checkpoint; a later update starts from a state out of float32 Adam.
        for key in (k for k in a if k.startswith(f"step/{update.loss_key}/")):
            loss = key.rsplit("/", 1)[1]
            if update is self.updates[0]:
                assert_close(key, ours.loss(loss), a[key], atol=1e-5)
            else:
                samples = [e.loss(loss) for e in (ours, *noise)]
                check_update_array(key, ours.loss(loss), a[key], exact.loss(loss),
                                   noise_sensitivity(exact.loss(loss), samples))
        for (b1, b2), (_, _, _, sfx) in zip(u["powers"], gan.reference_optimizer_layout()):
            assert_close(f"beta1_power{sfx}", b1, a[f"step/{update.phase}/beta1_power{sfx}"], rtol=1e-6)
            assert_close(f"beta2_power{sfx}", b2, a[f"step/{update.phase}/beta2_power{sfx}"], rtol=1e-6)
        runs = 1 + self.updates.index(update)
        assert u["global_step"] == a[f"step/{update.phase}/global_step"] == self.fx.meta["global_step"] + runs

    def check_discriminator_moving_statistics(self, r):
        """After the D update (plain tolerances): layers run once as they
        are; discriminator layers, run three times (real, wrong, fake),
        order-aware, because the reference leaves the order of their
        moving-average updates undefined (docs/reference_quirks.md)."""
        a = self.fx.arrays
        phase = self.updates[0].phase
        before, after_d = r[phase]["start"], r[phase]["after"]
        d_stats = r[phase]["ours"].statistics
        ours_order = sequential_schedule(OUR_D_UPDATE_ORDER)
        scopes = {n.split("/", 1)[0] for n in before}
        for layer in (layer for scope in scopes for layer in bn_layers(before, scope)):
            tol = stat_tolerance(a[f"step/{phase}/bn/{layer}/variance"])
            for index, stat in enumerate(("mean", "variance")):
                name = f"{layer}/{stat}"
                ref = a[f"step/{phase}/bn/{name}"]
                schedule_key = f"step/dstep_bn_update_schedule/{layer}/{stat}"
                if schedule_key not in a:
                    assert_close(f"{phase} {name}", after_d[name], ref, **tol)
                    continue
                ours_stats = [d_stats[f"{layer}/{k}"][index] for k in range(3)]
                ref_stats = [a[f"bnstat/{layer}/{k}/{stat}"] for k in range(3)]
                assert_close(f"our EMA {name}", after_d[name],
                             replay_ema(before[name], ours_order, ours_stats), atol=1e-7, rtol=1e-6)
                ref_replay = replay_ema(before[name], a[schedule_key], ref_stats)
                assert_close(f"reference replay {name}", ref_replay, ref, **tol)
                order_effect = np.abs(replay_ema(before[name], ours_order, ref_stats) - ref_replay)
                assert_close(f"{phase} {name}", after_d[name], ref, atol=tol["atol"] + order_effect,
                             rtol=tol["rtol"])


@contextlib.contextmanager
def replaced_images(images_of):
    """Inside the block each generator in ``images_of`` returns the given
    images instead of its own (the rest of its outputs unchanged)."""
    for network, images in images_of.items():
        def call(*args, _call=network.call, _images=images, **kwargs):
            out = dict(_call(*args, **kwargs))
            out["images"] = tf.constant(_images, out["images"].dtype)
            return out
        object.__setattr__(network, "call", call)
    try:
        yield
    finally:
        for network in images_of:
            object.__delattr__(network, "call")


def check_forward_statistics(label, ours, arrays, prefix):
    """Every recorded batch statistic against ``<prefix><layer>/<k>/<stat>``."""
    keys = {k[len(prefix):].rsplit("/", 1)[0] for k in arrays if k.startswith(prefix)}
    assert set(ours) == keys, f"{label}: recorded {sorted(set(ours) ^ keys)}"
    for key, (mean, variance) in ours.items():
        tol = stat_tolerance(arrays[f"{prefix}{key}/variance"])
        assert_close(f"{prefix}{key}/mean", mean, arrays[f"{prefix}{key}/mean"], **tol)
        assert_close(f"{prefix}{key}/variance", variance, arrays[f"{prefix}{key}/variance"], **tol)


def check_checkpoint_model_variables(stage, checkpoint):
    """Our networks hold exactly the checkpoint's model variables (names and
    shapes); everything else in it is optimizer state."""
    from misc.reference.tf1_checkpoint import ReferenceCheckpoint, leftover_kind

    shapes = ReferenceCheckpoint(checkpoint).shapes
    model = {n: tuple(s) for n, s in shapes.items() if leftover_kind(n) is None}
    ours = {n: tuple(v.shape) for n, v in reference_variables(stage.networks(stage.make_gan())).items()}
    assert ours == model


def check_v1_and_v2_hold_the_same_state(stage, tmp_path):
    from misc.reference.importer import import_reference_checkpoint

    loaded = []
    for form in ("v1", "v2"):
        gan = stage.make_gan()
        import_reference_checkpoint(gan, stage.fx.unpack_checkpoint(form, str(tmp_path / form)))
        optimizer_state = [v.numpy() for opt in gan.optimizers().values() for v in opt.variables]
        loaded.append((reference_values(stage.networks(gan)), optimizer_state,
                       int(gan.counter.numpy()), int(gan.global_step.numpy())))
    (a, a_opt, *a_counters), (b, b_opt, *b_counters) = loaded
    assert a.keys() == b.keys() and a_counters == b_counters
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    for x, y in zip(a_opt, b_opt, strict=True):
        np.testing.assert_array_equal(x, y)


def check_repeat_is_bit_identical(stage, r):
    """The first update again, on a freshly imported trainer: same bits."""
    from misc.reference.importer import import_reference_checkpoint

    gan = stage.make_gan()
    import_reference_checkpoint(gan, r["checkpoint"])
    update = stage.updates[0]
    nets = stage.networks(gan)
    again = evaluate_update(gan, nets, getattr(gan, update.optimizer), getattr(gan, update.step),
                            stage.golden_batch(stage.fx.arrays), update.d_call_labels)
    first = r[update.phase]
    for name, g in first["ours"].gradients.items():
        np.testing.assert_array_equal(again.gradients[name], g, err_msg=name)
    for label, (mean, variance) in first["ours"].statistics.items():
        np.testing.assert_array_equal(again.statistics[label][0], mean, err_msg=label)
        np.testing.assert_array_equal(again.statistics[label][1], variance, err_msg=label)
    for name, value in reference_values(nets).items():
        np.testing.assert_array_equal(value, first["after"][name], err_msg=name)

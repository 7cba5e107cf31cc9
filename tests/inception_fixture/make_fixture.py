"""Build the Inception-Score fixture from the authors' own evaluation code.

    python tests/inception_fixture/make_fixture.py AUTHORS_CHECKOUT [--out DIR]
        [--seed 1234] [--weights ternary|dense] [--images DIR] [--batch-size 4] [--splits 2]

AUTHORS_CHECKOUT is a checkout of github.com/hanzhanggit/StackGAN-inception-model
(``inception_score.py`` and the ``inception/slim`` library it imports, at
commit 971a2ef8e9cda83fc62eba92c1a62c4df3176509).  Nothing of it is copied
here: this script imports it, unmodified, under TensorFlow's ``tf.compat.v1``
graph mode behind a few shims (below), and records what it computes.

1. A checkpoint laid out like the authors' fine-tuned ``model.ckpt-5000``
   (written by tensorflow/models ``inception_train.py``): the variables of
   the authors' ``inference()`` graph, their exponential moving averages
   (``<var>/ExponentialMovingAverage``, for the trainable variables and the
   batch-norm moving statistics: the "double average" of inception_train)
   and ``global_step``; a single-file V1 checkpoint, xz-compressed
   (inception_train's RMSProp slots are left out: 175 MB more of checkpoint
   that nothing reads).  The values are random (NumPy seed ``--seed``).  The
   moving averages, which the authors' script restores, hold the model; the
   raw variables hold other values (slim's initial batch-norm statistics and
   constant weights), so loading the raw ones gives other predictions.
2. The authors' ``main()`` is run on a folder of images with that checkpoint:
   their graph (``inputs`` placeholder, ``inference``, background logit cut
   off, softmax), ``variables_to_restore()`` restore, ``load_data``,
   ``preprocess`` and ``get_inception_score`` (NumPy's global generator seeded
   with ``--seed`` first: the script shuffles the images with it).  Recorded:
   the order ``load_data`` read the files in, every image after the
   authors' resize, the full logits and the softmax for every image, and the
   score (mean, std).

Compactness (``--weights ternary``, the default): Inception-v3 has 21.8
million weights, 87 MB of random float32 that no compressor shrinks.  The
architecture, names and shapes must be the real ones, so instead every
convolution kernel takes one of three values (-s, 0, +s; three quarters
zero; s He-scaled per tensor so the activations stay of order one) and the
batch-norm vectors are ordinary random floats; the checkpoint compresses to
about 5 MB.  The convolution arithmetic is the same as for any weights.
``--weights dense`` draws ordinary random floats everywhere (for checks
outside the test suite).  In both, the small logits layer (2048 x classes) is
calibrated on the pictures (``calibrated_logits``) so that the random
classifier tells them apart: otherwise every picture gets the same class and
the score is 1.

Shims (this script only): ``tensorflow`` is ``tf.compat.v1`` with v2
behaviour disabled (the authors' code targets TensorFlow 1.x graph mode);
``scipy.misc.imread`` / ``imresize`` (removed from SciPy) re-created as SciPy
1.0 defined them for the inputs used here: Pillow decoding (palette images
converted to RGB), and for uint8 arrays a Pillow resize with
``resample=BILINEAR`` of the RGB (or 8-bit grayscale) image.
"""

import argparse
import hashlib
import json
import lzma
import os
import shutil
import sys
import tempfile
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from PIL import Image

CHECKPOINT_NAME = "model.ckpt-5000"
GLOBAL_STEP = 5000
NUM_CLASSES = 50  # CUB: 50 test classes (+ background)
BATCH_SIZE = 4  # the script's --batch_size and --splits for the fixture's ten pictures
SPLITS = 2
LOGITS_GAIN = 3.0  # spread of the random classifier's logits over the pictures
EMA_SUFFIX = "/ExponentialMovingAverage"


# -- shims ------------------------------------------------------------------

def install_tensorflow_shim():
    import tensorflow as real_tf
    import tensorflow.compat.v1 as v1

    v1.disable_v2_behavior()

    class Proxy(types.ModuleType):
        def __getattr__(self, name):
            return getattr(v1, name)

    proxy = Proxy("tensorflow")
    proxy.__path__ = real_tf.__path__  # submodule imports (tensorflow.python...) still work
    sys.modules["tensorflow"] = proxy
    return v1


READ_LOG = []


def scipy10_imread(name):
    """scipy.misc.imread of SciPy 1.0: Pillow, palette -> RGB(A), 1-bit -> L."""
    READ_LOG.append(name)
    im = Image.open(name)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    return np.array(im)


def scipy10_imresize(arr, size, interp="bilinear"):
    """scipy.misc.imresize of SciPy 1.0 for uint8 input: toimage (no byte
    scaling for uint8), Pillow resize to (size[1], size[0]), back to array."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise NotImplementedError("the fixture only resizes uint8 images")
    if arr.ndim == 2:
        mode = "L"
    elif arr.ndim == 3 and 3 in arr.shape:
        if arr.shape[2] != 3:
            raise NotImplementedError("channel axis other than the last")
        mode = "RGB"
    else:
        raise NotImplementedError(f"array of shape {arr.shape}")
    image = Image.frombytes(mode, (arr.shape[1], arr.shape[0]), arr.tobytes())
    resample = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "cubic": 3}[interp]
    return np.array(image.resize((size[1], size[0]), resample=resample))


def install_scipy_misc_shim():
    import scipy

    misc = types.ModuleType("scipy.misc")
    misc.imread = scipy10_imread
    misc.imresize = scipy10_imresize
    sys.modules["scipy.misc"] = misc
    scipy.misc = misc


def import_authors(checkout, argv):
    if not os.path.isfile(os.path.join(checkout, "inception_score.py")):
        raise SystemExit(f"{checkout}: no inception_score.py; give a checkout of "
                         "hanzhanggit/StackGAN-inception-model")
    sys.argv = ["inception_score.py"] + argv  # the script's flags parse sys.argv lazily
    sys.path.insert(0, checkout)
    import inception_score

    return inception_score


# -- images -----------------------------------------------------------------

def write_images(folder, rng):
    """A few small pictures of the kinds the script reads: RGB PNG at the
    StackGAN sizes and others, a JPEG, a grayscale and a palette PNG."""
    os.makedirs(folder, exist_ok=True)
    specs = [("s1_a.png", 64, 64, "RGB"), ("s1_b.png", 64, 64, "RGB"), ("s1_c.png", 64, 64, "RGB"),
             ("s2_a.png", 256, 256, "RGB"), ("s2_b.png", 256, 256, "RGB"),
             ("s2_c.jpg", 256, 256, "RGB"), ("exact_299.png", 299, 299, "RGB"),
             ("wide.png", 120, 200, "RGB"), ("gray.png", 96, 96, "L"),
             ("palette.png", 80, 80, "P")]
    for name, h, w, mode in specs:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = rng.uniform(0, 255, 3)
        slope = rng.uniform(-1.5, 1.5, (2, 3)) * 255 / max(h, w)
        img = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
        for _ in range(4):  # a few discs and boxes of random colours
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.1, 0.35) * min(h, w)
            colour = rng.uniform(0, 255, 3)
            if rng.random() < 0.5:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
            else:
                mask = (abs(yy - cy) < r) & (abs(xx - cx) < r * 0.7)
            img[mask] = colour
        if name == "s2_b.png":  # one textured picture; the rest compress to little
            img += rng.normal(0, 3, img.shape)
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        path = os.path.join(folder, name)
        if mode == "L":
            Image.fromarray(img.mean(axis=2).astype(np.uint8), "L").save(path)
        elif mode == "P":
            Image.fromarray(img).quantize(16).save(path)
        elif name.endswith(".jpg"):
            Image.fromarray(img).save(path, quality=90)
        else:
            Image.fromarray(img).save(path)
    return [s[0] for s in specs]


# -- the checkpoint -------------------------------------------------------------

def fan_in(shape):
    return int(np.prod(shape[:-1]))


def draw_values(name, shape, rng, weights):
    """Values of one model variable (what its moving average holds)."""
    shape = tuple(shape)
    leaf = name.rsplit("/", 1)[-1]
    if leaf == "weights":
        if weights == "dense":
            return rng.normal(0, np.sqrt(2.0 / fan_in(shape)), shape).astype(np.float32)
        # Three levels, three quarters of the taps zero, He-scaled.
        level = np.float32(np.sqrt(8.0 / fan_in(shape)))
        taps = rng.choice(np.array([-1, 0, 0, 0, 0, 0, 0, 1], np.int8), size=shape)
        return taps.astype(np.float32) * level
    if leaf == "beta" or leaf == "biases":
        return rng.normal(0, 0.1, shape).astype(np.float32)
    if leaf == "moving_mean":
        return rng.normal(0, 0.1, shape).astype(np.float32)
    if leaf == "moving_variance":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    raise ValueError(f"unexpected variable {name}")


def raw_values(name, shape):
    """Values of the raw (not averaged) variable: slim's initial batch-norm
    statistics, constant weights -- anything but the averages."""
    leaf = name.rsplit("/", 1)[-1]
    value = {"moving_variance": 1.0, "weights": 0.01}.get(leaf, 0.0)
    return np.full(shape, value, np.float32)


def calibrated_logits(features, num_classes, rng):
    """Random logits weights and biases that spread the pictures' logits:
    w_ij = r_ij / s_i, b = -m w (+ noise), with m, s the per-feature mean and
    deviation of the pooled features over the pictures (r ~ N(0, gain^2 / 2048)).
    Without this, the part of the features common to all pictures picks the
    same class for every picture.  A small (2048 x classes) dense matrix."""
    mean, std = features.mean(axis=0), features.std(axis=0)
    std = np.maximum(std, 0.1 * np.median(std) + 1e-6)
    r = rng.normal(0, LOGITS_GAIN / np.sqrt(features.shape[1]), (features.shape[1], num_classes))
    weights = (r / std[:, None]).astype(np.float32)
    biases = (-mean @ weights + rng.normal(0, 0.1, num_classes)).astype(np.float32)
    return weights, biases


def pooled_features(authors, sess, graph, inputs, pictures):
    """The 2048 pooled features (input of the logits layer) of each picture."""
    flat, = [op.outputs[0] for op in graph.get_operations()
             if op.name.endswith("logits/flatten/Reshape")]
    out, batch = [], int(inputs.shape[0])
    for start in range(0, len(pictures), batch):
        chunk = [authors.preprocess(p) for p in pictures[start:start + batch]]
        count = len(chunk)
        chunk += [chunk[0]] * (batch - count)
        out.append(sess.run(flat, {inputs: np.concatenate(chunk, 0)})[:count])
    return np.concatenate(out)


def build_checkpoint(authors, tf, path, rng, weights, pictures, batch_size):
    """Write the training-style checkpoint; return {model variable: shape}
    and the checkpoint's variable list with kinds."""
    graph = tf.Graph()
    with graph.as_default():
        inputs = tf.placeholder(tf.float32, [batch_size, 299, 299, 3], name="inputs")
        authors.inference(inputs, NUM_CLASSES + 1)
        model_vars = {v.op.name: v for v in tf.global_variables()}
        global_step = tf.get_variable("global_step", [], initializer=tf.constant_initializer(0),
                                      trainable=False)
        averages = tf.train.ExponentialMovingAverage(authors.MOVING_AVERAGE_DECAY, global_step)
        averages.apply(tf.trainable_variables() + tf.moving_average_variables())
        saver = tf.train.Saver(tf.global_variables(), write_version=tf.train.SaverDef.V1)
        with tf.Session(graph=graph) as sess:
            sess.run(tf.global_variables_initializer())
            model_shapes, averaged = {}, {}
            for name in sorted(model_vars):
                shape = model_vars[name].shape.as_list()
                model_shapes[name] = shape
                if name.startswith("aux_logits/"):  # not used by the score: constants
                    averaged[name] = np.full(shape, 0.001, np.float32)
                elif not name.startswith("logits/"):
                    averaged[name] = draw_values(name, shape, rng, weights)
                    model_vars[name].load(averaged[name], sess)
            features = pooled_features(authors, sess, graph, inputs, pictures)
            averaged["logits/logits/weights"], averaged["logits/logits/biases"] = calibrated_logits(
                features, NUM_CLASSES + 1, rng)
            for name, var in model_vars.items():
                var.load(raw_values(name, model_shapes[name]), sess)
                averages.average(var).load(averaged[name], sess)
            global_step.load(GLOBAL_STEP, sess)
            saver.save(sess, path, write_meta_graph=False)
            kinds = {}
            for var in tf.global_variables():
                name = var.op.name
                if name.endswith(EMA_SUFFIX):
                    kind = "moving_average"
                elif name in model_shapes:
                    kind = "raw"
                else:
                    kind = "global_step"
                kinds[name] = [var.shape.as_list(), kind]
    return model_shapes, kinds


# -- the authors' evaluation ------------------------------------------------------

def run_authors_main(authors, tf, seed):
    """Run ``main()`` unmodified; capture its session, prediction op and result."""
    captured = {}
    original = authors.get_inception_score

    def recording_get_inception_score(sess, images, pred_op):
        np.random.seed(seed)  # the script shuffles with NumPy's global generator
        captured["score"] = original(sess, images, pred_op)
        captured["preds"], captured["logits"] = per_image_outputs(authors, sess, images, pred_op)
        captured["resized"] = [resized_image(authors, img) for img in images]
        captured["restore_map"] = restore_map(authors, tf)
        return captured["score"]

    authors.get_inception_score = recording_get_inception_score
    try:
        authors.main()
    finally:
        authors.get_inception_score = original
    return captured


def per_image_outputs(authors, sess, images, pred_op):
    """Softmax (without background) and full logits of every image, in the
    order ``load_data`` returned them, through the authors' preprocess and
    graph (the last batch padded with repeats of the first image)."""
    slice_op = pred_op.op.inputs[0]  # tf.slice(logits, ...)
    logits_op = slice_op.op.inputs[0]
    preds, logits, batch = [], [], int(pred_op.shape[0])
    for start in range(0, len(images), batch):
        chunk = [authors.preprocess(img) for img in images[start:start + batch]]
        count = len(chunk)
        chunk += [chunk[0]] * (batch - count)
        p, lg = sess.run([pred_op, logits_op], {"inputs:0": np.concatenate(chunk, 0)})
        preds.append(p[:count])
        logits.append(lg[:count])
    return np.concatenate(preds), np.concatenate(logits)


def resized_image(authors, img):
    """The authors' ``preprocess`` output, stored as the uint8 image it scales."""
    scaled = authors.preprocess(img)[0]
    resized = np.rint((scaled + 1.0) * 127.5).astype(np.uint8)
    assert np.array_equal(resized.astype(np.float32) / 127.5 - 1.0, scaled)
    return resized


def restore_map(authors, tf):
    """{checkpoint name: variable name} the authors' Saver restores."""
    averages = tf.train.ExponentialMovingAverage(authors.MOVING_AVERAGE_DECAY)
    return {k: v.op.name for k, v in sorted(averages.variables_to_restore().items())}


def md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", help="checkout of hanzhanggit/StackGAN-inception-model")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--weights", choices=("ternary", "dense"), default="ternary")
    parser.add_argument("--images", default=None,
                        help="score this folder instead of writing the fixture's pictures")
    parser.add_argument("--raw-checkpoint", action="store_true",
                        help="write the checkpoint uncompressed (for checks outside the suite)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--splits", type=int, default=SPLITS)
    args = parser.parse_args(argv)

    rng = np.random.RandomState(args.seed)
    os.makedirs(args.out, exist_ok=True)
    images_dir = args.images or os.path.join(args.out, "images")
    if args.images is None:
        if os.path.isdir(images_dir):
            shutil.rmtree(images_dir)
        write_images(images_dir, rng)
    work = tempfile.mkdtemp(prefix="inception_fixture_")
    ckpt = os.path.join(work, CHECKPOINT_NAME)

    tf = install_tensorflow_shim()
    install_scipy_misc_shim()
    authors = import_authors(os.path.abspath(args.checkout), [
        "--checkpoint_dir", ckpt, "--image_folder", images_dir, "--num_classes", str(NUM_CLASSES),
        "--splits", str(args.splits), "--batch_size", str(args.batch_size), "--gpu", "0"])
    pictures = [scipy10_imread(p) for p in sorted(
        os.path.join(d, n) for d, _, files in os.walk(images_dir) for n in files
        if "jpg" in n or "png" in n)[:64]]  # to calibrate the random classifier
    model_shapes, kinds = build_checkpoint(authors, tf, ckpt, rng, args.weights, pictures,
                                          args.batch_size)
    READ_LOG.clear()
    captured = run_authors_main(authors, tf, args.seed)
    order = [os.path.relpath(p, images_dir) for p in READ_LOG]
    resized = dict(zip(order, captured["resized"]))

    restore = captured["restore_map"]
    assert all(k == v + EMA_SUFFIX for k, v in restore.items()), "a variable restored without its average"
    assert set(restore.values()) == set(model_shapes)

    if args.raw_checkpoint:
        shutil.copyfile(ckpt, os.path.join(args.out, CHECKPOINT_NAME))
    else:
        with open(ckpt, "rb") as f, lzma.open(os.path.join(args.out, CHECKPOINT_NAME + ".xz"), "wb") as g:
            shutil.copyfileobj(f, g)
    arrays = {"preds": captured["preds"], "logits": captured["logits"],
              "score": np.array(captured["score"], np.float64)}
    arrays.update({f"resized/{name}": img for name, img in resized.items()})
    np.savez_compressed(os.path.join(args.out, "golden.npz"), **arrays)
    meta = {
        "authors_commit": "971a2ef8e9cda83fc62eba92c1a62c4df3176509",
        "checkpoint": CHECKPOINT_NAME, "checkpoint_md5": md5(ckpt), "format": "V1",
        "seed": args.seed, "weights": args.weights,
        "flags": {"num_classes": NUM_CLASSES, "batch_size": args.batch_size, "splits": args.splits},
        "load_order": order,
        "score": {"mean": float(captured["score"][0]), "std": float(captured["score"][1])},
        "restore_map": restore,
        "model_variables": model_shapes,
        "checkpoint_variables": kinds,
    }
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    shutil.rmtree(work)
    print(f"score {meta['score']}; {len(order)} images; {len(kinds)} checkpoint variables; "
          f"files in {args.out}")


if __name__ == "__main__":
    main()

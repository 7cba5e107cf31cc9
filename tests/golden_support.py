"""Access to ../shared/golden (the reference's own outputs) for the tests.

The fixture is required: a missing fixture fails the golden tests instead of
skipping them.
"""

import gzip
import json
import os
import shutil

import numpy as np
import pytest

from misc.config import default_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_DIR = os.environ.get("STACKGAN_GOLDEN", os.path.join(ROOT, "..", "shared", "golden"))

# Our discriminator applies its three moving-average updates in this order
# (see StageIGAN.discriminator_logits); the fixture codes chains 0/1/2 as
# real/wrong/fake.
OUR_D_UPDATE_ORDER = (1, 0, 2)
EMA_RATE = np.float32(1.0 - 0.9)


def golden_path(*parts):
    path = os.path.join(GOLDEN_DIR, *parts)
    if not os.path.exists(path):
        pytest.fail(f"golden fixture missing: {path} (CI checks out ../shared beside the repo)")
    return path


def tiny_config():
    """The fixture's tiny config (golden README, section 3)."""
    c = default_config()
    c.Z_DIM = 10
    c.GAN.EMBEDDING_DIM = 16
    c.GAN.GF_DIM = 16
    c.GAN.DF_DIM = 8
    c.TRAIN.BATCH_SIZE = 4
    c.TRAIN.NUM_COPY = 1
    return c


TEXT_DIM = 32


def load_arrays(stage):
    with np.load(golden_path(stage, f"{stage}_tiny_golden.npz")) as data:
        return {k: data[k] for k in data.files}


def load_meta(stage):
    with open(golden_path(stage, f"{stage}_tiny_golden_meta.json")) as f:
        return json.load(f)


def _gunzip(src, dst_dir):
    dst = os.path.join(dst_dir, os.path.basename(src)[:-3])
    with gzip.open(src, "rb") as f, open(dst, "wb") as g:
        shutil.copyfileobj(f, g)
    return dst


def unpack_checkpoint(stage, form, dst_dir):
    """Decompress the tiny reference checkpoint; return the path TF opens
    (V1: the file; V2: the prefix)."""
    name = {"stageI": "stageI_tiny_model_100.ckpt", "stageII": "stageII_tiny_model_200.ckpt"}[stage]
    os.makedirs(dst_dir, exist_ok=True)
    if form == "v1":
        return _gunzip(golden_path(stage, name + ".gz"), dst_dir)
    for suffix in (".index", ".data-00000-of-00001"):
        _gunzip(golden_path(stage, "v2", name + suffix + ".gz"), dst_dir)
    return os.path.join(dst_dir, name)


def read_manifest(filename, kinds=("model", "bn_moving_stat")):
    """{name: shape} of the manifest rows of the given kinds."""
    rows = {}
    with open(golden_path(filename)) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, shape, _dtype, _trainable, kind, _index = line.rstrip("\n").split("\t")
            if kind in kinds:
                rows[name] = tuple(int(d) for d in shape.strip("[]").split(",") if d)
    return rows


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


def assert_close(name, ours, ref, atol=0.0, rtol=0.0):
    ours = np.asarray(ours, np.float64).reshape(np.shape(ref))
    ref = np.asarray(ref, np.float64)
    err = np.abs(ours - ref)
    bound = atol + rtol * np.abs(ref)
    worst = np.argmax(err - bound) if err.size else 0
    assert np.all(err <= bound), (
        f"{name}: max |ours - ref| = {err.max():.3e} exceeds atol {atol:g} + rtol {rtol:g} "
        f"(at flat index {worst}: ours {ours.ravel()[worst]:.8g}, ref {ref.ravel()[worst]:.8g})")


def assert_adam_first_step(name, before, ours, ref, lr, gradient):
    """Compare weights after one Adam step from fresh slots.

    The first step is ``lr * g / (|g| + c)`` with ``c = eps / sqrt(1 - beta2)
    ~ 3.2e-7``: a full ``lr`` for ordinary gradients, but ill-conditioned
    where ``|g|`` is within a few multiples of ``c`` (float32 rounding of the
    gradient decides the step there).  Where our gradient is at least 10 c
    the weights must match to 1% of lr; everywhere the steps must be bounded
    by lr.  Returns the fraction of well-conditioned elements.
    """
    before, ours, ref = (np.asarray(a, np.float64) for a in (before, ours, ref))
    assert np.all(np.abs(ours - before) <= lr * (1 + 1e-3)), f"{name}: an Adam step exceeds lr"
    assert np.all(np.abs(ref - before) <= lr * (1 + 1e-3)), f"{name}: a reference step exceeds lr"
    well = np.abs(np.asarray(gradient)) >= ADAM_WELL_CONDITIONED
    assert_close(name + " (well-conditioned elements)", ours[well], ref[well], atol=0.01 * lr)
    return well.mean()


ADAM_WELL_CONDITIONED = 10 * 1e-8 / np.sqrt(1 - 0.999)

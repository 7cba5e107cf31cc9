"""The Inception-Score fixture in tests/inception_fixture/.

Built by ``tests/inception_fixture/make_fixture.py`` from the authors' own
sources (hanzhanggit/StackGAN-inception-model): a random-weight checkpoint of
their Inception-v3 evaluation model (xz-compressed V1 file), ten pictures,
and what the authors' ``inception_score.py`` computed on them (``golden.npz``:
each picture after their resize, logits, softmax, the score; ``meta.json``:
flags, seed, the order their ``load_data`` read the files in, the variable
lists of their graph and checkpoint).
"""

import hashlib
import json
import lzma
import os

import numpy as np

FIXTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inception_fixture")
IMAGES_DIR = os.path.join(FIXTURE_DIR, "images")
AVERAGE_SUFFIX = "/ExponentialMovingAverage"

_CACHE = {}  # once per test session: the unpacked checkpoint, the loaded model


def meta():
    with open(os.path.join(FIXTURE_DIR, "meta.json")) as f:
        return json.load(f)


def golden():
    with np.load(os.path.join(FIXTURE_DIR, "golden.npz")) as data:
        return {k: data[k] for k in data.files}


def checkpoint(tmp_path_factory):
    """The fixture checkpoint decompressed (once per test session); its path."""
    if "path" not in _CACHE:
        info = meta()
        path = str(tmp_path_factory.mktemp("inception_fixture") / info["checkpoint"])
        digest = hashlib.md5()
        with lzma.open(os.path.join(FIXTURE_DIR, info["checkpoint"] + ".xz"), "rb") as f, \
                open(path, "wb") as g:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                g.write(block)
        assert digest.hexdigest() == info["checkpoint_md5"], "damaged fixture checkpoint"
        _CACHE["path"] = path
    return _CACHE["path"]


def scorer(tmp_path_factory):
    """The fixture's evaluation model loaded (once per test session)."""
    if "scorer" not in _CACHE:
        from misc.evaluation.inception import InceptionScorer

        _CACHE["scorer"] = InceptionScorer(checkpoint(tmp_path_factory))
    return _CACHE["scorer"]

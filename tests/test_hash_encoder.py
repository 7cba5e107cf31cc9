"""Tests for misc/data/hash_encoder.py."""

import hashlib
import os
import subprocess
import sys
import time

import numpy as np

from misc.data.hash_encoder import CaptionEncoder, content_words, encode_captions

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CAPTIONS = [
    "a small red circle on a blue background",
    "a large yellow star on a black background",
    "This bird has a white belly and a short orange beak.",
]

BASE = "a small red circle on a blue background"
PARAPHRASES = [
    "on a blue background there is a small red circle",
    "the circle is small and red, and the background is blue",
    "this picture shows a red circle that is small, with a blue background",
    "blue background with a small red circle",
]
DIFFERENT_ATTRIBUTE = [
    "a small green circle on a blue background",   # colour
    "a small red square on a blue background",     # shape
    "a large red circle on a blue background",     # size
    "a small red circle on a white background",    # background
]


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_shape_dtype_and_scale():
    emb = encode_captions(CAPTIONS)
    assert emb.shape == (3, 1024) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), np.sqrt(1024), rtol=1e-5)
    assert 0.9 < float(emb.std()) < 1.1  # values of order 1
    small = CaptionEncoder(dim=16).encode(CAPTIONS)
    assert small.shape == (3, 16)
    assert encode_captions([]).shape == (0, 1024)


def test_captions_without_content_words_still_embed():
    emb = encode_captions(["", "the a of"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), np.sqrt(1024), rtol=1e-5)
    assert content_words("The RED circle, on a Blue background!") == ["red", "circle", "blue", "background"]


def test_deterministic_within_and_across_processes():
    first = encode_captions(CAPTIONS)
    np.testing.assert_array_equal(first, encode_captions(CAPTIONS))
    np.testing.assert_array_equal(first, CaptionEncoder().encode(CAPTIONS))
    code = ("import hashlib, sys; sys.path.insert(0, sys.argv[1]);"
            "from misc.data.hash_encoder import encode_captions;"
            f"print(hashlib.sha256(encode_captions({CAPTIONS!r}).tobytes()).hexdigest())")
    # A different PYTHONHASHSEED would change anything based on hash().
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code, REPO_ROOT], capture_output=True, text=True,
                         env=env, timeout=60, check=True).stdout.strip()
    assert out == hashlib.sha256(first.tobytes()).hexdigest()


def test_paraphrases_are_closer_than_changed_attributes():
    emb = encode_captions([BASE] + PARAPHRASES + DIFFERENT_ATTRIBUTE)
    base, para, diff = emb[0], emb[1:1 + len(PARAPHRASES)], emb[1 + len(PARAPHRASES):]
    para_sims = [cosine(base, p) for p in para]
    diff_sims = [cosine(base, d) for d in diff]
    # Measured: paraphrases 0.94-0.95, one changed attribute 0.65-0.74.
    assert min(para_sims) > 0.88, para_sims
    assert max(diff_sims) < 0.8, diff_sims
    assert np.mean(para_sims) > np.mean(diff_sims) + 0.15


def test_different_captions_differ_clearly():
    emb = encode_captions(CAPTIONS + DIFFERENT_ATTRIBUTE)
    sims = emb @ emb.T / 1024
    off_diagonal = sims[~np.eye(len(emb), dtype=bool)]
    assert off_diagonal.max() < 0.8
    # Unrelated captions are nearly orthogonal.
    assert abs(cosine(emb[0], emb[2])) < 0.15
    # The changed attribute moves the embedding by a large amount (norm is 32).
    assert np.linalg.norm(emb[0] - emb[3]) > 15


def test_encodes_thousands_of_captions_per_second():
    captions = [f"a {c} {s} on a {b} background, number {i}"
                for i, (c, s, b) in enumerate(zip(["red", "blue", "green"] * 1000,
                                                  ["circle", "star", "square"] * 1000,
                                                  ["white", "black", "gray"] * 1000))]
    start = time.perf_counter()
    emb = encode_captions(captions)
    elapsed = time.perf_counter() - start
    assert emb.shape == (3000, 1024)
    assert elapsed < 3.0, f"{len(captions) / elapsed:.0f} captions per second"

"""A small deterministic caption encoder that ships with the project.

The published StackGAN datasets come with char-CNN-RNN caption embeddings
from a pretrained network that is not part of this port.  This encoder lets
any new caption be embedded (the bundled "shapes" dataset, demo captions)
with no model weights:

* captions are lower-cased and split into words; a short list of filler
  words (articles, prepositions, "picture", ...) is dropped so that the
  attribute words carry the meaning;
* the features are the remaining words (weight 1) and the unordered pairs of
  words at most ``PAIR_WINDOW`` positions apart (weight ``PAIR_WEIGHT``).
  Pairs bind attributes together ("red circle" differs from "red square")
  while being insensitive to word order, so paraphrases stay close;
* each feature is hashed with BLAKE2 (stable across processes, unlike
  Python's salted ``hash()``) onto three signed buckets of a 4096-bucket
  vector, which a fixed Gaussian matrix, seeded with ``seed``, projects to
  ``dim`` dimensions;
* each embedding is scaled to L2 norm ``sqrt(dim)``, i.e. values of order 1,
  the scale the generator's first dense layer (N(0, 0.02) weights) expects.
"""

import hashlib
import re
from functools import lru_cache

import numpy as np
from scipy import sparse

from misc.data.formats import TEXT_EMBEDDING_DIM

DEFAULT_DIM = TEXT_EMBEDDING_DIM  # the reference embeddings' size, so the same networks fit
DEFAULT_SEED = 1234
HASH_ENCODER = "hash"  # its name for --text-encoder (misc/evaluation/caption_embeddings.py)
NUM_BUCKETS = 4096
HASHES_PER_FEATURE = 3
PAIR_WINDOW = 3
PAIR_WEIGHT = 0.7
EMPTY_FEATURE = "<empty>"

STOP_WORDS = frozenset("""
a an the this that these those there here it its is are was were be been being
has have had having with without of on in at to into onto from by for over under
and or but as so very quite some any one which who whose what where while
picture image photo photograph drawing shows showing shown depicts depicting
contains containing see seen can we you i
plain colored coloured drawn sits placed near side
""".split())

_WORD_RE = re.compile(r"[a-z0-9]+")


def content_words(caption):
    """Lower-cased words of ``caption`` without the filler words."""
    return [w for w in _WORD_RE.findall(caption.lower()) if w not in STOP_WORDS]


def caption_features(caption):
    """The weighted features of one caption as a dict ``feature -> weight``."""
    words = content_words(caption)
    features = {}
    for word in words:
        features[word] = features.get(word, 0.0) + 1.0
    for i, first in enumerate(words):
        for second in words[i + 1:i + 1 + PAIR_WINDOW]:
            if first != second:
                pair = " ".join(sorted((first, second)))
                features[pair] = features.get(pair, 0.0) + PAIR_WEIGHT
    return features or {EMPTY_FEATURE: 1.0}


@lru_cache(maxsize=1 << 16)
def feature_buckets(feature):
    """Three (bucket, sign) pairs for ``feature`` from a stable 64-bit hash."""
    digest = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
    buckets = []
    for j in range(HASHES_PER_FEATURE):
        bits = digest >> (13 * j)
        buckets.append((bits & (NUM_BUCKETS - 1), 1.0 if (bits >> 12) & 1 else -1.0))
    return tuple(buckets)


class CaptionEncoder:
    """Embed captions as float32 vectors of length ``dim`` (see the module docstring)."""

    def __init__(self, dim=DEFAULT_DIM, seed=DEFAULT_SEED):
        self.dim = int(dim)
        self.seed = int(seed)
        # The legacy RandomState stream is frozen by NumPy, so the projection
        # (and thus every embedding) is the same on every NumPy version.
        rng = np.random.RandomState(self.seed)
        self._projection = rng.standard_normal((NUM_BUCKETS, self.dim)).astype(np.float32)

    def hashed_features(self, captions):
        """The sparse (len(captions), NUM_BUCKETS) matrix of hashed, weighted features."""
        rows, cols, values = [], [], []
        scale = 1.0 / np.sqrt(HASHES_PER_FEATURE)
        for row, caption in enumerate(captions):
            for feature, weight in caption_features(caption).items():
                for bucket, sign in feature_buckets(feature):
                    rows.append(row)
                    cols.append(bucket)
                    values.append(sign * weight * scale)
        return sparse.csr_matrix((np.asarray(values, dtype=np.float32), (rows, cols)),
                                 shape=(len(captions), NUM_BUCKETS))

    def encode(self, captions):
        """Embed a list of captions: float32 array (len(captions), dim), L2 norm sqrt(dim)."""
        if isinstance(captions, str):
            raise TypeError("encode expects a list of captions, not a single string")
        captions = list(captions)
        if not captions:
            return np.zeros((0, self.dim), dtype=np.float32)
        embeddings = np.asarray(self.hashed_features(captions) @ self._projection, dtype=np.float32)
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        embeddings *= np.sqrt(self.dim) / np.maximum(norms, 1e-12)
        return embeddings


@lru_cache(maxsize=4)
def _encoder(dim, seed):
    return CaptionEncoder(dim=dim, seed=seed)


def encode_captions(captions, dim=DEFAULT_DIM, seed=DEFAULT_SEED):
    """Embed ``captions`` with a cached ``CaptionEncoder(dim, seed)``."""
    return _encoder(int(dim), int(seed)).encode(captions)

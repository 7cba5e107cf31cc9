"""Fréchet Inception Distance as the FID papers compute it.

Features: the 2048 ``pool_3`` activations of the 2015 ImageNet Inception
graph that TTUR (github.com/bioinf-jku/TTUR, ``fid.py``) and pytorch-fid use,
the frozen GraphDef ``classify_image_graph_def.pb`` from
``inception-2015-12-05.tgz``.  Pictures are fed as float32 RGB in [0, 255],
any size, to its ``ExpandDims:0`` tensor; the graph resizes them to 299x299
(bilinear) and normalises them itself.  The file is given by the user; nothing
is downloaded.

Distance: ``|mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr(sqrtm(S1 S2))`` with the
features' mean and covariance (``np.cov``, rows = pictures); as TTUR, when the
square root of the product is not finite, 1e-6 is added to both diagonals,
and a complex result is accepted only when the imaginary part of its
diagonal is negligible (|.| <= 1e-3), its real part then used.
"""

import hashlib
import json
import os
import warnings

import numpy as np
import scipy.linalg
import tensorflow as tf

from misc.data.atomic import WriteError, atomic_open, remove_stale_temporaries
from misc.data.input_files import InputFileError, open_regular
from misc.data.safe_arrays import ArrayFileError, load_npz
from misc.evaluation.inception import InceptionError

INPUT_TENSOR = "ExpandDims:0"
FEATURE_TENSOR = "pool_3:0"
SINGULAR_OFFSET = 1e-6
STATS_VERSION = 1
MAX_GRAPH_BYTES = 1 << 28  # --fid-weights: the 2015 graph has 95 MB
MAX_KEY_BYTES = 1 << 16  # the cache's key: a short JSON text


class FidGraph:
    """The FID Inception graph, callable on batches of pictures."""

    def __init__(self, path):
        self.path = path
        try:
            with open_regular(path) as f:
                data = f.read(MAX_GRAPH_BYTES + 1)
        except (OSError, InputFileError) as exc:
            why = ("FID Inception graph not found (--fid-weights)" if isinstance(exc, FileNotFoundError) else
                   f"cannot read the FID Inception graph ({exc.strerror or exc}; --fid-weights)"
                   if isinstance(exc, OSError) else str(exc).removeprefix(f"{path}: ").rstrip(".") +
                   " (--fid-weights)")
            raise InceptionError(f"{path}: {why}. It is classify_image_graph_def.pb of "
                                 "inception-2015-12-05.tgz (README, 'Evaluating a model').") from None
        if len(data) > MAX_GRAPH_BYTES:
            raise InceptionError(f"{path}: larger than {MAX_GRAPH_BYTES:,} bytes, so not the FID Inception "
                                 "graph (--fid-weights; classify_image_graph_def.pb has 95 MB).")
        self.sha256 = hashlib.sha256(data).hexdigest()
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(data)
        except Exception:
            graph_def = None
        names = {node.name for node in graph_def.node} if graph_def is not None else set()
        wanted = {t.split(":")[0] for t in (INPUT_TENSOR, FEATURE_TENSOR)}
        if not wanted <= names:
            raise InceptionError(
                f"{path}: not the FID Inception graph (a TensorFlow GraphDef with the tensors "
                f"{INPUT_TENSOR} and {FEATURE_TENSOR}). Use classify_image_graph_def.pb of "
                "inception-2015-12-05.tgz.")

        def features(images):
            pool, = tf.graph_util.import_graph_def(
                graph_def, input_map={INPUT_TENSOR: images}, return_elements=[FEATURE_TENSOR],
                name="fid")
            return tf.reshape(pool, [-1, pool.shape[-1]])

        try:
            wrapped = tf.compat.v1.wrap_function(
                features, [tf.TensorSpec([None, None, None, 3], tf.float32)])
        except (ValueError, TypeError, tf.errors.OpError) as exc:
            detail = " ".join(str(exc).split())[:300]
            raise InceptionError(f"{path}: cannot use this graph for FID ({detail}).") from None
        self._features = wrapped
        self.dimension = wrapped.structured_outputs.shape[-1]  # 2048 for the 2015 graph
        if self.dimension is None:
            raise InceptionError(f"{path}: {FEATURE_TENSOR} has no fixed feature width; use "
                                 "classify_image_graph_def.pb of inception-2015-12-05.tgz.")

    def features(self, images):
        """(B, dimension) pool_3 features of a batch of same-size pictures
        (uint8 or float in [0, 255], B x H x W x 3)."""
        batch = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
        return self._features(batch).numpy()


def statistics(features):
    """(mean, covariance) of (N, dimension) features, as TTUR / pytorch-fid."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=SINGULAR_OFFSET):
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("the two sets of statistics have different dimensions")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # a singular product is handled below, as TTUR (disp=False)
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in the square "
                             "root of the covariance product")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# -- cached statistics of the real pictures ----------------------------------------

def images_digest(images):
    """Content hash of a uint8 picture array (the cache key of its statistics)."""
    images = np.ascontiguousarray(images)
    digest = hashlib.sha256(repr((images.shape, str(images.dtype))).encode())
    digest.update(memoryview(images).cast("B"))
    return digest.hexdigest()


def _cache_problem(path, key, dimension):
    """(mu, sigma) from the cache at ``path`` when it holds sound statistics
    for ``key``; otherwise None and why it is not used (None: there is no
    cache, or it was written for other pictures or another graph)."""
    try:
        data = load_npz(path, max_bytes=(dimension + 1) * dimension * 8 + MAX_KEY_BYTES)
        cached_key = json.loads(str(data["key"]))
        mu, sigma = data["mu"], data["sigma"]
    except FileNotFoundError:
        return None, None
    except (ArrayFileError, KeyError, ValueError) as exc:
        return None, f"unreadable ({exc})"
    if cached_key != key:
        return None, None
    if mu.shape != (dimension,) or sigma.shape != (dimension, dimension):
        return None, f"it holds statistics of shapes {list(mu.shape)} and {list(sigma.shape)}, not " \
                     f"[{dimension}] and [{dimension}, {dimension}]"
    if mu.dtype.kind != "f" or sigma.dtype.kind != "f" or not (np.isfinite(mu).all() and
                                                              np.isfinite(sigma).all()):
        return None, "it holds statistics that are not finite numbers"
    return (mu, sigma), None


def cached_statistics(path, images, graph, batch_size, progress=None, log=print):
    """(mu, sigma, from_cache) of the real pictures, from ``path`` when it was
    written for the same pictures (content hash) and the same FID graph (file
    hash); otherwise computed and written there atomically.  A damaged or
    inconsistent cache is recomputed with a warning; a cache that cannot be
    written (a read-only dataset folder) or that is not a regular file is
    skipped with a warning; temporaries a killed write left are removed."""
    key = {"version": STATS_VERSION, "images": images_digest(images), "count": len(images),
           "size": list(images.shape[1:3]), "graph_sha256": graph.sha256}
    remove_stale_temporaries(os.path.realpath(path))
    usable = not os.path.lexists(path) or os.path.isfile(path)
    if usable:
        found, problem = _cache_problem(path, key, graph.dimension)
        if found is not None:
            return found + (True,)
        if problem:
            log(f"warning: FID statistics cache {path}: {problem}; recomputing them.")
    else:
        log(f"warning: FID statistics cache {path}: not a regular file; not read or written.")
    features = np.empty((len(images), graph.dimension), np.float32)
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        features[start:start + len(batch)] = graph.features(batch)
        if progress is not None:
            progress(len(batch))
    mu, sigma = statistics(features)
    if usable:
        try:
            with atomic_open(path, "wb") as f:
                np.savez(f, mu=mu, sigma=sigma, key=np.array(json.dumps(key, sort_keys=True)))
        except WriteError as exc:
            log(f"warning: FID statistics not cached: {exc}")
    return mu, sigma, False

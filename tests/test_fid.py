"""misc/evaluation/fid.py: Fréchet distance, the FID graph's feature path, cached
statistics (a damaged, odd, read-only or half-written cache never stops
the evaluation: issue 24)."""

import errno
import os
import stat
import sys

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from fault_points import kill, start_until_ready
from misc.data import atomic
from misc.evaluation import fid
from misc.evaluation.fid import FidGraph, cached_statistics, frechet_distance, statistics
from misc.evaluation.inception import InceptionError


def random_rotation(n, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return q


def test_frechet_distance_of_commuting_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    n = 6
    mu1, mu2 = rng.normal(size=n), rng.normal(size=n)
    d1, d2 = rng.uniform(0.1, 3, n), rng.uniform(0.1, 3, n)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum(d1 + d2 - 2 * np.sqrt(d1 * d2))
    assert frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(closed, rel=1e-10)
    q = random_rotation(n, 1)  # same eigenvectors: the covariances commute
    s1, s2 = q @ np.diag(d1) @ q.T, q @ np.diag(d2) @ q.T
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed, rel=1e-8)


def test_identical_statistics_are_at_distance_zero():
    features = np.random.default_rng(2).normal(size=(400, 16)) @ random_rotation(16, 3)
    mu, sigma = statistics(features)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_a_non_finite_square_root_is_retried_with_the_offset(monkeypatch):
    real_sqrtm, calls = scipy.linalg.sqrtm, []

    def first_call_fails(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(fid.scipy.linalg, "sqrtm", first_call_fails)
    s1, s2 = np.diag([1.0, 0.0]), np.diag([0.0, 4.0])
    value = frechet_distance(np.zeros(2), s1, np.zeros(2), s2)
    eps = fid.SINGULAR_OFFSET
    np.testing.assert_allclose(calls[1], (s1 + eps * np.eye(2)) @ (s2 + eps * np.eye(2)))
    assert value == pytest.approx(5.0 - 2 * (np.sqrt((1 + eps) * eps) + np.sqrt(eps * (4 + eps))))


def test_an_imaginary_square_root_is_refused():
    with pytest.raises(ValueError, match="imaginary component"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))


# -- the graph ----------------------------------------------------------------------

RESIZED = 17  # the real graph resizes to 299 and has 2048 features; small here
FEATURES = 64


def write_fid_graph(path, seed=0):
    """A small GraphDef with the real graph's tensor names and head:
    DecodeJpeg -> Cast -> ExpandDims -> ResizeBilinear -> (x - 128) / 128 ->
    ... -> pool_3 (N, 1, 1, F) -> pool_3/_reshape [1, F] (batch of one)."""
    kernel = np.random.default_rng(seed).normal(0, 0.2, (3, 3, 3, FEATURES)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        contents = tf.compat.v1.placeholder(tf.string, name="DecodeJpeg/contents")
        decoded = tf.io.decode_jpeg(contents, channels=3, name="DecodeJpeg")
        cast = tf.cast(decoded, tf.float32, name="Cast")
        expanded = tf.expand_dims(cast, 0, name="ExpandDims")
        resized = tf.compat.v1.image.resize_bilinear(expanded, [RESIZED, RESIZED], name="ResizeBilinear")
        scaled = tf.multiply(tf.subtract(resized, 128.0, name="Sub"), 1.0 / 128, name="Mul")
        conv = tf.nn.relu(tf.nn.conv2d(scaled, tf.constant(kernel), 2, "VALID"), name="mixed_10/join")
        pool = tf.nn.avg_pool2d(conv, 8, 1, "VALID", name="pool_3")
        tf.reshape(pool, [1, FEATURES], name="pool_3/_reshape")
    with open(path, "wb") as f:
        f.write(graph.as_graph_def().SerializeToString())
    return path, graph


def one_at_a_time(graph, pictures):
    """pool_3 of each picture fed alone to ExpandDims:0 of the original graph."""
    with tf.compat.v1.Session(graph=graph) as sess:
        return np.concatenate([sess.run("pool_3:0", {"ExpandDims:0": p[None].astype(np.float32)})
                               .reshape(1, -1) for p in pictures])


def test_features_come_from_pool_3_of_the_given_graph(tmp_path):
    path, graph = write_fid_graph(str(tmp_path / "classify_image_graph_def.pb"))
    pictures = np.random.default_rng(4).integers(0, 256, (5, 40, 30, 3)).astype(np.uint8)
    graph_file = FidGraph(path)
    features = graph_file.features(pictures)
    assert graph_file.dimension == FEATURES and features.shape == (5, FEATURES)
    np.testing.assert_allclose(features, one_at_a_time(graph, pictures), rtol=1e-5, atol=1e-6)
    assert features.std(axis=0).mean() > 0.01  # the pictures give different features


def test_wrong_fid_files_are_refused(tmp_path):
    with pytest.raises(InceptionError, match="not found"):
        FidGraph(str(tmp_path / "missing.pb"))
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(os.urandom(300))
    with pytest.raises(InceptionError, match="not the FID Inception graph"):
        FidGraph(str(garbage))
    other = tf.Graph()
    with other.as_default():
        tf.constant(1.0, name="something")
    (tmp_path / "other.pb").write_bytes(other.as_graph_def().SerializeToString())
    with pytest.raises(InceptionError, match="ExpandDims:0 and pool_3:0"):
        FidGraph(str(tmp_path / "other.pb"))


class CountingGraph:
    def __init__(self, graph):
        self.graph, self.sha256, self.dimension, self.pictures = graph, graph.sha256, graph.dimension, 0

    def features(self, images):
        self.pictures += len(images)
        return self.graph.features(images)


def test_real_statistics_are_cached_by_content(tmp_path):
    path, _ = write_fid_graph(str(tmp_path / "graph.pb"))
    graph = CountingGraph(FidGraph(path))
    images = np.random.default_rng(5).integers(0, 256, (7, 24, 24, 3)).astype(np.uint8)
    cache = str(tmp_path / "data" / "test" / "fid_statistics_24.npz")
    mu, sigma, cached = cached_statistics(cache, images, graph, batch_size=3)
    assert not cached and graph.pictures == 7
    assert os.listdir(os.path.dirname(cache)) == [os.path.basename(cache)]  # no temporary file left
    expected = statistics(graph.graph.features(images))
    np.testing.assert_allclose(mu, expected[0], rtol=1e-6)
    np.testing.assert_allclose(sigma, expected[1], rtol=1e-5, atol=1e-9)
    graph.pictures = 0
    mu2, sigma2, cached = cached_statistics(cache, images, graph, batch_size=3)
    assert cached and graph.pictures == 0
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    assert not cached_statistics(cache, changed, graph, batch_size=3)[2] and graph.pictures == 7
    other_graph = CountingGraph(FidGraph(write_fid_graph(str(tmp_path / "other.pb"), seed=1)[0]))
    assert not cached_statistics(cache, changed, other_graph, batch_size=3)[2]


# -- a damaged, odd or unwritable cache (issue 24) -------------------------------------

@pytest.fixture
def cache_case(tmp_path):
    """A small graph, 5 pictures, a valid cache of their statistics and the
    fresh statistics to compare with."""
    path, _ = write_fid_graph(str(tmp_path / "graph.pb"))
    graph = CountingGraph(FidGraph(path))
    images = np.random.default_rng(6).integers(0, 256, (5, 24, 24, 3)).astype(np.uint8)
    cache = tmp_path / "data" / "test" / "fid_statistics_24.npz"
    expected = cached_statistics(str(cache), images, graph, batch_size=2)[:2]
    graph.pictures = 0
    return graph, images, cache, expected


def key_of(cache):
    with np.load(cache) as data:
        return data["key"]


def assert_recomputed(cache_case, warning):
    graph, images, cache, expected = cache_case
    lines = []
    mu, sigma, cached = cached_statistics(str(cache), images, graph, batch_size=2, log=lines.append)
    assert not cached and graph.pictures == len(images)
    np.testing.assert_array_equal(mu, expected[0])
    np.testing.assert_array_equal(sigma, expected[1])
    if warning is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith(f"warning: FID statistics cache {cache}") \
            and warning in lines[0], lines
    graph.pictures = 0
    return lines


@pytest.mark.parametrize("damage, warning", [
    ("truncated", "unreadable"),
    ("bit flip", "Bad CRC-32"),
    ("not a zip", "unreadable"),
    ("3-d statistics", "of shapes [64] and [64, 64, 1]"),
    ("NaN sigma", "not finite numbers"),
    ("wrong width", "of shapes [3] and [3, 3]"),
    ("huge member", "more than the"),
])
def test_a_damaged_cache_is_recomputed_with_a_warning_and_rewritten(cache_case, damage, warning):
    graph, images, cache, expected = cache_case
    data = cache.read_bytes()
    key = key_of(cache)
    if damage == "truncated":
        cache.write_bytes(data[:len(data) // 2])
    elif damage == "bit flip":  # in the middle of sigma's stored data: the member's CRC fails
        middle = len(data) // 2
        cache.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:])
    elif damage == "not a zip":
        cache.write_bytes(b"\x00" * 100)
    elif damage == "3-d statistics":
        np.savez(cache, mu=expected[0], sigma=expected[1][..., None], key=key)
    elif damage == "NaN sigma":
        np.savez(cache, mu=expected[0], sigma=np.full_like(expected[1], np.nan), key=key)
    elif damage == "wrong width":
        np.savez(cache, mu=np.zeros(3), sigma=np.eye(3), key=key)
    else:  # 32 MB of zeros in 30 kilobytes: refused from its header, never inflated
        np.savez_compressed(cache, mu=expected[0], sigma=np.zeros((2000, 2000)), key=key)
    assert_recomputed(cache_case, warning)
    assert cached_statistics(str(cache), images, graph, batch_size=2)[2]  # rewritten: read back
    assert graph.pictures == 0


def test_a_cache_that_is_not_a_file_is_neither_read_nor_written(cache_case):
    graph, images, cache, expected = cache_case
    cache.unlink()
    cache.mkdir()
    assert_recomputed(cache_case, "not a regular file")
    assert cache.is_dir() and os.listdir(cache) == []
    cache.rmdir()
    os.mkfifo(cache)  # reading it would wait for a writer for ever
    assert_recomputed(cache_case, "not a regular file")
    assert stat.S_ISFIFO(os.lstat(cache).st_mode)


def test_a_symlinked_cache_is_read_and_written_through(cache_case, tmp_path):
    graph, images, cache, expected = cache_case
    elsewhere = tmp_path / "shared" / "statistics.npz"
    elsewhere.parent.mkdir()
    cache.rename(elsewhere)
    cache.symlink_to(elsewhere)
    assert cached_statistics(str(cache), images, graph, batch_size=2)[2]
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1  # other pictures: recomputed and written through the link
    assert not cached_statistics(str(cache), changed, graph, batch_size=2)[2]
    assert cache.is_symlink() and os.readlink(cache) == str(elsewhere)
    assert cached_statistics(str(elsewhere), changed, graph, batch_size=2)[2]


def test_a_read_only_dataset_folder_still_gives_the_statistics(cache_case, monkeypatch):
    graph, images, cache, expected = cache_case
    cache.unlink()
    folder = cache.parent
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root writes anyway: make creating a file there fail as it would
            real_mkstemp = atomic.tempfile.mkstemp

            def refused(*args, dir=None, **kwargs):
                if os.path.samefile(dir, folder):
                    raise PermissionError(errno.EACCES, "Permission denied")
                return real_mkstemp(*args, dir=dir, **kwargs)

            monkeypatch.setattr(atomic.tempfile, "mkstemp", refused)
        lines = []
        mu, sigma, cached = cached_statistics(str(cache), images, graph, batch_size=2, log=lines.append)
    finally:
        folder.chmod(0o755)
    np.testing.assert_array_equal(mu, expected[0])
    assert not cached and len(lines) == 1 and lines[0].startswith("warning: FID statistics not cached: ")
    assert "Permission denied" in lines[0] and os.listdir(folder) == []


KILLED_IN_CACHE_WRITE = """
import sys, time
import numpy as np
from misc.evaluation import fid

def write_half_then_hang(f, **arrays):
    f.write(b"PK half a cache")
    f.flush()
    open(sys.argv[3], "w").close()
    time.sleep(600)

fid.np.savez = write_half_then_hang
images = np.load(sys.argv[2])
fid.cached_statistics(sys.argv[4], images, fid.FidGraph(sys.argv[1]), batch_size=2)
"""


def test_a_kill_while_the_cache_is_written_leaves_nothing_the_next_run_keeps(tmp_path):
    graph_path, _ = write_fid_graph(str(tmp_path / "graph.pb"))
    images = np.random.default_rng(7).integers(0, 256, (4, 24, 24, 3)).astype(np.uint8)
    np.save(tmp_path / "images.npy", images)
    cache = tmp_path / "test" / "fid_statistics_24.npz"
    ready = tmp_path / "ready"
    kill(start_until_ready([sys.executable, "-c", KILLED_IN_CACHE_WRITE, graph_path,
                            str(tmp_path / "images.npy"), str(ready), str(cache)], ready))
    (leftover,) = os.listdir(cache.parent)
    assert leftover.startswith(".tmp-") and leftover.endswith("-fid_statistics_24.npz")
    graph = CountingGraph(FidGraph(graph_path))
    mu, sigma, cached = cached_statistics(str(cache), images, graph, batch_size=2)
    assert not cached and os.listdir(cache.parent) == ["fid_statistics_24.npz"]
    assert cached_statistics(str(cache), images, graph, batch_size=2)[2]

"""The image side of DS-SJE text-encoder training (``misc/training/sje_trainer.py``).

Reed et al. trained their text encoders against fixed GoogLeNet features of
ten views of every image (the centre and the four corners, each also
mirrored), with the image encoder a no-op (``-image_noop 1``), or a Linear
layer on those features.  Here the image side is one of:

* **a Keras image network the user names** (``IMAGE.NETWORK``: a
  ``keras.applications`` model such as ``InceptionV3`` or ``ResNet50``) with
  weights from a file the user supplies (``IMAGE.WEIGHTS``; nothing is
  downloaded): the global-average-pooled features of the ``NUM_VIEWS`` views
  of every image, computed once (``FeatureExtractor``) and cached beside the
  images.  The text encoder learns to map captions into that fixed space, as
  theirs did (the image encoder is a no-op; the text embeddings have the
  features' size).  Either the ``..._notop`` weight files of
  keras.applications or the full ones are read; ``IMAGE.SIZE`` is the
  pictures' size (a fully convolutional network takes any size).
* **a small network trained from scratch with the text encoder**
  (``ScratchImageEncoder``, ``IMAGE.NETWORK: scratch``), for data no
  pretrained network knows, such as the bundled shapes: strided convolutions
  on 64-pixel views of the 76-pixel images, global average pooling and a
  Linear layer (their ``ImageEncoder`` without the no-op) to the embedding
  size.

Views (``view_window``): view 0 is the centre crop (the one the zero-shot
figures use, as the evaluation scripts take the first view), 1-4 the
corners, 5-9 the same mirrored.
"""

import hashlib
import os

import keras
import numpy as np
import tensorflow as tf

from misc.config import SCRATCH, ConfigError
from misc.data.atomic import atomic_open

FEATURE_BATCH = 32


# -- views ------------------------------------------------------------------------

def view_window(size, crop, view):
    """(row, column, mirrored) of view ``view`` (0 to NUM_VIEWS - 1) of a
    ``size`` picture cropped to ``crop``."""
    far = size - crop
    corners = ((far // 2, far // 2), (0, 0), (0, far), (far, 0), (far, far))
    row, column = corners[view % len(corners)]
    return row, column, view >= len(corners)


def crop_views(images, ids, views, crop):
    """uint8 (len(ids), crop, crop, 3): view ``views[k]`` of image ``ids[k]``."""
    out = np.empty((len(ids), crop, crop, 3), np.uint8)
    for k, (index, view) in enumerate(zip(ids, views)):
        row, column, mirrored = view_window(images.shape[1], crop, int(view))
        window = images[index, row:row + crop, column:column + crop]
        out[k] = window[:, ::-1] if mirrored else window
    return out


# -- the small network trained from scratch -------------------------------------------

@keras.saving.register_keras_serializable(package="stackgan")
class ScratchImageEncoder(keras.Model):
    """Strided 4x4 convolutions (``channels``, each halving the size, ReLU),
    global average pooling and a Linear layer to ``embedding_dim``; takes
    [-1, 1] pictures (the trainer normalises its uint8 views)."""

    def __init__(self, channels=(32, 64, 128, 256), embedding_dim=1024, image_size=64, **kwargs):
        super().__init__(**kwargs)
        self.channels = tuple(int(c) for c in channels)
        self.embedding_dim = int(embedding_dim)
        self.image_size = int(image_size)
        self.convolutions = [keras.layers.Conv2D(c, 4, strides=2, padding="same", activation="relu",
                                                 name=f"conv{i + 1}") for i, c in enumerate(self.channels)]
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.projection = keras.layers.Dense(self.embedding_dim, name="projection")
        self.build((None, self.image_size, self.image_size, 3))

    def build(self, input_shape):
        shape = tuple(input_shape)
        for convolution in self.convolutions:
            convolution.build(shape)
            shape = convolution.compute_output_shape(shape)
        self.projection.build((None, self.channels[-1]))
        super().build(input_shape)

    def call(self, images, training=False):
        x = images
        for convolution in self.convolutions:
            x = convolution(x)
        return self.projection(self.pool(x))

    def projection_weights(self):
        """The Linear layer's variables (the Lua ImageEncoder's)."""
        return self.projection.weights

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "embedding_dim": self.embedding_dim,
                "image_size": self.image_size}


# -- a named keras.applications network ------------------------------------------------

def application(name):
    """(constructor, preprocess_input) of ``keras.applications.<name>``."""
    constructor = getattr(keras.applications, name, None)
    if not name or not name[0].isupper() or not callable(constructor):
        known = ", ".join(n for n in dir(keras.applications) if n[:1].isupper())
        raise ConfigError(f"IMAGE.NETWORK is {name!r}; use '{SCRATCH}' or a keras.applications model: "
                          f"{known}.")
    for module_name in dir(keras.applications):
        module = getattr(keras.applications, module_name)
        if getattr(module, name, None) is constructor and hasattr(module, "preprocess_input"):
            return constructor, module.preprocess_input
    raise ConfigError(f"IMAGE.NETWORK {name}: keras.applications has no preprocess_input for it; "
                      "choose another network.")


def feature_network(name, weights, size):
    """keras.applications ``name`` for (size, size, 3) pictures with the
    weights file ``weights``, as a model from pictures to its pooled
    features: built without its classifier, or, for a weights file that
    holds the classifier too (which keras.applications' legacy HDF5 files
    cannot load without), with it and cut at its last global pooling."""
    constructor, _ = application(name)
    if not os.path.isfile(weights):
        raise ConfigError(f"IMAGE.WEIGHTS {weights!r}: file not found; give the weights file of "
                          f"keras.applications.{name} (nothing is downloaded).")
    shape = (size, size, 3)
    try:
        return constructor(include_top=False, weights=weights, input_shape=shape, pooling="avg")
    except (ValueError, OSError, KeyError) as without_top:
        first = " ".join(str(without_top).split())[:200]
    try:
        full = constructor(include_top=True, weights=weights, input_shape=shape)
    except (ValueError, OSError, KeyError):
        raise ConfigError(f"IMAGE.WEIGHTS {weights}: not the weights of keras.applications.{name} for "
                          f"IMAGE.SIZE {size} ({first}).") from None
    pools = [layer for layer in full.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    if not pools:
        raise ConfigError(f"IMAGE.WEIGHTS {weights}: the full keras.applications.{name} has no global "
                          "average pooling to take features from; give its '_notop' weights.")
    return keras.Model(full.inputs, pools[-1].output)


def file_digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compute_features(network, preprocess, images, crop, size, num_views):
    """float32 (N, num_views, D): the network's features of every view."""
    count = len(images) * num_views
    bar = keras.utils.Progbar(count, unit_name="view") if count >= FEATURE_BATCH * 4 else None
    forward = tf.function(lambda x: network(preprocess(tf.image.resize(x, (size, size))), training=False))
    out = None
    pairs = [(i, v) for i in range(len(images)) for v in range(num_views)]
    for start in range(0, count, FEATURE_BATCH):
        ids, views = zip(*pairs[start:start + FEATURE_BATCH])
        batch = forward(tf.constant(crop_views(images, ids, views, crop), tf.float32)).numpy()
        if out is None:
            out = np.zeros((count, batch.shape[-1]), np.float32)
        out[start:start + len(batch)] = batch
        if bar is not None:
            bar.add(len(batch))
    return out.reshape(len(images), num_views, -1)


class FeatureExtractor:
    """keras.applications ``name`` with the weights file ``weights``
    (``feature_network``), built once for every split it describes."""

    def __init__(self, name, weights, size):
        self.name, self.weights, self.input_size = name, weights, size
        self.network = feature_network(name, weights, size)
        _, self.preprocess = application(name)
        self.weights_digest = file_digest(weights)

    def features(self, images, images_path, crop, num_views, cache_dir, log=print):
        """The features of ``images`` (read from ``images_path``), cached in
        ``cache_dir`` as ``image-features-<name>.npz`` keyed by the network, its
        weights file's and the images file's content, the size and the views;
        recomputed when any of them changed.  A folder that cannot be written
        is only not cached into."""
        key = (f"{self.name} size={self.input_size} crop={crop} views={num_views} "
               f"weights={self.weights_digest} images={file_digest(images_path)}")
        cache = os.path.join(cache_dir, f"image-features-{self.name}.npz")
        if os.path.isfile(cache):
            try:
                with np.load(cache, allow_pickle=False) as data:
                    if str(data["key"]) == key:
                        log(f"Image features of {images_path} read from {cache}")
                        return data["features"]
            except (ValueError, OSError, KeyError):
                pass  # damaged or foreign: computed again
        log(f"Computing {self.name} features of {len(images)} images x {num_views} views "
            f"({self.input_size} px)")
        features = compute_features(self.network, self.preprocess, images, crop, self.input_size, num_views)
        if os.access(cache_dir, os.W_OK):
            with atomic_open(cache, "wb") as f:
                np.savez(f, key=np.array(key), features=features)
        return features

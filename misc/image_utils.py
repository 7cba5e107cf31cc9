"""Image conversions between the dataset's uint8, the model's [-1, 1] float
range and files on disk."""

import os

import numpy as np
import tensorflow as tf
from PIL import Image

from misc.atomic import atomic_open


def normalize_images(images):
    """uint8 [0, 255] -> float32 [-1, 1] exactly as the reference loader
    (``x * (2 / 255) - 1`` in float32); float input is returned unchanged."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) * (2.0 / 255) - 1.0
    return images


def to_uint8(images):
    """[-1, 1] floats (numpy or tensor) -> uint8 numpy array."""
    images = np.asarray(images, dtype=np.float32)
    return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def save_image(array, path, quality=95):
    """Write a uint8 HxWx3 array (or a PIL image) atomically; the format
    follows the extension."""
    image = array if isinstance(array, Image.Image) else Image.fromarray(np.asarray(array))
    extension = os.path.splitext(path)[1].lower()
    options = {"quality": quality} if extension in (".jpg", ".jpeg") else {}
    with atomic_open(path, "wb") as f:
        image.save(f, format=Image.registered_extensions().get(extension, "PNG"), **options)


def resize(array, size, resample=Image.BICUBIC):
    """Resize a uint8 HxWx3 array to size x size with Pillow."""
    return np.asarray(Image.fromarray(np.asarray(array)).resize((size, size), resample))


def superimage(rows):
    """Stack rows of equally sized uint8 images: each row side by side,
    rows top to bottom."""
    return np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)

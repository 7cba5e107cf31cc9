"""Image conversions between the model's [-1, 1] floats, uint8 pictures and
files on disk, and sheets of them."""

import os

import numpy as np
from PIL import Image

from misc.data.atomic import atomic_open


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

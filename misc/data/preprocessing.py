"""Image preprocessing shared by the real datasets and the synthetic one.

Every image in a dataset pickle goes through the same path:

1. load it as RGB (``load_rgb``), or colourise an array (``to_rgb``);
2. optionally crop it around its bounding box (``custom_crop``, birds only);
3. byte-scale it to the full 0..255 range (``bytescale``) and resize it
   bicubically to ``HR_LOAD_SIZE`` (``prepare_image``);
4. make the low-resolution copy from that uint8 result (``resize_bicubic``
   to ``LR_LOAD_SIZE``).

Step 3 reproduces the reference exactly: it read images as float and resized
them with ``scipy.misc.imresize``, which byte-scales a float image before
handing it to Pillow's bicubic resize.  Step 4 starts from uint8 pixels, so
no byte-scaling happens there (as in the reference).

The second half of the module is the conversion loop that the commands
``misc.commands.preprocess_birds`` / ``preprocess_flowers`` share.
"""

import os
import pickle

import numpy as np
from PIL import Image

from misc.config import DatasetError
from misc.data import safe_pickle
from misc.data.atomic import check_writable
from misc.data.datasets import file_names
from misc.data.formats import HR_LOAD_SIZE, LR_LOAD_SIZE, SPLITS
from misc.data.pictures import decoded_picture, open_picture

PROGRESS_EVERY = 100


class MissingDataError(DatasetError):
    """A file or folder the preprocessing needs is not where it should be.

    The message is a single line naming the expected path and what to put
    there; the command-line scripts print it and exit with status 2.
    """


# The fix for a photograph that cannot be read.
PHOTO_FIX = "Replace it with the original photograph (re-extract the dataset images)."


# --------------------------------------------------------------------------
# Per-image operations


def to_rgb(img):
    """Return ``img`` as an (H, W, 3) array: grey gets 3 channels, alpha is dropped."""
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"expected an image array (H, W[, C]), got shape {img.shape}")
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if img.shape[2] >= 3:
        return img[:, :, :3]
    raise ValueError(f"cannot make RGB from {img.shape[2]} channels")


def load_rgb(path, fix=PHOTO_FIX):
    """Read an image file as uint8 RGB (H, W, 3) with Pillow; a file that
    is not a readable picture, or is over Pillow's decompression-bomb limit,
    is a one-line ``PictureError`` ending in ``fix``."""
    with decoded_picture(path, fix) as im:
        # Pillow replicates grey into three channels and drops alpha without
        # compositing, which is what channel slicing did in the reference.
        return np.array(im.convert("RGB"))


def custom_crop(img, bbox):
    """Crop a square-ish region around a CUB bounding box.

    ``bbox`` is ``[x_left, y_top, width, height]``.  The crop is centred on the
    box and extends ``R = 0.75 * max(width, height)`` pixels each way, clipped
    to the image, so the whole bird plus some context is kept.
    """
    x, y, w, h = bbox
    height, width = img.shape[:2]
    centre_x = int((2 * x + w) / 2)
    centre_y = int((2 * y + h) / 2)
    radius = int(max(w, h) * 0.75)
    top, bottom = max(0, centre_y - radius), min(height, centre_y + radius)
    left, right = max(0, centre_x - radius), min(width, centre_x + radius)
    return img[top:bottom, left:right]


def bytescale(img):
    """Stretch an image to 0..255 and return uint8, as ``scipy.misc.imresize`` did.

    The reference loaded every image as float, and ``imresize`` converts a
    float image to bytes before resizing: per image and over all channels
    jointly, ``(x - min) * 255 / (max - min)`` (a flat image uses a range of
    1), clipped to [0, 255], plus 0.5, truncated to uint8.  This is the
    identity for images that already span 0..255 and stretches the contrast
    of the others, so the published pickles carry that stretch and ours must
    too.  The arithmetic is done in float64 in the same order as the
    reference, which makes the result bit-identical.
    """
    img = np.asarray(img)
    lo, hi = img.min(), img.max()
    if img.dtype == np.uint8 and lo == 0 and hi == 255:
        # Fast path: the scale is exactly 1 and the offset 0, so the formula
        # below would give back the same bytes.
        return img
    data = img.astype(np.float64)
    lo, hi = data.min(), data.max()
    span = hi - lo
    if span == 0:
        span = 1
    scaled = (data - lo) * (255.0 / span) + 0
    return (scaled.clip(0, 255) + 0.5).astype(np.uint8)


def resize_bicubic(img, size):
    """Resize a uint8 RGB image to ``size`` x ``size`` with Pillow's BICUBIC filter."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"resize_bicubic expects uint8 pixels, got {img.dtype}")
    if img.shape[:2] == (size, size):
        # Pillow would return an identical copy; skip the round trip.
        return img.copy()
    resized = Image.fromarray(img).resize((size, size), Image.BICUBIC)
    return np.array(resized)


def prepare_image(img, load_size=HR_LOAD_SIZE, bbox=None):
    """Reference per-image preprocessing: RGB, optional bbox crop, byte-scale, resize.

    Returns uint8 (load_size, load_size, 3).
    """
    img = to_rgb(img)
    if bbox is not None:
        img = custom_crop(img, bbox)
    return resize_bicubic(bytescale(img), load_size)


def make_low_resolution(hr_img, lr_size=LR_LOAD_SIZE):
    """The stage-I image: the prepared high-resolution image resized bicubically."""
    return resize_bicubic(hr_img, lr_size)


# --------------------------------------------------------------------------
# Dataset conversion shared by the preprocessing scripts


def require_path(path, what_to_do):
    """Raise ``MissingDataError`` unless ``path`` exists."""
    if not os.path.exists(path):
        raise MissingDataError(f"{path} not found: {what_to_do}")


def read_keys(split_dir):
    """The image keys ``<split_dir>/filenames.pickle`` lists, checked (a
    list of relative paths)."""
    path = os.path.join(split_dir, "filenames.pickle")
    try:
        return file_names(safe_pickle.load(path), path)
    except (pickle.UnpicklingError, OSError) as exc:
        raise DatasetError(str(exc)) from None


def output_paths(split_dir, load_size=HR_LOAD_SIZE, lr_size=LR_LOAD_SIZE):
    return [os.path.join(split_dir, f"{size}images.pickle") for size in (load_size, lr_size)]


def plan_split(split_dir, image_path_for_key, bbox_for_key=None):
    """[(image path, crop box or None)] of a split, every listed photograph
    checked to exist and to be a picture within Pillow's decompression-bomb
    limit (its header; a photograph whose data is damaged is found when it is
    converted), its box to exist, and the outputs checked writable: all
    before any photograph is converted."""
    filenames_path = os.path.join(split_dir, "filenames.pickle")
    plan = []
    for key in read_keys(split_dir):
        path = image_path_for_key(key)
        if not os.path.isfile(path):
            raise MissingDataError(
                f"{path} not found: it is listed in {filenames_path}; "
                "the image folder is incomplete, re-extract the dataset images"
            )
        open_picture(path, PHOTO_FIX).close()  # its header: a picture, within the bomb limit
        plan.append((path, bbox_for_key(key) if bbox_for_key is not None else None))
    for path in output_paths(split_dir):
        check_writable(path)
    return plan


def convert_split(split_dir, plan, load_size=HR_LOAD_SIZE, lr_size=LR_LOAD_SIZE, log=print):
    """Write ``<load_size>images.pickle`` and ``<lr_size>images.pickle`` for one split
    from its ``plan_split``.  Returns a summary dict."""
    split = os.path.basename(os.path.normpath(split_dir))
    hr_images, lr_images = [], []
    for count, (path, bbox) in enumerate(plan, start=1):
        image = load_rgb(path)
        try:
            hr = prepare_image(image, load_size, bbox)
        except ValueError as exc:  # e.g. a box outside the photograph: an empty crop
            raise DatasetError(f"{path}: cannot crop and resize it with the box {bbox} ({exc}); "
                               "check its bounding box.") from None
        hr_images.append(hr)
        lr_images.append(make_low_resolution(hr, lr_size))
        if count % PROGRESS_EVERY == 0:
            log(f"{split}: {count}/{len(plan)} images")

    outputs = {}
    for size, out_path, images in zip((load_size, lr_size), output_paths(split_dir, load_size, lr_size),
                                      (hr_images, lr_images)):
        safe_pickle.dump(images, out_path)
        outputs[out_path] = (len(images), size, size, 3)
    described = ", ".join(
        f"{os.path.basename(p)} {shape} uint8" for p, shape in outputs.items())
    log(f"{split}: {len(plan)} images -> {described}")
    return {"split": split, "count": len(plan), "outputs": outputs}


def convert_dataset(data_dir, image_path_for_key, bbox_for_key=None,
                    embeddings_hint="", splits=SPLITS, log=print):
    """Run ``convert_split`` on every split of ``data_dir``.

    All splits' ``filenames.pickle``, photographs, boxes and outputs are
    checked before any work starts; ``embeddings_hint`` says where the file
    lists come from.
    """
    for split in splits:
        require_path(os.path.join(data_dir, split, "filenames.pickle"), embeddings_hint)
    plans = [(os.path.join(data_dir, split), plan_split(os.path.join(data_dir, split), image_path_for_key,
                                                         bbox_for_key)) for split in splits]
    summaries = [convert_split(split_dir, plan, log=log) for split_dir, plan in plans]
    total = sum(s["count"] for s in summaries)
    log(f"done: {total} images in {len(summaries)} splits under {data_dir}")
    return summaries

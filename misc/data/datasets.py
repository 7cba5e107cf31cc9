"""StackGAN datasets in the reference format, and their batch sampling.

A dataset lives in ``<DATA_DIR>/<DATASET_NAME>/`` (the reference's
``Data/<name>/``)::

    train/ and test/
        76images.pickle | 304images.pickle     uint8 images, N x S x S x 3
        char-CNN-RNN-embeddings.pickle         N x captions x D  (or N x D)
        skip-thought-embeddings.pickle         (EMBEDDING_TYPE skip-thought)
        filenames.pickle                       N names
        class_info.pickle                      N class ids
    text_c10/<filename>.txt                    the captions, one per line

Pickles are read with a restricted unpickler (``misc.data.safe_pickle``).
Sampling follows the reference loader: per epoch a new permutation and
``N // batch`` batches; per batch a random crop (76 -> 64, 304 -> 256) and a
horizontal flip with p 0.5 for every image, "wrong" images drawn at random
and moved by one random offset when they share the real image's class, and
the text embedding = mean of ``NUM_EMBEDDING`` distinct random captions
(with one caption: that caption, and its text).

A batch is drawn in two parts: ``batch_draws`` takes every random choice of
the batch from the epoch's generator (which images, crops, flips, wrong
images, captions), ``batch_arrays`` builds the arrays from them.  An epoch's
batches are thus a function of (seed, epoch), and an interrupted epoch
resumes at any batch by repeating the draws of the batches before it without
building them (``epoch_batches(first_batch=...)``), and a worker of a
multi-worker run builds only its rows of each batch (``rows=...``).

Loading validates every file of a split (shapes, dtypes, finite values,
counts, file names that stay inside the dataset folder) and raises a
one-line ``DatasetError`` naming the file, the entry and the fix.
"""

import os
import re

import numpy as np

from misc.config import DatasetError
from misc.data import safe_pickle
from misc.data.formats import (
    EMBEDDING_FILES,
    HR_LR_RATIO,
    LOAD_SIZES,
    LR_IMAGE_SIZE,
    image_filename,
)
from misc.data.input_files import InputFileError, open_regular, short_repr


def caption_file(dataset_dir, filename, class_id):
    """The caption file of an image: ``text_c10/<filename>.txt``."""
    if "jpg/" in filename:  # flowers: captions are grouped by class folder
        filename = filename.replace("jpg/", f"class_{int(class_id):05d}/")
    return os.path.join(dataset_dir, "text_c10", filename + ".txt")


def _load(path, what, fix):
    if not os.path.exists(path):
        raise DatasetError(f"{path}: missing {what}. {fix}")
    try:
        return safe_pickle.load(path)
    except Exception as exc:
        raise DatasetError(str(exc)) from None


class Split:
    """One split (train or test) held in memory, with the reference sampling."""

    def __init__(self, images, embeddings, filenames, class_ids, dataset_dir,
                 crop_size, name="train"):
        self.images = images
        self.embeddings = embeddings
        self.filenames = list(filenames)
        self.class_ids = np.asarray(class_ids)
        self.dataset_dir = dataset_dir
        self.crop_size = crop_size
        self.name = name
        self._caption_cache = {}

    @property
    def num_examples(self):
        return len(self.images)

    @property
    def embedding_dim(self):
        return int(self.embeddings.shape[-1])

    @property
    def captions_per_image(self):
        return 1 if self.embeddings.ndim == 2 else int(self.embeddings.shape[1])

    def caption_path(self, index):
        return caption_file(self.dataset_dir, self.filenames[index], self.class_ids[index])

    def captions(self, index):
        """The captions of image ``index`` (non-empty lines of its text file)."""
        if index not in self._caption_cache:
            path = self.caption_path(index)
            if not os.path.exists(path):
                raise DatasetError(
                    f"{path}: caption file missing. Put the dataset's text_c10/ folder "
                    f"in {self.dataset_dir}/ (captions are needed for samples and previews).")
            try:
                with open_regular(path, "r", encoding="utf-8", errors="replace") as f:
                    self._caption_cache[index] = [c for c in f.read().split("\n") if c]
            except InputFileError as exc:  # a FIFO would block the read
                raise DatasetError(str(exc)) from None
        return self._caption_cache[index]

    def check_caption_files(self):
        """Every image of the split must have its caption file (previews and
        evaluation sheets read them); checked before training starts."""
        missing = [i for i in range(self.num_examples) if not os.path.isfile(self.caption_path(i))]
        if not missing:
            return
        folder = os.path.join(self.dataset_dir, "text_c10")
        if not os.path.isdir(folder):
            raise DatasetError(f"{folder}: caption folder missing (the {self.name} split's "
                               f"{self.num_examples} images need their caption files). Put the "
                               f"dataset's text_c10/ folder in {self.dataset_dir}/.")
        raise DatasetError(
            f"{self.caption_path(missing[0])}: caption file missing ({len(missing)} of the "
            f"{self.num_examples} {self.name} images have none). Restore the dataset's "
            "text_c10/ folder (captions are needed for previews and evaluation sheets).")

    # -- sampling ---------------------------------------------------------

    def wrong_indices(self, rng, ids):
        """Random images for the "wrong" pairs; those of the same class as
        the real image are moved by one random offset in [100, 200)."""
        n = self.num_examples
        wrong = rng.integers(n, size=len(ids))
        collision = self.class_ids[ids] == self.class_ids[wrong]
        wrong[collision] = (wrong[collision] + rng.integers(100, 200)) % n
        return wrong

    def crop_draws(self, rng, count):
        """(rows, cols, flips) of ``count`` random crops with random
        horizontal flips."""
        room = self.images.shape[1] - self.crop_size
        rows = np.floor(room * rng.random(count)).astype(int)
        cols = np.floor(room * rng.random(count)).astype(int)
        flips = rng.random(count) > 0.5
        return rows, cols, flips

    def crops(self, ids, draws):
        """crop_size crops (uint8) of images ``ids`` at ``crop_draws``."""
        s = self.crop_size
        out = np.empty((len(ids), s, s, 3), np.uint8)
        for i, (index, r, c, flip) in enumerate(zip(ids, *draws)):
            crop = self.images[index, r:r + s, c:c + s]
            out[i] = crop[:, ::-1] if flip else crop
        return out

    def center_crops(self, ids):
        s, size = self.crop_size, self.images.shape[1]
        o = (size - s) // 2
        return self.images[np.asarray(ids)][:, o:o + s, o:o + s]

    def first_caption_embeddings(self, ids):
        """The embedding of the first caption of each image ``ids``
        (evaluation), float32."""
        embeddings = self.embeddings[np.asarray(ids)]
        return (embeddings[:, 0] if embeddings.ndim == 3 else embeddings).astype(np.float32)

    def caption_draws(self, rng, count, num_embedding):
        """(count, k) distinct random caption indices per image, or None when
        the split has one embedding per image."""
        if self.embeddings.ndim == 2 or self.captions_per_image == 1:
            return None
        k = min(num_embedding, self.captions_per_image)
        return np.stack([rng.choice(self.captions_per_image, k, replace=False) for _ in range(count)])

    def embeddings_of(self, ids, chosen):
        """(B, D) embeddings: the mean of the ``chosen`` captions' embeddings
        (``caption_draws``), or the image's one embedding."""
        if chosen is None:
            return self.embeddings[ids].reshape(len(ids), -1)
        picked = self.embeddings[np.asarray(ids)[:, None], chosen]
        return picked[:, 0] if chosen.shape[1] == 1 else picked.mean(axis=1)

    def sample_embeddings(self, rng, ids, num_embedding):
        """(B, D) embeddings and, when one caption is drawn, its text."""
        chosen = self.caption_draws(rng, len(ids), num_embedding)
        embeddings = self.embeddings_of(ids, chosen)
        if chosen is None or chosen.shape[1] != 1:
            return embeddings, None
        captions = [self.captions(i)[j] if j < len(self.captions(i)) else ""
                    for i, j in zip(ids, chosen[:, 0])]
        return embeddings, captions

    def batch_draws(self, rng, ids, num_embedding):
        """Every random choice of a reference training batch of images
        ``ids``, drawn from ``rng`` in the reference loader's order."""
        captions = self.caption_draws(rng, len(ids), num_embedding)
        crops = self.crop_draws(rng, len(ids))
        wrong = self.wrong_indices(rng, ids)
        return {"ids": ids, "captions": captions, "crops": crops, "wrong": wrong,
                "wrong_crops": self.crop_draws(rng, len(ids))}

    def batch_arrays(self, draws):
        """The training batch (uint8 images) of ``batch_draws``."""
        return {
            "images": self.crops(draws["ids"], draws["crops"]),
            "wrong_images": self.crops(draws["wrong"], draws["wrong_crops"]),
            "embeddings": self.embeddings_of(draws["ids"], draws["captions"]).astype(np.float32),
        }

    def steps_per_epoch(self, batch_size):
        return self.num_examples // batch_size

    def epoch_batches(self, seed, epoch, batch_size, num_embedding, first_batch=0, rows=None):
        """The batches of one epoch from batch ``first_batch`` on; a function
        of (seed, epoch) only, so an interrupted epoch resumes identically:
        the batches before ``first_batch`` are drawn (the generator advances
        exactly as in an uninterrupted epoch) but not built.

        ``rows`` (a ``slice``): build only those rows of each batch, e.g. one
        worker's share of a global batch.  Every draw of the whole batch is
        still made, so the rows are exactly those of the whole batch."""
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(self.num_examples)
        for step in range(self.steps_per_epoch(batch_size)):
            ids = order[step * batch_size:(step + 1) * batch_size]
            draws = self.batch_draws(rng, ids, num_embedding)
            if step >= first_batch:
                yield self.batch_arrays(draws if rows is None else draw_rows(draws, rows))


def draw_rows(draws, rows):
    """The ``batch_draws`` of the images at ``rows`` (a slice) of the batch."""
    return {key: (None if value is None else
                  tuple(v[rows] for v in value) if isinstance(value, tuple) else value[rows])
            for key, value in draws.items()}


class TextDataset:
    """Loads the splits of one dataset (reference ``misc.datasets.TextDataset``)."""

    def __init__(self, workdir, embedding_type="cnn-rnn", hr_lr_ratio=1):
        if embedding_type not in EMBEDDING_FILES:
            raise DatasetError(
                f"EMBEDDING_TYPE '{embedding_type}' is unknown; use one of "
                f"{', '.join(EMBEDDING_FILES)}.")
        if hr_lr_ratio not in LOAD_SIZES:
            raise DatasetError(f"hr_lr_ratio must be 1 (Stage-I) or {HR_LR_RATIO} (Stage-II), "
                               f"got {hr_lr_ratio}.")
        self.workdir = workdir
        self.hr_lr_ratio = hr_lr_ratio
        self.embedding_filename = EMBEDDING_FILES[embedding_type]
        self.image_filename = image_filename(hr_lr_ratio)
        size = LR_IMAGE_SIZE * hr_lr_ratio
        self.image_shape = [size, size, 3]
        self.embedding_shape = None
        self.train = None
        self.test = None

    def embedding_path(self, split="train"):
        return os.path.join(self.workdir, split, self.embedding_filename)

    def get_data(self, split_dir, name=None):
        """Load and validate one split directory."""
        if not os.path.isdir(split_dir):
            raise DatasetError(
                f"{split_dir}: dataset split folder not found. Put the dataset under "
                f"{self.workdir}/ (see README, 'Data') or set DATASET_NAME / DATA_DIR.")
        image_path = os.path.join(split_dir, self.image_filename)
        emb_path = os.path.join(split_dir, self.embedding_filename)
        names_path = os.path.join(split_dir, "filenames.pickle")
        class_path = os.path.join(split_dir, "class_info.pickle")
        images = image_array(_load(
            image_path, "image pickle",
            "Create it from the raw images with python -m misc.commands.preprocess_birds or "
            "preprocess_flowers (see README, 'Data')."), image_path, LOAD_SIZES[self.hr_lr_ratio])
        embeddings = embedding_array(_load(
            emb_path, "text-embedding pickle",
            "Download the preprocessed embeddings into this folder (see README, 'Data'), "
            "or set EMBEDDING_TYPE to the embeddings you have."), emb_path)
        filenames = file_names(_load(names_path, "file-name list",
                                     "It comes with the preprocessed embeddings (see README, 'Data')."),
                               names_path)
        class_ids = class_id_array(_load(class_path, "class-id list",
                                         "It comes with the preprocessed embeddings (see README, 'Data')."),
                                   class_path)
        n = len(images)
        for what, count, path in (("embeddings", len(embeddings), emb_path),
                                  ("file names", len(filenames), names_path),
                                  ("class ids", len(class_ids), class_path)):
            if count != n:
                raise DatasetError(
                    f"{path}: has {count} {what} but {image_path} has {n} images; the files "
                    "of a split must describe the same images in the same order.")
        bad = np.flatnonzero(~np.isfinite(embeddings.reshape(n, -1)).all(axis=1))
        if len(bad):
            raise DatasetError(
                f"{emb_path}: the embeddings of {len(bad)} image(s) contain NaN or infinite values, "
                f"the first image {bad[0]} ({filenames[bad[0]]}). Regenerate the embeddings.")
        if self.embedding_shape is not None and self.embedding_shape != [embeddings.shape[-1]]:
            raise DatasetError(
                f"{emb_path}: embedding dimension {embeddings.shape[-1]} differs from the other "
                f"split's {self.embedding_shape[0]}; both splits must come from the same text encoder.")
        self.embedding_shape = [int(embeddings.shape[-1])]
        return Split(images, embeddings, filenames, class_ids, self.workdir, self.image_shape[0],
                     name or os.path.basename(os.path.normpath(split_dir)))


def image_array(images, path, size):
    """The N x size x size x 3 uint8 array of an image pickle (a list of
    images or one array); ``DatasetError`` naming the first bad image."""
    expected = f"uint8 images of {size} x {size} x 3 (N x {size} x {size} x 3)"
    fix = "Re-run the preprocessing (python -m misc.commands.preprocess_birds or preprocess_flowers)."
    if isinstance(images, (list, tuple)):
        for i, image in enumerate(images):
            shape = getattr(image, "shape", None)
            if not isinstance(image, np.ndarray) or shape != (size, size, 3) or image.dtype != np.uint8:
                got = (f"{image.dtype} {shape}" if isinstance(image, np.ndarray)
                       else type(image).__name__)
                raise DatasetError(f"{path}: image {i} is {got}; expected {expected}. {fix}")
        images = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    if not isinstance(images, np.ndarray):
        raise DatasetError(f"{path}: holds a {type(images).__name__}; expected {expected}. {fix}")
    if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
        raise DatasetError(f"{path}: expected {expected}, got {images.dtype} {images.shape}. {fix}")
    if not len(images):
        raise DatasetError(f"{path}: has no images; a split needs at least one. {fix}")
    return images


def embedding_array(embeddings, path):
    """The float32 N x captions x D (or N x D) array of an embedding pickle."""
    fix = "expected float embeddings of shape N x captions x D or N x D. Regenerate the embeddings."
    try:
        array = np.asarray(embeddings)
    except (ValueError, TypeError) as exc:  # ragged nesting
        detail = " ".join(str(exc).split())[:120]
        raise DatasetError(f"{path}: not an array of numbers ({detail}); {fix}") from None
    if array.dtype.kind not in "fiu":
        raise DatasetError(f"{path}: holds {array.dtype} values, not numbers; {fix}")
    array = array.astype(np.float32)
    if array.ndim not in (2, 3) or 0 in array.shape[1:]:
        raise DatasetError(f"{path}: has shape {array.shape}; {fix}")
    return array


_PATH_SEPARATORS = re.compile(r"[/\\]")


def path_problem(name):
    """Why ``name`` cannot be used as a relative path inside the dataset and
    output folders (None if it can)."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if not name:
        return "is empty"
    if "\0" in name:
        return "contains a NUL byte"
    if os.path.isabs(name) or name[0] in "/\\" or re.match(r"[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in _PATH_SEPARATORS.split(name):
        return "contains a '..' component"
    return None


def file_names(names, path):
    """The file names of a split as strings; each must be a relative path
    that stays inside the folders it is joined to (captions, evaluation
    sheets)."""
    if isinstance(names, np.ndarray):
        names = names.tolist()
    if not isinstance(names, (list, tuple)):
        raise DatasetError(f"{path}: holds a {type(names).__name__}; expected a list of file names.")
    for i, name in enumerate(names):
        problem = path_problem(name)
        if problem:
            raise DatasetError(
                f"{path}: entry {i} ({short_repr(name)}) {problem}; file names must be relative paths "
                "inside the dataset (they name caption files and evaluation sheets). Fix the list.")
    return list(names)


def class_id_array(class_ids, path):
    """The integer class ids of a split."""
    if isinstance(class_ids, np.ndarray):
        class_ids = class_ids.reshape(-1).tolist()
    if not isinstance(class_ids, (list, tuple)):
        raise DatasetError(f"{path}: holds a {type(class_ids).__name__}; expected a list of "
                           "integer class ids, one per image.")
    for i, value in enumerate(class_ids):
        if isinstance(value, bool) or not (isinstance(value, (int, np.integer)) or
                                           (isinstance(value, float) and value.is_integer())):
            raise DatasetError(f"{path}: entry {i} is {short_repr(value)}; expected integer class ids, "
                               "one per image.")
    return np.asarray(class_ids, dtype=np.int64)


def dataset_dir(config):
    return os.path.join(config.DATA_DIR, config.DATASET_NAME)


def load_dataset(config, hr_lr_ratio, splits=("train", "test"), captions=()):
    """Load and validate the configured dataset's splits (the commands
    generate the bundled dataset first where it is named and missing:
    ``misc.data.shapes.load_run_dataset``).  Every image of the
    ``captions`` splits must have its caption file."""
    workdir = dataset_dir(config)
    if not os.path.isdir(workdir):
        raise DatasetError(
            f"{workdir}: dataset folder not found. Download and preprocess the "
            f"'{config.DATASET_NAME}' data into it (README, 'Data'), or use "
            "DATASET_NAME: shapes, the bundled dataset, which is generated on first use.")
    dataset = TextDataset(workdir, config.EMBEDDING_TYPE, hr_lr_ratio)
    for split in splits:
        setattr(dataset, split, dataset.get_data(os.path.join(workdir, split), split))
    for split in captions:
        getattr(dataset, split).check_caption_files()
    return dataset

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

Pickles are read with a restricted unpickler (``misc.safe_pickle``).
Sampling follows the reference loader: per epoch a new permutation and
``N // batch`` batches; per batch a random crop (76 -> 64, 304 -> 256) and a
horizontal flip with p 0.5 for every image, "wrong" images drawn at random
and moved by one random offset when they share the real image's class, and
the text embedding = mean of ``NUM_EMBEDDING`` distinct random captions
(with one caption: that caption, and its text).
"""

import os

import numpy as np

from misc import safe_pickle

EMBEDDING_FILES = {
    "cnn-rnn": "char-CNN-RNN-embeddings.pickle",
    "skip-thought": "skip-thought-embeddings.pickle",
}
# Image sizes.  The networks see LR_IMAGE_SIZE (Stage-I) and HR_LR_RATIO
# times that (Stage-II) pixels; the datasets store larger images, which are
# randomly cropped to those sizes (76 -> 64, 304 -> 256).
LR_IMAGE_SIZE = 64
HR_LR_RATIO = 4
LR_LOAD_SIZE = 76
HR_LOAD_SIZE = HR_LR_RATIO * LR_LOAD_SIZE
LOAD_SIZES = {1: LR_LOAD_SIZE, HR_LR_RATIO: HR_LOAD_SIZE}  # stored image size per hr/lr ratio
# The reference datasets: ten captions per image, char-CNN-RNN embeddings of
# this size.
CAPTIONS_PER_IMAGE = 10
TEXT_EMBEDDING_DIM = 1024


class DatasetError(Exception):
    """Bad or missing dataset input; the message names the path and the fix."""


def image_filename(hr_lr_ratio):
    return f"{LOAD_SIZES[hr_lr_ratio]}images.pickle"


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
        name = self.filenames[index]
        if "jpg/" in name:  # flowers: captions are grouped by class folder
            name = name.replace("jpg/", f"class_{int(self.class_ids[index]):05d}/")
        return os.path.join(self.dataset_dir, "text_c10", name + ".txt")

    def captions(self, index):
        """The captions of image ``index`` (non-empty lines of its text file)."""
        if index not in self._caption_cache:
            path = self.caption_path(index)
            if not os.path.exists(path):
                raise DatasetError(
                    f"{path}: caption file missing. Put the dataset's text_c10/ folder "
                    f"in {self.dataset_dir}/ (captions are needed for samples and previews).")
            with open(path, encoding="utf-8", errors="replace") as f:
                self._caption_cache[index] = [c for c in f.read().split("\n") if c]
        return self._caption_cache[index]

    # -- sampling ---------------------------------------------------------

    def wrong_indices(self, rng, ids):
        """Random images for the "wrong" pairs; those of the same class as
        the real image are moved by one random offset in [100, 200)."""
        n = self.num_examples
        wrong = rng.integers(n, size=len(ids))
        collision = self.class_ids[ids] == self.class_ids[wrong]
        wrong[collision] = (wrong[collision] + rng.integers(100, 200)) % n
        return wrong

    def random_crops(self, rng, ids):
        """Random crop_size crops with random horizontal flips (uint8)."""
        s, size = self.crop_size, self.images.shape[1]
        out = np.empty((len(ids), s, s, 3), np.uint8)
        rows = np.floor((size - s) * rng.random(len(ids))).astype(int)
        cols = np.floor((size - s) * rng.random(len(ids))).astype(int)
        flips = rng.random(len(ids)) > 0.5
        for i, (index, r, c, flip) in enumerate(zip(ids, rows, cols, flips)):
            crop = self.images[index, r:r + s, c:c + s]
            out[i] = crop[:, ::-1] if flip else crop
        return out

    def center_crops(self, ids):
        s, size = self.crop_size, self.images.shape[1]
        o = (size - s) // 2
        return self.images[np.asarray(ids)][:, o:o + s, o:o + s]

    def sample_embeddings(self, rng, ids, num_embedding):
        """(B, D) embeddings and, when one caption is drawn, its text."""
        if self.embeddings.ndim == 2 or self.captions_per_image == 1:
            return self.embeddings[ids].reshape(len(ids), -1), None
        num_embedding = min(num_embedding, self.captions_per_image)
        chosen = np.stack([rng.choice(self.captions_per_image, num_embedding, replace=False)
                           for _ in ids])
        picked = self.embeddings[np.asarray(ids)[:, None], chosen]
        if num_embedding == 1:
            captions = [self.captions(i)[j] if j < len(self.captions(i)) else ""
                        for i, j in zip(ids, chosen[:, 0])]
            return picked[:, 0], captions
        return picked.mean(axis=1), None

    def training_batch(self, rng, ids, num_embedding):
        """A reference training batch (uint8 images)."""
        embeddings, _ = self.sample_embeddings(rng, ids, num_embedding)
        return {
            "images": self.random_crops(rng, ids),
            "wrong_images": self.random_crops(rng, self.wrong_indices(rng, ids)),
            "embeddings": embeddings.astype(np.float32),
        }

    def steps_per_epoch(self, batch_size):
        return self.num_examples // batch_size

    def epoch_batches(self, seed, epoch, batch_size, num_embedding):
        """The batches of one epoch; a function of (seed, epoch) only, so an
        interrupted epoch replays identically."""
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(self.num_examples)
        for step in range(self.steps_per_epoch(batch_size)):
            ids = order[step * batch_size:(step + 1) * batch_size]
            yield self.training_batch(rng, ids, num_embedding)


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
        images = _load(
            os.path.join(split_dir, self.image_filename), "image pickle",
            "Create it from the raw images with misc/preprocess_birds.py or "
            "misc/preprocess_flowers.py (see README, 'Data').")
        images = safe_pickle.as_array(images, os.path.join(split_dir, self.image_filename))
        embeddings = np.asarray(_load(
            os.path.join(split_dir, self.embedding_filename), "text-embedding pickle",
            "Download the preprocessed embeddings into this folder (see README, 'Data'), "
            "or set EMBEDDING_TYPE to the embeddings you have."), dtype=np.float32)
        filenames = _load(os.path.join(split_dir, "filenames.pickle"), "file-name list",
                          "It comes with the preprocessed embeddings (see README, 'Data').")
        class_ids = _load(os.path.join(split_dir, "class_info.pickle"), "class-id list",
                          "It comes with the preprocessed embeddings (see README, 'Data').")
        self._validate(split_dir, images, embeddings, filenames, class_ids)
        if self.embedding_shape is not None and self.embedding_shape != [embeddings.shape[-1]]:
            raise DatasetError(
                f"{os.path.join(split_dir, self.embedding_filename)}: embedding dimension "
                f"{embeddings.shape[-1]} differs from the other split's {self.embedding_shape[0]}; "
                "both splits must come from the same text encoder.")
        self.embedding_shape = [int(embeddings.shape[-1])]
        return Split(images, embeddings, [str(f) for f in filenames],
                     np.asarray(class_ids).astype(np.int64).reshape(-1), self.workdir,
                     self.image_shape[0], name or os.path.basename(os.path.normpath(split_dir)))

    def _validate(self, split_dir, images, embeddings, filenames, class_ids):
        image_path = os.path.join(split_dir, self.image_filename)
        size = LOAD_SIZES[self.hr_lr_ratio]
        if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
            raise DatasetError(
                f"{image_path}: expected uint8 images of shape N x {size} x {size} x 3, got "
                f"{images.dtype} {images.shape}. Re-run the preprocessing script.")
        emb_path = os.path.join(split_dir, self.embedding_filename)
        if embeddings.ndim not in (2, 3):
            raise DatasetError(
                f"{emb_path}: expected embeddings of shape N x captions x D or N x D, "
                f"got {embeddings.shape}.")
        n = len(images)
        for what, count, path in (
            ("embeddings", len(embeddings), emb_path),
            ("file names", len(filenames), os.path.join(split_dir, "filenames.pickle")),
            ("class ids", len(class_ids), os.path.join(split_dir, "class_info.pickle")),
        ):
            if count != n:
                raise DatasetError(
                    f"{path}: has {count} {what} but {image_path} has {n} images; the files "
                    "of a split must describe the same images in the same order.")


def dataset_dir(config):
    return os.path.join(config.DATA_DIR, config.DATASET_NAME)


def load_dataset(config, hr_lr_ratio, splits=("train", "test")):
    """Load the configured dataset's splits, generating the bundled
    synthetic dataset first when it is named and missing."""
    workdir = dataset_dir(config)
    if config.DATASET_NAME == "shapes":
        from data.generate_shapes import ensure_dataset

        ensure_dataset(config.DATA_DIR, "shapes", hr=hr_lr_ratio > 1)
    if not os.path.isdir(workdir):
        raise DatasetError(
            f"{workdir}: dataset folder not found. Download and preprocess the "
            f"'{config.DATASET_NAME}' data into it (README, 'Data'), or use "
            "DATASET_NAME: shapes, the bundled dataset, which is generated on first use.")
    dataset = TextDataset(workdir, config.EMBEDDING_TYPE, hr_lr_ratio)
    for split in splits:
        setattr(dataset, split, dataset.get_data(os.path.join(workdir, split), split))
    return dataset

"""Captions in, char-CNN-RNN embeddings out: the files ``demo/embed.py``
reads and writes.

* A caption file: every line is a caption, as get_embedding.lua reads it with
  ``io.lines`` (``caption_lines``): bytes, empty lines included.
* Outputs: ``.t7`` as get_embedding.lua saves it (``{raw_txt = {captions},
  fea_txt = {1 x D tensors}}``, written as ``torch.FloatTensor`` so that Lua
  reads it without cutorch; get_embedding.lua's were CudaTensors), or
  ``.npy``, a float32 ``[N, D]`` array.  Written atomically.
* A dataset (``embed_dataset``): every image's caption file
  (``text_c10/<name>.txt``, the non-empty lines, as the dataset loader reads
  them) embedded into ``<split>/char-CNN-RNN-embeddings.pickle``, N x
  captions x D float32 in ``filenames.pickle`` order, the layout the loaders
  read.  An existing embeddings file is replaced only with ``force``.
* The encoder (``caption_encoder``): the authors' ``.t7``, one trained by
  misc/commands/train_text_encoder.py (``.keras`` or its run folder), or
  ``hash``, the bundled encoder (misc/data/hash_encoder.py) that the shapes
  dataset ships with.
"""

import os
import pickle

import numpy as np

from misc.config import ConfigError, DatasetError
from misc.data import safe_pickle
from misc.data.atomic import atomic_open
from misc.data.datasets import caption_file, class_id_array, file_names
from misc.data.formats import EMBEDDING_FILES, SPLITS, TEXT_EMBEDDING_DIM
from misc.data.hash_encoder import HASH_ENCODER, encode_captions
from misc.nets.char_cnn_rnn import (
    DEFAULT_BATCH_SIZE,
    ENCODER_FILE,
    TextEncoderError,
    as_bytes,
    caption_lines,
    embed_captions,
    load_keras_encoder,
)
from misc.reference import torch7
from misc.reference.torch7_encoder import load_torch7_encoder

OUTPUT_SUFFIXES = (".t7", ".npy")
EMBEDDING_FILE = EMBEDDING_FILES["cnn-rnn"]


def read_caption_file(path):
    """The captions (bytes) of a caption file, one per line as Lua's io.lines."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: caption file not found (--captions); give a text file, one caption "
                           "per line.")
    with open(path, "rb") as f:
        captions = caption_lines(f.read())
    if not captions:
        raise DatasetError(f"{path}: the caption file is empty; give one caption per line.")
    return captions


def check_output(path):
    """--out must name a .t7 or .npy file (checked before anything is computed)."""
    if not path.lower().endswith(OUTPUT_SUFFIXES):
        raise ConfigError(f"--out {path}: give a file ending in .t7 (get_embedding.lua's layout) or .npy "
                          "(a float32 [N, D] array).")
    if os.path.isdir(path):
        raise ConfigError(f"--out {path}: is a folder; give a file name ending in .t7 or .npy.")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder) and not os.access(folder, os.W_OK):
        raise ConfigError(f"--out {path}: its folder is not writable; give another --out.")


def write_embeddings(path, captions, embeddings):
    """Write ``embeddings`` [N, D] of ``captions`` (bytes) as ``.t7`` or ``.npy``."""
    embeddings = np.asarray(embeddings, np.float32)
    if path.lower().endswith(".npy"):
        with atomic_open(path, "wb") as f:
            np.save(f, embeddings)
    else:
        rows = [embeddings[i:i + 1] for i in range(len(embeddings))]
        torch7.save(path, {"raw_txt": list(captions), "fea_txt": rows})


def split_captions(dataset_dir, split, force=False):
    """(the captions of every image of a split, its embeddings file), after
    checking everything: the file names, a caption file per image with the
    same number of captions, and that the embeddings file may be written."""
    split_dir = os.path.join(dataset_dir, split)
    names_path = os.path.join(split_dir, "filenames.pickle")
    class_path = os.path.join(split_dir, "class_info.pickle")
    for path in (names_path, class_path):
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: not found; the {split} split needs its filenames.pickle and "
                               "class_info.pickle (see README, 'Data').")
    try:
        names = file_names(safe_pickle.load(names_path), names_path)
        class_ids = class_id_array(safe_pickle.load(class_path), class_path)
    except (OSError, pickle.UnpicklingError) as exc:  # the messages name the file
        raise DatasetError(str(exc)) from None
    if len(class_ids) != len(names) or not names:
        raise DatasetError(f"{class_path}: {len(class_ids)} class ids for the {len(names)} file names of "
                           f"{names_path}; they must describe the same images.")
    output = os.path.join(split_dir, EMBEDDING_FILE)
    if not os.access(split_dir, os.W_OK):
        raise DatasetError(f"{split_dir}: not writable; {EMBEDDING_FILE} cannot be written there.")
    if os.path.exists(output) and not force:
        raise DatasetError(f"{output}: exists; give --force to replace it (its embeddings are lost), or "
                           "move it away first.")
    captions = []
    for name, class_id in zip(names, class_ids):
        path = caption_file(dataset_dir, name, class_id)
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: caption file missing; put the dataset's text_c10/ folder in "
                               f"{dataset_dir}/.")
        with open(path, "rb") as f:
            lines = [line for line in f.read().split(b"\n") if line]  # as the dataset loader reads them
        if not lines or (captions and len(lines) != len(captions[0])):
            expected = f"the split's first file has {len(captions[0])}" if captions else "at least one"
            raise DatasetError(f"{path}: has {len(lines)} captions; {expected} (every image needs the "
                               "same number).")
        captions.append(lines)
    return captions, output


def embed_dataset(encode, dataset_dir, force=False, log=print):
    """Embed the captions of every split of a dataset into its
    char-CNN-RNN-embeddings.pickle with ``encode`` (captions as bytes ->
    N x D array, ``caption_encoder``); returns the number of captions.
    Every split is checked before the first caption is embedded."""
    if not os.path.isdir(dataset_dir):
        raise DatasetError(f"{dataset_dir}: dataset folder not found (--dataset).")
    plans = [split_captions(dataset_dir, split, force) for split in SPLITS]
    total = 0
    for (captions, output), split in zip(plans, SPLITS):
        flat = [caption for image in captions for caption in image]
        log(f"{split}: {len(captions)} images x {len(captions[0])} captions")
        embeddings = np.asarray(encode(flat), np.float32)
        safe_pickle.dump(embeddings.reshape(len(captions), len(captions[0]), -1), output)
        log(f"Wrote {output}")
        total += len(flat)
    return total


def encoder_in_folder(path):
    """The text encoder of a training run's folder, or of the newest run below it."""
    found = [os.path.join(root, ENCODER_FILE) for root, _, files in os.walk(path) if ENCODER_FILE in files]
    if not found:
        raise TextEncoderError(f"{path}: no {ENCODER_FILE} in this folder or below it; give a run folder of "
                               "misc/commands/train_text_encoder.py (ckt_logs/text_encoders/<dataset>/...) "
                               "or an encoder file.")
    direct = os.path.join(path, ENCODER_FILE)
    return direct if direct in found else max(found, key=os.path.getmtime)


def load_encoder(path):
    """The text encoder in ``path`` as a ``CharCNNRNN`` (its weights set) and
    a dict describing where it came from: the authors' ``.t7`` files
    (``misc.reference.torch7_encoder``), ours (``.keras``, written by
    misc/commands/train_text_encoder.py), or a folder: a training run's (its
    ENCODER_FILE), or one holding runs (the newest run's)."""
    if os.path.isdir(path):
        path = encoder_in_folder(path)
    if not os.path.isfile(path):
        raise TextEncoderError(f"{path}: text encoder not found (--text-encoder); give the authors' "
                               "char-CNN-RNN .t7 file, a text_encoder.keras of "
                               "misc/commands/train_text_encoder.py or its run folder (see README, 'Your own "
                               "captions', 'Your own data').")
    if path.lower().endswith(".keras"):
        return load_keras_encoder(path)
    if not path.lower().endswith(".t7"):
        raise TextEncoderError(f"{path}: neither a .t7 nor a .keras file; the text encoders read are the "
                               "authors' char-CNN-RNN .t7 files and those "
                               "misc/commands/train_text_encoder.py writes (see README, 'Your own captions', "
                               "'Your own data').")
    return load_torch7_encoder(path)


def caption_encoder(spec, lowercase=False, batch_size=DEFAULT_BATCH_SIZE):
    """(description, encode) of a --text-encoder: HASH_ENCODER, the bundled
    encoder (which lower-cases by itself), or
    any encoder ``load_encoder`` reads.  ``encode`` takes captions as bytes."""
    if spec == HASH_ENCODER:
        description = (f"the bundled hash encoder (misc/data/hash_encoder.py), {TEXT_EMBEDDING_DIM}-d "
                       "output; not a char-CNN-RNN")
        return description, lambda captions: encode_captions([as_bytes(c).decode("utf-8", errors="replace")
                                                              for c in captions])
    model, _ = load_encoder(spec)
    return model.describe(), lambda captions: embed_captions(model, captions, lowercase=lowercase,
                                                             batch_size=batch_size)

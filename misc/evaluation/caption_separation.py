"""How far a text encoder moves a shapes caption when one attribute changes.

    python -m misc.commands.caption_separation --text-encoder ENC [--dataset data/shapes] [--num 200]

For the captions of the first ``--num`` test images of the bundled shapes
dataset, every caption is rewritten with one attribute word replaced by each
other value of that attribute (the shape, the object colour, the background
colour, the size; articles follow the new word), so that the new caption
differs from the original in that attribute only.  The figure of an
attribute is the mean cosine distance (1 - cosine similarity) between the
embeddings of a caption and of its rewrites.  The conditioning a GAN gets
from the captions separates shapes at least as well as colours when the
shape figure is at least the colour figure (``shape / colour`` ratio >= 1).
For scale, "paraphrase" is the mean distance between two captions of the
same picture (different templates, same attributes).

The second figure, nearest class per attribute: every class (a shape in a
colour) is represented by the mean embedding of all captions of its training
pictures; each test caption is given the class of the most similar mean
(cosine), and is counted right for shape when that class has its picture's
shape, for colour when it has its colour.  An encoder separates shapes at
least as well as colours by this figure when the shape accuracy is at least
the colour accuracy.

ENC is any ``demo/embed.py --text-encoder``: ``hash`` (the bundled encoder
the dataset's embeddings come from), a ``text_encoder.keras`` of
misc/commands/train_text_encoder.py or its run folder, or the authors' ``.t7``.
"""

import itertools
import os
import re

import numpy as np

from misc.config import DatasetError
from misc.data import safe_pickle
from misc.data.datasets import caption_file
from misc.data.shapes import BACKGROUNDS, COLORS, SHAPES, SIZE_WORDS
from misc.evaluation.caption_embeddings import caption_encoder

ATTRIBUTES = {"shape": SHAPES, "colour": tuple(COLORS), "background": tuple(BACKGROUNDS),
              "size": tuple(SIZE_WORDS)}
PARAPHRASE = "paraphrase"


def whole_word(word):
    """A pattern of ``word`` alone, not inside a hyphenated word ("medium-sized")."""
    return rf"(?<![\w-]){re.escape(word)}(?![\w-])"


def rewrites(caption, words):
    """``caption`` with its one word of ``words`` replaced by each other one
    (``[]`` unless exactly one of them occurs once); "a"/"an" follow."""
    found = [w for w in words if len(re.findall(whole_word(w), caption)) == 1]
    if len(found) != 1:
        return []
    variants = []
    for other in words:
        if other != found[0]:
            text = re.sub(whole_word(found[0]), other, caption)
            text = re.sub(r"\ban (?=[^aeiou])", "a ", re.sub(r"\ba (?=[aeiou])", "an ", text))
            variants.append(text)
    return variants


def cosine_distances(anchor, others):
    anchor = anchor / np.linalg.norm(anchor)
    others = others / np.linalg.norm(others, axis=1, keepdims=True)
    return 1.0 - others @ anchor


def separation(encode, captions_per_image):
    """{attribute: (mean cosine distance, pairs)}, paraphrases included."""
    pairs = {name: [] for name in (*ATTRIBUTES, PARAPHRASE)}
    for captions in captions_per_image:
        for caption in captions:
            for name, words in ATTRIBUTES.items():
                pairs[name] += [(caption, other) for other in rewrites(caption, words)]
        pairs[PARAPHRASE] += list(itertools.combinations(captions, 2))
    texts = sorted({text for rows in pairs.values() for pair in rows for text in pair})
    index = {text: i for i, text in enumerate(texts)}
    embedded = np.asarray(encode([t.encode("utf-8") for t in texts]), np.float64)
    figures = {}
    for name, rows in pairs.items():
        distances = [cosine_distances(embedded[index[a]], embedded[[index[b]]])[0] for a, b in rows]
        figures[name] = (float(np.mean(distances)) if distances else float("nan"), len(rows))
    return figures


def split_captions(dataset_dir, split, num=None):
    """(captions of each picture, its (colour, shape)) of the first ``num``
    pictures of a split; the class folder of a shapes file name is
    ``<colour>_<shape>``."""
    names_path = os.path.join(dataset_dir, split, "filenames.pickle")
    if not os.path.isfile(names_path):
        raise DatasetError(f"{names_path}: not found; generate the shapes dataset first "
                           "(python data/generate_shapes.py, or the quick start).")
    names = safe_pickle.load(names_path)[:num]
    ids = safe_pickle.load(os.path.join(dataset_dir, split, "class_info.pickle"))
    captions = []
    for name, class_id in zip(names, ids):
        with open(caption_file(dataset_dir, name, class_id), encoding="utf-8") as f:
            captions.append([line for line in f.read().split("\n") if line])
    return captions, [tuple(name.split("/")[0].split("_", 1)) for name in names]


def nearest_class(encode, train, test):
    """{"shape": accuracy, "colour": accuracy} of the nearest class mean
    (cosine) of every test caption (see the module docstring)."""
    (train_captions, train_classes), (test_captions, test_classes) = train, test
    classes = sorted(set(train_classes))
    flat = [c for captions in train_captions for c in captions] + [c for cs in test_captions for c in cs]
    embedded = np.asarray(encode([c.encode("utf-8") for c in flat]), np.float64)
    embedded /= np.linalg.norm(embedded, axis=1, keepdims=True)
    owners = [cls for captions, cls in zip(train_captions, train_classes) for _ in captions]
    count = len(owners)
    means = np.stack([embedded[:count][[o == cls for o in owners]].mean(axis=0) for cls in classes])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    predicted = [classes[i] for i in np.argmax(embedded[count:] @ means.T, axis=1)]
    truth = [cls for captions, cls in zip(test_captions, test_classes) for _ in captions]
    return {"colour": float(np.mean([p[0] == t[0] for p, t in zip(predicted, truth)])),
            "shape": float(np.mean([p[1] == t[1] for p, t in zip(predicted, truth)]))}


def measure(text_encoder, dataset_dir, num, log=print):
    """Both figures of ``text_encoder`` (a --text-encoder) on the shapes
    dataset ``dataset_dir``, printed; returns {"distances": {attribute:
    (mean cosine distance, pairs)}, "nearest_class": {"shape", "colour"}}."""
    test = split_captions(dataset_dir, "test", num)
    train = split_captions(dataset_dir, "train")
    description, encode = caption_encoder(text_encoder)
    log(description)
    figures = separation(encode, test[0])
    log(f"Mean cosine distance between captions of the first {len(test[0])} test images of "
        f"{dataset_dir} and their rewrites with one attribute changed:")
    for name, (value, count) in figures.items():
        log(f"  {name:10s} {value:.4f}  ({count} pairs)")
    log(f"shape / colour: {figures['shape'][0] / figures['colour'][0]:.2f}")
    accuracy = nearest_class(encode, train, test)
    log(f"Nearest class mean of each of their captions ({len(set(train[1]))} classes of the training "
        f"split): shape right {100 * accuracy['shape']:.1f}%, colour right {100 * accuracy['colour']:.1f}%")
    return {"distances": figures, "nearest_class": accuracy}

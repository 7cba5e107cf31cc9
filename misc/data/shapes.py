"""The bundled "shapes" dataset: a small synthetic captioned dataset in the
StackGAN format, generated on first use (``ensure_dataset``) or by
``python data/generate_shapes.py`` (misc/commands/generate_shapes.py).

Each picture is one flat-coloured shape on a plain background.  A dataset's
design is its ``Recipe``: the values each attribute takes and the picture
counts.  ``RECIPES`` names the bundled ones (a config's DATASET_NAME): the
quick start's ``shapes`` (shape (5), object colour (6), background colour
(4), size (3) and position (5); class id ``shape_index * len(COLORS) +
color_index``) and the rungs of the diagnosis ladder (``LADDER``,
docs/shapes_diagnosis.md), which vary one attribute more per rung.  Pictures
are drawn at 608 px with Pillow (drawing large and resizing down antialiases
the edges) and then go through ``misc.data.preprocessing`` exactly like the
photographs of the real datasets: ``prepare_image`` to 304 px, then a bicubic
resize to 76 px.  Every palette colour of the objects has a 0 and a 255
channel, so each picture spans 0..255, the reference byte-scaling is the
identity and the stored pixels are exactly the palette colours.

Objects stay inside the central 64/76 of the picture (the 64 px and 256 px
centre crops contain the whole object; a random training crop can cut the
largest off-centre ones: docs/shapes_diagnosis.md).  All shapes are
left-right symmetric, so the training flips keep them the same shape.

Each picture gets ten captions (several templates, synonyms and word orders);
every caption names the object colour and the shape, most also the
background colour and the size.  The captions are embedded with
``misc.data.hash_encoder``.  Layout (as for birds/flowers)::

    <out>/text_c10/<filename>.txt        10 captions, one per line
    <out>/<split>/76images.pickle        list of uint8 (76, 76, 3)
    <out>/<split>/304images.pickle       list of uint8 (304, 304, 3)  (hr=True)
    <out>/<split>/char-CNN-RNN-embeddings.pickle   float32 (N, 10, 1024)
    <out>/<split>/class_info.pickle      list of int
    <out>/<split>/attributes.json        list of {shape, color, background, size, position}
    <out>/<split>/filenames.pickle       list of "<color>_<shape>/shapes_<index>"

``filenames.pickle`` is written last, so a dataset whose generation was
interrupted is seen as missing by ``ensure_dataset``, which then removes the
temporary files the interrupted writes left (``.tmp-*``) and generates it
again.  ``ensure_dataset`` holds a lock on ``<out>/.lock`` meanwhile, so runs
started together generate the dataset once (the others wait for it) and
never remove each other's temporary files.

Usage, from the repository root::

    python data/generate_shapes.py [--out data/shapes] [--num-train N] [--num-test N] [--seed S] [--force]

The target folder must be new, empty or a dataset this script wrote (it
leaves a ``.shapes_dataset`` marker first); a folder holding anything else
(another dataset, other files) is refused unless ``--force``, and a file,
FIFO or device is always refused.  Counts are 1 to ``MAX_IMAGES`` per split
(the pictures of a split are held in memory), the seed 0 to 2**32 - 1; all
is checked before anything is written.
"""

import functools
import json
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from misc.config import DatasetError
from misc.data import safe_pickle
from misc.data.atomic import (
    TEMP_PREFIX,
    check_folder_writable,
    exclusive_lock,
    remove_temporaries,
    write_text,
)
from misc.data.datasets import load_dataset
from misc.data.formats import CAPTIONS_PER_IMAGE, HR_LOAD_SIZE, LR_LOAD_SIZE, SPLITS, TEXT_EMBEDDING_DIM
from misc.data.hash_encoder import content_words, encode_captions
from misc.data.preprocessing import make_low_resolution, prepare_image

# ---------------------------------------------------------------- attributes
# These definitions are the single source of truth;
# misc/evaluation/shapes_attributes.py measures pictures against them.

SHAPES = ("circle", "square", "triangle", "diamond", "star")
COLORS = {  # object colours: each has a 0 and a 255 channel (see module docstring)
    "red": (255, 0, 0),
    "orange": (255, 128, 0),
    "yellow": (255, 255, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "purple": (128, 0, 255),
}
BACKGROUNDS = {  # none is close to an object colour
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "brown": (120, 72, 24),
}
# Object radius as a fraction of the picture width (the circumscribed circle):
# the size classes, as (name, radius) pairs from small to large.
SIZES = (("small", 0.09), ("medium", 0.15), ("large", 0.23))
SIZE_JITTER = 0.03  # relative
# Direction of the object's centre from the picture centre (x right, y down).
POSITIONS = {"center": (0, 0), "left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}
POSITION_OFFSET = 0.13  # fraction of the picture width
POSITION_JITTER = 0.015
ATTRIBUTES = ("shape", "color", "background", "size", "position")

DRAW_SIZE = 2 * HR_LOAD_SIZE
DEFAULT_NUM_TRAIN = 1200
DEFAULT_NUM_TEST = 200

# Shape geometry, in units of the radius r around the centre.
SQUARE_HALF_SIDE = 0.8
DIAMOND_HALF_WIDTH = 0.7
STAR_INNER_RADIUS = 0.45


@dataclass(frozen=True)
class Recipe:
    """The design of one bundled dataset: the values each attribute takes
    (names from SHAPES, COLORS, BACKGROUNDS, POSITIONS), its size classes as
    (name, radius as a fraction of the picture width) pairs, and its picture
    counts.  ``class_attributes``: the attributes whose values make a
    picture's class (the training sampler's "wrong" pictures are of another
    class)."""

    shapes: tuple
    colors: tuple
    backgrounds: tuple
    sizes: tuple
    positions: tuple
    num_train: int = DEFAULT_NUM_TRAIN
    num_test: int = DEFAULT_NUM_TEST
    class_attributes: tuple = ("shape", "color")

    @property
    def radii(self):
        """Size name -> radius (fraction of the picture width)."""
        return dict(self.sizes)

    def values(self, attribute):
        """The values ``attribute`` takes in this dataset."""
        return tuple(self.radii) if attribute == "size" else getattr(self, f"{attribute}s")

    def class_id(self, attrs):
        """Class of a picture: one per combination of its ``class_attributes``."""
        index = 0
        for attribute in self.class_attributes:
            values = self.values(attribute)
            index = index * len(values) + values.index(attrs[attribute])
        return index

    @property
    def num_classes(self):
        return math.prod(len(self.values(a)) for a in self.class_attributes)


QUICK_START = "shapes"
_LARGE = SIZES[-1:]
_ALL_COLORS, _ALL_BACKGROUNDS = tuple(COLORS), tuple(BACKGROUNDS)
# Every attribute varies: the quick start's dataset.
_EVERYTHING = Recipe(SHAPES, _ALL_COLORS, _ALL_BACKGROUNDS, SIZES, tuple(POSITIONS))
# The diagnosis ladder (docs/shapes_diagnosis.md): one attribute more per
# rung, from a single large centred red square on black up to the quick
# start's dataset (the last rung).
LADDER = {
    "shapes_l1_square": Recipe(("square",), ("red",), ("black",), _LARGE, ("center",)),
    "shapes_l2_two": Recipe(("circle", "square"), ("red",), ("black",), _LARGE, ("center",)),
    "shapes_l3_shape": Recipe(SHAPES, ("red",), ("black",), _LARGE, ("center",)),
    "shapes_l4_colour": Recipe(SHAPES, _ALL_COLORS, ("black",), _LARGE, ("center",)),
    "shapes_l5_background": Recipe(SHAPES, _ALL_COLORS, _ALL_BACKGROUNDS, _LARGE, ("center",)),
    "shapes_l6_size": Recipe(SHAPES, _ALL_COLORS, _ALL_BACKGROUNDS, SIZES, ("center",)),
    "shapes_l7_position": _EVERYTHING,
}
# The datasets this module generates on first use (DATASET_NAME -> design).
RECIPES = {QUICK_START: _EVERYTHING, **LADDER}


def recipe_of(name):
    """The recipe of the bundled dataset ``name`` (a DATASET_NAME)."""
    if name not in RECIPES:
        raise ValueError(f"unknown bundled dataset {name!r}; expected one of {', '.join(RECIPES)}")
    return RECIPES[name]


def _regular_polygon(cx, cy, radii, start_angle=-90.0):
    """Vertices at the given radii, evenly spaced in angle, starting straight up."""
    step = 360.0 / len(radii)
    return [(cx + r * math.cos(math.radians(start_angle + i * step)),
             cy + r * math.sin(math.radians(start_angle + i * step)))
            for i, r in enumerate(radii)]


def shape_outline(shape, cx, cy, r):
    """The corners of ``shape`` (radius ``r`` around (cx, cy)) in drawing
    order; None for the circle."""
    if shape == "circle":
        return None
    if shape == "square":
        h = SQUARE_HALF_SIDE * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # equilateral, apex up; centroid at (cx, cy)
        return _regular_polygon(cx, cy, [r] * 3)
    if shape == "diamond":
        w = DIAMOND_HALF_WIDTH * r
        return [(cx, cy - r), (cx + w, cy), (cx, cy + r), (cx - w, cy)]
    if shape == "star":  # five points, one straight up
        return _regular_polygon(cx, cy, [r, STAR_INNER_RADIUS * r] * 5)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def outline_length(shape, r=1.0):
    """Length of the outline of ``shape`` of radius ``r``."""
    corners = shape_outline(shape, 0.0, 0.0, r)
    if corners is None:
        return 2 * math.pi * r
    return sum(math.dist(a, b) for a, b in zip(corners, corners[1:] + corners[:1]))


def draw_shape(draw, shape, cx, cy, r, fill):
    """Draw ``shape`` of radius ``r`` pixels centred on (cx, cy) with ``ImageDraw``."""
    corners = shape_outline(shape, cx, cy, r)
    if corners is None:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":  # axis-aligned: Pillow's rectangle
        draw.rectangle(corners[0] + corners[2], fill=fill)
    else:
        draw.polygon(corners, fill=fill)


def render(attrs, recipe, size_jitter=1.0, offset_jitter=(0.0, 0.0), canvas=DRAW_SIZE):
    """Draw one picture (uint8, canvas x canvas x 3) of ``recipe`` from its attributes."""
    image = Image.new("RGB", (canvas, canvas), BACKGROUNDS[attrs["background"]])
    dx, dy = POSITIONS[attrs["position"]]
    cx = canvas * (0.5 + dx * POSITION_OFFSET + offset_jitter[0])
    cy = canvas * (0.5 + dy * POSITION_OFFSET + offset_jitter[1])
    radius = canvas * recipe.radii[attrs["size"]] * size_jitter
    draw_shape(ImageDraw.Draw(image), attrs["shape"], cx, cy, radius, COLORS[attrs["color"]])
    return np.asarray(image)


# ------------------------------------------------------------------ captions

SIZE_WORDS = {"small": ("small", "small", "little"),
              "medium": ("medium", "medium-sized", "medium"),
              "large": ("large", "large", "big")}
POSITION_PHRASES = {"center": ("in the center", "in the middle"),
                    "left": ("on the left", "on the left side"),
                    "right": ("on the right", "on the right side"),
                    "top": ("at the top", "near the top"),
                    "bottom": ("at the bottom", "near the bottom")}
BACKGROUND_WORDS = ("background", "background", "backdrop")
CAPTION_TEMPLATES = (
    "a {size} {color} {shape} on a {bg} {bgword}",
    "a {color} {shape} {pos} on a {bg} {bgword}",
    "this picture shows a {size} {color} {shape} against a {bg} {bgword}",
    "there is a {size} {color} {shape} {pos}, the {bgword} is {bg}",
    "{bg} {bgword} with a {size} {color} {shape} {pos}",
    "the {shape} is {color} and {size} and the {bgword} is {bg}",
    "a {color} {shape} on a plain {bg} {bgword}",
    "one {size} {shape}, colored {color}, drawn {pos}",
    "an image of a {color} {shape} that is {size}, on a {bg} {bgword}",
    "a {size} {shape} in {color} over a {bg} {bgword}",
    "a {color} {shape} on {bg}",
    "the {bgword} is {bg} and a {size} {color} {shape} sits {pos}",
)
_ARTICLE_RE = re.compile(r"\ba (?=[aeiou])")


@functools.lru_cache(maxsize=1)
def vocabulary():
    """Every word the bundled datasets' captions use, less the filler words
    the hash encoder drops: a model trained on them has learnt no other."""
    pieces = [*CAPTION_TEMPLATES, *SHAPES, *COLORS, *BACKGROUNDS, *BACKGROUND_WORDS,
              *(word for words in SIZE_WORDS.values() for word in words),
              *(phrase for phrases in POSITION_PHRASES.values() for phrase in phrases)]
    return frozenset(word for piece in pieces for word in content_words(re.sub(r"\{\w+\}", " ", piece)))


def unknown_words(caption):
    """The words of ``caption`` that no bundled caption uses, in order."""
    known = vocabulary()
    return list(dict.fromkeys(word for word in content_words(caption) if word not in known))


def make_captions(attrs, rng, count=CAPTIONS_PER_IMAGE):
    """``count`` different captions for one picture, in random order."""
    chosen = rng.choice(len(CAPTION_TEMPLATES), size=count, replace=False)
    captions = []
    for index in chosen:
        text = CAPTION_TEMPLATES[index].format(
            size=rng.choice(SIZE_WORDS[attrs["size"]]),
            color=attrs["color"],
            shape=attrs["shape"],
            bg=attrs["background"],
            bgword=rng.choice(BACKGROUND_WORDS),
            pos=rng.choice(POSITION_PHRASES[attrs["position"]]),
        )
        captions.append(_ARTICLE_RE.sub("an ", text))
    return captions


# ------------------------------------------------------------------- dataset

def sample_attributes(rng, count, recipe):
    """``count`` attribute dicts of ``recipe``: (shape, colour) pairs cycle
    evenly, the rest is uniform."""
    classes = [(s, c) for s in recipe.shapes for c in recipe.colors]
    order = np.concatenate([rng.permutation(len(classes))
                            for _ in range(-(-count // len(classes)))])[:count]
    samples = []
    for k in order:
        shape, color = classes[k]
        samples.append({
            "shape": shape,
            "color": color,
            "background": str(rng.choice(recipe.backgrounds)),
            "size": str(rng.choice(recipe.values("size"))),
            "position": str(rng.choice(recipe.positions)),
        })
    return samples


def sample_jitter(rng):
    """Random size factor and centre offset that keep every attribute unambiguous."""
    size_jitter = 1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)
    offset_jitter = tuple(rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2))
    return size_jitter, offset_jitter


def make_images(attrs, recipe, size_jitter=1.0, offset_jitter=(0.0, 0.0)):
    """The 304 px and 76 px pictures, through the real-dataset preprocessing."""
    hr = prepare_image(render(attrs, recipe, size_jitter, offset_jitter), HR_LOAD_SIZE)
    return hr, make_low_resolution(hr, LR_LOAD_SIZE)


def _write_split(out_dir, split, first_index, count, rng, hr, recipe):
    split_dir = os.path.join(out_dir, split)
    attributes = sample_attributes(rng, count, recipe)
    jitters = [sample_jitter(rng) for _ in attributes]
    filenames, all_captions = [], []
    for offset, attrs in enumerate(attributes):
        filename = f"{attrs['color']}_{attrs['shape']}/shapes_{first_index + offset:06d}"
        captions = make_captions(attrs, rng)
        # Captions go to disk first; the pickles that list them come after.
        write_text("\n".join(captions) + "\n",
                   os.path.join(out_dir, "text_c10", filename + ".txt"))
        filenames.append(filename)
        all_captions.extend(captions)

    # All randomness is drawn above, so rendering in threads (Pillow releases
    # the GIL while drawing and resizing) does not change the result.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        pairs = list(pool.map(lambda args: make_images(*args),
                              [(a, recipe, sj, oj) for a, (sj, oj) in zip(attributes, jitters)]))
    hr_images = [hr for hr, _ in pairs]
    lr_images = [lr for _, lr in pairs]

    embeddings = encode_captions(all_captions, dim=TEXT_EMBEDDING_DIM)
    embeddings = embeddings.reshape(count, CAPTIONS_PER_IMAGE, TEXT_EMBEDDING_DIM)
    if hr:
        safe_pickle.dump(hr_images, os.path.join(split_dir, f"{HR_LOAD_SIZE}images.pickle"))
    safe_pickle.dump(lr_images, os.path.join(split_dir, f"{LR_LOAD_SIZE}images.pickle"))
    safe_pickle.dump(embeddings, os.path.join(split_dir, "char-CNN-RNN-embeddings.pickle"))
    safe_pickle.dump([recipe.class_id(a) for a in attributes],
                     os.path.join(split_dir, "class_info.pickle"))
    write_text("[\n" + ",\n".join(json.dumps(a) for a in attributes) + "\n]\n",
               os.path.join(split_dir, "attributes.json"))
    safe_pickle.dump(filenames, os.path.join(split_dir, "filenames.pickle"))
    return {"count": count, "embeddings": embeddings.shape}


def generate(out_dir, num_train=None, num_test=None, seed=0, hr=True, log=print, force=False,
             recipe=RECIPES[QUICK_START]):
    """Write a dataset of ``recipe`` (default: the quick start's) to
    ``out_dir`` (e.g. ``data/shapes``); same seed, same files.

    The counts default to the recipe's.  With ``hr=False`` the 304 px
    pickles are not written (stage I only).
    ``out_dir`` must be new, empty or a dataset of ours unless ``force``
    (``check_target``).  Returns a summary dict.
    """
    check_target(out_dir, force)
    num_train = recipe.num_train if num_train is None else num_train
    num_test = recipe.num_test if num_test is None else num_test
    start = time.perf_counter()
    write_text("written by data/generate_shapes.py\n", os.path.join(out_dir, MARKER))
    # filenames.pickle marks a finished split: drop old ones first so that an
    # interrupted regeneration is not mistaken for a complete dataset, and an
    # old 304 px pickle that this run would not replace.
    stale = ["filenames.pickle"] + ([] if hr else [f"{HR_LOAD_SIZE}images.pickle"])
    for path in (os.path.join(out_dir, split, name) for split in SPLITS for name in stale):
        if os.path.exists(path):
            os.remove(path)
    rng = np.random.default_rng(seed)
    summary = {"out_dir": out_dir, "seed": seed, "splits": {}}
    first_index = 0
    for split, count in (("train", num_train), ("test", num_test)):
        summary["splits"][split] = _write_split(out_dir, split, first_index, count, rng, hr, recipe)
        first_index += count
    summary["seconds"] = time.perf_counter() - start
    summary["megabytes"] = sum(os.path.getsize(os.path.join(out_dir, split, name))
                               for split in SPLITS for name in os.listdir(os.path.join(out_dir, split))) / 1e6
    sizes = ", ".join(f"{split} {info['count']}" for split, info in summary["splits"].items())
    log(f"shapes dataset: {sizes} images ({recipe.num_classes} classes, "
        f"{CAPTIONS_PER_IMAGE} captions each, embeddings dim {TEXT_EMBEDDING_DIM}"
        f"{', with 304 px' if hr else ', 76 px only'}) in {out_dir}: "
        f"{summary['megabytes']:.0f} MB of pickles in {summary['seconds']:.1f} s")
    return summary


def read_attributes(dataset_dir, split):
    """The attribute dicts of a split's pictures (``attributes.json``), in order."""
    with open(os.path.join(dataset_dir, split, "attributes.json"), encoding="utf-8") as f:
        return json.load(f)


def required_files(dataset_dir, hr=True):
    """The files that make a complete dataset at ``dataset_dir``."""
    names = ["76images.pickle", "char-CNN-RNN-embeddings.pickle", "class_info.pickle",
             "attributes.json", "filenames.pickle"]
    if hr:
        names.append(f"{HR_LOAD_SIZE}images.pickle")
    return [os.path.join(dataset_dir, split, name) for split in SPLITS for name in names]


def ensure_dataset(data_dir, name=QUICK_START, hr=True, log=print, **generate_kwargs):
    """Return ``<data_dir>/<name>``, generating the bundled dataset ``name``
    (its recipe: ``RECIPES``) there only if files are missing (after
    removing what an interrupted generation left)."""
    dataset_dir = os.path.join(data_dir, name)
    if all(os.path.isfile(p) for p in required_files(dataset_dir, hr)) and \
            not _has_temporaries(dataset_dir):
        return dataset_dir
    _generate_locked(dataset_dir, lambda: all(os.path.isfile(p) for p in required_files(dataset_dir, hr)),
                     log, hr=hr, recipe=recipe_of(name), **generate_kwargs)
    return dataset_dir


def _generate_locked(dataset_dir, complete, log, force=False, **generate_kwargs):
    """Generate into ``dataset_dir`` (checked first: ``check_target``)
    holding its lock, after removing what an interrupted generation left,
    unless ``complete()`` says another run has meanwhile written it."""
    check_target(dataset_dir, force)
    os.makedirs(dataset_dir, exist_ok=True)
    with exclusive_lock(os.path.join(dataset_dir, LOCK)):
        removed = remove_temporaries(dataset_dir, recursive=True)
        if removed:
            log(f"Removed {len(removed)} temporary file(s) left in {dataset_dir} by an interrupted "
                "generation.")
        if not complete():
            generate(dataset_dir, log=log, force=force, **generate_kwargs)


# A dataset folder of ours: the marker (written first), the lock, the splits
# and captions; in a split, its files and the evaluator's FID statistics.
MARKER = ".shapes_dataset"
LOCK = ".lock"
_OWN_ENTRIES = {MARKER, LOCK, "text_c10"} | set(SPLITS)
_OWN_SPLIT_FILE = re.compile(rf"^(\d+images\.pickle|char-CNN-RNN-embeddings\.pickle|class_info\.pickle|"
                             rf"filenames\.pickle|attributes\.json|fid_statistics_\d+\.npz|"
                             rf"{re.escape(TEMP_PREFIX)}.*)$")


def foreign_entries(out_dir):
    """What in ``out_dir`` is not part of a shapes dataset; empty when the
    folder is new or empty, or was written by this script (it has the
    marker: generating again replaces only the dataset's own files, never
    the others).  A dataset written before the marker existed (an
    attributes.json in a split) must hold nothing else."""
    names = {n for n in _listdir(out_dir) if not n.startswith(TEMP_PREFIX)} - {LOCK}
    if not names or MARKER in names:
        return []
    if not any(os.path.isfile(os.path.join(out_dir, split, "attributes.json")) for split in SPLITS):
        return sorted(names)
    foreign = sorted(names - _OWN_ENTRIES)
    for split in SPLITS:
        foreign += sorted(os.path.join(split, n) for n in _listdir(os.path.join(out_dir, split))
                          if not _OWN_SPLIT_FILE.match(n))
    return foreign


def _listdir(folder):
    return os.listdir(folder) if os.path.isdir(folder) else []


def check_target(out_dir, force=False):
    """Refuse, before anything is written, a target that is not a folder
    (or cannot become one), and unless ``force`` one that holds anything
    but a shapes dataset: one-line ``DatasetError``."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DatasetError(f"--out {out_dir}: exists and is not a folder; give the dataset folder.")
    check_folder_writable(out_dir, f"--out {out_dir}")
    foreign = [] if force else foreign_entries(out_dir)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise DatasetError(f"--out {out_dir}: holds files that are not part of a shapes dataset ({shown}); "
                           "they would be overwritten or mixed with it. Give a new folder, or --force to "
                           "write into this one anyway.")


def _has_temporaries(dataset_dir):
    return any(name.startswith(TEMP_PREFIX) for _, _, names in os.walk(dataset_dir) for name in names)


# Counts per split at most: a split's 304 px pictures, 0.28 MB each, are held in memory.
MAX_IMAGES = 20_000


def generate_command(out_dir, force=False, **generate_kwargs):
    """``python data/generate_shapes.py``: generate into ``out_dir`` under
    the dataset's lock, after removing an interrupted generation's
    temporaries (the folder checked first: ``check_target``)."""
    _generate_locked(out_dir, lambda: False, print, force=force, **generate_kwargs)


def load_run_dataset(config, hr_lr_ratio, splits=("train", "test"), captions=()):
    """The dataset a run reads (``misc.data.datasets.load_dataset``), the
    bundled dataset generated first where the config names it and it is
    missing (``ensure_dataset``)."""
    if config.DATASET_NAME in RECIPES:
        ensure_dataset(config.DATA_DIR, config.DATASET_NAME, hr=hr_lr_ratio > 1)
    return load_dataset(config, hr_lr_ratio, splits=splits, captions=captions)

"""A folder of captioned pictures as a user would give data/build_dataset.py:
a sub-folder per class, each picture with a .txt of captions beside it."""

import os

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 20),
           "purple": (140, 30, 200), "orange": (250, 140, 10)}
SHAPES = ("square", "circle")
FILLERS = ("a picture of", "here is", "this shows", "look at", "we see")


def draw(colour, shape, size, rng):
    """A ``shape`` in ``colour`` on a noisy grey background."""
    image = rng.integers(90, 140, size=(size, size, 3)).astype(np.uint8)
    half = size // 4 + int(rng.integers(0, max(1, size // 8)))
    centre = size // 2
    rows, cols = np.mgrid[:size, :size]
    if shape == "square":
        inside = (abs(rows - centre) <= half) & (abs(cols - centre) <= half)
    else:
        inside = (rows - centre) ** 2 + (cols - centre) ** 2 <= half ** 2
    image[inside] = COLOURS[colour]
    return image


def caption(colour, shape, rng):
    return f"{FILLERS[rng.integers(len(FILLERS))]} a {colour} {shape} on grey"


def write_captioned_folder(root, classes=("red", "green", "blue", "yellow"), per_class=4, size=48,
                           captions=3, suffix=".png", seed=0):
    """Class folders ``<root>/<colour>/`` of ``per_class`` pictures (squares
    and circles) with ``captions`` captions each; returns ``root``."""
    rng = np.random.default_rng(seed)
    for colour in classes:
        folder = os.path.join(root, colour)
        os.makedirs(folder, exist_ok=True)
        for index in range(per_class):
            shape = SHAPES[index % len(SHAPES)]
            stem = os.path.join(folder, f"{colour}_{index:03d}")
            Image.fromarray(draw(colour, shape, size, rng)).save(stem + suffix)
            with open(stem + ".txt", "w", encoding="utf-8") as f:
                f.write("".join(caption(colour, shape, rng) + "\n" for _ in range(captions)))
    return root

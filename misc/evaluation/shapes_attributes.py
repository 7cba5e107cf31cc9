"""Measure the attributes of "shapes" pictures, to check images against captions.

For each RGB picture (real or generated, any size):

* background: the median colour of the border pixels, named by the nearest
  background palette colour;
* object colour: the median colour of the pixels far from the background,
  named by the nearest object palette colour;
  (then re-measured inside the object);
* object mask: the largest connected region of pixels closer to the object
  colour than to the background;
* shape: each candidate shape is redrawn, with the generator's own
  ``draw_shape``, at the object's centroid and with the object's area; the
  redrawing closest to the picture names the shape;
* size: the object radius implied by the mask's extent (given the shape),
  named by thresholds between the dataset recipe's radii;
* position: the direction of the object's centroid from the picture centre
  (measured, but not scored by default: see ``SCORED_ATTRIBUTES``);
* edge width: how wide the object's edge is, the width of its 10-90%
  transition (from background to object colour), in pixels of a 256 px
  picture (``edge_width``).

Real pictures are 76 or 304 px wide, generated ones are 64 or 256 px crops
of the same scenes, so objects look up to 76/64 times larger in the latter;
the size and position thresholds sit between the classes at both scales.

All palettes and shapes come from ``misc/data/shapes.py``, the size classes
from the dataset's recipe (``RECIPES``).  Shapes are always named among all
of ``SHAPES`` (a blob drawn for a one-shape dataset is not a square),
colours among the whole palettes.
"""

import math
import re

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from misc.data.formats import HR_LR_RATIO, LR_IMAGE_SIZE, LR_LOAD_SIZE
from misc.data.shapes import (
    BACKGROUNDS,
    COLORS,
    POSITION_OFFSET,
    QUICK_START,
    RECIPES,
    SHAPES,
    SIZE_WORDS,
    draw_shape,
    outline_length,
)

# Position is measured too but not scored by default: training flips images
# left-right, so "left" and "right" are not something a model can learn.
SCORED_ATTRIBUTES = ("shape", "color", "background", "size")
ALL_ATTRIBUTES = SCORED_ATTRIBUTES + ("position",)
DEFAULT_RECIPE = RECIPES[QUICK_START]
# Edge widths are stated in pixels of a picture this wide (Stage-II's size).
EDGE_UNIT_WIDTH = HR_LR_RATIO * LR_IMAGE_SIZE
EDGE_LOW, EDGE_HIGH = 0.1, 0.9  # the transition band of an edge

CROP_SCALE = LR_LOAD_SIZE / LR_IMAGE_SIZE  # how much larger objects look in a training crop
MIN_OBJECT_PIXELS = 4

_BG_NAMES = list(BACKGROUNDS)
_BG_RGB = np.array([BACKGROUNDS[n] for n in _BG_NAMES], dtype=np.float32)
_COLOR_NAMES = list(COLORS)
_COLOR_RGB = np.array([COLORS[n] for n in _COLOR_NAMES], dtype=np.float32)
# A pixel is "far" from the background when it is more than half-way to the
# nearest object colour any background can carry.
_FAR_DISTANCE = 0.5 * float(np.min(np.linalg.norm(_BG_RGB[:, None] - _COLOR_RGB[None], axis=2)))


def _size_classes(recipe):
    """The recipe's size names from small to large and the radius limits
    between consecutive ones, valid at both scales."""
    radii = recipe.radii
    order = sorted(radii, key=radii.get)
    return order, [math.sqrt(radii[a] * radii[b] * CROP_SCALE) for a, b in zip(order, order[1:])]

_CENTRE_LIMIT = POSITION_OFFSET / 2


def _shape_geometry(radius=200):
    """Per shape, at radius 1: its area and its extent (longer bounding-box side)."""
    areas, extents = {}, {}
    for shape in SHAPES:
        image = Image.new("L", (4 * radius, 4 * radius), 0)
        draw_shape(ImageDraw.Draw(image), shape, 2 * radius, 2 * radius, radius, 255)
        ys, xs = np.nonzero(np.asarray(image) > 127)
        areas[shape] = len(ys) / radius ** 2
        extents[shape] = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / radius
    return areas, extents


_UNIT_AREAS, _UNIT_EXTENTS = _shape_geometry()


def radius_for_area(shape, area):
    """The radius at which ``shape`` covers ``area`` pixels."""
    return math.sqrt(area / _UNIT_AREAS[shape])


def render_coverage(shape, cx, cy, radius, height, width):
    """Fraction of each pixel of a (height, width) grid that the drawn shape covers.

    The shape is drawn by the generator's own ``draw_shape`` on a finer grid
    and box-filtered down, so small objects are pixelised like real ones.
    """
    factor = max(1, int(math.ceil(128 / max(height, width))))
    image = Image.new("L", (width * factor, height * factor), 0)
    draw_shape(ImageDraw.Draw(image), shape, cx * factor, cy * factor, radius * factor, 255)
    if factor > 1:
        image = image.resize((width, height), Image.BOX)
    return np.asarray(image, dtype=np.float32) / 255.0


def _nearest(rgb, palette_rgb, names):
    return names[int(np.argmin(np.linalg.norm(palette_rgb - rgb, axis=1)))]


def _border_pixels(img):
    b = max(1, min(img.shape[:2]) // 32)
    return np.concatenate([img[:b].reshape(-1, 3), img[-b:].reshape(-1, 3),
                           img[b:-b, :b].reshape(-1, 3), img[b:-b, -b:].reshape(-1, 3)])


def _largest_region(mask):
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _object_window(mask, height, width):
    """Bounds (top, bottom, left, right) of the mask plus a quarter of its size."""
    ys, xs = np.nonzero(mask)
    margin = max(2, (ys.max() - ys.min()) // 4, (xs.max() - xs.min()) // 4)
    return (max(0, ys.min() - margin), min(height, ys.max() + margin + 1),
            max(0, xs.min() - margin), min(width, xs.max() + margin + 1))


def _shape_and_centre(mask, t):
    """Name the shape by redrawing each candidate over the object; also
    return its centroid and its (soft) area.

    ``t`` is the soft coverage (0 at the background colour, 1 at the object
    colour).  Every shape is drawn centred on its centroid, so each candidate
    is redrawn at the object's centroid with the area of the object, and the
    redrawing that differs least from the coverage names the shape.
    """
    top, bottom, left, right = _object_window(mask, *mask.shape)
    near = ndimage.binary_dilation(mask[top:bottom, left:right], iterations=2)
    coverage = np.clip(t[top:bottom, left:right], 0.0, 1.0) * near
    area = float(coverage.sum())
    grid_y, grid_x = np.mgrid[top:bottom, left:right] + 0.5
    cx = float((coverage * grid_x).sum()) / area
    cy = float((coverage * grid_y).sum()) / area

    def mismatch(shape):
        drawn = render_coverage(shape, cx - left, cy - top, radius_for_area(shape, area), bottom - top,
                                right - left)
        return float(np.abs(drawn - coverage).sum())

    return min(SHAPES, key=mismatch), (cx, cy), area


def _size(mask, shape, width, recipe):
    """Size class from the mask's extent (less sensitive to noise than its soft area)."""
    ys, xs = np.nonzero(mask)
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    radius = extent / _UNIT_EXTENTS[shape] / width
    order, thresholds = _size_classes(recipe)
    return order[int(np.searchsorted(thresholds, radius))]


def edge_width(mask, t, shape, area):
    """Width of the object's edge: the pixels near its outline whose soft
    coverage ``t`` lies inside the 10-90% transition, over the length of the
    outline (that of ``shape`` with the object's ``area``), in pixels of an
    ``EDGE_UNIT_WIDTH`` picture.  A sharp, antialiased edge is about one
    pixel wide; blur and noise along the outline widen it."""
    width = mask.shape[1]
    reach = max(2, width // 16)
    near = ndimage.binary_dilation(mask, iterations=reach) & ~ndimage.binary_erosion(mask, iterations=reach)
    band = near & (t > EDGE_LOW) & (t < EDGE_HIGH)
    return float(band.sum()) / outline_length(shape, radius_for_area(shape, area)) * EDGE_UNIT_WIDTH / width


def _position(cx, cy, height, width):
    dx, dy = cx / width - 0.5, cy / height - 0.5
    if max(abs(dx), abs(dy)) < _CENTRE_LIMIT:
        return "center"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "bottom" if dy > 0 else "top"


def _find_object(pixels):
    """(background colour, object colour, soft coverage, object mask) of a
    float RGB picture; the last ones None where no object is found.

    The background is the median border colour, the object colour the
    median of the pixels far from it (then of the object's interior, which
    noise around a generated object cannot reach).  The soft coverage says
    where each pixel lies from the background colour (0) to the object
    colour (1); the object is its largest region past half-way."""
    bg_rgb = np.median(_border_pixels(pixels), axis=0)
    offset = pixels - bg_rgb
    far = np.linalg.norm(offset, axis=2) > _FAR_DISTANCE
    if far.sum() < MIN_OBJECT_PIXELS:
        return bg_rgb, None, None, None
    obj_rgb = np.median(pixels[far], axis=0)
    direction = obj_rgb - bg_rgb
    span = float(direction @ direction)
    t = (offset @ direction) / span if span > 1.0 else far.astype(np.float32)
    mask = _largest_region(t > 0.5)
    if mask.sum() < MIN_OBJECT_PIXELS:
        return bg_rgb, obj_rgb, None, None
    interior = ndimage.binary_erosion(mask)
    core = interior if interior.sum() >= MIN_OBJECT_PIXELS else mask
    return bg_rgb, np.median(pixels[core], axis=0), t, mask


def measure_one(img, recipe=DEFAULT_RECIPE):
    """The attributes of one uint8 RGB picture of a ``recipe`` dataset, and
    its ``edge_width``, as a dict (None where no object is found)."""
    pixels = np.asarray(img, dtype=np.float32)
    height, width = pixels.shape[:2]
    bg_rgb, obj_rgb, t, mask = _find_object(pixels)
    result = {"background": _nearest(bg_rgb, _BG_RGB, _BG_NAMES),
              "color": None if obj_rgb is None else _nearest(obj_rgb, _COLOR_RGB, _COLOR_NAMES),
              "shape": None, "size": None, "position": None, "edge_width": None}
    if mask is None:
        return result
    shape, (cx, cy), area = _shape_and_centre(mask, t)
    result["shape"] = shape
    result["size"] = _size(mask, shape, width, recipe)
    result["position"] = _position(cx, cy, height, width)
    result["edge_width"] = edge_width(mask, t, shape, area)
    return result


def redraw(img, shape):
    """``img`` (uint8 RGB) with its object replaced by a sharp ``shape`` at
    the object's centroid, with its area and its colours (float32 RGB in
    0..255); None where no object is found."""
    pixels = np.asarray(img, dtype=np.float32)
    bg_rgb, obj_rgb, t, mask = _find_object(pixels)
    if mask is None:
        return None
    _, (cx, cy), area = _shape_and_centre(mask, t)
    coverage = render_coverage(shape, cx, cy, radius_for_area(shape, area), *mask.shape)
    return bg_rgb + coverage[..., None] * (obj_rgb - bg_rgb)


def measure(images, recipe=DEFAULT_RECIPE):
    """Measure a batch of uint8 RGB pictures (N, H, W, 3) of a ``recipe``
    dataset: one attribute dict each."""
    images = [np.asarray(img) for img in images]
    for img in images:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected uint8 RGB pictures (H, W, 3), got {img.dtype} {img.shape}; "
                             "convert generator output with ((x + 1) * 127.5).round().clip(0, 255)")
    return [measure_one(img, recipe) for img in images]


_VOCABULARY = {
    "shape": {w: w for w in SHAPES},
    "color": {w: w for w in COLORS},
    "background": {w: w for w in BACKGROUNDS},
    "size": {word: size for size, words in SIZE_WORDS.items() for word in words},
}
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)?")


def caption_attributes(caption):
    """{attribute: value} for the attributes ``caption`` names (by the
    words of the captions' templates)."""
    words = _WORD.findall(caption.lower())
    found = {}
    for attribute, vocabulary in _VOCABULARY.items():
        values = {vocabulary[w] for w in words if w in vocabulary}
        if len(values) == 1:
            found[attribute] = values.pop()
    return found


def score(pred, truth, attributes=SCORED_ATTRIBUTES):
    """Fraction of pictures whose measured attribute equals the true one, per attribute."""
    if len(pred) != len(truth):
        raise ValueError(f"{len(pred)} predictions for {len(truth)} pictures")
    if not truth:
        raise ValueError("nothing to score")
    return {a: sum(p.get(a) == t[a] for p, t in zip(pred, truth)) / len(truth) for a in attributes}


def chance_levels(attributes=SCORED_ATTRIBUTES, recipe=DEFAULT_RECIPE):
    """Accuracy of uniform guessing among a ``recipe`` dataset's values, per attribute."""
    return {a: 1.0 / len(recipe.values(a)) for a in attributes}

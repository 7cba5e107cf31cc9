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
  named by thresholds between the generator's radii;
* position: the direction of the object's centroid from the picture centre
  (measured, but not scored by default: see ``SCORED_ATTRIBUTES``).

Real pictures are 76 or 304 px wide, generated ones are 64 or 256 px crops
of the same scenes, so objects look up to 76/64 times larger in the latter;
the size and position thresholds sit between the classes at both scales.

All palettes, shapes and sizes come from ``data/generate_shapes.py``.
"""

import math

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from misc.data.formats import LR_IMAGE_SIZE, LR_LOAD_SIZE
from misc.data.shapes import BACKGROUNDS, COLORS, POSITION_OFFSET, POSITIONS, SHAPES, SIZES, draw_shape

# Position is measured too but not scored by default: training flips images
# left-right, so "left" and "right" are not something a model can learn.
SCORED_ATTRIBUTES = ("shape", "color", "background", "size")
ALL_ATTRIBUTES = SCORED_ATTRIBUTES + ("position",)
ATTRIBUTE_VALUES = {"shape": tuple(SHAPES), "color": tuple(COLORS),
                    "background": tuple(BACKGROUNDS), "size": tuple(SIZES),
                    "position": tuple(POSITIONS)}

CROP_SCALE = LR_LOAD_SIZE / LR_IMAGE_SIZE  # how much larger objects look in a training crop
MIN_OBJECT_PIXELS = 4

_BG_NAMES = list(BACKGROUNDS)
_BG_RGB = np.array([BACKGROUNDS[n] for n in _BG_NAMES], dtype=np.float32)
_COLOR_NAMES = list(COLORS)
_COLOR_RGB = np.array([COLORS[n] for n in _COLOR_NAMES], dtype=np.float32)
# A pixel is "far" from the background when it is more than half-way to the
# nearest object colour any background can carry.
_FAR_DISTANCE = 0.5 * float(np.min(np.linalg.norm(_BG_RGB[:, None] - _COLOR_RGB[None], axis=2)))


def _size_thresholds():
    """Radius limits between consecutive size classes, valid at both scales."""
    radii = sorted(SIZES.values())
    return [math.sqrt(a * b * CROP_SCALE) for a, b in zip(radii, radii[1:])]


_SIZE_ORDER = sorted(SIZES, key=SIZES.get)
_SIZE_THRESHOLDS = _size_thresholds()
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
    """Name the shape by redrawing each candidate over the object; also return its centroid.

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
        radius = math.sqrt(area / _UNIT_AREAS[shape])
        drawn = render_coverage(shape, cx - left, cy - top, radius, bottom - top, right - left)
        return float(np.abs(drawn - coverage).sum())

    return min(SHAPES, key=mismatch), (cx, cy)


def _size(mask, shape, width):
    """Size class from the mask's extent (less sensitive to noise than its soft area)."""
    ys, xs = np.nonzero(mask)
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    radius = extent / _UNIT_EXTENTS[shape] / width
    return _SIZE_ORDER[int(np.searchsorted(_SIZE_THRESHOLDS, radius))]


def _position(cx, cy, height, width):
    dx, dy = cx / width - 0.5, cy / height - 0.5
    if max(abs(dx), abs(dy)) < _CENTRE_LIMIT:
        return "center"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "bottom" if dy > 0 else "top"


def measure_one(img):
    """The attributes of one uint8 RGB picture as a dict (None where no object is found)."""
    pixels = np.asarray(img, dtype=np.float32)
    height, width = pixels.shape[:2]
    bg_rgb = np.median(_border_pixels(pixels), axis=0)
    result = {"background": _nearest(bg_rgb, _BG_RGB, _BG_NAMES),
              "color": None, "shape": None, "size": None, "position": None}

    offset = pixels - bg_rgb
    far = np.linalg.norm(offset, axis=2) > _FAR_DISTANCE
    if far.sum() < MIN_OBJECT_PIXELS:
        return result
    obj_rgb = np.median(pixels[far], axis=0)
    result["color"] = _nearest(obj_rgb, _COLOR_RGB, _COLOR_NAMES)  # refined below

    # Soft coverage: where each pixel lies from the background colour (0) to
    # the object colour (1); the object is the largest region past half-way.
    direction = obj_rgb - bg_rgb
    span = float(direction @ direction)
    t = (offset @ direction) / span if span > 1.0 else far.astype(np.float32)
    mask = _largest_region(t > 0.5)
    if mask.sum() < MIN_OBJECT_PIXELS:
        return result

    # Name the colour from the object's own interior, which noise around a
    # generated object cannot reach.
    interior = ndimage.binary_erosion(mask)
    core = interior if interior.sum() >= MIN_OBJECT_PIXELS else mask
    result["color"] = _nearest(np.median(pixels[core], axis=0), _COLOR_RGB, _COLOR_NAMES)

    shape, (cx, cy) = _shape_and_centre(mask, t)
    result["shape"] = shape
    result["size"] = _size(mask, shape, width)
    result["position"] = _position(cx, cy, height, width)
    return result


def measure(images):
    """Measure a batch of uint8 RGB pictures (N, H, W, 3): one attribute dict each."""
    images = [np.asarray(img) for img in images]
    for img in images:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected uint8 RGB pictures (H, W, 3), got {img.dtype} {img.shape}; "
                             "convert generator output with ((x + 1) * 127.5).round().clip(0, 255)")
    return [measure_one(img) for img in images]


def score(pred, truth, attributes=SCORED_ATTRIBUTES):
    """Fraction of pictures whose measured attribute equals the true one, per attribute."""
    if len(pred) != len(truth):
        raise ValueError(f"{len(pred)} predictions for {len(truth)} pictures")
    if not truth:
        raise ValueError("nothing to score")
    return {a: sum(p.get(a) == t[a] for p, t in zip(pred, truth)) / len(truth) for a in attributes}


def chance_levels(attributes=SCORED_ATTRIBUTES):
    """Accuracy of uniform guessing for each attribute."""
    return {a: 1.0 / len(ATTRIBUTE_VALUES[a]) for a in attributes}

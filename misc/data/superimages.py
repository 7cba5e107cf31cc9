"""The reference's sample sheets ("super-images").

Stage-II sheet (evaluation and demo): a 128-pixel caption strip on top; then
rows of up to 8 samples: a row of Stage-I samples (upsampled to the Stage-II
size) above a row of the Stage-II samples of the same noise, labelled
"Stage-I" / "Stage-II" in the left margin; evaluation sheets start each row
with the real image and a 20-pixel gap.  More than 8 samples continue in a
second block, 64 pixels further down.

Stage-I sheet: one row, [real image,] samples, with an optional caption strip.

Images come in as [-1, 1] floats (model outputs) or uint8.  The reference
min-max stretched each sample when saving (a side effect of scipy's
imresize/imsave); we map [-1, 1] to [0, 255] directly.
"""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from misc.data.atomic import write_text
from misc.data.images import resize, to_uint8

SAMPLES_PER_ROW = 8
CAPTION_STRIP = 128
BLOCK_GAP = 64
REAL_GAP = 20
FONT_SIZE = 50
WRAP_AT = 60  # the reference breaks captions at the first space after 60 characters


def font(size=FONT_SIZE):
    """A scalable font that ships with Pillow (its bitmap font without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def as_uint8(image):
    image = np.asarray(image)
    return image if image.dtype == np.uint8 else to_uint8(image)


def split_caption(caption):
    """One or two lines, broken at the first space after WRAP_AT characters."""
    cut = caption.find(" ", WRAP_AT)
    return [caption] if cut == -1 else [caption[:cut], caption[cut + 1:]]


def draw_text(image, lines_at, size=FONT_SIZE):
    """Draw white text; ``lines_at``: [((x, y), text), ...]."""
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    face = font(size)
    for position, text in lines_at:
        draw.text(position, text, font=face, fill=(255, 255, 255))
    return np.asarray(picture)


def _caption_lines(caption, x):
    return [((x, 10 + 50 * i), line) for i, line in enumerate(split_caption(caption))]


def stage_ii_sheet(lr_samples, hr_samples, caption="", real=None):
    """Sheet for one caption: ``lr_samples``/``hr_samples`` are lists of
    Stage-I (s x s) and Stage-II (4s x 4s) images of the same noise;
    ``real`` (4s x 4s) adds the real image to every row (evaluation)."""
    hr = [as_uint8(x) for x in hr_samples]
    size = hr[0].shape[0]
    lr = [resize(as_uint8(x), size) for x in lr_samples]
    blank = np.zeros_like(hr[0])
    lead = [blank] if real is None else [blank, as_uint8(real), np.zeros((size, REAL_GAP, 3), np.uint8)]
    blocks = []
    for start in range(0, len(hr), SAMPLES_PER_ROW):
        top = np.concatenate(lead + lr[start:start + SAMPLES_PER_ROW], axis=1)
        bottom = np.concatenate(lead + hr[start:start + SAMPLES_PER_ROW], axis=1)
        blocks.append(np.concatenate([top, bottom], axis=0))
    width = blocks[0].shape[1]
    parts = [np.zeros((CAPTION_STRIP, width, 3), np.uint8)]
    labels = []
    y = CAPTION_STRIP
    for index, block in enumerate(blocks):
        if index:
            parts.append(np.zeros((BLOCK_GAP, width, 3), np.uint8))
            y += BLOCK_GAP
        padded = np.zeros((block.shape[0], width, 3), np.uint8)
        padded[:, :block.shape[1]] = block
        parts.append(padded)
        labels += [((10, y), "Stage-I"), ((10, y + size), "Stage-II")]
        y += block.shape[0]
    sheet = np.concatenate(parts, axis=0)
    return draw_text(sheet, _caption_lines(caption, size) + labels)


def stage_i_sheet(samples, caption=None, real=None):
    """One row: [real image,] samples; a caption strip on top when given."""
    row = ([as_uint8(real)] if real is not None else []) + [as_uint8(x) for x in samples]
    sheet = np.concatenate(row, axis=1)
    if caption is None:
        return sheet
    strip = np.zeros((CAPTION_STRIP // 2, sheet.shape[1], 3), np.uint8)
    lines = [((4, 4 + 24 * i), line) for i, line in enumerate(split_caption(caption))]
    return np.concatenate([draw_text(strip, lines, size=20), sheet], axis=0)


def write_captions(captions, path):
    """The captions of a preview's rows, as the reference's text summary."""
    write_text("".join(f"\n***row {r}***\n{c}" for r, c in enumerate(captions)), path)

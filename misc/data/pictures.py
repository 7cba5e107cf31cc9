"""Reading picture files that may be hostile or broken.

Pillow decodes a picture into width x height pixels whatever the file's
size, so a few hundred bytes of PNG can claim 20000x20000 pixels (a
"decompression bomb").  Pillow warns above ``Image.MAX_IMAGE_PIXELS``
(89,478,485 pixels, 256 MiB of RGB) and refuses above twice that; here both
are a one-line ``PictureError`` naming the file and its size, found from the
header before any pixel is decoded.  A file Pillow cannot read, or whose
data ends early, is a one-line ``PictureError`` too.
"""

import contextlib
import re
import warnings

from PIL import Image

from misc.config import DatasetError


class PictureError(DatasetError):
    """A picture file that cannot be read; names the file and the fix."""


_PIXELS = re.compile(r"\((\d+) pixels\)")


def open_picture(path, fix="", error=PictureError):
    """``Image.open(path)`` (the header only), refusing a picture above
    Pillow's decompression-bomb limit and a file Pillow cannot read with a
    one-line ``error`` (a ``PictureError``); ``fix`` ends the message (what
    the user should do)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = _PIXELS.search(str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "more pixels than that"
        raise error(
            f"{path}: {size}, above Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} "
            f"pixels; refused without decoding it.{' ' + fix if fix else ''}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise error(_unreadable(path, exc, fix)) from None


@contextlib.contextmanager
def decoded_picture(path, fix="", error=PictureError):
    """``open_picture`` for a block that decodes the picture (``load``,
    ``convert``): a decoding failure there (a truncated or damaged file) is
    an ``error`` too."""
    image = open_picture(path, fix, error)
    try:
        with image:
            yield image
    except (OSError, SyntaxError, ValueError) as exc:
        raise error(_unreadable(path, exc, fix)) from None


def _unreadable(path, exc, fix):
    detail = " ".join(str(exc).split())[:200]
    return f"{path}: not a readable picture ({detail}).{' ' + fix if fix else ''}"

"""Build the CUB-200-2011 (birds) image pickles from the original photographs.

Usage, from the repository root::

    python -m misc.commands.preprocess_birds [--data-dir data/birds]

Expects ``<data-dir>/CUB_200_2011/`` (the Caltech-UCSD Birds-200-2011
archive) and ``<data-dir>/{train,test}/filenames.pickle`` (from the
preprocessed char-CNN-RNN embeddings archive).  Each listed photograph is
cropped around its bounding box, resized to 304 and 76 px, and written to
``<data-dir>/<split>/304images.pickle`` and ``76images.pickle``.
"""

import os

from misc.commands.common import ArgumentParser, run_main
from misc.data.preprocessing import MissingDataError, convert_dataset, require_path

CUB_HINT = ("download CUB_200_2011.tgz (Caltech-UCSD Birds-200-2011) and extract it "
            "into {data_dir}")
EMBEDDINGS_HINT = ("download the StackGAN char-CNN-RNN text embeddings for birds "
                   "(birds.zip) and extract it so that {data_dir}/train and "
                   "{data_dir}/test hold filenames.pickle")


def _read_columns(path, width):
    """Split a whitespace-separated text file into lists of ``width``
    fields, skipping blank lines; a shorter line is a one-line error."""
    with open(path, encoding="utf-8", errors="replace") as f:
        rows = [(number, line.split()) for number, line in enumerate(f, start=1) if line.strip()]
    for number, fields in rows:
        if len(fields) < width:
            raise MissingDataError(f"{path}: line {number} has {len(fields)} field(s), expected {width}; "
                                   "re-extract CUB_200_2011.tgz")
    return [fields for _, fields in rows]


def read_bounding_boxes(cub_dir):
    """Map each image key (relative path without ``.jpg``) to ``[x, y, w, h]`` ints.

    ``images.txt`` holds ``<id> <relative path>`` and ``bounding_boxes.txt``
    ``<id> <x> <y> <width> <height>``; the two are joined on the id.  Box
    values may be written as floats and are truncated to int.
    """
    paths = {fields[0]: fields[1] for fields in _read_columns(os.path.join(cub_dir, "images.txt"), 2)}
    boxes_path = os.path.join(cub_dir, "bounding_boxes.txt")
    boxes = {}
    for fields in _read_columns(boxes_path, 5):
        image_id, values = fields[0], fields[1:5]
        if image_id in paths:
            key = os.path.splitext(paths[image_id])[0]
            try:
                boxes[key] = [int(float(v)) for v in values]
            except (ValueError, OverflowError):
                raise MissingDataError(f"{boxes_path}: the box of image {image_id} ({' '.join(values)}) "
                                       "is not four numbers; re-extract CUB_200_2011.tgz") from None
    return boxes


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/birds",
                        help="folder holding CUB_200_2011/, train/ and test/ (default: data/birds)")
    return parser.parse_args(argv)


def main(argv=None):
    data_dir = parse_args(argv).data_dir
    cub_dir = os.path.join(data_dir, "CUB_200_2011")
    cub_hint = CUB_HINT.format(data_dir=data_dir)
    for name in ("images.txt", "bounding_boxes.txt", "images"):
        require_path(os.path.join(cub_dir, name), cub_hint)

    boxes = read_bounding_boxes(cub_dir)
    boxes_path = os.path.join(cub_dir, "bounding_boxes.txt")

    def bbox_for_key(key):
        if key not in boxes:
            raise MissingDataError(f"{boxes_path} has no bounding box for image '{key}': {cub_hint}")
        return boxes[key]

    convert_dataset(data_dir,
                    image_path_for_key=lambda key: os.path.join(cub_dir, "images", key + ".jpg"),
                    bbox_for_key=bbox_for_key,
                    embeddings_hint=EMBEDDINGS_HINT.format(data_dir=data_dir))


def cli(argv=None):
    run_main(main, argv)


if __name__ == "__main__":
    cli()

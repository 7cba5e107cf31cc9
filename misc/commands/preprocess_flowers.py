"""Build the Oxford-102 (flowers) image pickles from the original photographs.

Usage, from the repository root::

    python -m misc.commands.preprocess_flowers [--data-dir data/flowers]

Expects ``<data-dir>/jpg/`` (the Oxford 102 Category Flower images) and
``<data-dir>/{train,test}/filenames.pickle`` (from the preprocessed
char-CNN-RNN embeddings archive), whose keys look like ``jpg/image_06734``.
Each listed photograph is resized (no crop) to 304 and 76 px and written to
``<data-dir>/<split>/304images.pickle`` and ``76images.pickle``.
"""

import os

from misc.commands.common import ArgumentParser, run_main
from misc.data.preprocessing import convert_dataset, require_path

IMAGES_HINT = ("download 102flowers.tgz (Oxford 102 Category Flower Dataset) and extract "
               "it into {data_dir} so that {data_dir}/jpg/image_00001.jpg exists")
EMBEDDINGS_HINT = ("download the StackGAN char-CNN-RNN text embeddings for flowers "
                   "(flowers.zip) and extract it so that {data_dir}/train and "
                   "{data_dir}/test hold filenames.pickle")


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/flowers",
                        help="folder holding jpg/, train/ and test/ (default: data/flowers)")
    return parser.parse_args(argv)


def main(argv=None):
    data_dir = parse_args(argv).data_dir
    require_path(os.path.join(data_dir, "jpg"), IMAGES_HINT.format(data_dir=data_dir))
    convert_dataset(data_dir,
                    image_path_for_key=lambda key: os.path.join(data_dir, key + ".jpg"),
                    embeddings_hint=EMBEDDINGS_HINT.format(data_dir=data_dir))


def cli(argv=None):
    run_main(main, argv)


if __name__ == "__main__":
    cli()

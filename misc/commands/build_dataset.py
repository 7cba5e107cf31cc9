"""Build a StackGAN dataset from a folder of captioned pictures.

    python data/build_dataset.py --images DIR --out data/<name> [--captions DIR] [--labels FILE]
        [--split classes|images] [--test-fraction 0.2] [--seed 0] [--force]

DIR holds the pictures, each in a sub-folder named after its class (or
classified by --labels FILE: a line per picture, its path relative to DIR, a
tab, its class), and beside each picture its captions, one per line, in a
file of the same name ending in .txt (or at the same relative path under
--captions DIR).  misc/data/dataset_builder.py says what is checked and
written; docs/own_data.md what comes next.  Exit codes: 0 built, 2 a
one-line error (nothing written), 130 / 143 stopped by SIGINT / SIGTERM
(nothing written).
"""

from misc.commands.common import ArgumentParser, run_main


def parse_args(argv=None):
    from misc.data.dataset_builder import DEFAULT_TEST_FRACTION, SPLIT_MODES

    parser = ArgumentParser(description="Build a StackGAN dataset from a folder of captioned pictures "
                                        "(see the module docstring).")
    parser.add_argument("--images", required=True, help="the folder of pictures (class sub-folders)")
    parser.add_argument("--out", required=True, help="the dataset folder to write, e.g. data/mydata")
    parser.add_argument("--captions", default=None,
                        help="the caption files' folder, laid out as --images (default: beside the pictures)")
    parser.add_argument("--labels", default=None,
                        help="a file of 'picture path<TAB>class' lines, instead of class sub-folders")
    parser.add_argument("--split", choices=SPLIT_MODES, default="classes",
                        help="hold out whole classes (default, as CUB and Oxford-102) or pictures of "
                             "every class")
    parser.add_argument("--test-fraction", "--test_fraction", dest="test_fraction", type=float,
                        default=DEFAULT_TEST_FRACTION,
                        help="fraction of the classes (or pictures) held out "
                             f"(default {DEFAULT_TEST_FRACTION})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("--force", action="store_true", help="replace an existing dataset folder")
    return parser.parse_args(argv)


def main(argv=None):
    """Run the command; returns {split: the pictures' keys}."""
    args = parse_args(argv)
    from misc.data import dataset_builder

    options = {"captions_dir": args.captions, "labels_path": args.labels, "split": args.split,
               "test_fraction": args.test_fraction, "force": args.force}
    dataset_builder.check_arguments(args.images, args.out, **options)
    from misc.commands.startup import start_tensorflow

    start_tensorflow()  # for the progress bar (Keras's)
    return dataset_builder.build(args.images, args.out, seed=args.seed, **options)


def cli(argv=None):
    run_main(main, argv)


if __name__ == "__main__":
    cli()

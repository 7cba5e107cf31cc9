"""Generate the bundled "shapes" dataset (misc/data/shapes.py says what it
holds); training generates it on first use, so this is only needed for
another folder, size or seed.

    python data/generate_shapes.py [--out data/shapes] [--num-train N] [--num-test N] [--seed S]
        [--no-hr] [--force]

The target folder must be new, empty or a dataset this command wrote (it
leaves a ``.shapes_dataset`` marker first); a folder holding anything else
is refused unless ``--force``, a file, FIFO or device always.  Counts are 1
to 20,000 per split, the seed 0 to 2**32 - 1; all is checked before anything
is written.
"""

from misc.commands.common import ArgumentParser, check_range, run_main
from misc.config import MAX_SEED


def parse_args(argv=None):
    from misc.data import shapes

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/shapes", help="dataset folder (default: data/shapes); "
                        "new, empty or a shapes dataset unless --force")
    parser.add_argument("--num-train", type=int, default=shapes.DEFAULT_NUM_TRAIN,
                        help=f"training pictures, 1 to {shapes.MAX_IMAGES:,} "
                             f"(default {shapes.DEFAULT_NUM_TRAIN:,})")
    parser.add_argument("--num-test", type=int, default=shapes.DEFAULT_NUM_TEST,
                        help=f"test pictures, 1 to {shapes.MAX_IMAGES:,} "
                             f"(default {shapes.DEFAULT_NUM_TEST:,})")
    parser.add_argument("--seed", type=int, default=0, help=f"0 to {MAX_SEED} (default 0)")
    parser.add_argument("--no-hr", action="store_true", help="skip the 304 px pickles")
    parser.add_argument("--force", action="store_true",
                        help="write into a folder that holds other files too (files of the dataset's "
                             "names are replaced, nothing else is touched)")
    return parser.parse_args(argv)


def main(argv=None):
    from misc.data import shapes

    args = parse_args(argv)
    check_range("--num-train", args.num_train, 1, shapes.MAX_IMAGES, "training pictures")
    check_range("--num-test", args.num_test, 1, shapes.MAX_IMAGES, "test pictures")
    check_range("--seed", args.seed, 0, MAX_SEED, "it seeds the attributes, jitter and captions")
    shapes.generate_command(args.out, force=args.force, num_train=args.num_train, num_test=args.num_test,
                            seed=args.seed, hr=not args.no_hr)


def cli(argv=None):
    run_main(main, argv)


if __name__ == "__main__":
    cli()

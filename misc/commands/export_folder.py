"""Write a StackGAN dataset out as a folder of captioned pictures, the input
data/build_dataset.py reads (e.g. to rebuild the bundled shapes with whole
classes held out, for the zero-shot figures of docs/own_data.md).

    python -m misc.commands.export_folder --dataset data/shapes --out shapes_pictures

misc.data.dataset_builder.export_folder says what is written.  Exit codes:
0 written, 2 a one-line error.
"""

from misc.commands.common import ArgumentParser, run_main


def parse_args(argv=None):
    parser = ArgumentParser(description="Write a dataset out as a folder of captioned pictures.")
    parser.add_argument("--dataset", required=True, help="a dataset folder, e.g. data/shapes")
    parser.add_argument("--out", required=True, help="the folder to write (must not exist)")
    return parser.parse_args(argv)


def main(argv=None):
    """Run the command; returns how many pictures were written."""
    args = parse_args(argv)
    from misc.data.dataset_builder import export_folder

    return export_folder(args.dataset, args.out)


def cli(argv=None):
    run_main(main, argv)


if __name__ == "__main__":
    cli()

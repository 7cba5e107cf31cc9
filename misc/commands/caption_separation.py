"""How far a text encoder moves a shapes caption when one attribute changes,
and which attribute its nearest class gets right (misc/evaluation/
caption_separation.py defines both figures).

    python -m misc.commands.caption_separation --text-encoder ENC [--dataset data/shapes] [--num 200]

ENC is any ``demo/embed.py --text-encoder``: ``hash`` (the bundled encoder),
a ``text_encoder.keras`` of misc/commands/train_text_encoder.py or its run
folder, or the authors' ``.t7``.  Exit codes: 0 measured, 2 a one-line error.
"""

import os

from misc.commands.common import ArgumentParser, check_range, run_main


def parse_args(argv=None):
    parser = ArgumentParser(description="Cosine distances between shapes captions that differ in one "
                                        "attribute (see the module docstring).")
    parser.add_argument("--text-encoder", "--text_encoder", dest="text_encoder", required=True,
                        help="hash, a text_encoder.keras or its run folder, or the authors' .t7")
    parser.add_argument("--dataset", default=os.path.join("data", "shapes"), help="default: data/shapes")
    parser.add_argument("--num", type=int, default=200, help="test images whose captions are used (200)")
    return parser.parse_args(argv)


def main(argv=None):
    """Run the command; returns the figures (``measure``'s)."""
    args = parse_args(argv)
    check_range("--num", args.num, 1, what="test images")
    from misc.commands.startup import start_tensorflow

    start_tensorflow()
    from misc.evaluation.caption_separation import measure

    return measure(args.text_encoder, args.dataset, args.num)


def cli(argv=None):
    run_main(main, argv)


if __name__ == "__main__":
    cli()

"""Measure StackGAN training speed (misc/training/benchmark.py says how):
seconds per iteration, images per second, the fraction of time spent waiting
for data, peak host and GPU memory.

    python -m misc.commands.benchmark --cfg stageI/cfg/birds.yml [--stage 1|2]
        [--steps 20] [--warmup 3] [--gpu 0[,1]] [--batch-size N]
        [--num-images N] [--embedding-dim 1024] [--data]
        [--xla auto|on|off] [--precision P] [--json OUT]

Two settings (or two git revisions) side by side, alternating single
iterations: ``python -m misc.commands.compare``.  Exit code 1 when ``--xla
on`` does not compile.
"""

import argparse

from misc.commands.common import ArgumentParser, add_step_arguments, run_main
from misc.data.formats import TEXT_EMBEDDING_DIM

BIRDS_TRAIN_IMAGES = 8855  # CUB-200 training split, the reference dataset
# Synthetic data is held in memory: 20,000 images are 5.5 GB at 304 px.
MAX_SYNTHETIC_IMAGES = 20_000
MAX_EMBEDDING_DIM = 8192  # skip-thought vectors have 4800


def parse_args(argv=None):
    parser = ArgumentParser(
        description="Measure StackGAN training speed (seconds per iteration, images per "
                    "second, input-pipeline wait, peak memory) on synthetic or real data.")
    parser.add_argument("--cfg", dest="cfg_file", required=True,
                        help="YAML config file (e.g. stageI/cfg/birds.yml)")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=None,
                        help="1 or 2 (default: 2 when CONFIG_NAME starts with 'stageII', else 1)")
    parser.add_argument("--steps", type=_positive(), default=20, help="measured steps (default 20)")
    parser.add_argument("--warmup", type=_positive(), default=3,
                        help="unmeasured steps first, the first of which traces and compiles "
                             "(default 3, at least 1)")
    parser.add_argument("--gpu", default=None,
                        help="GPU id(s), e.g. 0 or 0,1 (default: all visible GPUs; CPU when none)")
    parser.add_argument("--batch-size", type=_positive(), default=None,
                        help="global batch size (default: TRAIN.BATCH_SIZE)")
    parser.add_argument("--num-images", type=_positive(MAX_SYNTHETIC_IMAGES), default=BIRDS_TRAIN_IMAGES,
                        help=f"synthetic images held in memory (default {BIRDS_TRAIN_IMAGES}, "
                             "the birds training split)")
    parser.add_argument("--embedding-dim", type=_positive(MAX_EMBEDDING_DIM), default=TEXT_EMBEDDING_DIM,
                        help=f"synthetic text-embedding size (default {TEXT_EMBEDDING_DIM}, char-CNN-RNN)")
    parser.add_argument("--data", action="store_true",
                        help="use the configured dataset (DATA_DIR/DATASET_NAME) instead of "
                             "synthetic data")
    add_step_arguments(parser)
    parser.add_argument("--json", dest="json_out", default=None,
                        help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def _positive(most=None):
    """An argparse type: a whole number from 1 (to ``most``)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1 or (most is not None and value > most):
            bounds = "of at least 1" if most is None else f"from 1 to {most:,}"
            raise argparse.ArgumentTypeError(f"{text}: give a whole number {bounds}")
        return value

    return parse


def main(argv=None, strategy=None):
    """The command; returns the figures.  ``strategy`` replaces
    ``make_strategy`` (for tests)."""
    args = parse_args(argv)
    from misc.data.atomic import check_not_input, check_writable

    if args.json_out:
        check_writable(args.json_out, "--json")
        check_not_input(args.json_out, [args.cfg_file], "--json")
    from misc.commands.startup import start_tensorflow

    start_tensorflow()
    from misc.training import benchmark

    return benchmark.run(args, session(args, strategy))


def session(args, strategy=None):
    """The ``misc.training.benchmark.Session`` of the parsed options
    ``args`` (TensorFlow started)."""
    from misc.commands.common import load_run_config, typed_names
    from misc.commands.stages import build_stage_gan, stage_of
    from misc.training.benchmark import Session

    config = load_run_config(args)
    if args.batch_size is not None:
        config.TRAIN.BATCH_SIZE = args.batch_size
    return Session(args, config, args.stage or stage_of(config), build_stage_gan, names=typed_names(args),
                   strategy=strategy)


def cli(argv=None):
    result = run_main(main, argv)
    if result.get("status") != "ok":
        raise SystemExit(1)


if __name__ == "__main__":
    cli()

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

from misc.commands.common import (
    ArgumentParser,
    add_device_arguments,
    load_run_config,
    positive_int,
    run_main,
    typed_names,
)
from misc.config import stage_of
from misc.data.formats import TEXT_EMBEDDING_DIM

BIRDS_TRAIN_IMAGES = 8855  # CUB-200 training split, the reference dataset
# Synthetic data is held in memory: 20,000 images are 5.5 GB at 304 px.
MAX_SYNTHETIC_IMAGES = 20_000
MAX_EMBEDDING_DIM = 8192  # skip-thought vectors have 4800


def parser(prog=None):
    """The benchmark's options (``prog``: the name its errors give)."""
    parser = ArgumentParser(
        prog=prog,
        description="Measure StackGAN training speed (seconds per iteration, images per "
                    "second, input-pipeline wait, peak memory) on synthetic or real data.")
    parser.add_argument("--cfg", dest="cfg_file", required=True,
                        help="YAML config file (e.g. stageI/cfg/birds.yml)")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=None,
                        help="1 or 2 (default: 2 when CONFIG_NAME starts with 'stageII', else 1)")
    parser.add_argument("--steps", type=positive_int(), default=20, help="measured steps (default 20)")
    parser.add_argument("--warmup", type=positive_int(), default=3,
                        help="unmeasured steps first, the first of which traces and compiles "
                             "(default 3, at least 1)")
    parser.add_argument("--batch-size", type=positive_int(), default=None,
                        help="global batch size (default: TRAIN.BATCH_SIZE)")
    parser.add_argument("--num-images", type=positive_int(MAX_SYNTHETIC_IMAGES), default=BIRDS_TRAIN_IMAGES,
                        help=f"synthetic images held in memory (default {BIRDS_TRAIN_IMAGES}, "
                             "the birds training split)")
    parser.add_argument("--embedding-dim", type=positive_int(MAX_EMBEDDING_DIM), default=TEXT_EMBEDDING_DIM,
                        help=f"synthetic text-embedding size (default {TEXT_EMBEDDING_DIM}, char-CNN-RNN)")
    parser.add_argument("--data", action="store_true",
                        help="use the configured dataset (DATA_DIR/DATASET_NAME) instead of "
                             "synthetic data")
    add_device_arguments(parser)
    parser.add_argument("--json", dest="json_out", default=None,
                        help="also write the figures to this JSON file")
    return parser


def parse_args(argv=None):
    return parser().parse_args(argv)


def main(argv=None, strategy=None):
    """The command; returns the figures.  ``strategy`` replaces
    ``make_strategy`` (for tests)."""
    args = parse_args(argv)
    config = run_config(args)
    if args.json_out:
        from misc.data.atomic import check_not_input, check_writable

        check_writable(args.json_out, "--json")
        check_not_input(args.json_out, [args.cfg_file], "--json")
    from misc.commands.startup import start_tensorflow

    start_tensorflow()
    from misc.training import benchmark

    return benchmark.run(args, session(args, config, strategy))


def run_config(args):
    """The config measured: --cfg with the options' overrides."""
    config = load_run_config(args)
    if args.batch_size is not None:
        config.TRAIN.BATCH_SIZE = args.batch_size
    return config


def session(args, config=None, strategy=None):
    """The ``misc.training.benchmark.Session`` of the parsed options
    ``args`` (TensorFlow started; ``config``: ``run_config(args)``)."""
    from misc.commands.stages import build_stage_gan
    from misc.training.benchmark import Session

    config = run_config(args) if config is None else config
    return Session(args, config, args.stage or stage_of(config), build_stage_gan, names=typed_names(args),
                   strategy=strategy)


def cli(argv=None):
    result = run_main(main, argv)
    if result.get("status") != "ok":
        raise SystemExit(1)


if __name__ == "__main__":
    cli()

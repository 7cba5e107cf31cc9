"""Train a char-CNN-RNN text encoder with DS-SJE on a StackGAN dataset, as
Reed et al.'s ``train_sje_hybrid.lua`` did (misc/training/sje_trainer.py says
what is computed and written; misc/config.py's ``text_encoder_config`` the
settings and their defaults).

    python -m misc.commands.train_text_encoder --cfg data/<name>/text_encoder.yml

TRAIN.FLAG True trains (resuming from TRAIN.PRETRAINED_MODEL when set) and
then reports the zero-shot figures on the test split; False only reports
them for TRAIN.PRETRAINED_MODEL.  Exit codes as every command's
(misc/commands/common.py): 0 done, 2 a one-line error, 130 / 143 stopped by
SIGINT / SIGTERM after saving a snapshot.
"""

from misc.commands.common import ArgumentParser, print_config, run_main
from misc.config import load_text_encoder_config


def parse_args(argv=None):
    parser = ArgumentParser(description="Train a char-CNN-RNN text encoder with DS-SJE (see the module "
                                        "docstring).")
    parser.add_argument("--cfg", dest="cfg_file", required=True,
                        help="YAML config, e.g. data/<name>/text_encoder.yml written by "
                             "data/build_dataset.py")
    return parser.parse_args(argv)


def main(argv=None):
    """Run the command; returns the zero-shot figures."""
    args = parse_args(argv)
    config = load_text_encoder_config(args.cfg_file)
    from misc.commands.startup import start_tensorflow

    start_tensorflow()
    from misc.training.sje_trainer import run

    print_config(config)
    return run(config, args.cfg_file)


def cli(argv=None):
    run_main(main, argv)


if __name__ == "__main__":
    cli()

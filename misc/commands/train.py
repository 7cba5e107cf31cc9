"""Train or evaluate a stage: what ``python stageI/run_exp.py`` and
``python stageII/run_exp.py`` run (and ``stackgan-train``, which takes the
stage from --stage or the config's CONFIG_NAME).

    python stageI/run_exp.py --cfg stageI/cfg/birds.yml [--gpu 0[,1]] [--xla auto|on|off] [--precision P]

TRAIN.FLAG True trains (resuming from TRAIN.PRETRAINED_MODEL when set; for
Stage-II, starting from a Stage-I model there); False writes evaluation
sheets for the first caption of every test image to
``<checkpoint>-1real-<n>samples/test/``, as the reference did.
"""

import functools
import os

from misc.commands.common import (
    ArgumentParser,
    add_device_arguments,
    load_run_config,
    print_config,
    run_main,
    typed_names,
)
from misc.config import CheckpointError, load_config, stage_of


def parse_args(argv=None, stage=None):
    what = f"Stage-{'I' * stage}" if stage else "a stage of"
    parser = ArgumentParser(description=f"Train or evaluate {what} StackGAN (TRAIN.FLAG in the config).")
    parser.add_argument("--cfg", dest="cfg_file", default=None, type=str,
                        help="YAML config file merged into the defaults")
    if stage is None:
        parser.add_argument("--stage", type=int, choices=(1, 2), default=None,
                            help="the stage (default: 2 when the config's CONFIG_NAME starts with "
                                 "stageII, else 1)")
    add_device_arguments(parser)
    return parser.parse_args(argv)


def evaluation_dir(path, num_samples):
    """Where the reference wrote evaluation samples: the checkpoint path
    without '.ckpt', then '-1real-<n>samples'."""
    stem = path[:path.find(".ckpt")] if ".ckpt" in path else path
    return f"{stem}-1real-{num_samples}samples"


def evaluate(stage, gan, split, checkpoint_path, config):
    """For the first caption of every test image: a sheet of the real image
    and TRAIN.NUM_COPY (at most MAX_COPIES) samples."""
    import numpy as np

    from misc.data.formats import MAX_COPIES
    from misc.data.images import save_image

    n = min(MAX_COPIES, config.TRAIN.NUM_COPY)
    out_dir = os.path.join(evaluation_dir(checkpoint_path, n), "test")
    batch = config.TRAIN.BATCH_SIZE
    print(f"num_examples: {split.num_examples}; writing samples to {out_dir}")
    for start in range(0, split.num_examples, batch):
        ids = np.arange(start, min(start + batch, split.num_examples))
        for index, sheet in zip(ids, stage.evaluation_sheets(gan, split, ids, n)):
            save_image(sheet, os.path.join(out_dir, f"{split.filenames[index]}_sentence0.jpg"))
    return out_dir


def main(argv=None, stage=None):
    """The command (``stage``: 1 or 2 for the stage's own script)."""
    args = parse_args(argv, stage)
    number = stage or args.stage or stage_of(load_config(args.cfg_file))
    config = load_run_config(args, stage=number)
    from misc.commands.startup import start_tensorflow

    start_tensorflow()
    import keras

    from misc.commands.stages import STAGES
    from misc.data.shapes import load_run_dataset
    from misc.training.acceleration import configure_threads
    from misc.training.devices import check_batch_size, make_strategy
    from misc.training.loop import caption_splits, iterations_per_epoch, train

    spec = STAGES[number]
    print_config(config)
    configure_threads(config)
    keras.utils.set_random_seed(config.SEED)  # the initial weights; data order and noise follow SEED too
    strategy, choices = make_strategy(args.gpu, config, training=config.TRAIN.FLAG, names=typed_names(args))
    pretrained = config.TRAIN.PRETRAINED_MODEL
    start = spec.start_checkpoint(pretrained, args.cfg_file) if pretrained else None
    if config.TRAIN.FLAG:
        check_batch_size(config.TRAIN.BATCH_SIZE, strategy)
        dataset = load_run_dataset(config, hr_lr_ratio=spec.hr_lr_ratio, captions=caption_splits(config))
        iterations_per_epoch(dataset.train, config.TRAIN.BATCH_SIZE)
        gan = spec.build_gan(config, dataset.embedding_shape[0], strategy, choices=choices)
        start_path = None
        if start:
            start_path = spec.restore(gan, start, config, dataset)
        else:
            print(spec.fresh_start)
        train(gan, dataset.train, config,
              make_preview=functools.partial(spec.epoch_preview, gan, dataset, config),
              rate_for=spec.learning_rate_schedule(config), start_path=start_path,
              keep_every_n_hours=spec.keep_every_n_hours)
        return
    if not pretrained:
        raise CheckpointError("TRAIN.FLAG is False (evaluation) but TRAIN.PRETRAINED_MODEL is empty: set it "
                              f"to the {spec.name} checkpoint to evaluate.")
    if start.stage != number:
        other = f"stage{'I' * start.stage}/run_exp.py"
        raise CheckpointError(f"{start.path}: a Stage-{'I' * start.stage} checkpoint; {spec.name} evaluation "
                              f"needs a {spec.name} checkpoint (evaluate it with {other}).")
    dataset = load_run_dataset(config, hr_lr_ratio=spec.hr_lr_ratio, splits=("test",),
                               captions=spec.evaluation_captions)
    gan = spec.build_gan(config, dataset.embedding_shape[0], strategy, choices=choices)
    path = spec.restore(gan, start, config, dataset, "test")
    out_dir = evaluate(spec, gan, dataset.test, path, config)
    print(f"Evaluation samples written to {out_dir}")


def cli(argv=None, stage=None):
    """The console script and the stages' run_exp.py: ``main`` with one-line
    errors and the documented exit codes."""
    run_main(functools.partial(main, stage=stage), argv)


if __name__ == "__main__":
    cli()

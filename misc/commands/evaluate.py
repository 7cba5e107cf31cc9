"""Inception Score (with the authors' evaluation model) and FID of a StackGAN
model, or of a folder of pictures.

    python -m misc.commands.evaluate --cfg stageII/cfg/birds.yml \\
        --checkpoint models/birds_model_164000.ckpt --inception models/inception/birds/model.ckpt-5000
        [--fid-weights classify_image_graph_def.pb]
        [--num-samples N] [--stage 1|2] [--batch-size 64] [--splits 10] [--seed 0] [--json OUT]
    python -m misc.commands.evaluate --images DIR --inception models/inception/birds/model.ckpt-5000
        [--cfg CFG --fid-weights classify_image_graph_def.pb [--real-size 64|256]]

Samples are drawn as the authors drew theirs for the Inception Score: one per
caption of every test image (10 per image for CUB and Oxford-102: 29,330 for
CUB), at the model's final resolution (Stage-II 256x256, Stage-I 64x64; ``--stage
1`` scores the Stage-I pictures of a Stage-II model), noise z ~ N(0, 1) and
truncated-normal conditioning noise, batch norm in inference mode.  Sample i
takes caption i // N of test image i % N (N test images), so a smaller
``--num-samples`` covers the first captions of all images, and a larger one
draws further samples of the same captions.  Samples become uint8 as the
authors saved them, ``(x + 1) * 127.5`` truncated.

The score is the authors' computation (``misc.evaluation.inception``): the images
shuffled (``--seed``), whole batches of ``--batch-size`` scored, ``--splits``
splits, mean and standard deviation.  ``--images DIR`` reads the folder as the
authors' script does (``os.walk`` order, files whose name contains 'jpg' or
'png').  With ``--fid-weights``, FID against the test images (centre crops at
the scored resolution; their statistics are cached beside the dataset, in
``<dataset>/test/fid_statistics_<size>.npz``).

The result is printed as a table and written as JSON to ``--json`` or, by
default, to ``outputs/evaluation/<name>_evaluation.json`` in the current
folder (``<name>``: the checkpoint's run folder and name, or the picture
folder's name).  Every argument and input is checked before the first
picture is drawn or scored: the ranges below, the output (a file, a link to
one, a device or a FIFO, never a folder), the evaluation model's data (read
and checksummed), the checkpoint's, the dataset and every picture of
``--images`` (decoded once).
"""

import os

from misc.commands.common import ArgumentParser, check_range, run_main
from misc.config import MAX_SEED, OUTPUT_ROOT, ConfigError, load_config, parse_gpu_ids
from misc.data.atomic import check_writable
from misc.data.formats import LOAD_SIZES, LR_IMAGE_SIZE
from misc.evaluation.defaults import (
    AUTHORS_BATCH_SIZE,
    AUTHORS_SPLITS,
    JSON_SUFFIX,
    MAX_BATCH_SIZE,
    MAX_SAMPLES,
    OUTPUT_FOLDER,
)


def parse_args(argv=None):
    parser = ArgumentParser(
        description="Inception Score (the authors' evaluation model) and FID of a StackGAN model "
                    "or of a folder of pictures")
    parser.add_argument("--cfg", dest="cfg_file", default=None,
                        help="the model's config (dataset, dimensions); for --images only with FID")
    parser.add_argument("--checkpoint", default=None,
                        help="model to sample: ours (model-<N>, a run or log folder) or the authors' "
                             ".ckpt (default TEST.PRETRAINED_MODEL)")
    parser.add_argument("--images", default=None, help="score the pictures in this folder instead")
    parser.add_argument("--inception", required=True,
                        help="the authors' fine-tuned Inception-v3 checkpoint (model.ckpt-5000)")
    parser.add_argument("--fid-weights", default=None,
                        help="classify_image_graph_def.pb (2015 Inception graph) for FID")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="samples to draw (default: one per caption of every test image; at most "
                             f"{MAX_SAMPLES:,})")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=None,
                        help="score the Stage-I or Stage-II pictures (default: the checkpoint's stage)")
    parser.add_argument("--real-size", type=int, choices=sorted(LR_IMAGE_SIZE * r for r in LOAD_SIZES),
                        default=None, help="FID: size of the test-image centre crops (default: the "
                                           "scored resolution; 256 with --images)")
    parser.add_argument("--batch-size", type=int, default=AUTHORS_BATCH_SIZE,
                        help=f"pictures per scored batch, 1 to {MAX_BATCH_SIZE} "
                             f"(default {AUTHORS_BATCH_SIZE})")
    parser.add_argument("--splits", type=int, default=AUTHORS_SPLITS)
    parser.add_argument("--seed", type=int, default=0,
                        help=f"noise and shuffling, 0 to {MAX_SEED} (default 0)")
    parser.add_argument("--json", dest="json_out", default=None,
                        help="where to write the result (default: " + os.path.join(
                            OUTPUT_ROOT, OUTPUT_FOLDER, "<name>" + JSON_SUFFIX) + ")")
    parser.add_argument("--gpu", default=None, help="GPU id to use (default: the first visible)")
    return parser.parse_args(argv)


def check_arguments(args):
    if args.images and args.checkpoint:
        raise ConfigError("give either --checkpoint (sample a model) or --images (score a folder), "
                          "not both.")
    if not args.images and not args.cfg_file:
        raise ConfigError("--cfg is needed to sample a model (dataset and dimensions); to score a "
                          "folder of pictures give --images DIR.")
    if args.images and args.fid_weights and not args.cfg_file:
        raise ConfigError("FID compares with the test images of a dataset: give --cfg with "
                          "--fid-weights (or leave --fid-weights out).")
    check_range("--batch-size", args.batch_size, 1, MAX_BATCH_SIZE, "pictures scored at once")
    check_range("--splits", args.splits, 1, MAX_SAMPLES, "parts the scored pictures are cut into")
    if args.num_samples is not None:
        check_range("--num-samples", args.num_samples, 1, MAX_SAMPLES, "samples to draw")
    check_range("--seed", args.seed, 0, MAX_SEED, "it seeds the noise and the shuffling")
    if args.images and (args.num_samples or args.stage):
        raise ConfigError("--num-samples and --stage apply to sampling a model, not to --images.")
    if args.gpu is not None:
        parse_gpu_ids(args.gpu)  # checked on a machine without GPUs too
    if args.json_out:
        check_writable(args.json_out, "--json")


def main(argv=None):
    args = parse_args(argv)
    check_arguments(args)
    config = load_config(args.cfg_file) if args.cfg_file else None
    from misc.commands.startup import start_tensorflow

    start_tensorflow()
    from misc.evaluation.scoring import evaluate

    return evaluate(args, config)


def cli(argv=None):
    run_main(main, argv)


if __name__ == "__main__":
    cli()

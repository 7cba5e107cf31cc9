"""What the Stage-I and Stage-II experiments (``stageI/experiment.py``,
``stageII/experiment.py``) share: the command line, the distribution
strategy, the output folder, the training driver around ``keras.Model.fit``,
the evaluation output layout and turning failures into one-line errors."""

import argparse
import datetime
import os
import pprint
import sys

import keras
import numpy as np
import tensorflow as tf

from misc.acceleration import PRECISIONS, XLA_SETTINGS, check_settings, configure_threads, describe
from misc.atomic import write_text
from misc.callbacks import (
    DivergenceGuard,
    EpochEnd,
    FirstStepTime,
    LearningRateSchedule,
    PeriodicSnapshot,
    Progress,
    TensorBoardSummaries,
    TrainingDiverged,
)
from misc.checkpoints import Snapshotter
from misc.config import ConfigError, load_config
from misc.datasets import LR_IMAGE_SIZE, DatasetError
from misc.input_pipeline import training_dataset
from misc.tf1_checkpoint import CheckpointError

USER_ERRORS = (ConfigError, DatasetError, CheckpointError, TrainingDiverged)


def parse_args(description, argv=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg", dest="cfg_file", default=None, type=str,
                        help="YAML config file merged into the defaults")
    parser.add_argument("--gpu", dest="gpu", default=None, type=str,
                        help="GPU id(s) to use, e.g. 0 or 0,1 (default: all visible GPUs; "
                             "CPU when there is none)")
    add_step_arguments(parser)
    return parser.parse_args(argv)


def add_step_arguments(parser):
    """--xla and --precision: override TRAIN.XLA and TRAIN.PRECISION."""
    parser.add_argument("--xla", choices=XLA_SETTINGS, default=None,
                        help="compile the training step with XLA: auto (on CPUs), on, off "
                             "(default: TRAIN.XLA)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="float32, mixed (float16 on GPUs, bfloat16 on CPUs that have it), "
                             "mixed_float16, mixed_bfloat16 (default: TRAIN.PRECISION)")


def load_run_config(args):
    """The config of a run; also seeds the initial weights with SEED (data
    order and noise are seeded from it too), so a run is repeatable.  The
    devices come from --gpu (``make_strategy``), not from GPU_ID."""
    config = load_config(args.cfg_file)
    if args.gpu is not None:
        parse_gpu_ids(args.gpu)  # a bad --gpu fails before anything is printed
    if getattr(args, "xla", None) is not None:
        config.TRAIN.XLA = args.xla
    if getattr(args, "precision", None) is not None:
        config.TRAIN.PRECISION = args.precision
    check_settings(config)
    configure_threads(config)
    keras.utils.set_random_seed(config.SEED)
    return config


def parse_gpu_ids(text):
    try:
        ids = [int(part) for part in str(text).split(",") if part.strip() != ""]
    except ValueError:
        raise ConfigError(f"--gpu {text!r}: give GPU ids such as 0 or 0,1.") from None
    if not ids:
        raise ConfigError(f"--gpu {text!r}: give GPU ids such as 0 or 0,1.")
    return ids


def make_strategy(gpu=None, log=print):
    """MultiWorkerMirroredStrategy when TF_CONFIG describes a cluster,
    MirroredStrategy over the chosen (default: all visible) GPUs, else the
    default single-device strategy."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if gpu is not None:
        wanted = parse_gpu_ids(gpu)
        missing = [i for i in wanted if i >= len(gpus)]
        if missing:
            log(f"warning: GPU {missing} not available ({len(gpus)} visible); "
                "using the available devices.")
        gpus = [gpus[i] for i in wanted if i < len(gpus)]
        if gpus:
            tf.config.set_visible_devices(gpus, "GPU")
    if gpus:
        devices = [f"/gpu:{i}" for i in range(len(gpus))]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def new_log_dir(config, root="ckt_logs"):
    """ckt_logs/<dataset>/<CONFIG_NAME>_<timestamp>/ (created)."""
    stamp = datetime.datetime.now().astimezone().strftime("%Y_%m_%d_%H_%M_%S")
    path = os.path.join(root, config.DATASET_NAME, f"{config.CONFIG_NAME}_{stamp}")
    os.makedirs(path, exist_ok=True)
    return path


def print_config(config):
    print("Using config:")
    pprint.pprint(_plain(config))


def _plain(tree):
    return {k: _plain(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def build_stage_gan(config, stage, embedding_dim, strategy=None, lr_size=LR_IMAGE_SIZE):
    """The trainer of Stage ``stage`` (1 or 2): that stage's ``build_gan``."""
    if stage == 1:
        from stageI.experiment import build_gan
    else:
        from stageII.experiment import build_gan
    return build_gan(config, embedding_dim, strategy, lr_size)


def check_batch_size(batch_size, strategy):
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ConfigError(
            f"TRAIN.BATCH_SIZE {batch_size} must be divisible by the {replicas} replicas "
            "(devices) training together.")


def train(gan, split, config, log_dir, rate_for, preview, keep_every_n_hours=2):
    """Run the reference training loop with ``fit`` from the gan's counter.

    The epoch restarts at ``counter // iterations_per_epoch`` as in the
    reference; snapshots go to ``log_dir``; Ctrl-C saves a snapshot first.
    """
    train_cfg = config.TRAIN
    steps = split.steps_per_epoch(train_cfg.BATCH_SIZE)
    if steps < 1:
        raise ConfigError(
            f"TRAIN.BATCH_SIZE {train_cfg.BATCH_SIZE} is larger than the "
            f"{split.num_examples} training images; lower it.")
    counter = int(gan.counter.numpy())
    first_epoch = counter // steps
    if first_epoch >= train_cfg.MAX_EPOCH:
        print(f"Nothing to train: the model is at epoch {first_epoch} "
              f"(iteration {counter}) and TRAIN.MAX_EPOCH is {train_cfg.MAX_EPOCH}.")
        return None
    dataset = training_dataset(split, train_cfg.BATCH_SIZE, train_cfg.NUM_EMBEDDING,
                               gan.noise_spec(), seed=config.SEED,
                               first_epoch=first_epoch, first_step=counter)
    snapshotter = Snapshotter(gan, log_dir, keep_every_n_hours=keep_every_n_hours)
    writer = tf.summary.create_file_writer(log_dir)
    guard = DivergenceGuard(gan, snapshotter)
    snapshot = PeriodicSnapshot(gan, snapshotter, train_cfg.SNAPSHOT_INTERVAL, guard)
    callbacks = [
        FirstStepTime(gan.jit_compile),
        LearningRateSchedule(gan, rate_for),
        guard,
        snapshot,
        TensorBoardSummaries(gan, writer),
        Progress(),  # before EpochEnd, so the bar's line is finished first
        EpochEnd(gan, lambda epoch: preview(epoch, writer)),
    ]
    print(describe(config, gan.jit_compile, gan.compute_policy()))
    print(f"Training from iteration {counter} (epoch {first_epoch}), "
          f"{steps} iterations per epoch, logs in {log_dir}")
    try:
        gan.fit(dataset, epochs=train_cfg.MAX_EPOCH, initial_epoch=first_epoch,
                steps_per_epoch=steps, callbacks=callbacks, verbose=1, shuffle=False)
    except KeyboardInterrupt:
        path = snapshot.save()
        print(f"\nInterrupted at iteration {int(gan.counter.numpy())}; resume with "
              f"TRAIN.PRETRAINED_MODEL: {path}")
        raise SystemExit(130) from None
    finally:
        writer.close()
    return snapshotter.last_path


def write_captions(captions, path):
    """The captions of a preview's rows, as the reference's text summary."""
    write_text("".join(f"\n***row {r}***\n{c}" for r, c in enumerate(captions)), path)


def evaluation_dir(path, num_samples):
    """Where the reference wrote evaluation samples: the checkpoint path
    without '.ckpt', then '-1real-<n>samples'."""
    stem = path[:path.find(".ckpt")] if ".ckpt" in path else path
    return f"{stem}-1real-{num_samples}samples"


def first_caption_embeddings(split, ids):
    """The embedding of the first caption of each image (evaluation)."""
    emb = split.embeddings[np.asarray(ids)]
    return (emb[:, 0] if emb.ndim == 3 else emb).astype(np.float32)


def run_main(main, argv=None):
    """Run ``main`` and turn expected failures into one-line errors (exit 2)."""
    try:
        main(argv)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except FileNotFoundError as exc:
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(2) from None

"""The Stage-I experiment: build the trainer, start it from a checkpoint,
train it with per-epoch previews, or write evaluation sheets.

``main(argv)`` is what ``python stageI/run_exp.py --cfg ... [--gpu ...]``
runs: TRAIN.FLAG True trains (resuming from TRAIN.PRETRAINED_MODEL when set);
False writes evaluation super-images for the test captions.
"""

import functools
import os

import numpy as np
import tensorflow as tf

from misc import experiment
from misc.acceleration import choose_step, dtype_policy
from misc.checkpoints import check_embedding_dim, describe_checkpoint, restore_native
from misc.datasets import LR_IMAGE_SIZE, load_dataset
from misc.image_utils import save_image, superimage, to_uint8
from misc.reference_import import import_reference_checkpoint
from misc.sampling import MAX_COPIES
from misc.tf1_checkpoint import CheckpointError
from stageI.model import build_stage_i
from stageI.trainer import StageIGAN, learning_rate_schedule


def build_gan(config, embedding_dim, strategy=None, lr_size=LR_IMAGE_SIZE, choices=None):
    """The Stage-I trainer of a config (networks and optimizers) for
    ``lr_size`` images, its variables created under ``strategy`` (default:
    the current one), its step run as ``choices`` say (default: this
    machine's ``choose_step``)."""
    choices = choices or choose_step(config)
    with (strategy or tf.distribute.get_strategy()).scope(), dtype_policy(choices.precision):
        generator, discriminator = build_stage_i(config, embedding_dim, lr_size)
        return StageIGAN.from_config_tree(config, generator, discriminator, jit_compile=choices.xla)


def restore(gan, path, dataset, split="train"):
    """Load TRAIN.PRETRAINED_MODEL (ours or a reference checkpoint)."""
    info = describe_checkpoint(path)
    check_embedding_dim(info, dataset.embedding_shape[0], dataset.embedding_path(split))
    if info.stage != 1:
        raise CheckpointError(f"{info.path}: a Stage-II checkpoint; Stage-I training resumes "
                              "Stage-I checkpoints (sample it with demo/demo.py or evaluate it "
                              "with stageII/run_exp.py).")
    print(f"Reading model parameters from {info.path}")
    if info.kind == "native":
        restore_native(gan, info.path)
    else:
        print(import_reference_checkpoint(gan, info.path, network_type=info.network_type).summary())
    return info.path


def preview_rows(gan, split, n, num_embedding, rng, eps_seed):
    """n rows: a real image, then n samples for its text (z = 0 as the
    reference trainer's sampler).  Returns (superimage, captions or None)."""
    ids = rng.choice(split.num_examples, size=n, replace=split.num_examples < n)
    embeddings, captions = split.sample_embeddings(rng, ids, num_embedding)
    repeated = np.repeat(embeddings.astype(np.float32), n, axis=0)
    eps = tf.random.stateless_truncated_normal((n * n, gan.generator.ef_dim), eps_seed)
    z = tf.zeros((n * n, gan.generator.z_dim))
    fakes = to_uint8(gan.sample(repeated, eps, z))
    reals = split.center_crops(ids)
    rows = [[reals[i]] + list(fakes[i * n:(i + 1) * n]) for i in range(n)]
    return superimage(rows), captions


def epoch_preview(gan, dataset, config, log_dir):
    """train.jpg / test.jpg super-images, test.txt captions, image summaries."""
    n = config.TRAIN.NUM_COPY

    def preview(epoch, writer):
        rng = np.random.default_rng([config.SEED, epoch, 1])
        with writer.as_default(step=int(gan.counter.numpy())):
            for index, (name, split, num_embedding) in enumerate(
                    (("train", dataset.train, config.TRAIN.NUM_EMBEDDING), ("test", dataset.test, 1))):
                image, captions = preview_rows(gan, split, n, num_embedding, rng,
                                               (config.SEED, epoch * 2 + index))
                save_image(image, os.path.join(log_dir, f"{name}.jpg"))
                tf.summary.image(name, image[None])
                if captions is not None:
                    experiment.write_captions(captions, os.path.join(log_dir, f"{name}.txt"))

    return preview


def evaluate(gan, split, checkpoint_path, config):
    """For the first caption of every test image: a real image and NUM_COPY
    (at most MAX_COPIES) samples (random z and eps, inference batch norm) in
    one row."""
    n = min(MAX_COPIES, config.TRAIN.NUM_COPY)
    out_dir = os.path.join(experiment.evaluation_dir(checkpoint_path, n), "test")
    batch = config.TRAIN.BATCH_SIZE
    print(f"num_examples: {split.num_examples}; writing samples to {out_dir}")
    for start in range(0, split.num_examples, batch):
        ids = np.arange(start, min(start + batch, split.num_examples))
        embeddings = experiment.first_caption_embeddings(split, ids)
        samples = [to_uint8(gan.sample(embeddings)) for _ in range(n)]
        reals = split.center_crops(ids)
        for j, index in enumerate(ids):
            row = [reals[j]] + [s[j] for s in samples]
            save_image(superimage([row]),
                       os.path.join(out_dir, f"{split.filenames[index]}_sentence0.jpg"))
    return out_dir


def main(argv=None):
    args = experiment.parse_args("Train or evaluate the Stage-I StackGAN", argv)
    config = experiment.load_run_config(args, stage=1)
    experiment.print_config(config)
    strategy, choices = experiment.make_strategy(args.gpu, config, training=config.TRAIN.FLAG,
                                                 names=experiment.typed_names(args))
    if config.TRAIN.FLAG:
        experiment.check_batch_size(config.TRAIN.BATCH_SIZE, strategy)
        dataset = load_dataset(config, hr_lr_ratio=1, captions=experiment.caption_splits(config))
        experiment.iterations_per_epoch(dataset.train, config.TRAIN.BATCH_SIZE)
        gan = build_gan(config, dataset.embedding_shape[0], strategy, choices=choices)
        start = None
        if config.TRAIN.PRETRAINED_MODEL:
            start = restore(gan, config.TRAIN.PRETRAINED_MODEL, dataset)
        else:
            print("Created model with fresh parameters.")
        experiment.train(gan, dataset.train, config, functools.partial(epoch_preview, gan, dataset, config),
                         learning_rate_schedule(config), start_path=start)
    else:
        if not config.TRAIN.PRETRAINED_MODEL:
            raise CheckpointError("TRAIN.FLAG is False (evaluation) but TRAIN.PRETRAINED_MODEL "
                                  "is empty: set it to the checkpoint to evaluate.")
        dataset = load_dataset(config, hr_lr_ratio=1, splits=("test",))
        gan = build_gan(config, dataset.embedding_shape[0], strategy, choices=choices)
        path = restore(gan, config.TRAIN.PRETRAINED_MODEL, dataset, "test")
        out_dir = evaluate(gan, dataset.test, path, config)
        print(f"Evaluation samples written to {out_dir}")

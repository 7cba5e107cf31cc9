"""The Stage-I experiment, as misc/commands/train.py drives both stages:
build the trainer, start it from a checkpoint, the per-epoch previews and
the evaluation sheets.

``python stageI/run_exp.py --cfg ... [--gpu ...]``: TRAIN.FLAG True trains
(resuming from TRAIN.PRETRAINED_MODEL when set); False writes evaluation
super-images for the test captions.
"""

import os

import numpy as np
import tensorflow as tf

from misc.config import CheckpointError
from misc.data.formats import LR_IMAGE_SIZE
from misc.data.images import save_image, superimage, to_uint8
from misc.data.superimages import write_captions
from misc.reference.importer import import_reference_checkpoint
from misc.training.acceleration import choose_step, dtype_policy
from misc.training.checkpoints import check_embedding_dim, describe_checkpoint, restore_native
from stageI.model import build_stage_i
from stageI.trainer import StageIGAN


def build_gan(config, embedding_dim, strategy=None, lr_size=LR_IMAGE_SIZE, choices=None):
    """The Stage-I trainer of a config (networks and optimizers) for
    ``lr_size`` images, its variables created under ``strategy`` (default:
    the current one), its step run as ``choices`` say (default: this
    machine's ``choose_step``)."""
    choices = choices or choose_step(config)
    with (strategy or tf.distribute.get_strategy()).scope(), dtype_policy(choices.precision):
        generator, discriminator = build_stage_i(config, embedding_dim, lr_size)
        return StageIGAN.from_config_tree(config, generator, discriminator, jit_compile=choices.xla)


def start_checkpoint(path, cfg_file=None):
    """The ``CheckpointInfo`` of TRAIN.PRETRAINED_MODEL, read before any data
    is loaded."""
    return describe_checkpoint(path)


def restore(gan, info, config, dataset, split="train"):
    """Load TRAIN.PRETRAINED_MODEL (its ``CheckpointInfo``; ours or a
    reference checkpoint); returns its path."""
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
                    write_captions(captions, os.path.join(log_dir, f"{name}.txt"))

    return preview


def evaluation_sheets(gan, split, ids, n):
    """For the first caption of test images ``ids``: a row of the real image
    and ``n`` samples (random z and eps, inference batch norm) each."""
    embeddings = split.first_caption_embeddings(ids)
    samples = [to_uint8(gan.sample(embeddings)) for _ in range(n)]
    reals = split.center_crops(ids)
    return [superimage([[reals[j]] + [s[j] for s in samples]]) for j in range(len(ids))]

"""The Stage-II experiment, as misc/commands/train.py drives both stages:
build the trainer, start it from a Stage-I checkpoint or resume a Stage-II
one, the per-epoch previews and the evaluation sheets.

``python stageII/run_exp.py --cfg ... [--gpu ...]``: TRAIN.PRETRAINED_MODEL
names the Stage-I checkpoint to start from (its trainable Stage-I weights
are restored, not its batch-norm statistics, and its iteration counter is
kept, as the reference: docs/reference_quirks.md#q12) or a Stage-II
checkpoint to resume.  TRAIN.FLAG False writes evaluation sheets for the
test captions.
"""

import glob
import os

import numpy as np
import tensorflow as tf

from misc.config import CheckpointError
from misc.data.formats import HR_LR_RATIO, LR_IMAGE_SIZE
from misc.data.images import save_image, superimage, to_uint8
from misc.data.superimages import stage_ii_sheet, write_captions
from misc.reference.importer import import_reference_checkpoint
from misc.training.acceleration import choose_step, dtype_policy
from misc.training.checkpoints import (
    check_embedding_dim,
    copy_trainable_weights,
    describe_checkpoint,
    restore_native,
)
from stageI.model import build_stage_i
from stageI.trainer import StageIGAN
from stageII.model import build_stage_ii
from stageII.trainer import StageIIGAN


def build_gan(config, embedding_dim, strategy=None, lr_size=LR_IMAGE_SIZE, choices=None):
    """The Stage-II trainer of a config (the four networks and five
    optimizers) for ``lr_size`` Stage-I images, its variables created under
    ``strategy`` (default: the current one), its step run as ``choices``
    say (default: this machine's ``choose_step``)."""
    choices = choices or choose_step(config)
    with (strategy or tf.distribute.get_strategy()).scope(), dtype_policy(choices.precision):
        return StageIIGAN.from_config_tree(config, *build_stage_ii(config, embedding_dim, lr_size),
                                           jit_compile=choices.xla)


def start_checkpoint(path, cfg_file):
    """``describe_checkpoint`` of TRAIN.PRETRAINED_MODEL, looked at before
    any data is loaded or generated: where there is no model yet (the path,
    or a model below the folder it names), the one-line error says to train
    Stage-I first, with the command."""
    try:
        return describe_checkpoint(path)
    except CheckpointError:
        if os.path.exists(path) and not os.path.isdir(path) or os.path.exists(path + ".index") or \
                os.path.isdir(path) and glob.glob(os.path.join(path, "**", "checkpoint"), recursive=True):
            raise  # a model is there, but not a usable one: that error says why
    raise CheckpointError(
        f"{path}: no model to start Stage-II from (TRAIN.PRETRAINED_MODEL). Train Stage-I first: "
        f"{stage_i_command(cfg_file)}; Stage-II then starts from its newest snapshot.") from None


def stage_i_command(cfg_file):
    """The Stage-I training command that goes with a Stage-II config:
    stageI/cfg/<the same file name> when there is one."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    name = os.path.basename(cfg_file or "")
    if name and os.path.isfile(os.path.join(root, "stageI", "cfg", name)):
        return f"python stageI/run_exp.py --cfg stageI/cfg/{name}"
    return "python stageI/run_exp.py --cfg <your Stage-I config>"


def restore(gan, info, config, dataset, split="train"):
    """Load TRAIN.PRETRAINED_MODEL (its ``CheckpointInfo``): a Stage-II
    checkpoint resumes everything; a Stage-I checkpoint initialises the
    Stage-I networks' trainable weights and the counter.  Returns its path."""
    embedding_dim = dataset.embedding_shape[0]
    check_embedding_dim(info, embedding_dim, dataset.embedding_path(split))
    print(f"Reading model parameters from {info.path} (Stage-{'I' * info.stage} checkpoint)")
    if info.stage == 2:
        if info.kind == "native":
            restore_native(gan, info.path)
        else:
            print(import_reference_checkpoint(gan, info.path).summary())
    elif info.kind == "native":
        stage_i = StageIGAN(*build_stage_i(config, embedding_dim))
        restore_native(stage_i, info.path, parts=("generator", "discriminator", "counter"))
        copy_trainable_weights(stage_i.generator, gan.generator)
        copy_trainable_weights(stage_i.discriminator, gan.discriminator)
        gan.counter.assign(stage_i.counter)
    else:
        report = import_reference_checkpoint(gan, info.path, trainable_only=True, scopes=("g_net", "d_net"),
                                             optimizer_state=False, network_type=info.network_type)
        print(report.summary())
    return info.path


def epoch_preview(gan, dataset, config, log_dir):
    """lr_fake_{train,test}.jpg and hr_fake_{train,test}.jpg: rows of a real
    image and NUM_COPY samples of its text; test.txt with the captions."""
    n = config.TRAIN.NUM_COPY
    ef, z_dim = gan.hr_generator.ef_dim, gan.generator.z_dim
    lr_size = gan.generator.image_size

    def preview(epoch, writer):
        rng = np.random.default_rng([config.SEED, epoch, 1])
        with writer.as_default(step=int(gan.counter.numpy())):
            for index, (name, split, num_embedding) in enumerate(
                    (("train", dataset.train, config.TRAIN.NUM_EMBEDDING), ("test", dataset.test, 1))):
                ids = rng.choice(split.num_examples, size=n, replace=split.num_examples < n)
                embeddings, captions = split.sample_embeddings(rng, ids, num_embedding)
                repeated = np.repeat(embeddings.astype(np.float32), n, axis=0)
                seed = (config.SEED, epoch * 2 + index)
                keys = [tf.random.experimental.stateless_fold_in(seed, k) for k in range(3)]
                lr, hr = gan.sample(repeated, tf.random.stateless_truncated_normal((n * n, ef), keys[0]),
                                    tf.random.stateless_normal((n * n, z_dim), keys[1]),
                                    tf.random.stateless_truncated_normal((n * n, ef), keys[2]))
                reals = split.center_crops(ids)
                lr_reals = reals[:, ::HR_LR_RATIO, ::HR_LR_RATIO][:, :lr_size, :lr_size]
                for prefix, fakes, real in (("lr", to_uint8(lr), lr_reals), ("hr", to_uint8(hr), reals)):
                    rows = [[real[i]] + list(fakes[i * n:(i + 1) * n]) for i in range(n)]
                    image = superimage(rows)
                    save_image(image, os.path.join(log_dir, f"{prefix}_fake_{name}.jpg"))
                    tf.summary.image(f"{prefix}_{name}", image[None])
                if captions is not None:
                    write_captions(captions, os.path.join(log_dir, f"{name}.txt"))

    return preview


def evaluation_sheets(gan, split, ids, n):
    """For the first caption of test images ``ids``: ``n`` Stage-I and
    Stage-II samples each on the reference's sheet, with the real image and
    the caption."""
    samples = [gan.sample(split.first_caption_embeddings(ids)) for _ in range(n)]
    reals = split.center_crops(ids)
    sheets = []
    for j, index in enumerate(ids):
        captions = split.captions(index)
        sheets.append(stage_ii_sheet([lr[j] for lr, _ in samples], [hr[j] for _, hr in samples],
                                     captions[0] if captions else "", real=reals[j]))
    return sheets

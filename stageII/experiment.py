"""The Stage-II experiment: build the trainer, start it from a Stage-I
checkpoint or resume a Stage-II one, train it with per-epoch previews, or
write evaluation sheets.

``main(argv)`` is what ``python stageII/run_exp.py --cfg ... [--gpu ...]``
runs.  TRAIN.PRETRAINED_MODEL names the Stage-I checkpoint to start from (its
trainable Stage-I weights are restored, not its batch-norm statistics, and
its iteration counter is kept, as the reference: docs/reference_quirks.md#q12)
or a Stage-II checkpoint to resume.  TRAIN.FLAG False writes evaluation
sheets for the test captions.
"""

import functools
import glob
import os

import numpy as np
import tensorflow as tf

from misc import experiment
from misc.acceleration import choose_step, dtype_policy
from misc.checkpoints import check_embedding_dim, copy_trainable_weights, describe_checkpoint, restore_native
from misc.datasets import HR_LR_RATIO, LR_IMAGE_SIZE, load_dataset
from misc.image_utils import save_image, superimage, to_uint8
from misc.reference_import import import_reference_checkpoint
from misc.sampling import MAX_COPIES
from misc.superimages import stage_ii_sheet
from misc.tf1_checkpoint import CheckpointError
from stageI.model import build_stage_i
from stageI.trainer import StageIGAN
from stageII.model import build_stage_ii
from stageII.trainer import StageIIGAN, learning_rate_schedule


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
    Stage-I networks' trainable weights and the counter.  Returns
    (checkpoint path, its stage)."""
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
    return info.path, info.stage


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
                    experiment.write_captions(captions, os.path.join(log_dir, f"{name}.txt"))

    return preview


def evaluate(gan, split, checkpoint_path, config):
    """For the first caption of every test image: NUM_COPY (at most
    MAX_COPIES) Stage-I and Stage-II samples on the reference's sheet."""
    n = min(MAX_COPIES, config.TRAIN.NUM_COPY)
    out_dir = os.path.join(experiment.evaluation_dir(checkpoint_path, n), "test")
    batch = config.TRAIN.BATCH_SIZE
    print(f"num_examples: {split.num_examples}; writing samples to {out_dir}")
    for start in range(0, split.num_examples, batch):
        ids = np.arange(start, min(start + batch, split.num_examples))
        samples = [gan.sample(experiment.first_caption_embeddings(split, ids)) for _ in range(n)]
        reals = split.center_crops(ids)
        for j, index in enumerate(ids):
            captions = split.captions(index)
            sheet = stage_ii_sheet([lr[j] for lr, _ in samples], [hr[j] for _, hr in samples],
                                   captions[0] if captions else "", real=reals[j])
            save_image(sheet, os.path.join(out_dir, f"{split.filenames[index]}_sentence0.jpg"))
    return out_dir


def main(argv=None):
    args = experiment.parse_args("Train or evaluate the Stage-II StackGAN", argv)
    config = experiment.load_run_config(args, stage=2)
    experiment.print_config(config)
    strategy, choices = experiment.make_strategy(args.gpu, config, training=config.TRAIN.FLAG,
                                                 names=experiment.typed_names(args))
    pretrained = config.TRAIN.PRETRAINED_MODEL
    start_info = start_checkpoint(pretrained, args.cfg_file) if pretrained else None
    if config.TRAIN.FLAG:
        experiment.check_batch_size(config.TRAIN.BATCH_SIZE, strategy)
        dataset = load_dataset(config, hr_lr_ratio=HR_LR_RATIO, captions=experiment.caption_splits(config))
        experiment.iterations_per_epoch(dataset.train, config.TRAIN.BATCH_SIZE)
        embedding_dim = dataset.embedding_shape[0]
        gan = build_gan(config, embedding_dim, strategy, choices=choices)
        start = None
        if pretrained:
            start, _ = restore(gan, start_info, config, dataset)
        else:
            print("Created model with fresh parameters. Warning: TRAIN.PRETRAINED_MODEL is empty, "
                  "so Stage-II trains on an untrained (and frozen, unless TRAIN.FINETUNE_LR) "
                  "Stage-I generator.")
        experiment.train(gan, dataset.train, config, functools.partial(epoch_preview, gan, dataset, config),
                         learning_rate_schedule(config), start_path=start, keep_every_n_hours=5)
    else:
        if not pretrained:
            raise CheckpointError("TRAIN.FLAG is False (evaluation) but TRAIN.PRETRAINED_MODEL "
                                  "is empty: set it to the Stage-II checkpoint to evaluate.")
        dataset = load_dataset(config, hr_lr_ratio=HR_LR_RATIO, splits=("test",), captions=("test",))
        embedding_dim = dataset.embedding_shape[0]
        gan = build_gan(config, embedding_dim, strategy, choices=choices)
        path, stage = restore(gan, start_info, config, dataset, "test")
        if stage != 2:
            raise CheckpointError(f"{path}: a Stage-I checkpoint; Stage-II evaluation needs a "
                                  "Stage-II checkpoint (evaluate Stage-I with stageI/run_exp.py).")
        out_dir = evaluate(gan, dataset.test, path, config)
        print(f"Evaluation samples written to {out_dir}")

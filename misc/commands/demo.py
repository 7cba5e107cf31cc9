"""Generate images from captions with a trained StackGAN, as the reference demo.

    python demo/demo.py --cfg demo/cfg/birds-demo.yml [--gpu 0] [--caption_path FILE]

The model is --checkpoint or TEST.PRETRAINED_MODEL: one of the authors' published checkpoints
(``models/birds_model_164000.ckpt`` ...), a reference Stage-I
``model_<N>.ckpt``, or a checkpoint of this project (a ``model-<N>`` prefix
or a directory of them).  A Stage-II checkpoint gives Stage-I and Stage-II
samples, a Stage-I checkpoint Stage-I samples.  The text-embedding size is
read from the checkpoint; the other dimensions come from the config.

Captions, one of:
  --caption_path FILE.t7      written by the reference ``demo/get_embedding.lua``
                              (captions + char-CNN-RNN embeddings); also
                              TEST.CAPTION_PATH in the config
  --caption_path EMB.npy|.pickle [--caption_file CAPTIONS.txt]
                              an (N, dim) embedding array and its captions, one
                              per line (default: EMB's name with .txt)
  --caption_path CAPTIONS.txt a plain text file, one caption per line, embedded
                              with the bundled encoder (misc/data/hash_encoder.py)
  --caption "TEXT" [--caption "TEXT" ...]
                              typed captions, embedded with the bundled encoder

The bundled encoder is not the char-CNN-RNN encoder the published models were
trained with: with those models give ``--text-encoder ENC.t7``, the authors'
char-CNN-RNN encoder file, which then embeds the typed captions and .txt lines
byte by byte as get_embedding.lua does (``--lowercase`` lower-cases A-Z
first; see demo/embed.py), or use .t7 files from get_embedding.lua.  A model
trained on your own data takes the text encoder its embeddings came from:
``--text-encoder`` the ``text_encoder.keras`` of
misc/commands/train_text_encoder.py or its run folder (README, "Your own data").

For every caption TEST.NUM_COPY (at most 16) samples are drawn and saved as
the reference's sheet ``<out>/sentence<i>.jpg``; ``<out>`` is --out, or the
caption path without its extension (as the reference), or ``outputs/demo``
in the current folder for typed captions.  Captions without any letter are
skipped, as in the reference.

Every input and output is checked before the model is loaded: the files
exist and are regular files within the sizes below, the output folder and
each sheet and --save-arrays can be written (a file or a link to one, a
device or FIFO written in place; never a folder), --seed is 0 to 2**32 - 1.

Noise (``--noise FILE.npz``): arrays ``z`` (N, Z_DIM), ``eps`` (N,
GAN.EMBEDDING_DIM) and, for Stage-II, ``hr_eps`` (N, GAN.EMBEDDING_DIM),
with N = captions x NUM_COPY in caption-major order (row i * NUM_COPY + k is
copy k of caption i), or N = NUM_COPY (row k is used for copy k of every
caption).  Without it z ~ N(0, 1) and eps, hr_eps ~ truncated normal, from
``--seed`` when given.

``--save-arrays OUT.npz`` writes ``captions`` (N,), ``embeddings`` (N, D),
``fake_images`` (N, NUM_COPY, s, s, 3) Stage-I and, for Stage-II,
``hr_fake_images`` (N, NUM_COPY, 4s, 4s, 3), float32 in [-1, 1], and the
noise used (``z``, ``eps``, ``hr_eps`` in the --noise layout, so the file can
be given back as --noise).
"""

import os
import pickle
import re

import numpy as np

from misc.commands.common import ArgumentParser, check_range, run_main
from misc.config import MAX_SEED, OUTPUT_ROOT, CheckpointError, ConfigError, InputError, load_config
from misc.data import safe_pickle
from misc.data.atomic import atomic_open, check_folder_writable, check_not_input, check_writable
from misc.data.formats import MAX_COPIES
from misc.data.images import save_image
from misc.data.input_files import InputFileError, check_input_file
from misc.data.safe_arrays import load_npy, load_npz
from misc.data.superimages import stage_i_sheet, stage_ii_sheet
from misc.reference import torch7

TYPED_OUTPUT = os.path.join(OUTPUT_ROOT, "demo")
EMBEDDING_SUFFIXES = (".npy", ".pickle", ".pkl")
# Inputs read whole into memory: caption files and embedding arrays.
MAX_INPUT_BYTES = 1 << 28
MAX_CAPTIONS = 100_000
NOISE_NAMES = ("z", "eps", "hr_eps")


def parse_args(argv=None):
    parser = ArgumentParser(
        description="Generate StackGAN samples from captions (see the module docstring).")
    parser.add_argument("--cfg", dest="cfg_file", default=None, type=str,
                        help="YAML config (TEST.PRETRAINED_MODEL, TEST.NUM_COPY, GAN dims)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint to sample from (overrides TEST.PRETRAINED_MODEL): a "
                             "reference .ckpt, a model-<N> prefix, or a run / log directory "
                             "(its newest snapshot)")
    parser.add_argument("--gpu", dest="gpu_id", default=-1, type=int,
                        help="GPU device id (default: GPU_ID of the config; CPU without GPUs)")
    parser.add_argument("--caption_path", "--caption-path", dest="caption_path", default=None,
                        help=".t7 from get_embedding.lua, .npy/.pickle embeddings, or a .txt of captions")
    parser.add_argument("--caption_file", "--caption-file", dest="caption_file", default=None,
                        help="captions (one per line) of a .npy/.pickle embedding file")
    parser.add_argument("--caption", dest="captions", action="append", default=None,
                        help="a caption to draw (repeat for more); embedded with the bundled encoder "
                             "or --text-encoder")
    parser.add_argument("--text-encoder", "--text_encoder", dest="text_encoder", default=None,
                        help="the char-CNN-RNN encoder for typed captions and .txt files: the authors' "
                             "(.t7) or one of misc/commands/train_text_encoder.py (.keras, or its run "
                             "folder)")
    parser.add_argument("--lowercase", action="store_true",
                        help="with --text-encoder: lower-case A-Z first (get_embedding.lua does not)")
    parser.add_argument("--out", default=None, help="output folder (default: caption path "
                        f"without extension, {TYPED_OUTPUT} for typed captions)")
    parser.add_argument("--noise", default=None, help="npz with z, eps, hr_eps to use")
    parser.add_argument("--save-arrays", "--save_arrays", dest="save_arrays", default=None,
                        help="write the raw outputs, captions and noise to this .npz")
    parser.add_argument("--seed", type=int, default=None, help=f"seed for the drawn noise (0 to {MAX_SEED})")
    return parser.parse_args(argv)


def select_gpu(gpu_id):
    """Make only GPU ``gpu_id`` visible (when there are GPUs; an id beyond
    them is an error)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return
    if gpu_id >= len(gpus):
        raise ConfigError(f"GPU {gpu_id} (--gpu / GPU_ID) does not exist; {len(gpus)} GPU(s) are visible "
                          f"(ids 0 to {len(gpus) - 1}).")
    try:
        tf.config.set_visible_devices([gpus[gpu_id]], "GPU")
    except RuntimeError:  # TensorFlow already initialised (in-process use)
        pass


def check_outputs(out_dir, out_option, captions, save_arrays, inputs):
    """The output folder, every sheet in it and --save-arrays must be
    writable and none of the ``inputs``: checked before anything is computed
    or written."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"{out_option} {out_dir}: exists and is not a folder; give --out a folder for "
                         "the sheets.")
    check_folder_writable(out_dir, f"{out_option} {out_dir}")
    for index, caption in enumerate(captions):
        if has_letters(caption):
            check_writable(sheet_path(out_dir, index))
            check_not_input(sheet_path(out_dir, index), inputs, f"{out_option} {out_dir}: the sheet")
    if save_arrays:
        check_writable(save_arrays, "--save-arrays")
        check_not_input(save_arrays, inputs, "--save-arrays")


# -- inputs ---------------------------------------------------------------------

def check_input(path, name):
    """A regular file of at most MAX_INPUT_BYTES (``name``: what the user
    typed, for the message)."""
    try:
        check_input_file(path, name)
    except InputFileError as exc:
        raise InputError(str(exc)) from None
    if os.path.getsize(path) > MAX_INPUT_BYTES:
        raise InputError(f"{name}: {os.path.getsize(path):,} bytes, more than the {MAX_INPUT_BYTES:,} "
                         "this demo reads.")


def read_lines(path, name):
    check_input(path, name)
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    if len(lines) > MAX_CAPTIONS:
        raise InputError(f"{name}: {len(lines):,} captions; the demo draws at most {MAX_CAPTIONS:,} at once.")
    return lines


def read_t7(path):
    """Captions and embeddings of a get_embedding.lua file:
    {raw_txt = {strings}, fea_txt = {1 x D tensors}}."""
    try:
        table = torch7.load(path)
        if not isinstance(table, dict) or "raw_txt" not in table or "fea_txt" not in table:
            raise torch7.Torch7Error("expected a table with raw_txt and fea_txt")
        captions = [str(c) for c in torch7.as_list(table["raw_txt"])]
        features = torch7.as_list(table["fea_txt"])
        if not features or any(not isinstance(f, np.ndarray) or f.ndim not in (1, 2) for f in features):
            raise torch7.Torch7Error("fea_txt must hold 1 x D tensors")
        if len({f.shape[-1] for f in features}) != 1 or features[0].shape[-1] == 0:
            raise torch7.Torch7Error("fea_txt's tensors must all have one size D > 0")
        embeddings = np.concatenate([f.reshape(-1, f.shape[-1]) for f in features], axis=0)
    except torch7.Torch7Error as exc:
        raise InputError(f"{path}: cannot read it as a caption file written by demo/get_embedding.lua "
                         f"({exc}). Regenerate it with get_embedding.lua.") from None
    if len(captions) != len(embeddings):
        raise InputError(f"{path}: {len(captions)} captions (raw_txt) but {len(embeddings)} "
                         "embeddings (fea_txt); regenerate it with get_embedding.lua.")
    return captions, embeddings


def read_embedding_array(path, name):
    check_input(path, name)
    try:
        if path.lower().endswith(".npy"):
            array = load_npy(path, MAX_INPUT_BYTES)
        else:
            array = safe_pickle.as_array(safe_pickle.load(path), path)
        array = np.asarray(array, dtype=np.float32)
    except (ValueError, TypeError, OSError, pickle.UnpicklingError) as exc:
        raise InputError(f"{path}: cannot read an embedding array from it ({exc}).") from None
    if array.ndim != 2:
        raise InputError(f"{path}: embeddings have shape {list(array.shape)}; expected (N, dim), one "
                         "row per caption (for a dataset's (N, k, dim) array take one caption "
                         "per image, e.g. array[:, 0]).")
    return array


def warn_unknown_words(config, captions):
    """A line for each caption with words a model trained on a bundled shapes
    dataset has never seen (the bundled encoder embeds any word, so it would
    draw them as noise)."""
    from misc.data import shapes

    if config.DATASET_NAME not in shapes.RECIPES:
        return
    for number, caption in enumerate(captions, 1):
        words = shapes.unknown_words(caption)
        if words:
            print(f"warning: caption {number} ({caption!r}): the shapes captions never use "
                  f"{', '.join(words)}; the model has not learnt them (the words it knows: README, "
                  "Quick start).")


def load_inputs(args, config, info, is_reference):
    """(captions, embeddings (N, D) float32, output folder, the option that
    named it)."""
    from misc.data.hash_encoder import encode_captions
    from misc.evaluation.caption_embeddings import load_encoder, read_caption_file
    from misc.nets.char_cnn_rnn import embed_captions
    from misc.reference.tf1_checkpoint import CA_MATRIX

    texts = None  # the captions as embedded, when read as bytes
    if args.lowercase and not args.text_encoder:
        raise InputError("--lowercase applies to --text-encoder; give both or neither.")
    if args.captions:
        if args.caption_path:
            raise InputError("give either --caption or --caption_path, not both.")
        captions, path = list(args.captions), None
        embeddings, source = None, "--caption"
    else:
        path = config.TEST.CAPTION_PATH
        if not path:
            raise InputError("no captions: give --caption_path FILE (.t7 from demo/get_embedding.lua, "
                             ".npy/.pickle embeddings, or a .txt of captions) or --caption TEXT.")
        name = (f"--caption_path {path}" if args.caption_path is not None else
                f"TEST.CAPTION_PATH {path} (of {args.cfg_file})")
        check_input(path, name)
        source = path
        suffix = os.path.splitext(path)[1].lower()
        if suffix == ".t7":
            captions, embeddings = read_t7(path)
        elif suffix in EMBEDDING_SUFFIXES:
            embeddings = read_embedding_array(path, name)
            caption_file = args.caption_file or os.path.splitext(path)[0] + ".txt"
            if not os.path.lexists(caption_file):
                raise InputError(f"{caption_file}: captions of {path} not found; give them with "
                                 "--caption_file (one caption per line).")
            captions = read_lines(caption_file, f"--caption_file {caption_file}" if args.caption_file
                                  else f"{caption_file} (the captions of {path})")
            if len(captions) != len(embeddings):
                raise InputError(f"{caption_file}: {len(captions)} captions for the {len(embeddings)} "
                                 f"embeddings of {path}; give one caption per line, in order.")
        elif args.text_encoder:  # byte by byte, every line, as get_embedding.lua
            texts = read_caption_file(path)
            captions, embeddings = [t.decode("utf-8", errors="replace") for t in texts], None
        else:
            captions, embeddings = read_lines(path, name), None
    if not captions:
        raise InputError(f"{source}: no captions in it.")
    if args.text_encoder and embeddings is not None:
        raise InputError(f"{source}: holds embeddings already; --text-encoder embeds typed captions "
                         "(--caption) and .txt caption files.")
    if embeddings is None and args.text_encoder:
        model, _ = load_encoder(args.text_encoder)
        print(model.describe())
        embeddings = embed_captions(model, texts or captions, lowercase=args.lowercase)
    elif embeddings is None:
        if is_reference:
            print("note: captions are embedded with the bundled encoder (misc/data/hash_encoder.py), not the "
                  "char-CNN-RNN encoder the published models were trained with; use a .t7 file from "
                  "demo/get_embedding.lua for meaningful samples.")
        else:
            warn_unknown_words(config, captions)
        embeddings = encode_captions(captions, dim=info.embedding_dim)
    if embeddings.shape[1] != info.embedding_dim:
        raise InputError(
            f"{source}: embeddings have {embeddings.shape[1]} dimensions but the checkpoint "
            f"{info.path} takes {info.embedding_dim} ({CA_MATRIX} has {info.embedding_dim} rows); "
            "use embeddings from the text encoder the model was trained with.")
    if not np.all(np.isfinite(embeddings)):
        raise InputError(f"{source}: embeddings contain NaN or infinite values.")
    if len(captions) > MAX_CAPTIONS:
        raise InputError(f"{source}: {len(captions):,} captions; the demo draws at most {MAX_CAPTIONS:,} "
                         "at once.")
    if args.out:
        return captions, embeddings.astype(np.float32), args.out, "--out"
    default = os.path.splitext(path)[0] if path else TYPED_OUTPUT
    return captions, embeddings.astype(np.float32), default, "the output folder"


def load_noise(path, max_bytes):
    """The noise arrays of a --noise file (z, eps, hr_eps), together at most
    ``max_bytes``."""
    check_input(path, f"--noise {path}")
    try:
        noise = load_npz(path, max_bytes, names=NOISE_NAMES)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a .npz file of noise arrays ({exc}).") from None
    for name, array in noise.items():
        if array.dtype.kind not in "fiu" or not np.isfinite(array).all():
            raise InputError(f"{path}: '{name}' holds {array.dtype} values that are not all finite numbers; "
                             "noise must be finite floats.")
    return noise


# -- output ---------------------------------------------------------------------

def has_letters(caption):
    return re.search("[a-zA-Z]+", caption) is not None


def sheet_path(out_dir, index):
    return os.path.join(out_dir, f"sentence{index}.jpg")


def save_sheets(out_dir, start, captions, lr, hr):
    """sentence<i>.jpg for every caption of a batch that has letters."""
    written = []
    for j in range(len(lr)):
        index = start + j
        caption = captions[index]
        if not has_letters(caption):
            continue
        if hr is None:
            sheet = stage_i_sheet(list(lr[j]), caption=caption)
        else:
            sheet = stage_ii_sheet(list(lr[j]), list(hr[j]), caption)
        path = sheet_path(out_dir, index)
        save_image(sheet, path)
        written.append(path)
    return written


def save_arrays(path, captions, embeddings, noise, lr, hr, info):
    arrays = {"captions": np.array(captions, dtype=str), "embeddings": embeddings,
              "fake_images": lr, "stage": np.int32(info.stage), "checkpoint": np.array(info.path)}
    if hr is not None:
        arrays["hr_fake_images"] = hr
    arrays.update(noise)
    with atomic_open(path, "wb") as f:  # a crash never leaves a half-written file
        np.savez(f, **arrays)


def main(argv=None):
    args = parse_args(argv)
    if args.seed is not None:
        check_range("--seed", args.seed, 0, MAX_SEED, "it seeds the drawn noise")
    config = load_config(args.cfg_file)
    if args.gpu_id != -1:
        if args.gpu_id < 0:
            raise ConfigError(f"--gpu {args.gpu_id}: give a GPU id (0, 1, ...).")
        config.GPU_ID = args.gpu_id
    if args.caption_path is not None:
        config.TEST.CAPTION_PATH = args.caption_path
    if args.checkpoint is not None:
        config.TEST.PRETRAINED_MODEL = args.checkpoint
    from misc.commands.startup import start_tensorflow

    start_tensorflow()
    from misc.evaluation.sampling import (
        Sampler,
        draw_noise,
        expand_noise,
        load_generator,
        resolve_checkpoint_path,
    )
    from misc.training.checkpoints import checkpoint_files, describe_checkpoint

    select_gpu(config.GPU_ID)

    if not config.TEST.PRETRAINED_MODEL:
        raise CheckpointError("no checkpoint: give --checkpoint or set TEST.PRETRAINED_MODEL in the "
                              "--cfg file (a reference .ckpt or one written by this project).")
    option = "--checkpoint" if args.checkpoint else f"TEST.PRETRAINED_MODEL of {args.cfg_file}"
    info = describe_checkpoint(resolve_checkpoint_path(config.TEST.PRETRAINED_MODEL), option)
    captions, embeddings, out_dir, out_option = load_inputs(args, config, info, info.kind == "reference")
    inputs = [args.cfg_file, config.TEST.CAPTION_PATH, args.caption_file, args.noise] + \
        checkpoint_files(info.path)
    check_outputs(out_dir, out_option, captions, args.save_arrays, inputs)
    num_copy = min(MAX_COPIES, int(config.TEST.NUM_COPY))
    batch_size = min(len(captions), int(config.TEST.BATCH_SIZE))
    print(f"Loaded {len(captions)} captions, embeddings {list(embeddings.shape)}")

    z_dim, ef_dim = config.Z_DIM, config.GAN.EMBEDDING_DIM
    total = len(captions) * num_copy
    if args.noise:
        noise_bytes = total * (z_dim + 2 * ef_dim) * np.dtype(np.float64).itemsize
        noise = expand_noise(load_noise(args.noise, noise_bytes), len(captions), num_copy, z_dim, ef_dim,
                             info.stage, source=args.noise)
    else:
        noise = draw_noise(np.random.default_rng(args.seed), total, z_dim, ef_dim)
        if info.stage == 1:
            del noise["hr_eps"]

    model, report, info = load_generator(config, info.path, info)
    print(report.summary())
    sampler = Sampler(model)
    lr_all, hr_all, written = [], [], []
    for start, lr, hr in sampler.generate(embeddings, num_copy, batch_size, noise):
        written += save_sheets(out_dir, start, captions, lr, hr)
        if args.save_arrays:
            lr_all.append(lr)
            hr_all.append(hr)
    if args.save_arrays:
        save_arrays(args.save_arrays, captions, embeddings, noise, np.concatenate(lr_all),
                    None if info.stage == 1 else np.concatenate(hr_all), info)
        print(f"Raw outputs written to {args.save_arrays}")
    print(f"Finished generating samples for {len(captions)} sentences: {len(written)} sheets in {out_dir}")
    for i, caption in enumerate(captions[:10]):
        print(f"Sentence {i}: {caption}")
    return written


def cli(argv=None):
    run_main(main, argv)


if __name__ == "__main__":
    cli()

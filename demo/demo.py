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
                              with the bundled encoder (misc/text_encoder.py)
  --caption "TEXT" [--caption "TEXT" ...]
                              typed captions, embedded with the bundled encoder

The bundled encoder is not the char-CNN-RNN encoder the published models were
trained with: with those models give ``--text-encoder ENC.t7``, the authors'
char-CNN-RNN encoder file, which then embeds the typed captions and .txt lines
byte by byte as get_embedding.lua does (``--lowercase`` lower-cases A-Z
first; see demo/embed.py), or use .t7 files from get_embedding.lua.

For every caption TEST.NUM_COPY (at most 16) samples are drawn and saved as
the reference's sheet ``<out>/sentence<i>.jpg``; ``<out>`` is the caption
path without its extension (``demo_samples`` for typed captions) or --out.
Captions without any letter are skipped, as in the reference.

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

import argparse
import os
import pickle
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import misc.startup  # before TensorFlow: its start-up lines follow that level

import numpy as np

from misc import experiment, safe_pickle, torch7
from misc.atomic import atomic_open
from misc.checkpoints import describe_checkpoint
from misc.config import ConfigError, load_config
from misc.image_utils import save_image
from misc.sampling import (
    MAX_COPIES,
    InputError,
    Sampler,
    draw_noise,
    expand_noise,
    load_generator,
    resolve_checkpoint_path,
)
from misc.superimages import stage_i_sheet, stage_ii_sheet
from misc.tf1_checkpoint import CA_MATRIX, CheckpointError

TYPED_OUTPUT = "demo_samples"
EMBEDDING_SUFFIXES = (".npy", ".pickle", ".pkl")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
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
                        help="the authors' char-CNN-RNN encoder (.t7) for typed captions and .txt files")
    parser.add_argument("--lowercase", action="store_true",
                        help="with --text-encoder: lower-case A-Z first (get_embedding.lua does not)")
    parser.add_argument("--out", default=None, help="output folder (default: caption path "
                        f"without extension, '{TYPED_OUTPUT}' for typed captions)")
    parser.add_argument("--noise", default=None, help="npz with z, eps, hr_eps to use")
    parser.add_argument("--save-arrays", "--save_arrays", dest="save_arrays", default=None,
                        help="write the raw outputs, captions and noise to this .npz")
    parser.add_argument("--seed", type=int, default=None, help="seed for the drawn noise")
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


def check_outputs(out_dir, save_arrays):
    """The output folder must be a folder and --save-arrays a file: checked
    before anything is computed or written."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"{out_dir}: exists and is not a folder; give --out a folder for the sheets.")
    if save_arrays and os.path.isdir(save_arrays):
        raise InputError(f"{save_arrays}: is a folder; give --save-arrays a file name such as out.npz.")


# -- inputs ---------------------------------------------------------------------

def read_lines(path, what):
    if not os.path.isfile(path):
        raise InputError(f"{path}: {what} not found.")
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().splitlines()


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


def read_embedding_array(path):
    try:
        if path.lower().endswith(".npy"):
            array = np.load(path, allow_pickle=False)
        else:
            array = safe_pickle.as_array(safe_pickle.load(path), path)
        array = np.asarray(array, dtype=np.float32)
    except (ValueError, OSError, pickle.UnpicklingError) as exc:
        raise InputError(f"{path}: cannot read an embedding array from it ({exc}).") from None
    if array.ndim != 2:
        raise InputError(f"{path}: embeddings have shape {list(array.shape)}; expected (N, dim), one "
                         "row per caption (for a dataset's (N, k, dim) array take one caption "
                         "per image, e.g. array[:, 0]).")
    return array


def load_inputs(args, config, info, is_reference):
    """(captions, embeddings (N, D) float32, default output folder)."""
    from misc.caption_embeddings import read_caption_file
    from misc.char_cnn_rnn import embed_captions, load_encoder
    from misc.text_encoder import encode_captions

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
        if not os.path.isfile(path):
            raise InputError(f"{path}: caption file not found. Check --caption_path / TEST.CAPTION_PATH.")
        source = path
        suffix = os.path.splitext(path)[1].lower()
        if suffix == ".t7":
            captions, embeddings = read_t7(path)
        elif suffix in EMBEDDING_SUFFIXES:
            embeddings = read_embedding_array(path)
            caption_file = args.caption_file or os.path.splitext(path)[0] + ".txt"
            if not os.path.isfile(caption_file):
                raise InputError(f"{caption_file}: captions of {path} not found; give them with "
                                 "--caption_file (one caption per line).")
            captions = read_lines(caption_file, "caption file")
            if len(captions) != len(embeddings):
                raise InputError(f"{caption_file}: {len(captions)} captions for the {len(embeddings)} "
                                 f"embeddings of {path}; give one caption per line, in order.")
        elif args.text_encoder:  # byte by byte, every line, as get_embedding.lua
            texts = read_caption_file(path)
            captions, embeddings = [t.decode("utf-8", errors="replace") for t in texts], None
        else:
            captions, embeddings = read_lines(path, "caption file"), None
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
            print("note: captions are embedded with the bundled encoder (misc/text_encoder.py), not the "
                  "char-CNN-RNN encoder the published models were trained with; use a .t7 file from "
                  "demo/get_embedding.lua for meaningful samples.")
        embeddings = encode_captions(captions, dim=info.embedding_dim)
    if embeddings.shape[1] != info.embedding_dim:
        raise InputError(
            f"{source}: embeddings have {embeddings.shape[1]} dimensions but the checkpoint "
            f"{info.path} takes {info.embedding_dim} ({CA_MATRIX} has {info.embedding_dim} rows); "
            "use embeddings from the text encoder the model was trained with.")
    if not np.all(np.isfinite(embeddings)):
        raise InputError(f"{source}: embeddings contain NaN or infinite values.")
    out = args.out or (os.path.splitext(path)[0] if path else TYPED_OUTPUT)
    return captions, embeddings.astype(np.float32), out


def load_noise(path):
    if not os.path.isfile(path):
        raise InputError(f"{path}: noise file not found (--noise).")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a .npz file of noise arrays ({exc}).") from None


# -- output ---------------------------------------------------------------------

def has_letters(caption):
    return re.search("[a-zA-Z]+", caption) is not None


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
        path = os.path.join(out_dir, f"sentence{index}.jpg")
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
    config = load_config(args.cfg_file)
    if args.gpu_id != -1:
        if args.gpu_id < 0:
            raise ConfigError(f"--gpu {args.gpu_id}: give a GPU id (0, 1, ...).")
        config.GPU_ID = args.gpu_id
    if args.caption_path is not None:
        config.TEST.CAPTION_PATH = args.caption_path
    if args.checkpoint is not None:
        config.TEST.PRETRAINED_MODEL = args.checkpoint
    select_gpu(config.GPU_ID)

    if not config.TEST.PRETRAINED_MODEL:
        raise CheckpointError("no checkpoint: give --checkpoint or set TEST.PRETRAINED_MODEL in the "
                              "--cfg file (a reference .ckpt or one written by this project).")
    info = describe_checkpoint(resolve_checkpoint_path(config.TEST.PRETRAINED_MODEL))
    captions, embeddings, out_dir = load_inputs(args, config, info, info.kind == "reference")
    check_outputs(out_dir, args.save_arrays)
    num_copy = min(MAX_COPIES, int(config.TEST.NUM_COPY))
    batch_size = min(len(captions), int(config.TEST.BATCH_SIZE))
    print(f"Loaded {len(captions)} captions, embeddings {list(embeddings.shape)}")

    z_dim, ef_dim = config.Z_DIM, config.GAN.EMBEDDING_DIM
    total = len(captions) * num_copy
    if args.noise:
        noise = expand_noise(load_noise(args.noise), len(captions), num_copy, z_dim, ef_dim,
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


if __name__ == "__main__":
    experiment.run_main(main)

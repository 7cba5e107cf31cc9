"""StackGAN configuration: the reference default tree and YAML merging.

The tree and its defaults are those of the reference ``misc/config.py``; a
YAML file may only override keys that exist, with values of the same type
(the reference rules).  Keys marked "extension" do not exist in the reference
and default to the reference behaviour.

Code receives a config object explicitly: ``load_config`` returns a fresh
one; ``cfg_from_file`` (the reference's name) merges a file into a given tree.
"""

import math
import os

import numpy as np
import yaml
from easydict import EasyDict as edict

from misc.data.formats import EMBEDDING_FILES
from misc.data.input_files import InputFileError, open_regular, short_repr

# The Stage-I network variants (GAN.NETWORK_TYPE); Stage-II exists only for
# the first.
NETWORK_TYPES = ("default", "simple")
# SEED seeds NumPy's legacy generator (via keras.utils.set_random_seed), which
# takes 32-bit seeds.
MAX_SEED = 2**32 - 1
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes


def default_config():
    """Return a new config tree holding the reference defaults."""
    c = edict()
    # Dataset name: flowers, birds (or any folder under DATA_DIR)
    c.DATASET_NAME = "birds"
    c.EMBEDDING_TYPE = "cnn-rnn"
    c.CONFIG_NAME = ""
    c.GPU_ID = 0  # the demo's GPU (demo/demo.py); training takes --gpu
    c.Z_DIM = 100
    c.DATA_DIR = "data"  # extension: where <DATASET_NAME>/ lives
    c.SEED = 0  # extension: seeds data order, noise and initial weights

    # Demo/test options
    c.TEST = edict()
    c.TEST.LR_IMSIZE = 64
    c.TEST.HR_IMSIZE = 256
    c.TEST.NUM_COPY = 16
    c.TEST.BATCH_SIZE = 64
    c.TEST.PRETRAINED_MODEL = ""
    c.TEST.CAPTION_PATH = ""

    # Training options
    c.TRAIN = edict()
    c.TRAIN.FLAG = True
    c.TRAIN.BATCH_SIZE = 64
    c.TRAIN.NUM_COPY = 4
    c.TRAIN.MAX_EPOCH = 600
    c.TRAIN.SNAPSHOT_INTERVAL = 2000
    c.TRAIN.PRETRAINED_MODEL = ""
    c.TRAIN.PRETRAINED_EPOCH = 600

    c.TRAIN.DISCRIMINATOR_LR = 2e-4
    c.TRAIN.GENERATOR_LR = 2e-4
    c.TRAIN.LR_DECAY_EPOCH = 50

    c.TRAIN.NUM_EMBEDDING = 4
    c.TRAIN.COND_AUGMENTATION = True
    c.TRAIN.B_WRONG = True

    c.TRAIN.COEFF = edict()
    c.TRAIN.COEFF.KL = 2.0

    c.TRAIN.FINETUNE_LR = False
    c.TRAIN.FT_LR_RETIO = 0.1

    # extension: how the training step runs (misc/training/acceleration.py): XLA
    # 'auto' (on CPUs, where it is measured faster), 'on' or 'off'; PRECISION
    # 'float32', 'mixed' (float16 on GPUs, bfloat16 on CPUs that have it),
    # 'mixed_float16' or 'mixed_bfloat16'
    c.TRAIN.XLA = "auto"
    c.TRAIN.PRECISION = "float32"
    c.TRAIN.INTRA_OP_THREADS = 0  # extension: threads per CPU op (0: TensorFlow's, all cores)

    # extension: multi-worker runs (misc/training/cluster.py): how long, in seconds,
    # a worker waits for all workers to start, and for the next training
    # step of the cluster before it names the worker that stopped stepping
    c.CLUSTER = edict()
    c.CLUSTER.STARTUP_TIMEOUT = 600
    c.CLUSTER.STEP_TIMEOUT = 600

    # Model options
    c.GAN = edict()
    c.GAN.EMBEDDING_DIM = 128
    c.GAN.DF_DIM = 64
    c.GAN.GF_DIM = 128
    c.GAN.NETWORK_TYPE = "default"
    return c


# Where the commands write what is not a training run (the demo's sheets of
# typed captions, the evaluator's results) unless told otherwise: a folder of
# the current directory (gitignored in the repository).
OUTPUT_ROOT = "outputs"


class UserError(Exception):
    """A failure the user can fix, whose message names the file or key, what
    is wrong and the fix: every command prints it as one line ``error: ...``
    and exits with ``exit_code`` (misc/commands/common.py).  The errors of
    each part of the library derive from it."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A config value or command-line option that cannot be used."""


class DatasetError(UserError):
    """Bad or missing dataset input; the message names the path and the fix."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded into the models at hand."""


class InputError(DatasetError):
    """Bad input to sampling (embeddings, captions, noise); names the path
    and the fix."""


def _type_name(value):
    return type(value).__name__


def merge_config(overrides, base, source="<config>", _prefix=""):
    """Merge the nested dict ``overrides`` into ``base`` in place.

    Every key must already exist in ``base`` and keep its type (a value for a
    numpy-array default is converted); ``source`` names the file in errors.
    """
    if overrides is None:
        return base
    if not isinstance(overrides, dict):
        raise ConfigError(
            f"{source}: expected a mapping of config keys at "
            f"'{_prefix.rstrip('.') or 'top level'}', got {_type_name(overrides)}."
        )
    for key, value in overrides.items():
        path = f"{_prefix}{key}"
        if key not in base:
            valid = ", ".join(sorted(base.keys()))
            raise ConfigError(
                f"{source}: unknown config key '{path}'. "
                f"Valid keys{' under ' + _prefix.rstrip('.') if _prefix else ''}: {valid}."
            )
        old = base[key]
        if isinstance(old, dict):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{source}: config key '{path}' is a section and needs nested keys, "
                    f"got {_type_name(value)} ({short_repr(value)})."
                )
            merge_config(value, old, source, path + ".")
            continue
        if isinstance(old, np.ndarray):
            value = np.array(value, dtype=old.dtype)
        elif type(old) is not type(value):
            hint = ""
            if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
                hint = f" Write {value}.0 to give a float."
            elif isinstance(old, float) and isinstance(value, str):
                hint = " YAML reads numbers such as 2e-4 as strings; write 2.0e-4 or 0.0002."
            elif isinstance(old, str) and isinstance(value, bool):
                hint = " YAML reads unquoted on/off/yes/no as booleans; quote the word ('on')."
            raise ConfigError(
                f"{source}: config key '{path}' expects {_type_name(old)}, "
                f"got {_type_name(value)} ({short_repr(value)}).{hint}"
            )
        base[key] = value
    return base


def read_yaml(filename):
    """Parse a YAML config file into a mapping (None for an empty file);
    errors name the file."""
    if os.path.isdir(filename):
        raise ConfigError(f"{filename}: is a directory; --cfg takes a YAML file such as "
                          "stageI/cfg/birds.yml.")
    try:
        with open_regular(filename, "r", encoding="utf-8") as f:  # a FIFO would block, a device not end
            text = f.read(MAX_CONFIG_BYTES + 1)
        if len(text) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{filename}: larger than {MAX_CONFIG_BYTES:,} bytes, so not a config file; "
                              "--cfg takes a YAML file such as stageI/cfg/birds.yml.")
        tree = yaml.safe_load(text)
    except InputFileError as exc:
        raise ConfigError(f"{exc} --cfg takes a YAML file such as stageI/cfg/birds.yml.") from None
    except FileNotFoundError:
        raise ConfigError(f"{filename}: config file not found. Check the --cfg path.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{filename}: not a text file; --cfg takes a YAML file such as "
                          "stageI/cfg/birds.yml.") from None
    except OSError as exc:
        raise ConfigError(f"{filename}: cannot read it ({exc.strerror or exc}).") from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{filename}: not valid YAML ({detail}).") from None
    if tree is not None and not isinstance(tree, dict):
        raise ConfigError(f"{filename}: expected a mapping of config keys (lines such as "
                          f"'TRAIN: ...', 'GAN: ...'), got a {_type_name(tree)} ({short_repr(tree)}).")
    return tree


def cfg_from_file(filename, config):
    """Merge a YAML file into the tree ``config``; returns it."""
    return merge_config(edict(read_yaml(filename) or {}), config, source=filename)


def load_config(filename=None):
    """Return a fresh default config, merged with ``filename`` when given and
    checked by ``validate_config``."""
    config = default_config()
    if filename:
        cfg_from_file(filename, config)
    validate_config(config, source=filename)
    return config


# key -> (smallest valid value, what the value is): the integer settings.
_AT_LEAST = {
    "Z_DIM": (1, "the noise size"),
    "GPU_ID": (0, "a GPU id"),
    "GAN.EMBEDDING_DIM": (1, "the conditioning size"),
    "GAN.GF_DIM": (1, "the generator width"),
    "GAN.DF_DIM": (1, "the discriminator width"),
    "TRAIN.BATCH_SIZE": (1, "images per training step"),
    "TRAIN.NUM_COPY": (1, "samples per preview row and per evaluation sheet"),
    "TRAIN.NUM_EMBEDDING": (1, "captions averaged per training image"),
    "TRAIN.MAX_EPOCH": (0, "the epoch training stops at"),
    "TRAIN.SNAPSHOT_INTERVAL": (0, "iterations between snapshots; 0: only at the end and on "
                                   "interruption"),
    "TRAIN.LR_DECAY_EPOCH": (0, "epochs between learning-rate halvings; 0: never"),
    "TRAIN.PRETRAINED_EPOCH": (0, "the epoch Stage-II decay starts after"),
    "TEST.NUM_COPY": (1, "samples per caption"),
    "TEST.BATCH_SIZE": (1, "captions per sampling batch"),
    "TEST.LR_IMSIZE": (16, "the Stage-I image size"),
    "TEST.HR_IMSIZE": (16, "the Stage-II image size"),
    "TRAIN.INTRA_OP_THREADS": (0, "threads per CPU op; 0: TensorFlow's choice"),
    "CLUSTER.STARTUP_TIMEOUT": (1, "seconds a worker waits for the others to start"),
    "CLUSTER.STEP_TIMEOUT": (1, "seconds a worker waits for the cluster's next training step"),
}
# TRAIN.XLA and TRAIN.PRECISION values (misc/training/acceleration.py says what they do).
XLA_SETTINGS = ("auto", "on", "off")
PRECISIONS = ("float32", "mixed", "mixed_float16", "mixed_bfloat16")
# Float settings that must not be negative (all floats must be finite).
_NOT_NEGATIVE = ("TRAIN.DISCRIMINATOR_LR", "TRAIN.GENERATOR_LR", "TRAIN.FT_LR_RETIO", "TRAIN.COEFF.KL")


def _get(config, key):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def config_leaves(tree, prefix=""):
    """('SECTION.KEY', value) of every setting of a config tree."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from config_leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def validate_config(config, stage=None, source=None):
    """Check every value of a config before anything runs; raise a one-line
    ``ConfigError`` naming the key (and ``source``, the file) and the fix.

    ``stage`` 2 adds the Stage-II constraints.  Merging already checked the
    keys and their types; this checks the values.
    """
    where = f"{source}: " if source else ""

    def fail(key, value, requirement):
        raise ConfigError(f"{where}{key} is {short_repr(value)}; {requirement}.")

    for key, value in config_leaves(config):
        if isinstance(value, float) and not math.isfinite(value):
            fail(key, value, "it must be a finite number")
    for key, (least, what) in _AT_LEAST.items():
        value = _get(config, key)
        if value < least:
            fail(key, value, f"it must be at least {least} ({what})")
    for key in _NOT_NEGATIVE:
        if _get(config, key) < 0:
            fail(key, _get(config, key), "it must not be negative")
    if not 0 <= config.SEED <= MAX_SEED:
        fail("SEED", config.SEED, f"it must be between 0 and {MAX_SEED} (it seeds the initial weights, "
                                  "the data order and the noise)")
    if config.TEST.LR_IMSIZE % 16:
        fail("TEST.LR_IMSIZE", config.TEST.LR_IMSIZE, "it must be a multiple of 16 (64 for the "
                                                      "published models)")
    if not config.DATASET_NAME:
        fail("DATASET_NAME", config.DATASET_NAME, "name the dataset folder under DATA_DIR (e.g. "
                                                  "birds, flowers or shapes)")
    if config.EMBEDDING_TYPE not in EMBEDDING_FILES:
        fail("EMBEDDING_TYPE", config.EMBEDDING_TYPE, f"use one of {', '.join(EMBEDDING_FILES)}")
    for key, valid in (("TRAIN.XLA", XLA_SETTINGS), ("TRAIN.PRECISION", PRECISIONS)):
        if _get(config, key) not in valid:
            fail(key, _get(config, key), f"use {', '.join(repr(v) for v in valid)}")
    if config.GAN.NETWORK_TYPE not in NETWORK_TYPES:
        fail("GAN.NETWORK_TYPE", config.GAN.NETWORK_TYPE,
             f"use {' or '.join(repr(t) for t in NETWORK_TYPES)}")
    if stage == 2:
        if config.GAN.NETWORK_TYPE != "default":
            fail("GAN.NETWORK_TYPE", config.GAN.NETWORK_TYPE, "Stage-II exists only for 'default'")
        if config.GAN.GF_DIM < 4:
            fail("GAN.GF_DIM", config.GAN.GF_DIM, "Stage-II needs at least 4 (its last layers have "
                                                  "GF_DIM / 4 channels)")
    return config


def parse_gpu_ids(text):
    """--gpu '0' or '0,1' -> [0] or [0, 1]: distinct non-negative ids."""
    usage = f"--gpu {text!r}: give GPU ids such as 0 or 0,1 (distinct, from 0)."
    try:
        ids = [int(part) for part in str(text).split(",") if part.strip() != ""]
    except ValueError:
        raise ConfigError(usage) from None
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise ConfigError(usage)
    return ids


def stage_of(config):
    """The stage a config trains: 2 when its CONFIG_NAME starts with
    'stageII' (the reference's Stage-II configs), else 1."""
    return 2 if str(config.CONFIG_NAME).startswith("stageII") else 1


# -- the text encoder's config (DS-SJE training, misc/training/sje_trainer.py) ------

TEXT_ENCODER_ARCHITECTURES = ("birds", "flowers")
# The image side of DS-SJE (misc/nets/image_encoders.py): IMAGE.NETWORK
# SCRATCH is a small network trained with the text encoder; views of an
# image: the centre and the four corners, each also mirrored.
SCRATCH = "scratch"
NUM_VIEWS = 10


def text_encoder_config():
    """The text encoder's settings and their defaults: train_sje_hybrid.lua's,
    as the scripts that trained the published encoders set them (learning
    rate 0.0007, 200 epochs, symmetric), and the published birds encoder's
    architecture."""
    c = edict()
    c.CONFIG_NAME = "text_encoder"
    c.DATASET_NAME = ""
    c.DATA_DIR = "data"
    c.SEED = 123  # -seed
    c.ENCODER = edict()
    c.ENCODER.ARCHITECTURE = "birds"  # HybridCNNLong + FixedGRU; 'flowers': HybridCNN + FixedRNN
    c.ENCODER.CONV_CHANNELS = []  # three output channels; []: the architecture's
    c.ENCODER.AVERAGE = True  # -avg 1 ("a1" in the birds encoder's name): the mean of the states
    c.ENCODER.DROPOUT = 0.0  # -dropout
    c.ENCODER.EMBEDDING_DIM = 1024  # with IMAGE.NETWORK 'scratch'; else the features' size
    c.IMAGE = edict()
    c.IMAGE.NETWORK = SCRATCH  # or a keras.applications model, e.g. 'InceptionV3'
    c.IMAGE.WEIGHTS = ""  # its weights file (required for a named network)
    c.IMAGE.SIZE = 224  # the named network's input size
    c.IMAGE.VIEWS = NUM_VIEWS
    c.IMAGE.CHANNELS = [32, 64, 128, 256]  # the scratch network's convolutions
    c.TRAIN = edict()
    c.TRAIN.FLAG = True
    c.TRAIN.PRETRAINED_MODEL = ""
    c.TRAIN.BATCH_SIZE = 40  # -batch_size: distinct classes per batch
    c.TRAIN.MAX_EPOCH = 200  # -max_epochs; an epoch is as many iterations as training classes
    c.TRAIN.LEARNING_RATE = 0.0007  # -learning_rate (the scripts')
    c.TRAIN.LR_DECAY = 0.98  # -learning_rate_decay
    c.TRAIN.LR_DECAY_AFTER = 1  # -learning_rate_decay_after
    c.TRAIN.SYMMETRIC = True  # -symmetric
    c.TRAIN.SNAPSHOT_INTERVAL = 1000  # -eval_val_every (when the Lua saves)
    c.TRAIN.XLA = "auto"  # as the GAN configs (misc/training/acceleration.py)
    c.TRAIN.PRECISION = "float32"
    c.TRAIN.INTRA_OP_THREADS = 0
    return c


def load_text_encoder_config(filename):
    """The text encoder's defaults merged with the YAML file ``filename``
    (the GAN configs' rules: known keys, same types), validated."""
    config = text_encoder_config()
    cfg_from_file(filename, config)
    return validate_text_encoder_config(config, source=filename)


def validate_text_encoder_config(config, source=None):
    """One-line ``ConfigError`` naming the key for a value that cannot work
    (IMAGE.NETWORK is checked against keras.applications when the trainer
    builds it, before anything is computed)."""
    where = f"{source}: " if source else ""

    def require(ok, key, value, requirement):
        if not ok:
            raise ConfigError(f"{where}{key} is {short_repr(value)}; {requirement}.")

    def positive_ints(values):
        return all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)

    enc, image, train = config.ENCODER, config.IMAGE, config.TRAIN
    require(bool(config.DATASET_NAME), "DATASET_NAME", config.DATASET_NAME,
            "name the dataset folder under DATA_DIR (built by data/build_dataset.py)")
    require(0 <= config.SEED <= MAX_SEED, "SEED", config.SEED, f"it must be between 0 and {MAX_SEED}")
    require(enc.ARCHITECTURE in TEXT_ENCODER_ARCHITECTURES, "ENCODER.ARCHITECTURE", enc.ARCHITECTURE,
            f"use {' or '.join(repr(a) for a in TEXT_ENCODER_ARCHITECTURES)}")
    require(not enc.CONV_CHANNELS or (len(enc.CONV_CHANNELS) == 3 and positive_ints(enc.CONV_CHANNELS)),
            "ENCODER.CONV_CHANNELS", enc.CONV_CHANNELS, "give three positive channel counts, or [] for the "
            "architecture's")
    require(enc.AVERAGE or enc.ARCHITECTURE == "birds", "ENCODER.AVERAGE", enc.AVERAGE,
            "the flowers architecture (FixedRNN) always averages its states")
    require(0.0 <= enc.DROPOUT < 1.0, "ENCODER.DROPOUT", enc.DROPOUT, "give a rate from 0 to below 1")
    require(enc.EMBEDDING_DIM >= 1, "ENCODER.EMBEDDING_DIM", enc.EMBEDDING_DIM, "it must be at least 1")
    require(image.NETWORK == SCRATCH or bool(image.WEIGHTS), "IMAGE.WEIGHTS", image.WEIGHTS,
            f"give the weights file of keras.applications.{image.NETWORK} (nothing is downloaded), or "
            f"use IMAGE.NETWORK '{SCRATCH}'")
    require(image.SIZE >= 32, "IMAGE.SIZE", image.SIZE, "it must be at least 32 pixels")
    require(1 <= image.VIEWS <= NUM_VIEWS, "IMAGE.VIEWS", image.VIEWS, f"give 1 to {NUM_VIEWS}")
    require(bool(image.CHANNELS) and positive_ints(image.CHANNELS), "IMAGE.CHANNELS", image.CHANNELS,
            "give the scratch network's convolution channels, e.g. [32, 64, 128, 256]")
    require(train.BATCH_SIZE >= 2, "TRAIN.BATCH_SIZE", train.BATCH_SIZE,
            "it must be at least 2 (each class is contrasted with the others of its batch)")
    for key in ("MAX_EPOCH", "LR_DECAY_AFTER", "SNAPSHOT_INTERVAL", "INTRA_OP_THREADS"):
        require(train[key] >= 0, f"TRAIN.{key}", train[key], "it must not be negative")
    require(math.isfinite(train.LEARNING_RATE) and train.LEARNING_RATE > 0, "TRAIN.LEARNING_RATE",
            train.LEARNING_RATE, "give a positive rate")
    require(0.0 < train.LR_DECAY <= 1.0, "TRAIN.LR_DECAY", train.LR_DECAY, "give a factor in (0, 1]")
    require(train.XLA in XLA_SETTINGS, "TRAIN.XLA", train.XLA, f"use one of {', '.join(XLA_SETTINGS)}")
    require(train.PRECISION in PRECISIONS, "TRAIN.PRECISION", train.PRECISION,
            f"use one of {', '.join(PRECISIONS)}")
    require(train.FLAG or bool(train.PRETRAINED_MODEL), "TRAIN.PRETRAINED_MODEL", train.PRETRAINED_MODEL,
            "TRAIN.FLAG False evaluates a trained encoder: name its snapshot or run folder")
    return config

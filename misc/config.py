"""StackGAN configuration: the reference default tree and YAML merging.

The tree and its defaults are those of the reference ``misc/config.py``; a
YAML file may only override keys that exist, with values of the same type
(the reference rules).  Keys marked "extension" do not exist in the reference
and default to the reference behaviour.

Code receives a config object explicitly: ``load_config`` returns a fresh
one; ``cfg_from_file`` (the reference's name) merges a file into a given tree.
"""

import numpy as np
import yaml
from easydict import EasyDict as edict


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

    # extension: how the training step runs (misc/acceleration.py): XLA
    # 'auto' (on CPUs, where it is measured faster), 'on' or 'off'; PRECISION
    # 'float32', 'mixed' (float16 on GPUs, bfloat16 on CPUs that have it),
    # 'mixed_float16' or 'mixed_bfloat16'
    c.TRAIN.XLA = "auto"
    c.TRAIN.PRECISION = "float32"
    c.TRAIN.INTRA_OP_THREADS = 0  # extension: threads per CPU op (0: TensorFlow's, all cores)

    # Model options
    c.GAN = edict()
    c.GAN.EMBEDDING_DIM = 128
    c.GAN.DF_DIM = 64
    c.GAN.GF_DIM = 128
    c.GAN.NETWORK_TYPE = "default"
    return c


class ConfigError(ValueError):
    """A config file that cannot be merged into the default tree."""


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
                    f"got {_type_name(value)} ({value!r})."
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
                f"got {_type_name(value)} ({value!r}).{hint}"
            )
        base[key] = value
    return base


def read_yaml(filename):
    """Parse a YAML config file; errors name the file."""
    try:
        with open(filename, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{filename}: config file not found. Check the --cfg path.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{filename}: not valid YAML ({exc}).") from None


def cfg_from_file(filename, config):
    """Merge a YAML file into the tree ``config``; returns it."""
    return merge_config(edict(read_yaml(filename) or {}), config, source=filename)


def load_config(filename=None):
    """Return a fresh default config, merged with ``filename`` when given."""
    config = default_config()
    if filename:
        cfg_from_file(filename, config)
    return config

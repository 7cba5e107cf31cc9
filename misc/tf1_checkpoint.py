"""Reading checkpoints written by the reference StackGAN (TensorFlow 0.11/0.12).

The reference saved ``tf.train.Saver(tf.all_variables())`` checkpoints: V1
single files (``model_82000.ckpt``, the published ``birds_model_164000.ckpt``)
or V2 prefixes (``.index`` + ``.data-*``).  TensorFlow 2 reads both with
``tf.train.load_checkpoint``.  Variables are named by prettytensor's scheme
(see ../shared/golden/README.md, section 2); our layers carry those names
(``misc.layers.ReferenceLayer``), so importing is a by-name copy with a shape
check for every variable.
"""

import os
import re

import numpy as np
import tensorflow as tf

NETWORK_SCOPES = ("g_net", "d_net", "hr_g_net", "hr_d_net")

# Reference variables that are not model state: optimizer slots and step
# counters, and TF 0.12's batch-norm zero-debias shadows.
_ADAM_SLOT = re.compile(r"/Adam(_\d+)?$")
_BETA_POWER = re.compile(r"^beta[12]_power(_\d+)?$")
_ZERO_DEBIAS = re.compile(r"/(biased|local_step)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the models at hand."""


def leftover_kind(name):
    """Why a checkpoint variable is expected to stay unused, or None."""
    if _ZERO_DEBIAS.search(name):
        return "bn_zero_debias"
    if _ADAM_SLOT.search(name):
        return "adam_slot"
    if _BETA_POWER.match(name):
        return "adam_beta_power"
    if name == "global_step":
        return "global_step"
    return None


def counter_from_path(path):
    """The iteration counter encoded in a reference checkpoint name:
    ``.../model_82000.ckpt`` -> 82000 (the reference's parsing rule)."""
    base = os.path.basename(path)
    start, end = base.rfind("_") + 1, base.rfind(".")
    try:
        return int(base[start:end])
    except ValueError:
        return None


def is_reference_checkpoint(path):
    """True for a V1 file or V2 prefix that TensorFlow can read as a TF1
    checkpoint with reference variable names (no object graph)."""
    try:
        reader = tf.train.load_checkpoint(path)
    except Exception:
        return False
    names = reader.get_variable_to_shape_map()
    return any(n.split("/", 1)[0] in NETWORK_SCOPES for n in names)


class ReferenceCheckpoint:
    """A reference checkpoint opened for reading."""

    def __init__(self, path):
        self.path = path
        try:
            self.reader = tf.train.load_checkpoint(path)
        except Exception as exc:  # NotFound, DataLoss, ...
            if not (os.path.exists(path) or os.path.exists(path + ".index")):
                raise CheckpointError(
                    f"{path}: checkpoint not found (looked for the file itself and for "
                    f"{path}.index). Check TRAIN.PRETRAINED_MODEL / TEST.PRETRAINED_MODEL."
                ) from None
            raise CheckpointError(
                f"{path}: not a TensorFlow checkpoint ({type(exc).__name__}). Point the "
                "config at a StackGAN .ckpt file (V1) or checkpoint prefix (V2)."
            ) from None
        self.shapes = {k: tuple(v) for k, v in self.reader.get_variable_to_shape_map().items()}
        if not any(n.split("/", 1)[0] in NETWORK_SCOPES for n in self.shapes):
            raise CheckpointError(
                f"{path}: not a StackGAN checkpoint: it has none of the "
                f"{', '.join(s + '/' for s in NETWORK_SCOPES)} variables of the reference "
                "networks."
            )

    @property
    def counter(self):
        return counter_from_path(self.path)

    def has_scope(self, scope):
        return any(n.startswith(scope + "/") for n in self.shapes)

    def model_variable_names(self):
        return {n for n in self.shapes if leftover_kind(n) is None}

    def tensor(self, name):
        return self.reader.get_tensor(name)

    def check_shapes(self, variables):
        """Raise naming every variable whose shape differs."""
        bad = []
        for name, var in variables.items():
            if name in self.shapes and self.shapes[name] != tuple(var.shape):
                bad.append(f"{name}: checkpoint {list(self.shapes[name])}, model {list(var.shape)}")
        if bad:
            raise CheckpointError(
                f"{self.path}: {len(bad)} variable(s) have another shape than the model built "
                "from this config (was the checkpoint trained with other GAN.*_DIM, Z_DIM or "
                "embedding size?):\n  " + "\n  ".join(bad)
            )

    def load(self, variables, required=True):
        """Copy checkpoint values into ``variables`` ({reference name: variable}).

        Returns the names that were filled.  With ``required``, a model
        variable missing from the checkpoint is an error naming it.
        """
        self.check_shapes(variables)
        missing = sorted(n for n in variables if n not in self.shapes)
        if missing and required:
            raise CheckpointError(
                f"{self.path}: {len(missing)} model variable(s) are not in the checkpoint, "
                f"e.g. {', '.join(missing[:5])}. The checkpoint is for another network "
                "(GAN.NETWORK_TYPE, or a Stage-I checkpoint used where Stage-II is needed)."
            )
        filled = []
        for name, var in variables.items():
            if name in self.shapes:
                var.assign(np.asarray(self.tensor(name), dtype=var.dtype))
                filled.append(name)
        return filled

    def load_adam_state(self, optimizer, variables, slot_names=("Adam", "Adam_1"),
                        power_suffix=""):
        """Load m/v slots and the step count of one reference Adam optimizer.

        ``variables``: {reference name: trainable variable} the optimizer
        updates; ``slot_names``: suffixes of its m and v slots; the step count
        comes from ``beta1_power<power_suffix>`` (= beta1 ** (steps + 1)).
        Returns False (and loads nothing) when the checkpoint has no slots.
        """
        m_name, v_name = slot_names
        if not all(f"{n}/{m_name}" in self.shapes for n in variables):
            return False
        for name, var in variables.items():
            m, v = optimizer.slots(var)
            m.assign(self.tensor(f"{name}/{m_name}"))
            v.assign(self.tensor(f"{name}/{v_name}"))
        power_name = f"beta1_power{power_suffix}"
        if power_name in self.shapes:
            power = float(self.tensor(power_name))
            steps = int(round(np.log(power) / np.log(optimizer.beta_1))) - 1 if power > 0 else 0
            optimizer.iterations.assign(max(steps, 0))
        return True

    def unused_model_variables(self, used_names):
        """Checkpoint model variables (not slots, counters or debias state)
        that no model variable took."""
        return sorted(self.model_variable_names() - set(used_names))

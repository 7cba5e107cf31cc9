"""Reading checkpoints written by the reference StackGAN (TensorFlow 0.11/0.12).

The reference saved ``tf.train.Saver(tf.all_variables())`` checkpoints: V1
single files (``model_82000.ckpt``, the published ``birds_model_164000.ckpt``)
or V2 prefixes (``.index`` + ``.data-*``).  TensorFlow 2 reads both with
``tf.train.load_checkpoint``.  Variables are named by prettytensor's scheme
(docs/reference_quirks.md#names); our layers carry those names
(``misc.nets.layers.ReferenceLayer``), so importing is a by-name copy with a shape
check for every variable.
"""

import collections
import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

from misc.config import CheckpointError

NETWORK_SCOPES = ("g_net", "d_net", "hr_g_net", "hr_d_net")
# A variable only the 'simple' Stage-I generator has.
SIMPLE_MARKER = "g_net/custom_deconv2d/custom_deconv2d/w"

# Reference variables that are not model state: optimizer slots and step
# counters, and TF 0.12's batch-norm zero-debias shadows.
_ADAM_SLOT = re.compile(r"/Adam(_\d+)?$")
_BETA_POWER = re.compile(r"^beta[12]_power(_\d+)?$")
_ZERO_DEBIAS = re.compile(r"/(biased|local_step)$")


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


def load_reader(path, error, *, missing, unreadable):
    """``tf.train.load_checkpoint(path)`` (a V1 file or a V2 prefix), its
    failure one line of ``error``: ``missing`` when neither the file nor its
    .index exists, else ``unreadable`` (templates of ``{path}`` and
    ``{error}``, the exception's type)."""
    try:
        return tf.train.load_checkpoint(path)
    except Exception as exc:  # NotFound, DataLoss, ...
        found = os.path.exists(path) or os.path.exists(path + ".index")
        raise error((unreadable if found else missing).format(path=path, error=type(exc).__name__)) from None


class ReferenceCheckpoint:
    """A reference checkpoint opened for reading."""

    def __init__(self, path):
        self.path = path
        self.reader = load_reader(
            path, CheckpointError,
            missing="{path}: checkpoint not found (looked for the file itself and for {path}.index). "
                    "Check TRAIN.PRETRAINED_MODEL / TEST.PRETRAINED_MODEL.",
            unreadable="{path}: not a TensorFlow checkpoint ({error}). Point the config at a StackGAN "
                       ".ckpt file (V1) or checkpoint prefix (V2).")
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

    def tensor(self, name):
        return self.reader.get_tensor(name)

    def plan(self, variables, scopes=None):
        """How ``{reference name: variable}`` maps onto this checkpoint."""
        return plan_import({n: v.shape for n, v in variables.items()}, self.shapes, scopes)

    def check(self, plan, network_type=None):
        """Raise a one-line ``CheckpointError`` when the plan leaves a model
        variable unfilled or finds one with another shape.  ``network_type``
        (the checkpoint's Stage-I network) is named as the cause only when
        the networks built are of another type."""
        if not (plan.mismatched or plan.missing):
            return
        built = plan.matched + plan.missing + [name for name, _, _ in plan.mismatched]
        model_type = "simple" if SIMPLE_MARKER in built else "default"
        other_type = network_type not in (None, model_type) and any(n.startswith("g_net/") for n in built)
        if other_type:
            cause = (f"the checkpoint holds a '{network_type}' Stage-I network and the config builds a "
                     f"'{model_type}' one; set GAN.NETWORK_TYPE: {network_type} in the config")
        if plan.mismatched:
            name, ckpt_shape, model_shape = plan.mismatched[0]
            if not other_type:
                cause = (f"the checkpoint was trained with "
                         f"{describe_dimensions(reference_dimensions(self.shapes))}; use a config with these "
                         "values (and the dataset's text embeddings)")
            raise CheckpointError(
                f"{self.path}: {len(plan.mismatched)} variable(s) have another shape than in the "
                f"models built from the config, e.g. {name}: checkpoint {list(ckpt_shape)}, model "
                f"{list(model_shape)}; {cause}.")
        if not other_type:
            cause = ("the checkpoint lacks them: it is incomplete, or holds other networks (e.g. a "
                     "Stage-I checkpoint where Stage-II is needed); use the checkpoint of this model")
        raise CheckpointError(
            f"{self.path}: {len(plan.missing)} model variable(s) are not in the checkpoint, "
            f"e.g. {', '.join(plan.missing[:3])}; {cause}.")

    def load(self, variables, scopes=None, network_type=None):
        """Copy checkpoint values into ``variables`` ({reference name: variable})
        after checking the whole mapping; returns the ``ImportPlan``."""
        plan = self.plan(variables, scopes)
        self.check(plan, network_type)
        for name in plan.matched:
            var = variables[name]
            var.assign(np.asarray(self.tensor(name), dtype=var.dtype))
        return plan

    def load_adam_state(self, optimizer, variables, slot_names=("Adam", "Adam_1"),
                        power_suffix="", steps_if_unknown=0):
        """Load m/v slots and the step count of one reference Adam optimizer.

        ``variables``: {reference name: trainable variable} the optimizer
        updates; ``slot_names``: suffixes of its m and v slots; the step count
        comes from ``beta{1,2}_power<power_suffix>`` (see ``adam_steps``).
        Returns False (and loads nothing) when the checkpoint has no slots.
        """
        m_name, v_name = slot_names
        if not all(f"{n}/{m_name}" in self.shapes for n in variables):
            return False
        for name, var in variables.items():
            m, v = optimizer.slots(var)
            m.assign(self.tensor(f"{name}/{m_name}"))
            v.assign(self.tensor(f"{name}/{v_name}"))
        powers = [f"beta{i}_power{power_suffix}" for i in (1, 2)]
        if all(p in self.shapes for p in powers):
            beta1_power, beta2_power = (float(self.tensor(p)) for p in powers)
            optimizer.iterations.assign(adam_steps(beta1_power, beta2_power, optimizer.beta_1,
                                                   optimizer.beta_2, steps_if_unknown))
        return True


@dataclasses.dataclass
class ImportPlan:
    """How the variables of the models at hand map onto a checkpoint's."""

    matched: list     # names with the same shape in both
    mismatched: list  # (name, checkpoint shape, model shape)
    missing: list     # model variables the checkpoint lacks
    unused: list      # checkpoint model variables of the built networks nothing takes
    not_needed: list  # checkpoint model variables of networks not built (e.g. critics when sampling)
    leftovers: dict   # kind -> names: optimizer slots, beta powers, global_step, zero-debias state

    @property
    def complete(self):
        return not (self.mismatched or self.missing or self.unused)


# A float32 0.999 ** (t + 1) is zero from here on (and 0.5 ** (t + 1) long
# before): Adam's bias correction is then exactly 1.
ADAM_POWERS_UNDERFLOW_STEPS = 110_000


def adam_steps(beta1_power, beta2_power, beta_1, beta_2, steps_if_unknown=0):
    """Steps a TF1 Adam had taken, from its accumulated powers
    ``beta_i ** (steps + 1)`` (float32).  beta2_power is read first: 0.999
    ** t stays representable up to ~100,000 steps, 0.5 ** t only to 149, so
    the published checkpoints (164,000 iterations) have both powers at zero;
    then the bias correction is 1 whatever the count, and the count is
    ``steps_if_unknown`` (the iteration counter) or at least
    ``ADAM_POWERS_UNDERFLOW_STEPS``."""
    for beta, power in ((beta_2, beta2_power), (beta_1, beta1_power)):
        if 0.0 < power < 1.0:
            return max(int(round(np.log(power) / np.log(beta))) - 1, 0)
        if power >= 1.0:
            return 0
    return max(int(steps_if_unknown or 0), ADAM_POWERS_UNDERFLOW_STEPS)


def plan_import(model_shapes, checkpoint_shapes, scopes=None):
    """Match ``{reference name: shape}`` of the models against a checkpoint's
    ``{name: shape}``.  ``scopes``: the network scopes built (default: those
    of the model names); checkpoint variables of other networks are
    ``not_needed``."""
    model_shapes = {n: tuple(s) for n, s in model_shapes.items()}
    checkpoint_shapes = {n: tuple(s) for n, s in checkpoint_shapes.items()}
    scopes = set(scopes) if scopes is not None else {n.split("/", 1)[0] for n in model_shapes}
    matched, mismatched, unused, not_needed = [], [], [], []
    leftovers = collections.defaultdict(list)
    for name, shape in sorted(checkpoint_shapes.items()):
        if name in model_shapes:
            if model_shapes[name] == shape:
                matched.append(name)
            else:
                mismatched.append((name, shape, model_shapes[name]))
            continue
        kind = leftover_kind(name)
        if kind is not None:
            leftovers[kind].append(name)
        elif name.split("/", 1)[0] in scopes:
            unused.append(name)
        else:
            not_needed.append(name)
    missing = sorted(set(model_shapes) - set(checkpoint_shapes))
    return ImportPlan(matched, mismatched, missing, unused, not_needed, dict(leftovers))


CA_MATRIX = "g_net/custom_fully_connected/Linear/Matrix"


def reference_dimensions(shapes):
    """The config values a reference checkpoint was trained with, as far as
    its variables tell: {'Z_DIM': .., 'GAN.EMBEDDING_DIM': .., ...}."""
    dims = {}
    if CA_MATRIX in shapes:
        ef = shapes[CA_MATRIX][1] // 2
        dims["text embedding"] = shapes[CA_MATRIX][0]
        fc1 = shapes.get("g_net/custom_fully_connected_1/Linear/Matrix")
        if fc1:
            dims["Z_DIM"] = fc1[0] - ef
        dims["GAN.EMBEDDING_DIM"] = ef
    for name, axis in (("g_net/custom_conv2d_9/custom_conv2d_9/w", 2),
                       ("g_net/custom_deconv2d_3/custom_deconv2d_3/w", 3)):
        if name in shapes:
            dims["GAN.GF_DIM"] = shapes[name][axis]
    for name in ("d_net/custom_conv2d/custom_conv2d/w", "hr_d_net/custom_conv2d/custom_conv2d/w"):
        if name in shapes:
            dims["GAN.DF_DIM"] = shapes[name][3]
            break
    return dims


def describe_dimensions(dims):
    return ", ".join(f"{k} {v}" for k, v in dims.items()) or "unknown dimensions"

"""Sampling from a trained StackGAN: load a checkpoint (ours or the authors'),
build the generators it needs, and generate images from text embeddings.

A checkpoint is either

  * a native one (``tf.train.Checkpoint`` written by our trainers or by
    ``misc/commands/convert_checkpoint.py``: a ``model-<N>`` prefix or a directory of
    them), or
  * a reference one written by the original TF 0.11/0.12 code (the published
    ``birds_model_164000.ckpt``, ``flowers_model_130000.ckpt``, Stage-I
    ``model_<N>.ckpt``; V1 single file or V2 prefix).

Everything the models need is read from the checkpoint where it can be: the
stage (Stage-II if it has ``hr_g_net``), the text-embedding size (the input
size of the first fully connected layer, ``g_net/custom_fully_connected/
Linear/Matrix``) and the Stage-I network type.  The other dimensions (Z_DIM,
GAN.EMBEDDING_DIM, GAN.GF_DIM, GAN.DF_DIM, image sizes) come from the config;
a checkpoint trained with others is refused with an error naming a variable,
both shapes and the checkpoint's dimensions.

Importing a reference checkpoint is a by-name copy (``plan_import``): every
model variable must be in the checkpoint with the same shape; checkpoint
variables nothing takes are reported, except optimizer slots, beta powers,
``global_step`` and TF 0.12's batch-norm zero-debias state, which are
expected leftovers (``misc.reference.tf1_checkpoint.leftover_kind``).

Sampling runs the generators in inference mode (batch norm on the moving
statistics), as the reference demo (``pt.Phase.test``): ``z ~ N(0, 1)``,
``eps`` and ``hr_eps`` truncated normal (|x| <= 2), unless given.
"""

import os

import keras
import numpy as np
import tensorflow as tf
from scipy import stats

from misc.config import NETWORK_TYPES, CheckpointError, ConfigError, InputError
from misc.data.formats import HR_LR_RATIO
from misc.reference.importer import LoadReport
from misc.reference.tf1_checkpoint import ReferenceCheckpoint
from misc.training.checkpoints import describe_checkpoint, restore_objects
from stageI.model import StageIGenerator

TRUNCATION = 2.0  # tf.truncated_normal drops values beyond two standard deviations


# -- the generators ---------------------------------------------------------

def image_sizes(config, stage):
    """(Stage-I size, Stage-II size or None) from TEST.LR_IMSIZE / HR_IMSIZE."""
    lr, hr = int(config.TEST.LR_IMSIZE), int(config.TEST.HR_IMSIZE)
    if lr % 16:
        raise ConfigError(f"TEST.LR_IMSIZE {lr} must be a multiple of 16 (64 for the published models).")
    if stage == 2 and hr != HR_LR_RATIO * lr:
        raise ConfigError(f"TEST.HR_IMSIZE {hr} must be {HR_LR_RATIO} x TEST.LR_IMSIZE ({lr}): "
                          f"Stage-II upsamples {HR_LR_RATIO}x; set it to {HR_LR_RATIO * lr}.")
    return lr, (hr if stage == 2 else None)


class StackGANGenerator(keras.Model):
    """The text-to-image generator: Stage-I ``g_net`` and, for Stage-II,
    ``hr_g_net`` on its output.

    ``call(embeddings, eps=None, z=None, hr_eps=None)`` returns
    ``{"fake_images": (B, s, s, 3), "hr_fake_images": (B, 4s, 4s, 3)}``
    (the second only with ``hr_g_net``) in [-1, 1], batch norm in inference
    mode; noise left as None is drawn.  This is the model whose weights
    ``misc/commands/convert_checkpoint.py`` writes as ``generator.weights.h5``::

        model = StackGANGenerator.for_config(load_config(cfg), embedding_dim=1024, stage=2)
        model.load_weights("generator.weights.h5")
    """

    def __init__(self, generator, hr_generator=None, **kwargs):
        kwargs.setdefault("name", "stackgan_generator")
        super().__init__(**kwargs)
        self.generator = generator
        self.hr_generator = hr_generator

    @classmethod
    def for_config(cls, config, embedding_dim, stage=2, network_type=None):
        """Build (with variables) the generators of a config; Stage-II only
        with the 'default' network."""
        network_type = network_type or config.GAN.NETWORK_TYPE
        if network_type not in NETWORK_TYPES:
            raise ConfigError(f"GAN.NETWORK_TYPE is '{network_type}'; use "
                              f"{' or '.join(repr(t) for t in NETWORK_TYPES)}.")
        if stage == 2 and network_type != "default":
            raise ConfigError(f"GAN.NETWORK_TYPE is '{network_type}'; Stage-II exists only "
                              "for 'default'.")
        lr_size, _ = image_sizes(config, stage)
        gan, aug = config.GAN, config.TRAIN.COND_AUGMENTATION
        generator = StageIGenerator(z_dim=config.Z_DIM, ef_dim=gan.EMBEDDING_DIM, gf_dim=gan.GF_DIM,
                                    image_size=lr_size, network_type=network_type,
                                    cond_augmentation=aug)
        hr_generator = None
        if stage == 2:
            from stageII.model import StageIIGenerator
            hr_generator = StageIIGenerator(ef_dim=gan.EMBEDDING_DIM, gf_dim=gan.GF_DIM,
                                            lr_size=lr_size, cond_augmentation=aug)
        model = cls(generator, hr_generator)
        model.build_variables(embedding_dim)
        return model

    @property
    def stage(self):
        return 1 if self.hr_generator is None else 2

    @property
    def z_dim(self):
        return self.generator.z_dim

    @property
    def ef_dim(self):
        return self.generator.ef_dim

    def build_variables(self, embedding_dim):
        """Create every variable with one inference pass on zeros."""
        self(tf.zeros((1, embedding_dim)), tf.zeros((1, self.ef_dim)), tf.zeros((1, self.z_dim)),
             tf.zeros((1, self.ef_dim)))

    def call(self, embeddings, eps=None, z=None, hr_eps=None):
        lr = self.generator(embeddings, eps, z, training=False)["images"]
        out = {"fake_images": lr}
        if self.hr_generator is not None:
            out["hr_fake_images"] = self.hr_generator(lr, embeddings, hr_eps, training=False)["images"]
        return out

    def reference_variables(self):
        found = dict(self.generator.reference_variables())
        if self.hr_generator is not None:
            found.update(self.hr_generator.reference_variables())
        return found

    def networks(self):
        """Name -> network, under the names our training checkpoints use."""
        nets = {"generator": self.generator}
        if self.hr_generator is not None:
            nets["hr_generator"] = self.hr_generator
        return nets


def check_network_type(info, config):
    wanted = config.GAN.NETWORK_TYPE
    if info.stage == 1 and info.network_type != wanted:
        raise CheckpointError(
            f"{info.path}: holds a '{info.network_type}' Stage-I network but GAN.NETWORK_TYPE "
            f"is '{wanted}'; set GAN.NETWORK_TYPE: {info.network_type} in the config.")


def import_reference_variables(variables, info, scopes=None):
    """Fill ``{reference name: variable}`` from the reference checkpoint of
    ``info`` after checking the whole mapping; returns a ``LoadReport``."""
    plan = ReferenceCheckpoint(info.path).load(variables, scopes, info.network_type)
    return LoadReport(info.path, info.kind, info.stage, info.counter, plan.matched, plan.unused,
                      plan.not_needed, plan.leftovers)


def restore_native_networks(networks, info):
    """Restore the named networks ({'generator': ..., ...}) from a native
    checkpoint, requiring every one of their variables."""
    restore_objects(networks, info.path, partial=True)
    variables = sorted(n for net in networks.values() for n in net.reference_variables())
    return LoadReport(info.path, info.kind, info.stage, info.counter, variables)


def load_generator(config, path, info=None):
    """Build the generator(s) a checkpoint holds and load them.

    Returns ``(model, report, info)``: a ``StackGANGenerator`` (Stage-II if
    the checkpoint has one), the ``LoadReport`` and the ``CheckpointInfo``
    (pass ``info`` from ``describe_checkpoint`` to skip reading it again).
    """
    info = info or describe_checkpoint(path)
    check_network_type(info, config)
    model = StackGANGenerator.for_config(config, info.embedding_dim, info.stage, info.network_type)
    if info.kind == "reference":
        report = import_reference_variables(model.reference_variables(), info)
    else:
        report = restore_native_networks(model.networks(), info)
    return model, report, info


# -- noise and sampling ------------------------------------------------------

def draw_noise(rng, count, z_dim, ef_dim):
    """Noise for ``count`` samples from the numpy Generator ``rng``:
    z ~ N(0, 1), eps and hr_eps standard normal truncated to |x| <= 2."""

    def truncated_normal(shape):
        return stats.truncnorm.rvs(-TRUNCATION, TRUNCATION, size=shape, random_state=rng)

    return {"z": rng.standard_normal((count, z_dim)).astype(np.float32),
            "eps": truncated_normal((count, ef_dim)).astype(np.float32),
            "hr_eps": truncated_normal((count, ef_dim)).astype(np.float32)}


def expand_noise(noise, num_captions, num_copy, z_dim, ef_dim, stage, source="noise"):
    """Check user noise and lay it out for ``num_captions x num_copy`` samples.

    Each array has one row per sample, caption-major (row ``i * num_copy + k``
    is copy ``k`` of caption ``i``), or exactly ``num_copy`` rows, reused
    for every caption (copy ``k`` of every caption gets row ``k``).
    """
    wanted = {"z": z_dim, "eps": ef_dim}
    if stage == 2:
        wanted["hr_eps"] = ef_dim
    total = num_captions * num_copy
    out = {}
    for key, dim in wanted.items():
        if key not in noise:
            raise InputError(f"{source}: has no array '{key}'; it needs z (N, {z_dim}), "
                             f"eps (N, {ef_dim})" + (f" and hr_eps (N, {ef_dim})" if stage == 2 else "")
                             + f" with N = {total} (captions x copies) or {num_copy} (copies).")
        array = np.asarray(noise[key], dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != dim or array.shape[0] not in (total, num_copy):
            raise InputError(f"{source}: '{key}' has shape {list(array.shape)}; expected "
                             f"[{total}, {dim}] (captions x copies, caption-major) or "
                             f"[{num_copy}, {dim}] (one row per copy, reused for every caption).")
        if array.shape[0] != total:
            array = np.tile(array, (num_captions, 1))
        out[key] = array
    return out


class Sampler:
    """Runs a ``StackGANGenerator`` in batches on numpy inputs."""

    def __init__(self, model):
        self.model = model
        self._run = tf.function(self._forward, reduce_retracing=True, autograph=False)

    def _forward(self, embeddings, eps, z, hr_eps):
        return self.model(embeddings, eps, z, hr_eps)

    @property
    def stage(self):
        return self.model.stage

    def __call__(self, embeddings, eps, z, hr_eps=None):
        """(Stage-I images, Stage-II images or None) as float32 numpy arrays."""
        embeddings = tf.convert_to_tensor(np.asarray(embeddings, np.float32))
        if hr_eps is None:
            hr_eps = np.zeros_like(eps)
        out = self._run(embeddings, tf.convert_to_tensor(np.asarray(eps, np.float32)),
                        tf.convert_to_tensor(np.asarray(z, np.float32)),
                        tf.convert_to_tensor(np.asarray(hr_eps, np.float32)))
        hr = out.get("hr_fake_images")
        return out["fake_images"].numpy(), (None if hr is None else hr.numpy())

    def generate(self, embeddings, num_copy, batch_size, noise):
        """Yield ``(first caption index, lr, hr)`` per batch of captions:
        ``lr`` (n, num_copy, s, s, 3), ``hr`` (n, num_copy, 4s, 4s, 3) or
        None; ``noise`` as laid out by ``expand_noise``.  As the reference
        demo, each batch of up to ``batch_size`` captions is run once per copy."""
        embeddings = np.asarray(embeddings, np.float32)
        for start in range(0, len(embeddings), batch_size):
            ids = np.arange(start, min(start + batch_size, len(embeddings)))
            lrs, hrs = [], []
            for k in range(num_copy):
                rows = ids * num_copy + k
                lr, hr = self(embeddings[ids], noise["eps"][rows], noise["z"][rows],
                              noise["hr_eps"][rows] if "hr_eps" in noise else None)
                lrs.append(lr)
                hrs.append(hr)
            yield (start, np.stack(lrs, axis=1),
                   None if hrs[0] is None else np.stack(hrs, axis=1))


def resolve_checkpoint_path(path):
    """``path`` as given; a relative path that does not exist from the
    working directory is tried against the repository root (the reference
    configs name './models/...', relative to it)."""
    if path and not os.path.isabs(path) and not (os.path.exists(path) or os.path.exists(path + ".index")):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        candidate = os.path.join(root, path)
        if os.path.exists(candidate) or os.path.exists(candidate + ".index"):
            return candidate
    return path

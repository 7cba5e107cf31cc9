"""Training a char-CNN-RNN text encoder with DS-SJE on a StackGAN dataset,
as Reed et al.'s ``train_sje_hybrid.lua`` (reedscot/cvpr2016) trained
theirs; what is computed is described in ``misc/training/sje.py`` (loss,
optimiser, batches, zero-shot figures) and ``misc/nets/image_encoders.py``
(the image side).

    python -m misc.commands.train_text_encoder --cfg data/<name>/text_encoder.yml

The config (``misc.config.text_encoder_config``: its keys and defaults) is a
YAML file merged into the defaults with the GAN configs' rules.  The dataset
is ``DATA_DIR/DATASET_NAME``: its training split's images, class ids and
``text_c10`` captions (no text embeddings are needed: they are what the
trained encoder makes, with ``demo/embed.py``).  A run writes
``ckt_logs/text_encoders/<DATASET_NAME>/<CONFIG_NAME>_<timestamp>/``:
snapshots ``model-<iteration>`` (the text and image encoders, the optimiser,
the counters), ``text_encoder.keras`` (the newest snapshot's text encoder,
which ``demo/embed.py --text-encoder`` and ``demo/demo.py --text-encoder``
read), TensorBoard scalars (loss, batch accuracy, learning rate), and at the
end the zero-shot figures on the test split (``model-<N>-zero_shot.json``).
It is the GAN trainers' loop (``misc.training.loop.train``): a progress bar
per epoch, snapshots every TRAIN.SNAPSHOT_INTERVAL iterations and at the
end, exact resume from any snapshot (TRAIN.PRETRAINED_MODEL; iteration
``i``'s batch is drawn from ``(SEED, i)``), SIGINT / SIGTERM save a snapshot
and exit 130 / 143, bad input is a one-line error (exit 2).  TRAIN.FLAG
False evaluates TRAIN.PRETRAINED_MODEL on the test split instead.

One device (the first GPU, else the CPU): the loss couples every pair of a
batch, which the GAN trainers' per-replica split does not provide.
"""

import itertools
import json
import math
import os
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from misc.config import SCRATCH, CheckpointError, ConfigError, DatasetError
from misc.data import safe_pickle
from misc.data.atomic import TEMP_PREFIX, WriteError, describe_os_error, write_text
from misc.data.datasets import Split, class_id_array, file_names, image_array
from misc.data.formats import HR_LOAD_SIZE, HR_LR_RATIO, LR_IMAGE_SIZE, LR_LOAD_SIZE, image_filename
from misc.nets.char_cnn_rnn import ENCODER_FILE, CharCNNRNN, embed_captions, one_hot
from misc.nets.image_encoders import FeatureExtractor, ScratchImageEncoder, application, crop_views
from misc.training import loop
from misc.training.acceleration import configure_threads, dtype_policy, dtype_policy_name, use_xla
from misc.training.callbacks import DivergenceGuard, TrainingDiverged
from misc.training.checkpoints import (
    Snapshotter,
    graph_node,
    object_graph,
    resolve,
    restore_native,
    verify_checkpoint_data,
)
from misc.training.gan_trainer import SUMMARY_PREFIX, GANTrainer, normalize_images
from misc.training.sje import (
    ClassBatches,
    TorchRMSprop,
    initialize_uniform,
    sje_learning_rate,
    sje_loss,
    zero_shot_figures,
)

LOG_ROOT = os.path.join(loop.LOG_ROOT, "text_encoders")
# train_sje_hybrid.lua: "handle early stopping if things are going really bad"
EXPLODING_FACTOR = 3.0
EXPLODING_AFTER = 10
EVALUATION_BATCH = 64


# -- the data --------------------------------------------------------------------------

@dataclass
class SplitData:
    """What training and evaluation read of one split."""
    name: str
    images: np.ndarray  # uint8 N x S x S x 3
    images_path: str
    class_ids: np.ndarray
    captions: list  # per image, its captions (str)

    @property
    def crop(self):
        """The crop the images are viewed at: 64 of 76, 256 of 304."""
        return LR_IMAGE_SIZE * (self.images.shape[1] // LR_LOAD_SIZE)


def load_pickle(path, what):
    """A pickle of a split, read with the restricted unpickler."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: {what} not found; build the dataset with data/build_dataset.py "
                           "(README, 'Your own data').")
    try:
        return safe_pickle.load(path)
    except Exception as exc:  # the restricted unpickler's messages name the file
        raise DatasetError(str(exc)) from None


def read_split(dataset_dir, split, high_resolution=False):
    """A split's images (304 px when ``high_resolution`` and present, else
    76), class ids and captions; every image must have a caption file with
    at least one caption."""
    split_dir = os.path.join(dataset_dir, split)
    if not os.path.isdir(split_dir):
        raise DatasetError(f"{split_dir}: dataset split folder not found; build the dataset with "
                           "data/build_dataset.py (README, 'Your own data') or set DATASET_NAME / DATA_DIR.")
    ratio = HR_LR_RATIO if high_resolution and os.path.isfile(
        os.path.join(split_dir, image_filename(HR_LR_RATIO))) else 1
    images_path = os.path.join(split_dir, image_filename(ratio))
    names_path = os.path.join(split_dir, "filenames.pickle")
    class_path = os.path.join(split_dir, "class_info.pickle")
    images = image_array(load_pickle(images_path, "image pickle"), images_path,
                         HR_LOAD_SIZE if ratio > 1 else LR_LOAD_SIZE)
    names = file_names(load_pickle(names_path, "file-name list"), names_path)
    class_ids = class_id_array(load_pickle(class_path, "class-id list"), class_path)
    for path, count in ((names_path, len(names)), (class_path, len(class_ids))):
        if count != len(images):
            raise DatasetError(f"{path}: has {count} entries but {images_path} has {len(images)} images; "
                               "the files of a split must describe the same images in the same order.")
    view = Split(images, None, names, class_ids, dataset_dir, LR_IMAGE_SIZE, split)
    view.check_caption_files()
    captions = [view.captions(i) for i in range(len(names))]
    for i, lines in enumerate(captions):
        if not lines:
            raise DatasetError(f"{view.caption_path(i)}: has no caption; give at least one per line.")
    return SplitData(split, images, images_path, class_ids, captions)


class StepBatches:
    """The batch of every iteration: ``batch(step)`` is drawn from
    ``(seed, step)`` alone, so a resumed run gets the batches of an
    uninterrupted one.  ``features`` (N x views x D) replaces the pictures
    when the image side is a fixed pretrained network."""

    def __init__(self, data, batch_size, num_views, seed, features=None):
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.features = features
        self.sampler = ClassBatches(data.class_ids, [len(c) for c in data.captions], num_views)

    def batch(self, step):
        rng = np.random.default_rng([self.seed, step])
        images, captions, views = self.sampler.draw(rng, self.batch_size)
        text = one_hot([self.data.captions[i][c] for i, c in zip(images, captions)])
        if self.features is not None:
            pictures = self.features[images, views]
        else:
            pictures = crop_views(self.data.images, images, views, self.data.crop)
        return {"text": text, "images": pictures}

    def signature(self):
        example = self.batch(0)
        return {key: tf.TensorSpec(value.shape, tf.as_dtype(value.dtype)) for key, value in example.items()}

    def dataset(self, first_step):
        """Endless tf.data batches from iteration ``first_step`` on, prefetched."""
        steps = itertools.count(first_step)
        dataset = tf.data.Dataset.from_generator(lambda: (self.batch(s) for s in steps),
                                                 output_signature=self.signature())
        return dataset.prefetch(tf.data.AUTOTUNE)


# -- the model --------------------------------------------------------------------------

class SJETrainer(GANTrainer):
    """DS-SJE training of ``text_encoder`` (a CharCNNRNN) against
    ``image_encoder`` (a network trained with it, or the identity on fixed
    features).  A batch holds ``text`` (one-hot, B x 201 x 70) and
    ``images`` (pictures or features); row i of both is one image."""

    epoch_log_keys = ("loss", "accuracy")

    def __init__(self, text_encoder, image_encoder, symmetric=True, name="sje_trainer", **kwargs):
        super().__init__(name=name, **kwargs)
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.symmetric = bool(symmetric)

    def compile(self, optimizer, **kwargs):
        super().compile(**kwargs)
        self.rmsprop = optimizer
        self.rmsprop.build(self.trained_variables())
        self.built = True  # the encoders are built; the trainer has no call() of its own

    def trained_variables(self):
        return self.text_encoder.trainable_weights + self.image_encoder.trainable_weights

    def optimizers(self):
        return {"optimizer": self.rmsprop}

    def networks(self):
        return {"text_encoder": self.text_encoder, "image_encoder": self.image_encoder}

    def embed_images(self, images, training=False):
        """The image side's float32 embeddings of uint8 pictures (in [-1, 1]
        for the network) or of fixed features."""
        return tf.cast(self.image_encoder(normalize_images(images), training=training), tf.float32)

    def train_step(self, batch):
        variables = self.trained_variables()
        with tf.GradientTape() as tape:
            fea_txt = tf.cast(self.text_encoder(batch["text"], training=True), tf.float32)
            fea_img = self.embed_images(batch["images"], training=True)
            loss, accuracy = sje_loss(fea_txt, fea_img, self.symmetric)
            objective = self.loss_scale(self.rmsprop)(loss)
        self.apply_gradients(self.rmsprop, tape.gradient(objective, variables), variables)
        values = {"loss": loss, "accuracy": accuracy}
        return self.finish_step(values, values, {}, {"learning_rate": self.rmsprop.learning_rate})


def build_text_encoder(config, embedding_dim):
    """The config's CharCNNRNN (``ENCODER``) for ``embedding_dim``."""
    enc = config.ENCODER
    kwargs = {"embedding_dim": embedding_dim, "dropout": enc.DROPOUT, "average": enc.AVERAGE}
    if enc.CONV_CHANNELS:
        kwargs["conv_channels"] = tuple(enc.CONV_CHANNELS)
    factory = CharCNNRNN.birds if enc.ARCHITECTURE == "birds" else CharCNNRNN.flowers
    return factory(name="text_encoder", **kwargs)


def build_trainer(config, embedding_dim, scratch):
    """The trainer, its parameters uniform in [-0.08, 0.08] (the scratch
    network's convolutions, not the Lua's, keep Keras's initialisers)."""
    with dtype_policy(dtype_policy_name(config)):
        text_encoder = build_text_encoder(config, embedding_dim)
        if scratch:
            image_encoder = ScratchImageEncoder(config.IMAGE.CHANNELS, embedding_dim, LR_IMAGE_SIZE,
                                                name="image_encoder")
        else:
            image_encoder = keras.layers.Identity(name="image_encoder")  # -image_noop 1
    trainer = SJETrainer(text_encoder, image_encoder, symmetric=config.TRAIN.SYMMETRIC)
    trainer.compile(TorchRMSprop(config.TRAIN.LEARNING_RATE), jit_compile=use_xla(config))
    if text_encoder.compute_dtype == "float16":
        trainer.use_loss_scaling()
    lua_weights = text_encoder.weights + (image_encoder.projection_weights() if scratch else [])
    initialize_uniform([w for w in lua_weights if w.trainable], config.SEED)
    return trainer


# -- snapshots, the encoder file ------------------------------------------------------------

def export_encoder(model, path):
    """Save ``model`` as a .keras file, atomically."""
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f"{TEMP_PREFIX}{os.path.basename(path)}")
    try:
        model.save(temporary)
        os.replace(temporary, path)
    except OSError as exc:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise WriteError(f"{path}: could not write it ({describe_os_error(exc)}); any previous version "
                         "is intact.") from None


class EncoderSnapshotter(Snapshotter):
    """Snapshots that also export the text encoder (``ENCODER_FILE``)."""

    def save(self):
        path = super().save()
        export_encoder(self.gan.text_encoder, os.path.join(self.directory, ENCODER_FILE))
        return path


def snapshot_prefix(path):
    """The text-encoder snapshot TRAIN.PRETRAINED_MODEL names (a model-<N>
    prefix, its run folder, or a folder of runs: the newest), its data
    checked; found before anything else is computed."""
    kind, prefix = resolve(path)
    if kind != "native":
        raise CheckpointError(f"{path}: a reference GAN checkpoint, not a text-encoder snapshot "
                              "(TRAIN.PRETRAINED_MODEL).")
    verify_checkpoint_data(prefix)
    if graph_node(object_graph(prefix), ("text_encoder",)) is None:
        raise CheckpointError(f"{prefix}: not a text-encoder snapshot (a GAN's?); give a model-<N> of "
                              f"{LOG_ROOT}/<dataset>/ or its run folder (TRAIN.PRETRAINED_MODEL).")
    return prefix


class LossGuard(DivergenceGuard):
    """Stops at a loss that is not finite, and where train_sje_hybrid.lua
    aborts ("loss is exploding"): after EXPLODING_AFTER iterations of the
    run, a loss above EXPLODING_FACTOR times its first.  ``PeriodicSnapshot``
    calls ``fail`` for a weight that is not finite."""

    def __init__(self, gan, snapshotter):
        super().__init__(gan, snapshotter)
        self.first = None
        self.iterations = 0

    def on_train_batch_end(self, batch, logs=None):
        loss = float(logs[SUMMARY_PREFIX + "loss"])
        self.iterations += 1
        self.first = loss if self.first is None else self.first
        if not math.isfinite(loss):
            self.fail(f"the loss is {loss}")
        if self.iterations > EXPLODING_AFTER and loss > EXPLODING_FACTOR * self.first:
            self.fail(f"the loss {loss:.4g} is over {EXPLODING_FACTOR:g} times this run's first "
                      f"({self.first:.4g}), where train_sje_hybrid.lua aborts")

    def fail(self, what):
        hint = self.snapshotter.resume_hint()
        counter = int(self.gan.counter.numpy())
        raise TrainingDiverged(f"training diverged at iteration {counter}: {what}. {hint[:-1]}; "
                               "lower TRAIN.LEARNING_RATE.")


# -- training and evaluation --------------------------------------------------------------

def train(trainer, batches, config, start_path=None):
    """Train from the trainer's counter to TRAIN.MAX_EPOCH epochs of one
    iteration per training class, with the GAN trainers' loop, in a new log
    folder under LOG_ROOT; returns the final snapshot (None when there was
    nothing to train).  SIGINT / SIGTERM save a snapshot and exit 130 / 143."""
    train_cfg = config.TRAIN

    def rate_for(name, epoch):
        return sje_learning_rate(train_cfg.LEARNING_RATE, epoch, train_cfg.LR_DECAY, train_cfg.LR_DECAY_AFTER)

    return loop.train(trainer, None, config, make_preview=lambda log_dir: lambda epoch, writer: None,
                      rate_for=rate_for, start_path=start_path, batches=batches.dataset,
                      steps=batches.sampler.num_classes, snapshotter=EncoderSnapshotter, guard=LossGuard,
                      log_root=LOG_ROOT)


def encode_images(trainer, data, features=None):
    """The image side's embeddings of every image's first view (its centre)."""
    if features is not None:
        return features[:, 0]
    ids = np.arange(len(data.images))
    pictures = crop_views(data.images, ids, np.zeros_like(ids), data.crop)
    return np.concatenate([trainer.embed_images(tf.constant(pictures[s:s + EVALUATION_BATCH])).numpy()
                           for s in range(0, len(ids), EVALUATION_BATCH)])


def evaluate(trainer, test, features=None, train_classes=None):
    """The zero-shot figures (``misc.sje.zero_shot_figures``) on ``test``,
    and whether its classes were held out of ``train_classes``."""
    flat = [caption for captions in test.captions for caption in captions]
    embedded = embed_captions(trainer.text_encoder, flat)
    bounds = np.cumsum([0] + [len(c) for c in test.captions])
    text = [embedded[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    figures = zero_shot_figures(encode_images(trainer, test, features), test.class_ids, text)
    if train_classes is not None:
        figures["held_out"] = not set(np.unique(test.class_ids)) & set(train_classes)
    return figures


def describe_figures(figures):
    held = {True: "held out of training", False: "seen in training", None: "classes"}[figures.get("held_out")]
    return (f"Zero-shot on the test split ({figures['images']} images of {figures['classes']} classes, "
            f"{held}): top-1 accuracy {100 * figures['top1']:.1f}% (chance {100 / figures['classes']:.1f}%), "
            f"AP@{figures['k']} {100 * figures['ap']:.1f}% (at most {100 * figures['ap_max']:.1f}% with "
            "these class sizes)")


def write_figures(figures, snapshot):
    path = f"{snapshot}-zero_shot.json"
    write_text(json.dumps(figures, indent=2) + "\n", path)
    print(f"Wrote {path}")


def run(config, cfg_file):
    """Train (TRAIN.FLAG) or evaluate the text encoder of ``config`` (read
    from ``cfg_file``); returns the zero-shot figures on the test split."""
    configure_threads(config)
    keras.utils.set_random_seed(config.SEED)
    start = snapshot_prefix(config.TRAIN.PRETRAINED_MODEL) if config.TRAIN.PRETRAINED_MODEL else None
    pretrained = config.IMAGE.NETWORK != SCRATCH
    if pretrained:
        application(config.IMAGE.NETWORK)
    dataset_dir = os.path.join(config.DATA_DIR, config.DATASET_NAME)
    test = read_split(dataset_dir, "test", high_resolution=pretrained)
    train_data = read_split(dataset_dir, "train", high_resolution=pretrained) if config.TRAIN.FLAG else None
    if train_data is not None:
        classes = len(np.unique(train_data.class_ids))
        if config.TRAIN.BATCH_SIZE > classes:
            raise ConfigError(f"{cfg_file}: TRAIN.BATCH_SIZE {config.TRAIN.BATCH_SIZE} is more than the "
                              f"{classes} classes of the training split (a batch holds distinct classes); "
                              f"give at most {classes}.")
    features = {"train": None, "test": None}  # the fixed features of a pretrained network
    if pretrained:
        extractor = FeatureExtractor(config.IMAGE.NETWORK, config.IMAGE.WEIGHTS, config.IMAGE.SIZE)
        for data in (train_data, test):
            if data is not None:
                views = config.IMAGE.VIEWS if data is train_data else 1
                features[data.name] = extractor.features(data.images, data.images_path, data.crop, views,
                                                         os.path.join(dataset_dir, data.name))
    embedding_dim = features["test"].shape[-1] if pretrained else config.ENCODER.EMBEDDING_DIM
    trainer = build_trainer(config, embedding_dim, scratch=not pretrained)
    print(trainer.text_encoder.describe())
    if start:
        print(f"Reading model parameters from {start}")
        restore_native(trainer, start)
    else:
        print("Created model with fresh parameters.")
    final, train_classes = start, None
    if config.TRAIN.FLAG:
        batches = StepBatches(train_data, config.TRAIN.BATCH_SIZE, config.IMAGE.VIEWS, config.SEED,
                              features["train"])
        final = train(trainer, batches, config, start) or start
        train_classes = batches.sampler.classes
    figures = evaluate(trainer, test, features["test"], train_classes)
    print(describe_figures(figures))
    if final:
        print(f"Text encoder: {os.path.join(os.path.dirname(final), ENCODER_FILE)}")
        write_figures(figures, final)
    return figures

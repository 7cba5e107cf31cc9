"""Deep symmetric structured joint embedding (DS-SJE): the objective, the
optimiser, the batches and the zero-shot figures with which Reed et al.
(CVPR 2016) trained and measured their char-CNN-RNN text encoders.

Written from reedscot/cvpr2016: ``train_sje_hybrid.lua`` (``JointEmbeddingLoss``,
``feval``, the training loop), ``util/MultimodalMinibatchLoaderCaption.lua``
(``next_batch``), ``classify_sje_tcnn.lua`` and ``retrieval_sje_tcnn.lua`` and
``util/util_retrieval.lua`` (the figures of the paper's tables), with
torch/optim's ``rmsprop.lua``:

* **Batches** (``next_batch``): ``batch_size`` *distinct* training classes (the
  first ``batch_size`` of a random permutation of the classes); per class one
  random image of it, one random caption of that image and one random view
  (crop) of the image.  Row ``i`` of the text and of the image batch describe
  the same image, and its label is ``i``.
* **Loss** (``JointEmbeddingLoss(fea_txt, fea_img, labels)``): with scores
  ``s[i, j] = <fea_img[i], fea_txt[j]>``, the sum over the image rows ``i`` and
  the text rows ``j != labels[i]`` of ``max(0, s[i, j] - s[i, labels[i]] + 1)``
  (a term counts where it is > 0), divided by ``rows(fea_img) *
  rows(fea_txt)``.  Symmetric (``-symmetric 1``, the default and the published
  encoders' setting): the same with the roles swapped, added.  The Lua computes
  the gradients by hand; they are the gradients of this sum, which TensorFlow
  differentiates.  The batch accuracy it prints is that of the last call:
  each text row's best-scoring image row (the first of equal ones) is its own.
* **Optimiser**: ``optim.rmsprop`` (``TorchRMSprop``) over all parameters,
  ``alpha`` 0.99 (the script passes ``opt.decay_rate``, which it never
  defines, so rmsprop's default holds), ``epsilon`` 1e-8 added *outside* the
  square root; the learning rate is multiplied by ``learning_rate_decay``
  (0.98) after every "epoch" of as many iterations as there are training
  classes (``loader.ntrain``), from epoch ``learning_rate_decay_after`` (1) on.
  ``-grad_clip`` is declared but never used: no clipping.  Parameters start
  uniform in [-0.08, 0.08].  The scripts that trained the published encoders
  (``scripts/train_*_hybrid.sh``) set learning rate 0.0007 and 200 epochs:
  150 CUB classes x 200 = 30,000 iterations and 82 flowers classes x 200 =
  16,400, the ``iter30000`` and ``iter16400`` of the file names.
* **Zero-shot figures** on held-out classes (the paper's "top-1 acc" and
  "AP@50"): every class is represented by the mean of the text embeddings of
  all captions of all its images; an image (its first view) is classified as
  the class of highest score (``classify_sje_tcnn.lua``: the first of equal
  ones), top-1 accuracy over the images.  Retrieval (``retrieval_sje_tcnn.lua``)
  ranks all images by their score with each class and averages over the
  classes the fraction of the 50 best that belong to it (the script prints it
  as "mAP@50").
"""

import keras
import numpy as np
import tensorflow as tf

MARGIN = 1.0  # JointEmbeddingLoss's "+ 1"
INIT_RANGE = 0.08  # params:uniform(-0.08, 0.08)
RMSPROP_ALPHA = 0.99  # optim.rmsprop's defaults
RMSPROP_EPSILON = 1e-8
RETRIEVAL_K = 50  # AP@50


# -- the loss ------------------------------------------------------------------

def joint_embedding_loss(fea_txt, fea_img, labels):
    """``JointEmbeddingLoss(fea_txt, fea_img, labels)``: (loss, accuracy);
    ``labels[i]`` is the text row matching image row ``i``."""
    scores = tf.matmul(fea_img, fea_txt, transpose_b=True)
    rows, columns = tf.shape(scores)[0], tf.shape(scores)[1]
    labels = tf.cast(labels, tf.int32)
    label_scores = tf.gather(scores, labels, axis=1, batch_dims=1)
    others = 1.0 - tf.one_hot(labels, columns, dtype=scores.dtype)
    hinge = tf.nn.relu(scores - label_scores[:, None] + MARGIN) * others
    loss = tf.reduce_sum(hinge) / tf.cast(rows * columns, scores.dtype)
    hits = tf.equal(tf.argmax(scores, axis=1, output_type=tf.int32), labels)
    return loss, tf.reduce_mean(tf.cast(hits, scores.dtype))


def sje_loss(fea_txt, fea_img, symmetric=True):
    """The training objective of ``feval``: (loss, batch accuracy) of a batch
    whose row ``i`` of text and image match (labels 0, 1, ...)."""
    labels = tf.range(tf.shape(fea_img)[0])
    loss, accuracy = joint_embedding_loss(fea_txt, fea_img, labels)
    if symmetric:
        text_loss, accuracy = joint_embedding_loss(fea_img, fea_txt, labels)
        loss = loss + text_loss
    return loss, accuracy


# -- the optimiser -----------------------------------------------------------------

class TorchRMSprop(keras.optimizers.Optimizer):
    """torch/optim's ``rmsprop``: ``m = alpha * m + (1 - alpha) * g^2``,
    ``w -= lr * g / (sqrt(m) + epsilon)``, ``m`` starting at 0.  (Keras's
    RMSprop adds epsilon inside the square root.)  torch/optim started ``m``
    at 1 from June to September 2016; the encoders were trained before that,
    with 0, as now."""

    def __init__(self, learning_rate=7e-4, alpha=RMSPROP_ALPHA, epsilon=RMSPROP_EPSILON,
                 name="torch_rmsprop", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.alpha = float(alpha)
        self.epsilon = float(epsilon)
        self.mean_squares = []

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.mean_squares = [self.add_variable_from_reference(v, "mean_square") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        gradient = keras.ops.cast(gradient, variable.dtype)
        learning_rate = keras.ops.cast(learning_rate, variable.dtype)
        mean_square = self.mean_squares[self._get_variable_index(variable)]
        self.assign(mean_square, self.alpha * mean_square + (1.0 - self.alpha) * gradient * gradient)
        self.assign_sub(variable, learning_rate * gradient / (keras.ops.sqrt(mean_square) + self.epsilon))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "epsilon": self.epsilon}


def sje_learning_rate(base_rate, epoch, decay=0.98, decay_after=1):
    """The rate of the updates of epoch ``epoch`` (from 0): the loop multiplies
    it by ``decay`` at the end of every epoch ``e + 1 >= decay_after``."""
    decays = max(0, epoch - max(decay_after, 1) + 1)
    return base_rate * decay ** decays


def initialize_uniform(variables, seed, scale=INIT_RANGE):
    """``params:uniform(-scale, scale)`` on every variable (weights and
    biases alike), from ``seed``."""
    rng = np.random.default_rng(seed)
    for variable in variables:
        variable.assign(rng.uniform(-scale, scale, tuple(variable.shape)).astype(variable.dtype))


# -- batches ------------------------------------------------------------------------

class ClassBatches:
    """``next_batch`` over a split: ``class_ids`` (one per image),
    ``caption_counts`` (captions of each image) and ``num_views`` views per
    image.  ``draw(rng, batch_size)`` returns the rows' (image, caption,
    view) indices."""

    def __init__(self, class_ids, caption_counts, num_views):
        class_ids = np.asarray(class_ids)
        self.classes = np.unique(class_ids)
        self.members = [np.flatnonzero(class_ids == c) for c in self.classes]
        self.caption_counts = np.asarray(caption_counts)
        self.num_views = int(num_views)

    @property
    def num_classes(self):
        return len(self.classes)

    def draw(self, rng, batch_size):
        chosen = rng.permutation(self.num_classes)[:batch_size]
        images = np.array([self.members[c][rng.integers(len(self.members[c]))] for c in chosen])
        captions = np.array([rng.integers(self.caption_counts[i]) for i in images])
        views = rng.integers(self.num_views, size=len(images))
        return images, captions, views


# -- zero-shot figures -------------------------------------------------------------------

def class_text_features(text_features, class_ids):
    """(classes, their mean text embedding): ``text_features[i]`` holds the
    embeddings of image ``i``'s captions (captions x D)."""
    class_ids = np.asarray(class_ids)
    classes = np.unique(class_ids)
    means = np.stack([np.concatenate([text_features[i] for i in np.flatnonzero(class_ids == c)]).mean(axis=0)
                      for c in classes])
    return classes, means


def zero_shot_figures(image_features, class_ids, text_features, k=RETRIEVAL_K):
    """The paper's figures for images of ``class_ids`` (their first view's
    features) and their captions' embeddings: {"top1": top-1 accuracy of
    classifying each image by its classes' mean text embeddings, "ap": the
    retrieval script's precision of the ``k`` best images per class (fewer
    when there are fewer images), "ap_max": the most it can be with these
    class sizes, "classes", "images", "k"}."""
    class_ids = np.asarray(class_ids)
    classes, class_features = class_text_features(text_features, class_ids)
    scores = np.asarray(image_features, np.float64) @ np.asarray(class_features, np.float64).T
    top1 = float(np.mean(classes[np.argmax(scores, axis=1)] == class_ids))
    k = min(k, len(class_ids))
    precision = [np.mean(class_ids[np.argsort(-scores[:, c], kind="stable")[:k]] == cls)
                 for c, cls in enumerate(classes)]
    best = np.mean([min(k, np.sum(class_ids == cls)) / k for cls in classes])
    return {"top1": top1, "ap": float(np.mean(precision)), "ap_max": float(best), "classes": len(classes),
            "images": len(class_ids), "k": k}

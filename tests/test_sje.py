"""DS-SJE (misc/training/sje.py) against independent NumPy transcriptions of the Lua
of reedscot/cvpr2016 (train_sje_hybrid.lua's JointEmbeddingLoss, feval and
learning-rate loop; classify_sje_tcnn.lua; retrieval_sje_tcnn.lua with
util_retrieval.lua) and torch/optim's rmsprop.lua, written loop by loop as
the Lua runs (1-based indices shifted by one), and a short training run that
must learn."""

import numpy as np
import pytest
import tensorflow as tf

from misc.training.sje import (
    ClassBatches,
    TorchRMSprop,
    joint_embedding_loss,
    sje_learning_rate,
    sje_loss,
    zero_shot_figures,
)


def lua_joint_embedding_loss(fea_txt, fea_img, labels):
    """JointEmbeddingLoss as written: loss, {txt_grads, img_grads}, acc_batch."""
    batch_size, num_class = fea_img.shape[0], fea_txt.shape[0]
    score = np.zeros((batch_size, num_class))
    txt_grads = np.zeros_like(fea_txt)
    img_grads = np.zeros_like(fea_img)
    loss, acc_batch = 0.0, 0.0
    for i in range(batch_size):
        for j in range(num_class):
            score[i, j] = np.dot(fea_img[i], fea_txt[j])
        label_score = score[i, labels[i]]
        for j in range(num_class):
            if j != labels[i]:
                thresh = score[i, j] - label_score + 1
                if thresh > 0:
                    loss += thresh
                    img_grads[i] += fea_txt[j] - fea_txt[labels[i]]
                    txt_grads[j] += fea_img[i]
                    txt_grads[labels[i]] -= fea_img[i]
        max_ix = 0
        for j in range(1, num_class):  # torch's max: the first of equal maxima
            if score[i, j] > score[i, max_ix]:
                max_ix = j
        if max_ix == labels[i]:
            acc_batch += 1
    denom = batch_size * num_class
    return loss / denom, (txt_grads / denom, img_grads / denom), acc_batch / batch_size


def lua_feval(fea_txt, fea_img, symmetric):
    """feval's criterion: the loss and the gradients sent back to both encoders."""
    labels = np.arange(len(fea_img))
    loss, (dtxt, dimg), acc = lua_joint_embedding_loss(fea_txt, fea_img, labels)
    if symmetric:
        loss2, grads2, acc = lua_joint_embedding_loss(fea_img, fea_txt, labels)
        dtxt = dtxt + grads2[1]
        dimg = dimg + grads2[0]
        loss += loss2
    return loss, dtxt, dimg, acc


def tf_loss_and_gradients(fea_txt, fea_img, function):
    txt, img = tf.constant(fea_txt, tf.float32), tf.constant(fea_img, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([txt, img])
        loss, accuracy = function(txt, img)
    dtxt, dimg = tape.gradient(loss, [txt, img])
    return float(loss), dtxt.numpy(), dimg.numpy(), float(accuracy)


def batch_with_known_classes(rng, batch=6, dim=5):
    """Text and image rows of ``batch`` classes: each image near its own
    text, at a scale where some hinge terms are active and others are not."""
    txt = rng.normal(size=(batch, dim))
    img = txt + 0.8 * rng.normal(size=(batch, dim))
    return (0.6 * txt).astype(np.float32), (0.6 * img).astype(np.float32)


@pytest.mark.parametrize("symmetric", [True, False])
def test_loss_and_gradients_equal_the_lua(symmetric):
    fea_txt, fea_img = batch_with_known_classes(np.random.default_rng(3))
    expected = lua_feval(fea_txt.astype(np.float64), fea_img.astype(np.float64), symmetric)
    active = sum((fea_img @ fea_txt.T - np.diag(fea_img @ fea_txt.T)[:, None] + 1 > 0).ravel()) - len(fea_img)
    assert 0 < active < fea_img.shape[0] * (fea_img.shape[0] - 1), "the batch must exercise both hinge sides"
    loss, dtxt, dimg, accuracy = tf_loss_and_gradients(
        fea_txt, fea_img, lambda t, i: sje_loss(t, i, symmetric=symmetric))
    assert loss == pytest.approx(expected[0], abs=1e-5)
    np.testing.assert_allclose(dtxt, expected[1], atol=1e-5)
    np.testing.assert_allclose(dimg, expected[2], atol=1e-5)
    assert accuracy == pytest.approx(expected[3])


def test_loss_with_permuted_labels_and_more_texts_than_images():
    """JointEmbeddingLoss's general form: labels[i] names image i's text row."""
    rng = np.random.default_rng(7)
    fea_txt = (0.5 * rng.normal(size=(7, 4))).astype(np.float32)
    labels = np.array([4, 0, 6, 2])
    fea_img = (fea_txt[labels] + 0.5 * rng.normal(size=(4, 4))).astype(np.float32)
    loss, (dtxt, dimg), acc = lua_joint_embedding_loss(fea_txt.astype(np.float64), fea_img.astype(np.float64),
                                                      labels)
    got = tf_loss_and_gradients(fea_txt, fea_img, lambda t, i: joint_embedding_loss(t, i, labels))
    assert got[0] == pytest.approx(loss, abs=1e-5)
    np.testing.assert_allclose(got[1], dtxt, atol=1e-5)
    np.testing.assert_allclose(got[2], dimg, atol=1e-5)
    assert got[3] == pytest.approx(acc)


def test_rmsprop_is_torch_optims():
    rng = np.random.default_rng(0)
    start = rng.normal(size=(3, 4))
    gradients = [rng.normal(size=(3, 4)) * scale for scale in (1.0, 1e-3, 5.0)]
    lr, alpha, epsilon = 0.01, 0.99, 1e-8
    x, m = start.copy(), np.zeros_like(start)
    for g in gradients:  # rmsprop.lua, steps (4) and (5)
        m = m * alpha + (1.0 - alpha) * g * g
        x = x - lr * g / (np.sqrt(m) + epsilon)
    variable = tf.Variable(start.astype(np.float32))
    optimizer = TorchRMSprop(learning_rate=lr)
    optimizer.build([variable])
    for g in gradients:
        optimizer.apply_gradients([(tf.constant(g, tf.float32), variable)])
    np.testing.assert_allclose(variable.numpy(), x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("decay_after", [0, 1, 3])
def test_learning_rate_decay_is_the_lua_loop(decay_after):
    ntrain, base, decay = 5, 0.0007, 0.98
    rate, epochs = base, 8
    for i in range(1, ntrain * epochs + 1):
        epoch = (i - 1) // ntrain  # the update of iteration i uses the rate set before it
        assert sje_learning_rate(base, epoch, decay, decay_after) == pytest.approx(rate, rel=1e-12)
        if i % ntrain == 0 and i / ntrain >= decay_after:
            rate *= decay


def test_batches_hold_distinct_classes_and_matching_rows():
    class_ids = np.array([1, 1, 2, 2, 2, 3, 4, 4])
    counts = np.array([1, 3, 2, 2, 5, 1, 4, 2])
    sampler = ClassBatches(class_ids, counts, num_views=10)
    seen = set()
    for step in range(50):
        images, captions, views = sampler.draw(np.random.default_rng([0, step]), 3)
        assert len(set(class_ids[images])) == 3
        assert all(0 <= c < counts[i] for i, c in zip(images, captions))
        assert all(0 <= v < 10 for v in views)
        seen.update(images.tolist())
    assert seen == set(range(len(class_ids)))
    again = sampler.draw(np.random.default_rng([0, 7]), 3)
    first = sampler.draw(np.random.default_rng([0, 7]), 3)
    assert all(np.array_equal(a, b) for a, b in zip(again, first))


def lua_classify(fea_img, fea_txt):
    """classify(): per class i its images fea_img[i] (k x D) and its mean text
    fea_txt[i]; top-1 accuracy over all images."""
    acc = total = 0
    for i in range(len(fea_img)):
        for k in range(len(fea_img[i])):
            best_match, best_score = 0, -np.inf
            for j in range(len(fea_txt)):
                score = np.dot(fea_img[i][k], fea_txt[j])
                if score > best_score:
                    best_match, best_score = j, score
            acc += best_match == i
            total += 1
    return acc / total


def lua_retrieval(fea_img, fea_txt, k):
    """retrieval_at_k: per class, all images ranked by score; mean over
    classes and ranks 1..k of "is of the class"."""
    matches = []
    for i in range(len(fea_txt)):
        scores = [(np.dot(img, fea_txt[i]), c == i) for c in range(len(fea_img)) for img in fea_img[c]]
        ranked = sorted(scores, key=lambda s: -s[0])
        matches.append([m for _, m in ranked[:k]])
    return float(np.mean(matches))


def test_zero_shot_figures_are_the_evaluation_scripts():
    rng = np.random.default_rng(5)
    classes = np.array([3, 3, 3, 8, 8, 1, 1, 1, 1, 6, 6])
    prototypes = {c: rng.normal(size=4) for c in np.unique(classes)}
    images = np.stack([prototypes[c] + 1.2 * rng.normal(size=4) for c in classes])
    texts = [np.stack([prototypes[c] + rng.normal(size=4) for _ in range(n)])
             for c, n in zip(classes, [2, 3, 1, 2, 2, 4, 1, 2, 3, 2, 2])]
    order = np.unique(classes)
    per_class_images = [images[classes == c] for c in order]
    per_class_text = [np.concatenate([t for t, c in zip(texts, classes) if c == cls]).mean(axis=0)
                      for cls in order]
    figures = zero_shot_figures(images, classes, texts, k=4)
    assert figures["top1"] == pytest.approx(lua_classify(per_class_images, per_class_text))
    assert figures["ap"] == pytest.approx(lua_retrieval(per_class_images, per_class_text, 4))
    assert 0.0 < figures["top1"] < 1.0 and 0.0 < figures["ap"] < 1.0, "the fixture must not be trivial"
    assert (figures["classes"], figures["images"], figures["k"]) == (4, 11, 4)
    assert figures["ap_max"] == pytest.approx((3 / 4 + 2 / 4 + 4 / 4 + 2 / 4) / 4)

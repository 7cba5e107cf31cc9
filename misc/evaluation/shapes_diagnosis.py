"""The measurements behind docs/shapes_diagnosis.md: why a Stage-I model on a
bundled shapes dataset does (or does not) learn shapes (the command:
misc/commands/shapes_diagnosis.py).

Of a dataset recipe (``misc.data.shapes.RECIPES``) and its generated
training split, with no model:

* geometry: per size class, the object's area in pixels of the 64 px
  training crop, and how many pixels tell two shapes of that area apart;
* combinations: how many attribute combinations the recipe has against its
  training pictures;
* the pipeline: random training crops that cut objects, flips that change a
  shape, "wrong" pairs (as the training sampler draws them) of the same
  shape, captions that disagree with the labels, and what the evaluator
  makes of the real pictures and of blurred ones (blobs);
* the caption encoder: cosine distances between training embeddings (the
  mean of NUM_EMBEDDING captions) that differ only in one attribute, also
  through a conditioning augmentation (its means ``mu``, its codes
  ``c = mu + sigma * eps``, and the shift of ``mu`` against the noise).

Of a trained Stage-I generator and discriminator: the discriminator's
scores for real pictures, the same pictures redrawn as another shape,
generated pictures and those redrawn sharply as the right and as a wrong
shape; and its gradient on generated pictures (what the generator's
adversarial loss asks of each pixel): the share of it on the pixels that
tell the right shape from a wrong one, and its direction there.
"""

import numpy as np
from scipy import ndimage

from misc.data.formats import LR_IMAGE_SIZE, LR_LOAD_SIZE, TEXT_EMBEDDING_DIM
from misc.data.hash_encoder import encode_captions
from misc.data.shapes import ATTRIBUTES, SHAPES, make_captions, make_images, sample_attributes
from misc.evaluation.shapes_attributes import (
    SCORED_ATTRIBUTES,
    caption_attributes,
    measure,
    radius_for_area,
    redraw,
    render_coverage,
    score,
)

CROP_MARGIN = LR_LOAD_SIZE - LR_IMAGE_SIZE  # training crops start at offsets 0 .. CROP_MARGIN - 1
BLUR_SIGMA = 2.0  # pixels of a 64 px picture: what turns a real picture into a blob
NUM_PROBES = 200  # attribute combinations / pictures per measurement
OBJECT_LEVEL = 127  # a pixel differing from the corner colour by more (in a channel) is the object's


def cosine_distance(a, b):
    """Row-wise 1 - cosine of the angle between a and b (flattened per row)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return 1.0 - np.sum(a * b, axis=1) / norms


# -- the dataset ---------------------------------------------------------------

def geometry(recipe):
    """Per size class: the object's radius and area (mean over the shapes)
    in 64 px crop pixels, its share of the crop, and how many pixels tell
    two shapes of the same area apart (``sum |coverage_a - coverage_b|``,
    redrawn on one centre as the evaluator does), for the closest pair of
    shapes and for circle and square."""
    rows = []
    centre = LR_IMAGE_SIZE / 2
    for size, radius in recipe.sizes:
        areas = []
        for shape in recipe.shapes:
            _, lr = make_images({"shape": shape, "color": "red", "background": "black", "size": size,
                                 "position": "center"}, recipe)
            areas.append(float((lr[..., 0] > OBJECT_LEVEL).sum()))
        area = float(np.mean(areas))
        coverage = {s: render_coverage(s, centre, centre, radius_for_area(s, area), LR_IMAGE_SIZE,
                                       LR_IMAGE_SIZE) for s in SHAPES}
        pairs = [(a, b) for i, a in enumerate(SHAPES) for b in SHAPES[i + 1:]]
        differences = {(a, b): float(np.abs(coverage[a] - coverage[b]).sum()) for a, b in pairs}
        closest = min(differences, key=differences.get)
        rows.append({"size": size, "radius_px": radius * LR_LOAD_SIZE, "area_px": area,
                     "area_share": area / LR_IMAGE_SIZE ** 2, "closest_pair": closest,
                     "closest_pair_px": differences[closest],
                     "circle_square_px": differences[("circle", "square")]})
    return rows


def combinations(recipe):
    """How many pictures each attribute combination, and each shape, gets."""
    count = int(np.prod([len(recipe.values(a)) for a in ATTRIBUTES]))
    return {"combinations": count, "pictures_per_combination": recipe.num_train / count,
            "pictures_per_shape": recipe.num_train / len(recipe.shapes), "classes": recipe.num_classes}


def pipeline_checks(split, truth, recipe, num_embedding, seed=0):
    """Defects the training pipeline could have, counted over ``split`` (a
    ``misc.data.datasets`` split of 76 px pictures) with its attribute
    dicts ``truth``."""
    images = split.images
    # Crops (offsets 0 .. CROP_MARGIN - 1 each way) that leave out object pixels.
    corner = images[:, :1, :1].astype(np.int16)
    object_mask = np.abs(images.astype(np.int16) - corner).max(axis=3) > OBJECT_LEVEL
    total = object_mask.sum(axis=(1, 2))
    cut_pictures = np.zeros(len(images), bool)
    cut_crops, lost = 0, []
    for row in range(CROP_MARGIN):
        for col in range(CROP_MARGIN):
            inside = object_mask[:, row:row + LR_IMAGE_SIZE, col:col + LR_IMAGE_SIZE].sum(axis=(1, 2))
            cut = inside < total
            cut_pictures |= cut
            cut_crops += int(cut.sum())
            lost.extend((1.0 - inside / total)[cut])
    cut_by_position = {p: float(np.mean([c for c, t in zip(cut_pictures, truth) if t["position"] == p]))
                       for p in recipe.positions}
    ids = np.arange(min(NUM_PROBES, split.num_examples))
    probe_truth = [truth[i] for i in ids]
    real = split.center_crops(ids)
    flip_shape = score(measure(real[:, :, ::-1], recipe), probe_truth, ("shape",))["shape"]
    # The "wrong" pairs of one epoch, drawn as the training sampler draws them.
    rng = np.random.default_rng([seed, 0])
    order = rng.permutation(split.num_examples)
    same = {"shape": 0, "color": 0, "shape_and_color": 0}
    pairs = 0
    for start in range(0, len(order) - 15, 16):
        draws = split.batch_draws(rng, order[start:start + 16], num_embedding)
        for real_id, wrong_id in zip(draws["ids"], draws["wrong"]):
            shape = truth[real_id]["shape"] == truth[wrong_id]["shape"]
            colour = truth[real_id]["color"] == truth[wrong_id]["color"]
            same["shape"] += shape
            same["color"] += colour
            same["shape_and_color"] += shape and colour
            pairs += 1
    disagree = named = 0
    for index, attrs in enumerate(truth):
        for caption in split.captions(index):
            stated = caption_attributes(caption)
            disagree += any(attrs[k] != v for k, v in stated.items())
            named += {"shape", "color"} <= set(stated)
    captions = split.num_examples * split.captions_per_image
    blurred = ndimage.gaussian_filter(real.astype(np.float32), (0, BLUR_SIGMA, BLUR_SIGMA, 0))
    measured_blur = measure(np.clip(np.round(blurred), 0, 255).astype(np.uint8), recipe)
    return {
        "pictures": split.num_examples, "pictures_some_crop_cuts": int(cut_pictures.sum()),
        "pictures_some_crop_cuts_by_position": cut_by_position,
        "crops_cutting_objects": cut_crops / (len(images) * CROP_MARGIN ** 2),
        "object_share_lost_when_cut": float(np.mean(lost)) if lost else 0.0,
        "flipped_shape_kept": flip_shape,
        **{f"wrong_pairs_same_{k}": v / pairs for k, v in same.items()},
        "captions": captions, "captions_disagreeing": disagree,
        "captions_naming_shape_and_colour": named / captions,
        "evaluator_real": score(measure(real, recipe), probe_truth, SCORED_ATTRIBUTES),
        "evaluator_blurred_shape": score(measured_blur, probe_truth, ("shape",))["shape"],
        "blurred_called_circle": float(np.mean([m["shape"] == "circle" for m in measured_blur])),
    }


# -- the caption encoder ---------------------------------------------------------

def attribute_variants(recipe, num_embedding, count=NUM_PROBES, seed=0):
    """Training embeddings (the mean of ``num_embedding`` captions) of
    ``count`` random pictures of ``recipe``, and per attribute that varies
    in it the embeddings of the same captions (same templates and words)
    with only that attribute changed.  Returns (base (count, D), {attribute:
    (count, D)})."""
    rng = np.random.default_rng(seed)
    bases = sample_attributes(rng, count, recipe)
    varied = [a for a in SCORED_ATTRIBUTES if len(recipe.values(a)) > 1]
    texts = {None: [], **{a: [] for a in varied}}
    for k, attrs in enumerate(bases):
        texts[None].extend(make_captions(attrs, np.random.default_rng([seed, k]))[:num_embedding])
        for attribute in varied:
            others = [v for v in recipe.values(attribute) if v != attrs[attribute]]
            changed = dict(attrs, **{attribute: others[rng.integers(len(others))]})
            texts[attribute].extend(make_captions(changed, np.random.default_rng([seed, k]))[:num_embedding])
    embed = {a: encode_captions(t, dim=TEXT_EMBEDDING_DIM).reshape(count, num_embedding, -1).mean(axis=1)
             for a, t in texts.items()}
    return embed.pop(None), embed


def separation(base, variants, ca=None, seed=0):
    """Per attribute: the mean cosine distance of the embeddings; with
    ``ca`` (a ``ConditioningAugmentation``) also of its means ``mu`` and of
    its codes ``c`` (one truncated-normal eps each), and ``d_prime``: the
    shift of ``mu`` over the noise's standard deviation (``sigma``) along
    it, how well one code tells the two captions apart."""
    rows = {}
    for attribute, other in variants.items():
        row = {"embedding": float(np.mean(cosine_distance(base, other)))}
        if ca is not None:
            rng = np.random.default_rng(seed)
            eps = np.clip(rng.standard_normal((len(base), ca.ef_dim)), -2, 2).astype(np.float32)
            c_a, mu_a, log_sigma_a = (np.asarray(x) for x in ca(base, eps))
            c_b, mu_b, _ = (np.asarray(x) for x in ca(other, eps[::-1].copy()))
            shift = mu_b - mu_a
            length = np.linalg.norm(shift, axis=1)
            along = shift / np.maximum(length, 1e-12)[:, None]
            spread = np.sqrt(np.sum(np.square(np.exp(log_sigma_a) * along), axis=1))
            row.update({"mu": float(np.mean(cosine_distance(mu_a, mu_b))),
                        "c": float(np.mean(cosine_distance(c_a, c_b))),
                        "d_prime": float(np.mean(length / np.maximum(spread, 1e-12)))})
        rows[attribute] = row
    return rows


# -- the trained discriminator ---------------------------------------------------

def discriminator_view(generator, discriminator, split, truth, recipe, num_embedding, count=64, seed=0):
    """The trained discriminator's scores (mean sigmoid, training-mode batch
    norm as in training: each set of pictures is one batch, as each of the
    real, wrong and fake sets is in training) and its gradient on generated
    pictures; see the module docstring."""
    import tensorflow as tf

    from misc.data.images import to_uint8
    from misc.evaluation.sampling import draw_noise

    rng = np.random.default_rng(seed)
    ids = np.arange(min(count, split.num_examples))
    truth = [truth[i] for i in ids]
    chosen = split.caption_draws(rng, len(ids), num_embedding)
    embeddings = split.embeddings_of(ids, chosen).astype(np.float32)

    def to_float(pictures):
        return tf.constant(np.asarray(pictures, np.float32) / 127.5 - 1.0)

    def batch_scores(pictures, rows=slice(None)):
        logits = discriminator(to_float(pictures), embeddings[rows], training=True)
        return tf.sigmoid(logits).numpy().ravel()

    def other_shape(attrs):
        others = [s for s in recipe.shapes if s != attrs["shape"]]
        others = others or [s for s in SHAPES if s != attrs["shape"]]  # a one-shape recipe
        return others[rng.integers(len(others))]

    real = split.center_crops(ids)
    wrong = split.center_crops(split.wrong_indices(rng, ids))
    wrong_shapes = [other_shape(a) for a in truth]
    redrawn = np.stack([redraw(r, s) for r, s in zip(real, wrong_shapes)])
    noise = draw_noise(rng, len(ids), generator.z_dim, generator.ef_dim)
    fakes = to_uint8(generator(embeddings, noise["eps"], noise["z"], training=False)["images"])
    found = [k for k, f in enumerate(fakes) if redraw(f, truth[k]["shape"]) is not None]
    right_fix = np.stack([redraw(fakes[k], truth[k]["shape"]) for k in found])
    wrong_fix = np.stack([redraw(fakes[k], wrong_shapes[k]) for k in found])
    half = len(ids) // 2
    with_redrawn = batch_scores(np.concatenate([real[:half], redrawn[half:]]))
    scores = {
        "real": batch_scores(real).mean(),
        "wrong (drawn as the training sampler draws them)": batch_scores(wrong).mean(),
        "real redrawn as another shape": batch_scores(redrawn).mean(),
        "one batch, half real, half redrawn: real half": with_redrawn[:half].mean(),
        "one batch, half real, half redrawn: redrawn half": with_redrawn[half:].mean(),
        "generated": batch_scores(fakes).mean(),
        "generated redrawn sharp, right shape": batch_scores(right_fix, found).mean(),
        "generated redrawn sharp, wrong shape": batch_scores(wrong_fix, found).mean(),
    }
    # The generator's adversarial loss on its own pictures, differentiated by pixel.
    pictures = tf.Variable(to_float(fakes[found]))
    with tf.GradientTape() as tape:
        logits = discriminator(pictures, embeddings[found], training=True)
        loss = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(tf.ones_like(logits), logits))
    descent = -tape.gradient(loss, pictures).numpy()
    # The shape pixels: where the sharp right-shape and wrong-shape redrawings
    # differ.  A step down the gradient moves such a pixel towards the right
    # shape when it has a positive component along (right - wrong).
    towards_right = np.sum(descent * (right_fix - wrong_fix), axis=3)
    shape_pixels = np.abs(right_fix - wrong_fix).sum(axis=3) > 0.1 * 255
    energy = np.square(descent).sum(axis=3)
    share = (energy * shape_pixels).sum(axis=(1, 2)) / energy.sum(axis=(1, 2))
    return {
        "scores": {k: round(float(v), 3) for k, v in scores.items()},
        "gradient_share_on_shape_pixels": float(share.mean()),
        "area_share_of_shape_pixels": float(shape_pixels.mean()),
        "shape_pixels_pushed_towards_right_shape": float(np.mean(towards_right[shape_pixels] > 0)),
        "gradient_energy_pushing_towards_right_shape": float(
            energy[shape_pixels & (towards_right > 0)].sum() / energy[shape_pixels].sum()),
        "generated": len(ids), "with_object": len(found),
    }

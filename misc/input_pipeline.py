"""tf.data input for training: reference-sampled batches plus their noise.

Batches are produced by ``Split.epoch_batches`` in a background tf.data
thread and prefetched, so loading overlaps the training step.  Each batch
also carries the noise its step draws (``eps`` truncated normal, ``z``
normal), generated from ``(SEED, iteration counter)`` with stateless random
ops: a step is then a pure function of its batch and the model state, which
makes runs reproducible, a resumed run draw the same noise as an
uninterrupted one, and N replicas compute exactly what one device computes.
"""

import itertools

import numpy as np
import tensorflow as tf


def noise_for_step(seed, step, batch_size, noise_spec):
    """{name: (batch_size, size) noise} for one iteration, stateless."""
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])
    noise = {}
    for index, name in enumerate(sorted(noise_spec)):
        size, distribution = noise_spec[name]
        field_key = tf.random.experimental.stateless_fold_in(key, index)
        shape = (batch_size, size)
        if distribution == "truncated_normal":
            noise[name] = tf.random.stateless_truncated_normal(shape, field_key)
        elif distribution == "normal":
            noise[name] = tf.random.stateless_normal(shape, field_key)
        else:
            raise ValueError(f"unknown noise distribution {distribution!r} for {name}")
    return noise


def training_dataset(split, batch_size, num_embedding, noise_spec, seed=0, first_step=0):
    """Endless dataset of training batches from iteration ``first_step`` on.

    Iteration ``i`` is global batch ``i % steps`` of epoch ``i // steps``
    (``steps = split.steps_per_epoch(batch_size)``) with the noise of
    iteration ``i``, whatever iteration the dataset starts at: a run resumed
    mid-epoch gets exactly the batches and noise of an uninterrupted one.
    """
    steps = split.steps_per_epoch(batch_size)
    if steps < 1:
        raise ValueError(
            f"TRAIN.BATCH_SIZE {batch_size} is larger than the {split.num_examples} training "
            "images; lower TRAIN.BATCH_SIZE.")
    first_epoch, first_batch = divmod(first_step, steps)
    s = split.crop_size

    def generate():
        step = first_step
        for epoch in itertools.count(first_epoch):
            skip = first_batch if epoch == first_epoch else 0
            for batch in split.epoch_batches(seed, epoch, batch_size, num_embedding, first_batch=skip):
                batch["step"] = np.int64(step)
                step += 1
                yield batch

    signature = {
        "images": tf.TensorSpec((batch_size, s, s, 3), tf.uint8),
        "wrong_images": tf.TensorSpec((batch_size, s, s, 3), tf.uint8),
        "embeddings": tf.TensorSpec((batch_size, split.embedding_dim), tf.float32),
        "step": tf.TensorSpec((), tf.int64),
    }

    def with_noise(batch):
        batch = dict(batch)
        batch.update(noise_for_step(seed, batch.pop("step"), batch_size, noise_spec))
        return batch

    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    dataset = dataset.map(with_noise, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    # Every worker generates the same global batches; each takes its share.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)

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


def training_dataset(split, batch_size, num_embedding, noise_spec, seed=0, first_step=0,
                     replicas=range(1), num_replicas=1):
    """Endless dataset of training batches from iteration ``first_step`` on.

    Iteration ``i`` is global batch ``i % steps`` of epoch ``i // steps``
    (``steps = split.steps_per_epoch(batch_size)``) with the noise of
    iteration ``i``, whatever iteration the dataset starts at: a run resumed
    mid-epoch gets exactly the batches and noise of an uninterrupted one.

    Split among ``num_replicas`` replicas, replica ``r``'s batch is rows
    ``r*b .. (r+1)*b - 1`` of the global batch (``b = batch_size //
    num_replicas``); this dataset builds only the rows of ``replicas`` (a
    range, e.g. one worker's replicas) and yields, per iteration, their
    batches in turn.  The replicas of all datasets together get exactly the
    global batch, each of its images once.
    """
    steps = split.steps_per_epoch(batch_size)
    if steps < 1:
        raise ValueError(
            f"TRAIN.BATCH_SIZE {batch_size} is larger than the {split.num_examples} training "
            "images; lower TRAIN.BATCH_SIZE.")
    if batch_size % num_replicas:
        raise ValueError(f"TRAIN.BATCH_SIZE {batch_size} is not divisible by {num_replicas} replicas.")
    first_epoch, first_batch = divmod(first_step, steps)
    s = split.crop_size
    b = batch_size // num_replicas
    rows = slice(replicas.start * b, replicas.stop * b)

    def generate():
        step = first_step
        for epoch in itertools.count(first_epoch):
            skip = first_batch if epoch == first_epoch else 0
            for batch in split.epoch_batches(seed, epoch, batch_size, num_embedding, first_batch=skip,
                                             rows=rows):
                for k, replica in enumerate(replicas):
                    part = {key: value[k * b:(k + 1) * b] for key, value in batch.items()}
                    part["step"] = np.int64(step)
                    part["first_row"] = np.int32(replica * b)
                    yield part
                step += 1

    signature = {
        "images": tf.TensorSpec((b, s, s, 3), tf.uint8),
        "wrong_images": tf.TensorSpec((b, s, s, 3), tf.uint8),
        "embeddings": tf.TensorSpec((b, split.embedding_dim), tf.float32),
        "step": tf.TensorSpec((), tf.int64),
        "first_row": tf.TensorSpec((), tf.int32),
    }

    def with_noise(batch):
        batch = dict(batch)
        first_row = batch.pop("first_row")
        for name, noise in noise_for_step(seed, batch.pop("step"), batch_size, noise_spec).items():
            batch[name] = noise[first_row:first_row + b]
        return batch

    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    dataset = dataset.map(with_noise, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def distributed_training_dataset(strategy, split, batch_size, num_embedding, noise_spec, seed=0,
                                 first_step=0):
    """``training_dataset`` for ``fit`` under ``strategy``: TRAIN.BATCH_SIZE is
    the global batch, split evenly over all replicas of all workers; each
    worker builds only its replicas' rows of every global batch."""
    args = (split, batch_size, num_embedding, noise_spec, seed, first_step)
    if strategy.num_replicas_in_sync == 1:
        return training_dataset(*args)

    def worker_dataset(context):
        local = context.num_replicas_in_sync // context.num_input_pipelines
        first = context.input_pipeline_id * local
        return training_dataset(*args, replicas=range(first, first + local),
                                num_replicas=context.num_replicas_in_sync)

    return strategy.distribute_datasets_from_function(worker_dataset)

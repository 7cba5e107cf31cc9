"""Which devices a run trains on, and how: its GPUs or its CPU, or the
workers of a cluster; the ``tf.distribute`` strategy over them and the
step's ``StepChoices`` (XLA, precision), which in a multi-worker run are the
chief's for every worker."""

import tensorflow as tf

from misc.config import ConfigError, config_leaves, default_config, parse_gpu_ids
from misc.training.acceleration import StepChoices, choose_step
from misc.training.cluster import (
    cluster_resolver,
    configure_coordination,
    describe_worker,
    rendezvous,
)
from misc.training.machine import nvidia_driver_present


def make_strategy(gpu=None, config=None, log=print, training=True, names=None):
    """The distribution strategy of a run and its ``StepChoices`` (XLA,
    precision; ``names`` says what the user typed for them, see
    ``choose_step``).

    MultiWorkerMirroredStrategy when this process is a worker of a cluster
    (TF_CONFIG, or a SLURM step of several tasks: ``misc.training.cluster``), each
    worker using its chosen (default: all visible) GPUs or its CPU; the
    workers first meet (``misc.training.cluster.rendezvous``: bounded by
    CLUSTER.STARTUP_TIMEOUT, interruptible, the same config everywhere) and
    take the chief's choices.  Otherwise MirroredStrategy over the chosen
    GPUs, else the default single-device strategy.  An id beyond the visible
    GPUs is an error; on a machine without GPUs the CPU is used (with a
    warning).  Only training runs on a cluster (evaluation writes its sheets
    from one process)."""
    config = config or default_config()
    resolver = cluster_resolver(gpus_present=nvidia_driver_present())
    if resolver is not None and not training:
        raise ConfigError("TRAIN.FLAG is False (evaluation), which runs in one process, but this "
                          "process is a worker of a cluster (TF_CONFIG or a SLURM step of several "
                          "tasks): unset TF_CONFIG, or run it outside srun.")
    gpus = tf.config.list_physical_devices("GPU")
    if gpu is not None:
        wanted = parse_gpu_ids(gpu)
        if not gpus:
            why = "" if nvidia_driver_present() else " (no NVIDIA driver is installed)"
            log(f"warning: --gpu {gpu}: no GPU is visible to TensorFlow{why}; training on the CPU.")
        else:
            missing = [i for i in wanted if i >= len(gpus)]
            if missing:
                raise ConfigError(
                    f"--gpu {gpu}: GPU {missing[0]} does not exist; {len(gpus)} GPU(s) are visible "
                    f"(ids 0 to {len(gpus) - 1}; CUDA_VISIBLE_DEVICES renumbers them).")
            gpus = [gpus[i] for i in wanted]
            tf.config.set_visible_devices(gpus, "GPU")
    choices = choose_step(config, multi_worker=resolver is not None, names=names, log=log)
    if resolver is not None:
        choices = join_cluster(resolver, config, choices, log)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        log(describe_worker(strategy))
        return strategy, choices
    if gpus:
        devices = [f"/gpu:{i}" for i in range(len(gpus))]
        return tf.distribute.MirroredStrategy(devices), choices
    return tf.distribute.get_strategy(), choices


# Config keys that may differ between the workers of one run: where files
# are on each machine, its threads and its patience.
MACHINE_KEYS = ("DATA_DIR", "GPU_ID", "TRAIN.PRETRAINED_MODEL", "TRAIN.INTRA_OP_THREADS",
                "CLUSTER.STARTUP_TIMEOUT", "CLUSTER.STEP_TIMEOUT")


def join_cluster(resolver, config, choices, log=print):
    """Meet the other workers (``misc.training.cluster.rendezvous``) and return the
    chief's ``StepChoices``, which every worker then uses."""
    task = f"{resolver.task_type}:{resolver.task_id}"
    comparable = {key: value for key, value in config_leaves(config)
                  if key not in MACHINE_KEYS and not key.startswith("TEST.")}
    pretrained = config.TRAIN.PRETRAINED_MODEL
    hint = (f"Nothing was written; resume from {pretrained} once every worker runs." if pretrained
            else "Nothing was written yet.")
    log(f"Task {task}: waiting for the cluster's workers to start (at most "
        f"{config.CLUSTER.STARTUP_TIMEOUT} s; Ctrl-C or SIGTERM stops at once).")
    agreed = rendezvous(resolver.cluster_spec().as_dict(), task,
                        {"config": comparable, "choices": choices.as_dict()},
                        config.CLUSTER.STARTUP_TIMEOUT, hint)
    chief = StepChoices(**agreed)
    if chief != choices:
        log(f"Task {task} follows the chief's choices: XLA {'on' if chief.xla else 'off'}, precision "
            f"{chief.precision} (this machine alone would choose XLA {'on' if choices.xla else 'off'}, "
            f"{choices.precision}).")
    configure_coordination(resolver.cluster_spec(), config.CLUSTER.STARTUP_TIMEOUT)
    return chief


def check_batch_size(batch_size, strategy):
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ConfigError(
            f"TRAIN.BATCH_SIZE {batch_size} must be divisible by the {replicas} replicas "
            "(devices) training together.")

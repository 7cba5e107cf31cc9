"""Multi-worker training: which cluster this process belongs to, and what a
worker may write.

A run is multi-worker when TF_CONFIG describes a cluster (set by hand, or
by a launcher) or when it runs as one task of a SLURM job step of several
tasks (``srun``, see ``misc/slurm/train.sbatch``); it then trains under
``tf.distribute.MultiWorkerMirroredStrategy``: every worker holds a copy of
the model, builds its share of each global batch, and the gradients are
all-reduced, so the workers compute what one process computes on the same
global batch (TRAIN.BATCH_SIZE is the global batch; the learning rates are
those of the config).

Only the chief (worker 0, or the ``chief`` task) writes into the run's log
folder; the other workers take part in every snapshot (saving is a
collective operation) but write it into a temporary folder of their own,
removed when they end.  A worker that dies makes the others stop with a
one-line ``ClusterError`` (after the strategy's health check notices it);
all workers are then restarted from the chief's last snapshot.
"""

import json
import os
import re

import tensorflow as tf

from misc.config import ConfigError

# How a worker that stopped shows up in the others: the strategy's health
# check aborts the collective operations (UnavailableError), a collective
# that times out raises DeadlineExceededError, and one that was running when
# the connection broke may end as cancelled, aborted or internal.
LOST_WORKER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                      tf.errors.CancelledError, tf.errors.AbortedError, tf.errors.InternalError)
JOBS = ("chief", "worker")  # the task types MultiWorkerMirroredStrategy trains with
FIX = "see README, 'Scaling out'"
# SLURM workers listen on SLURM_PORT_BASE + 8 * (SLURM_JOB_ID mod 5000) + their
# rank on the node: jobs sharing a node use different ports.
SLURM_PORT_BASE = 20000
SLURM_PORTS_PER_JOB = 8


class ClusterError(Exception):
    """A worker of a multi-worker run stopped or cannot be reached."""


def tf_config_cluster(text):
    """Validate TF_CONFIG (the JSON text): returns (cluster dict, task type,
    task index); a ``ConfigError`` naming what is wrong otherwise."""
    def bad(what):
        return ConfigError(f"TF_CONFIG: {what}; {FIX}.")

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise bad(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise bad(f"is a JSON {type(value).__name__}, expected an object with 'cluster' and 'task'")
    cluster, task = value.get("cluster"), value.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise bad("'cluster' is missing or empty, expected e.g. "
                  '{"worker": ["host1:port", "host2:port"]}')
    for job, addresses in cluster.items():
        if job not in JOBS:
            raise bad(f"job '{job}' in 'cluster' is not used by multi-worker training (use "
                      f"{' and '.join(repr(j) for j in JOBS)})")
        if not isinstance(addresses, list) or not addresses:
            raise bad(f"cluster '{job}' must be a non-empty list of \"host:port\" addresses")
        for address in addresses:
            if not isinstance(address, str) or not re.fullmatch(r"[^\s:]+:\d{1,5}", address):
                raise bad(f"cluster '{job}' entry {address!r} is not a \"host:port\" address")
    if len(cluster.get("chief", [])) > 1:
        raise bad("'chief' must list one address")
    everyone = [a for addresses in cluster.values() for a in addresses]
    if len(set(everyone)) != len(everyone):
        raise bad("an address is listed twice in 'cluster'")
    if not isinstance(task, dict):
        raise bad("'task' is missing, expected e.g. {\"type\": \"worker\", \"index\": 0}")
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster:
        raise bad(f"task type {kind!r} is not a job of 'cluster' ({', '.join(cluster)})")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise bad(f"task index {index!r} must be an integer from 0 to {len(cluster[kind]) - 1} "
                  f"(the '{kind}' job has {len(cluster[kind])} task(s))")
    return cluster, kind, index


def slurm_step_tasks():
    """Number of tasks of the SLURM job step this process runs in (0 when
    not started by ``srun``)."""
    environ = os.environ
    if "SLURM_PROCID" not in environ:
        return 0
    try:
        return int(environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or 0)
    except ValueError:
        return 0


def slurm_resolver(gpus_present=True):
    """A ``SlurmClusterResolver`` for this SLURM job step: one worker per
    task, ports from the job id; on nodes with GPUs, the node's GPUs are
    divided among its tasks (CUDA_VISIBLE_DEVICES)."""
    environ = os.environ
    try:
        job = int(environ.get("SLURM_JOB_ID", "0"))
        port = SLURM_PORT_BASE + SLURM_PORTS_PER_JOB * (job % 5000)
        if gpus_present:
            resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=port)
        else:
            # CPU nodes: no GPU to hand out; the resolver still divides a GPU
            # count among the tasks of a node, so give it one per task.
            per_node = max(int(n) for n in re.findall(r"(\d+)(?:\(x\d+\))?",
                                                       environ.get("SLURM_STEP_TASKS_PER_NODE", "1")))
            resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
                port_base=port, gpus_per_node=per_node, gpus_per_task=1, auto_set_gpu=False)
        resolver.cluster_spec()  # sets this task's CUDA_VISIBLE_DEVICES before TensorFlow uses a GPU
        return resolver
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"SLURM: cannot resolve the cluster of this job step ({exc}); {FIX}.") from None


def cluster_resolver(gpus_present=True):
    """The cluster this process is a worker of: a resolver for TF_CONFIG
    (validated) or for a SLURM step of several tasks; None for a
    single-process run."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if text:
        tf_config_cluster(text)
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if slurm_step_tasks() > 1:
        return slurm_resolver(gpus_present)
    return None


def lost_worker_reason(exc):
    """What a ``LOST_WORKER_ERRORS`` error says happened, in a few words:
    which worker stopped, or that the connection to one broke."""
    message = exc.message or ""
    unhealthy = message.find("unhealthy")
    if unhealthy >= 0:
        task = re.search(r"/job:[^/\s]+/replica:\d+/task:\d+", message[unhealthy:])
        if task:
            return f"worker {task.group(0)} stopped (no heartbeat)"
    remote = re.search(r"remote target (/job:[^/\s]+/replica:\d+/task:\d+)", message)
    if remote:
        return f"the connection to worker {remote.group(1)} broke"
    first = " ".join(message.split("\n")[0].split())[:160]
    return f"lost contact with another worker ({type(exc).__name__}: {first})"


def is_chief(strategy):
    """Whether this process writes the run's outputs: the only process of a
    single-process run, or the chief of a cluster."""
    return strategy.extended.should_checkpoint


def describe_worker(strategy):
    """'worker 1 of 2 (task worker:1 of {...})' for multi-worker runs."""
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    workers = sum(len(v) for v in spec.values())
    role = "the chief, writes the outputs" if is_chief(strategy) else "writes no outputs"
    return (f"Multi-worker training: task {resolver.task_type}:{resolver.task_id} of {workers} "
            f"workers ({role}), {strategy.num_replicas_in_sync} replicas in all.")

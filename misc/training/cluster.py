"""Multi-worker training: which cluster this process belongs to, and what a
worker may write.

A run is multi-worker when TF_CONFIG describes a cluster (set by hand, or
by a launcher) or when it runs as one task of a SLURM job step of several
tasks (``srun``, see ``misc/commands/slurm/train.sbatch``); it then trains under
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

import errno
import json
import os
import re
import signal
import socket
import time

import tensorflow as tf

from misc.config import ConfigError, UserError

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
MAX_PORT = 65535
# The start-up handshake (``rendezvous``): the longest message a worker
# reads, and how often a waiting worker looks again (and handles signals).
MESSAGE_LIMIT = 1 << 16
POLL_SECONDS = 0.5


class ClusterError(UserError):
    """A worker of a multi-worker run stopped or cannot be reached."""


class Stopped(UserError):
    """SIGINT or SIGTERM ended a worker before training started (nothing was
    written); the command exits with 128 + the signal number, as a shell
    reports a process ended by that signal."""

    def __init__(self, signum, during):
        super().__init__(f"stopped by {signal.Signals(signum).name} {during}; nothing was written.")
        self.exit_code = 128 + signum


def port_of(address):
    return int(address.rsplit(":", 1)[1])


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
            if not 1 <= port_of(address) <= MAX_PORT:
                raise bad(f"cluster '{job}' entry {address!r}: the port must be from 1 to {MAX_PORT}")
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


def _slurm_integer(name, least=0):
    """The integer value of the SLURM variable ``name``; a malformed one is a
    one-line error (never a silent single-process run)."""
    text = os.environ.get(name, "").strip()
    if not re.fullmatch(r"\d+", text) or int(text) < least:
        raise ConfigError(f"SLURM: {name} is {text!r}, expected an integer of at least {least}; this "
                          f"process runs as a task of a SLURM step (SLURM_PROCID is set), so SLURM's "
                          f"variables describe the cluster. Run it with srun, or unset the SLURM_* "
                          f"variables to train alone; {FIX}.")
    return int(text)


def slurm_step_tasks():
    """Number of tasks of the SLURM job step this process runs in (0 when
    not started by ``srun``)."""
    environ = os.environ
    if "SLURM_PROCID" not in environ:
        return 0
    name = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in environ else "SLURM_NTASKS"
    if name not in environ:
        return 0
    tasks = _slurm_integer(name, least=1)
    if tasks > 1:
        procid = _slurm_integer("SLURM_PROCID")
        if procid >= tasks:
            raise ConfigError(f"SLURM: SLURM_PROCID {procid} is not a task of this step of {tasks} "
                              f"tasks ({name}); {FIX}.")
    return tasks


def slurm_resolver(gpus_present=True):
    """A ``SlurmClusterResolver`` for this SLURM job step: one worker per
    task, ports from the job id; on nodes with GPUs, the node's GPUs are
    divided among its tasks (CUDA_VISIBLE_DEVICES)."""
    environ = os.environ
    job = _slurm_integer("SLURM_JOB_ID")
    try:
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
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
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


# -- start-up: every worker present, one config, the chief's choices ----------

def task_addresses(spec):
    """{'worker:1': 'host:port', ...} of a cluster spec (dict of job ->
    addresses), and the coordination leader's task: the chief, else worker 0
    (as MultiWorkerMirroredStrategy chooses)."""
    tasks = {f"{job}:{i}": address for job in JOBS for i, address in enumerate(spec.get(job, []))}
    return tasks, ("chief:0" if "chief" in spec else "worker:0")


def check_port_free(address, task):
    """This worker's own port must be free on this machine (TensorFlow binds
    it on every interface): otherwise one line naming the address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port_of(address)))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ConfigError(f"TF_CONFIG: task {task}'s address {address} is in use on this machine "
                              f"(another program, or another worker started as task {task}, listens "
                              f"on port {port_of(address)}); give every task its own free port; "
                              f"{FIX}.") from None


class _Channel:
    """One end of a handshake connection: JSON messages, one per line."""

    def __init__(self, sock, peer):
        self.sock = sock
        self.peer = peer
        self.buffer = b""
        sock.settimeout(POLL_SECONDS)

    def send(self, message):
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            pass  # the other end is gone; it reports its own failure

    def receive(self, deadline):
        """The next message, None at end of stream; None too at the deadline
        (``timed_out`` then tells)."""
        self.timed_out = False
        while b"\n" not in self.buffer:
            if time.monotonic() > deadline:
                self.timed_out = True
                return None
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            self.buffer += chunk
            if len(self.buffer) > MESSAGE_LIMIT:
                return None
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            return None
        return message if isinstance(message, dict) else None

    def close(self):
        self.sock.close()


class _SignalsStop:
    """While the block runs, SIGINT and SIGTERM raise ``Stopped`` (the
    handshake waits in Python, so they act at once)."""

    def __init__(self, during):
        self.during = during
        self.previous = {}

    def _handle(self, signum, frame):
        raise Stopped(signum, self.during)

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals keep their effect
                pass
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def rendezvous(spec, task, hello, timeout, resume_hint=""):
    """Meet every worker of the cluster ``spec`` before TensorFlow starts its
    own cluster, in plain Python, so that the wait is bounded (``timeout``
    seconds), SIGINT / SIGTERM end it at once, and every worker starts with
    the same config and the chief's choices.

    The coordination leader (the chief) listens on its own port; every other
    worker checks that its own port is free, connects and sends ``hello``
    (``{"config": {...}, "choices": {...}}``).  The chief checks that each
    task came once and that every config equals its own, then answers
    everyone with its ``choices``, which this function returns (for the
    chief: its own).  Every failure is a one-line ``ConfigError`` (a wrong
    cluster or config) or ``ClusterError`` (a worker that does not come),
    ending with ``resume_hint``; the other workers get the chief's message.
    """
    tasks, leader = task_addresses(spec)
    with _SignalsStop("while waiting for the other workers to start"):
        if task == leader:
            return _lead(tasks, leader, hello, timeout, resume_hint)
        check_port_free(tasks[task], task)
        return _follow(tasks, leader, task, hello, timeout, resume_hint)


def _config_difference(theirs, ours):
    """The first config key whose value differs, as 'KEY is X there, Y here'."""
    for key in sorted(set(theirs) | set(ours)):
        if theirs.get(key) != ours.get(key):
            return f"{key} is {theirs.get(key)!r} there, {ours.get(key)!r} on the chief"
    return None


def _lead(tasks, leader, hello, timeout, resume_hint):
    deadline = time.monotonic() + timeout
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", port_of(tasks[leader])))
    except OSError as exc:
        listener.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        check_port_free(tasks[leader], leader)  # raises the one-line error
        raise
    listener.listen(len(tasks))
    listener.settimeout(POLL_SECONDS)
    joined = {}  # task -> channel

    def fail(error):
        for channel in joined.values():
            channel.send({"error": str(error)})
            channel.close()
        raise error

    try:
        while len(joined) < len(tasks) - 1:
            if time.monotonic() > deadline:
                missing = [f"task {t} ({a})" for t, a in tasks.items() if t != leader and t not in joined]
                fail(ClusterError(
                    f"start-up: the chief ({tasks[leader]}) waited {timeout} s for "
                    f"{', '.join(missing)} to connect. Start every worker with the same TF_CONFIG "
                    f"(CLUSTER.STARTUP_TIMEOUT sets the wait). {resume_hint}".rstrip()))
            try:
                sock, peer = listener.accept()
            except TimeoutError:
                continue
            channel = _Channel(sock, peer[0])
            message = channel.receive(min(deadline, time.monotonic() + 30))
            task = message.get("task") if message else None
            if task not in tasks or task == leader:
                channel.close()  # not one of ours (a port scanner, a stale process)
                continue
            if task in joined:
                joined[task + " (again)"] = channel
                fail(ConfigError(f"TF_CONFIG: two workers say they are task {task} (from "
                                 f"{joined[task].peer} and {peer[0]}); give every worker its own task "
                                 f"index; {FIX}."))
            joined[task] = channel
            difference = _config_difference(message.get("config", {}), hello["config"])
            if difference:
                fail(ConfigError(f"task {task}'s config differs from the chief's ({difference}); start "
                                 "every worker with the same config."))
        for channel in joined.values():
            channel.send({"choices": hello["choices"]})
        for channel in joined.values():  # they close first, so the port is free at once
            channel.receive(time.monotonic() + 5)
            channel.close()
    finally:
        listener.close()
    return hello["choices"]


def _follow(tasks, leader, task, hello, timeout, resume_hint):
    deadline = time.monotonic() + timeout
    host, port = tasks[leader].rsplit(":", 1)
    while True:
        if time.monotonic() > deadline:
            raise ClusterError(f"start-up: task {task} could not reach the chief at {tasks[leader]} within "
                               f"{timeout} s. Start the chief (and every worker) with the same TF_CONFIG "
                               f"(CLUSTER.STARTUP_TIMEOUT sets the wait). {resume_hint}".rstrip())
        try:
            sock = socket.create_connection((host, int(port)), timeout=POLL_SECONDS)
        except OSError:
            time.sleep(POLL_SECONDS)
            continue
        channel = _Channel(sock, host)
        channel.send({**hello, "task": task})
        reply = channel.receive(deadline)
        channel.close()
        if reply is None and channel.timed_out:
            raise ClusterError(f"start-up: task {task} reached the chief at {tasks[leader]}, but not every "
                               f"worker joined within {timeout} s (the chief's output names the missing "
                               f"ones; CLUSTER.STARTUP_TIMEOUT sets the wait). {resume_hint}".rstrip())
        if reply is None:
            raise ClusterError(f"start-up: the chief at {tasks[leader]} closed the connection before "
                               f"every worker had joined (see the chief's output). {resume_hint}".rstrip())
        if "error" in reply:
            raise ConfigError(str(reply["error"]))
        return reply["choices"]


def configure_coordination(spec, startup_timeout):
    """TensorFlow's coordination service for the cluster, configured as
    MultiWorkerMirroredStrategy would configure it, except that a worker
    registering with the chief gives up after ``startup_timeout`` seconds
    (TensorFlow's default wait is an hour).  Call before the strategy is
    made."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    if context.context().coordination_service is not None:
        return
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
            for job in JOBS if job in spec.jobs]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=jobs, cluster_register_timeout_in_ms=int(startup_timeout * 1000))


# -- liveness: a worker that stops stepping ------------------------------------

PROGRESS_KEY = "stackgan/progress/{task}"


def publish_progress(task, finished, in_step):
    """Tell the cluster (TensorFlow's coordination service, whose key-value
    store every worker reaches) where this worker is: the last iteration it
    finished, and whether it is inside the next one."""
    from tensorflow.python.eager import context

    key = PROGRESS_KEY.format(task=task)
    try:
        context.context().delete_config_key_value(key)
        context.context().set_config_key_value(key, json.dumps([finished, bool(in_step)]))
    except (tf.errors.OpError, ValueError):
        pass  # the cluster is going down; the step itself reports it


def read_progress(tasks, wait_seconds=1.0):
    """{task: (finished, in_step)} of the workers that published it."""
    from tensorflow.python.eager import context

    found = {}
    for task in tasks:
        try:
            text = context.context().get_config_key_value(PROGRESS_KEY.format(task=task),
                                                          timeout_in_ms=int(wait_seconds * 1000))
            finished, in_step = json.loads(text)
            found[task] = (int(finished), bool(in_step))
        except (tf.errors.OpError, ValueError, TypeError):
            continue
    return found


def stalled_workers(progress):
    """The workers behind the most advanced one (fewer iterations finished,
    or not yet inside the step the others wait in): those that stopped
    stepping.  Empty when all are at the same place."""
    if not progress:
        return []
    front = max(progress.values())
    return sorted(task for task, where in progress.items() if where < front)


def task_device(task):
    """'worker:1' -> '/job:worker/replica:0/task:1' (TensorFlow's name)."""
    job, index = task.split(":")
    return f"/job:{job}/replica:0/task:{index}"

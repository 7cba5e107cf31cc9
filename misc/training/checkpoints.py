"""Our native training checkpoints, and resolving TRAIN/TEST.PRETRAINED_MODEL.

A native checkpoint is a ``tf.train.Checkpoint`` of the networks, the
optimizers (slots, step counts, learning rates) and the counters, written by
a ``tf.train.CheckpointManager`` as ``<log dir>/model-<counter>``.  TensorFlow
writes the data and index through temporary files and renames them, and
updates the ``checkpoint`` state file only after a save completed, so an
interrupted save never damages the previous snapshot.

``PRETRAINED_MODEL`` may name a native checkpoint prefix, a run directory
(its newest snapshot), a log directory such as ``ckt_logs/shapes`` (the
newest snapshot of its newest run), or a reference checkpoint (``*.ckpt``,
see ``misc.reference.tf1_checkpoint``).  Every tensor of a checkpoint is read (and so
checksummed) before it is used, so a truncated, missing or corrupted data
file is a one-line ``CheckpointError`` naming it.

A process killed while saving leaves TensorFlow's temporaries behind
(``model-<N>_temp/``, ``checkpoint.tmp<hex>``; ``.tmp-*`` files of
``misc.data.atomic``); the next run that resumes from the folder removes them
(``remove_snapshot_leftovers``), unless another run holds the folder's lock
(``RUN_LOCK``, held by a training run for its whole life), and a save that
fails removes its own.
"""

import dataclasses
import glob
import math
import os
import re
import shutil

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import trackable_object_graph_pb2
from tensorflow.python.training import checkpoint_state_pb2

from misc.config import CheckpointError
from misc.data.atomic import TEMP_PREFIX, WriteError, describe_os_error, exclusive_lock
from misc.data.input_files import open_regular
from misc.reference.tf1_checkpoint import (
    CA_MATRIX,
    SIMPLE_MARKER,
    ReferenceCheckpoint,
    counter_from_path,
    is_reference_checkpoint,
)
from misc.training.cluster import LOST_WORKER_ERRORS

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


# Where a checkpoint path comes from, for the messages, unless a command
# names its option (e.g. '--checkpoint').
PRETRAINED_OPTIONS = "TRAIN.PRETRAINED_MODEL (or TEST.PRETRAINED_MODEL)"
# A file of a V2 checkpoint: <prefix>.index or <prefix>.data-00000-of-00001.
_CHECKPOINT_PART = re.compile(r"^(.+)\.(index|data-\d{5}-of-\d{5})$")
MAX_STATE_FILE_BYTES = 1 << 20  # a 'checkpoint' state file lists a few snapshots
SNAPSHOT_FIX = "Use another snapshot (e.g. an earlier model-<N> of the same run)."

# Lock file a training run holds in its log folder while it writes there.
RUN_LOCK = ".lock"
SNAPSHOT_NAME = "model"  # snapshots are <log dir>/model-<counter>
# What an interrupted save leaves: TensorFlow's shard folder of a prefix, its
# temporary 'checkpoint' state file, and misc.data.atomic's temporary files.
_LEFTOVER_DIR = re.compile(rf"^{SNAPSHOT_NAME}-\d+_temp(_[0-9a-f]+)?$")
_LEFTOVER_FILE = re.compile(r"^checkpoint\.tmp[0-9a-f]{32}$|^" + re.escape(TEMP_PREFIX))


def epoch_mean_state(gan):
    """The running sums behind a trainer's epoch means (so a run resumed
    mid-epoch prints the epoch means of an uninterrupted one)."""
    return tf.train.Checkpoint(**{name: tf.train.Checkpoint(total=tracker.total, count=tracker.count)
                                  for name, tracker in gan.trackers.items()})


def training_checkpoint(gan):
    """The tf.train.Checkpoint holding a trainer's whole training state."""
    return tf.train.Checkpoint(counter=gan.counter, global_step=gan.global_step,
                               epoch_means=epoch_mean_state(gan), **gan.networks(), **gan.optimizers())


def snapshot_leftovers(directory):
    """Paths an interrupted save left in a run folder (see module docstring);
    only in folders of ours (with a 'checkpoint' state file or a run lock)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    if "checkpoint" not in names and RUN_LOCK not in names:
        return []
    found = []
    for name in sorted(names):
        path = os.path.join(directory, name)
        if os.path.islink(path):
            continue
        if (_LEFTOVER_DIR.match(name) and os.path.isdir(path)) or \
                (_LEFTOVER_FILE.match(name) and os.path.isfile(path)):
            found.append(path)
    return found


def remove_snapshot_leftovers(directory, locked=False):
    """Remove what interrupted saves left in ``directory``; returns the
    removed paths.  Unless the caller holds the folder's lock (``locked``),
    nothing is removed while another run holds it (that run may be saving
    right now), nor where no lock can be taken (a read-only folder)."""
    found = snapshot_leftovers(directory)
    if not found:
        return []
    if not locked:
        try:
            with exclusive_lock(os.path.join(directory, RUN_LOCK), blocking=False) as free:
                return _remove(snapshot_leftovers(directory)) if free else []
        except OSError:
            return []
    return _remove(found)


def _remove(paths):
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.unlink(path)
    return paths


class Snapshotter:
    """Writes native snapshots into a run's log directory; ``last_path`` is
    the newest one it wrote (None before the first), ``last_good`` the
    newest one to resume from (``start_path``, the checkpoint the run
    started from, before this run wrote one)."""

    def __init__(self, gan, directory, max_to_keep=5, keep_every_n_hours=2, start_path=None,
                 reported=True):
        self.gan = gan
        self.directory = directory
        self.manager = tf.train.CheckpointManager(
            training_checkpoint(gan), directory, max_to_keep=max_to_keep,
            keep_checkpoint_every_n_hours=keep_every_n_hours, checkpoint_name=SNAPSHOT_NAME)
        self.start_path = start_path
        self.last_path = None
        # False for a worker other than the chief of a multi-worker run: its
        # snapshots (in a temporary folder) are not the ones to resume from.
        self.reported = reported

    @property
    def last_good(self):
        return self.last_path or self.start_path

    def resume_hint(self, when=""):
        """The sentence an error ends with: where to resume from (``when``:
        e.g. ' once the disk has room')."""
        if not self.reported and self.last_path is not None:
            name = os.path.basename(self.last_path)
            return (f"The last good snapshot is {name} in the chief's log folder; resume every worker "
                    f"from it{when} with TRAIN.PRETRAINED_MODEL: <that folder>/{name}.")
        if self.last_good is None:
            return "No snapshot was written yet."
        return (f"The last good snapshot is {self.last_good}; resume from it{when} with "
                f"TRAIN.PRETRAINED_MODEL: {self.last_good}.")

    def save(self):
        """Save at the current counter; return the checkpoint prefix.  A
        failed save (disk full, ...) removes its partial files and raises a
        ``WriteError`` naming the snapshot; earlier snapshots stay intact."""
        counter = int(self.gan.counter.numpy())
        try:
            self.last_path = self.manager.save(checkpoint_number=counter)
        except (OSError, tf.errors.OpError) as exc:
            if isinstance(exc, LOST_WORKER_ERRORS) and isinstance(
                    self.gan.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
                raise  # another worker stopped during the save: not a write failure
            remove_snapshot_leftovers(self.directory, locked=True)
            reason = describe_os_error(exc) if isinstance(exc, OSError) else exc.message.split("\n")[0]
            raise WriteError(
                f"{os.path.join(self.directory, SNAPSHOT_NAME)}-{counter}: could not write the snapshot "
                f"({reason}); earlier snapshots are intact.") from None
        return self.last_path


def _state_file_snapshots(directory, option):
    """The snapshots the ``checkpoint`` state file of ``directory`` names,
    newest first (paths), or None without a state file; a state file that
    cannot be read is a one-line ``CheckpointError``.  Read here rather than
    by ``tf.train.latest_checkpoint``, which logs lines of its own."""
    path = os.path.join(directory, "checkpoint")
    if not os.path.lexists(path):
        return None
    try:
        with open_regular(path, "r", encoding="utf-8") as f:
            text = f.read(MAX_STATE_FILE_BYTES + 1)
        if len(text) > MAX_STATE_FILE_BYTES:
            raise ValueError(f"larger than {MAX_STATE_FILE_BYTES:,} bytes")
        state = text_format.Parse(text, checkpoint_state_pb2.CheckpointState())
    except (OSError, ValueError, text_format.ParseError) as exc:
        detail = " ".join(str(exc).split())[:160]
        raise CheckpointError(f"{path}: not a readable 'checkpoint' state file ({detail}); point "
                              f"{option} at a model-<N> prefix of the folder instead.") from None
    named = [state.model_checkpoint_path] + list(reversed(state.all_model_checkpoint_paths))
    snapshots = []
    for name in named:
        full = name if os.path.isabs(name) else os.path.join(directory, name)
        if name and full not in snapshots:
            snapshots.append(full)
    return snapshots


def _snapshot_exists(prefix):
    return os.path.isfile(prefix + ".index")


def _newest_named(directory, option):
    """The newest snapshot of a run folder: what its state file names; a
    one-line ``CheckpointError`` when that snapshot's files are missing
    (naming the snapshots that are there)."""
    snapshots = _state_file_snapshots(directory, option)
    if not snapshots:
        return None
    if _snapshot_exists(snapshots[0]):
        return snapshots[0]
    present = [p for p in snapshots if _snapshot_exists(p)]
    there = (f"the folder still holds {', '.join(os.path.basename(p) for p in present)}: point {option} "
             f"at {present[0]}" if present else
             f"none of the {len(snapshots)} snapshot(s) it lists is there")
    raise CheckpointError(
        f"{directory}: its 'checkpoint' state file names {os.path.basename(snapshots[0])} as the newest "
        f"snapshot, but {snapshots[0]}.index is missing (deleted or moved); {there}.")


def latest_in_directory(path, option=PRETRAINED_OPTIONS):
    """The newest snapshot of a run directory, or of the newest run below a
    log directory (e.g. ``ckt_logs/shapes``)."""
    latest = _newest_named(path, option)
    if latest is not None:
        return latest
    runs = [os.path.join(root, d) for root, dirs, _ in os.walk(path) for d in dirs]
    runs = [(os.path.getmtime(r), r) for r in runs if os.path.lexists(os.path.join(r, "checkpoint"))]
    problem = None
    for _, run in sorted(runs, reverse=True):
        try:
            latest = _newest_named(run, option)
        except CheckpointError as exc:
            problem = problem or exc
            continue
        if latest is not None:
            return latest
    if problem is not None:
        raise problem
    raise CheckpointError(f"{path}: no checkpoint in this folder or below it (no 'checkpoint' state "
                          f"file); point {option} at a model-<N> prefix, a run folder or a reference "
                          ".ckpt file.")


def checkpoint_files(path):
    """The files TensorFlow reads for the checkpoint ``path`` (a V1 file, or
    a V2 prefix's index and data), those that exist."""
    files = [path, path + ".index"] + sorted(glob.glob(glob.escape(path) + ".data-*"))
    return [f for f in files if os.path.lexists(f)]


def check_checkpoint_files(path, option, error=CheckpointError):
    """The files of the checkpoint ``path`` must be regular files:
    TensorFlow would wait for ever on a FIFO."""
    for file in checkpoint_files(path):
        if not os.path.isfile(file):
            raise error(f"{file}: not a regular file; {option} must name a checkpoint.")


def resolve(path, option=PRETRAINED_OPTIONS):
    """Classify ``path``: ('native', prefix) or ('reference', path).
    ``option`` names where the path came from, for the messages (e.g.
    '--checkpoint')."""
    if not path:
        raise CheckpointError(f"no checkpoint given: set {option}.")
    if os.path.isdir(path):
        return "native", latest_in_directory(path, option)
    part = _CHECKPOINT_PART.match(path)
    if part and _snapshot_exists(part.group(1)):
        raise CheckpointError(
            f"{path}: one of the files of the checkpoint {part.group(1)}; give {option} the "
            f"checkpoint's prefix {part.group(1)} (without .{part.group(2)}).")
    if os.path.lexists(path + ".index") or os.path.lexists(path):
        check_checkpoint_files(path, option)
        try:
            reader = tf.train.load_checkpoint(path)
        except Exception:
            raise CheckpointError(
                f"{path}: not a TensorFlow checkpoint, or a damaged one. Point {option} at a model-<N> "
                "prefix written by this project, a folder of them, or a reference .ckpt file.") from None
        if reader.has_tensor(OBJECT_GRAPH_KEY):
            return "native", path
        if is_reference_checkpoint(path):
            return "reference", path
        raise CheckpointError(f"{path}: a TensorFlow checkpoint, but not a StackGAN one; check {option}.")
    raise CheckpointError(
        f"{path}: checkpoint not found (neither the file nor {path}.index exists). Check {option}.")


def restore_objects(objects, prefix, partial=False):
    """Restore ``{name: trackable}`` from a native checkpoint.

    Every variable of the objects must be reachable by ``tf.train.Checkpoint``
    (one that is not would silently keep its initial value).  ``partial``:
    the checkpoint may hold more than the objects (e.g. the critics and
    optimizers when only generators are loaded).
    """
    checkpoint = tf.train.Checkpoint(**objects)
    tracked = {id(t) for t in tf.train.TrackableView(checkpoint).descendants()}
    for name, obj in objects.items():
        for var in getattr(obj, "variables", []):
            if id(var) not in tracked and id(getattr(var, "value", None)) not in tracked:
                raise RuntimeError(f"{name}: variable {var.path} is not tracked by tf.train.Checkpoint")
    status = None
    try:
        status = checkpoint.read(prefix)  # read(): no save_counter, which write() does not store
        if partial:
            status.expect_partial()
        status.assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as exc:
        if status is not None:
            # else TensorFlow logs every value it did not restore when the
            # status is deleted: lines after the one-line error
            status.expect_partial()
        detail = " ".join(str(exc).split())[:400]
        raise CheckpointError(
            f"{prefix}: does not fit the models built from this config ({detail}). "
            "Use the config the checkpoint was trained with.") from None
    return prefix


def restore_native(gan, prefix, parts=None):
    """Restore a trainer from a native checkpoint: all of it, or the named
    ``parts`` (networks, ``counter``, ``global_step``).  The whole state
    includes the epoch-mean sums when the checkpoint has them (older
    snapshots do not: a run resumed from one mid-epoch averages its first
    epoch over the iterations it ran)."""
    available = {"counter": gan.counter, "global_step": gan.global_step, **gan.networks()}
    if parts is not None:
        return restore_objects({k: available[k] for k in parts}, prefix, partial=True)
    restore_objects({**available, **gan.optimizers()}, prefix, partial=True)
    if graph_node(object_graph(prefix), ("epoch_means",)) is not None:
        restore_objects({"epoch_means": epoch_mean_state(gan)}, prefix, partial=True)
    return prefix


def object_graph(path):
    """The object graph of a native checkpoint."""
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(tf.train.load_checkpoint(path).get_tensor(OBJECT_GRAPH_KEY))
    return graph


def graph_node(graph, names):
    """Id of the node reached from the root along ``names`` (None if absent)."""
    node = 0
    for name in names:
        children = {c.local_name: c.node_id for c in graph.nodes[node].children}
        if name not in children:
            return None
        node = children[name]
    return node


def variable_key(graph, names):
    """Checkpoint key of the variable at ``names`` (None if absent): where to
    read it with ``tf.train.load_checkpoint``."""
    node = graph_node(graph, names)
    if node is None:
        return None
    for attribute in graph.nodes[node].attributes:
        if attribute.name == "VARIABLE_VALUE":
            return attribute.checkpoint_key
    return None


@dataclasses.dataclass
class CheckpointInfo:
    kind: str            # 'native' or 'reference'
    path: str            # what TensorFlow opens (V1 file or V2 / native prefix)
    stage: int           # 1 or 2
    embedding_dim: int   # text-embedding size the generators take
    network_type: str    # Stage-I network: 'default' or 'simple'
    counter: int         # training iteration it was saved at (None if unknown)
    shapes: dict = dataclasses.field(default_factory=dict, repr=False)  # reference only


def verify_checkpoint_data(path, error=CheckpointError, fix=SNAPSHOT_FIX):
    """Read every tensor of a checkpoint (TensorFlow checks each one's
    checksum), so a truncated, missing or corrupted data file is found
    before anything is built from it: a one-line ``error`` naming the file
    and ending with ``fix``.  A tensor whose shape asks for more bytes than
    the data files hold is refused before it is read (a damaged index could
    otherwise make TensorFlow allocate any size)."""
    reader = tf.train.load_checkpoint(path)
    data = sorted(glob.glob(glob.escape(path) + ".data-*"))
    if os.path.isfile(path):  # a V1 single-file checkpoint
        where, available = path, os.path.getsize(path)
    else:
        where = data[0] if len(data) == 1 else f"{path}.data-*"
        available = sum(os.path.getsize(f) for f in data)
    dtypes = reader.get_variable_to_dtype_map()
    for name, shape in sorted(reader.get_variable_to_shape_map().items()):
        dtype = tf.as_dtype(dtypes[name])
        nbytes = math.prod(shape) * (dtype.size if dtype != tf.string else 0)
        if nbytes > available:
            raise error(f"{where}: checkpoint damaged: {name} has the shape {list(shape)} ({nbytes:,} "
                        f"bytes), more than the {available:,} bytes of its data. {fix}")
        try:
            reader.get_tensor(name)
        except Exception as exc:  # IndexError (truncated), OpError (missing, checksum), ...
            state = "missing" if not (data or os.path.isfile(path)) else "truncated or corrupted"
            detail = " ".join(str(exc).split())[:160]
            raise error(f"{where}: checkpoint data {state}, reading {name} failed ({type(exc).__name__}: "
                        f"{detail}). {fix}") from None


def describe_checkpoint(path, option=PRETRAINED_OPTIONS):
    """Open ``path`` (see ``misc.training.checkpoints.resolve``; ``option`` names
    where it came from) and return its ``CheckpointInfo``; one-line
    ``CheckpointError`` for anything that is not a StackGAN checkpoint or
    whose data is damaged."""
    kind, path = resolve(path, option)
    verify_checkpoint_data(path)
    if kind == "reference":
        ckpt = ReferenceCheckpoint(path)
        shapes = ckpt.shapes
        if CA_MATRIX not in shapes:
            raise CheckpointError(
                f"{path}: not a StackGAN generator checkpoint: it has no {CA_MATRIX} "
                "(the text-conditioning layer every StackGAN generator starts with).")
        stage = 2 if ckpt.has_scope("hr_g_net") else 1
        network_type = "simple" if SIMPLE_MARKER in shapes else "default"
        return CheckpointInfo(kind, path, stage, int(shapes[CA_MATRIX][0]), network_type,
                              counter_from_path(path), shapes)
    graph = object_graph(path)
    parts = {c.local_name for c in graph.nodes[0].children}
    key = variable_key(graph, ("generator", "ca", "fc", "matrix"))
    if "generator" not in parts or key is None:
        raise CheckpointError(
            f"{path}: a TensorFlow object-based checkpoint, but not a StackGAN one (it holds "
            f"{', '.join(sorted(parts)) or 'nothing'}, no 'generator' network). Point "
            f"{option} at a model-<N> prefix written by this project or at a reference .ckpt file.")
    reader = tf.train.load_checkpoint(path)
    embedding_dim = int(reader.get_variable_to_shape_map()[key][0])
    simple = graph_node(graph, ("generator", "image_generator", "stack")) is not None
    counter_key = variable_key(graph, ("counter",))
    counter = int(reader.get_tensor(counter_key)) if counter_key else None
    stage = 2 if "hr_generator" in parts else 1
    return CheckpointInfo(kind, path, stage, embedding_dim, "simple" if simple else "default", counter)


def check_embedding_dim(info, embedding_dim, source):
    """The dataset's text embeddings must have the size the model takes."""
    if info.embedding_dim != embedding_dim:
        raise CheckpointError(
            f"{info.path}: the model takes {info.embedding_dim}-d text embeddings but {source} "
            f"holds {embedding_dim}-d ones; use the embeddings it was trained with "
            "(EMBEDDING_TYPE / DATASET_NAME) or train a new model.")


def copy_trainable_weights(source, target):
    """Copy the trainable variables of one network into another of the same
    architecture, by reference name (shapes checked)."""
    src = source.reference_variables()
    for name, var in target.reference_variables().items():
        if var.trainable:
            if tuple(src[name].shape) != tuple(var.shape):
                raise CheckpointError(
                    f"{name}: shape {list(src[name].shape)} in the Stage-I checkpoint, "
                    f"{list(var.shape)} in this config; use the Stage-I run's GAN dimensions.")
            var.assign(src[name])

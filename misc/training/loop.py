"""The training loop of both stages: ``keras.Model.fit`` from the trainer's
iteration counter to TRAIN.MAX_EPOCH, with the callbacks that make it the
reference loop (learning-rate schedule, snapshots, summaries, previews, the
epoch line) and never lose a run (signals, divergence, full disks, lost
workers: misc/training/callbacks.py).

Iteration ``counter`` is batch ``counter % steps`` of epoch
``counter // steps``; a run continues exactly there (same batches, noise,
learning rates, epoch means), so it ends at the same final iteration with
the same weights as an uninterrupted one.
"""

import dataclasses
import datetime
import itertools
import os
import shutil
import signal
import sys
import tempfile

import tensorflow as tf

from misc.config import ConfigError, UserError
from misc.data.atomic import WriteError, exclusive_lock
from misc.data.input_pipeline import distributed_training_dataset
from misc.training.acceleration import describe
from misc.training.callbacks import (
    DivergenceGuard,
    EpochEnd,
    FirstStepTime,
    KeepEpochMeans,
    LastIteration,
    LearningRateSchedule,
    PeriodicSnapshot,
    PlainProgress,
    Progress,
    StopOnSignal,
    TensorBoardSummaries,
    TrainingDiverged,
    WorkerWatchdog,
)
from misc.training.checkpoints import RUN_LOCK, Snapshotter, remove_snapshot_leftovers
from misc.training.cluster import LOST_WORKER_ERRORS, ClusterError, is_chief, lost_worker_reason

LOG_ROOT = "ckt_logs"  # where the runs' folders are made: ckt_logs/<dataset>/<CONFIG_NAME>_<time>/


def new_log_dir(config, root=LOG_ROOT):
    """ckt_logs/<dataset>/<CONFIG_NAME>_<timestamp>/, created; a run started
    in the same second as another gets <...>-2, -3, ...: every run has its
    own folder (made with an atomic mkdir)."""
    stamp = datetime.datetime.now().astimezone().strftime("%Y_%m_%d_%H_%M_%S")
    parent = os.path.join(root, config.DATASET_NAME)
    os.makedirs(parent, exist_ok=True)
    base = os.path.join(parent, f"{config.CONFIG_NAME}_{stamp}")
    for number in itertools.count(1):
        path = base if number == 1 else f"{base}-{number}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def iterations_per_epoch(split, batch_size):
    """Iterations of an epoch (the reference's ``num_examples // batch``)."""
    steps = split.steps_per_epoch(batch_size)
    if steps < 1:
        raise ConfigError(
            f"TRAIN.BATCH_SIZE {batch_size} is larger than the {split.num_examples} images of "
            f"the {split.name} split in {split.dataset_dir}; lower TRAIN.BATCH_SIZE.")
    return steps


def caption_splits(config):
    """The splits whose captions a training run reads (previews): test, and
    train when one caption is drawn per image."""
    return ("train", "test") if config.TRAIN.NUM_EMBEDDING == 1 else ("test",)


def fit_phases(counter, steps, max_epoch):
    """The ``fit`` calls that train from iteration ``counter`` to the end of
    epoch ``max_epoch - 1``: (initial epoch, end epoch, steps per epoch,
    first iteration).  Resumed mid-epoch, the first call trains the rest of
    the interrupted epoch, so that epoch numbers, learning rates, previews
    and the final iteration are those of an uninterrupted run."""
    epoch, batch = divmod(counter, steps)
    phases = []
    if batch and epoch < max_epoch:
        phases.append((epoch, epoch + 1, steps - batch, counter))
        epoch += 1
    if epoch < max_epoch:
        phases.append((epoch, max_epoch, steps, epoch * steps))
    return phases


@dataclasses.dataclass
class Run:
    """One training run: what ``train`` was given and where it writes."""

    gan: object                 # the stage trainer (a misc.training.gan_trainer.GANTrainer)
    split: object               # the training split (misc.data.datasets.Split)
    config: object              # the run's config tree
    make_preview: object        # make_preview(log_dir) -> preview(epoch, writer): the epoch's sheets
    rate_for: object            # rate_for(optimizer name, epoch): the learning-rate schedule
    start_path: str = None      # the checkpoint the run started from (None: fresh)
    keep_every_n_hours: float = 2  # snapshots kept for good besides the last five
    log_dir: str = None         # where it writes
    chief: bool = True          # whether it writes the outputs (the chief of a cluster)
    batches: object = None      # batches(first iteration) -> the dataset; None: the split's (the stages)
    steps_per_epoch: int = None  # None: the split's images / TRAIN.BATCH_SIZE
    snapshotter: type = Snapshotter
    guard: type = DivergenceGuard

    @property
    def steps(self):
        return self.steps_per_epoch or iterations_per_epoch(self.split, self.config.TRAIN.BATCH_SIZE)

    def dataset(self, first_step):
        """The batches from iteration ``first_step`` on."""
        if self.batches is not None:
            return self.batches(first_step)
        train_cfg = self.config.TRAIN
        return distributed_training_dataset(
            self.gan.distribute_strategy, self.split, train_cfg.BATCH_SIZE, train_cfg.NUM_EMBEDDING,
            self.gan.noise_spec(), seed=self.config.SEED, first_step=first_step)


def train(gan, split, config, *, make_preview, rate_for, start_path=None, keep_every_n_hours=2,
          batches=None, steps=None, snapshotter=Snapshotter, guard=DivergenceGuard, log_root=LOG_ROOT):
    """Train ``gan`` on ``split`` from its counter to TRAIN.MAX_EPOCH.

    A trainer that is not a stage's (the text encoder's,
    misc/training/sje_trainer.py) gives its own ``batches(first iteration)``
    and ``steps`` per epoch instead of a split, and may give its own
    ``snapshotter`` and ``guard`` classes and ``log_root``.

    A new log folder is made (leftovers of interrupted saves are first
    removed from the folder of ``start_path``, the checkpoint resumed from)
    and ``make_preview(log_dir)`` gives the per-epoch preview.  SIGINT /
    SIGTERM stop at the next step boundary, save a snapshot and exit 130 /
    143; other failures end in a one-line error naming the last good
    snapshot.  Returns the final snapshot (None when there was nothing to
    train).
    """
    run = Run(gan, split, config, make_preview, rate_for, start_path, keep_every_n_hours,
              batches=batches, steps_per_epoch=steps, snapshotter=snapshotter, guard=guard)
    first = int(gan.counter.numpy())
    if not fit_phases(first, run.steps, config.TRAIN.MAX_EPOCH):
        print(f"Nothing to train: the model is at epoch {first // run.steps} "
              f"(iteration {first}) and TRAIN.MAX_EPOCH is {config.TRAIN.MAX_EPOCH}.")
        return None
    if not is_chief(gan.distribute_strategy):
        # A worker other than the chief: it takes part in every snapshot
        # (saving is collective), into a folder of its own that goes away.
        run.log_dir, run.chief = tempfile.mkdtemp(prefix="stackgan-worker-"), False
        try:
            return _fit(run, first)
        finally:
            shutil.rmtree(run.log_dir, ignore_errors=True)
    if start_path:
        for path in remove_snapshot_leftovers(os.path.dirname(start_path) or "."):
            print(f"Removed {path}, left by an interrupted snapshot.")
    run.log_dir = new_log_dir(config, log_root)
    last = _fit(run, first)
    sheets = sorted(name for name in os.listdir(run.log_dir) if name.endswith(".jpg"))
    print(f"Done: iteration {int(gan.counter.numpy())} (epoch {config.TRAIN.MAX_EPOCH}) in {run.log_dir}: "
          f"the snapshot {os.path.basename(last)}, the sample sheets {', '.join(sheets) or '(none)'}; "
          f"TensorBoard: tensorboard --logdir {run.log_dir}")
    return last


def _fit(run, first):
    """``train``'s loop from iteration ``first``, writing into
    ``run.log_dir``; only the chief writes summaries and previews, and
    reports snapshots."""
    gan, train_cfg, steps, log_dir = run.gan, run.config.TRAIN, run.steps, run.log_dir
    multi_worker = isinstance(gan.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy)
    with exclusive_lock(os.path.join(log_dir, RUN_LOCK)), StopOnSignal(synchronized=multi_worker) as stop:
        snapshotter = run.snapshotter(gan, log_dir, keep_every_n_hours=run.keep_every_n_hours,
                                      start_path=run.start_path, reported=run.chief)
        guard = run.guard(gan, snapshotter)
        snapshot = PeriodicSnapshot(gan, snapshotter, train_cfg.SNAPSHOT_INTERVAL, guard,
                                    log=print if run.chief else lambda message: None)
        last = LastIteration(first)
        terminal = sys.stdout.isatty()  # a progress bar, else plain lines (and no Keras bar)
        callbacks = [last, FirstStepTime(gan.jit_compile), stop, LearningRateSchedule(gan, run.rate_for),
                     guard, snapshot]
        if multi_worker:
            callbacks.append(worker_watchdog(gan.distribute_strategy, run.config, snapshotter))
        writer = preview = None
        if run.chief:
            writer = tf.summary.create_file_writer(log_dir)
            preview = run.make_preview(log_dir)
            callbacks.append(TensorBoardSummaries(gan, writer))
        callbacks += [
            # before EpochEnd, so that a bar's line is finished first
            Progress(train_cfg.MAX_EPOCH) if terminal else PlainProgress(train_cfg.MAX_EPOCH, steps),
            EpochEnd(gan, (lambda epoch: preview(epoch, writer)) if run.chief else None, steps, log_dir,
                     train_cfg.MAX_EPOCH),
        ]
        epoch, batch = divmod(first, steps)
        print(describe(run.config, gan.jit_compile, gan.compute_policy()))
        where = f"logs in {log_dir}" if run.chief else "the chief writes the logs and snapshots"
        print(f"Training from iteration {first} (epoch {epoch}"
              f"{f', batch {batch}' if batch else ''}), {steps} iterations per epoch, {where}")
        finished = False
        try:
            for initial_epoch, end_epoch, epoch_steps, first_step in fit_phases(first, steps,
                                                                               train_cfg.MAX_EPOCH):
                extra = [KeepEpochMeans(gan)] if first_step % steps else []
                gan.fit(run.dataset(first_step), epochs=end_epoch, initial_epoch=initial_epoch,
                        steps_per_epoch=epoch_steps, callbacks=callbacks + extra, verbose=int(terminal),
                        shuffle=False)
                if stop.should_stop:
                    break
            if int(gan.counter.numpy()) != first:
                snapshot.save_if_new()
            finished = True
        except KeyboardInterrupt:  # a second signal: stop at once
            print(f"\nStopped at once, without saving. {snapshotter.resume_hint()}", file=sys.stderr)
            raise SystemExit(128 + (stop.received or signal.SIGINT)) from None
        except TrainingDiverged:
            raise  # names the last good snapshot itself
        except WriteError as exc:  # disk full, ...: the snapshot or preview being written
            raise WriteError(f"{exc} {snapshotter.resume_hint(' once that is fixed')}") from None
        except LOST_WORKER_ERRORS as exc:
            if not multi_worker:
                raise
            raise ClusterError(f"training stopped at iteration {last.value}: "
                               f"{lost_worker_reason(exc)}. Restart every worker. "
                               f"{snapshotter.resume_hint()}") from None
        except UserError as exc:  # found late, e.g. by a preview
            raise type(exc)(f"{exc} {snapshotter.resume_hint()}") from None
        except Exception:
            print(f"\nerror: training stopped at iteration {last.value} by the "
                  f"unexpected error below. {snapshotter.resume_hint()}", file=sys.stderr)
            raise
        finally:
            try:
                if writer is not None:
                    writer.close()
            except (OSError, tf.errors.OpError) as exc:
                if finished:  # else an error is being reported already
                    raise WriteError(f"{log_dir}: could not write the TensorBoard summaries "
                                     f"({exc}). {snapshotter.resume_hint()}") from None
    counter = int(gan.counter.numpy())
    if stop.should_stop and fit_phases(counter, steps, train_cfg.MAX_EPOCH):  # stopped before the end
        where = snapshotter.last_good if run.chief else f"the chief's model-{counter}"
        print(f"\nStopped by {stop.signal_name} at iteration {counter}; "
              + (f"resume with TRAIN.PRETRAINED_MODEL: {where}" if where else "no snapshot to resume from."))
        raise SystemExit(128 + stop.should_stop)
    return snapshotter.last_path


def worker_watchdog(strategy, config, snapshotter):
    """A ``WorkerWatchdog`` for this worker of a multi-worker run: a worker
    that stops stepping ends every worker with one line naming it and the
    last good snapshot (exit code 2)."""
    resolver = strategy.cluster_resolver
    tasks = [f"{job}:{i}" for job, addresses in resolver.cluster_spec().as_dict().items()
             for i in range(len(addresses))]

    def on_stall(iteration, reason):
        # The main thread waits inside the step's all-reduce and cannot be
        # interrupted: end the process from here, snapshots being atomic.
        print(f"\nerror: training stopped at iteration {iteration}: {reason}. Restart every worker. "
              f"{snapshotter.resume_hint()}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(UserError.exit_code)

    return WorkerWatchdog(f"{resolver.task_type}:{resolver.task_id}", tasks, config.CLUSTER.STEP_TIMEOUT,
                          config.CLUSTER.STARTUP_TIMEOUT, on_stall)

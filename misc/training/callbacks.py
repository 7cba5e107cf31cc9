"""Keras callbacks that turn ``fit`` into the reference training loop:
learning-rate schedule, divergence guard, snapshots every N iterations,
TensorBoard summaries, per-epoch sample images and the epoch log line, and
stopping cleanly on SIGINT / SIGTERM.

Epochs are defined by the iteration counter (epoch ``counter // steps``), so
a run resumed mid-epoch (whose first ``fit`` epoch is the rest of the
interrupted one) previews and logs at the same iterations as an
uninterrupted run."""

import datetime
import math
import signal
import sys
import threading
import time

import keras
import numpy as np
import tensorflow as tf
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.histogram import summary as histogram_summary
from tensorboard.plugins.scalar import summary as scalar_summary

from misc.config import UserError
from misc.data.atomic import WriteError
from misc.training import cluster
from misc.training.gan_trainer import HISTOGRAM_PREFIX, STOP_KEY, SUMMARY_PREFIX


class TrainingDiverged(UserError, RuntimeError):
    """A loss or a weight became NaN or infinite."""


class LastIteration(keras.callbacks.Callback):
    """The iteration counter after the last finished step, read on the host
    (``value``): what an error names, without reading a model whose step
    just failed."""

    def __init__(self, first):
        super().__init__()
        self.value = first

    def on_train_batch_end(self, batch, logs=None):
        self.value = int(self.model.counter.numpy())


class LearningRateSchedule(keras.callbacks.Callback):
    """Sets every optimizer's rate at the start of each epoch from
    ``rate_for(optimizer_name, epoch)``."""

    def __init__(self, gan, rate_for):
        super().__init__()
        self.gan = gan
        self.rate_for = rate_for

    def on_epoch_begin(self, epoch, logs=None):
        for name, optimizer in self.gan.optimizers().items():
            optimizer.learning_rate.assign(self.rate_for(name, epoch))


def _all_finite(variables):
    return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in variables)


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss, before anything is saved;
    the error names the last snapshot ``snapshotter`` wrote."""

    def __init__(self, gan, snapshotter):
        super().__init__()
        self.gan = gan
        self.snapshotter = snapshotter

    def on_train_batch_end(self, batch, logs=None):
        for key, value in (logs or {}).items():
            if key.startswith(SUMMARY_PREFIX) and not math.isfinite(float(value)):
                self.fail(f"{key[len(SUMMARY_PREFIX):]} is {float(value)}")

    def fail(self, what):
        lower = "a lower TRAIN.GENERATOR_LR / TRAIN.DISCRIMINATOR_LR"
        hint = self.snapshotter.resume_hint()
        if self.snapshotter.last_good:
            advice = f"{hint[:-1]} and {lower}."
        else:
            advice = f"{hint[:-1]}; start again with {lower}."
        raise TrainingDiverged(f"training diverged at iteration {int(self.gan.counter.numpy())}: "
                               f"{what}. {advice}")


class PeriodicSnapshot(keras.callbacks.Callback):
    """Saves a snapshot every ``interval`` iterations (counter % interval == 0)
    after checking that every weight is finite (``guard`` reports a weight
    that is not); the training driver saves the final state (``save_if_new``)."""

    def __init__(self, gan, snapshotter, interval, guard, log=print):
        super().__init__()
        self.gan = gan
        self.snapshotter = snapshotter
        self.interval = interval
        self.guard = guard
        self.log = log
        self.last_counter = None

    def on_train_batch_end(self, batch, logs=None):
        counter = int(self.gan.counter.numpy())
        if self.interval > 0 and counter % self.interval == 0:
            self.save()

    def save(self):
        if not _all_finite(self.gan.trainable_weights):
            self.guard.fail("a weight is not finite")
        path = self.snapshotter.save()
        self.last_counter = int(self.gan.counter.numpy())
        self.log(f"\nModel saved in file: {path}")
        return path

    def save_if_new(self):
        """Save unless the current state is already the last snapshot; return
        the newest snapshot's path."""
        if self.last_counter != int(self.gan.counter.numpy()):
            return self.save()
        return self.snapshotter.last_path


class TensorBoardSummaries(keras.callbacks.Callback):
    """Writes each step's scalars and histograms at the iteration counter
    (the reference's d_sum, g_sum and hist_sum).

    The summaries are built on the host with TensorBoard's NumPy helpers and
    written as one record per step: 20x cheaper than eager ``tf.summary``
    ops (~1 ms instead of ~17 ms per step, most of it histogram bucketing).
    """

    def __init__(self, gan, writer):
        super().__init__()
        self.gan = gan
        self.writer = writer

    def on_train_batch_end(self, batch, logs=None):
        summary = summary_pb2.Summary()
        for key, value in (logs or {}).items():
            if key.startswith(SUMMARY_PREFIX):
                pb = scalar_summary.scalar_pb(key[len(SUMMARY_PREFIX):], float(value))
            elif key.startswith(HISTOGRAM_PREFIX):
                pb = histogram_summary.histogram_pb(key[len(HISTOGRAM_PREFIX):], np.asarray(value))
            else:
                continue
            summary.value.extend(pb.value)
        step = int(self.gan.counter.numpy())
        with self.writer.as_default(step=step):
            tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)

    def on_epoch_end(self, epoch, logs=None):
        self.writer.flush()


class EpochEnd(keras.callbacks.Callback):
    """At the end of every epoch (counter a multiple of ``steps``):
    ``preview(epoch)`` (sample images, unless None) and the reference's log
    line with the epoch's mean losses, the epoch counted from 1 of
    ``total_epochs`` as the progress display counts it (the reference
    printed ``Epoch <0-based> | ...``).  A ``fit`` epoch cut short by a stop
    is no epoch end."""

    def __init__(self, gan, preview, steps, log_dir, total_epochs, out=None):
        super().__init__()
        self.gan = gan
        self.preview = preview
        self.steps = steps
        self.log_dir = log_dir
        self.total_epochs = total_epochs
        self.out = out  # default: the current sys.stdout

    def on_epoch_end(self, epoch, logs=None):
        if int(self.gan.counter.numpy()) % self.steps:
            return
        try:
            if self.preview is not None:  # None: a worker that writes no outputs
                self.preview(epoch)
        except WriteError:
            raise
        except (OSError, tf.errors.OpError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else exc.message.split("\n")[0]
            raise WriteError(f"{self.log_dir}: could not write the epoch {epoch} previews "
                             f"({reason or exc}).") from None
        means = {k: float(t.result()) for k, t in self.gan.trackers.items()}
        line = "; ".join(f"{k}: {v:.6g}" for k, v in means.items())
        print(f"Epoch {epoch + 1}/{self.total_epochs} | {line}", file=self.out or sys.stdout, flush=True)
        if not all(np.isfinite(list(means.values()))):
            raise TrainingDiverged(f"epoch {epoch} mean losses are not finite ({line}).")


class KeepEpochMeans(keras.callbacks.Callback):
    """Puts back the epoch-mean sums a run resumed mid-epoch restored from
    its snapshot, after ``fit`` reset them at the start of that epoch, so the
    epoch's printed means are those of an uninterrupted run."""

    def __init__(self, gan):
        super().__init__()
        self.gan = gan
        self.values = {k: [v.numpy() for v in t.variables] for k, t in gan.trackers.items()}

    def on_epoch_begin(self, epoch, logs=None):
        for key, tracker in self.gan.trackers.items():
            for variable, value in zip(tracker.variables, self.values[key]):
                variable.assign(value)


class StopOnSignal(keras.callbacks.Callback):
    """Ctrl-C (SIGINT) and SIGTERM (what cluster schedulers and preemptible
    machines send before they kill) stop training at the next step boundary.

    While the block ``with StopOnSignal() as stop:`` runs (in the main
    thread), the handler only records the signal; this callback then sets
    ``model.stop_training`` after the step in progress, and the training
    driver saves a snapshot once ``fit`` has returned (``stopped`` holds the
    signal number).  Nothing is saved from inside the handler.  A second
    signal raises KeyboardInterrupt at once (stop without saving).

    ``synchronized`` (multi-worker runs): the workers must stop after the
    same iteration, whichever of them got the signal and when.  A worker that
    received one sets the model's ``stop_requested``; the next step sums it
    over all replicas (the STOP_KEY log), and every worker stops after that
    step."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, log=print, synchronized=False):
        super().__init__()
        self.received = None  # the signal this process received
        self.stopped = None  # the signal training stops for, once it does
        self.synchronized = synchronized
        self.log = log
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum  # no I/O here: the main thread may be inside a print

    @property
    def should_stop(self):
        """The signal training stops (or stopped) for: the one received,
        or, synchronized, once every worker knows of it."""
        return self.stopped if self.synchronized else self.received

    @property
    def signal_name(self):
        return signal.Signals(self.should_stop).name if self.should_stop else None

    def on_train_batch_end(self, batch, logs=None):
        if self.stopped is not None:
            return
        if not self.synchronized:
            self.stopped = self.received
        else:
            if self.received is not None and float(self.model.stop_requested.numpy()) == 0:
                self.model.stop_requested.assign(1.0)  # the others learn of it in the next step
            if float((logs or {}).get(STOP_KEY, 0.0)) > 0:
                self.stopped = self.received or signal.SIGTERM  # another worker got it
        if self.stopped is not None:
            self.model.stop_training = True
            why = (f"{signal.Signals(self.received).name} received" if self.received
                   else "another worker received a signal")
            self.log(f"\n{why}: stopping after iteration {int(self.model.counter.numpy())} to save a "
                     "snapshot (send it again to stop at once without saving).")


class Progress(keras.callbacks.ProgbarLogger):
    """Keras's progress bar (with ETA), showing only the epoch-mean losses,
    numbered out of the run's ``total_epochs``."""

    def __init__(self, total_epochs):
        super().__init__()
        self.total_epochs = total_epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.total_epochs

    @staticmethod
    def visible(logs):
        """The logs a person reads: the running epoch means."""
        return {k: v for k, v in (logs or {}).items()
                if k != STOP_KEY and not k.startswith((SUMMARY_PREFIX, HISTOGRAM_PREFIX))}

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, self.visible(logs))

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, self.visible(logs))


class PlainProgress(keras.callbacks.Callback):
    """Progress as plain, dated lines, for output that is not a terminal (a
    log file, a batch job): one every ``interval`` seconds and one at the end
    of every epoch, with the epoch (from 1, of ``total_epochs``), the
    iteration (of ``total_iterations``), the running mean losses, the speed
    and the time left; no bar, no control characters."""

    def __init__(self, total_epochs, steps, out=None, interval=60.0, clock=time.monotonic):
        super().__init__()
        self.total_epochs = total_epochs
        self.total_iterations = total_epochs * steps
        self.steps = steps
        self.out = out  # default: the current sys.stdout
        self.interval = interval
        self.clock = clock
        self.start = None  # (time, iteration) when this run's first step ended
        self.last_line = None

    def on_train_batch_end(self, batch, logs=None):
        counter = int(self.model.counter.numpy())
        now = self.clock()
        if self.start is None:
            self.start = self.last_line = (now, counter)  # after tracing: a fair speed from here
            return
        if now - self.last_line[0] >= self.interval:
            self.report(counter, now, logs)

    def on_epoch_end(self, epoch, logs=None):
        counter = int(self.model.counter.numpy())
        if counter % self.steps == 0 and self.start is not None:
            self.report(counter, self.clock(), logs)

    def report(self, counter, now, logs):
        self.last_line = (now, counter)
        epoch = max(1, -(-counter // self.steps))  # the epoch of the last iteration done, from 1
        losses = "; ".join(f"{k}: {float(v):.4g}" for k, v in Progress.visible(logs).items())
        done, seconds = counter - self.start[1], now - self.start[0]
        speed = ""
        if done > 0:
            per_iteration = seconds / done
            left = datetime.timedelta(seconds=round(per_iteration * (self.total_iterations - counter)))
            speed = f", {per_iteration:.3g} s/iteration, {left} left"
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} epoch {epoch}/{self.total_epochs}, iteration {counter}/{self.total_iterations}"
              f"{speed}: {losses}", file=self.out or sys.stdout, flush=True)


class FirstStepTime(keras.callbacks.Callback):
    """Prints how long the first training step took: tracing the step and,
    with XLA, compiling it (later steps reuse the compiled program)."""

    def __init__(self, jit, out=None):
        super().__init__()
        self.jit = jit
        self.out = out  # default: the current sys.stdout
        self.start = None
        self.reported = False

    def on_train_batch_begin(self, batch, logs=None):
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if not self.reported:
            self.reported = True
            what = "trace and XLA compile" if self.jit else "trace"
            print(f"First step ({what}, then one iteration): {time.perf_counter() - self.start:.1f} s",
                  file=self.out or sys.stdout, flush=True)


class WorkerWatchdog(keras.callbacks.Callback):
    """Multi-worker runs: a worker that stops stepping while its process
    lives on (a hang: its heartbeats keep coming, so TensorFlow's health
    check sees nothing) must not keep the others waiting for ever.

    Every worker publishes where it is (``misc.training.cluster.publish_progress``)
    from a background thread; when no iteration has finished on this worker
    for ``timeout`` seconds (``first_timeout`` for the first, which traces
    and compiles the step), it names the workers behind the others
    (``stalled_workers``) and calls ``on_stall(iteration, message)``, which
    must end the process: the main thread is blocked in the step's
    all-reduce and cannot be interrupted."""

    POLL_SECONDS = 1.0

    def __init__(self, task, tasks, timeout, first_timeout, on_stall):
        super().__init__()
        self.task = task
        self.tasks = tasks
        self.timeout = timeout
        self.first_timeout = first_timeout
        self.on_stall = on_stall
        self.finished = None
        self.in_step = False
        self.last_progress = None
        self._done = threading.Event()
        self._thread = None

    def on_train_begin(self, logs=None):
        self.finished = int(self.model.counter.numpy())
        self.last_progress = time.monotonic()
        self._done.clear()
        self._thread = threading.Thread(target=self._watch, name="worker-watchdog", daemon=True)
        self._thread.start()

    def on_train_batch_begin(self, batch, logs=None):
        self.in_step = True

    def on_train_batch_end(self, batch, logs=None):
        self.finished = int(self.model.counter.numpy())
        self.in_step = False
        self.last_progress = time.monotonic()
        self.first_timeout = None

    def on_train_end(self, logs=None):
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self):
        published = None
        while not self._done.wait(self.POLL_SECONDS):
            where = (self.finished, self.in_step)
            if where != published:
                cluster.publish_progress(self.task, *where)
                published = where
            limit = self.first_timeout or self.timeout
            if time.monotonic() - self.last_progress > limit:
                self.on_stall(self.finished, self._diagnosis(limit))
                return

    def _diagnosis(self, limit):
        progress = cluster.read_progress(self.tasks)
        progress[self.task] = (self.finished, self.in_step)
        stalled = cluster.stalled_workers(progress)
        iteration = self.finished + 1
        if stalled:
            names = " and ".join(f"worker {cluster.task_device(t)}{' (this one)' if t == self.task else ''}"
                                 for t in stalled)
            return (f"{names} stopped stepping (alive, but no training step for {limit:g} s; "
                    f"CLUSTER.STEP_TIMEOUT sets the wait)")
        return (f"no worker finished iteration {iteration} within {limit:g} s (all are inside it: a hung "
                f"operation or a stalled network; CLUSTER.STEP_TIMEOUT sets the wait)")

"""What the Stage-I and Stage-II experiments (``stageI/experiment.py``,
``stageII/experiment.py``) share: the command line, the distribution
strategy, the output folder, the training driver around ``keras.Model.fit``,
the evaluation output layout and turning failures into one-line errors.

Exit codes of the commands (``run_main``): 0 done; 2 a one-line error (bad
input found before anything was written, or a failure during training such
as a full disk or divergence, naming the last good snapshot); 130 / 143
stopped by Ctrl-C (SIGINT) / SIGTERM after saving a snapshot to resume from
(128 + the signal number, as a shell reports a process ended by that
signal); 1 an unexpected error (a bug: its traceback is printed).
"""

import datetime
import itertools
import logging
import os
import pprint
import shutil
import signal
import sys
import tempfile

from misc.startup import nvidia_driver_present

import keras
import numpy as np
import tensorflow as tf

from misc.acceleration import StepChoices, choose_step, configure_threads, describe
from misc.atomic import WriteError, exclusive_lock, write_text
from misc.callbacks import (
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
from misc.checkpoints import RUN_LOCK, Snapshotter, remove_snapshot_leftovers
from misc.cli import EXIT_ERROR, ArgumentParser
from misc.cluster import (
    LOST_WORKER_ERRORS,
    ClusterError,
    Stopped,
    cluster_resolver,
    configure_coordination,
    describe_worker,
    is_chief,
    lost_worker_reason,
    rendezvous,
)
from misc.config import (
    PRECISIONS,
    XLA_SETTINGS,
    ConfigError,
    config_leaves,
    default_config,
    load_config,
    validate_config,
)
from misc.datasets import LR_IMAGE_SIZE, DatasetError
from misc.input_pipeline import distributed_training_dataset
from misc.tf1_checkpoint import CheckpointError

# Errors that end a command with a one-line message and EXIT_ERROR.
USER_ERRORS = (ConfigError, DatasetError, CheckpointError, TrainingDiverged, WriteError, ClusterError)
# Where the commands write what is not a training run (the demo's sheets of
# typed captions, the evaluator's results) unless told otherwise: a folder of
# the current directory (gitignored in the repository).
OUTPUT_ROOT = "outputs"


def parse_args(description, argv=None):
    parser = ArgumentParser(description=description)
    parser.add_argument("--cfg", dest="cfg_file", default=None, type=str,
                        help="YAML config file merged into the defaults")
    parser.add_argument("--gpu", dest="gpu", default=None, type=str,
                        help="GPU id(s) to use, e.g. 0 or 0,1 (default: all visible GPUs; "
                             "CPU when there is none)")
    add_step_arguments(parser)
    return parser.parse_args(argv)


def add_step_arguments(parser):
    """--xla and --precision: override TRAIN.XLA and TRAIN.PRECISION."""
    parser.add_argument("--xla", choices=XLA_SETTINGS, default=None,
                        help="compile the training step with XLA: auto (where measured faster), "
                             "on, off (default: TRAIN.XLA)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="float32, mixed (float16 on GPUs, bfloat16 on CPUs that have it), "
                             "mixed_float16, mixed_bfloat16 (default: TRAIN.PRECISION)")


def typed_names(args):
    """What the user typed for the step settings, for the messages: the
    flags given instead of the config keys they override."""
    return {key: flag for key, flag in (("XLA", "--xla"), ("PRECISION", "--precision"))
            if getattr(args, key.lower(), None) is not None}


def load_run_config(args, stage=None):
    """The config of a run, validated (for ``stage`` when given); also seeds
    the initial weights with SEED (data order and noise are seeded from it
    too), so a run is repeatable.  The devices come from --gpu
    (``make_strategy``), not from GPU_ID."""
    config = load_config(args.cfg_file)
    validate_config(config, stage, source=args.cfg_file)
    if args.gpu is not None:
        parse_gpu_ids(args.gpu)  # a bad --gpu fails before anything is printed
    if getattr(args, "xla", None) is not None:
        config.TRAIN.XLA = args.xla
    if getattr(args, "precision", None) is not None:
        config.TRAIN.PRECISION = args.precision
    configure_threads(config)
    keras.utils.set_random_seed(config.SEED)
    return config


def parse_gpu_ids(text):
    """'0' or '0,1' -> [0] or [0, 1]: distinct non-negative ids."""
    usage = f"--gpu {text!r}: give GPU ids such as 0 or 0,1 (distinct, from 0)."
    try:
        ids = [int(part) for part in str(text).split(",") if part.strip() != ""]
    except ValueError:
        raise ConfigError(usage) from None
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise ConfigError(usage)
    return ids


def make_strategy(gpu=None, config=None, log=print, training=True, names=None):
    """The distribution strategy of a run and its ``StepChoices`` (XLA,
    precision; ``names`` says what the user typed for them, see
    ``choose_step``).

    MultiWorkerMirroredStrategy when this process is a worker of a cluster
    (TF_CONFIG, or a SLURM step of several tasks: ``misc.cluster``), each
    worker using its chosen (default: all visible) GPUs or its CPU; the
    workers first meet (``misc.cluster.rendezvous``: bounded by
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
    """Meet the other workers (``misc.cluster.rendezvous``) and return the
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


def new_log_dir(config, root="ckt_logs"):
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


def print_config(config):
    print("Using config:")
    pprint.pprint(_plain(config))


def _plain(tree):
    return {k: _plain(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def build_stage_gan(config, stage, embedding_dim, strategy=None, lr_size=LR_IMAGE_SIZE, choices=None):
    """The trainer of Stage ``stage`` (1 or 2): that stage's ``build_gan``."""
    if stage == 1:
        from stageI.experiment import build_gan
    else:
        from stageII.experiment import build_gan
    return build_gan(config, embedding_dim, strategy, lr_size, choices=choices)


def check_batch_size(batch_size, strategy):
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ConfigError(
            f"TRAIN.BATCH_SIZE {batch_size} must be divisible by the {replicas} replicas "
            "(devices) training together.")


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


def train(gan, split, config, make_preview, rate_for, start_path=None, keep_every_n_hours=2):
    """Run the reference training loop with ``fit`` from the gan's counter.

    Iteration ``counter`` is batch ``counter % steps`` of epoch
    ``counter // steps``; the run continues exactly there (same batches,
    noise, learning rates, epoch means), so it ends at the same final
    iteration with the same weights as an uninterrupted one.  A new log
    folder is made (leftovers of interrupted saves are first removed from
    the folder of ``start_path``, the checkpoint resumed from) and
    ``make_preview(log_dir)`` gives the per-epoch preview.  SIGINT / SIGTERM
    stop at the next step boundary, save a snapshot and exit 130 / 143;
    other failures end in a one-line error naming the last good snapshot.
    Returns the final snapshot (None when there was nothing to train).
    """
    train_cfg = config.TRAIN
    steps = iterations_per_epoch(split, train_cfg.BATCH_SIZE)
    first = int(gan.counter.numpy())
    phases = fit_phases(first, steps, train_cfg.MAX_EPOCH)
    if not phases:
        print(f"Nothing to train: the model is at epoch {first // steps} "
              f"(iteration {first}) and TRAIN.MAX_EPOCH is {train_cfg.MAX_EPOCH}.")
        return None
    if not is_chief(gan.distribute_strategy):
        # A worker other than the chief: it takes part in every snapshot
        # (saving is collective), into a folder of its own that goes away.
        log_dir = tempfile.mkdtemp(prefix="stackgan-worker-")
        try:
            return _train_in(log_dir, False, gan, split, config, make_preview, rate_for, start_path,
                             keep_every_n_hours, steps, first, phases)
        finally:
            shutil.rmtree(log_dir, ignore_errors=True)
    if start_path:
        for path in remove_snapshot_leftovers(os.path.dirname(start_path) or "."):
            print(f"Removed {path}, left by an interrupted snapshot.")
    log_dir = new_log_dir(config)
    last = _train_in(log_dir, True, gan, split, config, make_preview, rate_for, start_path,
                     keep_every_n_hours, steps, first, phases)
    sheets = sorted(name for name in os.listdir(log_dir) if name.endswith(".jpg"))
    print(f"Done: iteration {int(gan.counter.numpy())} (epoch {train_cfg.MAX_EPOCH}) in {log_dir}: the "
          f"snapshot {os.path.basename(last)}, the sample sheets {', '.join(sheets) or '(none)'}; "
          f"TensorBoard: tensorboard --logdir {log_dir}")
    return last


def _train_in(log_dir, chief, gan, split, config, make_preview, rate_for, start_path,
              keep_every_n_hours, steps, first, phases):
    """``train``'s loop, writing into ``log_dir``; only the ``chief`` writes
    summaries and previews, and reports snapshots."""
    train_cfg = config.TRAIN
    multi_worker = isinstance(gan.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy)
    with exclusive_lock(os.path.join(log_dir, RUN_LOCK)), StopOnSignal(synchronized=multi_worker) as stop:
        snapshotter = Snapshotter(gan, log_dir, keep_every_n_hours=keep_every_n_hours,
                                  start_path=start_path, reported=chief)
        guard = DivergenceGuard(gan, snapshotter)
        snapshot = PeriodicSnapshot(gan, snapshotter, train_cfg.SNAPSHOT_INTERVAL, guard,
                                    log=print if chief else lambda message: None)
        last = LastIteration(first)
        terminal = sys.stdout.isatty()  # a progress bar, else plain lines (and no Keras bar)
        callbacks = [
            last,
            FirstStepTime(gan.jit_compile),
            stop,
            LearningRateSchedule(gan, rate_for),
            guard,
            snapshot,
        ]
        if multi_worker:
            callbacks.append(worker_watchdog(gan.distribute_strategy, config, last, snapshotter))
        if chief:
            writer = tf.summary.create_file_writer(log_dir)
            preview = make_preview(log_dir)
            callbacks.append(TensorBoardSummaries(gan, writer))
        else:
            writer, preview = None, None
        callbacks += [
            # before EpochEnd, so that a bar's line is finished first
            Progress(train_cfg.MAX_EPOCH) if terminal else PlainProgress(train_cfg.MAX_EPOCH, steps),
            EpochEnd(gan, (lambda epoch: preview(epoch, writer)) if chief else None, steps, log_dir,
                     train_cfg.MAX_EPOCH),
        ]
        epoch, batch = divmod(first, steps)
        print(describe(config, gan.jit_compile, gan.compute_policy()))
        where = f"logs in {log_dir}" if chief else "the chief writes the logs and snapshots"
        print(f"Training from iteration {first} (epoch {epoch}"
              f"{f', batch {batch}' if batch else ''}), {steps} iterations per epoch, {where}")
        finished = False
        try:
            for initial_epoch, end_epoch, epoch_steps, first_step in phases:
                extra = [KeepEpochMeans(gan)] if first_step % steps else []
                dataset = distributed_training_dataset(
                    gan.distribute_strategy, split, train_cfg.BATCH_SIZE, train_cfg.NUM_EMBEDDING,
                    gan.noise_spec(), seed=config.SEED, first_step=first_step)
                gan.fit(dataset, epochs=end_epoch, initial_epoch=initial_epoch,
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
        except (ConfigError, DatasetError, CheckpointError) as exc:  # found late, e.g. by a preview
            raise type(exc)(f"{exc} {snapshotter.resume_hint()}") from None
        except LOST_WORKER_ERRORS as exc:
            if not multi_worker:
                raise
            raise ClusterError(f"training stopped at iteration {last.value}: "
                               f"{lost_worker_reason(exc)}. Restart every worker. "
                               f"{snapshotter.resume_hint()}") from None
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
        where = snapshotter.last_good if chief else f"the chief's model-{counter}"
        print(f"\nStopped by {stop.signal_name} at iteration {counter}; "
              + (f"resume with TRAIN.PRETRAINED_MODEL: {where}" if where else "no snapshot to resume from."))
        raise SystemExit(128 + stop.should_stop)
    return snapshotter.last_path


def worker_watchdog(strategy, config, last, snapshotter):
    """A ``WorkerWatchdog`` for this worker of a multi-worker run: a worker
    that stops stepping ends every worker with one line naming it and the
    last good snapshot (exit EXIT_ERROR)."""
    resolver = strategy.cluster_resolver
    tasks = [f"{job}:{i}" for job, addresses in resolver.cluster_spec().as_dict().items()
             for i in range(len(addresses))]

    def on_stall(iteration, reason):
        # The main thread waits inside the step's all-reduce and cannot be
        # interrupted: end the process from here, snapshots being atomic.
        print(f"\nerror: training stopped at iteration {iteration}: {reason}. Restart every worker. "
              f"{snapshotter.resume_hint()}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(EXIT_ERROR)

    return WorkerWatchdog(f"{resolver.task_type}:{resolver.task_id}", tasks, config.CLUSTER.STEP_TIMEOUT,
                          config.CLUSTER.STARTUP_TIMEOUT, on_stall)


def write_captions(captions, path):
    """The captions of a preview's rows, as the reference's text summary."""
    write_text("".join(f"\n***row {r}***\n{c}" for r, c in enumerate(captions)), path)


def evaluation_dir(path, num_samples):
    """Where the reference wrote evaluation samples: the checkpoint path
    without '.ckpt', then '-1real-<n>samples'."""
    stem = path[:path.find(".ckpt")] if ".ckpt" in path else path
    return f"{stem}-1real-{num_samples}samples"


def first_caption_embeddings(split, ids):
    """The embedding of the first caption of each image (evaluation)."""
    emb = split.embeddings[np.asarray(ids)]
    return (emb[:, 0] if emb.ndim == 3 else emb).astype(np.float32)


def _quiet_teardown():
    """After a one-line error the process ends; what TensorFlow logs while
    its objects are deleted (e.g. every value of a checkpoint that did not
    fit the model, 169 lines for Stage-I) must not follow that line."""
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def run_main(main, argv=None):
    """Run ``main`` and turn expected failures into one-line errors
    (EXIT_ERROR); see the module docstring for the exit codes."""
    try:
        main(argv)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        _quiet_teardown()
        raise SystemExit(EXIT_ERROR) from None
    except OSError as exc:
        what = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
        print(f"error: {what}", file=sys.stderr)
        _quiet_teardown()
        raise SystemExit(EXIT_ERROR) from None
    except Stopped as exc:
        print(f"\n{exc}", file=sys.stderr)
        raise SystemExit(128 + exc.signum) from None
    except KeyboardInterrupt:
        print("\ninterrupted (Ctrl-C).", file=sys.stderr)
        raise SystemExit(130) from None

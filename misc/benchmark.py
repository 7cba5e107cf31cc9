"""Measure StackGAN training speed: the configured network at the configured
batch size, through the real input pipeline and the real distributed step.

    python misc/benchmark.py --cfg stageI/cfg/birds.yml [--stage 1|2]
        [--steps 20] [--warmup 3] [--gpu 0[,1]] [--batch-size N]
        [--num-images N] [--embedding-dim 1024] [--data]
        [--xla auto|on|off] [--precision P] [--baseline REF [--baseline-cfg CFG]]
        [--json OUT]

Data is synthetic by default, in the reference format: random uint8 images of
the stored size (76 x 76 for Stage-I, 304 x 304 for Stage-II) and random
N x 10 x D text embeddings, held in a ``misc.datasets.Split`` in memory, so
no dataset is needed (``--data`` uses the configured dataset instead).
Batches come from ``misc.input_pipeline.distributed_training_dataset`` under
the training strategy (``misc.experiment.make_strategy``), and each step is
``strategy.run(gan.train_step, ...)`` inside a ``tf.function``, compiled with
XLA when the trainer's ``fit`` would (TRAIN.XLA, ``--xla``), as
``keras.Model.fit`` runs it.  Callbacks (snapshots, summaries, progress bar)
are not part of the measurement.

Every step is timed from the request for its batch until its loss has been
copied to the host (which waits for the device), after the warmup steps
(the first of which traces and compiles the step).

``--baseline REF`` times the working tree against a git commit (any
revision: a hash, a branch, HEAD) side by side: REF is extracted to a
temporary folder, each tree runs its own step in its own process
(``misc/benchmark_worker.py``), and the two alternate one iteration at a time
(A B, B A, ...), so both see the same machine conditions; it prints both
medians and their ratio.  Both use ``--cfg`` unless ``--baseline-cfg`` names
the baseline's (a config with keys the older code does not know fails there).
Both processes hold their data and networks at once.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import misc.startup  # before TensorFlow: its start-up lines follow that level

import keras
import numpy as np
import tensorflow as tf

from misc import experiment
from misc.acceleration import choose_step
from misc.atomic import check_not_input, check_writable, write_text
from misc.cli import ArgumentParser
from misc.config import ConfigError
from misc.datasets import (
    CAPTIONS_PER_IMAGE,
    HR_LR_RATIO,
    LOAD_SIZES,
    LR_IMAGE_SIZE,
    TEXT_EMBEDDING_DIM,
    Split,
    load_dataset,
)
from misc.input_pipeline import distributed_training_dataset

BIRDS_TRAIN_IMAGES = 8855  # CUB-200 training split, the reference dataset
# Synthetic data is held in memory: 20,000 images are 5.5 GB at 304 px.
MAX_SYNTHETIC_IMAGES = 20_000
MAX_EMBEDDING_DIM = 8192  # skip-thought vectors have 4800
NUM_CLASSES = 200
MIB = 1024 * 1024


# -- command line and config ----------------------------------------------

def parse_args(argv=None):
    parser = ArgumentParser(
        description="Measure StackGAN training speed (seconds per iteration, images per "
                    "second, input-pipeline wait, peak memory) on synthetic or real data.")
    parser.add_argument("--cfg", dest="cfg_file", required=True,
                        help="YAML config file (e.g. stageI/cfg/birds.yml)")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=None,
                        help="1 or 2 (default: 2 when CONFIG_NAME starts with 'stageII', else 1)")
    parser.add_argument("--steps", type=_positive(), default=20, help="measured steps (default 20)")
    parser.add_argument("--warmup", type=_positive(), default=3,
                        help="unmeasured steps first, the first of which traces and compiles "
                             "(default 3, at least 1)")
    parser.add_argument("--gpu", default=None,
                        help="GPU id(s), e.g. 0 or 0,1 (default: all visible GPUs; CPU when none)")
    parser.add_argument("--batch-size", type=_positive(), default=None,
                        help="global batch size (default: TRAIN.BATCH_SIZE)")
    parser.add_argument("--num-images", type=_positive(MAX_SYNTHETIC_IMAGES), default=BIRDS_TRAIN_IMAGES,
                        help=f"synthetic images held in memory (default {BIRDS_TRAIN_IMAGES}, "
                             "the birds training split)")
    parser.add_argument("--embedding-dim", type=_positive(MAX_EMBEDDING_DIM), default=TEXT_EMBEDDING_DIM,
                        help=f"synthetic text-embedding size (default {TEXT_EMBEDDING_DIM}, char-CNN-RNN)")
    parser.add_argument("--data", action="store_true",
                        help="use the configured dataset (DATA_DIR/DATASET_NAME) instead of "
                             "synthetic data")
    experiment.add_step_arguments(parser)
    parser.add_argument("--baseline", default=None, metavar="REF",
                        help="also time the git revision REF, alternating single iterations "
                             "with the working tree, and print the ratio")
    parser.add_argument("--baseline-cfg", default=None, metavar="CFG",
                        help="the baseline's config file (default: --cfg)")
    parser.add_argument("--json", dest="json_out", default=None,
                        help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def _positive(most=None):
    """An argparse type: a whole number from 1 (to ``most``)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1 or (most is not None and value > most):
            bounds = "of at least 1" if most is None else f"from 1 to {most:,}"
            raise argparse.ArgumentTypeError(f"{text}: give a whole number {bounds}")
        return value

    return parse


def load_config(args):
    config = experiment.load_run_config(args)
    if args.batch_size is not None:
        config.TRAIN.BATCH_SIZE = args.batch_size
    return config


def default_stage(config):
    return 2 if str(config.CONFIG_NAME).startswith("stageII") else 1


# -- machine --------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names():
    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        names.append(details.get("device_name", gpu.name))
    return names


def machine_info():
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "gpus": gpu_names(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "load_average_1min_start": _load_average(),
    }


def _load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# -- data -----------------------------------------------------------------

def hr_lr_ratio(stage):
    """The dataset's hr/lr ratio of a stage (which stored images it loads)."""
    return HR_LR_RATIO if stage == 2 else 1


class SyntheticSplit(Split):
    """A Split whose captions are placeholders: there are no text files."""

    def captions(self, index):
        return [f"synthetic caption {k}" for k in range(self.captions_per_image)]


def synthetic_split(num_images, stage, embedding_dim, seed=0):
    """Random data in the reference format: uint8 N x S x S x 3 images of the
    stored size, N x 10 x D float32 embeddings, names and class ids."""
    ratio = hr_lr_ratio(stage)
    size = LOAD_SIZES[ratio]
    rng = np.random.default_rng(seed)
    images = random_bytes(rng, num_images * size * size * 3).reshape(num_images, size, size, 3)
    embeddings = rng.standard_normal((num_images, CAPTIONS_PER_IMAGE, embedding_dim),
                                     dtype=np.float32)
    class_ids = rng.integers(1, NUM_CLASSES + 1, size=num_images)
    filenames = [f"synthetic/{i:06d}" for i in range(num_images)]
    return SyntheticSplit(images, embeddings, filenames, class_ids, dataset_dir="",
                          crop_size=LR_IMAGE_SIZE * ratio, name="train")


def random_bytes(rng, count):
    """``count`` uniform random uint8 (raw generator output: ~10x faster than
    rng.integers, which matters for the 2.4 GB of the Stage-II default)."""
    words = rng.bit_generator.random_raw((count + 7) // 8)
    return words.view(np.uint8)[:count]


def real_split(config, stage):
    return load_dataset(config, hr_lr_ratio=hr_lr_ratio(stage), splits=("train",)).train


def data_info(split, synthetic):
    return {
        "source": "synthetic" if synthetic else "dataset",
        "num_images": split.num_examples,
        "stored_size": int(split.images.shape[1]),
        "crop_size": split.crop_size,
        "text_embedding_dim": split.embedding_dim,
        "captions_per_image": split.captions_per_image,
        "in_memory_mib": round((split.images.nbytes + split.embeddings.nbytes) / MIB, 1),
    }


def distributed_batches(split, config, gan, strategy):
    """An iterator over training batches, as ``fit`` gets them."""
    train = config.TRAIN
    dataset = distributed_training_dataset(strategy, split, train.BATCH_SIZE, train.NUM_EMBEDDING,
                                           gan.noise_spec(), seed=config.SEED)
    return iter(dataset)


# -- model and step -------------------------------------------------------

def compiled_step(gan, strategy, jit):
    """One distributed training step in a tf.function (as ``fit`` compiles
    it, ``GANTrainer.make_train_function``); returns every replica's logs."""

    def one_step(batch):
        logs = strategy.run(gan.train_step, args=(batch,))
        return strategy.experimental_local_results(logs)

    return tf.function(one_step, reduce_retracing=True, autograph=False, jit_compile=jit)


def wait_for(outputs, key):
    """Copy each replica's ``key`` to the host: returns once the step has
    finished on every device."""
    return [float(replica[key].numpy()) for replica in outputs]


# -- measurement ----------------------------------------------------------

def timed_step(step, iterator, key):
    """(seconds for the whole step, seconds blocked waiting for the batch)."""
    start = time.perf_counter()
    batch = next(iterator)
    fed = time.perf_counter()
    wait_for(step(batch), key)
    return time.perf_counter() - start, fed - start


def gpu_devices():
    return [d.name.replace("/device:", "") for d in tf.config.list_logical_devices("GPU")]


def reset_gpu_peaks(devices):
    for device in devices:
        try:
            tf.config.experimental.reset_memory_stats(device)
        except (ValueError, tf.errors.OpError):
            pass


def gpu_peaks_mib(devices):
    peaks = {}
    for device in devices:
        try:
            peaks[device] = round(tf.config.experimental.get_memory_info(device)["peak"] / MIB, 1)
        except (ValueError, tf.errors.OpError):
            peaks[device] = None
    return peaks


def measure(step, iterator, key, steps, warmup):
    """Run ``warmup`` unmeasured steps (the first traces and compiles), then
    ``steps`` measured ones; GPU peaks are reset between the two."""
    devices = gpu_devices()
    reset_gpu_peaks(devices)
    first_step_s, _ = timed_step(step, iterator, key)
    for _ in range(warmup - 1):
        timed_step(step, iterator, key)
    warmup_peaks = gpu_peaks_mib(devices)
    reset_gpu_peaks(devices)
    step_times, wait_times = [], []
    start = time.perf_counter()
    for _ in range(steps):
        seconds, waited = timed_step(step, iterator, key)
        step_times.append(seconds)
        wait_times.append(waited)
    wall = time.perf_counter() - start
    return {"first_step_s": first_step_s, "step_times": step_times, "wait_times": wait_times,
            "wall_s": wall, "gpu_peak_mib": gpu_peaks_mib(devices),
            "gpu_peak_mib_warmup": warmup_peaks}


def peak_host_mib():
    """Peak resident memory of this process so far (Linux reports KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 1024, 1)


def summarize(raw, global_batch, warmup):
    times = raw["step_times"]
    mean = statistics.fmean(times)
    return {
        "measured_steps": len(times),
        "warmup_steps": warmup,
        "first_step_s": round(raw["first_step_s"], 3),
        "seconds_per_iteration_mean": mean,
        "seconds_per_iteration_median": statistics.median(times),
        "seconds_per_iteration_min": min(times),
        "seconds_per_iteration_max": max(times),
        "images_per_second": global_batch / mean,
        "data_wait_fraction": sum(raw["wait_times"]) / raw["wall_s"],
        "measured_wall_s": raw["wall_s"],
        "peak_host_memory_mib": peak_host_mib(),
        "peak_gpu_memory_mib": raw["gpu_peak_mib"],
        "peak_gpu_memory_mib_warmup": raw["gpu_peak_mib_warmup"],
        "load_average_1min_end": _load_average(),
    }


# -- report ---------------------------------------------------------------

def replica_devices(strategy):
    try:
        return list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy: TensorFlow's default device
        gpus = tf.config.list_logical_devices("GPU")
        return [(gpus or tf.config.list_logical_devices("CPU"))[0].name]


def config_info(config, args, stage, strategy, gan, embedding_dim):
    gan_cfg, batch = config.GAN, config.TRAIN.BATCH_SIZE
    replicas = strategy.num_replicas_in_sync
    return {
        "cfg_file": args.cfg_file,
        "config_name": config.CONFIG_NAME,
        "stage": stage,
        "batch_size": batch,
        "replicas": replicas,
        "batch_per_replica": batch // replicas,
        "GF_DIM": gan_cfg.GF_DIM,
        "DF_DIM": gan_cfg.DF_DIM,
        "EMBEDDING_DIM": gan_cfg.EMBEDDING_DIM,
        "Z_DIM": config.Z_DIM,
        "NUM_EMBEDDING": config.TRAIN.NUM_EMBEDDING,
        "FINETUNE_LR": bool(config.TRAIN.FINETUNE_LR) if stage == 2 else None,
        "text_embedding_dim": embedding_dim,
        "devices": replica_devices(strategy),
        "xla": bool(gan.jit_compile),
        "precision": gan.compute_policy(),
    }


def format_report(result):
    m, c, d = result["machine"], result["config"], result["data"]
    stage = "I" * c["stage"]
    gpus = ", ".join(m["gpus"]) or "none"
    lines = [
        "StackGAN training benchmark",
        f"machine: {m['cpu']}, {m['cpu_cores']} cores ({m['cpu_cores_usable']} usable); "
        f"GPUs: {gpus}; TensorFlow {m['tensorflow']}, Keras {m['keras']}; "
        f"load average {m['load_average_1min_start']}",
        f"config:  Stage-{stage} ({c['cfg_file']}), batch {c['batch_size']} = "
        f"{c['replicas']} replica(s) x {c['batch_per_replica']}, GF_DIM {c['GF_DIM']}, "
        f"DF_DIM {c['DF_DIM']}, EMBEDDING_DIM {c['EMBEDDING_DIM']}, Z_DIM {c['Z_DIM']}, "
        f"text embedding {c['text_embedding_dim']}, "
        f"XLA {'on' if c['xla'] else 'off'}, precision {c['precision']}",
        f"data:    {d['source']}, {d['num_images']} images {d['stored_size']}x{d['stored_size']} "
        f"cropped to {d['crop_size']}, {d['in_memory_mib']} MiB in memory",
    ]
    if result["status"] != "ok":
        lines.append(f"FAILED: {result['error']}")
        return "\n".join(lines)
    r = result["results"]
    lines += [
        f"first step (trace, compile, run): {r['first_step_s']:.2f} s; "
        f"{r['warmup_steps']} warmup step(s) not measured",
        f"measured {r['measured_steps']} steps in {r['measured_wall_s']:.2f} s:",
        f"  seconds/iteration  mean {r['seconds_per_iteration_mean']:.4g}  "
        f"median {r['seconds_per_iteration_median']:.4g}  "
        f"(min {r['seconds_per_iteration_min']:.4g}, max {r['seconds_per_iteration_max']:.4g})",
        f"  images/second      {r['images_per_second']:.2f}  "
        f"(batch {c['batch_size']} / mean step time)",
        f"  data wait          {100 * r['data_wait_fraction']:.2f}% of wall time "
        "(blocked in next(iterator))",
        f"  peak host memory   {r['peak_host_memory_mib']:.1f} MiB (max RSS of the process)",
    ]
    for device, peak in r["peak_gpu_memory_mib"].items():
        warm = r["peak_gpu_memory_mib_warmup"].get(device)
        lines.append(f"  peak GPU memory    {device}: {peak} MiB while measured "
                     f"({warm} MiB during warmup)")
    lines.append(f"  load average       {r['load_average_1min_end']} at the end")
    return "\n".join(lines)


def write_json(result, path):
    write_text(json.dumps(result, indent=2) + "\n", path)


# -- driver ---------------------------------------------------------------

def main(argv=None, strategy=None):
    """Run the benchmark; returns the figures (also printed, and written
    with --json).  ``strategy`` replaces ``make_strategy`` (for tests)."""
    args = parse_args(argv)
    if args.json_out:
        check_writable(args.json_out, "--json")
        check_not_input(args.json_out, [args.cfg_file, args.baseline_cfg], "--json")
    if args.baseline:
        return side_by_side(args)
    config = load_config(args)
    stage = args.stage or default_stage(config)
    if strategy is None:
        strategy, choices = experiment.make_strategy(args.gpu, config, names=experiment.typed_names(args))
    else:
        choices = choose_step(config)
    experiment.check_batch_size(config.TRAIN.BATCH_SIZE, strategy)
    if args.data:
        split = real_split(config, stage)
    else:
        split = synthetic_split(args.num_images, stage, args.embedding_dim, seed=config.SEED)
    if split.steps_per_epoch(config.TRAIN.BATCH_SIZE) < 1:
        raise ConfigError(f"batch size {config.TRAIN.BATCH_SIZE} is larger than the "
                          f"{split.num_examples} images; raise --num-images or lower the batch.")
    gan = experiment.build_stage_gan(config, stage, split.embedding_dim, strategy, choices=choices)
    result = {
        "status": "ok",
        "machine": machine_info(),
        "config": config_info(config, args, stage, strategy, gan, split.embedding_dim),
        "data": data_info(split, synthetic=not args.data),
    }
    iterator = distributed_batches(split, config, gan, strategy)
    jit = bool(gan.jit_compile)
    step = compiled_step(gan, strategy, jit)
    key = gan.epoch_log_keys[0]
    try:
        raw = measure(step, iterator, key, args.steps, args.warmup)
    except Exception as exc:  # any exception: XLA can fail in many ways
        if not jit:
            raise
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result["status"] = "jit_failed"
        result["error"] = (f"the step does not compile with XLA (--xla off trains without): "
                           f"{type(exc).__name__}: {first_line}")
    else:
        result["results"] = summarize(raw, config.TRAIN.BATCH_SIZE, args.warmup)
    print(format_report(result))
    if args.json_out:
        write_json(result, args.json_out)
    return result


# -- side by side with a git revision ----------------------------------------

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPOSITORY, "misc", "benchmark_worker.py")


def resolve_revision(ref, repository=REPOSITORY):
    """The commit hash of a git revision of this repository."""
    try:
        done = subprocess.run(
            ["git", "-C", repository, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
            capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ConfigError(f"--baseline {ref}: git is not available ({exc.strerror}).") from None
    if done.returncode != 0:
        raise ConfigError(f"--baseline {ref}: not a commit of the git repository {repository}.")
    return done.stdout.strip()


def extract_revision(commit, destination, repository=REPOSITORY):
    """The files of ``commit`` (``git archive``) into ``destination``."""
    with subprocess.Popen(["git", "-C", repository, "archive", "--format=tar", commit],
                          stdout=subprocess.PIPE) as archive:
        with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
            tar.extractall(destination, filter="data")
    if archive.returncode != 0:
        raise ConfigError(f"--baseline: git archive of {commit} failed.")


def worker_options(args, cfg, own_step_options):
    """The benchmark options a side's worker gets (its --cfg; the options
    every benchmark version knows, plus --xla/--precision for this tree)."""
    options = ["--cfg", os.path.abspath(cfg), "--warmup", str(args.warmup),
               "--num-images", str(args.num_images), "--embedding-dim", str(args.embedding_dim)]
    for flag, value in (("--stage", args.stage), ("--batch-size", args.batch_size), ("--gpu", args.gpu)):
        if value is not None:
            options += [flag, str(value)]
    if args.data:
        options.append("--data")
    if own_step_options:
        for flag, value in (("--xla", args.xla), ("--precision", args.precision)):
            if value is not None:
                options += [flag, value]
    return options


class Worker:
    """A benchmark worker process (``misc/benchmark_worker.py``) for one tree."""

    def __init__(self, name, root, options, log_dir, env=None):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen([sys.executable, WORKER, root, *options], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1,
                                        env=env)
        self.info = None

    def read(self):
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            self.log.flush()
            with open(self.log_path, errors="replace") as f:
                tail = [t for t in f.read().strip().splitlines() if t.strip()][-1:]
            raise ConfigError(f"the {self.name} benchmark worker stopped (exit {self.process.returncode}): "
                              f"{tail[0] if tail else 'no output'}")
        return line

    def ready(self):
        self.info = json.loads(self.read())
        return self.info

    def step(self):
        self.process.stdin.write("step\n")
        seconds, waited = (float(v) for v in self.read().split())
        return seconds, waited

    def finish(self):
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        final = json.loads(self.read())
        self.process.wait()
        return final

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


def alternate(sides, steps):
    """``steps`` rounds, one iteration of each side per round, the order
    reversed every other round; returns each side's step times."""
    times = {side.name: [] for side in sides}
    for index in range(steps):
        for side in (sides if index % 2 == 0 else sides[::-1]):
            times[side.name].append(side.step()[0])
    return times


def compare(times, current="working tree", baseline="baseline"):
    """Medians of each side and their ratio (current / baseline); also the
    median and range of the per-round ratios."""
    ours, theirs = times[current], times[baseline]
    rounds = [a / b for a, b in zip(ours, theirs)]
    return {
        "median_s": {current: statistics.median(ours), baseline: statistics.median(theirs)},
        "ratio": statistics.median(ours) / statistics.median(theirs),
        "round_ratio_median": statistics.median(rounds),
        "round_ratio_min": min(rounds),
        "round_ratio_max": max(rounds),
        "rounds": len(rounds),
    }


def side_by_side(args):
    """``--baseline``: the working tree against a git revision, alternating."""
    commit = resolve_revision(args.baseline)
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="stackgan-baseline-") as tmp:
        baseline_root = os.path.join(tmp, "tree")
        extract_revision(commit, baseline_root)
        sides = [Worker("working tree", REPOSITORY, worker_options(args, args.cfg_file, True), tmp),
                 Worker("baseline", baseline_root,
                        worker_options(args, args.baseline_cfg or args.cfg_file, False), tmp)]
        try:
            start = {side.name: side.ready() for side in sides}
            times = alternate(sides, args.steps)
            final = {side.name: side.finish() for side in sides}
        finally:
            for side in sides:
                side.close()
    result = {"status": "ok", "machine": machine, "baseline": args.baseline,
              "baseline_commit": commit, "cfg_file": args.cfg_file,
              "baseline_cfg_file": args.baseline_cfg or args.cfg_file,
              "sides": {name: {**start[name], **final[name], "step_times": times[name]} for name in times},
              "comparison": compare(times), "load_average_1min_end": _load_average()}
    print(format_comparison(result))
    if args.json_out:
        write_json(result, args.json_out)
    return result


def format_comparison(result):
    m, c = result["machine"], result["comparison"]
    lines = [
        "StackGAN training benchmark, side by side",
        f"machine: {m['cpu']}, {m['cpu_cores']} cores ({m['cpu_cores_usable']} usable); "
        f"GPUs: {', '.join(m['gpus']) or 'none'}; TensorFlow {m['tensorflow']}; load average "
        f"{m['load_average_1min_start']} at the start, {result['load_average_1min_end']} at the end",
        f"config: {result['cfg_file']} (baseline: {result['baseline_cfg_file']})",
    ]
    for name, side in result["sides"].items():
        label = name
        if name == "baseline":
            label = f"baseline {result['baseline']} ({result['baseline_commit'][:10]})"
        lines.append(f"  {label}: median {c['median_s'][name]:.4g} s/iteration, "
                     f"XLA {'on' if side['xla'] else 'off'}, batch {side['batch_size']}, "
                     f"first step {side['first_step_s']:.1f} s, "
                     f"peak host memory {side['peak_host_memory_mib']} MiB")
    lines.append(f"ratio (working tree / baseline, medians of {c['rounds']} alternated iterations each): "
                 f"{c['ratio']:.3f}  (per-round ratios: median {c['round_ratio_median']:.3f}, "
                 f"{c['round_ratio_min']:.3f}-{c['round_ratio_max']:.3f})")
    return "\n".join(lines)


def cli(argv=None):
    holder = {}

    def run(args):
        holder["result"] = main(args)

    experiment.run_main(run, argv)
    if holder.get("result", {}).get("status") != "ok":
        raise SystemExit(1)


if __name__ == "__main__":
    cli()

"""Measure StackGAN training speed: the configured network at the configured
batch size, through the real input pipeline and the very step ``fit`` runs
(``GANTrainer.make_train_function``'s ``distributed_step``: the trainer's
``train_step`` on every replica, compiled with XLA where the trainer is).
``python -m misc.commands.benchmark`` is its command, and
``python -m misc.commands.compare`` runs it in several processes side by
side.

Data is synthetic by default, in the reference format: random uint8 images of
the stored size (76 x 76 for Stage-I, 304 x 304 for Stage-II) and random
N x 10 x D text embeddings, held in a ``misc.data.datasets.Split`` in memory,
so no dataset is needed (``--data`` uses the configured dataset instead).
Callbacks (snapshots, summaries, progress bar) are not part of the
measurement.  Every step is timed from the request for its batch until its
loss has been copied to the host (which waits for the device), after the
warmup steps (the first of which traces and compiles the step).
"""

import json
import os
import platform
import resource
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from misc.config import ConfigError
from misc.data.atomic import write_text
from misc.data.datasets import Split
from misc.data.formats import CAPTIONS_PER_IMAGE, HR_LR_RATIO, LOAD_SIZES, LR_IMAGE_SIZE
from misc.data.input_pipeline import distributed_training_dataset
from misc.data.shapes import load_run_dataset

# Synthetic class ids, as CUB-200's
NUM_CLASSES = 200
MIB = 1024 * 1024


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
    return load_run_dataset(config, hr_lr_ratio=hr_lr_ratio(stage), splits=("train",)).train


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



def wait_for(outputs, key):
    """Copy the step's ``key`` (the first replica's, after the step's
    all-reduce) to the host: returns once the step has finished."""
    return float(outputs[key].numpy())


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


def measure(session, steps, warmup):
    """Run ``warmup`` unmeasured steps (the first traces and compiles), then
    ``steps`` measured ones; GPU peaks are reset between the two."""
    devices = gpu_devices()
    reset_gpu_peaks(devices)
    first_step_s, _ = session.timed_step()
    for _ in range(warmup - 1):
        session.timed_step()
    warmup_peaks = gpu_peaks_mib(devices)
    reset_gpu_peaks(devices)
    step_times, wait_times = [], []
    start = time.perf_counter()
    for _ in range(steps):
        seconds, waited = session.timed_step()
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




# -- a measured trainer ----------------------------------------------------

class Session:
    """The trainer of a config with its batches and its compiled step, as
    ``fit`` would run it: ``timed_step()`` runs one iteration.

    ``args``: the parsed options of ``python -m misc.commands.benchmark``;
    ``config``: its run config; ``stage``: 1 or 2; ``build_gan(config,
    stage, embedding_dim, strategy, choices=...)``: the stage's trainer (the
    commands' stage registry); ``names``: what the user typed for the step
    settings (``misc.training.acceleration.choose_step``); ``strategy``
    replaces ``make_strategy`` (for tests)."""

    def __init__(self, args, config, stage, build_gan, names=None, strategy=None):
        from misc.training.acceleration import choose_step, configure_threads
        from misc.training.devices import check_batch_size, make_strategy

        configure_threads(config)
        keras.utils.set_random_seed(config.SEED)
        if strategy is None:
            strategy, choices = make_strategy(args.gpu, config, names=names)
        else:
            choices = choose_step(config)
        self.config, self.stage, self.strategy = config, stage, strategy
        check_batch_size(config.TRAIN.BATCH_SIZE, strategy)
        if args.data:
            self.split = real_split(config, stage)
        else:
            self.split = synthetic_split(args.num_images, stage, args.embedding_dim, seed=config.SEED)
        if self.split.steps_per_epoch(config.TRAIN.BATCH_SIZE) < 1:
            raise ConfigError(f"batch size {config.TRAIN.BATCH_SIZE} is larger than the "
                              f"{self.split.num_examples} images; raise --num-images or lower the batch.")
        self.gan = build_gan(config, stage, self.split.embedding_dim, strategy, choices=choices)
        self.iterator = distributed_batches(self.split, config, self.gan, strategy)
        self.gan.make_train_function()
        self.step = self.gan.distributed_step
        self.key = self.gan.epoch_log_keys[0]

    def timed_step(self):
        """(seconds for the whole step, seconds blocked waiting for the batch)."""
        return timed_step(self.step, self.iterator, self.key)


def run(args, session):
    """The benchmark of the options ``args`` on ``session``; returns the
    figures (also printed, and written with --json)."""
    config, strategy, gan = session.config, session.strategy, session.gan
    result = {
        "status": "ok",
        "machine": machine_info(),
        "config": config_info(config, args, session.stage, strategy, gan, session.split.embedding_dim),
        "data": data_info(session.split, synthetic=not args.data),
    }
    try:
        raw = measure(session, args.steps, args.warmup)
    except Exception as exc:  # any exception: XLA can fail in many ways
        if not gan.jit_compile:
            raise
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result["status"] = "jit_failed"
        result["error"] = (f"the step does not compile with XLA (--xla off trains without): "
                           f"{type(exc).__name__}: {first_line}")
    else:
        result["results"] = summarize(raw, config.TRAIN.BATCH_SIZE, args.warmup)
    print(format_report(result))
    if args.json_out:
        write_text(json.dumps(result, indent=2) + "\n", args.json_out)
    return result

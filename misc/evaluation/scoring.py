"""Inception Score and FID of a StackGAN model or of a folder of pictures,
as ``python -m misc.commands.evaluate`` computes them (its docstring says
how the samples are drawn and scored, the authors' way)."""

import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from misc.config import OUTPUT_ROOT, CheckpointError, ConfigError, parse_gpu_ids
from misc.data.atomic import check_not_input, check_writable, write_text
from misc.data.datasets import dataset_dir
from misc.data.formats import HR_LR_RATIO, LR_IMAGE_SIZE
from misc.data.shapes import load_run_dataset
from misc.evaluation.defaults import JSON_SUFFIX, MAX_SAMPLES, OUTPUT_FOLDER
from misc.evaluation.fid import FidGraph, cached_statistics, frechet_distance, statistics
from misc.evaluation.inception import (
    InceptionCheckpoint,
    InceptionScorer,
    authors_selection,
    check_image,
    inception_score,
    list_images,
    read_image,
    to_uint8_truncated,
)
from misc.evaluation.sampling import Sampler, draw_noise, load_generator, resolve_checkpoint_path
from misc.training.checkpoints import check_embedding_dim, checkpoint_files, describe_checkpoint


def check_count(count, args, what):
    """The authors score whole batches only, then cut them into splits."""
    used = count // args.batch_size * args.batch_size
    if used < args.splits:
        raise ConfigError(
            f"{what}: {count} pictures give {used} in whole batches of {args.batch_size}, fewer than "
            f"the {args.splits} splits; give more pictures or a smaller --batch-size / --splits.")


def select_gpu(gpu):
    gpus = tf.config.list_physical_devices("GPU")
    if gpu is None or not gpus:
        return
    index = parse_gpu_ids(gpu)[0]
    if index >= len(gpus):
        print(f"warning: GPU {index} not available ({len(gpus)} visible); using GPU 0.")
        index = 0
    tf.config.set_visible_devices([gpus[index]], "GPU")


# -- what is scored ---------------------------------------------------------------

class ModelSamples:
    """Samples of a generator for the test captions, in batches of uint8 pictures."""

    def __init__(self, config, info, stage, test, num_samples, seed):
        self.info = info
        self.stage = stage
        self.test = test
        check_embedding_dim(info, test.embedding_dim, os.path.join(dataset_dir(config), "test"))
        self.model, self.report, _ = load_generator(config, info.path, info)
        self.sampler = Sampler(self.model)
        self.captions = test.captions_per_image
        self.count = num_samples or test.num_examples * self.captions
        if self.count > MAX_SAMPLES:
            raise ConfigError(f"the {test.num_examples:,} test images x {self.captions} captions give "
                              f"{self.count:,} samples, more than the {MAX_SAMPLES:,} scored at once; "
                              "give --num-samples.")
        self.resolution = scored_size(config, stage)
        rng = np.random.default_rng(seed)
        self.noise = draw_noise(rng, self.count, self.model.z_dim, self.model.ef_dim)

    def describe(self):
        n, c = self.test.num_examples, self.captions
        layout = f"{n:,} test images x {c} caption{'s' if c > 1 else ''}"
        if self.count != n * c:
            layout = f"{self.count:,} of the {n * c:,} captions" if self.count < n * c else \
                f"{layout}, {self.count / (n * c):.3g} samples each"
        stage = "Stage-II" if self.stage == 2 else "Stage-I"
        return f"{self.count:,} {stage} samples ({layout}), {self.resolution}x{self.resolution}"

    def embeddings(self, rows):
        n = self.test.num_examples
        image, caption = rows % n, (rows // n) % self.captions
        emb = self.test.embeddings
        return emb[image, caption] if emb.ndim == 3 else emb[image]

    def batches(self, batch_size):
        for start in range(0, self.count, batch_size):
            rows = np.arange(start, min(start + batch_size, self.count))
            lr, hr = self.sampler(self.embeddings(rows), self.noise["eps"][rows], self.noise["z"][rows],
                                  self.noise["hr_eps"][rows] if self.model.stage == 2 else None)
            yield list(to_uint8_truncated(hr if self.stage == 2 else lr))


class FolderPictures:
    """The pictures of a folder, read as the authors' script reads them."""

    def __init__(self, folder):
        self.folder = folder
        self.paths = list_images(folder)
        if len(self.paths) > MAX_SAMPLES:
            raise ConfigError(f"--images {folder}: {len(self.paths):,} pictures; at most {MAX_SAMPLES:,} "
                              "are scored at once (split the folder).")
        for path in self.paths:  # every picture first, so a bad file stops the run at once
            check_image(path)
        self.count = len(self.paths)

    def describe(self):
        return f"{self.count:,} pictures of {self.folder}"

    def batches(self, batch_size):
        for start in range(0, self.count, batch_size):
            yield [read_image(p) for p in self.paths[start:start + batch_size]]


def fid_features(graph, pictures):
    """pool_3 features of pictures of any sizes (grayscale as three equal
    channels): same-size runs go through the graph together."""
    rgb = [np.repeat(p[..., None], 3, axis=2) if p.ndim == 2 else p for p in pictures]
    out, start = [], 0
    while start < len(rgb):
        end = start + 1
        while end < len(rgb) and rgb[end].shape == rgb[start].shape:
            end += 1
        out.append(graph.features(np.stack(rgb[start:end])))
        start = end
    return np.concatenate(out)


# -- the command --------------------------------------------------------------------

def default_json_path(args, source):
    """--json, or outputs/evaluation/<name>_evaluation.json: <name> the
    picture folder's name, or the checkpoint's folder and name."""
    if args.json_out:
        return args.json_out
    if args.images:
        name = os.path.basename(os.path.abspath(args.images))
    else:
        path = os.path.abspath(source.info.path)
        name = f"{os.path.basename(os.path.dirname(path))}_{os.path.basename(path).removesuffix('.ckpt')}"
    return os.path.join(OUTPUT_ROOT, OUTPUT_FOLDER, name + JSON_SUFFIX)


def scored_size(config, stage):
    return int(config.TEST.LR_IMSIZE) * (HR_LR_RATIO if stage == 2 else 1)


def load_test_split(config, size):
    """The test split with its pictures stored for ``size`` crops (76 for 64,
    304 for 256)."""
    return load_run_dataset(config, hr_lr_ratio=size // LR_IMAGE_SIZE, splits=("test",)).test


def real_statistics(config, test, args, graph, size):
    crops = test.center_crops(np.arange(test.num_examples))
    path = os.path.join(dataset_dir(config), "test", f"fid_statistics_{size}.npz")
    bar = keras.utils.Progbar(len(crops), unit_name="image")
    done = [0]

    def progress(n):
        done[0] += n
        bar.update(done[0])

    print(f"FID statistics of the {len(crops):,} test images ({size}x{size} centre crops), cached in "
          f"{path}")
    mu, sigma, cached = cached_statistics(path, crops, graph, args.batch_size, progress)
    if cached:
        print("  (read from the cache)")
    return mu, sigma, len(crops)


def open_source(args, config, graph):
    """(what is scored, the test split for FID or None, FID crop size)."""
    if args.images:
        source = FolderPictures(args.images)
        real_size = args.real_size or LR_IMAGE_SIZE * HR_LR_RATIO
        return source, (load_test_split(config, real_size) if graph else None), real_size
    checkpoint = args.checkpoint or config.TEST.PRETRAINED_MODEL
    if not checkpoint:
        raise CheckpointError("no checkpoint: give --checkpoint (ours or the authors' .ckpt) or "
                              "--images DIR.")
    option = "--checkpoint" if args.checkpoint else f"TEST.PRETRAINED_MODEL of {args.cfg_file}"
    info = describe_checkpoint(resolve_checkpoint_path(checkpoint), option)
    stage = args.stage or info.stage
    if stage > info.stage:
        raise CheckpointError(f"{info.path}: a Stage-I checkpoint has no Stage-II pictures; leave "
                              "out --stage 2.")
    real_size = args.real_size or scored_size(config, stage)
    test = load_test_split(config, real_size if graph else LR_IMAGE_SIZE)
    source = ModelSamples(config, info, stage, test, args.num_samples, args.seed)
    print(source.report.summary())
    return source, test if graph else None, real_size


def evaluate(args, config):
    """The evaluation the command's options ``args`` ask for (checked by
    ``misc.commands.evaluate.check_arguments``; ``config``: --cfg's, or
    None): every input is read and checked before the work; returns the
    result (also printed and written as JSON)."""
    select_gpu(args.gpu)
    inception = InceptionCheckpoint(args.inception)  # every input is checked before the work
    graph = FidGraph(args.fid_weights) if args.fid_weights else None
    source, test, real_size = open_source(args, config, graph)
    check_count(source.count, args, source.describe())
    json_path = default_json_path(args, source)
    option = "--json" if args.json_out else "the result file"
    check_writable(json_path, option)
    inputs = [args.cfg_file, args.fid_weights] + checkpoint_files(args.inception)
    if not args.images:
        inputs += checkpoint_files(source.info.path)
    check_not_input(json_path, inputs, option)
    scorer = InceptionScorer(inception)
    print(scorer.report.summary())
    real = real_statistics(config, test, args, graph, real_size) if graph else None

    print(f"Scoring {source.describe()}")
    started = time.time()
    bar = keras.utils.Progbar(source.count, unit_name="image")
    probabilities = np.empty((source.count, scorer.num_classes), np.float64)
    features = np.empty((source.count, graph.dimension), np.float32) if graph else None
    done = 0
    for pictures in source.batches(args.batch_size):
        probabilities[done:done + len(pictures)] = scorer.probabilities(pictures)
        if graph:
            features[done:done + len(pictures)] = fid_features(graph, pictures)
        done += len(pictures)
        bar.update(done)
    seconds = time.time() - started

    chosen = authors_selection(source.count, args.batch_size, args.seed)
    broken = int(np.sum(~np.isfinite(probabilities[chosen]).all(axis=1)))
    if broken:
        print(f"warning: the evaluation model gave non-finite probabilities for {broken} pictures "
              "(its activations overflow); their splits score NaN, as in the authors' script.")
    mean, std, per_split = inception_score(probabilities[chosen], args.splits)
    result = {
        "source": args.images or source.info.path,
        "dataset": config.DATASET_NAME if config else None,
        "inception_model": args.inception,
        "inception_classes": scorer.num_classes,
        "pictures": source.count,
        "scored": len(chosen),
        "batch_size": args.batch_size,
        "splits": args.splits,
        "seed": args.seed,
        "inception_score": {"mean": mean, "std": std, "splits": per_split},
        "fid": None,
        "seconds": round(seconds, 1),
    }
    if not args.images:
        result.update({"stage": source.stage, "iteration": source.info.counter,
                       "checkpoint_stage": source.info.stage, "resolution": source.resolution,
                       "test_images": source.test.num_examples,
                       "captions_per_image": source.captions})
    if graph:
        mu_r, sigma_r, real_count = real
        mu_g, sigma_g = statistics(features)
        result["fid"] = frechet_distance(mu_g, sigma_g, mu_r, sigma_r)
        result.update({"fid_weights": args.fid_weights, "fid_real_images": real_count,
                       "fid_real_size": real_size})
    print(format_table(result, source.describe()))
    write_text(json.dumps(result, indent=2) + "\n", json_path)
    print(f"Written to {json_path}")
    return result


def format_table(result, described):
    rows = [("pictures", described),
            ("scored", f"{result['scored']:,} (whole batches of {result['batch_size']}, "
                       f"{result['splits']} splits, seed {result['seed']})"),
            ("Inception Score", f"{result['inception_score']['mean']:.2f} ± "
                                f"{result['inception_score']['std']:.2f}  "
                                f"({result['inception_classes']}-class evaluation model "
                                f"{result['inception_model']})")]
    if result["fid"] is not None:
        rows.append(("FID", f"{result['fid']:.2f}  (against {result['fid_real_images']:,} test images, "
                            f"{result['fid_real_size']}x{result['fid_real_size']} centre crops)"))
    per_thousand = 1000 * result["seconds"] / max(result["pictures"], 1)
    rows.append(("time", f"{result['seconds']:.0f} s ({per_thousand:.0f} s per 1,000 pictures)"))
    width = max(len(k) for k, _ in rows)
    title = f"Evaluation of {result['source']}"
    if result.get("iteration") is not None:
        title += f" (iteration {result['iteration']})"
    return "\n".join([title] + [f"  {k:<{width}}  {v}" for k, v in rows])

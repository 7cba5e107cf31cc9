"""Caption consistency of a model trained on the bundled "shapes" dataset.

    python -m misc.commands.evaluate_shapes --cfg stageI/cfg/shapes.yml --checkpoint CKPT
        [--num 200] [--copies 2] [--seed 0] [--json OUT]

For the first caption of each of the first ``--num`` test images, the model
draws ``--copies`` samples (random z and eps, inference batch norm).  Every
sample is measured by exact colour measurement against the generator's
palette (``misc.evaluation.shapes_attributes``: background = border colour, object =
pixels far from it, its colour, area and outline) and compared with what the
caption says: object colour and shape (every caption names them),
background colour and size (scored only for captions that name them).  The
same measurement of the real test images (centre crops at the model's
resolution) must be near 100%; uniform noise shows the measurement's own
chance level; "chance" is uniform guessing among the values the dataset's
recipe draws from (``misc.data.shapes.RECIPES``; DATASET_NAME names it).

The last column is the mean edge width: the width of the 10-90% transition
from background to object colour along the object's outline, in pixels of a
256 px picture (``misc.evaluation.shapes_attributes.edge_width``): about 1
for the real 256 px pictures, four times their 64 px crops' width for
those.  A Stage-II model is measured at both resolutions, with the real
pictures at both.
"""

import json

import numpy as np

from misc.commands.common import ArgumentParser, check_range, run_main
from misc.config import MAX_SEED, ConfigError, load_config
from misc.data.atomic import check_not_input, check_writable, write_text
from misc.data.formats import HR_LR_RATIO, MAX_COPIES
from misc.data.images import to_uint8
from misc.data.shapes import RECIPES, load_run_dataset
from misc.evaluation.shapes_attributes import SCORED_ATTRIBUTES, caption_attributes, chance_levels, measure


def consistency(measured, stated):
    """Per attribute: (fraction of images showing what their caption states,
    number of captions stating it)."""
    scores = {}
    for attribute in SCORED_ATTRIBUTES:
        pairs = [(m.get(attribute), s[attribute]) for m, s in zip(measured, stated) if attribute in s]
        scores[attribute] = (sum(a == b for a, b in pairs) / len(pairs) if pairs else None, len(pairs))
    return scores


def sample_images(model, embeddings, copies, seed, batch_size=64):
    """(Stage-I images, Stage-II images or None), each (N * copies, ...)
    uint8, copy-major per caption."""
    from misc.evaluation.sampling import Sampler, draw_noise

    count = len(embeddings) * copies
    noise = draw_noise(np.random.default_rng(seed), count, model.z_dim, model.ef_dim)
    sampler = Sampler(model)
    lr_all, hr_all = [], []
    for _, lr, hr in sampler.generate(embeddings, copies, batch_size, noise):
        lr_all.append(lr.reshape((-1,) + lr.shape[2:]))
        if hr is not None:
            hr_all.append(hr.reshape((-1,) + hr.shape[2:]))
    return to_uint8(np.concatenate(lr_all)), (to_uint8(np.concatenate(hr_all)) if hr_all else None)


def mean_edge_width(measured):
    """Mean ``edge_width`` of the pictures in which an object was found (None if none)."""
    widths = [m["edge_width"] for m in measured if m["edge_width"] is not None]
    return float(np.mean(widths)) if widths else None


def recipe_of_config(config):
    """The recipe of the bundled dataset ``config`` names; one-line ConfigError for another."""
    if config.DATASET_NAME not in RECIPES:
        raise ConfigError(f"DATASET_NAME is '{config.DATASET_NAME}'; the shapes evaluator measures "
                          f"the bundled datasets only ({', '.join(RECIPES)}): pass their config.")
    return RECIPES[config.DATASET_NAME]


def evaluate(config, checkpoint, num=200, copies=2, seed=0):
    from misc.evaluation.sampling import load_generator

    recipe = recipe_of_config(config)
    model, report, info = load_generator(config, checkpoint)
    test = load_run_dataset(config, hr_lr_ratio=1, splits=("test",)).test
    ids = np.arange(min(num, test.num_examples))
    captions = [test.captions(i)[0] for i in ids]
    stated = [caption_attributes(c) for c in captions]
    embeddings = test.embeddings[ids, 0] if test.embeddings.ndim == 3 else test.embeddings[ids]
    lr, hr = sample_images(model, embeddings.astype(np.float32), copies, seed)
    per_sample = [s for s in stated for _ in range(copies)]
    noise = np.random.default_rng(seed).integers(0, 256, lr.shape, dtype=np.uint8)
    pictures = {"Stage-I samples": (lr, per_sample)}
    if hr is not None:
        pictures["Stage-II samples"] = (hr, per_sample)
    pictures["real test images"] = (test.center_crops(ids), stated)
    if hr is not None:
        hr_test = load_run_dataset(config, hr_lr_ratio=HR_LR_RATIO, splits=("test",)).test
        pictures["real test images 256 px"] = (hr_test.center_crops(ids), stated)
    pictures["uniform noise"] = (noise, per_sample)
    rows, edges = {}, {}
    for name, (images, truth) in pictures.items():
        measured = measure(images, recipe)
        rows[name] = consistency(measured, truth)
        edges[name] = mean_edge_width(measured)
    return {"checkpoint": info.path, "stage": info.stage, "iteration": info.counter,
            "captions": len(ids), "copies": copies, "scores": rows, "edge_width": edges,
            "chance": chance_levels(recipe=recipe)}


def format_table(result):
    attributes = list(SCORED_ATTRIBUTES)
    width = max(18, *(len(name) + 1 for name in result["scores"]))
    header = f"{'':{width}s}" + "".join(f"{a:>12s}" for a in attributes) + f"{'edge width':>12s}"
    counts = next(iter(result["scores"].values()))
    lines = [f"Caption consistency of {result['checkpoint']} (iteration {result['iteration']}): "
             f"first caption of {result['captions']} test images, {result['copies']} samples each; "
             "edge width in pixels of a 256 px picture",
             header,
             f"{'captions stating':{width}s}" + "".join(f"{counts[a][1]:>12d}" for a in attributes)]
    for name, scores in result["scores"].items():
        edge = result["edge_width"][name]
        lines.append(f"{name:{width}s}" + "".join(
            f"{'-' if scores[a][0] is None else f'{100 * scores[a][0]:.1f}%':>12s}" for a in attributes)
            + f"{'-' if edge is None else f'{edge:.2f}':>12s}")
    lines.append(f"{'chance':{width}s}" + "".join(f"{100 * result['chance'][a]:>11.1f}%" for a in attributes))
    return "\n".join(lines)


MAX_CAPTIONS = 100_000  # --num: test captions at most


def parse_args(argv=None):
    parser = ArgumentParser(description="Caption consistency on the shapes dataset")
    parser.add_argument("--cfg", dest="cfg_file", required=True, help="the config the model was trained with")
    parser.add_argument("--checkpoint", required=True, help="checkpoint prefix or run directory")
    parser.add_argument("--num", type=int, default=200, help="test captions (default 200)")
    parser.add_argument("--copies", type=int, default=2, help="samples per caption (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_out", default=None)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_range("--num", args.num, 1, MAX_CAPTIONS, "test captions")
    check_range("--copies", args.copies, 1, MAX_COPIES, "samples per caption")
    check_range("--seed", args.seed, 0, MAX_SEED, "it seeds the noise")
    if args.json_out:
        check_writable(args.json_out, "--json")
    config = load_config(args.cfg_file)
    recipe_of_config(config)
    from misc.commands.startup import start_tensorflow

    start_tensorflow()
    from misc.training.checkpoints import checkpoint_files, describe_checkpoint

    info = describe_checkpoint(args.checkpoint, "--checkpoint")  # a bad one is named as the user gave it
    if args.json_out:
        check_not_input(args.json_out, [args.cfg_file] + checkpoint_files(info.path), "--json")
    result = evaluate(config, args.checkpoint, args.num, args.copies, args.seed)
    print(format_table(result))
    if args.json_out:
        write_text(json.dumps(result, indent=2) + "\n", args.json_out)
    return result


def cli(argv=None):
    run_main(main, argv)


if __name__ == "__main__":
    cli()

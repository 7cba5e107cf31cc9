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
chance level.
"""

import json
import re

import numpy as np

from misc.commands.common import ArgumentParser, check_range, run_main
from misc.config import MAX_SEED, load_config
from misc.data.atomic import check_not_input, check_writable, write_text
from misc.data.formats import MAX_COPIES
from misc.data.images import to_uint8
from misc.data.shapes import BACKGROUNDS, COLORS, SHAPES, SIZE_WORDS, load_run_dataset
from misc.evaluation.shapes_attributes import SCORED_ATTRIBUTES, chance_levels, measure

_VOCABULARY = {
    "shape": {w: w for w in SHAPES},
    "color": {w: w for w in COLORS},
    "background": {w: w for w in BACKGROUNDS},
    "size": {word: size for size, words in SIZE_WORDS.items() for word in words},
}
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)?")


def caption_attributes(caption):
    """{attribute: value} for the attributes ``caption`` names."""
    words = _WORD.findall(caption.lower())
    found = {}
    for attribute, vocabulary in _VOCABULARY.items():
        values = {vocabulary[w] for w in words if w in vocabulary}
        if len(values) == 1:
            found[attribute] = values.pop()
    return found


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


def evaluate(config, checkpoint, num=200, copies=2, seed=0):
    from misc.evaluation.sampling import load_generator

    model, report, info = load_generator(config, checkpoint)
    ratio = 4 if info.stage == 2 else 1
    test = load_run_dataset(config, hr_lr_ratio=ratio, splits=("test",)).test
    ids = np.arange(min(num, test.num_examples))
    captions = [test.captions(i)[0] for i in ids]
    stated = [caption_attributes(c) for c in captions]
    embeddings = test.embeddings[ids, 0] if test.embeddings.ndim == 3 else test.embeddings[ids]
    lr, hr = sample_images(model, embeddings.astype(np.float32), copies, seed)
    per_sample = [s for s in stated for _ in range(copies)]
    rows = {"Stage-I samples": consistency(measure(lr), per_sample)}
    if hr is not None:
        rows["Stage-II samples"] = consistency(measure(hr), per_sample)
    rows["real test images"] = consistency(measure(test.center_crops(ids)), stated)
    noise = np.random.default_rng(seed).integers(0, 256, lr.shape, dtype=np.uint8)
    rows["uniform noise"] = consistency(measure(noise), per_sample)
    return {"checkpoint": info.path, "stage": info.stage, "iteration": info.counter,
            "captions": len(ids), "copies": copies, "scores": rows, "chance": chance_levels()}


def format_table(result):
    attributes = list(SCORED_ATTRIBUTES)
    header = f"{'':18s}" + "".join(f"{a:>12s}" for a in attributes)
    counts = next(iter(result["scores"].values()))
    lines = [f"Caption consistency of {result['checkpoint']} (iteration {result['iteration']}): "
             f"first caption of {result['captions']} test images, {result['copies']} samples each",
             header,
             f"{'captions stating':18s}" + "".join(f"{counts[a][1]:>12d}" for a in attributes)]
    for name, scores in result["scores"].items():
        lines.append(f"{name:18s}" + "".join(
            f"{'-' if scores[a][0] is None else f'{100 * scores[a][0]:.1f}%':>12s}" for a in attributes))
    lines.append(f"{'chance':18s}" + "".join(f"{100 * result['chance'][a]:>11.1f}%" for a in attributes))
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

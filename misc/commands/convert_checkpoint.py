"""Convert a reference StackGAN checkpoint into this project's formats.

    python -m misc.commands.convert_checkpoint models/birds_model_164000.ckpt models/birds_164000 \\
        [--cfg demo/cfg/birds-demo.yml] [--no-optimizer-state]

REF is a checkpoint written by the original TF 0.11/0.12 code (V1 ``.ckpt``
file or V2 prefix; Stage-I or Stage-II, found from its variables).  OUT_DIR
receives:

  * ``model-<N>.index`` / ``.data-*`` and a ``checkpoint`` state file: our
    native training checkpoint (networks, batch-norm statistics, Adam state,
    counters), loadable as TRAIN.PRETRAINED_MODEL or TEST.PRETRAINED_MODEL
    (OUT_DIR itself or the ``model-<N>`` prefix);
  * ``generator.weights.h5``: Keras weights of the text-to-image generator
    (Stage-I ``g_net`` and, for Stage-II, ``hr_g_net``), for use without our
    trainers::

        from misc.config import load_config
        from misc.evaluation.sampling import StackGANGenerator
        model = StackGANGenerator.for_config(load_config("demo/cfg/birds-demo.yml"),
                                             embedding_dim=1024, stage=2)
        model.load_weights("models/birds_164000/generator.weights.h5")
        out = model(embeddings, eps, z, hr_eps)   # any of the noise may be None
        out["fake_images"], out["hr_fake_images"]  # [-1, 1], 64x64 and 256x256

  * ``conversion.json``: what was converted (stage, embedding size, config
    dimensions, iteration) -- the arguments ``for_config`` needs.

The model dimensions come from --cfg (default: the reference defaults, which
the published models use); the text-embedding size from the checkpoint.
Given a checkpoint of this project instead, only the Keras weights file and
``conversion.json`` are written.

OUT_DIR must not exist or be an empty folder, and must not be the
checkpoint or hold it (IN = OUT is refused, also through links and relative
paths).  Everything is written into a temporary folder beside OUT_DIR that
becomes OUT_DIR when complete: OUT_DIR appears complete or not at all
(Ctrl-C or a failed write removes the temporary folder; one left by a
killed run is removed by the next conversion to the same OUT_DIR).  The
checkpoint and OUT_DIR are checked before anything is written.
"""

import json
import os

from misc.commands.common import ArgumentParser, run_main
from misc.config import load_config
from misc.data.atomic import WriteError, atomic_folder, check_folder_writable, write_text

WEIGHTS_FILE = "generator.weights.h5"
INFO_FILE = "conversion.json"
CHECKPOINT_ARGUMENT = "the CHECKPOINT argument"


def parse_args(argv=None):
    parser = ArgumentParser(
        description="Convert a reference StackGAN checkpoint to a native checkpoint and Keras weights.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="reference checkpoint (.ckpt file or V2 prefix), or one of ours")
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="output folder: must not exist or be empty; it appears complete or not at "
                             "all (built in a temporary folder beside it)")
    parser.add_argument("--cfg", dest="cfg_file", default=None,
                        help="YAML config with the model dimensions (default: reference defaults)")
    parser.add_argument("--no-optimizer-state", dest="optimizer_state", action="store_false",
                        help="do not import the Adam slots and step counts")
    return parser.parse_args(argv)


def _inside(path, folder):
    return os.path.commonpath([path, folder]) == folder


def check_output(given, info, out_dir):
    """OUT_DIR must be a new or empty folder that is neither the checkpoint
    (``given`` as typed, ``info.path`` resolved) nor holds it, in a folder
    the process may write in.  Writes nothing."""
    out = os.path.realpath(out_dir)
    checkpoint_paths = {os.path.realpath(p) for p in (given, info.path)}
    for path in checkpoint_paths:
        if out == path or _inside(path, out):
            raise WriteError(f"OUT_DIR {out_dir}: is the checkpoint {given} or holds it; the conversion "
                             "never writes over its input. Give another OUT_DIR.")
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise WriteError(f"OUT_DIR {out_dir}: exists and is not a folder; give a new folder.")
        if os.listdir(out):
            raise WriteError(f"OUT_DIR {out_dir}: exists and is not empty; give a new folder (or remove "
                             "this one).")
    check_folder_writable(os.path.dirname(out), f"OUT_DIR {out_dir}")


def convert(config, checkpoint, out_dir, optimizer_state=True, log=print):
    """Write the conversions of ``checkpoint`` into the new folder
    ``out_dir`` (see the module docstring); returns {'native': prefix or
    None, 'weights': path, 'info': dict}."""
    from misc.training.checkpoints import describe_checkpoint

    info = describe_checkpoint(checkpoint, CHECKPOINT_ARGUMENT)
    check_output(checkpoint, info, out_dir)
    with atomic_folder(out_dir) as building:
        native, details = _write(config, info, building, optimizer_state, log)
    weights = os.path.join(out_dir, WEIGHTS_FILE)
    if native:
        log(f"Native checkpoint written: {os.path.join(out_dir, native)}")
    log(f"Keras generator weights written: {weights}")
    log(f"What was converted: {os.path.join(out_dir, INFO_FILE)}")
    return {"native": native and os.path.join(out_dir, native), "weights": weights, "info": details}


def _write(config, info, folder, optimizer_state, log):
    """The conversion's files in ``folder``; returns (native checkpoint
    name or None, conversion details)."""
    from misc.evaluation.sampling import StackGANGenerator, load_generator
    from misc.training.checkpoints import Snapshotter

    native = None
    if info.kind == "reference":
        gan, report, info = load_reference_trainer(config, info.path, optimizer_state)
        log(report.summary())
        native = os.path.basename(Snapshotter(gan, folder, max_to_keep=None).save())
        model = StackGANGenerator(gan.generator, getattr(gan, "hr_generator", None))
        model.build_variables(info.embedding_dim)
    else:
        model, report, info = load_generator(config, info.path, info)
        log(report.summary())
        log(f"{info.path} is already a checkpoint of this project; writing the Keras weights only.")
    model.save_weights(os.path.join(folder, WEIGHTS_FILE))
    details = {
        "source": os.path.abspath(info.path),
        "source_kind": info.kind,
        "stage": info.stage,
        "embedding_dim": info.embedding_dim,
        "iteration": info.counter,
        "Z_DIM": config.Z_DIM,
        "GAN": {"EMBEDDING_DIM": config.GAN.EMBEDDING_DIM, "GF_DIM": config.GAN.GF_DIM,
                "DF_DIM": config.GAN.DF_DIM, "NETWORK_TYPE": info.network_type},
        "TEST": {"LR_IMSIZE": config.TEST.LR_IMSIZE, "HR_IMSIZE": config.TEST.HR_IMSIZE},
        "native_checkpoint": native,
        "keras_weights": WEIGHTS_FILE,
        "keras_loading": "StackGANGenerator.for_config(config, embedding_dim, stage)"
                         ".load_weights(keras_weights)",
    }
    write_text(json.dumps(details, indent=2) + "\n", os.path.join(folder, INFO_FILE))
    return native, details


def load_reference_trainer(config, path, optimizer_state=True):
    """A trainer of the checkpoint's stage with everything a reference
    checkpoint holds: networks, batch-norm statistics, Adam state, counters.
    Returns ``(gan, report, info)``."""
    from misc.commands.stages import build_stage_gan
    from misc.config import CheckpointError, ConfigError
    from misc.evaluation.sampling import check_network_type, image_sizes
    from misc.reference.importer import import_reference_checkpoint
    from misc.training.checkpoints import describe_checkpoint

    info = describe_checkpoint(path)
    if info.kind != "reference":
        raise CheckpointError(f"{info.path}: already a checkpoint of this project, not a "
                              "reference one.")
    check_network_type(info, config)
    if info.stage == 2 and config.GAN.NETWORK_TYPE != "default":
        raise ConfigError("a Stage-II checkpoint needs GAN.NETWORK_TYPE 'default'.")
    lr_size, _ = image_sizes(config, info.stage)
    gan = build_stage_gan(config, info.stage, info.embedding_dim, lr_size=lr_size)
    report = import_reference_checkpoint(gan, info.path, optimizer_state=optimizer_state,
                                         network_type=info.network_type)
    return gan, report, info


def main(argv=None):
    args = parse_args(argv)
    config = load_config(args.cfg_file)
    from misc.commands.startup import start_tensorflow

    start_tensorflow()
    return convert(config, args.checkpoint, args.out_dir, args.optimizer_state)


def cli(argv=None):
    run_main(main, argv)


if __name__ == "__main__":
    cli()

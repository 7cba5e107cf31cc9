"""Why a Stage-I model on a bundled shapes dataset does (or does not) learn
shapes: the measurements of docs/shapes_diagnosis.md
(misc/evaluation/shapes_diagnosis.py says what each is).

    python -m misc.commands.shapes_diagnosis --dataset shapes_l3_shape [--data-dir data]
    python -m misc.commands.shapes_diagnosis --cfg stageI/cfg/ladder/l3_shape.yml [--checkpoint CKPT]

Without a checkpoint it measures the dataset of a recipe (generated under
the data folder when missing) and the caption encoder, through a freshly
initialised conditioning augmentation; with ``--checkpoint`` (a Stage-I
training snapshot or run folder of ``--cfg``) also through the trained one,
and the trained discriminator's view.
"""

from misc.commands.common import ArgumentParser, run_main
from misc.config import ConfigError, default_config, load_config


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=None, help="a bundled dataset's name (default: the config's)")
    parser.add_argument("--cfg", dest="cfg_file", default=None, help="a Stage-I config of a bundled dataset")
    parser.add_argument("--checkpoint", default=None, help="a Stage-I training snapshot of --cfg")
    parser.add_argument("--data-dir", default=None, help="where the datasets live (default: the config's)")
    return parser.parse_args(argv)


def main(argv=None):
    from misc.data.shapes import RECIPES

    args = parse_args(argv)
    config = load_config(args.cfg_file) if args.cfg_file else default_config()
    if args.dataset:
        config.DATASET_NAME = args.dataset
    if args.data_dir:
        config.DATA_DIR = args.data_dir
    if config.DATASET_NAME not in RECIPES:
        raise ConfigError(f"dataset '{config.DATASET_NAME}' is not a bundled one; give --dataset with one of "
                          f"{', '.join(RECIPES)}, or a --cfg that names one.")
    if args.checkpoint and not args.cfg_file:
        raise ConfigError("--checkpoint needs the --cfg it was trained with.")
    from misc.commands.startup import start_tensorflow

    start_tensorflow()
    report(config, args.checkpoint)


def report(config, checkpoint=None, log=print):
    """Print every measurement of the module docstring."""
    import keras

    from misc.data.datasets import dataset_dir
    from misc.data.formats import TEXT_EMBEDDING_DIM
    from misc.data.shapes import RECIPES, load_run_dataset, read_attributes
    from misc.evaluation import shapes_diagnosis as diagnosis
    from stageI.model import StageIGenerator, build_stage_i

    name = config.DATASET_NAME
    recipe = RECIPES[name]
    num_embedding = config.TRAIN.NUM_EMBEDDING
    log(f"== {name}: {recipe}")
    log("geometry (64 px crop):")
    for row in diagnosis.geometry(recipe):
        log(f"  {row['size']:>7s}: radius {row['radius_px']:.1f} px, area {row['area_px']:.0f} px "
            f"({100 * row['area_share']:.1f}% of the crop); closest shapes {'/'.join(row['closest_pair'])} "
            f"differ in {row['closest_pair_px']:.0f} px, circle/square in {row['circle_square_px']:.0f} px")
    log(f"combinations: {diagnosis.combinations(recipe)}")
    dataset = load_run_dataset(config, hr_lr_ratio=1)
    truth = {split: read_attributes(dataset_dir(config), split) for split in ("train", "test")}
    log("pipeline (training split):")
    for key, value in diagnosis.pipeline_checks(dataset.train, truth["train"], recipe, num_embedding,
                                                config.SEED).items():
        log(f"  {key}: {value}")

    keras.utils.set_random_seed(config.SEED)
    base, variants = diagnosis.attribute_variants(recipe, num_embedding)
    fresh = StageIGenerator(z_dim=config.Z_DIM, ef_dim=config.GAN.EMBEDDING_DIM, gf_dim=config.GAN.GF_DIM)
    fresh(base[:1])
    models = {"at the initialisation": fresh.ca}
    trained = None
    if checkpoint:
        from misc.evaluation.sampling import restore_native_networks
        from misc.training.checkpoints import describe_checkpoint

        info = describe_checkpoint(checkpoint, "--checkpoint")
        trained = build_stage_i(config, TEXT_EMBEDDING_DIM)
        restore_native_networks({"generator": trained[0], "discriminator": trained[1]}, info)
        models[f"trained ({info.path})"] = trained[0].ca
    log(f"caption encoder: cosine distance of training embeddings (mean of {num_embedding} captions) "
        "differing only in one attribute")
    for label, ca in models.items():
        for attribute, row in diagnosis.separation(base, variants, ca).items():
            log(f"  {attribute:>10s} {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    if trained is not None:
        view = diagnosis.discriminator_view(*trained, dataset.test, truth["test"], recipe, num_embedding)
        log("discriminator (test pictures, first 64):")
        for key, value in view.items():
            log(f"  {key}: {value}")


def cli(argv=None):
    run_main(main, argv)


if __name__ == "__main__":
    cli()

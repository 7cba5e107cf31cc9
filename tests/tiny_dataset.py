"""Tiny datasets in the exact reference format, written by the tests."""

import os

import numpy as np
import yaml

from misc.data import safe_pickle


def write_tiny_dataset(root, name="tiny", num_train=12, num_test=6, embedding_dim=24,
                       captions_per_image=10, num_classes=3, stage_ii=False, seed=0):
    """Write <root>/<name>/{train,test}/... and text_c10/; return the dataset dir."""
    rng = np.random.default_rng(seed)
    base = os.path.join(root, name)
    for split, n in (("train", num_train), ("test", num_test)):
        d = os.path.join(base, split)
        os.makedirs(d, exist_ok=True)
        class_ids = [int(i % num_classes) + 1 for i in range(n)]
        filenames = [f"class_{c}/{split}_{i:03d}" for i, c in enumerate(class_ids)]
        colours = rng.integers(0, 256, size=(num_classes + 1, 3))
        sizes = (76, 304) if stage_ii else (76,)
        for size in sizes:
            images = []
            for c in class_ids:
                img = np.empty((size, size, 3), np.uint8)
                img[:] = colours[c]
                img += rng.integers(0, 20, size=img.shape, dtype=np.uint8)
                images.append(img)
            safe_pickle.dump(images, os.path.join(d, f"{size}images.pickle"))
        emb = rng.normal(size=(n, captions_per_image, embedding_dim)).astype(np.float32)
        safe_pickle.dump(emb, os.path.join(d, "char-CNN-RNN-embeddings.pickle"))
        safe_pickle.dump(filenames, os.path.join(d, "filenames.pickle"))
        safe_pickle.dump(class_ids, os.path.join(d, "class_info.pickle"))
        for f in filenames:
            path = os.path.join(base, "text_c10", f + ".txt")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as fh:
                fh.write("\n".join(f"caption {k} of {f}" for k in range(captions_per_image)) + "\n")
    return base


def tiny_train_config(**overrides):
    """A small config tree (as a dict) for end-to-end runs on a tiny dataset."""
    cfg = {
        "CONFIG_NAME": "stageI", "DATASET_NAME": "tiny", "Z_DIM": 8,
        "TRAIN": {"FLAG": True, "BATCH_SIZE": 4, "NUM_COPY": 2, "MAX_EPOCH": 2,
                  "SNAPSHOT_INTERVAL": 3, "NUM_EMBEDDING": 4, "LR_DECAY_EPOCH": 1},
        "GAN": {"EMBEDDING_DIM": 8, "DF_DIM": 4, "GF_DIM": 8},
    }
    for key, value in overrides.items():
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return cfg


def write_config(path, cfg):
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def stage_i_main(argv=None):
    """What ``python stageI/run_exp.py`` runs, in this process."""
    from misc.commands.train import main

    return main(argv, stage=1)


def stage_ii_main(argv=None):
    """What ``python stageII/run_exp.py`` runs, in this process."""
    from misc.commands.train import main

    return main(argv, stage=2)

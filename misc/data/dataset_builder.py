"""A StackGAN dataset from a folder of captioned pictures (``data/build_dataset.py``),
and back (``export_folder``, ``python -m misc.commands.export_folder``).

Input: a folder of pictures (``PICTURE_SUFFIXES``, at any depth; hidden files
and folders are skipped), each with a caption file of the same name ending in
``.txt`` (beside it, or at the same relative path under ``captions_dir``):
one caption per line, as CUB's and Oxford-102's ``text_c10``.  The class of a
picture is the sub-folder of the images folder it lies in, or its line in a
``labels`` file: its path relative to the images folder, a tab, its class.

Output, in the layout of ``misc/data/datasets.py`` (docs/training.md)::

    <out>/train/ and test/   76images.pickle, 304images.pickle (the pictures as
                             misc/data/preprocessing.py prepares CUB and Oxford-102 ones:
                             byte-scaled, bicubic to 304 px, then to 76 px),
                             filenames.pickle (each picture's path without its
                             extension), class_info.pickle (class ids from 1, in
                             the order of the class names)
    <out>/text_c10/<filename>.txt   the captions, one per line
    <out>/classes.txt        class id, a tab, class name
    <out>/stageI.yml, stageII.yml   the reference birds configs for this dataset
    <out>/text_encoder.yml   the text encoder's config for it (misc/commands/train_text_encoder.py)

The split is drawn from ``seed``: whole classes (``split="classes"``, the
default: the test classes are new to the text encoder and the GAN, as CUB's
and Oxford-102's) or pictures of every class (``split="images"``), a
``test_fraction`` of them (at least one).  Pictures are listed in the order
of their file names.

Everything is checked before anything is written: a picture without captions
or a caption file without a picture, a picture that cannot be read or is
beyond Pillow's decompression-bomb limit, captions that are empty or longer
than the encoder reads (201 bytes) or not UTF-8, names StackGAN's loader
would misread, classes with too few pictures for the split.  Each is a
one-line ``DatasetError`` naming the file.  The dataset is built in a
temporary folder beside ``out`` and renamed into place when complete: an
interrupted build leaves nothing half-written (a build killed outright
leaves its temporary folder, which the next build removes), and the same
input and seed give the same bytes.  An existing dataset is replaced only
with ``force``.  SIGINT and SIGTERM stop the build (exit 130 and 143) with
nothing written.
"""

import contextlib
import os
import shutil
import signal
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import yaml
from PIL import Image

from misc.config import ConfigError, DatasetError, read_yaml, text_encoder_config
from misc.data import safe_pickle
from misc.data.atomic import exclusive_lock, write_text
from misc.data.datasets import Split, file_names, path_problem
from misc.data.formats import HR_LOAD_SIZE, HR_LR_RATIO, LR_LOAD_SIZE, SEQUENCE_LENGTH, SPLITS, image_filename
from misc.data.images import save_image
from misc.data.preprocessing import load_rgb, make_low_resolution, prepare_image

PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CAPTION_SUFFIX = ".txt"
SPLIT_MODES = ("classes", "images")
DEFAULT_TEST_FRACTION = 0.2
GAN_BATCH_SIZE = 64  # the reference configs'
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GAN_TEMPLATES = {"stageI": os.path.join(REPOSITORY, "stageI", "cfg", "birds.yml"),
                 "stageII": os.path.join(REPOSITORY, "stageII", "cfg", "birds.yml")}
FLOWERS_MARKER = "jpg/"  # misc.data.datasets.caption_file reads such names as Oxford-102's
MAX_WORKERS = 8
PICTURE_FIX = "Replace or remove it (and its captions)."


@dataclass
class Picture:
    path: str  # the picture file
    key: str  # its path relative to the images folder, without extension ('/'-separated)
    label: str  # its class name
    caption_path: str
    captions: list = None  # bytes, one per caption


class BuildInterrupted(BaseException):
    """SIGINT or SIGTERM during a build."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


# -- scanning -----------------------------------------------------------------------

def walk_files(root):
    """Relative paths ('/'-separated) of the files below ``root``, sorted;
    hidden files and folders skipped."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        relative = os.path.relpath(folder, root)
        for name in files:
            if not name.startswith("."):
                found.append(name if relative == "." else f"{relative.replace(os.sep, '/')}/{name}")
    return sorted(found)


def is_picture(name):
    return name.lower().endswith(PICTURE_SUFFIXES)


def read_labels(path, images_dir, pictures):
    """{relative picture path: class} from a labels file."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text; save the labels file as UTF-8.") from None
    labels = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise DatasetError(f"{path}: line {number} has no tab; write each picture's path (relative to "
                               f"{images_dir}), a tab, and its class.")
        relative, label = (part.strip() for part in line.rsplit("\t", 1))
        relative = relative.replace("\\", "/")
        if relative not in pictures:
            raise DatasetError(f"{path}: line {number}: {relative!r} is not a picture in {images_dir}; fix "
                               "the path (relative to the images folder).")
        if not label:
            raise DatasetError(f"{path}: line {number}: the class of {relative} is empty.")
        if relative in labels:
            raise DatasetError(f"{path}: line {number}: {relative} is listed twice.")
        labels[relative] = label
    unlisted = [p for p in pictures if p not in labels]
    if unlisted:
        raise DatasetError(f"{os.path.join(images_dir, unlisted[0])}: has no class in {path} "
                           f"({len(unlisted)} picture(s) have none); add a line for each.")
    return labels


def scan(images_dir, captions_dir=None, labels_path=None):
    """The pictures of the input, sorted by name, each with its class and
    caption file (captions not read yet)."""
    captions_root = captions_dir or images_dir
    files = walk_files(images_dir)
    pictures = [f for f in files if is_picture(f)]
    if not pictures:
        raise DatasetError(f"{images_dir}: no pictures in it ({', '.join(PICTURE_SUFFIXES)}).")
    if labels_path:
        labels = read_labels(labels_path, images_dir, set(pictures))
    else:
        loose = [p for p in pictures if "/" not in p]
        if loose:
            raise DatasetError(f"{os.path.join(images_dir, loose[0])}: not in a class folder; put every "
                               "picture in a sub-folder named after its class, or give --labels.")
        labels = {p: p.split("/", 1)[0] for p in pictures}
    by_key = {}
    for relative in pictures:
        key = os.path.splitext(relative)[0]
        path = os.path.join(images_dir, relative)
        if key in by_key:
            raise DatasetError(f"{path}: has the same name as {by_key[key].path} but another extension; "
                               "both would read the same caption file. Rename one.")
        problem = path_problem(key) or (f"contains '{FLOWERS_MARKER}', which StackGAN's loader reads as an "
                                        "Oxford-102 name" if FLOWERS_MARKER in key + "/" else None)
        if problem:
            raise DatasetError(f"{path}: its name {problem}; rename it.")
        by_key[key] = Picture(path, key, labels[relative], os.path.join(captions_root, key + CAPTION_SUFFIX))
    missing = [p for p in by_key.values() if not os.path.isfile(p.caption_path)]
    if missing:
        raise DatasetError(f"{missing[0].path}: has no captions: {missing[0].caption_path} is missing "
                           f"({len(missing)} picture(s) have none); write one caption per line there.")
    caption_files = [f for f in (files if captions_root == images_dir else walk_files(captions_root))
                     if f.endswith(CAPTION_SUFFIX)]
    skip = os.path.abspath(labels_path) if labels_path else None
    orphans = [f for f in caption_files if f[:-len(CAPTION_SUFFIX)] not in by_key
               and os.path.abspath(os.path.join(captions_root, f)) != skip]
    if orphans:
        raise DatasetError(f"{os.path.join(captions_root, orphans[0])}: a caption file without a picture "
                           f"({len(orphans)} such file(s)); add its picture or remove it.")
    return [by_key[k] for k in sorted(by_key)]


def read_captions(picture):
    """The captions of a picture's file (bytes, without line ends)."""
    with open(picture.caption_path, "rb") as f:
        data = f.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{picture.caption_path}: not UTF-8 text (byte {exc.start}); save it as "
                           "UTF-8.") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final line end
    captions = []
    for number, line in enumerate(lines, start=1):
        line = line[:-1] if line.endswith(b"\r") else line
        if not line.strip():
            raise DatasetError(f"{picture.caption_path}: line {number} is an empty caption; remove it or "
                               "write the caption.")
        if len(line) > SEQUENCE_LENGTH:
            raise DatasetError(f"{picture.caption_path}: line {number} is {len(line)} bytes long; the "
                               f"char-CNN-RNN encoder reads {SEQUENCE_LENGTH}: shorten it.")
        captions.append(line)
    if not captions:
        raise DatasetError(f"{picture.caption_path}: has no caption; write one per line.")
    return captions


# -- the split ------------------------------------------------------------------------

def split_pictures(pictures, classes, mode, test_fraction, seed, where):
    """{'train': [...], 'test': [...]} pictures, drawn from ``seed``;
    ``where(class)`` names the class in errors (its folder, or the labels
    file)."""
    rng = np.random.default_rng(seed)
    members = {c: [p for p in pictures if p.label == c] for c in classes}
    if mode == "classes":
        count = max(1, int(round(len(classes) * test_fraction)))
        if len(classes) - count < 2:
            raise DatasetError(f"{where(None)}: {len(classes)} classes; holding out {count} for the test "
                               "split leaves fewer than 2 to train on (the text encoder contrasts classes). "
                               "Give more classes, a smaller --test-fraction, or --split images.")
        test_classes = {classes[i] for i in rng.choice(len(classes), count, replace=False)}
        test = [p for p in pictures if p.label in test_classes]
    else:
        if len(classes) < 2:
            raise DatasetError(f"{where(None)}: one class ({classes[0]}); the text encoder contrasts "
                               "classes, give at least 2.")
        test = []
        for c in classes:
            count = max(1, int(round(len(members[c]) * test_fraction)))
            if len(members[c]) - count < 1:
                raise DatasetError(f"{where(c)}: class {c!r} has "
                                   f"{len(members[c])} picture(s), too few for --split images (at least 2: "
                                   "one to train on, one to test); add pictures or use --split classes.")
            test += [members[c][i] for i in rng.choice(len(members[c]), count, replace=False)]
    chosen = {id(p) for p in test}
    return {"train": [p for p in pictures if id(p) not in chosen],
            "test": sorted(test, key=lambda p: p.key)}


# -- pictures -------------------------------------------------------------------------

def prepare_picture(picture):
    """(304 px, 76 px) uint8 pictures, as misc/data/preprocessing.py
    prepares Oxford-102's (no crop); a picture that cannot be read is a
    one-line ``PictureError``."""
    hr = prepare_image(load_rgb(picture.path, fix=PICTURE_FIX), HR_LOAD_SIZE)
    return hr, make_low_resolution(hr, LR_LOAD_SIZE)


def prepare_pictures(pictures, log=print):
    """Every picture prepared, in order, with a progress bar; the first
    that fails is the error."""
    from keras.utils import Progbar  # TensorFlow is started by then (misc/commands/build_dataset.py)

    bar = Progbar(len(pictures), unit_name="picture")
    results = []
    with warnings.catch_warnings():  # until every thread has finished
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        pool = ThreadPoolExecutor(max_workers=min(MAX_WORKERS, os.cpu_count() or 1))
        try:
            for pair in pool.map(prepare_picture, pictures):
                results.append(pair)
                bar.add(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return results


# -- configs ---------------------------------------------------------------------------

def config_texts(out_dir, train_images, train_classes):
    """{file name: YAML text} of the configs written beside the dataset."""
    data_dir, name = os.path.split(os.path.normpath(out_dir))
    data_dir = data_dir or "."
    batch = min(GAN_BATCH_SIZE, train_images)
    texts = {}
    for stage, template in GAN_TEMPLATES.items():
        config = read_yaml(template)
        config.update({"CONFIG_NAME": stage, "DATASET_NAME": name, "DATA_DIR": data_dir})
        config["TRAIN"]["BATCH_SIZE"] = batch
        if stage == "stageII":
            config["TRAIN"]["PRETRAINED_MODEL"] = os.path.join("ckt_logs", name)
        start = "the newest snapshot under ckt_logs/" + name if stage == "stageII" else "fresh weights"
        texts[f"{stage}.yml"] = (
            f"# {stage} on {out_dir}: the reference birds config ({os.path.relpath(template, REPOSITORY)}) "
            f"with this dataset\n# and TRAIN.BATCH_SIZE at most its {train_images} training pictures; "
            f"starts from {start}.\n" + yaml.safe_dump(config, sort_keys=False))
    defaults = text_encoder_config()
    encoder = {"DATASET_NAME": name, "DATA_DIR": data_dir,
               "TRAIN": {"BATCH_SIZE": min(defaults.TRAIN.BATCH_SIZE, train_classes)}}
    texts["text_encoder.yml"] = (
        f"# The char-CNN-RNN text encoder for {out_dir}, trained with DS-SJE "
        "(python -m misc.commands.train_text_encoder --cfg <this file>);\n"
        "# every other setting is the default of misc/config.py's text_encoder_config\n"
        "# (train_sje_hybrid.lua's, the authors' birds encoder). A batch holds distinct classes: at most the "
        f"{train_classes} training classes.\n"
        "# The image side is a small network trained from scratch; for a pretrained Keras network set\n"
        "# IMAGE: {NETWORK: InceptionV3, WEIGHTS: <its .h5 weights file>} (README, 'Your own data').\n"
        + yaml.safe_dump(encoder, sort_keys=False))
    return texts


# -- writing -----------------------------------------------------------------------------

def write_dataset(folder, splits, prepared, class_ids, classes, out_dir):
    """Write the whole dataset into ``folder``."""
    for picture in (p for members in splits.values() for p in members):
        write_text("".join(c.decode("utf-8") + "\n" for c in picture.captions),
                   os.path.join(folder, "text_c10", picture.key + CAPTION_SUFFIX))
    for split, members in splits.items():
        split_dir = os.path.join(folder, split)
        for index, ratio in ((0, HR_LR_RATIO), (1, 1)):
            safe_pickle.dump([prepared[p.key][index] for p in members],
                             os.path.join(split_dir, image_filename(ratio)))
        safe_pickle.dump([p.key for p in members], os.path.join(split_dir, "filenames.pickle"))
        safe_pickle.dump([class_ids[p.label] for p in members], os.path.join(split_dir, "class_info.pickle"))
    write_text("".join(f"{class_ids[c]}\t{c}\n" for c in classes), os.path.join(folder, "classes.txt"))
    train_classes = len({p.label for p in splits["train"]})
    for name, text in config_texts(out_dir, len(splits["train"]), train_classes).items():
        write_text(text, os.path.join(folder, name))


class Signals:
    """SIGINT and SIGTERM raise ``BuildInterrupted`` while the block runs,
    except inside ``deferred()``, after which a signal received there is
    only reported (the dataset is complete by then)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, log=print):
        self.log = log
        self.deferring = False
        self.pending = None
        self.previous = {}

    def __enter__(self):
        for signum in self.SIGNALS:
            self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum, frame):
        if self.deferring:
            self.pending = signum
        else:
            raise BuildInterrupted(signum)

    @contextlib.contextmanager
    def deferred(self):
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
            if self.pending is not None:
                self.log(f"{signal.Signals(self.pending).name} received while the dataset was being "
                         "put in place; it is complete.")


def check_arguments(images_dir, out_dir, captions_dir, labels_path, split, test_fraction, force):
    if not os.path.isdir(images_dir):
        raise ConfigError(f"--images {images_dir}: not a folder; give the folder of pictures.")
    for flag, path, check in (("--captions", captions_dir, os.path.isdir), ("--labels", labels_path,
                                                                           os.path.isfile)):
        if path and not check(path):
            raise ConfigError(f"{flag} {path}: not found.")
    if split not in SPLIT_MODES:
        raise ConfigError(f"--split {split}: use {' or '.join(SPLIT_MODES)}.")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"--test-fraction {test_fraction}: give a fraction between 0 and 1.")
    out, images = os.path.abspath(out_dir), os.path.abspath(images_dir)
    if out == images or out.startswith(images + os.sep) or images.startswith(out + os.sep):
        raise ConfigError(f"--out {out_dir}: must not be the images folder, inside it, or contain it.")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--out {out_dir}: exists and is not a folder.")
    if os.path.isdir(out_dir) and not force:
        raise ConfigError(f"--out {out_dir}: exists; give --force to replace it (its files are lost), or "
                          "another --out.")
    if not os.path.basename(os.path.normpath(out_dir)).strip(". "):
        raise ConfigError(f"--out {out_dir}: name the dataset folder, e.g. data/mydata.")


def build(images_dir, out_dir, captions_dir=None, labels_path=None, split="classes",
          test_fraction=DEFAULT_TEST_FRACTION, seed=0, force=False, log=print):
    """Build the dataset (see the module docstring); returns a summary."""
    check_arguments(images_dir, out_dir, captions_dir, labels_path, split, test_fraction, force)
    pictures = scan(images_dir, captions_dir, labels_path)
    for picture in pictures:
        picture.captions = read_captions(picture)
    classes = sorted({p.label for p in pictures})
    def where(label):
        return labels_path or (images_dir if label is None else os.path.join(images_dir, label))

    splits = split_pictures(pictures, classes, split, test_fraction, seed, where)
    capitals = sum(any(65 <= b <= 90 for b in c) for p in pictures for c in p.captions)
    if capitals:
        log(f"note: {capitals} caption(s) contain capital letters, which the char-CNN-RNN alphabet lacks "
            "(they read as blanks, as for the authors' encoders); lower-case them if they matter.")
    most = max(len(p.captions) for p in pictures)
    short = [p for p in pictures if len(p.captions) < most]
    if short:  # the embeddings are N x captions x D: every picture gets as many
        for picture in short:
            picture.captions = [picture.captions[i % len(picture.captions)] for i in range(most)]
        log(f"{len(short)} picture(s) have fewer than {most} captions (e.g. {short[0].caption_path}); their "
            f"captions are repeated in text_c10/ to make {most}, as every picture needs the same number.")
    log(f"{len(pictures)} pictures of {len(classes)} classes, {most} captions each: "
        + ", ".join(f"{s} {len(m)} pictures of {len({p.label for p in m})} classes"
                    for s, m in splits.items()))
    parent, name = os.path.split(os.path.abspath(out_dir))
    building = os.path.join(parent, f".{name}.building")
    replaced = os.path.join(parent, f".{name}.replaced")
    os.makedirs(parent, exist_ok=True)
    lock = os.path.join(parent, f".{name}.lock")
    with exclusive_lock(lock, blocking=False) as free, Signals(log) as signals:
        if not free:
            raise ConfigError(f"--out {out_dir}: another build of it is running; wait for it to finish.")
        recover(out_dir, building, replaced, log)
        try:
            log(f"Preparing {len(pictures)} pictures (304 and 76 px)")
            prepared = dict(zip((p.key for p in pictures), prepare_pictures(pictures)))
            class_ids = {c: i for i, c in enumerate(classes, start=1)}
            write_dataset(building, splits, prepared, class_ids, classes, out_dir)
            with signals.deferred():
                if os.path.isdir(out_dir):
                    os.rename(out_dir, replaced)
                os.rename(building, out_dir)
                shutil.rmtree(replaced, ignore_errors=True)
        except BuildInterrupted as stop:
            shutil.rmtree(building, ignore_errors=True)
            log(f"Stopped by {signal.Signals(stop.signum).name}; nothing was written.")
            raise SystemExit(128 + stop.signum) from None
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    log(f"Wrote {out_dir}: " + ", ".join(f"{s}/ {len(m)} pictures" for s, m in splits.items())
        + ", text_c10/, classes.txt, stageI.yml, stageII.yml, text_encoder.yml")
    return {split: [p.key for p in members] for split, members in splits.items()}


def recover(out_dir, building, replaced, log):
    """Remove what a build killed outright left (its temporary folder); put
    back a dataset a killed ``--force`` build had moved away but not replaced."""
    if os.path.isdir(building):
        shutil.rmtree(building)
        log(f"Removed {building}, left by an interrupted build.")
    if os.path.isdir(replaced):
        if os.path.isdir(out_dir):
            shutil.rmtree(replaced)
        else:
            os.rename(replaced, out_dir)
            log(f"Restored {out_dir}, which an interrupted build had moved away.")


# -- back to a folder ----------------------------------------------------------------------

def export_folder(dataset_dir, out_dir, log=print):
    """Write a dataset out as a folder of captioned pictures, the input
    ``build`` reads: every image of both splits becomes
    ``<out>/<filename>.png`` (its 304 px picture, or 76 px where the dataset
    has no 304 px pickle) beside ``<out>/<filename>.txt`` (its captions).
    The file names' folders are the classes (``<colour>_<shape>/`` for
    shapes).  Returns how many pictures."""
    if os.path.exists(out_dir):
        raise ConfigError(f"--out {out_dir}: exists; give a new folder.")
    count = 0
    for split in SPLITS:
        split_dir = os.path.join(dataset_dir, split)
        names_path = os.path.join(split_dir, "filenames.pickle")
        if not os.path.isfile(names_path):
            raise DatasetError(f"{names_path}: not found; give a dataset folder (--dataset).")
        names = file_names(safe_pickle.load(names_path), names_path)
        if any("/" not in name for name in names):
            raise DatasetError(f"{names_path}: its file names have no class folder; the builder reads "
                               "classes from folders.")
        ratio = HR_LR_RATIO if os.path.isfile(os.path.join(split_dir, image_filename(HR_LR_RATIO))) else 1
        images = safe_pickle.load(os.path.join(split_dir, image_filename(ratio)))
        class_ids = safe_pickle.load(os.path.join(split_dir, "class_info.pickle"))
        split_view = Split(images, None, names, class_ids, dataset_dir, 0, split)
        for index, name in enumerate(names):
            save_image(images[index], os.path.join(out_dir, name + ".png"))
            captions = "".join(c + "\n" for c in split_view.captions(index))
            write_text(captions, os.path.join(out_dir, name + CAPTION_SUFFIX))
        count += len(names)
    log(f"Wrote {count} pictures and their captions to {out_dir}")
    return count

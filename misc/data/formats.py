"""The constants of StackGAN's data format, which every part of the library
shares: the file names of a dataset split, the image sizes the networks see
and the datasets store, the captions and text embeddings per image, and how
many samples a sheet shows.  Nothing here imports anything."""

# A dataset's splits, each a folder of the files below.
SPLITS = ("train", "test")
# A split's text-embedding file per EMBEDDING_TYPE.
EMBEDDING_FILES = {
    "cnn-rnn": "char-CNN-RNN-embeddings.pickle",
    "skip-thought": "skip-thought-embeddings.pickle",
}
# Image sizes.  The networks see LR_IMAGE_SIZE (Stage-I) and HR_LR_RATIO
# times that (Stage-II) pixels; the datasets store larger images, which are
# randomly cropped to those sizes (76 -> 64, 304 -> 256).
LR_IMAGE_SIZE = 64
HR_LR_RATIO = 4
LR_LOAD_SIZE = 76
HR_LOAD_SIZE = HR_LR_RATIO * LR_LOAD_SIZE
LOAD_SIZES = {1: LR_LOAD_SIZE, HR_LR_RATIO: HR_LOAD_SIZE}  # stored image size per hr/lr ratio
# The reference datasets: ten captions per image, char-CNN-RNN embeddings of
# this size.
CAPTIONS_PER_IMAGE = 10
TEXT_EMBEDDING_DIM = 1024
# The char-CNN-RNN encoders read a caption's first 201 bytes
# (get_embedding.lua's doc_length); the dataset builder refuses longer ones.
SEQUENCE_LENGTH = 201
# The reference demo and evaluation sheets show at most this many samples
# per caption.
MAX_COPIES = 16


def image_filename(hr_lr_ratio):
    """The image pickle of a split for Stage-I (1) or Stage-II (HR_LR_RATIO)."""
    return f"{LOAD_SIZES[hr_lr_ratio]}images.pickle"

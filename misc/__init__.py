"""The StackGAN library, by job (each subpackage's docstring says more):

config.py    the config tree (the reference's, and extensions), its checks,
             and the errors a user can fix (every command reports one as a line)
data/        datasets in the reference format: loading, sampling, the input
             pipeline, pictures, pickles, atomic writes, the bundled shapes
             dataset and its caption encoder, datasets built from folders of
             captioned pictures
nets/        network building blocks: the reference layers and blocks,
             conditioning augmentation, the char-CNN-RNN text encoder, the
             image side of its training
reference/   the authors' files: TF 0.11/0.12 checkpoints and their import,
             torch7 (.t7) files and their text encoders
training/    the trainer base, losses, Adam, callbacks, the training loop,
             snapshots, devices and clusters, XLA and precision, the benchmark,
             the text encoder's training (DS-SJE)
evaluation/  trained models in use: sampling, caption embeddings, Inception
             Score, FID, the shapes attributes, caption separation
commands/    the command lines (parse, then start TensorFlow, then work)

The two stages' networks, update rules and experiments are in stageI/ and
stageII/; misc/commands/stages.py drives both.
"""

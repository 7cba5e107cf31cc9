"""The evaluator's fixed settings, apart from TensorFlow so that its command
line names them without loading it: the authors' Inception Score protocol
(StackGAN-inception-model's inception_score.py scores the pictures in whole
batches of AUTHORS_BATCH_SIZE and cuts the scores into AUTHORS_SPLITS
splits) and where results go by default."""

AUTHORS_BATCH_SIZE = 64
AUTHORS_SPLITS = 10
# The default --json: <OUTPUT_ROOT>/<OUTPUT_FOLDER>/<name><JSON_SUFFIX>.
OUTPUT_FOLDER = "evaluation"
JSON_SUFFIX = "_evaluation.json"
# Pictures scored at most: 3.4 times CUB's 29,330 samples; each holds 8 KB of
# FID features and its noise in memory.
MAX_SAMPLES = 100_000
MAX_BATCH_SIZE = 1024  # pictures scored at once: 1 GB of 299x299 input at the most

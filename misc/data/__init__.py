"""Datasets in the reference format and the files around them: the format's
constants (formats.py), loading and the reference sampling (datasets.py),
the tf.data input (input_pipeline.py), restricted pickles and arrays,
pictures (reading, converting, saving, sheets), the reference image
preprocessing, atomic writes and locks (atomic.py), the bundled shapes
dataset (shapes.py) and its hashing caption encoder (hash_encoder.py), and
datasets built from folders of captioned pictures (dataset_builder.py)."""

"""Trained models in use: sampling pictures from a checkpoint (sampling.py),
embedding captions with a text encoder (caption_embeddings.py), the
Inception Score and FID of a model or a folder (inception.py, fid.py,
scoring.py, defaults.py), the attributes of shapes pictures
(shapes_attributes.py) and how a text encoder separates them
(caption_separation.py)."""

"""The authors' file formats, read without their runtimes: TF 0.11/0.12
checkpoints (tf1_checkpoint.py) and their import into our trainers by
variable name (importer.py); torch7 .t7 files (torch7.py) and the char-CNN-
RNN text encoders stored in them (torch7_encoder.py)."""

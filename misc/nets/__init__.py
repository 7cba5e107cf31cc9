"""Network building blocks: the reference layers with the reference's
variable names and semantics (layers.py), the blocks both stages build from
(blocks.py), conditioning augmentation (conditioning.py) and the authors'
char-CNN-RNN text encoder (char_cnn_rnn.py) and the image networks it is
trained against (image_encoders.py).  The stages' networks are in
stageI/model.py and stageII/model.py."""

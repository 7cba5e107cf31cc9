"""Training mechanics both stages share: the trainer base (gan_trainer.py),
losses and the reference Adam, the training loop around keras.Model.fit
(loop.py) and its callbacks, snapshots and checkpoints (checkpoints.py), the
devices and clusters a run trains on (devices.py, cluster.py), how the step
runs (acceleration.py, machine.py) and the speed benchmark (benchmark.py).
The char-CNN-RNN text encoder is trained on the same loop with DS-SJE
(sje.py: loss, optimiser, batches, zero-shot figures; sje_trainer.py; cfg/
its shapes configs).
Each stage's update rules are in its own trainer.py."""

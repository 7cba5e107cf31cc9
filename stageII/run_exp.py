"""Train or evaluate the Stage-II GAN.

    python stageII/run_exp.py --cfg stageII/cfg/birds.yml [--gpu 0]

TRAIN.PRETRAINED_MODEL names the Stage-I checkpoint to start from (its
trainable Stage-I weights are restored, not its batch-norm statistics, and
its iteration counter is kept, as the reference) or a Stage-II checkpoint to
resume.  TRAIN.FLAG False writes evaluation sheets for the test captions.
The work is done by ``stageII.experiment.main``; this file is only the entry
point.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import misc.startup  # before TensorFlow: its start-up lines follow that level

from misc.experiment import run_main
from stageII.experiment import main

if __name__ == "__main__":
    run_main(main)

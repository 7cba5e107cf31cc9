"""Train or evaluate the Stage-I GAN.

    python stageI/run_exp.py --cfg stageI/cfg/birds.yml [--gpu 0]

TRAIN.FLAG True trains (resuming from TRAIN.PRETRAINED_MODEL when set);
False writes evaluation super-images for the test captions.  The work is
done by ``stageI.experiment.main``; this file is only the entry point.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import misc.startup  # before TensorFlow: its start-up lines follow that level

from misc.experiment import run_main
from stageI.experiment import main

if __name__ == "__main__":
    run_main(main)

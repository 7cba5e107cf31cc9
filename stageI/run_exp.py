"""Train or evaluate the Stage-I GAN.

    python stageI/run_exp.py --cfg stageI/cfg/birds.yml [--gpu 0]

TRAIN.FLAG True trains (resuming from TRAIN.PRETRAINED_MODEL when set);
False writes evaluation sheets for the test captions.  The work is done by
misc/commands/train.py; this file is only the entry point.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from misc.commands.train import cli

if __name__ == "__main__":
    cli(stage=1)

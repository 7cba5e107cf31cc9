"""Build a StackGAN dataset from a folder of captioned pictures.

    python data/build_dataset.py --help

The work is done by misc/commands/build_dataset.py (its docstring says what it takes and
writes); this file is only the entry point.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from misc.commands.build_dataset import cli

if __name__ == "__main__":
    cli()

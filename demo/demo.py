"""Draw pictures for captions with a trained StackGAN, as the reference demo.

    python demo/demo.py --help

The work is done by misc/commands/demo.py (its docstring says what it takes and
writes); this file is only the entry point.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from misc.commands.demo import cli

if __name__ == "__main__":
    cli()

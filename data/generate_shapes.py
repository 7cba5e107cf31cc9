"""Generate the bundled "shapes" dataset (training generates it on first
use; this is for another folder, size or seed).

    python data/generate_shapes.py [--out data/shapes] [--num-train N] [--num-test N] [--seed S] [--force]

The work is done by misc/commands/generate_shapes.py; this file is only the
entry point.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from misc.commands.generate_shapes import cli

if __name__ == "__main__":
    cli()

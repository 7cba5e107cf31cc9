"""Write a StackGAN dataset out as a folder of captioned pictures.

    python data/export_folder.py --help

The work is done by misc/commands/export_folder.py (its docstring says what it takes and
writes); this file is only the entry point.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from misc.commands.export_folder import cli

if __name__ == "__main__":
    cli()

"""Embed captions with the authors' char-CNN-RNN text encoder, as get_embedding.lua.

    python demo/embed.py --help

The work is done by misc/commands/embed.py (its docstring says what it takes and
writes); this file is only the entry point.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from misc.commands.embed import cli

if __name__ == "__main__":
    cli()

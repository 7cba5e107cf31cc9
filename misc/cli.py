"""What the commands' command lines share: a parser whose errors are one
line (``error: ...``, exit code 2, as every other bad input), and range
checks that name the option as the user typed it.  No TensorFlow here: the
dataset scripts use it too."""

import argparse
import sys

from misc.config import ConfigError

EXIT_ERROR = 2  # one-line error: bad input, nothing written


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors (an unknown option, a value
    that is not a number ...) are one line on standard error and exit code
    2, without the usage block (``--help`` shows it)."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def check_range(option, value, low, high=None, what=""):
    """Refuse ``value`` of ``option`` outside [low, high] with one line."""
    if value < low or (high is not None and value > high):
        bounds = f"at least {low:,}" if high is None else f"from {low:,} to {high:,}"
        raise ConfigError(f"{option} {value}: must be {bounds}{f' ({what})' if what else ''}.")
    return value

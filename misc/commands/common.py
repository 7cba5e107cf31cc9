"""What every command shares: a parser whose errors are one line, the
training options, the run's config, and how a command ends.

Exit codes (``run_main``): 0 done; 2 a one-line error (``UserError``: bad
input found before anything was written, or a failure during training such
as a full disk or divergence, naming the last good snapshot); 130 / 143
stopped by Ctrl-C (SIGINT) / SIGTERM (in training after saving a snapshot to
resume from; 128 + the signal number, as a shell reports a process ended by
that signal); 1 an unexpected error (a bug: its traceback is printed).

Nothing here imports TensorFlow at import time: a command parses its
arguments (and answers --help) first, then starts TensorFlow
(``misc.commands.startup.start_tensorflow``) and imports the library.
"""

import argparse
import logging
import pprint
import sys

from misc.config import (
    PRECISIONS,
    XLA_SETTINGS,
    ConfigError,
    UserError,
    load_config,
    parse_gpu_ids,
    validate_config,
)

EXIT_ERROR = UserError.exit_code  # one-line error: bad input, nothing written


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors (an unknown option, a value
    that is not a number ...) are one line on standard error and exit code
    2, without the usage block (``--help`` shows it)."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def positive_int(most=None):
    """An argparse ``type``: a whole number of at least 1 (and at most ``most``)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1 or (most is not None and value > most):
            bounds = "of at least 1" if most is None else f"from 1 to {most:,}"
            raise argparse.ArgumentTypeError(f"{text}: give a whole number {bounds}")
        return value

    return parse


def check_range(option, value, low, high=None, what=""):
    """Refuse ``value`` of ``option`` outside [low, high] with one line."""
    if value < low or (high is not None and value > high):
        bounds = f"at least {low:,}" if high is None else f"from {low:,} to {high:,}"
        raise ConfigError(f"{option} {value}: must be {bounds}{f' ({what})' if what else ''}.")
    return value


def add_step_arguments(parser):
    """--xla and --precision: override TRAIN.XLA and TRAIN.PRECISION."""
    parser.add_argument("--xla", choices=XLA_SETTINGS, default=None,
                        help="compile the training step with XLA: auto (where measured faster), "
                             "on, off (default: TRAIN.XLA)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="float32, mixed (float16 on GPUs, bfloat16 on CPUs that have it), "
                             "mixed_float16, mixed_bfloat16 (default: TRAIN.PRECISION)")


def add_device_arguments(parser):
    """--gpu, then the step options."""
    parser.add_argument("--gpu", dest="gpu", default=None, type=str,
                        help="GPU id(s) to use, e.g. 0 or 0,1 (default: all visible GPUs; "
                             "CPU when there is none)")
    add_step_arguments(parser)


def typed_names(args):
    """What the user typed for the step settings, for the messages: the
    flags given instead of the config keys they override."""
    return {key: flag for key, flag in (("XLA", "--xla"), ("PRECISION", "--precision"))
            if getattr(args, key.lower(), None) is not None}


def load_run_config(args, stage=None):
    """The config of a run (``--cfg``, then --xla / --precision), validated
    (for ``stage`` when given); a bad --gpu fails here too, before anything
    is printed.  The devices come from --gpu (``make_strategy``), not from
    GPU_ID."""
    config = load_config(args.cfg_file)
    validate_config(config, stage, source=args.cfg_file)
    if args.gpu is not None:
        parse_gpu_ids(args.gpu)
    if getattr(args, "xla", None) is not None:
        config.TRAIN.XLA = args.xla
    if getattr(args, "precision", None) is not None:
        config.TRAIN.PRECISION = args.precision
    return config


def print_config(config):
    print("Using config:")
    pprint.pprint(_plain(config))


def _plain(tree):
    return {k: _plain(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def _quiet_teardown():
    """After a one-line error the process ends; what TensorFlow logs while
    its objects are deleted (e.g. every value of a checkpoint that did not
    fit the model, 169 lines for Stage-I) must not follow that line."""
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def run_main(main, argv=None):
    """Run ``main`` and turn expected failures into one-line errors; see the
    module docstring for the exit codes."""
    try:
        return main(argv)
    except UserError as exc:
        lead = "\n" if exc.exit_code != EXIT_ERROR else "error: "
        print(f"{lead}{exc}", file=sys.stderr)
        _quiet_teardown()
        raise SystemExit(exc.exit_code) from None
    except OSError as exc:
        what = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
        print(f"error: {what}", file=sys.stderr)
        _quiet_teardown()
        raise SystemExit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        print("\ninterrupted (Ctrl-C).", file=sys.stderr)
        raise SystemExit(130) from None

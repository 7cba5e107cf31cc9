"""TensorFlow's start-up for the commands (``start_tensorflow``, called once
a command has parsed its arguments): its CPU kernels, and its start-up
lines as quiet as TF_CPP_MIN_LOG_LEVEL asks (2 unless set: warnings and
notes hidden, errors shown).

oneDNN.  On x86 CPUs TensorFlow runs its CPU kernels through oneDNN only
where the CPU has AVX-512 (on others TF_ENABLE_ONEDNN_OPTS=1 asks for it).
The scripts ask for it everywhere on x86 unless TF_ENABLE_ONEDNN_OPTS is set:
measured on a 2-core AVX2 CPU, the quick-start step is 2.4 times as fast
with oneDNN as without (and 1.6 times as fast as without oneDNN but with
XLA), Stage-I birds about 1.9 times (docs/performance.md).
TF_ENABLE_ONEDNN_OPTS=0 keeps TensorFlow's own kernels.

TensorFlow writes a few lines to standard error before its logging is set
up, and those ignore TF_CPP_MIN_LOG_LEVEL: absl's "All log messages before
absl::InitializeLog() ..." banner, INFO notes (oneDNN, CPU features) and, on
a machine without an NVIDIA driver, "Could not find cuda drivers" and an
E-level "failed call to cuInit" that read as failures.

``start_tensorflow`` imports TensorFlow and lists its devices while
standard error goes through a filter that drops exactly what
TF_CPP_MIN_LOG_LEVEL hides (1: INFO, 2: also WARNING, 3: also ERROR; the
scripts set 2) plus, only when no NVIDIA driver is installed and the level
is at least 1, the two CUDA-driver lines.  Everything else passes unchanged,
real errors included.  The filter runs in a child process reading a pipe, so
even a crash during TensorFlow's start-up loses none of its output.  Nothing
happens when TensorFlow is already imported (tests, notebooks) or the
level is 0.
"""

import os
import re
import subprocess
import sys

_ABSL_LINE = re.compile(rb"^([IWEF])\d{4} [\d:.]+\s+\d+ (\S+):\d+\] (.*)")
_ABSL_BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}
# What TensorFlow says at start-up when no NVIDIA driver is installed.
_NO_DRIVER = (b"Could not find cuda drivers", b"failed call to cuInit")
# The second line of the CPU-feature note (cpu_feature_guard.cc).
_CPU_FEATURES_MORE = b"To enable the following instructions:"


def min_log_level():
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def kept_lines(lines, level, no_driver):
    """The lines (bytes) of TensorFlow's start-up output to show."""
    dropped_cpu_note = False
    for line in lines:
        text = line.rstrip(b"\r\n")
        match = _ABSL_LINE.match(text)
        if match:
            severity, source, message = match.groups()
            drop = _SEVERITY[severity] < level or (
                no_driver and level >= 1 and any(m in message for m in _NO_DRIVER))
            dropped_cpu_note = drop and source.startswith(b"cpu_feature_guard")
            if not drop:
                yield line
        elif text == _ABSL_BANNER and level >= 1:
            dropped_cpu_note = False
        elif dropped_cpu_note and text.startswith(_CPU_FEATURES_MORE):
            dropped_cpu_note = False
        else:
            dropped_cpu_note = False
            yield line


def _filter_main(level, no_driver):
    """The child process: copy stdin to stdout, minus the hidden lines."""
    out = sys.stdout.buffer
    for line in kept_lines(sys.stdin.buffer, level, no_driver):
        out.write(line)
        out.flush()


def start_tensorflow():
    """Import TensorFlow for a command: TF_CPP_MIN_LOG_LEVEL 2 and, on x86,
    oneDNN's kernels unless the user set them, then the quiet import (see
    the module docstring).  Nothing changes when TensorFlow is already
    loaded (tests, notebooks: its choices are made then)."""
    from misc.training.machine import nvidia_driver_present, x86_cpu

    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if x86_cpu():
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    level = min_log_level()
    if level < 1 or os.name != "posix":
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        child = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), str(level),
             str(int(not nvidia_driver_present()))],
            stdin=subprocess.PIPE, stdout=saved, start_new_session=True)
    except OSError:
        os.close(saved)
        return
    os.dup2(child.stdin.fileno(), 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        child.stdin.close()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:  # something started meanwhile still holds the pipe
            child.kill()


if __name__ == "__main__":  # the filter's child process (stdlib only: started with -I -S)
    _filter_main(int(sys.argv[1]), sys.argv[2] == "1")

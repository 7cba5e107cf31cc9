"""TensorFlow's start-up for the command-line scripts: its CPU kernels, and
its start-up lines as quiet as TF_CPP_MIN_LOG_LEVEL asks.

oneDNN.  On x86 CPUs TensorFlow runs its CPU kernels through oneDNN only
where the CPU has AVX-512 (on others TF_ENABLE_ONEDNN_OPTS=1 asks for it).
The scripts ask for it everywhere on x86 unless TF_ENABLE_ONEDNN_OPTS is set:
measured on a 2-core AVX2 CPU, the quick-start step is 2.4 times as fast
with oneDNN as without (and 1.6 times as fast as without oneDNN but with
XLA), Stage-I birds about 1.9 times (README, Performance).
TF_ENABLE_ONEDNN_OPTS=0 keeps TensorFlow's own kernels.

TensorFlow writes a few lines to standard error before its logging is set
up, and those ignore TF_CPP_MIN_LOG_LEVEL: absl's "All log messages before
absl::InitializeLog() ..." banner, INFO notes (oneDNN, CPU features) and, on
a machine without an NVIDIA driver, "Could not find cuda drivers" and an
E-level "failed call to cuInit" that read as failures.

Importing this module before TensorFlow (every command-line script does,
right after setting TF_CPP_MIN_LOG_LEVEL) imports TensorFlow and lists its
devices while standard error goes through a filter that drops exactly what
TF_CPP_MIN_LOG_LEVEL hides (1: INFO, 2: also WARNING, 3: also ERROR; the
scripts set 2) plus, only when no NVIDIA driver is installed and the level
is at least 1, the two CUDA-driver lines.  Everything else passes unchanged,
real errors included.  The filter runs in a child process reading a pipe, so
even a crash during TensorFlow's start-up loses none of its output.  Nothing
happens when TensorFlow is already imported (tests, notebooks) or the
level is 0.
"""

import os
import platform
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


def nvidia_driver_present():
    """True when an NVIDIA driver is loaded: its /proc entry or device
    nodes exist (WSL: /dev/dxg)."""
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0",
                                           "/dev/dxg"))


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


def prefer_onednn():
    """Ask TensorFlow for its oneDNN CPU kernels on x86, unless the user chose
    (TF_ENABLE_ONEDNN_OPTS set) or TensorFlow is already loaded (its choice
    is made then)."""
    if "tensorflow" not in sys.modules and platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def quiet_tensorflow_startup():
    """Import TensorFlow and list its devices with standard error filtered
    (see the module docstring)."""
    level = min_log_level()
    if "tensorflow" in sys.modules or level < 1 or os.name != "posix":
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


if __name__ == "__main__":
    _filter_main(int(sys.argv[1]), sys.argv[2] == "1")
else:
    prefer_onednn()
    quiet_tensorflow_startup()

"""Helpers of the tests that stop a command at a known point (issue 24): a
child process that creates a 'ready' file there and waits, to be killed or
interrupted (tests/fault_injection.py does this for training), and the
one-line error a command run in-process ends with."""

import os
import signal
import subprocess
import time

import pytest

from misc.commands.common import run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD_ENV = {**os.environ, "PYTHONPATH": ROOT}  # the child imports misc, data ... from the repository


def answer_ctrl_c():
    """In a child before it starts: SIGINT's default action, so that Python
    turns it into KeyboardInterrupt as in a terminal (a suite started in the
    background by a shell ignores SIGINT, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_until_ready(argv, ready, timeout=300, **popen_kwargs):
    """Start ``argv`` and wait until it has created the file ``ready``."""
    child = subprocess.Popen(argv, env=CHILD_ENV, preexec_fn=answer_ctrl_c, **popen_kwargs)
    deadline = time.monotonic() + timeout
    try:
        while not os.path.exists(ready):
            assert child.poll() is None, f"{argv[:3]} ended (code {child.returncode}) before its fault point"
            assert time.monotonic() < deadline, f"{argv[:3]} did not reach its fault point"
            time.sleep(0.05)
    except BaseException:
        child.kill()
        child.wait()
        raise
    return child


def kill(child):
    """SIGKILL: no handler, no clean-up."""
    child.kill()
    child.wait()
    assert child.returncode == -signal.SIGKILL


def one_line_error(main, argv, capsys):
    """Run ``main(argv)`` as the command's __main__ does and return the
    one-line error it must end with (exit code 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_main(main, argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err
